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
use super::low_rank::{self, lanes, Isa};
use crate::compact::Product;
use crate::linear::Linear;

/// What the backward of one projection needs besides its input.
pub struct Saved {
    /// (n, R): the adapter's inner activation (m ⊙ x) Aᵀ, zero beyond r.
    inner: Option<Vec<f32>>,
    /// (n, i): the dropout mask, when the adapter has dropout.
    mask: Option<Vec<f32>>,
}

/// x (n, i) -> y (n, o). `seed` (the pass's) seeds the dropout mask of an adapter in
/// training; without it there is no dropout.
pub fn forward(linear: &Linear, x: &Tensor, seed: Option<u64>) -> Result<(Tensor, Saved)> {
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
        let mask = seed
            .filter(|_| adapter.training && adapter.dropout > 0.0)
            .map(|seed| {
                tuna_lora::adapter::dropout_mask(xs.len(), adapter.dropout, adapter.mask_seed(seed))
            });
        let dropped: Option<Vec<f32>> = mask
            .as_ref()
            .map(|mask| xs.iter().zip(mask).map(|(x, m)| x * m).collect());
        let at = low_rank::transpose(&a, r, i, i, lanes(r), 1.0);
        let isa = Isa::chosen();
        let inner = low_rank::thin(isa, dropped.as_deref().unwrap_or(&xs), i, &at, lanes(r));
        // y += inner · (s Bᵀ): (n, r) @ (r, o)
        let sbt = low_rank::transpose(&b, o, r, r, o, adapter.scale as f32);
        low_rank::add_low_rank(isa, &mut y, o, &inner, r, &sbt, None);
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
    let dx = backward_rows(linear, x, saved, dy, grads)?;
    let (n, i) = (dx.len() / linear.in_features, linear.in_features);
    tensor(dx, &[n, i])
}

/// `backward`'s dx as a row-major vector, for callers that sum several projections' dx in
/// place.
pub fn backward_rows(
    linear: &Linear,
    x: &Tensor,
    saved: &Saved,
    dy: &Tensor,
    grads: &mut GradStore,
) -> Result<Vec<f32>> {
    let (i, o) = (linear.in_features, linear.out_features);
    // (n, o) @ (o, i)
    let mut dx = linear.frozen_rows(dy, Product::DyW)?;
    if let (Some(adapter), Some(inner)) = (&linear.adapter, &saved.inner) {
        let (a_var, b_var) = (adapter.a.as_tensor(), adapter.b.as_tensor());
        let (a, b) = (view(a_var)?, view(b_var)?);
        let r = a.len() / i;
        let rr = lanes(r);
        let s = adapter.scale as f32;
        let dys = view(dy)?;
        let isa = Isa::chosen();
        // dBᵀ = innerᵀ dy: (r, n) @ (n, o); s comes in when dB is transposed out of it.
        let mut dbt = vec![0f32; r * o];
        low_rank::accumulate_outer(isa, &mut dbt, r, &dys, o, inner, None);
        // d inner = s · dy B: (n, o) @ (o, r)
        let dinner = low_rank::thin(isa, &dys, o, &low_rank::pad_rows(&b, r, s), rr);
        // dA = d innerᵀ (m ⊙ x): (r, n) @ (n, i)
        let mut da = vec![0f32; r * i];
        low_rank::accumulate_outer(
            isa,
            &mut da,
            r,
            &view(x)?,
            i,
            &dinner,
            saved.mask.as_deref(),
        );
        // dx += m ⊙ (d inner A): (n, r) @ (r, i)
        low_rank::add_low_rank(isa, &mut dx, i, &dinner, r, &a, saved.mask.as_deref());
        let db = low_rank::transpose(&dbt, r, o, o, r, s);
        grads.insert(a_var, tensor(da, &[r, i])?);
        grads.insert(b_var, tensor(db, &[o, r])?);
    }
    Ok(dx)
}
