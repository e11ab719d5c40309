//! The LoRA branch's products, in f32 on plain row-major slices. Each is thin (the rank r
//! is 8–64 against widths of hundreds or thousands), so a general matmul spends more time
//! packing and allocating than multiplying; these stream the wide operand once and keep the
//! thin one in registers or L1.
//!
//! Rank vectors are held padded to `lanes(r)` (whole 16-lane vectors, zeros beyond r), so
//! every inner loop runs over full vectors. Three shapes cover the forward and the backward:
//!
//! - `thin`: out (n, R) = x (n, k) · w (k, R), for inner = x Aᵀ and d inner = dy B;
//! - `add_low_rank`: y (n, w) += inner (n, R) · m (R, w), for the branch's output (m = s Bᵀ)
//!   and its input gradient (m = A);
//! - `accumulate_outer`: acc (r, k) += inner (n, R)ᵀ · x (n, k), for dBᵀ and dA.
//!
//! Rows (or, for `accumulate_outer`, strips of the result's columns) are split between threads,
//! and every sum runs in the same order whatever the thread count, so a pass is
//! reproducible bit for bit. AVX-512F and AVX2+FMA where the processor has them (fused
//! multiply-adds); the portable path multiplies and adds separately, as does
//! `TUNA_KERNEL=portable`.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Lanes of one vector of the kernels' inner loops.
const LANES: usize = 16;
/// Rows `thin` advances together (8 independent accumulator chains hide the FMA latency).
const ROW_BLOCK: usize = 8;
/// Rows per rayon task.
const ROWS_PER_TASK: usize = 32;

/// r rounded up to whole vectors: the stride of every rank vector here.
pub fn lanes(r: usize) -> usize {
    r.div_ceil(LANES) * LANES
}

/// Which instructions the kernels run on; every kernel takes it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The fastest available, or `TUNA_KERNEL=avx2|portable` where the machine runs it.
    pub fn chosen() -> Self {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let available = Self::available();
            let forced = match std::env::var("TUNA_KERNEL").as_deref() {
                Ok("avx2") => Some(Self::Avx2),
                Ok("portable") => Some(Self::Portable),
                _ => None,
            };
            match forced {
                Some(isa) if available.contains(&isa) => isa,
                _ => available[0],
            }
        })
    }

    /// Every instruction set this processor runs, fastest first.
    fn available() -> Vec<Self> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                out.push(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                out.push(Self::Avx2);
            }
        }
        out.push(Self::Portable);
        out
    }
}

/// 16 f32 lanes: the one vocabulary of the kernels' bodies, so that one source serves each
/// instruction set. Slices passed to `load`/`store` hold at least 16 values.
trait Lanes: Copy {
    fn zero() -> Self;
    fn splat(x: f32) -> Self;
    fn load(src: &[f32]) -> Self;
    fn store(self, dst: &mut [f32]);
    /// a · b + c (fused where the instruction set fuses).
    fn mul_add(a: Self, b: Self, c: Self) -> Self;
    fn add(self, b: Self) -> Self;
    fn mul(self, b: Self) -> Self;
}

/// Plain Rust: multiplies and adds separately.
#[derive(Clone, Copy)]
struct Portable([f32; LANES]);

