//! Attention's products in f32 through gemm, skipping what causal masking makes zero.
//!
//! Per (b, kvh) batch, the query side is g groups of t rows (group-major: row gi·t + ti is
//! position ti of query head gi of the group), the key side t rows. Query rows go in blocks
//! of QUERY_BLOCK positions, key rows likewise: a block of queries is multiplied only against
//! the keys up to its last position, and a block of keys sums only over the queries from its
//! first position on. The scores past a block's last key are written zero, so every value of
//! every result is written, and each batch's results are written straight into the output.
//!
//! Each batch is one task on one thread (the batches are many: b · kvh), so gemm runs
//! single-threaded inside.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::dense::{gemm_on, Operand};

/// Positions of one block of query (or key) rows.
const QUERY_BLOCK: usize = 64;

/// (g, t, hd): query groups per batch, positions, head dimension.
pub type Dims = (usize, usize, usize);

/// Per batch: a (g·t, hd) · bᵀ with b (t, hd) -> (g·t, t), zero past each block's last
/// position: q·kᵀ and dy·vᵀ.
pub fn scores(a: &[f32], b: &[f32], (g, t, hd): Dims) -> Vec<f32> {
    let batches = b.len() / (t * hd).max(1);
    per_batch(batches, g * t * t, |batch, out| {
        let (a, b) = (&a[batch * g * t * hd..], &b[batch * t * hd..][..t * hd]);
        for (row0, t0, t1) in query_blocks(g, t) {
            // SAFETY: rows row0..row0 + (t1 − t0) of out (t values each) are inside this
            // batch's part; the operands hold those rows of a and t1 rows of b.
            unsafe {
                gemm_on(
                    out[row0 * t..].as_mut_ptr().cast(),
                    t,
                    Operand::rows(&a[row0 * hd..][..(t1 - t0) * hd], hd),
                    Operand::transposed(&b[..t1 * hd], hd),
                    (t1 - t0, t1, hd),
                    false,
                    false,
                );
            }
            for row in row0..row0 + (t1 - t0) {
                for v in &mut out[row * t + t1..][..t - t1] {
                    v.write(0.0);
                }
            }
        }
    })
}

/// Per batch: p (g·t, t) · v (t, hd) -> (g·t, hd), each block summing only up to its last
/// position (p is zero past it): p·v and ds·k.
pub fn rows_times_keys(p: &[f32], v: &[f32], (g, t, hd): Dims) -> Vec<f32> {
    let batches = v.len() / (t * hd).max(1);
    per_batch(batches, g * t * hd, |batch, out| {
        let (p, v) = (&p[batch * g * t * t..], &v[batch * t * hd..][..t * hd]);
        for (row0, t0, t1) in query_blocks(g, t) {
            // SAFETY: rows row0.. (t1 − t0 of them, hd values each) are inside this batch's
            // part; p holds those rows (t values each), v t1 rows.
            unsafe {
                gemm_on(
                    out[row0 * hd..].as_mut_ptr().cast(),
                    hd,
                    Operand::rows(&p[row0 * t..][..(t1 - t0) * t], t),
                    Operand::rows(&v[..t1 * hd], hd),
                    (t1 - t0, hd, t1),
                    false,
                    false,
                );
            }
        }
    })
}

/// Per batch: pᵀ (t, g·t) · dy (g·t, hd) -> (t, hd), each block of keys summing only over
/// the queries from its first position on, in every group: pᵀ·dy and dsᵀ·q.
pub fn keys_times_rows(p: &[f32], dy: &[f32], (g, t, hd): Dims) -> Vec<f32> {
    let batches = dy.len() / (g * t * hd).max(1);
    per_batch(batches, t * hd, |batch, out| {
        let (p, dy) = (&p[batch * g * t * t..], &dy[batch * g * t * hd..]);
        for j0 in (0..t).step_by(QUERY_BLOCK) {
            let j1 = (j0 + QUERY_BLOCK).min(t);
            for gi in 0..g {
                let first = gi * t + j0;
                // SAFETY: rows j0..j1 of out (hd values each) are inside this batch's part,
                // written by the first group and added to by the others. The left operand
                // is pᵀ: its (r, kk) is p[first + kk][j0 + r], inside rows first..gi·t + t
                // of p; dy holds those rows.
                unsafe {
                    gemm_on(
                        out[j0 * hd..].as_mut_ptr().cast(),
                        hd,
                        Operand {
                            values: &p[first * t + j0..(gi + 1) * t * t],
                            row_stride: 1,
                            col_stride: t as isize,
                        },
                        Operand::rows(&dy[first * hd..(gi + 1) * t * hd], hd),
                        (j1 - j0, hd, t - j0),
                        gi > 0,
                        false,
                    );
                }
            }
        }
    })
}

/// (first row in the batch, first position, end position) of every block of query rows.
fn query_blocks(g: usize, t: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..g).flat_map(move |gi| {
        (0..t)
            .step_by(QUERY_BLOCK)
            .map(move |t0| (gi * t + t0, t0, (t0 + QUERY_BLOCK).min(t)))
    })
}

/// `batches` parts of `len` values, each written whole by `fill(batch, part)`, in parallel.
fn per_batch(
    batches: usize,
    len: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(batches * len);
    if len > 0 {
        out.spare_capacity_mut()[..batches * len]
            .par_chunks_mut(len)
            .enumerate()
            .for_each(|(batch, part)| fill(batch, part));
    }
    // SAFETY: each fill above writes every value of its part (see each caller).
    unsafe { out.set_len(batches * len) };
    out
}
