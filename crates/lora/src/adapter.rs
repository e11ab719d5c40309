//! One LoRA adapter on a frozen linear layer: y += scale · dropout(x) Aᵀ Bᵀ, with A (r, in)
//! and B (out, r) as PEFT stores them.
//!
//! n rows, i in features, o out features, r rank.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::Rng;

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// (r, i)
    pub a: Var,
    /// (o, r)
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
    /// Training: gradients flow to A and B, and dropout applies. Otherwise A and B are used
    /// detached, so inference builds no autograd graph (which would keep every intermediate
    /// of the forward alive: 13 GiB on a 4096-token scoring batch of SmolLM2).
    pub training: bool,
}

impl LoraAdapter {
    /// PEFT's default init: A Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(i), 1/sqrt(i));
    /// B zero, so a new adapter leaves the model unchanged.
    pub fn init(
        in_features: usize,
        out_features: usize,
        r: usize,
        scale: f64,
        dropout: f64,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f32).sqrt();
        let a: Vec<f32> = (0..r * in_features)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_vec(a, (r, in_features), device)?;
        let b = Tensor::zeros((out_features, r), DType::F32, device)?;
        Self::from_tensors(&a, &b, scale, dropout)
    }

    pub fn from_tensors(a: &Tensor, b: &Tensor, scale: f64, dropout: f64) -> Result<Self> {
        Ok(Self {
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale,
            dropout,
            training: false,
        })
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// The adapter branch: x (.., i) -> (.., o), in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let i = *dims.last().expect("x has a last dimension");
        let rows = x.elem_count() / i;
        let mut h = x.reshape((rows, i))?.to_dtype(DType::F32)?;
        if self.training && self.dropout > 0.0 {
            h = candle_nn::ops::dropout(&h, self.dropout as f32)?;
        }
        let (a, b) = if self.training {
            (self.a.as_tensor().clone(), self.b.as_tensor().clone())
        } else {
            (self.a.as_tensor().detach(), self.b.as_tensor().detach())
        };
        // (n, i) @ (i, r) -> (n, r) @ (r, o) -> (n, o)
        let y = (h.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?;
        let mut out = dims;
        *out.last_mut().expect("x has a last dimension") = self.b.dims()[0];
        y.reshape(out)?.to_dtype(x.dtype())
    }
}