impl Lanes for Portable {
    #[inline(always)]
    fn zero() -> Self {
        Self([0.0; LANES])
    }
    #[inline(always)]
    fn splat(x: f32) -> Self {
        Self([x; LANES])
    }
    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        Self(src[..LANES].try_into().expect("16 values"))
    }
    #[inline(always)]
    fn store(self, dst: &mut [f32]) {
        dst[..LANES].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn mul_add(a: Self, b: Self, c: Self) -> Self {
        Self(std::array::from_fn(|l| a.0[l] * b.0[l] + c.0[l]))
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        Self(std::array::from_fn(|l| self.0[l] + b.0[l]))
    }
    #[inline(always)]
    fn mul(self, b: Self) -> Self {
        Self(std::array::from_fn(|l| self.0[l] * b.0[l]))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The intrinsics carry their features; they inline into the kernels' bodies because
    //! those are compiled inside functions that enable the same features (`multiversion!`).
    use std::arch::x86_64::*;

    use super::{Lanes, LANES};

    /// One AVX-512 register.
    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    impl Lanes for Avx512 {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY (every method): only built inside functions that enable avx512f, run
            // where Isa::available found it.
            unsafe { Self(_mm512_setzero_ps()) }
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            unsafe { Self(_mm512_set1_ps(x)) }
        }
        #[inline(always)]
        fn load(src: &[f32]) -> Self {
            let src = &src[..LANES];
            unsafe { Self(_mm512_loadu_ps(src.as_ptr())) }
        }
        #[inline(always)]
        fn store(self, dst: &mut [f32]) {
            let dst = &mut dst[..LANES];
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn mul_add(a: Self, b: Self, c: Self) -> Self {
            unsafe { Self(_mm512_fmadd_ps(a.0, b.0, c.0)) }
        }
        #[inline(always)]
        fn add(self, b: Self) -> Self {
            unsafe { Self(_mm512_add_ps(self.0, b.0)) }
        }
        #[inline(always)]
        fn mul(self, b: Self) -> Self {
            unsafe { Self(_mm512_mul_ps(self.0, b.0)) }
        }
    }

    /// Two AVX2 registers.
    #[derive(Clone, Copy)]
    pub struct Avx2(__m256, __m256);

    impl Lanes for Avx2 {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY (every method): only built inside functions that enable avx2 and fma,
            // run where Isa::available found them.
            unsafe { Self(_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            unsafe { Self(_mm256_set1_ps(x), _mm256_set1_ps(x)) }
        }
        #[inline(always)]
        fn load(src: &[f32]) -> Self {
            let src = &src[..LANES];
            unsafe {
                Self(
                    _mm256_loadu_ps(src.as_ptr()),
                    _mm256_loadu_ps(src[8..].as_ptr()),
                )
            }
        }
        #[inline(always)]
        fn store(self, dst: &mut [f32]) {
            let dst = &mut dst[..LANES];
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr(), self.0);
                _mm256_storeu_ps(dst[8..].as_mut_ptr(), self.1);
            }
        }
        #[inline(always)]
        fn mul_add(a: Self, b: Self, c: Self) -> Self {
            unsafe {
                Self(
                    _mm256_fmadd_ps(a.0, b.0, c.0),
                    _mm256_fmadd_ps(a.1, b.1, c.1),
                )
            }
        }
        #[inline(always)]
        fn add(self, b: Self) -> Self {
            unsafe { Self(_mm256_add_ps(self.0, b.0), _mm256_add_ps(self.1, b.1)) }
        }
        #[inline(always)]
        fn mul(self, b: Self) -> Self {
            unsafe { Self(_mm256_mul_ps(self.0, b.0), _mm256_mul_ps(self.1, b.1)) }
        }
    }
}

/// `fn $name(isa, args)` running `$body::<V>(args)` with the lanes of the instruction set
/// `isa`: the body is `#[inline(always)]`, so each wrapper compiles its own copy with its
/// features enabled.
macro_rules! multiversion {
    (fn $name:ident => $body:ident($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body::<x86::Avx512>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body::<x86::Avx2>($($arg),*)
                }
                match isa {
                    // SAFETY: Isa::available checked the processor's features at run time.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Portable => {}
                }
            }
            $body::<Portable>($($arg),*)
        }
    };
}

multiversion!(fn thin_task => thin_rows(x: &[f32], k: usize, w: &[f32], rr: usize, out: &mut [f32]));
multiversion!(fn add_low_rank_task => add_low_rank_rows(y: &mut [f32], width: usize, inner: &[f32], r: usize, m: &[f32], mask: Option<&[f32]>));
multiversion!(fn accumulate_outer_task => accumulate_outer_strip(strip: &mut [f32], r: usize, w: usize, x: &[f32], k: usize, c0: usize, inner: &[f32], mask: Option<&[f32]>));

/// out (n, R) = x (n, k) · w (k, R), R = lanes(r) (w's columns beyond r are zero).
pub fn thin(isa: Isa, x: &[f32], k: usize, w: &[f32], rr: usize) -> Vec<f32> {
    let n = x.len() / k;
    let mut out = vec![0f32; n * rr];
    out.par_chunks_mut(ROWS_PER_TASK * rr)
        .zip(x.par_chunks(ROWS_PER_TASK * k))
        .for_each(|(out, x)| thin_task(isa, x, k, w, rr, out));
    out
}

