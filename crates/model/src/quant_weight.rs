//! A frozen weight kept as ggml blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, ...,
//! or f16/bf16/f32 rows): the GGUF file's own tensors as loaded, or a dense weight quantized
//! at load. Never expanded to a resident f32 copy, so a model takes about its file's size.
//!
//! The two products of a frozen linear (compact.rs), by how many rows come in:
//! - a few rows (generation, a short prompt): each weight row is decoded into an f32 buffer
//!   and dotted with every activation row; activations stay f32, so the result is the f32
//!   product of the dequantized weight up to summation order (candle's quantized matmul
//!   quantizes the activations to 8 bits as well);
//! - many rows (scoring, prefill, training): the weight is decoded for this call only and
//!   multiplied on the matrix units in bf16 where the processor has them (bf16_weight.rs),
//!   or by candle's f32 matmul elsewhere. Decoding costs O(o·i), the product O(n·o·i).
//!
//! n rows, o out features, i in features.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use candle_core::quantized::{GgmlDType, GgmlType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::bf16_weight::{product_of_rows, Bf16Kernel};
use crate::block_dot;
use crate::compact::{CompactWeight, Product};
use crate::int8_rows::{self, Int8Rows};
use crate::matvec::dot_f32;
use crate::team;

/// Up to this many rows are multiplied row by row against the blocks; more go through a
/// decoded copy made for the call.
pub const MATVEC_MAX_ROWS: usize = 16;

/// Output rows computed per parallel task in the row-by-row product.
const ROW_BLOCK: usize = 32;

#[derive(Debug)]
pub struct QuantWeight {
    pub dtype: GgmlDType,
    pub out_features: usize,
    pub in_features: usize,
    row_bytes: usize,
    blocks: Blocks,
}

/// How the blocks are held.
#[derive(Debug)]
enum Blocks {
    /// o rows of `row_bytes` each, as ggml lays them out, in u64 words so that every block
    /// type's alignment holds (block sizes are even; f32 rows are 4·i bytes).
    Ggml(Vec<u64>),
    /// Repacked for the int8 dot instructions (Q8_0, Q4_0, Q4_1 where the processor has
    /// them): the same blocks, 16 rows interleaved.
    Int8(Int8Rows),
}

/// Whether `dtype` can hold rows of `in_features` values (whole blocks).
pub fn fits(dtype: GgmlDType, in_features: usize) -> bool {
    in_features.is_multiple_of(dtype.block_size())
}

