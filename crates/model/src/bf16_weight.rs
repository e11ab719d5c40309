//! A frozen weight held as bf16 (2 bytes a parameter), laid out for the two products a frozen
//! linear needs: y = x Wᵀ (forward) and dx = dy W (input gradient), f32 in, f32 out, f32
//! accumulation; the activations are rounded to bf16 on the way in, as under PyTorch's bf16
//! autocast.
//!
//! Both products are C (n × N) = A (n × K) · B (K × N) with A the activations. Both operands
//! are laid out as whole 1 KiB tiles, each contiguous, in the order the kernel reads them
//! (contiguous tile loads keep the hardware prefetchers ahead of the matrix unit):
//! - B in panels of 32 columns; per panel, per step of 32 along K, two tiles (columns 0..16
//!   and 16..32), each 16 pair rows × 16 columns of u32 holding the bf16 pair
//!   (B[2p][n], B[2p + 1][n]), the lower k in the low half: the layout `tdpbf16ps` reads.
//! - A in blocks of 16 rows; per block, per step of 32 along K, one tile of 16 rows × 32 bf16.
//!
//! The forward B (= Wᵀ) is built at load; the backward one (= W) on the first backward, so
//! inference holds one copy.
//!
//! o out features, i in features, n rows, K the summed dimension, N the output columns,
//! p pairs along K.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::amx;
use crate::compact::CompactWeight;
pub use crate::compact::Product;
use crate::dpbf16;

/// Columns of one panel of B (and rows of one block of C).
const PANEL: usize = amx::BLOCK;
/// K covered by one tile step.
const KSTEP: usize = 32;
/// u32 words in one B tile, u16 values in one A tile.
const B_TILE: usize = 256;
const A_TILE: usize = 512;

/// Where B's pair (B[2p][n], B[2p + 1][n]) sits in the tiled layout with `ks` K steps.
fn b_index(ks: usize, p: usize, n: usize) -> usize {
    let (panel, col) = (n / PANEL, n % PANEL);
    (((panel * ks + p / 16) * 2 + col / 16) * B_TILE) + (p % 16) * 16 + col % 16
}

/// Where A[row][k] sits in the tiled layout with `ks` K steps.
fn a_index(ks: usize, row: usize, k: usize) -> usize {
    ((row / 16) * ks + k / KSTEP) * A_TILE + (row % 16) * KSTEP + k % KSTEP
}

/// Round to nearest even; NaN stays NaN. Branch-free, so loops over it vectorize.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        0x7FC0
    } else {
        rounded
    }
}

/// `dst` ← `src` rounded to bf16 bits, 16 lanes at a time where the processor has AVX-512
/// (the same arithmetic as `bf16_bits`, compiled wider; the activations of every bf16
/// product go through here).
fn to_bf16(src: &[f32], dst: &mut [u16]) {
    #[inline(always)]
    fn plain(src: &[f32], dst: &mut [u16]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = bf16_bits(v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::linear::has_avx512() {
        #[target_feature(enable = "avx512f")]
        unsafe fn wide(src: &[f32], dst: &mut [u16]) {
            plain(src, dst)
        }
        // SAFETY: has_avx512 checked the processor at run time.
        return unsafe { wide(src, dst) };
    }
    plain(src, dst)
}

/// The kernels that multiply by a bf16 weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// AMX tiles (Intel Sapphire Rapids and later).
    Amx,
    /// AVX512-BF16 dot instructions over the same layout (AMD Zen 4, Intel Cooper Lake).
    Avx512Bf16,
    /// Plain Rust over the same layout, on any processor.
    Portable,
}

impl Bf16Kernel {
    /// Every kernel this machine can run, fastest first.
    pub fn available() -> Vec<Self> {
        let mut out = Vec::new();
        if cfg!(target_arch = "x86_64") && amx::available() {
            out.push(Self::Amx);
        }
        if cfg!(target_arch = "x86_64") && dpbf16::available() {
            out.push(Self::Avx512Bf16);
        }
        out.push(Self::Portable);
        out
    }

    /// The kernel used: the fastest available, or `TUNA_KERNEL=amx|avx512bf16|portable` where the
    /// machine can run it (tests and benchmarks force a path this way).
    pub fn chosen() -> Self {
        static CHOSEN: OnceLock<Bf16Kernel> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let available = Self::available();
            let forced = std::env::var("TUNA_KERNEL")
                .ok()
                .and_then(|v| match v.as_str() {
                    "amx" => Some(Self::Amx),
                    "avx512bf16" => Some(Self::Avx512Bf16),
                    "portable" => Some(Self::Portable),
                    _ => None,
                });
            match forced {
                Some(k) if available.contains(&k) => k,
                _ => available[0],
            }
        })
    }

    /// Whether a product of `rows` rows runs faster through f32 gemm over the weight decoded
    /// (`dense::decoded_rows`) than on this kernel: always for the portable kernel; for
    /// AVX512-BF16 where `vdpbf16ps` is slower than f32 FMAs (`dpbf16::outpaces_f32`) and
    /// the batch is big enough to pay for decoding the weight (measured:
    /// `F32_MIN_ROWS`); never for AMX.
    pub fn prefers_f32(self, rows: usize) -> bool {
        match self {
            Self::Amx => false,
            Self::Avx512Bf16 => !dpbf16::outpaces_f32() && rows >= F32_MIN_ROWS,
            Self::Portable => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx-bf16",
            Self::Avx512Bf16 => "avx512-bf16",
            Self::Portable => "portable-bf16",
        }
    }
}

