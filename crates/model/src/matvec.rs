//! y = x Wᵀ for a few rows of f32 activations against f16 or f32 weights, accumulating in
//! f32.
//!
//! Batch-1 generation reads every weight once per token, so it is bound by memory traffic:
//! f16 weights halve it against f32 while keeping 11 bits of mantissa (Q8_0 through candle's
//! quantized matmul also quantizes the activations, and moved SmolLM2-135M's loss by 1.4%;
//! f16 weights move it by < 0.1%, see BENCHMARKS.md). candle's CPU matmul has no
//! mixed-precision path, hence this op. Over f32 weights it serves a few rows (batched
//! generation) too: gemm packs the whole weight for every call, which took half of a
//! batch-of-8 generation's time (perf, BENCHMARKS.md), where this op reads each weight row
//! once.
//!
//! r rows (tokens), k in features, n out features.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use half::f16;

use crate::team;

/// Output features computed per parallel task.
const BLOCK: usize = 64;

pub struct MatVec;

impl CustomOp2 for MatVec {
    fn name(&self) -> &'static str {
        "matvec"
    }

    /// x (.., k) f32, w (n, k) f16 or f32 -> (.., n) f32
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = xs else {
            candle_core::bail!("matvec: expected f32 activations")
        };
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("matvec: inputs must be contiguous")
        };
        let x = &x[x0..x1];
        let (n, k) = wl.shape().dims2()?;
        let x_dims = xl.shape().dims();
        if x_dims.last() != Some(&k) {
            candle_core::bail!("matvec: x {:?} does not end in {k}", x_dims)
        }
        let r = x.len() / k;
        // (n, r), filled in blocks of output features, then transposed to (r, n).
        let mut yt = vec![0f32; n * r];
        match ws {
            CpuStorage::F16(w) => {
                let w = &w[w0..w1];
                team::for_each_chunk_mut(&mut yt, BLOCK * r, |block, out| {
                    let mut w_f32 = vec![0f32; if r > 1 { k } else { 0 }];
                    for (j, out_row) in out.chunks_mut(r).enumerate() {
                        let o = block * BLOCK + j;
                        let w_row = &w[o * k..(o + 1) * k];
                        if r == 1 {
                            out_row[0] = dot(w_row, x);
                            continue;
                        }
                        // Several rows: convert the weight row once, then f32 dots.
                        half::slice::HalfFloatSliceExt::convert_to_f32_slice(w_row, &mut w_f32);
                        dots(&w_f32, x, out_row);
                    }
                });
            }
            CpuStorage::F32(w) => {
                let w = &w[w0..w1];
                team::for_each_chunk_mut(&mut yt, BLOCK * r, |block, out| {
                    for (j, out_row) in out.chunks_mut(r).enumerate() {
                        let o = block * BLOCK + j;
                        dots(&w[o * k..(o + 1) * k], x, out_row);
                    }
                });
            }
            _ => candle_core::bail!("matvec: expected f16 or f32 weights"),
        }
        let y = if r == 1 {
            yt
        } else {
            let mut y = vec![0f32; r * n];
            for o in 0..n {
                for row in 0..r {
                    y[row * n + o] = yt[o * r + row];
                }
            }
            y
        };
        let mut out_dims = x_dims.to_vec();
        *out_dims.last_mut().expect("x has a last dimension") = n;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }
}

/// out[row] = w · x's row `row`, for x's rows of w's length.
fn dots(w: &[f32], x: &[f32], out: &mut [f32]) {
    for (y, x_row) in out.iter_mut().zip(x.chunks_exact(w.len())) {
        *y = dot_f32(w, x_row);
    }
}

/// Σ w[i]·x[i] with w in f16.
pub fn dot(w: &[f16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            // Safety: the features the function is compiled for were detected at run time.
            return unsafe { x86::dot_avx2(w, x) };
        }
    }
    dot_portable(w, x)
}

/// Σ a[i]·b[i].
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // Safety: the features the function is compiled for were detected at run time.
            return unsafe { x86::dot_f32_avx2(a, b) };
        }
    }
    let mut acc = [0f32; 8];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        acc[i % 8] += x * y;
    }
    acc.iter().sum()
}

/// Converts through a small buffer (half uses the CPU's f16 instructions when it has them),
/// then a plain f32 dot the compiler vectorizes.
pub fn dot_portable(w: &[f16], x: &[f32]) -> f32 {
    use half::slice::HalfFloatSliceExt;
    let mut buf = [0f32; 256];
    let mut acc = [0f32; 8];
    for (wc, xc) in w.chunks(256).zip(x.chunks(256)) {
        let b = &mut buf[..wc.len()];
        wc.convert_to_f32_slice(b);
        for (i, (a, c)) in b.iter().zip(xc).enumerate() {
            acc[i % 8] += a * c;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(s: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(s, 1);
        let lo = _mm256_castps256_ps128(s);
        let q = _mm_add_ps(hi, lo);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        _mm_cvtss_f32(q)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (u, s) in acc.iter_mut().enumerate() {
                let off = i + 8 * u;
                *s = _mm256_fmadd_ps(
                    _mm256_loadu_ps(ap.add(off)),
                    _mm256_loadu_ps(bp.add(off)),
                    *s,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(ap.add(i)),
                _mm256_loadu_ps(bp.add(i)),
                acc[0],
            );
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum(s);
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_avx2(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let (wp, xp) = (w.as_ptr() as *const u16, x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (u, a) in acc.iter_mut().enumerate() {
                let off = i + 8 * u;
                let wv = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(off) as *const __m128i));
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(off)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i) as *const __m128i));
            acc[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum(s);
        while i < n {
            total += w[i].to_f32() * x[i];
            i += 1;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn matches_an_f32_matmul_of_the_same_f16_or_f32_weights() {
        let dev = Device::Cpu;
        for ((r, k, n), dtype) in [
            (1, 70, 130),
            (3, 64, 64),
            (1, 576, 1536),
            (2, 5, 3),
            (40, 576, 200),
        ]
        .into_iter()
        .flat_map(|shape| [(shape, DType::F16), (shape, DType::F32)])
        {
            let x = Tensor::randn(0f32, 1.0, (r, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let got = x.apply_op2_no_bwd(&w, &MatVec).unwrap();
            let want = x
                .matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
                .unwrap();
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 1e-3 * (k as f32).sqrt(),
                "r={r} k={k} n={n} {dtype:?}: {diff}"
            );
        }
    }

    #[test]
    fn portable_and_simd_dots_agree() {
        let w: Vec<f16> = (0..1000)
            .map(|i| f16::from_f32((i as f32 * 0.37).sin()))
            .collect();
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = w.iter().zip(&x).map(|(a, b)| a.to_f64() * *b as f64).sum();
        assert!((dot(&w, &x) as f64 - exact).abs() < 1e-3);
        assert!((dot_portable(&w, &x) as f64 - exact).abs() < 1e-3);
    }
}
