//! AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids): the 32 × 32
//! block of C = A · B that `amx::block` computes, over the same tile layout, with
//! `vdpbf16ps` (per f32 lane j: acc_j += a_2j·b_2j + a_2j+1·b_2j+1).
//!
//! A row of a B tile is one pair row p of 16 columns, (B[2p][n], B[2p + 1][n]) for n in
//! 0..16, which is exactly one zmm; A's pair (A[r][2p], A[r][2p + 1]) is one u32, broadcast
//! to every lane. A group of 8 rows keeps 8 × 2 accumulators (both 16-column halves) in
//! registers, so each step along the pairs loads two B rows and 8 broadcasts for 16 dot
//! instructions.

use std::sync::OnceLock;

/// Whether this processor has AVX512-BF16 (with AVX512F).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// Whether `vdpbf16ps` multiplies faster than f32 FMAs on this processor, so that bf16
/// tiles pay off even for the large batches of training and scoring. Measured
/// (BENCHMARKS.md, scripts/instruction-rates.sh): on AMD Zen 4 bf16 tiles trained at 324
/// tok/s against 219 in f32; on an Intel Xeon with AVX512-BF16 and no AMX one core ran
/// 1.5–1.6 G `vdpbf16ps zmm` a second against 6.3–6.6 G `vfmadd231ps zmm`, half the
/// multiply-adds, and f32 trained at 355 tok/s against 244 on the tiles. Decided by vendor,
/// not timed, so that a run picks the same kernel (and the same sums) every time.
pub fn outpaces_f32() -> bool {
    static OUTPACES: OnceLock<bool> = OnceLock::new();
    *OUTPACES.get_or_init(|| available() && vendor() == Some(*b"AuthenticAMD"))
}

/// The processor's vendor string (cpuid leaf 0).
#[cfg(target_arch = "x86_64")]
fn vendor() -> Option<[u8; 12]> {
    let id = std::arch::x86_64::__cpuid(0);
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&id.ebx.to_le_bytes());
    out[4..8].copy_from_slice(&id.edx.to_le_bytes());
    out[8..].copy_from_slice(&id.ecx.to_le_bytes());
    Some(out)
}

#[cfg(not(target_arch = "x86_64"))]
fn vendor() -> Option<[u8; 12]> {
    None
}

/// Rows of A one register group covers.
const GROUP: usize = 8;

/// C (32 × 32 f32, row-major, rows `c_stride` bytes apart) = A · B over the first `steps` of
/// `ks` steps of 32 along K; the operands laid out as for `amx::block`.
///
/// # Safety
/// `available()` is true; steps ≤ ks; A holds 2 · ks tiles, B 2 · ks tiles, and C 32 rows
/// of 32 f32 at `c_stride` bytes apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn block(
    a: *const u16,
    b: *const u32,
    ks: usize,
    steps: usize,
    c: *mut f32,
    c_stride: usize,
) {
    use std::arch::x86_64::*;
    let a = a as *const u32;
    let c_row = c_stride / 4;
    for group in 0..32 / GROUP {
        let mut acc = [[_mm512_setzero_ps(); 2]; GROUP];
        // The group's rows lie in one 16-row block of A: rows r0..r0 + 8 of block `half`.
        let (half, r0) = (group * GROUP / 16, group * GROUP % 16);
        for s in 0..steps {
            // u32 units: an A tile is 16 rows × 16 pairs, a B tile 16 pair rows × 16 columns.
            let a_tile = a.add(((half * ks) + s) * 256 + r0 * 16);
            let b0 = b.add(s * 512);
            let b1 = b0.add(256);
            for p in 0..16 {
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(p * 16).cast()));
                let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(p * 16).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*a_tile.add(r * 16 + p) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, w0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, w1);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let out = c.add((group * GROUP + r) * c_row);
            _mm512_storeu_ps(out, acc[0]);
            _mm512_storeu_ps(out.add(16), acc[1]);
        }
    }
}
