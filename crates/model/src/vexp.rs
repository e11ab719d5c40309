//! exp over a slice, the one elementwise function that costs (softmax over attention scores
//! and the vocabulary, silu): 16 lanes at a time with AVX-512F where the processor has it,
//! `f32::exp` elsewhere (and under `TUNA_KERNEL=portable`).
//!
//! The vector path is Cephes' expf: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two for an
//! exact reduction), e^r by a degree-7 polynomial, 2^n applied by `vscalefps` (which takes
//! underflow to subnormals and 0 and overflow to inf). Within 2 ulp of the exact value;
//! NaN stays NaN.

use std::sync::OnceLock;

/// Whether the AVX-512 path runs here.
fn vectorized() -> bool {
    static VECTORIZED: OnceLock<bool> = OnceLock::new();
    *VECTORIZED.get_or_init(|| {
        let forced_portable = std::env::var("TUNA_KERNEL").is_ok_and(|v| v == "portable");
        !forced_portable && crate::linear::has_avx512()
    })
}

/// x ← exp(x · scale − shift) for every x.
pub fn exp_affine(xs: &mut [f32], scale: f32, shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if vectorized() {
        // SAFETY: vectorized() checked AVX-512F at run time.
        unsafe { x86::exp_affine(xs, scale, shift) };
        return;
    }
    for x in xs {
        *x = (*x * scale - shift).exp();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_affine(xs: &mut [f32], scale: f32, shift: f32) {
        let (scale, shift) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift));
        let mut chunks = xs.chunks_exact_mut(16);
        for chunk in &mut chunks {
            let x = _mm512_loadu_ps(chunk.as_ptr());
            let y = exp(_mm512_fmsub_ps(x, scale, shift));
            _mm512_storeu_ps(chunk.as_mut_ptr(), y);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mask: __mmask16 = (1u32 << rest.len()) as u16 - 1;
            let x = _mm512_maskz_loadu_ps(mask, rest.as_ptr());
            let y = exp(_mm512_fmsub_ps(x, scale, shift));
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), mask, y);
        }
    }

    #[inline(always)]
    unsafe fn exp(x: __m512) -> __m512 {
        // Beyond these e^x is inf or 0 in f32; clamping keeps n small enough for scalef and
        // the operand order (x second) lets NaN through.
        let x = _mm512_min_ps(_mm512_set1_ps(89.0), x);
        let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        // e^r = 1 + r + r² · p(r)
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(e, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value_and_keeps_the_edges() {
        // A dense sweep of the range that matters, plus the edges; an odd length so that the
        // masked tail runs too.
        let mut xs: Vec<f32> = (0..200_001).map(|i| -100.0 + i as f32 * 0.000_94).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 88.7, 89.5, -87.3, -103.0, -150.0]);
        xs.extend([f32::NEG_INFINITY, f32::INFINITY, f32::NAN]);
        let mut got = xs.clone();
        exp_affine(&mut got, 1.0, 0.0);
        for (&x, &y) in xs.iter().zip(&got) {
            let want = (x as f64).exp() as f32;
            if x.is_nan() {
                assert!(y.is_nan(), "exp(NaN) = {y}");
            } else if want.is_infinite() || want == 0.0 {
                assert_eq!(y, want, "exp({x})");
            } else if want < f32::MIN_POSITIVE {
                // Subnormal results keep fewer bits: absolute error.
                assert!(
                    (y - want).abs() <= 2.0 * f32::from_bits(1),
                    "exp({x}) = {y}, want {want}"
                );
            } else {
                assert!(ulps(y, want) <= 2, "exp({x}) = {y}, want {want}");
            }
        }
        // The affine form: exp(x · scale − shift).
        let mut a = vec![1.5f32, -2.0, 0.25];
        exp_affine(&mut a, 0.5, 1.0);
        for (v, x) in a.iter().zip([1.5f64, -2.0, 0.25]) {
            let want = (x * 0.5 - 1.0).exp() as f32;
            assert!(ulps(*v, want) <= 2, "{v} vs {want}");
        }
    }
}