#[inline(always)]
fn thin_rows<V: Lanes>(x: &[f32], k: usize, w: &[f32], rr: usize, out: &mut [f32]) {
    let n = x.len() / k;
    let mut row = 0;
    while row + ROW_BLOCK <= n {
        thin_block::<V, ROW_BLOCK>(x, k, w, rr, out, row);
        row += ROW_BLOCK;
    }
    while row < n {
        thin_block::<V, 1>(x, k, w, rr, out, row);
        row += 1;
    }
}

#[inline(always)]
fn thin_block<V: Lanes, const ROWS: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    rr: usize,
    out: &mut [f32],
    row: usize,
) {
    let x = &x[row * k..][..ROWS * k];
    for lane0 in (0..rr).step_by(LANES) {
        let mut acc = [V::zero(); ROWS];
        for kk in 0..k {
            let wv = V::load(&w[kk * rr + lane0..]);
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = V::mul_add(V::splat(x[r * k + kk]), wv, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            acc.store(&mut out[(row + r) * rr + lane0..]);
        }
    }
}

/// y (n, width) += (inner (n, R) · m (R, width)) ⊙ mask, with R = lanes(r) of which the first
/// `r` count; `mask` (n, width) is applied to the product only.
pub fn add_low_rank(
    isa: Isa,
    y: &mut [f32],
    width: usize,
    inner: &[f32],
    r: usize,
    m: &[f32],
    mask: Option<&[f32]>,
) {
    let rr = lanes(r);
    let tasks = y
        .par_chunks_mut(ROWS_PER_TASK * width)
        .zip(inner.par_chunks(ROWS_PER_TASK * rr))
        .enumerate();
    tasks.for_each(|(task, (y, inner))| {
        let mask = mask.map(|mk| &mk[task * ROWS_PER_TASK * width..][..y.len()]);
        add_low_rank_task(isa, y, width, inner, r, m, mask)
    });
}

#[inline(always)]
fn add_low_rank_rows<V: Lanes>(
    y: &mut [f32],
    width: usize,
    inner: &[f32],
    r: usize,
    m: &[f32],
    mask: Option<&[f32]>,
) {
    let n = y.len() / width;
    let mut row = 0;
    // Rows in fours share each load of m; the rest one at a time.
    while row + 4 <= n {
        add_low_rank_block::<V, 4>(y, width, inner, r, m, mask, row);
        row += 4;
    }
    while row < n {
        add_low_rank_block::<V, 1>(y, width, inner, r, m, mask, row);
        row += 1;
    }
}

#[inline(always)]
fn add_low_rank_block<V: Lanes, const ROWS: usize>(
    y: &mut [f32],
    width: usize,
    inner: &[f32],
    r: usize,
    m: &[f32],
    mask: Option<&[f32]>,
    row: usize,
) {
    const VECTORS: usize = 4;
    let whole = width / LANES * LANES;
    // VECTORS vectors of columns at a time, then one at a time, then the last < 16 columns.
    let mut c0 = 0;
    while c0 + VECTORS * LANES <= whole {
        add_low_rank_columns::<V, ROWS, VECTORS>(y, width, inner, r, m, mask, row, c0);
        c0 += VECTORS * LANES;
    }
    while c0 < whole {
        add_low_rank_columns::<V, ROWS, 1>(y, width, inner, r, m, mask, row, c0);
        c0 += LANES;
    }
    let rr = lanes(r);
    for ri in 0..ROWS {
        let (base, inner) = ((row + ri) * width, &inner[(row + ri) * rr..][..r]);
        for c in whole..width {
            let dot: f32 = inner
                .iter()
                .enumerate()
                .map(|(j, f)| f * m[j * width + c])
                .sum();
            y[base + c] += dot * mask.map_or(1.0, |mk| mk[base + c]);
        }
    }
}

/// Rows row.. (ROWS of them), columns c0.. (VECTORS vectors): fixed counts, so that the
/// sums stay in registers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn add_low_rank_columns<V: Lanes, const ROWS: usize, const VECTORS: usize>(
    y: &mut [f32],
    width: usize,
    inner: &[f32],
    r: usize,
    m: &[f32],
    mask: Option<&[f32]>,
    row: usize,
    c0: usize,
) {
    let rr = lanes(r);
    let mut acc = [[V::zero(); VECTORS]; ROWS];
    for j in 0..r {
        let m = &m[j * width + c0..];
        let mv: [V; VECTORS] = std::array::from_fn(|u| V::load(&m[u * LANES..]));
        for (ri, acc) in acc.iter_mut().enumerate() {
            let f = V::splat(inner[(row + ri) * rr + j]);
            for u in 0..VECTORS {
                acc[u] = V::mul_add(f, mv[u], acc[u]);
            }
        }
    }
    for (ri, acc) in acc.iter().enumerate() {
        let base = (row + ri) * width + c0;
        for (u, acc) in acc.iter().enumerate() {
            let at = base + u * LANES;
            let add = match mask {
                Some(mk) => acc.mul(V::load(&mk[at..])),
                None => *acc,
            };
            V::load(&y[at..]).add(add).store(&mut y[at..]);
        }
    }
}