/// Rows from which a product on a processor whose `vdpbf16ps` is slower than its f32 FMAs
/// goes through f32 gemm instead (`Bf16Kernel::prefers_f32`); below it, tiles made once at
/// load beat decoding the weight for every product. Measured on the Intel Xeon without AMX
/// (`tuna bench score --weights bf16 --chunks 1 --seq-len L`, tok/s with tiles / gemm):
/// L = 128: 434 / 332, 256: 449 / 440, 384: 466 / 487, 512: 434 / 507.
const F32_MIN_ROWS: usize = 320;

#[derive(Debug)]
pub struct Bf16Weight {
    pub out_features: usize,
    pub in_features: usize,
    /// B = Wᵀ in panels: [o_pad / 32][i_pad / 2][32].
    forward: Vec<u32>,
    /// B = W in panels: [i_pad / 32][o_pad / 2][32].
    backward: OnceLock<Vec<u32>>,
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(bf16_bits(lo)) | (u32::from(bf16_bits(hi)) << 16)
}

impl Bf16Weight {
    /// From W (o, i) f32, row-major.
    pub fn from_f32(w: &[f32], out_features: usize, in_features: usize) -> Self {
        let (o, i) = (out_features, in_features);
        assert_eq!(w.len(), o * i, "bf16 weight: {o} x {i} values expected");
        let rows =
            |first: usize, out: &mut [f32]| out.copy_from_slice(&w[first * i..][..out.len()]);
        let forward = tile_transposed_rows(&rows, o, i);
        Self {
            out_features: o,
            in_features: i,
            forward,
            backward: OnceLock::new(),
        }
    }

    fn padded(&self) -> (usize, usize) {
        (
            round_up(self.out_features, PANEL),
            round_up(self.in_features, PANEL),
        )
    }

    /// Whole rows first.. of W as f32 into `out`. Rows go 16 at a time, the columns of one
    /// half of a panel: each pair of columns is then 16 adjacent words of the tiles.
    pub fn decode_rows(&self, first: usize, out: &mut [f32]) {
        let (i, ks) = (self.in_features, self.padded().1 / KSTEP);
        let mut row = first;
        for block in out.chunks_mut(16 * i) {
            let rows = block.len() / i;
            // Rows row.. share a half panel where row is a multiple of 16 (as the callers'
            // blocks are); elsewhere a block is split at the next multiple.
            let here = rows.min(16 - row % 16);
            for p in 0..i.div_ceil(2) {
                let words = &self.forward[b_index(ks, p, row)..][..here];
                for (r, &word) in words.iter().enumerate() {
                    block[r * i + 2 * p] = f32::from_bits(word << 16);
                    if 2 * p + 1 < i {
                        block[r * i + 2 * p + 1] = f32::from_bits(word & 0xffff_0000);
                    }
                }
            }
            if here < rows {
                self.decode_rows(row + here, &mut block[here * i..]);
            }
            row += rows;
        }
    }

