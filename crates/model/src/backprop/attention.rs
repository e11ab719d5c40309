//! Causal self-attention for the training pass, forward and backward. The forward keeps only
//! each query row's log-sum-exp; the backward recomputes the probabilities from q and k
//! (one extra q·kᵀ product), so no (t × t) matrix outlives its layer.
//!
//! Every mask tuna uses (causal, sliding window, packed examples, padding) leaves each query a
//! contiguous run of keys ending at itself, so a mask is the first key each query may see.
//!
//! Head-major layouts: q (b, kvh, g·t, hd) — query head kv·g + j sits in kv group kv, which is
//! the (b, h, t, hd) layout reshaped —, k and v (b, kvh, t, hd).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::causal_f32;
use super::kernels::{tensor, view};
use crate::bf16_weight::{product_of_rows_into, Activations, Bf16Kernel, Causal, Product};

/// How attention's five products run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// f32 through gemm, skipping what causal masking makes zero (causal_f32.rs).
    F32,
    /// bf16 operands on the processor's bf16 kernel, f32 accumulation, as under PyTorch's
    /// bf16 autocast; the softmax, its log-sum-exp and the masking stay f32.
    Bf16(Bf16Kernel),
}

impl Products {
    /// One of the two operands of every product is (b, kvh) batches of `n` rows: the
    /// product per batch, row-major results concatenated. `x` holds the batches of the left
    /// operand (each n × K, or K × n when `Transposed`), `w` those of W (o × i each); `XWt`
    /// gives x · Wᵀ (K = i), `DyW` x · W (K = o). `causal` skips what causal masking makes
    /// zero (`bf16_weight::Causal`). Only for `Bf16`.
    fn batched(
        kernel: Bf16Kernel,
        x: Activations,
        w: &[f32],
        batches: usize,
        (o, i): (usize, usize),
        (product, causal): (Product, Option<Causal>),
    ) -> Vec<f32> {
        let (k, y_cols) = product.dims((o, i));
        let values = x.values();
        let n = values.len() / batches / k;
        let mut y = Vec::with_capacity(batches * n * y_cols);
        y.spare_capacity_mut()[..batches * n * y_cols]
            .par_chunks_mut(n * y_cols)
            .enumerate()
            .for_each(|(bi, y)| {
                let w = &w[bi * o * i..][..o * i];
                let rows = |first: usize, out: &mut [f32]| {
                    out.copy_from_slice(&w[first * i..][..out.len()])
                };
                let values = &values[bi * n * k..][..n * k];
                let x = match x {
                    Activations::Rows(_) => Activations::Rows(values),
                    Activations::Transposed(_) => Activations::Transposed(values),
                };
                product_of_rows_into(&rows, (o, i), x, (product, causal), kernel, y);
            });
        // SAFETY: product_of_rows_into wrote every value of each batch's part.
        unsafe { y.set_len(batches * n * y_cols) };
        y
    }
}

/// Each (rows × cols) matrix of `x` transposed.
fn transpose_each(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(rows * cols)
        .zip(x.par_chunks(rows * cols))
        .for_each(|(out, x)| {
            for r in 0..rows {
                for c in 0..cols {
                    out[c * rows + r] = x[r * cols + c];
                }
            }
        });
    out
}

#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub kvh: usize,
    pub hd: usize,
}

impl AttentionShape {
    fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }
}