impl QuantWeight {
    /// A 2-D quantized tensor (o, i), its blocks copied as they are.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let (o, i) = q.shape().dims2()?;
        let dtype = q.dtype();
        if !fits(dtype, i) {
            candle_core::bail!("{dtype:?} rows of {i} values are not whole blocks")
        }
        let row_bytes = i / dtype.block_size() * dtype.type_size();
        let data = q.data()?;
        if data.len() != o * row_bytes {
            candle_core::bail!(
                "{dtype:?} tensor ({o}, {i}) holds {} bytes, expected {}",
                data.len(),
                o * row_bytes
            )
        }
        Ok(Self::from_bytes(dtype, o, i, &data))
    }

    fn from_bytes(dtype: GgmlDType, o: usize, i: usize, data: &[u8]) -> Self {
        let row_bytes = i / dtype.block_size() * dtype.type_size();
        let mut words = vec![0u64; (o * row_bytes).div_ceil(8)];
        bytes_mut(&mut words)[..data.len()].copy_from_slice(data);
        Self {
            dtype,
            out_features: o,
            in_features: i,
            row_bytes,
            blocks: Blocks::Ggml(words),
        }
    }

    /// Repacks the blocks so that the few-row products run on the int8 dot instructions,
    /// with the activations rounded to 8 bits (int8_rows.rs), where the processor has them
    /// and the block type is one they take; else leaves the weight as it is.
    pub fn allow_int8_products(&mut self) {
        if let Blocks::Ggml(words) = &self.blocks {
            if int8_rows::packs(self.dtype) {
                let data = &bytes(words)[..self.out_features * self.row_bytes];
                let rows =
                    Int8Rows::from_ggml(self.dtype, self.out_features, self.in_features, data);
                self.blocks = Blocks::Int8(rows);
            }
        }
    }

    /// Quantizes a dense weight (o, i) into `dtype` with ggml's own rounding (candle's
    /// `from_float`, the code llama-quantize runs without an importance matrix).
    pub fn quantize(w: &Tensor, dtype: GgmlDType) -> Result<Self> {
        let w = w
            .to_dtype(candle_core::DType::F32)?
            .to_device(&Device::Cpu)?;
        Self::from_qtensor(&QTensor::quantize(&w, dtype)?)
    }

    /// The same weight with its rows reordered: row r of the result is row `order[r]`.
    pub fn reorder_rows(&self, order: &[usize]) -> Self {
        let mut data = vec![0u8; order.len() * self.row_bytes];
        for (&r, out) in order.iter().zip(data.chunks_mut(self.row_bytes)) {
            match &self.blocks {
                Blocks::Ggml(words) => {
                    out.copy_from_slice(&bytes(words)[r * self.row_bytes..][..self.row_bytes])
                }
                Blocks::Int8(rows) => rows.ggml_row(r, out),
            }
        }
        let mut reordered =
            Self::from_bytes(self.dtype, self.out_features, self.in_features, &data);
        if matches!(self.blocks, Blocks::Int8(_)) {
            reordered.allow_int8_products();
        }
        reordered
    }

    /// Bytes held (the blocks).
    pub fn storage_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Ggml(_) => self.out_features * self.row_bytes,
            Blocks::Int8(rows) => rows.storage_bytes(),
        }
    }

    /// Decodes rows first.. into `out` (whole rows of i values).
    pub fn dequantize_rows(&self, first: usize, out: &mut [f32]) {
        let i = self.in_features;
        for (r, row) in out.chunks_mut(i).enumerate() {
            match &self.blocks {
                Blocks::Ggml(words) => {
                    let src = &bytes(words)[(first + r) * self.row_bytes..][..self.row_bytes];
                    decode_row(self.dtype, src, row)
                }
                Blocks::Int8(rows) => rows.decode_row(first + r, row),
            }
        }
    }

    /// W (o, i) as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let i = self.in_features;
        let mut out = vec![0f32; self.out_features * i];
        out.par_chunks_mut(ROW_BLOCK * i)
            .enumerate()
            .for_each(|(b, rows)| self.dequantize_rows(b * ROW_BLOCK, rows));
        out
    }

    /// y = x Wᵀ for a few rows, weight rows decoded one at a time.
    fn rows_times_wt(&self, x: &[f32]) -> Vec<f32> {
        let (o, i) = (self.out_features, self.in_features);
        let n = x.len() / i;
        // (o, n), filled in blocks of output rows, then transposed to (n, o).
        let bytes = match &self.blocks {
            Blocks::Int8(rows) => return rows.rows_times_wt(x),
            Blocks::Ggml(words) => bytes(words),
        };
        let mut yt = vec![0f32; o * n];
        if n == 1 && block_dot::fused(self.dtype) {
            // A few long contiguous streams of rows, a few per thread, on the team that
            // stays awake between the products of a token.
            let chunk = o.div_ceil(4 * team::threads()).max(ROW_BLOCK);
            team::for_each_chunk_mut(&mut yt, chunk, |c, out| {
                for (j, y) in out.iter_mut().enumerate() {
                    let row = c * chunk + j;
                    *y = block_dot::dot(
                        self.dtype,
                        &bytes[row * self.row_bytes..][..self.row_bytes],
                        x,
                    );
                }
            });
            return yt;
        }
        team::for_each_chunk_mut(&mut yt, ROW_BLOCK * n, |block, out| {
            let mut w = vec![0f32; i];
            for (j, out_row) in out.chunks_mut(n).enumerate() {
                self.dequantize_rows(block * ROW_BLOCK + j, &mut w);
                for (r, y) in out_row.iter_mut().enumerate() {
                    *y = dot_f32(&w, &x[r * i..][..i]);
                }
            }
        });
        rows_of_outputs(yt, n)
    }
}

