//! Q8_0, Q4_0 and Q4_1 weights repacked for the processor's int8 dot instructions
//! (AVX512-VNNI: Intel Ice Lake / Sapphire Rapids and later, AMD Zen 4), for the few-row
//! products of generation.
//!
//! The activations are quantized to 8 bits per block of 32 (scale max|x| / 127, round to
//! nearest), as llama.cpp and candle do for these products, and `vpdpbusd` sums 4 products
//! of an unsigned weight byte and a signed activation byte per 32-bit lane: 64 multiplies
//! an instruction, where the f32 path (block_dot.rs) decodes every weight to f32 first.
//!
//! Layout: rows in groups of 16 (the last group padded with zero rows), each group one
//! contiguous stream of blocks; per block of 32 values along i:
//! - the 16 rows' scales d as f16 (32 bytes), then for Q4_1 the 16 minimums m (32 bytes);
//! - Q4: 4 vectors of 64 bytes; in vector j, byte 4r + t holds row r's q at k = 8j + t in
//!   its low nibble and at k = 8j + 4 + t in its high nibble;
//! - Q8_0: 8 vectors of 64 bytes; in vector j, byte 4r + t holds row r's q at k = 4j + t,
//!   plus 128 (so that it is unsigned).
//!
//! So one 64-byte load (and a mask, or a shift and a mask) gives 4 consecutive weights of
//! each of the 16 rows, against one broadcast 4 bytes of activations.
//!
//! Per block, with u the stored unsigned weights and xq the quantized activations (scale
//! dx, Σxq = sq, Σx = sx), w·x = d·dx·(Σ u·xq − off·sq) + m·sx, off = 128 (Q8_0), 8 (Q4_0),
//! 0 (Q4_1, whose m is its own term).
//!
//! o out features (rows), i in features, n activation rows, g groups of 16 rows.

use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use half::f16;

use crate::team;

/// Rows per group: the 16 lanes of a 512-bit vector of i32.
const GROUP: usize = 16;
/// Values per block.
const BLOCK: usize = 32;

/// Whether the processor runs the int8 kernels (and `TUNA_KERNEL=portable` does not forbid
/// them: tests force the other paths this way).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let forced_portable = std::env::var("TUNA_KERNEL").is_ok_and(|v| v == "portable");
        !forced_portable && has_vnni()
    })
}

#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_vnni() -> bool {
    false
}

/// Whether weights of `dtype` are repacked here (on this processor).
pub fn packs(dtype: GgmlDType) -> bool {
    available() && matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4_1)
}

/// A weight (o, i) of Q8_0, Q4_0 or Q4_1 blocks in the layout above.
#[derive(Debug)]
pub struct Int8Rows {
    dtype: GgmlDType,
    out_features: usize,
    in_features: usize,
    data: Vec<u8>,
}

/// Bytes of one block of one group.
fn group_block_bytes(dtype: GgmlDType) -> usize {
    match dtype {
        GgmlDType::Q8_0 => 2 * GROUP + GROUP * BLOCK,
        GgmlDType::Q4_0 => 2 * GROUP + GROUP * BLOCK / 2,
        GgmlDType::Q4_1 => 4 * GROUP + GROUP * BLOCK / 2,
        other => unreachable!("{other:?} is not repacked"),
    }
}

/// One block of one row: scale, minimum (Q4_1), and the 32 unsigned weights.
struct RowBlock {
    d: u16,
    m: u16,
    u: [u8; BLOCK],
}

impl RowBlock {
    /// From the ggml block bytes (ggml-common.h: Q8_0 = d, 32 × i8; Q4_0 = d, 16 bytes of
    /// nibbles, value k < 16 in the low nibble of byte k, k ≥ 16 in the high one of k − 16;
    /// Q4_1 = d, m, the same nibbles).
    fn from_ggml(dtype: GgmlDType, b: &[u8]) -> Self {
        let half = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let mut u = [0u8; BLOCK];
        let (m, qs) = match dtype {
            GgmlDType::Q8_0 => {
                for (u, &q) in u.iter_mut().zip(&b[2..34]) {
                    *u = q ^ 0x80;
                }
                return Self {
                    d: half(0),
                    m: 0,
                    u,
                };
            }
            GgmlDType::Q4_0 => (0, &b[2..18]),
            _ => (half(2), &b[4..20]),
        };
        for (k, &q) in qs.iter().enumerate() {
            u[k] = q & 0xF;
            u[k + 16] = q >> 4;
        }
        Self { d: half(0), m, u }
    }