    /// W (o, i) as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out_features * self.in_features];
        self.decode_rows(0, &mut w);
        w
    }

    fn backward_panels(&self) -> &[u32] {
        self.backward.get_or_init(|| {
            let rows = |first: usize, out: &mut [f32]| self.decode_rows(first, out);
            tile_rows(&rows, self.out_features, self.in_features)
        })
    }

    /// The product over `x` (rows × K), row-major; returns rows × N.
    pub fn product(&self, x: &[f32], product: Product, kernel: Bf16Kernel) -> Vec<f32> {
        let panels = match product {
            Product::XWt => &self.forward,
            Product::DyW => self.backward_panels(),
        };
        let b = tiled(panels, (self.out_features, self.in_features), product);
        run(Activations::Rows(x), b, kernel, None)
    }
}

/// The product of `x` with a weight W (o, i) that `rows` decodes (`rows(first, out)` fills
/// whole rows first.. into out), through bf16 tiles made for this call only: the weight
/// stays in whatever compact form its owner holds, and each row is decoded once.
pub fn product_of_rows(
    rows: &(dyn Fn(usize, &mut [f32]) + Sync),
    (o, i): (usize, usize),
    x: &[f32],
    product: Product,
    kernel: Bf16Kernel,
) -> Vec<f32> {
    let panels = tile(rows, (o, i), product);
    run(
        Activations::Rows(x),
        tiled(&panels, (o, i), product),
        kernel,
        None,
    )
}

/// `product_of_rows` into `y` (every value written), with the activations in either layout;
/// `causal` says which part of a causal attention product may be skipped.
pub fn product_of_rows_into(
    rows: &(dyn Fn(usize, &mut [f32]) + Sync),
    (o, i): (usize, usize),
    x: Activations,
    (product, causal): (Product, Option<Causal>),
    kernel: Bf16Kernel,
    y: &mut [MaybeUninit<f32>],
) {
    let panels = tile(rows, (o, i), product);
    run_into(x, tiled(&panels, (o, i), product), kernel, causal, y);
}

/// The B operand of `product` over W (o, i) that `rows` decodes, tiled.
fn tile(
    rows: &(dyn Fn(usize, &mut [f32]) + Sync),
    (o, i): (usize, usize),
    product: Product,
) -> Vec<u32> {
    match product {
        Product::XWt => tile_transposed_rows(rows, o, i),
        Product::DyW => tile_rows(rows, o, i),
    }
}

fn tiled(panels: &[u32], (o, i): (usize, usize), product: Product) -> Tiled<'_> {
    let (op, ip) = (round_up(o, PANEL), round_up(i, PANEL));
    match product {
        Product::XWt => Tiled::new(panels, i, ip, o),
        Product::DyW => Tiled::new(panels, o, op, i),
    }
}

/// The activations of a product (its A operand), f32.
#[derive(Debug, Clone, Copy)]
pub enum Activations<'a> {
    /// rows × K, row-major.
    Rows(&'a [f32]),
    /// K × rows, row-major: the product is over its transpose (attention's dyᵀ and qᵀ),
    /// which is read in place.
    Transposed(&'a [f32]),
}

impl<'a> Activations<'a> {
    /// The values, in whichever layout.
    pub fn values(self) -> &'a [f32] {
        let (Self::Rows(v) | Self::Transposed(v)) = self;
        v
    }
}

/// A product's B operand as tiled: K summed values (padded to `kp`), N output columns.
#[derive(Debug, Clone, Copy)]
struct Tiled<'a> {
    panels: &'a [u32],
    k: usize,
    kp: usize,
    n: usize,
}

impl<'a> Tiled<'a> {
    fn new(panels: &'a [u32], k: usize, kp: usize, n: usize) -> Self {
        Self { panels, k, kp, n }
    }
}

/// The products of causal attention, where row r of x is the query at position r % `period`
/// (query heads stacked, `period` tokens each), which sees keys 0..=r % period only: each
/// block of 32 rows skips what lies past its last position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causal {
    /// The output's columns are keys (q·kᵀ, dy·vᵀ); those past a block's last position are
    /// not computed but set to zero (their values are masked anyway).
    Columns { period: usize },
    /// x's columns (the summed dimension) are keys and x is zero past each row's position
    /// (p·v, ds·k): each block's sum stops at its last position, same result.
    Depth { period: usize },
}

