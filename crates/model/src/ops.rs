//! The few numeric ops whose fast candle-nn kernels have no backward.
//!
//! candle-nn 0.11's `ops::rms_norm`, `softmax_last_dim` and `rotary_emb::rope` detach their
//! output: gradients through them are silently `None`. Training must use `Differentiable`;
//! inference may use `Fused`.

use candle_core::{DType, Result, Tensor, D};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Composed from ops that all have a backward.
    Differentiable,
    /// candle-nn's fused kernels: faster, no backward.
    Fused,
}

/// x * w / sqrt(mean(x²) + eps) over the last dimension, computed in f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused => candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32),
        Kernels::Differentiable => {
            let dtype = x.dtype();
            let x = x.to_dtype(DType::F32)?;
            let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
            normed.to_dtype(dtype)?.broadcast_mul(weight)
        }
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused => candle_nn::ops::softmax_last_dim(&x.contiguous()?),
        Kernels::Differentiable => candle_nn::ops::softmax(x, D::Minus1),
    }
}
