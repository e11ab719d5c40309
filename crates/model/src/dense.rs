//! Frozen products in f32 through gemm (the crate candle multiplies f32 with), written
//! straight into their result: over a dense f32 weight (`rows`), or over a compact weight
//! decoded a chunk of rows at a time (`decoded_rows`) where the processor's f32
//! multiply-adds outpace its bf16 instructions (`Bf16Kernel::prefers_f32`).
//!
//! W is (o, i) in Hugging Face's layout; x (n, i) -> x Wᵀ (n, o) for `Product::XWt`, dy (n, o)
//! -> dy W (n, i) for `Product::DyW`.

use rayon::prelude::*;

use crate::compact::Product;

/// Rows of W `decoded_rows` decodes at a time: enough columns for gemm to block over, few
/// enough that the f32 copy stays in L2 (576 columns: 1.2 MB) and a large vocabulary never
/// exists as f32 at once.
const DECODED_ROWS: usize = 512;

/// The product over a dense f32 weight w (o, i): the same gemm call candle's matmul makes
/// (so the same sums), without its zeroed output and the copy out of the tensor (memset and
/// memmove took 8% of a training step: perf, BENCHMARKS.md).
pub fn rows(x: &[f32], w: &[f32], (o, i): (usize, usize), product: Product) -> Vec<f32> {
    assert_eq!(w.len(), o * i, "dense::rows: w is not ({o}, {i})");
    let (k, n) = product.dims((o, i));
    let m = whole_rows(x, k);
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let rhs = match product {
        Product::XWt => Operand::transposed(w, i),
        Product::DyW => Operand::rows(w, i),
    };
    // SAFETY: x holds (m, k) values and w (k, n) at the strides given; with `accumulate`
    // false gemm writes every one of the m · n values of y before it reads any, so y is
    // initialized when its length is set.
    unsafe {
        gemm_into(
            y.as_mut_ptr(),
            n,
            Operand::rows(x, k),
            rhs,
            (m, n, k),
            false,
        );
        y.set_len(m * n);
    }
    y
}

/// The product over a weight W (o, i) that `decode(first, out)` decodes (whole rows first..
/// into out), DECODED_ROWS rows at a time, each chunk multiplied by gemm in f32: the
/// activations stay f32, the weight is exactly what its compact form holds.
pub fn decoded_rows(
    decode: &(dyn Fn(usize, &mut [f32]) + Sync),
    (o, i): (usize, usize),
    x: &[f32],
    product: Product,
) -> Vec<f32> {
    let (k, n) = product.dims((o, i));
    let m = whole_rows(x, k);
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let mut chunk = vec![0f32; DECODED_ROWS.min(o) * i];
    for first in (0..o).step_by(DECODED_ROWS) {
        let rows = DECODED_ROWS.min(o - first);
        let chunk = &mut chunk[..rows * i];
        chunk
            .par_chunks_mut(16 * i)
            .enumerate()
            .for_each(|(block, out)| decode(first + block * 16, out));
        // SAFETY: the operands hold the values their strides reach (x: m rows of k, the
        // chunk: `rows` rows of i). XWt writes columns first..first + rows of every row of
        // y, each chunk its own, so y is whole after the last; DyW writes all of y on the
        // first chunk and adds to it after.
        unsafe {
            match product {
                // y[.., first..] = x · chunkᵀ
                Product::XWt => gemm_into(
                    y.as_mut_ptr().add(first),
                    n,
                    Operand::rows(x, k),
                    Operand::transposed(chunk, i),
                    (m, rows, i),
                    false,
                ),
                // y += dy[.., first..] · chunk
                Product::DyW => gemm_into(
                    y.as_mut_ptr(),
                    n,
                    Operand {
                        values: &x[first..],
                        row_stride: k as isize,
                        col_stride: 1,
                    },
                    Operand::rows(chunk, i),
                    (m, i, rows),
                    first > 0,
                ),
            }
        }
    }
    // SAFETY: see above; an empty W (o = 0) leaves DyW's y unwritten, so it is zeroed.
    unsafe {
        if o == 0 {
            std::ptr::write_bytes(y.as_mut_ptr(), 0, m * n);
        }
        y.set_len(m * n);
    }
    y
}

/// x's row count, checking that it holds whole rows of k.
fn whole_rows(x: &[f32], k: usize) -> usize {
    let m = x.len() / k.max(1);
    assert_eq!(x.len(), m * k, "dense: x is not whole rows of {k}");
    m
}