impl Causal {
    /// Keys that rows first..first + len (len ≥ 1) see, together.
    fn reach(self, first: usize, len: usize) -> usize {
        let (Self::Columns { period } | Self::Depth { period }) = self;
        let last = first + len - 1;
        if first / period == last / period {
            last % period + 1
        } else {
            period
        }
    }
}

/// B = Wᵀ tiled (K = i, N = o): 32 rows of W are one panel, contiguous.
fn tile_transposed_rows(rows: &(dyn Fn(usize, &mut [f32]) + Sync), o: usize, i: usize) -> Vec<u32> {
    let (op, ip) = (round_up(o, PANEL), round_up(i, PANEL));
    let ks = ip / KSTEP;
    let mut out = vec![0u32; ip * op / 2];
    out.par_chunks_mut(ip / 2 * PANEL)
        .enumerate()
        .for_each(|(panel, out)| {
            let n0 = panel * PANEL;
            let here = PANEL.min(o - n0);
            let mut w = vec![0f32; PANEL * ip];
            let mut row = vec![0f32; i];
            for c in 0..here {
                rows(n0 + c, &mut row);
                w[c * ip..][..i].copy_from_slice(&row);
            }
            // Tile (s, half): 16 pair rows p of 16 columns; column c is W's row half·16 + c.
            for s in 0..ks {
                for half in 0..2 {
                    let tile = &mut out[(s * 2 + half) * B_TILE..][..B_TILE];
                    for c in 0..16 {
                        let src = &w[(half * 16 + c) * ip + s * KSTEP..][..KSTEP];
                        for p in 0..16 {
                            tile[p * 16 + c] = pair(src[2 * p], src[2 * p + 1]);
                        }
                    }
                }
            }
        });
    out
}

/// B = W tiled (K = o, N = i): 32 rows of W are one step along K of every panel.
fn tile_rows(rows: &(dyn Fn(usize, &mut [f32]) + Sync), o: usize, i: usize) -> Vec<u32> {
    let (op, ip) = (round_up(o, PANEL), round_up(i, PANEL));
    let ks = op / KSTEP;
    let panels = ip / PANEL;
    let mut out = vec![0u32; op * ip / 2];
    // Each K step writes its two tiles in every panel: disjoint, strided ranges.
    let base = SendPtr(out.as_mut_ptr());
    (0..ks).into_par_iter().for_each(|s| {
        let base = &base;
        let r0 = s * KSTEP;
        let here = KSTEP.min(o.saturating_sub(r0));
        let mut w = vec![0f32; KSTEP * ip];
        for r in 0..here {
            rows(r0 + r, &mut w[r * ip..][..i]);
        }
        let mut tile = [0u32; B_TILE];
        for panel in 0..panels {
            for half in 0..2 {
                let n0 = panel * PANEL + half * 16;
                for p in 0..16 {
                    let (lo, hi) = (
                        &w[2 * p * ip + n0..][..16],
                        &w[(2 * p + 1) * ip + n0..][..16],
                    );
                    for c in 0..16 {
                        tile[p * 16 + c] = pair(lo[c], hi[c]);
                    }
                }
                let at = ((panel * ks + s) * 2 + half) * B_TILE;
                // SAFETY: tile (panel, s, half) is written by step s alone, and lies inside
                // `out` (op · ip / 2 words = panels · ks · 2 tiles).
                unsafe { std::ptr::copy_nonoverlapping(tile.as_ptr(), base.0.add(at), B_TILE) };
            }
        }
    });
    out
}

/// A pointer that rayon tasks may share; every use says why its writes are disjoint.
struct SendPtr<T>(*mut T);
// SAFETY: only used for disjoint writes (see tile_rows and run).
unsafe impl<T> Sync for SendPtr<T> {}