/// acc (r, k) += inner (n, R)ᵀ · x (n, k), R = lanes(r) of which the first `r` count, each
/// value summed over the n rows in order. `mask` (n, k), when given, multiplies x first.
///
/// The result is laid out with the rank as rows, so that a row of x is read as whole
/// vectors and each of its vectors meets `RANK_BLOCK` rank values (broadcast) in registers:
/// the transposed layout read one x value per multiply-add and was bound by its loads.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_outer(
    isa: Isa,
    acc: &mut [f32],
    r: usize,
    x: &[f32],
    k: usize,
    inner: &[f32],
    mask: Option<&[f32]>,
) {
    assert_eq!(acc.len(), r * k, "accumulate_outer: acc is (r, k)");
    let columns: Vec<usize> = (0..k).step_by(OUTER_COLUMNS).collect();
    // Each task owns a strip of columns of every rank row; its sums come back as a (r, w)
    // block and are written into acc after.
    let strips: Vec<Vec<f32>> = columns
        .par_iter()
        .map(|&c0| {
            let w = OUTER_COLUMNS.min(k - c0);
            let mut strip = vec![0f32; r * w];
            for (j, row) in strip.chunks_mut(w).enumerate() {
                row.copy_from_slice(&acc[j * k + c0..][..w]);
            }
            accumulate_outer_task(isa, &mut strip, r, w, x, k, c0, inner, mask);
            strip
        })
        .collect();
    for (&c0, strip) in columns.iter().zip(&strips) {
        let w = strip.len() / r.max(1);
        for (j, row) in strip.chunks(w.max(1)).enumerate().take(r) {
            acc[j * k + c0..][..w].copy_from_slice(row);
        }
    }
}

/// Columns of the result one task sums: a few column blocks, so that the task's strip of x
/// stays in L2 while each rank block sweeps it.
const OUTER_COLUMNS: usize = 2 * COLUMN_BLOCK;
/// Columns of x held in registers together (3 vectors).
const COLUMN_BLOCK: usize = 3 * LANES;
/// Rank values a row of x meets in registers together: RANK_BLOCK × 3 vectors of sums.
const RANK_BLOCK: usize = 8;

/// strip (r, w) += inner (n, R)ᵀ · x[.., c0..c0 + w].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn accumulate_outer_strip<V: Lanes>(
    strip: &mut [f32],
    r: usize,
    w: usize,
    x: &[f32],
    k: usize,
    c0: usize,
    inner: &[f32],
    mask: Option<&[f32]>,
) {
    let mut strip = Strip {
        strip,
        w,
        x,
        k,
        c0,
        inner,
        rr: lanes(r),
        mask,
    };
    let whole = w / LANES * LANES;
    let mut c = 0;
    while c < whole {
        let vectors = ((whole - c) / LANES).min(COLUMN_BLOCK / LANES);
        let mut j = 0;
        while j + RANK_BLOCK <= r {
            match vectors {
                3 => strip.sum::<V, RANK_BLOCK, 3>(j, c),
                2 => strip.sum::<V, RANK_BLOCK, 2>(j, c),
                _ => strip.sum::<V, RANK_BLOCK, 1>(j, c),
            }
            j += RANK_BLOCK;
        }
        while j < r {
            match vectors {
                3 => strip.sum::<V, 1, 3>(j, c),
                2 => strip.sum::<V, 1, 2>(j, c),
                _ => strip.sum::<V, 1, 1>(j, c),
            }
            j += 1;
        }
        c += vectors * LANES;
    }
    for c in whole..w {
        for j in 0..r {
            strip.sum_scalar(j, c);
        }
    }
}