/// A gemm operand: values and the strides between its rows and its columns.
pub(crate) struct Operand<'a> {
    pub values: &'a [f32],
    pub row_stride: isize,
    pub col_stride: isize,
}

impl<'a> Operand<'a> {
    /// Row-major rows of `width`.
    pub fn rows(values: &'a [f32], width: usize) -> Self {
        Self {
            values,
            row_stride: width as isize,
            col_stride: 1,
        }
    }

    /// The transpose of row-major rows of `width`.
    pub fn transposed(values: &'a [f32], width: usize) -> Self {
        Self {
            values,
            row_stride: 1,
            col_stride: width as isize,
        }
    }
}

/// y (m, n; rows `y_stride` apart) = lhs (m, k) · rhs (k, n), or += where `accumulate`,
/// on every thread.
///
/// # Safety
/// `y` must be writable at every (row, column) it names, and readable there too where
/// `accumulate`; the operands must hold every value their strides reach.
unsafe fn gemm_into(
    y: *mut f32,
    y_stride: usize,
    lhs: Operand,
    rhs: Operand,
    mnk: (usize, usize, usize),
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe { gemm_on(y, y_stride, lhs, rhs, mnk, accumulate, true) }
}

/// `gemm_into` on this thread only where `parallel` is false (for callers that split the
/// work between threads themselves).
///
/// # Safety
/// As for `gemm_into`.
pub(crate) unsafe fn gemm_on(
    y: *mut f32,
    y_stride: usize,
    lhs: Operand,
    rhs: Operand,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let threads = if parallel {
        candle_core::utils::get_num_threads()
    } else {
        1
    };
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's contract; with read_dst false gemm never reads y.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y,
            1,
            y_stride as isize,
            accumulate,
            lhs.values.as_ptr(),
            lhs.col_stride,
            lhs.row_stride,
            rhs.values.as_ptr(),
            rhs.col_stride,
            rhs.row_stride,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backprop::kernels::tests::random;

    fn reference(x: &[f32], w: &[f32], (o, i): (usize, usize), product: Product) -> Vec<f64> {
        let (k, n) = product.dims((o, i));
        let m = x.len() / k;
        let at = |kk: usize, c: usize| match product {
            Product::XWt => w[c * i + kk],
            Product::DyW => w[kk * i + c],
        };
        (0..m * n)
            .map(|e| {
                let (r, c) = (e / n, e % n);
                (0..k)
                    .map(|kk| x[r * k + kk] as f64 * at(kk, c) as f64)
                    .sum()
            })
            .collect()
    }

    /// Both products, decoded a chunk at a time, against the textbook sum: shapes with one
    /// chunk, several, and a last chunk that is not whole.
    #[test]
    fn decoded_rows_match_the_reference() {
        for (n, o, i) in [
            (3, 5, 7),
            (40, DECODED_ROWS + 37, 19),
            (17, 2 * DECODED_ROWS, 33),
        ] {
            let w = random(o * i, 3);
            let decode = |first: usize, out: &mut [f32]| {
                out.copy_from_slice(&w[first * i..][..out.len()]);
            };
            for (product, k) in [(Product::XWt, i), (Product::DyW, o)] {
                let x = random(n * k, 4);
                let got = decoded_rows(&decode, (o, i), &x, product);
                let want = reference(&x, &w, (o, i), product);
                assert_eq!(got.len(), want.len());
                for (e, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{product:?} ({n}, {k}) x ({o}, {i}) [{e}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// `rows` is candle's matmul without the copies: the same values, bit for bit, in both
    /// products, on shapes that leave gemm's blocks remainders.
    #[test]
    fn rows_equal_candles_matmul() {
        use candle_core::{Device, Tensor};
        for (n, o, i) in [(1, 3, 5), (37, 70, 19), (130, 33, 257)] {
            let wv = random(o * i, 1);
            let w = Tensor::from_slice(&wv, (o, i), &Device::Cpu).unwrap();
            for (product, k) in [(Product::XWt, i), (Product::DyW, o)] {
                let xv = random(n * k, 2);
                let x = Tensor::from_slice(&xv, (n, k), &Device::Cpu).unwrap();
                let want = match product {
                    Product::XWt => x.matmul(&w.t().unwrap()),
                    Product::DyW => x.matmul(&w),
                };
                let want = want
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                assert_eq!(
                    rows(&xv, &wv, (o, i), product),
                    want,
                    "{product:?} ({n}, {k})"
                );
            }
        }
    }
}