/// C (rows × N) = x (rows × K) · B.
fn run(x: Activations, b: Tiled, kernel: Bf16Kernel, causal: Option<Causal>) -> Vec<f32> {
    let rows = x.values().len() / b.k;
    let mut y: Vec<f32> = Vec::with_capacity(rows * b.n);
    run_into(
        x,
        b,
        kernel,
        causal,
        &mut y.spare_capacity_mut()[..rows * b.n],
    );
    // SAFETY: run_into wrote every one of the rows · N values.
    unsafe { y.set_len(rows * b.n) };
    y
}

/// A: the activations' rows padded to whole blocks of 16, K to whole steps, zeros beyond,
/// rounded to bf16, tiled.
fn tile_activations(x: Activations, k: usize, kp: usize) -> Vec<u16> {
    let (values, rows) = (x.values(), x.values().len() / k);
    // Filled by the tasks below, every value once, so not zeroed first (zeroing took 3% of
    // a training step: perf, BENCHMARKS.md).
    let ks = kp / KSTEP;
    let mp = round_up(rows, PANEL);
    let mut a: Vec<u16> = Vec::with_capacity(mp * kp);
    let a_out = SendPtr(a.as_mut_ptr());
    (0..mp / 16).into_par_iter().for_each(|block| {
        let a_out = &a_out;
        let here = 16.min(rows.saturating_sub(block * 16));
        // SAFETY: block `block` writes its own 16 · kp values (the whole block: zeros
        // first where any of it is padding), inside the capacity of `a`.
        unsafe {
            let dst = a_out.0.add(block * 16 * kp);
            if block * 16 + 16 > rows || k < kp {
                std::ptr::write_bytes(dst, 0, 16 * kp);
            }
            match x {
                Activations::Rows(_) => {
                    for r in 0..here {
                        let src = &values[(block * 16 + r) * k..][..k];
                        for (j, chunk) in src.chunks(KSTEP).enumerate() {
                            let at = dst.add(a_index(ks, r, j * KSTEP));
                            to_bf16(chunk, std::slice::from_raw_parts_mut(at, chunk.len()));
                        }
                    }
                }
                // A block past the last row is padding only, zeroed above.
                Activations::Transposed(_) if here == 0 => {}
                Activations::Transposed(_) => {
                    let mut column = [0u16; 16];
                    for kk in 0..k {
                        let src = &values[kk * rows + block * 16..][..here];
                        to_bf16(src, &mut column[..here]);
                        for (r, &v) in column[..here].iter().enumerate() {
                            *dst.add(a_index(ks, r, kk)) = v;
                        }
                    }
                }
            }
        }
    });
    // SAFETY: every one of the mp · kp values was written above.
    unsafe { a.set_len(mp * kp) };
    a
}