/// One task's view of `accumulate_outer`: its strip of the result and the operands.
struct Strip<'a> {
    strip: &'a mut [f32],
    w: usize,
    x: &'a [f32],
    k: usize,
    c0: usize,
    inner: &'a [f32],
    rr: usize,
    mask: Option<&'a [f32]>,
}

impl Strip<'_> {
    /// Rank rows j..j + JS, strip columns c..c + VS vectors, over every row of x in order:
    /// fixed counts, so that the sums stay in registers.
    #[inline(always)]
    fn sum<V: Lanes, const JS: usize, const VS: usize>(&mut self, j: usize, c: usize) {
        let n = self.x.len() / self.k;
        let mut sums = [[V::zero(); VS]; JS];
        for (jj, sums) in sums.iter_mut().enumerate() {
            for (u, s) in sums.iter_mut().enumerate() {
                *s = V::load(&self.strip[(j + jj) * self.w + c + u * LANES..]);
            }
        }
        let col = self.c0 + c;
        for row in 0..n {
            let at = row * self.k + col;
            let xv: [V; VS] = std::array::from_fn(|u| {
                let x = V::load(&self.x[at + u * LANES..]);
                match self.mask {
                    None => x,
                    Some(mk) => x.mul(V::load(&mk[at + u * LANES..])),
                }
            });
            let inner = &self.inner[row * self.rr + j..][..JS];
            for (jj, sums) in sums.iter_mut().enumerate() {
                let f = V::splat(inner[jj]);
                for u in 0..VS {
                    sums[u] = V::mul_add(f, xv[u], sums[u]);
                }
            }
        }
        for (jj, sums) in sums.iter().enumerate() {
            for (u, s) in sums.iter().enumerate() {
                s.store(&mut self.strip[(j + jj) * self.w + c + u * LANES..]);
            }
        }
    }

    /// One value of the strip (the columns past the last whole vector).
    fn sum_scalar(&mut self, j: usize, c: usize) {
        let n = self.x.len() / self.k;
        let mut sum = self.strip[j * self.w + c];
        for row in 0..n {
            let at = row * self.k + self.c0 + c;
            let x = self.mask.map_or(self.x[at], |mk| self.x[at] * mk[at]);
            sum += self.inner[row * self.rr + j] * x;
        }
        self.strip[j * self.w + c] = sum;
    }
}

/// The transpose of the first `cols` columns of m (rows, src_stride), times `scale`, into
/// (cols, dst_stride): out[c][r] = scale · m[r][c], zero beyond `rows`. This pads Aᵀ to
/// whole vectors (dst_stride = lanes(r)), scales Bᵀ, and unpads dAᵀ (src_stride = lanes(r)).
pub fn transpose(
    m: &[f32],
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst_stride: usize,
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; cols * dst_stride];
    for r in 0..rows {
        for (c, &v) in m[r * src_stride..][..cols].iter().enumerate() {
            out[c * dst_stride + r] = v * scale;
        }
    }
    out
}

