//! Σ w·x of one row of ggml blocks against f32 activations, the weight decoded in registers:
//! the batch-1 generation kernel. Activations stay f32 (llama.cpp and candle quantize them to
//! 8 bits here), so the result is the f32 dot of the decoded row up to summation order.
//!
//! Block layouts (ggml-common.h, https://github.com/ggml-org/llama.cpp/blob/b4500/ggml/src/ggml-common.h):
//! - Q8_0, 34 bytes: f16 d, 32 × i8 q; w = d·q.
//! - Q4_0, 18 bytes: f16 d, 16 bytes of nibbles; w_j = d·(lo_j − 8), w_{j+16} = d·(hi_j − 8).
//! - Q4_1, 20 bytes: f16 d, f16 m, 16 bytes of nibbles; w_j = d·lo_j + m, w_{j+16} = d·hi_j + m.
//!
//! Other block types decode a row into f32 and take an f32 dot (quant_weight.rs).

use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;

/// The fused kernels this processor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockDotKernel {
    /// AVX-512F with F16C (Intel Skylake-SP and later, AMD Zen 4 and later).
    Avx512,
    /// No fused kernel: decode, then an f32 dot.
    Decode,
}

impl BlockDotKernel {
    /// The kernel used: AVX-512 where the processor has it, unless `TUNA_KERNEL=portable`
    /// (tests force the other path this way).
    pub fn chosen() -> Self {
        static CHOSEN: OnceLock<BlockDotKernel> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let forced_portable = std::env::var("TUNA_KERNEL").is_ok_and(|v| v == "portable");
            if !forced_portable && has_avx512() {
                Self::Avx512
            } else {
                Self::Decode
            }
        })
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

/// Whether `dot` has a fused kernel for `dtype` on this processor.
pub fn fused(dtype: GgmlDType) -> bool {
    BlockDotKernel::chosen() == BlockDotKernel::Avx512
        && matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4_1)
}

/// Σ w·x over one row of `dtype` blocks; only where `fused(dtype)`.
pub fn dot(dtype: GgmlDType, row: &[u8], x: &[f32]) -> f32 {
    assert!(fused(dtype), "no fused block dot for {dtype:?} here");
    let blocks = row.len() / dtype.type_size();
    assert_eq!(
        blocks * 32,
        x.len(),
        "one row of blocks against as many activations"
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: fused() checked AVX-512F at run time; the row holds `blocks` whole blocks
        // and x holds 32 values per block (asserted above).
        unsafe {
            match dtype {
                GgmlDType::Q8_0 => x86::q8_0(row.as_ptr(), blocks, x.as_ptr()),
                GgmlDType::Q4_0 => x86::q4(row.as_ptr(), blocks, x.as_ptr(), false),
                _ => x86::q4(row.as_ptr(), blocks, x.as_ptr(), true),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("fused() is false off x86_64")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Bytes ahead of the block being read that are asked for: the hardware prefetchers stop
    /// at every 4 KiB page, and a thread's rows are one contiguous stream.
    const PREFETCH: usize = 4096;

    /// The f16 at p, widened by the processor (vcvtph2ps) and broadcast.
    #[inline(always)]
    unsafe fn scale(p: *const u8) -> __m512 {
        let bits = _mm_cvtsi32_si128(i32::from(u16::from_le_bytes([*p, *p.add(1)])));
        _mm512_broadcastss_ps(_mm_cvtph_ps(bits))
    }

    /// Q8_0 blocks of 34 bytes.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn q8_0(row: *const u8, blocks: usize, x: *const f32) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 2];
        for b in 0..blocks {
            let blk = row.add(b * 34);
            _mm_prefetch::<_MM_HINT_T0>(blk.add(PREFETCH) as *const i8);
            let q = blk.add(2);
            let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q as *const __m128i)));
            let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                q.add(16) as *const __m128i
            )));
            let xb = x.add(b * 32);
            let t = _mm512_mul_ps(q0, _mm512_loadu_ps(xb));
            let t = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xb.add(16)), t);
            acc[b & 1] = _mm512_fmadd_ps(scale(blk), t, acc[b & 1]);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }

    /// Q4_1 (20-byte blocks with a minimum) or Q4_0 (18-byte blocks, offset 8).
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn q4(row: *const u8, blocks: usize, x: *const f32, with_min: bool) -> f32 {
        let size = if with_min { 20 } else { 18 };
        let low = _mm512_set1_epi32(0xF);
        let mut acc = _mm512_setzero_ps();
        let mut acc_min = _mm512_setzero_ps();
        for b in 0..blocks {
            let blk = row.add(b * size);
            _mm_prefetch::<_MM_HINT_T0>(blk.add(PREFETCH) as *const i8);
            let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(size - 16) as *const __m128i));
            let lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, low));
            let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
            let xb = x.add(b * 32);
            let (x0, x1) = (_mm512_loadu_ps(xb), _mm512_loadu_ps(xb.add(16)));
            let t = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
            let d = scale(blk);
            acc = _mm512_fmadd_ps(d, t, acc);
            // The block's constant term times Σx: m for Q4_1, −8·d for Q4_0.
            let m = if with_min {
                scale(blk.add(2))
            } else {
                _mm512_mul_ps(d, _mm512_set1_ps(-8.0))
            };
            acc_min = _mm512_fmadd_ps(m, _mm512_add_ps(x0, x1), acc_min);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc, acc_min))
    }
}