/// C (rows × N) = x (rows × K) · B into `y`, every value written.
fn run_into(
    x: Activations,
    b: Tiled,
    kernel: Bf16Kernel,
    causal: Option<Causal>,
    y: &mut [MaybeUninit<f32>],
) {
    let Tiled {
        panels,
        k,
        kp,
        n: n_out,
    } = b;
    let rows = y.len() / n_out.max(1);
    if rows == 0 {
        return;
    }
    let ks = kp / KSTEP;
    let mp = round_up(rows, PANEL);
    let a = tile_activations(x, k, kp);

    // Tasks are (row chunk, group of B panels): few rows still spread over every thread.
    let threads = rayon::current_num_threads().max(1);
    let chunk_blocks = (mp / PANEL).div_ceil(2 * threads).clamp(1, 4);
    let chunk_rows = chunk_blocks * PANEL;
    let row_chunks = rows.div_ceil(chunk_rows);
    let panel_len = kp / 2 * PANEL;
    let n_panels = panels.len() / panel_len;
    let per_group = n_panels.div_ceil((2 * threads).div_ceil(row_chunks).clamp(1, n_panels));
    let groups = n_panels.div_ceil(per_group);
    let out = SendPtr(y.as_mut_ptr().cast::<f32>());
    (0..row_chunks * groups).into_par_iter().for_each(|task| {
        let out = &out;
        let (chunk, group) = (task / groups, task % groups);
        let first = chunk * chunk_rows;
        let rows_here = chunk_rows.min(rows - first);
        let panel_range = group * per_group..((group + 1) * per_group).min(n_panels);
        let mut c = [0f32; PANEL * PANEL];
        // SAFETY (every write below): task (chunk, group) writes rows first..first +
        // rows_here and the columns of its own panels only, so tasks write disjoint parts
        // of y, which outlives the parallel loop.
        let store = |c: &[f32], block: usize, panel: usize| unsafe {
            scatter(c, out.0, first + block, panel, rows_here - block, n_out)
        };
        // The K steps block `block` sums over, or None where its panel's columns are keys
        // it does not see (then the block is zero).
        let steps = |block: usize, panel: usize| {
            let reach = |c: Causal| c.reach(first + block, PANEL.min(rows_here - block));
            match causal {
                None => Some(ks),
                Some(c @ Causal::Columns { .. }) => (panel * PANEL < reach(c)).then_some(ks),
                Some(c @ Causal::Depth { .. }) => Some(ks.min(reach(c).div_ceil(KSTEP))),
            }
        };
        #[cfg(target_arch = "x86_64")]
        if kernel != Bf16Kernel::Portable {
            type BlockKernel = unsafe fn(*const u16, *const u32, usize, usize, *mut f32, usize);
            let block_kernel: BlockKernel = match kernel {
                Bf16Kernel::Amx => amx::block,
                _ => dpbf16::block,
            };
            // SAFETY: Amx and Avx512Bf16 are only offered where the processor runs them
            // (amx::available, dpbf16::available); the AMX tile configuration is loaded on
            // this thread first. A holds `mp` padded rows in whole tiles, each B panel `ks`
            // steps of two tiles (steps ≤ ks), and a block is stored either whole inside y
            // (32 rows and 32 columns left, inside this task's part) or into `c`.
            unsafe {
                if kernel == Bf16Kernel::Amx {
                    amx::configure();
                }
                for panel in panel_range {
                    let b = panels[panel * panel_len..].as_ptr();
                    for block in (0..rows_here).step_by(PANEL) {
                        let a = a[(first + block) * kp..].as_ptr();
                        let whole = rows_here - block >= PANEL && n_out - panel * PANEL >= PANEL;
                        match steps(block, panel) {
                            Some(steps) if whole => {
                                let at = (first + block) * n_out + panel * PANEL;
                                block_kernel(a, b, ks, steps, out.0.add(at), n_out * 4);
                            }
                            Some(steps) => {
                                block_kernel(a, b, ks, steps, c.as_mut_ptr(), PANEL * 4);
                                store(&c, block, panel);
                            }
                            None => store(&[0f32; PANEL * PANEL], block, panel),
                        }
                    }
                }
                if kernel == Bf16Kernel::Amx {
                    amx::release();
                }
            }
            return;
        }
        for panel in panel_range {
            let b = &panels[panel * panel_len..][..panel_len];
            for block in (0..rows_here).step_by(PANEL) {
                match steps(block, panel) {
                    Some(steps) => portable_block(&a[(first + block) * kp..], ks, steps, b, &mut c),
                    None => c.fill(0.0),
                }
                store(&c, block, panel);
            }
        }
    });
    // The tasks cover every (row, column) of y once: row chunks × panel groups tile rows ×
    // n_out, and each block is stored whole or through `scatter`, which copies the block's
    // part inside y.
}

/// Copies the part of block C (32 × 32) that falls inside y (rows × n_out, row-major): rows
/// row0.. (at most `rows_left` of them), the columns of `panel`.
///
/// # Safety
/// `y` must hold rows row0 + min(32, rows_left) of n_out values, and no one else may access
/// those cells meanwhile.
unsafe fn scatter(
    c: &[f32],
    y: *mut f32,
    row0: usize,
    panel: usize,
    rows_left: usize,
    n_out: usize,
) {
    let col0 = panel * PANEL;
    let cols = PANEL.min(n_out - col0);
    for r in 0..PANEL.min(rows_left) {
        // SAFETY: inside y by the contract above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                c[r * PANEL..].as_ptr(),
                y.add((row0 + r) * n_out + col0),
                cols,
            )
        };
    }
}