/// (rows, cols) -> (rows, R) with R = lanes(cols): each row zero-padded, times `scale`.
pub fn pad_rows(m: &[f32], cols: usize, scale: f32) -> Vec<f32> {
    let rr = lanes(cols);
    let mut out = vec![0f32; m.len() / cols * rr];
    for (dst, src) in out.chunks_mut(rr).zip(m.chunks(cols)) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s * scale;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! Each kernel against the textbook sum in f64, on shapes that leave every remainder
    //! path a part: ranks below, at and above one vector, widths not a multiple of the chunk,
    //! row counts not a multiple of the row block or of a task.

    use super::*;
    use crate::backprop::kernels::tests::random;

    fn close(got: f32, want: f64, what: &str) {
        assert!(
            (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "{what}: {got} vs {want}"
        );
    }

    /// (rows, width, rank).
    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 3, 1),
        (5, 200, 8),
        (300, 24, 16),
        (7, 19, 5),
        (45, 70, 16),
        (33, 64, 17),
        (9, 130, 40),
    ];

    /// Every instruction set this machine runs, on every shape.
    fn cases() -> Vec<(Isa, (usize, usize, usize))> {
        Isa::available()
            .into_iter()
            .flat_map(|isa| SHAPES.map(|shape| (isa, shape)))
            .collect()
    }

    #[test]
    fn thin_matches_the_reference() {
        for (isa, (n, k, r)) in cases() {
            let x = random(n * k, 1);
            let w = random(k * r, 2);
            let rr = lanes(r);
            let got = thin(isa, &x, k, &pad_rows(&w, r, 1.0), rr);
            for i in 0..n {
                for j in 0..rr {
                    let want: f64 = if j < r {
                        (0..k)
                            .map(|c| x[i * k + c] as f64 * w[c * r + j] as f64)
                            .sum()
                    } else {
                        0.0
                    };
                    close(
                        got[i * rr + j],
                        want,
                        &format!("thin {isa:?} {n}x{k}x{r} [{i},{j}]"),
                    );
                }
            }
        }
    }

    #[test]
    fn add_low_rank_matches_the_reference() {
        for (isa, (n, width, r)) in cases() {
            let rr = lanes(r);
            let inner = pad_rows(&random(n * r, 3), r, 1.0);
            let m = random(r * width, 4);
            let y0 = random(n * width, 5);
            for mask in [None, Some(random(n * width, 6))] {
                let mut y = y0.clone();
                add_low_rank(isa, &mut y, width, &inner, r, &m, mask.as_deref());
                for i in 0..n {
                    for c in 0..width {
                        let dot: f64 = (0..r)
                            .map(|j| inner[i * rr + j] as f64 * m[j * width + c] as f64)
                            .sum();
                        let mk = mask.as_ref().map_or(1.0, |mk| mk[i * width + c] as f64);
                        close(
                            y[i * width + c],
                            y0[i * width + c] as f64 + dot * mk,
                            "add_low_rank",
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn accumulate_outer_matches_the_reference() {
        for (isa, (n, k, r)) in cases() {
            let rr = lanes(r);
            let x = random(n * k, 7);
            let inner = pad_rows(&random(n * r, 8), r, 1.0);
            let acc0 = random(r * k, 9);
            for mask in [None, Some(random(n * k, 10))] {
                let mut acc = acc0.clone();
                accumulate_outer(isa, &mut acc, r, &x, k, &inner, mask.as_deref());
                for j in 0..r {
                    for c in 0..k {
                        let sum: f64 = (0..n)
                            .map(|i| {
                                let mk = mask.as_ref().map_or(1.0, |mk| mk[i * k + c] as f64);
                                x[i * k + c] as f64 * mk * inner[i * rr + j] as f64
                            })
                            .sum();
                        close(
                            acc[j * k + c],
                            acc0[j * k + c] as f64 + sum,
                            &format!("accumulate_outer {isa:?} {n}x{k}x{r} [{j},{c}]"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn transposes_pad_and_scale() {
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // (2, 3)
        let t = transpose(&m, 2, 3, 3, lanes(2), 2.0);
        assert_eq!(t.len(), 3 * LANES);
        assert_eq!(&t[..2], &[2.0, 8.0]);
        assert_eq!(&t[LANES..LANES + 2], &[4.0, 10.0]);
        assert!(t[2..LANES].iter().all(|&v| v == 0.0));
        let p = pad_rows(&m, 3, 1.0);
        assert_eq!(&p[..4], &[1.0, 2.0, 3.0, 0.0]);
        assert_eq!(&p[LANES..LANES + 3], &[4.0, 5.0, 6.0]);
    }
}
