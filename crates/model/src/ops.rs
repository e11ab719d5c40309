//! The few numeric ops whose fast candle-nn kernels have no backward.
//!
//! candle-nn 0.11's `ops::rms_norm`, `softmax_last_dim` and `rotary_emb::rope` detach their
//! output: gradients through them are silently `None`. Training must use `Differentiable`;
//! inference may use `Fused`.

use candle_core::{DType, Result, Tensor, D};
use rayon::prelude::*;

use crate::vexp;

/// silu(gate) · up, the gated MLP's activation. Fused on the CPU in f32: the training
/// pass's kernel (exp by `vexp`); otherwise candle's ops.
pub fn silu_mul(gate: &Tensor, up: &Tensor, kernels: Kernels) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if kernels == Kernels::Fused && cpu_f32(gate) && cpu_f32(up) && gate.dims() == up.dims() {
        let (g, u) = (
            gate.flatten_all()?.to_vec1::<f32>()?,
            up.flatten_all()?.to_vec1::<f32>()?,
        );
        let y = crate::backprop::kernels::silu_mul(&g, &u);
        return Tensor::from_vec(y, gate.shape(), gate.device());
    }
    gate.silu()? * up
}

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

/// Softmax over the last dimension. Fused on the CPU in f32: rows in parallel, exp by
/// `vexp` (candle-nn's kernel calls the scalar exp, a tenth of a scoring forward).
pub fn softmax_last_dim(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused if x.device().is_cpu() && x.dtype() == DType::F32 && x.elem_count() > 0 => {
            let n = x.dim(D::Minus1)?;
            let mut v = x.flatten_all()?.to_vec1::<f32>()?;
            v.par_chunks_mut(n).for_each(|row| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                vexp::exp_affine(row, 1.0, max);
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|x| *x /= sum);
            });
            Tensor::from_vec(v, x.shape(), x.device())
        }
        Kernels::Fused => candle_nn::ops::softmax_last_dim(&x.contiguous()?),
        Kernels::Differentiable => candle_nn::ops::softmax(x, D::Minus1),
    }
}
