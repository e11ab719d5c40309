//! A frozen linear layer, y = x Wᵀ + b, with W in Hugging Face's (out, in) layout.
//! Dense weights for training and scoring; optionally quantized for fast generation.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Tensor),
    /// ggml block-quantized, for inference only (no backward).
    Quantized(QMatMul),
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Tensor>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        Ok(Self {
            weight: LinearWeight::Dense(weight),
            bias,
            in_features,
            out_features,
        })
    }

    /// Replaces a dense f32 weight by its ggml quantization (generation only).
    pub fn quantize(&mut self, dtype: GgmlDType) -> Result<()> {
        if let LinearWeight::Dense(w) = &self.weight {
            if self.in_features.is_multiple_of(dtype.block_size()) {
                let q = QTensor::quantize(&w.to_dtype(candle_core::DType::F32)?, dtype)?;
                self.weight = LinearWeight::Quantized(QMatMul::from_arc(Arc::new(q))?);
            }
        }
        Ok(())
    }

    /// The dense weight (dequantized when quantized).
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => Ok(w.clone()),
            LinearWeight::Quantized(QMatMul::QTensor(q)) => q.dequantize(&q.device()),
            LinearWeight::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => Ok(w.clone()),
        }
    }

    /// x (..., in) -> (..., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => {
                let dims = x.dims().to_vec();
                let rows: usize = dims[..dims.len() - 1].iter().product();
                // (.., in) -> (rows, in) @ (in, out) -> (.., out)
                let y = x.reshape((rows, self.in_features))?.matmul(&w.t()?)?;
                let mut out_dims = dims;
                *out_dims
                    .last_mut()
                    .expect("a tensor with at least one dimension") = self.out_features;
                y.reshape(out_dims)?
            }
            LinearWeight::Quantized(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