/// (o, n) products, output by output, as (n, o): the row-by-row kernels fill each output's
/// n values together.
pub(crate) fn rows_of_outputs(yt: Vec<f32>, n: usize) -> Vec<f32> {
    if n == 1 {
        return yt;
    }
    let o = yt.len() / n;
    let mut y = vec![0f32; n * o];
    for (c, col) in yt.chunks(n).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            y[r * o + c] = v;
        }
    }
    y
}

impl CompactWeight for QuantWeight {
    fn out_features(&self) -> usize {
        self.out_features
    }

    fn in_features(&self) -> usize {
        self.in_features
    }

    fn product(&self, x: &[f32], product: Product) -> Vec<f32> {
        let (o, i) = (self.out_features, self.in_features);
        let (k, _) = product.dims((o, i));
        let n = x.len() / k;
        if product == Product::XWt && n <= MATVEC_MAX_ROWS {
            return self.rows_times_wt(x);
        }
        let rows = |first: usize, out: &mut [f32]| self.dequantize_rows(first, out);
        match Bf16Kernel::chosen() {
            kernel if kernel.prefers_f32(n) => {
                crate::dense::decoded_rows(&rows, (o, i), x, product)
            }
            kernel => product_of_rows(&rows, (o, i), x, product, kernel),
        }
    }
}

/// Decodes one row of blocks of `dtype` into `out`.
fn decode_row(dtype: GgmlDType, src: &[u8], out: &mut [f32]) {
    fn blocks<T: GgmlType>(src: &[u8], out: &mut [f32]) {
        let n = src.len() / std::mem::size_of::<T>();
        assert!(
            src.as_ptr().align_offset(std::mem::align_of::<T>()) == 0
                && n * std::mem::size_of::<T>() == src.len(),
            "quantized rows are aligned whole blocks"
        );
        // SAFETY: checked above: `src` is aligned for T and holds exactly n values of T,
        // plain-old-data types (f16 scales and byte arrays) for which any bits are valid.
        let xs = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const T, n) };
        T::to_float(xs, out);
    }
    match dtype {
        GgmlDType::F32 => blocks::<f32>(src, out),
        GgmlDType::F16 => blocks::<f16>(src, out),
        GgmlDType::BF16 => blocks::<bf16>(src, out),
        GgmlDType::Q4_0 => blocks::<BlockQ4_0>(src, out),
        GgmlDType::Q4_1 => blocks::<BlockQ4_1>(src, out),
        GgmlDType::Q5_0 => blocks::<BlockQ5_0>(src, out),
        GgmlDType::Q5_1 => blocks::<BlockQ5_1>(src, out),
        GgmlDType::Q8_0 => blocks::<BlockQ8_0>(src, out),
        GgmlDType::Q8_1 => blocks::<BlockQ8_1>(src, out),
        GgmlDType::Q2K => blocks::<BlockQ2K>(src, out),
        GgmlDType::Q3K => blocks::<BlockQ3K>(src, out),
        GgmlDType::Q4K => blocks::<BlockQ4K>(src, out),
        GgmlDType::Q5K => blocks::<BlockQ5K>(src, out),
        GgmlDType::Q6K => blocks::<BlockQ6K>(src, out),
        GgmlDType::Q8K => blocks::<BlockQ8K>(src, out),
    }
}

fn bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirement; the length covers the words.
    unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 8) }
}

