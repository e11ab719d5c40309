//! Row-wise kernels of the hand-written training pass, each a forward and its backward on
//! plain f32 slices (row-major), parallel over rows. Matrix products stay with candle's
//! matmul; everything between them lives here, so that a layer keeps only the activations its
//! backward needs instead of every intermediate of a composed op.
//!
//! n rows, d width, b batch, t tokens, h heads, hd head dim, f = hd/2 rope frequencies.

use std::mem::MaybeUninit;
use std::ops::Deref;

use candle_core::{CpuStorage, Device, Result, Storage, StorageRef, Tensor};
use rayon::prelude::*;

/// Rows per rayon task: enough work per task that scheduling stays negligible.
const MIN_ROWS_PER_TASK: usize = 8;

/// A vector of `len` values that `fill` writes, without zeroing it first: the activations
/// here are megabytes, and zeroing them before every write took 4–6% of a training step in
/// memset (perf, BENCHMARKS.md).
///
/// # Safety
/// `fill` writes every one of the `len` values of the slice it gets.
unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: fill wrote every value (the caller's contract).
    unsafe { v.set_len(len) };
    v
}

/// `src` copied into `dst` (same length), which is then initialized.
fn init_from<'a>(dst: &'a mut [MaybeUninit<f32>], src: &[f32]) -> &'a mut [f32] {
    assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
    // SAFETY: every value of dst was written just above.
    unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A contiguous f32 CPU tensor read in place.
pub struct F32View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl Deref for F32View<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            _ => unreachable!("F32View is only built over f32 CPU storage"),
        }
    }
}

/// Borrows the values of a contiguous f32 CPU tensor.
pub fn view(t: &Tensor) -> Result<F32View<'_>> {
    let (guard, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!(
            "backprop: expected a contiguous tensor, got {:?}",
            t.shape()
        )
    };
    if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
        candle_core::bail!("backprop: expected an f32 CPU tensor, got {:?}", t.dtype())
    }
    Ok(F32View { guard, start, end })
}

/// Owns `v` as a CPU tensor of `shape` (no copy).
pub fn tensor(v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The values of any f32 CPU tensor, copied into a fresh vector.
pub fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// RMSNorm forward: y = x · rstd · w with rstd = 1 / sqrt(mean(x²) + eps) per row. Returns
/// (y, rstd).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let n = x.len() / d;
    let mut rstd = vec![0f32; n];
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(d)
            .zip(rstd.par_iter_mut())
            .zip(x.par_chunks(d))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|((y, r), x)| {
                let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                *r = 1.0 / (mean_sq + eps as f32).sqrt();
                for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                    y.write(x * *r * w);
                }
            })
    };
    // SAFETY: the rows of d values cover y, and each value of a row is written.
    let y = unsafe { written(x.len(), fill) };
    (y, rstd)
}

/// y = x · rstd · w again from the saved rstd (cheaper to recompute than to keep).
pub fn rms_norm_apply(x: &[f32], rstd: &[f32], w: &[f32]) -> Vec<f32> {
    let d = w.len();
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .zip(rstd.par_iter())
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|((y, x), r)| {
                for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                    y.write(x * r * w);
                }
            })
    };
    // SAFETY: the rows of d values cover y, and each value of a row is written.
    unsafe { written(x.len(), fill) }
}

/// RMSNorm backward, added into `dx`: with x̂ = x · rstd and g = dy · w,
/// dx += rstd · (g − x̂ · mean(g · x̂)).
pub fn rms_norm_backward_add(x: &[f32], rstd: &[f32], w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(dy.par_chunks(d))
        .zip(rstd.par_iter())
        .with_min_len(MIN_ROWS_PER_TASK)
        .for_each(|(((dx, x), dy), &r)| {
            let dot: f32 = x
                .iter()
                .zip(dy)
                .zip(w)
                .map(|((x, dy), w)| dy * w * x * r)
                .sum::<f32>()
                / d as f32;
            for (((dx, x), dy), w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                *dx += r * (dy * w - x * r * dot);
            }
        });
}

/// One head's vector rotated by `token`'s rope angles (times `direction`, ±1), half-split
/// pairing: (x1, x2) -> (x1 cos − x2 sin, x2 cos + x1 sin). No tables: copied.
fn rotate(
    src: &[f32],
    dst: &mut [f32],
    tables: Option<(&[f32], &[f32])>,
    token: usize,
    direction: f32,
) {
    let Some((cos, sin)) = tables else {
        dst.copy_from_slice(src);
        return;
    };
    let f = src.len() / 2;
    let (c, s) = (&cos[token * f..][..f], &sin[token * f..][..f]);
    for i in 0..f {
        let (x1, x2, sin) = (src[i], src[i + f], s[i] * direction);
        dst[i] = x1 * c[i] - x2 * sin;
        dst[i + f] = x2 * c[i] + x1 * sin;
    }
}

