//! A frozen projection with its optional LoRA branch, forward and backward:
//! y = x Wᵀ + b + s · (m ⊙ x) Aᵀ Bᵀ, with m the dropout mask (scaled by 1/(1 − p)).
//! The backward gives dx and the adapter's dA, dB; the frozen W and b get none.
//!
//! n rows, i in features, o out features, r rank.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};

use crate::linear::Linear;

/// What the backward of one projection needs besides its input.
pub struct Saved {
    /// (n, r): the adapter's inner activation (m ⊙ x) Aᵀ.
    inner: Option<Tensor>,
    /// (n, i): the dropout mask, when the adapter has dropout.
    mask: Option<Tensor>,
}

/// x (n, i) -> y (n, o). `seed` (the pass's) seeds the dropout mask.
pub fn forward(linear: &Linear, x: &Tensor, seed: u64) -> Result<(Tensor, Saved)> {
    let mut y = linear.frozen_forward(x)?;
    if let Some(b) = &linear.bias {
        y = y.broadcast_add(b)?;
    }
    let mut saved = Saved {
        inner: None,
        mask: None,
    };
    if let Some(adapter) = &linear.adapter {
        let x = if adapter.training && adapter.dropout > 0.0 {
            let mask = tuna_lora::adapter::dropout_mask(
                x.elem_count(),
                adapter.dropout,
                adapter.mask_seed(seed),
            );
            let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
            let dropped = (x * &mask)?;
            saved.mask = Some(mask);
            dropped
        } else {
            x.clone()
        };
        // (n, i) @ (i, r) -> (n, r) @ (r, o) -> (n, o)
        let inner = x.matmul(&adapter.a.as_tensor().detach().t()?)?;
        let branch = (inner.matmul(&adapter.b.as_tensor().detach().t()?)? * adapter.scale)?;
        y = (y + branch)?;
        saved.inner = Some(inner);
    }
    Ok((y, saved))
}

/// dy (n, o) -> dx (n, i); the adapter's gradients go into `grads` under its A and B.
pub fn backward(
    linear: &Linear,
    x: &Tensor,
    saved: &Saved,
    dy: &Tensor,
    grads: &mut GradStore,
) -> Result<Tensor> {
    // (n, o) @ (o, i)
    let dx = linear.frozen_backward(dy)?;
    let (Some(adapter), Some(inner)) = (&linear.adapter, &saved.inner) else {
        return Ok(dx);
    };
    let (a, b) = (adapter.a.as_tensor(), adapter.b.as_tensor());
    // dB = s · dyᵀ inner: (o, n) @ (n, r)
    let db = (dy.t()?.matmul(inner)? * adapter.scale)?;
    // d inner = s · dy B: (n, o) @ (o, r)
    let dinner = (dy.matmul(&b.detach())? * adapter.scale)?;
    let x = match &saved.mask {
        Some(mask) => (x * mask)?,
        None => x.clone(),
    };
    // dA = d innerᵀ (m ⊙ x): (r, n) @ (n, i)
    let da = dinner.t()?.matmul(&x)?;
    // dx += m ⊙ (d inner A): (n, r) @ (r, i)
    let mut dx_branch = dinner.matmul(&a.detach())?;
    if let Some(mask) = &saved.mask {
        dx_branch = (dx_branch * mask)?;
    }
    grads.insert(a, da);
    grads.insert(b, db);
    dx + dx_branch
}