    /// The ggml block bytes back.
    fn to_ggml(&self, dtype: GgmlDType, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        let qs = match dtype {
            GgmlDType::Q8_0 => {
                for (o, &u) in out[2..34].iter_mut().zip(&self.u) {
                    *o = u ^ 0x80;
                }
                return;
            }
            GgmlDType::Q4_0 => &mut out[2..18],
            _ => {
                out[2..4].copy_from_slice(&self.m.to_le_bytes());
                &mut out[4..20]
            }
        };
        for (k, q) in qs.iter_mut().enumerate() {
            *q = self.u[k] | (self.u[k + 16] << 4);
        }
    }
}

/// Where row r's weight k of a group block sits among the block's weight bytes, and whether
/// it is the high nibble (Q4).
fn weight_at(dtype: GgmlDType, r: usize, k: usize) -> (usize, bool) {
    if dtype == GgmlDType::Q8_0 {
        ((k / 4) * 64 + 4 * r + k % 4, false)
    } else {
        ((k / 8) * 64 + 4 * r + k % 4, k % 8 >= 4)
    }
}

impl Int8Rows {
    /// From o rows of ggml blocks (`row_bytes` each), as a GGUF file holds them.
    pub fn from_ggml(dtype: GgmlDType, o: usize, i: usize, rows: &[u8]) -> Self {
        assert!(
            matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4_1),
            "{dtype:?} is not repacked"
        );
        let blocks = i / BLOCK;
        let row_bytes = blocks * dtype.type_size();
        let gb = group_block_bytes(dtype);
        let groups = o.div_ceil(GROUP);
        let mut data = vec![0u8; groups * blocks * gb];
        let scales = if dtype == GgmlDType::Q4_1 { 2 } else { 1 };
        for r in 0..o {
            let (g, lane) = (r / GROUP, r % GROUP);
            for b in 0..blocks {
                let src = &rows[r * row_bytes + b * dtype.type_size()..][..dtype.type_size()];
                let block = RowBlock::from_ggml(dtype, src);
                let dst = &mut data[(g * blocks + b) * gb..][..gb];
                dst[2 * lane..][..2].copy_from_slice(&block.d.to_le_bytes());
                if scales == 2 {
                    dst[2 * GROUP + 2 * lane..][..2].copy_from_slice(&block.m.to_le_bytes());
                }
                let weights = &mut dst[2 * GROUP * scales..];
                for (k, &u) in block.u.iter().enumerate() {
                    let (at, high) = weight_at(dtype, lane, k);
                    weights[at] |= if high { u << 4 } else { u };
                }
            }
        }
        Self {
            dtype,
            out_features: o,
            in_features: i,
            data,
        }
    }

    /// Bytes held.
    pub fn storage_bytes(&self) -> usize {
        self.data.len()
    }

    fn blocks(&self) -> usize {
        self.in_features / BLOCK
    }

    fn row_block(&self, r: usize, b: usize) -> RowBlock {
        let gb = group_block_bytes(self.dtype);
        let (g, lane) = (r / GROUP, r % GROUP);
        let src = &self.data[(g * self.blocks() + b) * gb..][..gb];
        let half = |at: usize| u16::from_le_bytes([src[at], src[at + 1]]);
        let q4_1 = self.dtype == GgmlDType::Q4_1;
        let weights = &src[if q4_1 { 4 * GROUP } else { 2 * GROUP }..];
        let mut u = [0u8; BLOCK];
        for (k, u) in u.iter_mut().enumerate() {
            let (at, high) = weight_at(self.dtype, lane, k);
            *u = match (self.dtype, high) {
                (GgmlDType::Q8_0, _) => weights[at],
                (_, false) => weights[at] & 0xF,
                (_, true) => weights[at] >> 4,
            };
        }
        RowBlock {
            d: half(2 * lane),
            m: if q4_1 { half(2 * GROUP + 2 * lane) } else { 0 },
            u,
        }
    }

    /// Row r as ggml block bytes (`out` holds one row of blocks).
    pub fn ggml_row(&self, r: usize, out: &mut [u8]) {
        let size = self.dtype.type_size();
        for b in 0..self.blocks() {
            self.row_block(r, b)
                .to_ggml(self.dtype, &mut out[b * size..][..size]);
        }
    }

    /// Decodes row r into `out` (i values), exactly as ggml decodes the block. Reads the
    /// row's 4 bytes of each vector directly: the many-row products decode every weight once
    /// a call, so this runs at about the speed of ggml's own decode.
    pub fn decode_row(&self, r: usize, out: &mut [f32]) {
        let gb = group_block_bytes(self.dtype);
        let (g, lane) = (r / GROUP, r % GROUP);
        let q4_1 = self.dtype == GgmlDType::Q4_1;
        let first = 2 * GROUP * if q4_1 { 2 } else { 1 };
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let src = &self.data[(g * self.blocks() + b) * gb..][..gb];
            let half = |at: usize| f16::from_le_bytes([src[at], src[at + 1]]).to_f32();
            let d = half(2 * lane);
            let weights = &src[first + 4 * lane..];
            match self.dtype {
                GgmlDType::Q8_0 => {
                    for (j, out) in out.chunks_exact_mut(4).enumerate() {
                        for (o, &u) in out.iter_mut().zip(&weights[64 * j..][..4]) {
                            *o = f32::from((u ^ 0x80) as i8) * d;
                        }
                    }
                }
                _ => {
                    // As ggml: (q − 8)·d for Q4_0, q·d + m for Q4_1 (the same roundings).
                    let m = if q4_1 {
                        half(2 * GROUP + 2 * lane)
                    } else {
                        0.0
                    };
                    let value = |q: u8| {
                        if q4_1 {
                            f32::from(q) * d + m
                        } else {
                            (f32::from(q) - 8.0) * d
                        }
                    };
                    for (j, out) in out.chunks_exact_mut(8).enumerate() {
                        let four = &weights[64 * j..][..4];
                        for t in 0..4 {
                            out[t] = value(four[t] & 0xF);
                            out[t + 4] = value(four[t] >> 4);
                        }
                    }
                }
            }
        }
    }

    /// y = x Wᵀ for n rows of x (n × i, row-major); returns n × o.
    pub fn rows_times_wt(&self, x: &[f32]) -> Vec<f32> {
        let (o, i) = (self.out_features, self.in_features);
        let n = x.len() / i;
        let acts: Vec<Activations> = x.chunks(i).map(Activations::quantize).collect();
        let groups = o.div_ceil(GROUP);
        let gb = group_block_bytes(self.dtype);
        let group_bytes = self.blocks() * gb;
        // (o padded, n): each group fills 16 · n consecutive values.
        let mut yt = vec![0f32; groups * GROUP * n];
        let chunk = groups.div_ceil(4 * team::threads()).max(1);
        team::for_each_chunk_mut(&mut yt, chunk * GROUP * n, |c, out| {
            let mut lanes = [0f32; GROUP];
            for (j, out) in out.chunks_mut(GROUP * n).enumerate() {
                let g = c * chunk + j;
                let group = &self.data[g * group_bytes..][..group_bytes];
                for (r, act) in acts.iter().enumerate() {
                    group_dot(self.dtype, group, act, &mut lanes);
                    for (lane, &v) in lanes.iter().enumerate() {
                        out[lane * n + r] = v;
                    }
                }
            }
        });
        yt.truncate(o * n);
        crate::quant_weight::rows_of_outputs(yt, n)
    }
}