/// Attention forward: q, k, v head-major; returns (y head-major (b, h, t, hd), log-sum-exp
/// of each query row (b·h·t)).
pub fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first: &[u32],
    shape: AttentionShape,
    products: Products,
) -> Result<(Tensor, Vec<f32>)> {
    let AttentionShape { b, t, h, kvh, hd } = shape;
    let g = h / kvh;
    // (b, kvh, g·t, hd) @ (b, kvh, hd, t) -> (b, kvh, g·t, t)
    let mut p = scores(q, k, shape, products)?;
    let mut lse = vec![0f32; b * h * t];
    let scale = shape.scale();
    p.par_chunks_mut(t)
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each(|(row, (p, lse))| {
            let (bi, ti) = (row / (h * t), row % t);
            let lo = first[bi * t + ti] as usize;
            let max = p[lo..=ti]
                .iter()
                .fold(f32::NEG_INFINITY, |m, &s| m.max(s * scale));
            crate::vexp::exp_affine(&mut p[lo..=ti], scale, max);
            let sum: f32 = p[lo..=ti].iter().sum();
            let inv = 1.0 / sum;
            p[lo..=ti].iter_mut().for_each(|s| *s *= inv);
            p[..lo].fill(0.0);
            p[ti + 1..].fill(0.0);
            *lse = max + sum.ln();
        });
    // (b, kvh, g·t, t) @ (b, kvh, t, hd) -> (b, kvh, g·t, hd)
    let y = match products {
        Products::F32 => tensor(
            causal_f32::rows_times_keys(&p, &view(v)?, (g, t, hd)),
            &[b, kvh, g * t, hd],
        )?,
        Products::Bf16(kernel) => {
            let keys = Some(Causal::Depth { period: t });
            let (p, v) = (Activations::Rows(&p), view(v)?);
            let y = Products::batched(kernel, p, &v, b * kvh, (t, hd), (Product::DyW, keys));
            tensor(y, &[b, kvh, g * t, hd])?
        }
    };
    Ok((y, lse))
}

/// q · kᵀ per (b, kvh): (b, kvh, g·t, t), flat.
fn scores(q: &Tensor, k: &Tensor, shape: AttentionShape, products: Products) -> Result<Vec<f32>> {
    let AttentionShape { b, t, h, kvh, hd } = shape;
    match products {
        Products::F32 => Ok(causal_f32::scores(&view(q)?, &view(k)?, (h / kvh, t, hd))),
        Products::Bf16(kernel) => Ok(Products::batched(
            kernel,
            Activations::Rows(&view(q)?),
            &view(k)?,
            b * kvh,
            (t, hd),
            (Product::XWt, Some(Causal::Columns { period: t })),
        )),
    }
}

/// Attention backward. `dy` is head-major like y; `delta` holds Σ dy·y per query row.
/// Returns (dq, dk, dv), head-major like q, k, v.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lse: &[f32],
    first: &[u32],
    dy: &Tensor,
    delta: &[f32],
    shape: AttentionShape,
    products: Products,
) -> Result<(Tensor, Tensor, Tensor)> {
    let AttentionShape { b, t, h, kvh, hd } = shape;
    let g = h / kvh;
    let scale = shape.scale();
    let mut p = scores(q, k, shape, products)?;
    p.par_chunks_mut(t).enumerate().for_each(|(row, p)| {
        let (bi, ti) = (row / (h * t), row % t);
        let lo = first[bi * t + ti] as usize;
        crate::vexp::exp_affine(&mut p[lo..=ti], scale, lse[row]);
        p[..lo].fill(0.0);
        p[ti + 1..].fill(0.0);
    });
    if let Products::Bf16(kernel) = products {
        let batches = b * kvh;
        let (dy, v, q, k) = (view(dy)?, view(v)?, view(q)?, view(k)?);
        // dvᵀ = dyᵀ p: (hd, g·t) @ (g·t, t) -> (hd, t), per batch, then transposed.
        let dyt = Activations::Transposed(&dy);
        let dvt = Products::batched(kernel, dyt, &p, batches, (g * t, t), (Product::DyW, None));
        let dv = transpose_each(&dvt, hd, t);
        // dp = dy vᵀ: (g·t, hd) @ (hd, t)
        let (columns, depth) = (Causal::Columns { period: t }, Causal::Depth { period: t });
        let mut ds = Products::batched(
            kernel,
            Activations::Rows(&dy),
            &v,
            batches,
            (t, hd),
            (Product::XWt, Some(columns)),
        );
        scores_gradient(&mut ds, &p, delta, t, scale);
        // dq = ds k: (g·t, t) @ (t, hd); dkᵀ = qᵀ ds: (hd, g·t) @ (g·t, t)
        let dq = Products::batched(
            kernel,
            Activations::Rows(&ds),
            &k,
            batches,
            (t, hd),
            (Product::DyW, Some(depth)),
        );
        let qt = Activations::Transposed(&q);
        let dkt = Products::batched(kernel, qt, &ds, batches, (g * t, t), (Product::DyW, None));
        let dk = transpose_each(&dkt, hd, t);
        return Ok((
            tensor(dq, &[b, kvh, g * t, hd])?,
            tensor(dk, &[b, kvh, t, hd])?,
            tensor(dv, &[b, kvh, t, hd])?,
        ));
    }
    let dims = (g, t, hd);
    let (dy, v, q, k) = (view(dy)?, view(v)?, view(q)?, view(k)?);
    // dv = pᵀ dy: (t, g·t) @ (g·t, hd), per batch
    let dv = causal_f32::keys_times_rows(&p, &dy, dims);
    // dp = dy vᵀ: (g·t, hd) @ (hd, t)
    let mut ds = causal_f32::scores(&dy, &v, dims);
    scores_gradient(&mut ds, &p, delta, t, scale);
    // dq = ds k: (g·t, t) @ (t, hd); dk = dsᵀ q: (t, g·t) @ (g·t, hd)
    let dq = causal_f32::rows_times_keys(&ds, &k, dims);
    let dk = causal_f32::keys_times_rows(&ds, &q, dims);
    Ok((
        tensor(dq, &[b, kvh, g * t, hd])?,
        tensor(dk, &[b, kvh, t, hd])?,
        tensor(dv, &[b, kvh, t, hd])?,
    ))
}

