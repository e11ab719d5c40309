//! A frozen projection with its optional LoRA branch, forward and backward:
//! y = x Wᵀ + b + s · (m ⊙ x) Aᵀ Bᵀ, with m the dropout mask (scaled by 1/(1 − p)).
//! The backward gives dx and the adapter's dA, dB; the frozen W and b get none.
//!
//! The frozen products come back as plain vectors and the branch is added to them in place
//! (low_rank.rs), so a projection allocates its output once.
//!
//! n rows, i in features, o out features, r rank, R = lanes(r).

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};

use super::kernels::{tensor, view};
use super::low_rank::{self, lanes};
use crate::compact::Product;
use crate::linear::Linear;

/// What the backward of one projection needs besides its input.
pub struct Saved {
    /// (n, R): the adapter's inner activation (m ⊙ x) Aᵀ, zero beyond r.
    inner: Option<Vec<f32>>,
    /// (n, i): the dropout mask, when the adapter has dropout.
    mask: Option<Vec<f32>>,
}

/// x (n, i) -> y (n, o). `seed` (the pass's) seeds the dropout mask.
pub fn forward(linear: &Linear, x: &Tensor, seed: u64) -> Result<(Tensor, Saved)> {
    let (i, o) = (linear.in_features, linear.out_features);
    let mut y = linear.frozen_rows(x, Product::XWt)?;
    let n = y.len() / o;
    if let Some(bias) = &linear.bias {
        let bias = view(bias)?;
        for row in y.chunks_mut(o) {
            for (y, b) in row.iter_mut().zip(bias.iter()) {
                *y += b;
            }
        }
    }
    let mut saved = Saved {
        inner: None,
        mask: None,
    };
    if let Some(adapter) = &linear.adapter {
        let (a, b) = (view(adapter.a.as_tensor())?, view(adapter.b.as_tensor())?);
        let r = a.len() / i;
        let xs = view(x)?;
        let mask = (adapter.training && adapter.dropout > 0.0).then(|| {
            tuna_lora::adapter::dropout_mask(xs.len(), adapter.dropout, adapter.mask_seed(seed))
        });
        let inner = match &mask {
            Some(mask) => {
                let dropped: Vec<f32> = xs.iter().zip(mask).map(|(x, m)| x * m).collect();
                low_rank::thin(
                    &dropped,
                    i,
                    &low_rank::transpose_padded(&a, r, i, 1.0),
                    lanes(r),
                )
            }
            None => low_rank::thin(&xs, i, &low_rank::transpose_padded(&a, r, i, 1.0), lanes(r)),
        };
        // y += inner · (s Bᵀ): (n, r) @ (r, o)
        let sbt = transpose(&b, o, r, adapter.scale as f32);
        low_rank::add_low_rank(&mut y, o, &inner, r, &sbt, None);
        saved.inner = Some(inner);
        saved.mask = mask;
    }
    Ok((tensor(y, &[n, o])?, saved))
}

/// dy (n, o) -> dx (n, i); the adapter's gradients go into `grads` under its A and B.
pub fn backward(
    linear: &Linear,
    x: &Tensor,
    saved: &Saved,
    dy: &Tensor,
    grads: &mut GradStore,
) -> Result<Tensor> {
    let (i, o) = (linear.in_features, linear.out_features);
    // (n, o) @ (o, i)
    let mut dx = linear.frozen_rows(dy, Product::DyW)?;
    let n = dx.len() / i;
    if let (Some(adapter), Some(inner)) = (&linear.adapter, &saved.inner) {
        let (a_var, b_var) = (adapter.a.as_tensor(), adapter.b.as_tensor());
        let (a, b) = (view(a_var)?, view(b_var)?);
        let r = a.len() / i;
        let rr = lanes(r);
        let s = adapter.scale as f32;
        let dys = view(dy)?;
        // dB = s · dyᵀ inner: (o, n) @ (n, r)
        let mut db = vec![0f32; o * rr];
        low_rank::accumulate_outer(&mut db, &dys, o, inner, rr, None);
        // d inner = s · dy B: (n, o) @ (o, r)
        let dinner = low_rank::thin(&dys, o, &low_rank::pad_rows(&b, r, s), rr);
        // dAᵀ = (m ⊙ x)ᵀ d inner: (i, n) @ (n, r)
        let mut dat = vec![0f32; i * rr];
        low_rank::accumulate_outer(&mut dat, &view(x)?, i, &dinner, rr, saved.mask.as_deref());
        // dx += m ⊙ (d inner A): (n, r) @ (r, i)
        low_rank::add_low_rank(&mut dx, i, &dinner, r, &a, saved.mask.as_deref());
        let db: Vec<f32> = db
            .chunks(rr)
            .flat_map(|row| row[..r].iter().map(|g| g * s))
            .collect();
        let da = transpose_unpadded(&dat, i, rr, r);
        grads.insert(a_var, tensor(da, &[r, i])?);
        grads.insert(b_var, tensor(db, &[o, r])?);
    }
    tensor(dx, &[n, i])
}

/// (rows, cols) row-major -> (cols, rows), times `scale`.
fn transpose(m: &[f32], rows: usize, cols: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; m.len()];
    for (r, row) in m.chunks(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v * scale;
        }
    }
    out
}

/// The first `r` columns of m (rows, stride) transposed: (r, rows).
fn transpose_unpadded(m: &[f32], rows: usize, stride: usize, r: usize) -> Vec<f32> {
    let mut out = vec![0f32; r * rows];
    for row in 0..rows {
        for j in 0..r {
            out[j * rows + row] = m[row * stride + j];
        }
    }
    out
}