/// One row of activations quantized per block of 32.
struct Activations {
    q: Vec<i8>,
    /// Per block: the scale dx, Σx, and Σxq.
    scale: Vec<f32>,
    sum: Vec<f32>,
    qsum: Vec<i32>,
}

impl Activations {
    fn quantize(x: &[f32]) -> Self {
        let blocks = x.len() / BLOCK;
        let mut out = Self {
            q: vec![0; x.len()],
            scale: Vec::with_capacity(blocks),
            sum: Vec::with_capacity(blocks),
            qsum: Vec::with_capacity(blocks),
        };
        for (xb, qb) in x.chunks(BLOCK).zip(out.q.chunks_mut(BLOCK)) {
            let max = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let dx = max / 127.0;
            let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
            let mut qsum = 0i32;
            for (q, &v) in qb.iter_mut().zip(xb) {
                // Half away from zero, as f32::round, without a libm call (x86-64's base
                // instruction set has no rounding instruction), so the loop vectorizes.
                let t = v * inv;
                *q = (t + 0.5f32.copysign(t)) as i8;
                qsum += i32::from(*q);
            }
            out.scale.push(dx);
            out.sum.push(xb.iter().sum());
            out.qsum.push(qsum);
        }
        out
    }
}

/// The 16 dot products of one group's rows with one row of activations.
fn group_dot(dtype: GgmlDType, group: &[u8], act: &Activations, out: &mut [f32; GROUP]) {
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: AVX512F and AVX512-VNNI are present (checked at run time); the group
        // holds one group block per block of the activations (the caller slices it so).
        unsafe { x86::group_dot(dtype, group, act, out) };
        return;
    }
    portable_group_dot(dtype, group, act, out);
}