fn bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above, and the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The f64 product over the weight as decoded: what every path must reach, up to f32
    /// summation order (row by row) or bf16 rounding of both operands (matrix units).
    fn reference(x: &[f32], w: &[f32], o: usize, i: usize, p: Product) -> Vec<f32> {
        let (k, n) = if p == Product::XWt { (i, o) } else { (o, i) };
        let rows = x.len() / k;
        let mut y = vec![0f32; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let s: f64 = (0..k)
                    .map(|j| {
                        let wv = if p == Product::XWt {
                            w[c * i + j]
                        } else {
                            w[j * i + c]
                        };
                        x[r * k + j] as f64 * wv as f64
                    })
                    .sum();
                y[r * n + c] = s as f32;
            }
        }
        y
    }

    #[test]
    fn every_form_and_path_matches_the_decoded_weight_on_odd_shapes() {
        let bf16_tiles = Bf16Kernel::chosen() != Bf16Kernel::Portable;
        for (dtype, i) in [
            (GgmlDType::Q8_0, 96),
            (GgmlDType::Q4_0, 64),
            (GgmlDType::Q4_1, 160),
            (GgmlDType::Q5_0, 32),
            (GgmlDType::Q4K, 256),
            (GgmlDType::Q6K, 512),
            (GgmlDType::F16, 45),
            (GgmlDType::BF16, 33),
        ] {
            let o = 37;
            let dense = Tensor::from_vec(values(o * i, 3), (o, i), &Device::Cpu).unwrap();
            let q = QuantWeight::quantize(&dense, dtype).unwrap();
            // The same blocks repacked for the int8 kernels, where this processor has them.
            let mut q8 = QuantWeight::quantize(&dense, dtype).unwrap();
            q8.allow_int8_products();
            let w = q.to_f32();
            assert_eq!(q8.to_f32(), w, "{dtype:?}: decoded from the int8 layout");
            // Decoding agrees with candle's own dequantize of the same blocks.
            let theirs = QTensor::quantize(&dense, dtype)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(w, theirs, "{dtype:?}: decoded weight");
            for product in [Product::XWt, Product::DyW] {
                let k = if product == Product::XWt { i } else { o };
                for rows in [1, 3, MATVEC_MAX_ROWS + 1, 70] {
                    let x = values(rows * k, rows as u64);
                    let want = reference(&x, &w, o, i, product);
                    for (q, repacked) in [(&q, false), (&q8, true)] {
                        let got = q.product(&x, product);
                        let batched = !(product == Product::XWt && rows <= MATVEC_MAX_ROWS);
                        // bf16 rounding of both operands: 2^-8 relative each, on k terms ≤ 1;
                        // the int8 kernels round the activations to 8 bits, about as much.
                        let int8 = repacked && !batched && int8_rows::packs(dtype);
                        let tol = if (batched && bf16_tiles) || int8 {
                            8e-3 * (k as f32).sqrt()
                        } else {
                            1e-5 * k as f32
                        };
                        let worst = got
                            .iter()
                            .zip(&want)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        assert!(
                        worst < tol,
                        "{dtype:?} {product:?} {rows}x{k} (int8 layout: {repacked}): off by {worst}"
                    );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_block_dots_match_decode_then_dot() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
            if !block_dot::fused(dtype) {
                continue;
            }
            let i = 32 * 19;
            let dense = Tensor::from_vec(values(3 * i, 5), (3, i), &Device::Cpu).unwrap();
            // The ggml blocks themselves (a QuantWeight may hold them repacked).
            let q = QTensor::quantize(&dense, dtype).unwrap();
            let blocks = q.data().unwrap();
            let w = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
            let w = w.to_vec1::<f32>().unwrap();
            let x = values(i, 6);
            let row_bytes = blocks.len() / 3;
            for r in 0..3 {
                let row = &blocks[r * row_bytes..][..row_bytes];
                let want: f64 = (0..i).map(|j| w[r * i + j] as f64 * x[j] as f64).sum();
                let got = block_dot::dot(dtype, row, &x);
                assert!(
                    (got as f64 - want).abs() < 1e-4,
                    "{dtype:?} row {r}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn reordered_rows_decode_to_the_reordered_weight() {
        let (o, i) = (4, 64);
        let dense = Tensor::from_vec(values(o * i, 9), (o, i), &Device::Cpu).unwrap();
        let q = QuantWeight::quantize(&dense, GgmlDType::Q4_1).unwrap();
        let w = q.to_f32();
        let mut q8 = QuantWeight::quantize(&dense, GgmlDType::Q4_1).unwrap();
        q8.allow_int8_products();
        for q in [q, q8] {
            let r = q.reorder_rows(&[2, 0, 3, 1]).to_f32();
            for (new, old) in [2, 0, 3, 1].iter().enumerate() {
                assert_eq!(r[new * i..][..i], w[old * i..][..i]);
            }
        }
    }
}
