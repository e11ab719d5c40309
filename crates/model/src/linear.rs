//! A frozen linear layer, y = x Wᵀ + b, with W in Hugging Face's (out, in) layout.
//! Dense or bf16 weights for training and scoring; f16 or 8-bit copies for fast generation.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

use tuna_lora::LoraAdapter;

use crate::bf16_weight::{Bf16Product, Bf16Weight, Product};
use crate::frozen::FrozenLinear;
use crate::matvec::F16MatVec;

/// How a linear layer holds its weight for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// The load dtype (f32 on the CPU): exact; what training and scoring use.
    #[default]
    Dense,
    /// f16 weights, f32 activations and accumulation (CPU generation).
    F16,
    /// ggml Q8_0 blocks through candle's quantized matmul (activations quantized too).
    Q8_0,
    /// bf16 weights packed for the matrix units (bf16_weight.rs), both products, so training
    /// runs over them too; activations rounded to bf16 in the products.
    Bf16,
}

impl WeightFormat {
    /// The kernel that multiplies by weights held this way on this processor (CPU).
    pub fn kernel(self) -> &'static str {
        match self {
            Self::Dense if has_avx512() => "gemm-f32-avx512",
            Self::Dense => "gemm-f32",
            Self::F16 => "f16-matvec",
            Self::Q8_0 => "candle-q8_0",
            Self::Bf16 => crate::bf16_weight::Bf16Kernel::chosen().name(),
        }
    }
}

/// gemm (candle's f32 matmul) runs its AVX-512 kernels where this holds (the `x86-v4`
/// feature, turned on in Cargo.toml).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Tensor),
    /// (out, in) f16; rows of f32 activations go through `F16MatVec`.
    F16(Tensor),
    /// ggml block-quantized.
    Quantized(QMatMul),
    /// bf16, packed for both products of a frozen linear.
    Bf16(Arc<Bf16Weight>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Tensor>,
    /// A trainable LoRA branch added to the frozen output.
    pub adapter: Option<LoraAdapter>,
    pub in_features: usize,
    pub out_features: usize,
}

/// Up to this many rows go through the f16 mat-vec op; more (a long prompt) are cheaper as
/// one f32 matmul after converting the weight.
const F16_MATVEC_MAX_ROWS: usize = 64;

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        Ok(Self {
            weight: LinearWeight::Dense(weight),
            bias,
            adapter: None,
            in_features,
            out_features,
        })
    }

    /// Converts a dense weight for inference (no backward afterwards). Formats that do not
    /// apply (a GPU tensor, a width not a multiple of the block) keep the dense weight.
    pub fn convert(&mut self, format: WeightFormat) -> Result<()> {
        let LinearWeight::Dense(w) = &self.weight else {
            return Ok(());
        };
        if !w.device().is_cpu() {
            return Ok(());
        }
        match format {
            WeightFormat::Dense => {}
            WeightFormat::F16 => self.weight = LinearWeight::F16(w.to_dtype(DType::F16)?),
            WeightFormat::Q8_0 => {
                if self
                    .in_features
                    .is_multiple_of(GgmlDType::Q8_0.block_size())
                {
                    let q = QTensor::quantize(&w.to_dtype(DType::F32)?, GgmlDType::Q8_0)?;
                    self.weight = LinearWeight::Quantized(QMatMul::from_arc(Arc::new(q))?);
                }
            }
            WeightFormat::Bf16 => {
                let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let packed = Bf16Weight::from_f32(&values, self.out_features, self.in_features);
                self.weight = LinearWeight::Bf16(Arc::new(packed));
            }
        }
        Ok(())
    }

    /// The dense weight (converted back when held in another format).
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => Ok(w.clone()),
            LinearWeight::F16(w) => w.to_dtype(DType::F32),
            LinearWeight::Quantized(QMatMul::QTensor(q)) => q.dequantize(&q.device()),
            LinearWeight::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => Ok(w.clone()),
            LinearWeight::Bf16(w) => Tensor::from_vec(
                w.to_f32(),
                (self.out_features, self.in_features),
                &candle_core::Device::Cpu,
            ),
        }
    }

    /// x (..., in) -> (..., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / self.in_features;
        let y = match &self.weight {
            LinearWeight::Dense(w) => self.dense_forward(x, w)?,
            LinearWeight::F16(w) if rows <= F16_MATVEC_MAX_ROWS && x.dtype() == DType::F32 => {
                x.contiguous()?.apply_op2_no_bwd(w, &F16MatVec)?
            }
            LinearWeight::F16(w) => self.dense_forward(x, &w.to_dtype(x.dtype())?)?,
            LinearWeight::Quantized(q) => q.forward(x)?,
            LinearWeight::Bf16(w) => self.bf16_product(x, w, Product::XWt)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match &self.adapter {
            Some(a) => y + a.forward(x)?,
            None => Ok(y),
        }
    }

    /// Folds the adapter into a dense weight: W + scale · B A, summed in f64 so that the
    /// merged model stays as close to base + adapter as its dtype allows.
    pub fn merge_adapter(&mut self) -> Result<()> {
        if let Some(a) = self.adapter.take() {
            let w = self.dense_weight()?;
            let delta =
                (a.b.as_tensor()
                    .to_dtype(DType::F64)?
                    .matmul(&a.a.as_tensor().to_dtype(DType::F64)?)?
                    * a.scale)?;
            let merged = (w.to_dtype(DType::F64)? + delta)?.to_dtype(w.dtype())?;
            self.weight = LinearWeight::Dense(merged);
        }
        Ok(())
    }

    /// x Wᵀ (.., i) -> (.., o) without bias or adapter, whatever form W is held in; the
    /// forward product of a frozen linear in training.
    pub fn frozen_forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => x.matmul(&w.t()?),
            LinearWeight::Bf16(w) => self.bf16_product(x, w, Product::XWt),
            _ => candle_core::bail!("training needs dense or bf16 projection weights"),
        }
    }

    /// dy W (.., o) -> (.., i): the input gradient of a frozen linear.
    pub fn frozen_backward(&self, dy: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => dy.matmul(w),
            LinearWeight::Bf16(w) => self.bf16_product(dy, w, Product::DyW),
            _ => candle_core::bail!("training needs dense or bf16 projection weights"),
        }
    }

    /// Whether training can run through this layer's weight.
    pub fn trainable_through(&self) -> bool {
        matches!(self.weight, LinearWeight::Dense(_) | LinearWeight::Bf16(_))
    }

    fn bf16_product(&self, x: &Tensor, w: &Arc<Bf16Weight>, product: Product) -> Result<Tensor> {
        let op = Bf16Product {
            weight: w.clone(),
            product,
        };
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        if x.track_op() {
            x.apply_op1(op)
        } else {
            x.apply_op1_no_bwd(&op)
        }
    }

    fn dense_forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        // Training through a frozen CPU weight: gradient to x only (see frozen.rs).
        if x.track_op()
            && !w.track_op()
            && w.device().is_cpu()
            && w.dtype() == DType::F32
            && x.dtype() == DType::F32
        {
            return x
                .contiguous()?
                .apply_op1(FrozenLinear { weight: w.clone() });
        }
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        // (.., in) -> (rows, in) @ (in, out) -> (.., out)
        let y = x.reshape((rows, self.in_features))?.matmul(&w.t()?)?;
        let mut out_dims = dims;
        *out_dims
            .last_mut()
            .expect("a tensor with at least one dimension") = self.out_features;
        y.reshape(out_dims)
    }
}