/// The same arithmetic in plain Rust (the reference the vector kernel is tested against).
fn portable_group_dot(dtype: GgmlDType, group: &[u8], act: &Activations, out: &mut [f32; GROUP]) {
    let gb = group_block_bytes(dtype);
    let q4_1 = dtype == GgmlDType::Q4_1;
    let off = match dtype {
        GgmlDType::Q8_0 => 128,
        GgmlDType::Q4_0 => 8,
        _ => 0,
    };
    *out = [0.0; GROUP];
    for b in 0..act.scale.len() {
        let src = &group[b * gb..][..gb];
        let half = |at: usize| f16::from_bits(u16::from_le_bytes([src[at], src[at + 1]])).to_f32();
        let weights = &src[if q4_1 { 4 * GROUP } else { 2 * GROUP }..];
        for (lane, y) in out.iter_mut().enumerate() {
            let mut acc = 0i32;
            for k in 0..BLOCK {
                let (at, high) = weight_at(dtype, lane, k);
                let u = match (dtype, high) {
                    (GgmlDType::Q8_0, _) => weights[at],
                    (_, false) => weights[at] & 0xF,
                    (_, true) => weights[at] >> 4,
                };
                acc += i32::from(u) * i32::from(act.q[b * BLOCK + k]);
            }
            acc -= off * act.qsum[b];
            *y += half(2 * lane) * (act.scale[b] * acc as f32);
            if q4_1 {
                *y += half(2 * GROUP + 2 * lane) * act.sum[b];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{group_block_bytes, Activations, BLOCK, GROUP};
    use candle_core::quantized::GgmlDType;

    /// The 4 activation bytes at p, in every lane.
    #[inline(always)]
    unsafe fn four(p: *const i8) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn group_dot(
        dtype: GgmlDType,
        group: &[u8],
        act: &Activations,
        out: &mut [f32; GROUP],
    ) {
        let gb = group_block_bytes(dtype);
        let blocks = act.scale.len();
        debug_assert!(group.len() >= blocks * gb);
        let nibble = _mm512_set1_epi8(0x0F);
        let mut y = _mm512_setzero_ps();
        for b in 0..blocks {
            let src = group.as_ptr().add(b * gb);
            let xq = act.q.as_ptr().add(b * BLOCK);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(src as *const __m256i));
            let (acc, off) = match dtype {
                GgmlDType::Q8_0 => {
                    let w = src.add(2 * GROUP);
                    let mut acc = [_mm512_setzero_si512(); 2];
                    for j in 0..8 {
                        let v = _mm512_loadu_si512(w.add(64 * j) as *const _);
                        acc[j & 1] = _mm512_dpbusd_epi32(acc[j & 1], v, four(xq.add(4 * j)));
                    }
                    (_mm512_add_epi32(acc[0], acc[1]), 128)
                }
                _ => {
                    let q4_1 = dtype == GgmlDType::Q4_1;
                    let w = src.add(if q4_1 { 4 * GROUP } else { 2 * GROUP });
                    let mut acc = [_mm512_setzero_si512(); 2];
                    for j in 0..4 {
                        let v = _mm512_loadu_si512(w.add(64 * j) as *const _);
                        let lo = _mm512_and_si512(v, nibble);
                        let hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), nibble);
                        acc[0] = _mm512_dpbusd_epi32(acc[0], lo, four(xq.add(8 * j)));
                        acc[1] = _mm512_dpbusd_epi32(acc[1], hi, four(xq.add(8 * j + 4)));
                    }
                    if q4_1 {
                        let m = _mm512_cvtph_ps(_mm256_loadu_si256(src.add(2 * GROUP) as *const _));
                        y = _mm512_fmadd_ps(m, _mm512_set1_ps(act.sum[b]), y);
                    }
                    (_mm512_add_epi32(acc[0], acc[1]), if q4_1 { 0 } else { 8 })
                }
            };
            let acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(off * act.qsum[b]));
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(act.scale[b]));
            y = _mm512_fmadd_ps(d, t, y);
        }
        _mm512_storeu_ps(out.as_mut_ptr(), y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(7);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn ggml(dtype: GgmlDType, o: usize, i: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let dense = Tensor::from_vec(values(o * i, seed), (o, i), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&dense, dtype).unwrap();
        let decoded = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
        (q.data().unwrap().to_vec(), decoded.to_vec1().unwrap())
    }

    const FORMS: [GgmlDType; 3] = [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1];

    #[test]
    fn repacking_keeps_every_block_and_decodes_as_ggml() {
        for dtype in FORMS {
            let (o, i) = (37, 96);
            let (raw, want) = ggml(dtype, o, i, 1);
            let w = Int8Rows::from_ggml(dtype, o, i, &raw);
            let row_bytes = raw.len() / o;
            let mut back = vec![0u8; row_bytes];
            let mut row = vec![0f32; i];
            for r in 0..o {
                w.ggml_row(r, &mut back);
                assert_eq!(
                    back,
                    raw[r * row_bytes..][..row_bytes],
                    "{dtype:?} row {r} bytes"
                );
                w.decode_row(r, &mut row);
                assert_eq!(row, want[r * i..][..i], "{dtype:?} row {r} values");
            }
        }
    }

    #[test]
    fn products_match_the_decoded_weight_within_activation_rounding() {
        for dtype in FORMS {
            // 37 rows: two whole groups and a padded one; 1 and 3 activation rows.
            let (o, i) = (37, 160);
            let (raw, w) = ggml(dtype, o, i, 2);
            let packed = Int8Rows::from_ggml(dtype, o, i, &raw);
            for n in [1, 3] {
                let x = values(n * i, 3 + n as u64);
                let got = packed.rows_times_wt(&x);
                // The activations' 8-bit rounding: at most dx / 2 = max|x| / 254 a value.
                let mut worst_ratio = 0f64;
                for r in 0..n {
                    for c in 0..o {
                        let (xr, wr) = (&x[r * i..][..i], &w[c * i..][..i]);
                        let exact: f64 =
                            xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let bound: f64 = xr
                            .chunks(BLOCK)
                            .zip(wr.chunks(BLOCK))
                            .map(|(xb, wb)| {
                                let max = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                                wb.iter().map(|&v| (v as f64).abs()).sum::<f64>() * max / 254.0
                            })
                            .sum();
                        let err = (got[r * o + c] as f64 - exact).abs();
                        assert!(
                            err <= bound * 1.01 + 1e-5,
                            "{dtype:?} n {n} ({r}, {c}): {} vs {exact}, bound {bound}",
                            got[r * o + c]
                        );
                        worst_ratio = worst_ratio.max(err / bound);
                    }
                }
                // Rounding errors of independent values cancel: far below the worst case.
                assert!(
                    worst_ratio < 0.5,
                    "{dtype:?}: error up to {worst_ratio} of the bound"
                );
            }
        }
    }

    #[test]
    fn the_vector_kernel_matches_the_portable_one() {
        if !has_vnni() {
            return;
        }
        for dtype in FORMS {
            let (o, i) = (16, 32 * 7);
            let (raw, _) = ggml(dtype, o, i, 4);
            let packed = Int8Rows::from_ggml(dtype, o, i, &raw);
            let act = Activations::quantize(&values(i, 5));
            let (mut fast, mut slow) = ([0f32; GROUP], [0f32; GROUP]);
            group_dot(dtype, &packed.data, &act, &mut fast);
            portable_group_dot(dtype, &packed.data, &act, &mut slow);
            for (a, b) in fast.iter().zip(&slow) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{dtype:?}: {a} vs {b}"
                );
            }
        }
    }
}