/// ds = p ⊙ (dp − delta) · scale in place of dp, zero where p is masked; rows of t.
fn scores_gradient(ds: &mut [f32], p: &[f32], delta: &[f32], t: usize, scale: f32) {
    ds.par_chunks_mut(t)
        .zip(p.par_chunks(t))
        .enumerate()
        .for_each(|(row, (ds, p))| {
            for (ds, p) in ds.iter_mut().zip(p) {
                *ds = p * (*ds - delta[row]) * scale;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backprop::kernels::{tensor, to_vec};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// The first visible key of each query of packed rows with these segments (positions
    /// restart at each example), from the one attention layout.
    fn first_keys(b: usize, t: usize, seg: &[u32], window: Option<usize>) -> Vec<u32> {
        let positions: Vec<u32> = (0..b * t)
            .scan((u32::MAX, 0u32), |(last, pos), at| {
                if at % t == 0 || seg[at] != *last {
                    *pos = 0;
                } else {
                    *pos += 1;
                }
                *last = seg[at];
                Some(*pos)
            })
            .collect();
        let packing = crate::decoder::Packing {
            positions: &positions,
            segments: seg,
        };
        crate::layout::AttentionLayout::packed(packing, b, t, window)
            .unwrap()
            .first_keys()
            .unwrap()
    }

    /// Naive attention of one (batch, query head) pair, straight from the definition.
    fn naive(q: &[f32], k: &[f32], v: &[f32], first: &[u32], s: AttentionShape) -> Vec<f32> {
        let AttentionShape { b, t, h, kvh, hd } = s;
        let g = h / kvh;
        let mut y = vec![0f32; b * h * t * hd];
        for bi in 0..b {
            for head in 0..h {
                let kv = head / g;
                for i in 0..t {
                    let qi = &q[((bi * h + head) * t + i) * hd..][..hd];
                    let lo = first[bi * t + i] as usize;
                    let scores: Vec<f32> = (lo..=i)
                        .map(|j| {
                            let kj = &k[((bi * kvh + kv) * t + j) * hd..][..hd];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * s.scale()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    for (j, e) in (lo..=i).zip(&e) {
                        let vj = &v[((bi * kvh + kv) * t + j) * hd..][..hd];
                        for c in 0..hd {
                            y[((bi * h + head) * t + i) * hd + c] += e / sum * vj[c];
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_the_definition_and_backward_matches_finite_differences() {
        let shape = AttentionShape {
            b: 2,
            t: 5,
            h: 4,
            kvh: 2,
            hd: 4,
        };
        let AttentionShape { b, t, h, kvh, hd } = shape;
        let seg = [0, 0, 1, 1, 1, 0, 0, 0, 0, u32::MAX];
        let first = first_keys(b, t, &seg, Some(3));
        let (qv, kv, vv) = (
            random(b * h * t * hd, 1),
            random(b * kvh * t * hd, 2),
            random(b * kvh * t * hd, 3),
        );
        let probe = random(b * h * t * hd, 4);
        let run = |q: &[f32], k: &[f32], v: &[f32]| -> Vec<f32> {
            let q = tensor(q.to_vec(), &[b, kvh, h / kvh * t, hd]).unwrap();
            let k = tensor(k.to_vec(), &[b, kvh, t, hd]).unwrap();
            let v = tensor(v.to_vec(), &[b, kvh, t, hd]).unwrap();
            to_vec(&forward(&q, &k, &v, &first, shape, Products::F32).unwrap().0).unwrap()
        };
        let y = run(&qv, &kv, &vv);
        let want = naive(&qv, &kv, &vv, &first, shape);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }

        let q = tensor(qv.clone(), &[b, kvh, h / kvh * t, hd]).unwrap();
        let k = tensor(kv.clone(), &[b, kvh, t, hd]).unwrap();
        let v = tensor(vv.clone(), &[b, kvh, t, hd]).unwrap();
        let (_, lse) = forward(&q, &k, &v, &first, shape, Products::F32).unwrap();
        let delta: Vec<f32> = y
            .chunks(hd)
            .zip(probe.chunks(hd))
            .map(|(y, p)| y.iter().zip(p).map(|(a, b)| a * b).sum())
            .collect();
        let dy = tensor(probe.clone(), &[b, kvh, h / kvh * t, hd]).unwrap();
        let (dq, dk, dv) =
            backward(&q, &k, &v, &lse, &first, &dy, &delta, shape, Products::F32).unwrap();
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            run(q, k, v)
                .iter()
                .zip(&probe)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let eps = 1e-2f32;
        let check = |analytic: &Tensor, which: usize| {
            let analytic = to_vec(analytic).unwrap();
            let base = [&qv, &kv, &vv][which];
            for i in 0..base.len() {
                let mut inputs = [qv.clone(), kv.clone(), vv.clone()];
                inputs[which][i] += eps;
                let plus = loss(&inputs[0], &inputs[1], &inputs[2]);
                inputs[which][i] -= 2.0 * eps;
                let minus = loss(&inputs[0], &inputs[1], &inputs[2]);
                let numeric = (plus - minus) / (2.0 * eps as f64);
                let err = (numeric - analytic[i] as f64).abs();
                assert!(
                    err < 2e-3 * (1.0 + numeric.abs()),
                    "input {which}[{i}]: analytic {} vs numeric {numeric}",
                    analytic[i]
                );
            }
        };
        check(&dq, 0);
        check(&dk, 1);
        check(&dv, 2);
    }

    /// Σ y·dy over each row of hd values: the delta the backward takes.
    fn row_dots(y: &Tensor, dy: &Tensor, hd: usize) -> Vec<f32> {
        let (y, dy) = (to_vec(y).unwrap(), to_vec(dy).unwrap());
        y.chunks(hd)
            .zip(dy.chunks(hd))
            .map(|(y, d)| y.iter().zip(d).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// The f32 products skip blocks of 64 positions past the causal edge: over several
    /// blocks and a last one that is not whole, grouped heads, packing and a window, they
    /// match the definition (forward) and candle's matmuls over the whole matrices
    /// (backward).
    #[test]
    fn causal_f32_products_match_whole_matrix_products() {
        let shape = AttentionShape {
            b: 2,
            t: 135,
            h: 4,
            kvh: 2,
            hd: 8,
        };
        let AttentionShape { b, t, h, kvh, hd } = shape;
        let g = h / kvh;
        let seg: Vec<u32> = (0..b * t).map(|i| (i % t / 50) as u32).collect();
        let first = first_keys(b, t, &seg, Some(100));
        let (qv, kv, vv) = (
            random(b * h * t * hd, 11),
            random(b * kvh * t * hd, 12),
            random(b * kvh * t * hd, 13),
        );
        let q = tensor(qv.clone(), &[b, kvh, g * t, hd]).unwrap();
        let k = tensor(kv.clone(), &[b, kvh, t, hd]).unwrap();
        let v = tensor(vv.clone(), &[b, kvh, t, hd]).unwrap();
        let dy = tensor(random(b * h * t * hd, 14), &[b, kvh, g * t, hd]).unwrap();
        let close = |got: &[f32], want: &[f32], what: &str| {
            assert_eq!(got.len(), want.len(), "{what}");
            for (e, (a, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (a - w).abs() < 1e-4 * (1.0 + w.abs()),
                    "{what}[{e}]: {a} vs {w}"
                );
            }
        };

        let (y, lse) = forward(&q, &k, &v, &first, shape, Products::F32).unwrap();
        close(
            &to_vec(&y).unwrap(),
            &naive(&qv, &kv, &vv, &first, shape),
            "y",
        );

        let delta = row_dots(&y, &dy, hd);
        let (dq, dk, dv) =
            backward(&q, &k, &v, &lse, &first, &dy, &delta, shape, Products::F32).unwrap();
        // The same backward over the whole matrices, through candle's matmul.
        let scale = shape.scale();
        let mut p = to_vec(&q.matmul(&k.t().unwrap()).unwrap()).unwrap();
        for (row, p) in p.chunks_mut(t).enumerate() {
            let (bi, ti) = (row / (h * t), row % t);
            let lo = first[bi * t + ti] as usize;
            for (j, p) in p.iter_mut().enumerate() {
                let live = j >= lo && j <= ti;
                *p = if live {
                    (*p * scale - lse[row]).exp()
                } else {
                    0.0
                };
            }
        }
        let p = tensor(p, &[b, kvh, g * t, t]).unwrap();
        let want_dv = p.t().unwrap().matmul(&dy).unwrap();
        let mut ds = to_vec(&dy.matmul(&v.t().unwrap()).unwrap()).unwrap();
        for (row, (ds, p)) in ds
            .chunks_mut(t)
            .zip(to_vec(&p).unwrap().chunks(t))
            .enumerate()
        {
            for (ds, p) in ds.iter_mut().zip(p) {
                *ds = p * (*ds - delta[row]) * scale;
            }
        }
        let ds = tensor(ds, &[b, kvh, g * t, t]).unwrap();
        let want_dq = ds.matmul(&k).unwrap();
        let want_dk = ds.t().unwrap().matmul(&q).unwrap();
        for (name, got, want) in [
            ("dq", &dq, &want_dq),
            ("dk", &dk, &want_dk),
            ("dv", &dv, &want_dv),
        ] {
            close(&to_vec(got).unwrap(), &to_vec(want).unwrap(), name);
        }
    }

    #[test]
    fn bf16_products_match_the_f32_ones_within_bf16_rounding() {
        // Rows and keys across tile boundaries (32), grouped heads, a window and packing.
        let shape = AttentionShape {
            b: 2,
            t: 40,
            h: 4,
            kvh: 2,
            hd: 24,
        };
        let AttentionShape { b, t, h, kvh, hd } = shape;
        let seg: Vec<u32> = (0..b * t).map(|i| (i % t / 17) as u32).collect();
        let first = first_keys(b, t, &seg, Some(30));
        let g = h / kvh;
        let q = tensor(random(b * h * t * hd, 5), &[b, kvh, g * t, hd]).unwrap();
        let k = tensor(random(b * kvh * t * hd, 6), &[b, kvh, t, hd]).unwrap();
        let v = tensor(random(b * kvh * t * hd, 7), &[b, kvh, t, hd]).unwrap();
        let dy = tensor(random(b * h * t * hd, 8), &[b, kvh, g * t, hd]).unwrap();
        let run = |products| {
            let (y, lse) = forward(&q, &k, &v, &first, shape, products).unwrap();
            let delta = row_dots(&y, &dy, hd);
            let (dq, dk, dv) =
                backward(&q, &k, &v, &lse, &first, &dy, &delta, shape, products).unwrap();
            [y, dq, dk, dv].map(|t| to_vec(&t).unwrap())
        };
        let want = run(Products::F32);
        for kernel in Bf16Kernel::available() {
            let got = run(Products::Bf16(kernel));
            for (name, (got, want)) in ["y", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = got
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // bf16 keeps 8 bits: 2^-8 relative per operand, two rounded products deep.
                assert!(
                    worst < 3e-2 * scale,
                    "{kernel:?} {name}: off by {worst} (largest value {scale})"
                );
            }
        }
    }
}
