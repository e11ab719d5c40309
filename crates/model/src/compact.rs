//! Frozen weights held in a compact form (bf16 tiles, ggml blocks) and the one candle op that
//! multiplies activations by any of them.
//!
//! A frozen linear needs two products of its weight W (o, i), both reading W, never writing
//! it: y = x Wᵀ forward and dx = dy W for the input gradient. So W can live in any form that
//! does these two fast; LoRA weights, norms and the loss stay f32.
//!
//! n rows, o out features, i in features.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Which product of the weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// x (n, i) -> x Wᵀ (n, o)
    XWt,
    /// dy (n, o) -> dy W (n, i)
    DyW,
}

impl Product {
    /// The product that differentiates this one: each is the other's input gradient.
    pub fn transpose(self) -> Self {
        match self {
            Self::XWt => Self::DyW,
            Self::DyW => Self::XWt,
        }
    }

    /// (K, N) of this product over a weight W (o, i): the width of the rows it takes and of
    /// the rows it gives.
    pub fn dims(self, (o, i): (usize, usize)) -> (usize, usize) {
        match self {
            Self::XWt => (i, o),
            Self::DyW => (o, i),
        }
    }
}

/// A frozen weight W (o, i) that multiplies f32 activations, f32 out.
pub trait CompactWeight: Send + Sync + std::fmt::Debug {
    fn out_features(&self) -> usize;
    fn in_features(&self) -> usize;
    /// `x` (n × K) row-major -> n × N, K and N as `product` says.
    fn product(&self, x: &[f32], product: Product) -> Vec<f32>;
}

/// The weight's product as a candle op over f32 activations (.., K) -> (.., N); the forward
/// product differentiates to the other one, so autograd reaches x (W gets no gradient).
#[derive(Clone)]
pub struct CompactProduct {
    pub weight: Arc<dyn CompactWeight>,
    pub product: Product,
}

impl CustomOp1 for CompactProduct {
    fn name(&self) -> &'static str {
        "compact-product"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("compact-product: expected f32 activations")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("compact-product: activations must be contiguous")
        };
        let w = &self.weight;
        let (k, n) = self.product.dims((w.out_features(), w.in_features()));
        let dims = layout.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("compact-product: input {dims:?} does not end in {k}")
        }
        let y = w.product(&x[start..end], self.product);
        let mut out = dims.to_vec();
        *out.last_mut().expect("x has a last dimension") = n;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = Self {
            weight: self.weight.clone(),
            product: self.product.transpose(),
        };
        let g = grad_res.contiguous()?.apply_op1_no_bwd(&op)?;
        Ok(Some(g.reshape(arg.dims())?))
    }
}