/// Token-major (b, t, h, hd) to head-major (b, h, t, hd), rotating each head by its token's
/// rope angles (Hugging Face's half-split pairing: i with i + f). `cos`/`sin` are (b·t, f);
/// None copies without rotating (values).
pub fn to_heads(
    x: &[f32],
    tables: Option<(&[f32], &[f32])>,
    b: usize,
    t: usize,
    h: usize,
    hd: usize,
) -> Vec<f32> {
    debug_assert_eq!(x.len(), b * t * h * hd);
    let mut out = vec![0f32; x.len()];
    // One (t, hd) block per (batch, head).
    out.par_chunks_mut(t * hd)
        .enumerate()
        .for_each(|(bh, block)| {
            let (bi, head) = (bh / h, bh % h);
            for ti in 0..t {
                let token = bi * t + ti;
                let src = &x[(token * h + head) * hd..][..hd];
                let dst = &mut block[ti * hd..][..hd];
                rotate(src, dst, tables, token, 1.0);
            }
        });
    out
}

/// The backward of `to_heads`: head-major gradients back to token-major, rotated by the
/// inverse angles.
pub fn from_heads(
    dy: &[f32],
    tables: Option<(&[f32], &[f32])>,
    b: usize,
    t: usize,
    h: usize,
    hd: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; dy.len()];
    // One (h, hd) row per token.
    out.par_chunks_mut(h * hd)
        .enumerate()
        .with_min_len(MIN_ROWS_PER_TASK)
        .for_each(|(token, row)| {
            let (bi, ti) = (token / t, token % t);
            debug_assert!(bi < b);
            for head in 0..h {
                let src = &dy[((bi * h + head) * t + ti) * hd..][..hd];
                let dst = &mut row[head * hd..][..hd];
                // The inverse rotation: the angle negated.
                rotate(src, dst, tables, token, -1.0);
            }
        });
    out
}

/// σ(g) = 1 / (1 + e^−g) of each g into `out` (same length), which is then initialized.
fn sigmoid<'a>(g: &[f32], out: &'a mut [MaybeUninit<f32>]) -> &'a mut [f32] {
    let out = init_from(out, g);
    crate::vexp::exp_affine(out, -1.0, 0.0);
    for s in out.iter_mut() {
        *s = 1.0 / (1.0 + *s);
    }
    out
}

/// The gated MLP's activation: silu(gate) · up.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(4096)
            .zip(gate.par_chunks(4096))
            .zip(up.par_chunks(4096))
            .for_each(|((o, g), u)| {
                let o = sigmoid(g, o);
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g * *o * u;
                }
            })
    };
    // SAFETY: the chunks cover out, and sigmoid writes each of a chunk's values.
    unsafe { written(gate.len(), fill) }
}