/// C = A · B for one 32 × 32 block over the first `steps` of `ks` K steps, the arithmetic
/// of `tdpbf16ps` in plain Rust: A two 16-row blocks of `ks` tiles, B one panel of `ks` steps.
fn portable_block(a: &[u16], ks: usize, steps: usize, b: &[u32], c: &mut [f32]) {
    let widen = |bits: u16| f32::from_bits(u32::from(bits) << 16);
    for r in 0..PANEL {
        let mut acc = [0f32; PANEL];
        for p in 0..steps * KSTEP / 2 {
            let at = a_index(ks, r, 2 * p);
            let (x0, x1) = (widen(a[at]), widen(a[at + 1]));
            if x0 == 0.0 && x1 == 0.0 {
                continue;
            }
            for (col, acc) in acc.iter_mut().enumerate() {
                let w = b[b_index(ks, p, col)];
                *acc += x0 * widen(w as u16) + x1 * widen((w >> 16) as u16);
            }
        }
        c[r * PANEL..][..PANEL].copy_from_slice(&acc);
    }
}

impl CompactWeight for Bf16Weight {
    fn out_features(&self) -> usize {
        self.out_features
    }

    fn in_features(&self) -> usize {
        self.in_features
    }

    fn product(&self, x: &[f32], product: Product) -> Vec<f32> {
        let kernel = Bf16Kernel::chosen();
        let shape = (self.out_features, self.in_features);
        let (k, _) = product.dims(shape);
        if kernel.prefers_f32(x.len() / k.max(1)) {
            let decode = |first: usize, out: &mut [f32]| self.decode_rows(first, out);
            return crate::dense::decoded_rows(&decode, shape, x, product);
        }
        Bf16Weight::product(self, x, product, kernel)
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn round(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
    }

    /// The f64 product of bf16-rounded operands: what every kernel must reach up to f32
    /// summation order.
    fn reference(x: &[f32], w: &[f32], rows: usize, o: usize, i: usize, p: Product) -> Vec<f32> {
        let (x, w) = (round(x), round(w));
        let (k, n) = match p {
            Product::XWt => (i, o),
            Product::DyW => (o, i),
        };
        let mut y = vec![0f32; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let s: f64 = (0..k)
                    .map(|j| {
                        let wv = match p {
                            Product::XWt => w[c * i + j],
                            Product::DyW => w[j * i + c],
                        };
                        x[r * k + j] as f64 * wv as f64
                    })
                    .sum();
                y[r * n + c] = s as f32;
            }
        }
        y
    }

    /// decode_rows gives the weight as held (bf16-rounded), from any first row, over odd
    /// widths and row counts that cross half panels.
    #[test]
    fn decoded_rows_are_the_rounded_weight() {
        for (o, i) in [(1, 1), (37, 45), (70, 64), (16, 3)] {
            let w = values(o * i, 7);
            let weight = Bf16Weight::from_f32(&w, o, i);
            let want = round(&w);
            for (first, rows) in [(0, o), (o / 3, o - o / 3), (o - 1, 1)] {
                let mut got = vec![f32::NAN; rows * i];
                weight.decode_rows(first, &mut got);
                assert_eq!(
                    got,
                    want[first * i..][..rows * i],
                    "({o}, {i}) rows {first}.."
                );
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_reference_on_odd_shapes() {
        // Shapes that are not multiples of a block anywhere, one that is, one row, and few
        // rows over many panels (the panels split across tasks).
        for &(rows, o, i) in &[
            (37, 45, 70),
            (64, 64, 96),
            (1, 33, 31),
            (70, 3, 130),
            (3, 200, 40),
            (33, 130, 20),
        ] {
            let w = values(o * i, 1);
            let weight = Bf16Weight::from_f32(&w, o, i);
            assert_eq!(weight.to_f32(), round(&w), "{o}x{i}: bf16 round trip");
            for product in [Product::XWt, Product::DyW] {
                let k = if product == Product::XWt { i } else { o };
                let x = values(rows * k, 2);
                let want = reference(&x, &w, rows, o, i, product);
                for kernel in Bf16Kernel::available() {
                    let got = weight.product(&x, product, kernel);
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        worst < 1e-5 * k as f32,
                        "{kernel:?} {product:?} rows {rows}, {o}x{i}: off by {worst}"
                    );
                }
            }
        }
    }

    /// `product_of_rows_into` with activations given transposed, and with the parts of
    /// causal attention's products that it skips: keys past each query's position.
    #[test]
    fn transposed_activations_and_causal_skips_match_the_reference() {
        // Two heads of 63 queries, 63 keys of width 24: the block of rows 32..64 straddles
        // the heads, and the block of rows 64..96 ends at position 32, the first key of
        // the second panel and of the second step along K.
        let (period, heads, width) = (63, 2, 24);
        let rows = heads * period;
        fn product_into(
            w: &[f32],
            (o, i): (usize, usize),
            x: Activations,
            how: (Product, Option<Causal>),
            kernel: Bf16Kernel,
        ) -> Vec<f32> {
            let read =
                |first: usize, out: &mut [f32]| out.copy_from_slice(&w[first * i..][..out.len()]);
            let (k, n_out) = if how.0 == Product::XWt {
                (i, o)
            } else {
                (o, i)
            };
            let len = x.values().len() / k * n_out;
            let mut y = Vec::with_capacity(len);
            product_of_rows_into(
                &read,
                (o, i),
                x,
                how,
                kernel,
                &mut y.spare_capacity_mut()[..len],
            );
            // SAFETY: product_of_rows_into writes every value.
            unsafe { y.set_len(len) };
            y
        }
        let close = |got: &[f32], want: &[f32], k: usize, what: &str| {
            assert_eq!(got.len(), want.len());
            for (at, (a, b)) in got.iter().zip(want).enumerate() {
                assert!((a - b).abs() < 1e-5 * k as f32, "{what} [{at}]: {a} vs {b}");
            }
        };
        let transpose = |x: &[f32], r: usize, c: usize| -> Vec<f32> {
            (0..r * c).map(|at| x[(at % r) * c + at / r]).collect()
        };
        for kernel in Bf16Kernel::available() {
            // Scores: queries · keysᵀ, columns past each query's position zero.
            let (q, keys) = (values(rows * width, 3), values(period * width, 4));
            let mut want = reference(&q, &keys, rows, period, width, Product::XWt);
            for (r, row) in want.chunks_mut(period).enumerate() {
                row[r % period + 1..].fill(0.0);
            }
            let columns = Some(Causal::Columns { period });
            let mut got = product_into(
                &keys,
                (period, width),
                Activations::Rows(&q),
                (Product::XWt, columns),
                kernel,
            );
            for (r, row) in got.chunks_mut(period).enumerate() {
                row[r % period + 1..].fill(0.0);
            }
            close(&got, &want, width, &format!("{kernel:?} causal columns"));
            // p · v with p zero past each query's position: the sum stops there.
            let mut p = values(rows * period, 5);
            for (r, row) in p.chunks_mut(period).enumerate() {
                row[r % period + 1..].fill(0.0);
            }
            let v = values(period * width, 6);
            let want = reference(&p, &v, rows, period, width, Product::DyW);
            let depth = Some(Causal::Depth { period });
            let got = product_into(
                &v,
                (period, width),
                Activations::Rows(&p),
                (Product::DyW, depth),
                kernel,
            );
            close(&got, &want, period, &format!("{kernel:?} causal depth"));
            // The same product over pᵀ given as its transpose, both products.
            let pt = transpose(&p, rows, period);
            let got = product_into(
                &v,
                (period, width),
                Activations::Transposed(&pt),
                (Product::DyW, None),
                kernel,
            );
            close(&got, &want, period, &format!("{kernel:?} transposed DyW"));
            // p · v again, as p · (vᵀ)ᵀ.
            let vt = transpose(&v, period, width);
            let got = product_into(
                &vt,
                (width, period),
                Activations::Transposed(&pt),
                (Product::XWt, None),
                kernel,
            );
            close(&got, &want, period, &format!("{kernel:?} transposed XWt"));
            // Few rows: blocks of A that are padding only.
            let few = &p[..5 * period];
            let rows = Activations::Rows(few);
            let want = product_into(&v, (period, width), rows, (Product::DyW, None), kernel);
            let few_t = transpose(few, 5, period);
            let got = product_into(
                &v,
                (period, width),
                Activations::Transposed(&few_t),
                (Product::DyW, None),
                kernel,
            );
            close(
                &got,
                &want,
                period,
                &format!("{kernel:?} transposed, 5 rows"),
            );
        }
    }
}