/// The backward of `silu_mul`: (d gate, d up).
pub fn silu_mul_backward(gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = gate.len();
    let (mut dgate, mut dup) = (Vec::with_capacity(n), Vec::with_capacity(n));
    dgate.spare_capacity_mut()[..n]
        .par_chunks_mut(4096)
        .zip(dup.spare_capacity_mut()[..n].par_chunks_mut(4096))
        .zip(gate.par_chunks(4096))
        .zip(up.par_chunks(4096).zip(dy.par_chunks(4096)))
        .for_each(|(((dg, du), g), (u, dy))| {
            let dg = sigmoid(g, dg);
            for i in 0..g.len() {
                let s = dg[i];
                du[i].write(dy[i] * g[i] * s);
                dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
    // SAFETY: the chunks cover both vectors; sigmoid writes each of a chunk's d gate values
    // and the loop each of its d up values.
    unsafe {
        dgate.set_len(n);
        dup.set_len(n);
    }
    (dgate, dup)
}

/// Cross-entropy rows of one chunk of logits, in place: each row of `logits` (n, v) becomes
/// `scale_i · (softmax − onehot(target_i))`, the gradient of `scale_i · nll_i`. Returns the
/// rows' nll.
pub fn cross_entropy_rows(logits: &mut [f32], targets: &[u32], scales: &[f32]) -> Vec<f64> {
    let v = logits.len() / targets.len();
    let mut nll = vec![0f64; targets.len()];
    logits
        .par_chunks_mut(v)
        .zip(nll.par_iter_mut())
        .zip(targets.par_iter().zip(scales.par_iter()))
        .for_each(|((row, nll), (&target, &scale))| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let target = target as usize;
            // Before exponentiating: exp of a logit far below the max underflows to 0.
            let target_shifted = (row[target] - max) as f64;
            crate::vexp::exp_affine(row, 1.0, max);
            let sum: f64 = row.iter().map(|&x| x as f64).sum();
            // −log p(target) = log Σ exp − (logit − max)
            *nll = sum.ln() - target_shifted;
            let inv = (1.0 / sum) as f32 * scale;
            for x in row.iter_mut() {
                *x *= inv;
            }
            row[target] -= scale;
        });
    nll
}

#[cfg(test)]
pub(crate) mod tests {
    //! Every backward against central finite differences of its forward, in f64 sums of f32
    //! values: L = Σ probe · forward(x), dL/dx_i ≈ (L(x + ε e_i) − L(x − ε e_i)) / 2ε.

    use super::*;
    use rand::{Rng, SeedableRng};

    /// Seeded values in [-1, 1) (low_rank.rs's tests use them too).
    pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    /// Checks `analytic` (dL/dx) against finite differences of `loss` at every x_i.
    fn check_gradient(x: &[f32], analytic: &[f32], loss: impl Fn(&[f32]) -> f64) {
        let eps = 1e-2f32;
        for i in 0..x.len() {
            let (mut plus, mut minus) = (x.to_vec(), x.to_vec());
            plus[i] += eps;
            minus[i] -= eps;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
            let err = (numeric - analytic[i] as f64).abs();
            assert!(
                err < 2e-3 * (1.0 + numeric.abs()),
                "x[{i}]: analytic {} vs numeric {numeric}",
                analytic[i]
            );
        }
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let (n, d) = (3, 8);
        let x = random(n * d, 1);
        let w = random(d, 2);
        let probe = random(n * d, 3);
        let (_, rstd) = rms_norm(&x, &w, 1e-5);
        let mut dx = vec![0f32; n * d];
        rms_norm_backward_add(&x, &rstd, &w, &probe, &mut dx);
        check_gradient(&x, &dx, |x| dot(&rms_norm(x, &w, 1e-5).0, &probe));
        // The recomputation equals the forward.
        assert_eq!(rms_norm_apply(&x, &rstd, &w), rms_norm(&x, &w, 1e-5).0);
    }

    #[test]
    fn rope_backward_matches_finite_differences() {
        let (b, t, h, hd) = (2, 3, 2, 4);
        let x = random(b * t * h * hd, 4);
        let angles = random(b * t * hd / 2, 5);
        let cos: Vec<f32> = angles.iter().map(|a| (a * 3.0).cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| (a * 3.0).sin()).collect();
        let probe = random(x.len(), 6);
        let tables = Some((cos.as_slice(), sin.as_slice()));
        let dx = from_heads(&probe, tables, b, t, h, hd);
        check_gradient(&x, &dx, |x| dot(&to_heads(x, tables, b, t, h, hd), &probe));
        // Without tables it is a transpose and its inverse.
        let plain = to_heads(&x, None, b, t, h, hd);
        assert_eq!(from_heads(&plain, None, b, t, h, hd), x);
    }

    #[test]
    fn silu_mul_backward_matches_finite_differences() {
        let n = 12;
        let (gate, up) = (random(n, 7), random(n, 8));
        let probe = random(n, 9);
        let (dgate, dup) = silu_mul_backward(&gate, &up, &probe);
        check_gradient(&gate, &dgate, |g| dot(&silu_mul(g, &up), &probe));
        check_gradient(&up, &dup, |u| dot(&silu_mul(&gate, u), &probe));
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let (n, v) = (3, 7);
        let logits = random(n * v, 10);
        let targets = [2u32, 0, 6];
        let scales = [1.0f32, 0.5, 2.0];
        let loss = |l: &[f32]| -> f64 {
            let mut l = l.to_vec();
            let nll = cross_entropy_rows(&mut l, &targets, &scales);
            nll.iter().zip(&scales).map(|(a, s)| a * *s as f64).sum()
        };
        let mut grad = logits.clone();
        let nll = cross_entropy_rows(&mut grad, &targets, &scales);
        // nll by the textbook formula.
        for (row, &target) in targets.iter().enumerate() {
            let r = &logits[row * v..][..v];
            let lse = r.iter().map(|x| (*x as f64).exp()).sum::<f64>().ln();
            assert!((nll[row] - (lse - r[target as usize] as f64)).abs() < 1e-6);
        }
        check_gradient(&logits, &grad, loss);
    }
}
