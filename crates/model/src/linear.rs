//! A frozen linear layer, y = x Wᵀ + b, with W in Hugging Face's (out, in) layout.
//! The frozen weight in any of the forms `WeightFormat` names: f32, f16 (generation only),
//! bf16, ggml blocks quantized at load, or the GGUF file's own blocks.

use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Result, Tensor};

use tuna_lora::LoraAdapter;

use crate::backprop::kernels::view;
use crate::bf16_weight::Bf16Weight;
use crate::compact::{CompactProduct, CompactWeight, Product};
use crate::dense;
use crate::frozen::FrozenLinear;
use crate::matvec::MatVec;
use crate::quant_weight::{self, QuantWeight};

/// How a linear layer holds its frozen weight. Every form but `F16` trains (both products of
/// a frozen linear); LoRA weights, norms, softmax and the loss stay f32 whatever the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// The load dtype (f32 on the CPU): exact.
    #[default]
    #[serde(rename = "f32", alias = "dense")]
    Dense,
    /// f16 weights, f32 activations and accumulation (CPU generation only).
    F16,
    /// bf16 weights packed for the matrix units (bf16_weight.rs); activations rounded to bf16
    /// in the products.
    Bf16,
    /// ggml Q8_0 blocks quantized at load (quant_weight.rs).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// ggml Q4_K blocks quantized at load; rows that are not whole 256-value blocks fall back
    /// to Q5_0, as llama-quantize does.
    #[serde(rename = "q4_k")]
    Q4K,
    /// The GGUF file's own blocks as loaded (Q4_1 for the default model), never expanded;
    /// other sources load dense.
    File,
}

impl WeightFormat {
    /// The kernel that multiplies by weights held this way on this processor (CPU), for
    /// batches of rows (training, scoring).
    pub fn kernel(self) -> &'static str {
        use crate::bf16_weight::Bf16Kernel;
        match self {
            Self::Dense if has_avx512() => "gemm-f32-avx512",
            Self::Dense => "gemm-f32",
            Self::F16 => "f16-matvec",
            Self::Bf16 => match Bf16Kernel::chosen() {
                Bf16Kernel::Portable if has_avx512() => "bf16-decoded+gemm-f32-avx512",
                Bf16Kernel::Portable => "bf16-decoded+gemm-f32",
                k if k.prefers_f32(usize::MAX) => {
                    "bf16-decoded+gemm-f32-avx512 (avx512-bf16 under 320 rows)"
                }
                k => k.name(),
            },
            Self::Q8_0 | Self::Q4K | Self::File => match Bf16Kernel::chosen() {
                Bf16Kernel::Amx => "blocks-decoded+amx-bf16",
                Bf16Kernel::Portable if has_avx512() => "blocks-decoded+gemm-f32-avx512",
                Bf16Kernel::Portable => "blocks-decoded+gemm-f32",
                k if k.prefers_f32(usize::MAX) => {
                    "blocks-decoded+gemm-f32-avx512 (avx512-bf16 under 320 rows)"
                }
                _ => "blocks-decoded+avx512-bf16",
            },
        }
    }

    /// The ggml block type a dense weight of `in_features` columns is quantized to.
    fn block_type(self, in_features: usize) -> Option<GgmlDType> {
        let want = match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K if quant_weight::fits(GgmlDType::Q4K, in_features) => GgmlDType::Q4K,
            Self::Q4K => GgmlDType::Q5_0,
            _ => return None,
        };
        quant_weight::fits(want, in_features).then_some(want)
    }
}

/// Whether `w` is a contiguous f32 CPU tensor, which `dense::rows` multiplies in place.
fn dense_f32_cpu(w: &Tensor) -> bool {
    w.dtype() == DType::F32 && w.device().is_cpu() && w.is_contiguous()
}

/// gemm (candle's f32 matmul) runs its AVX-512 kernels where this holds (the `x86-v4`
/// feature, turned on in Cargo.toml).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn has_avx512() -> bool {
    false
}

#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Tensor),
    /// (out, in) f16; rows of f32 activations go through `MatVec`.
    F16(Tensor),
    /// bf16, packed for both products of a frozen linear.
    Bf16(Arc<Bf16Weight>),
    /// ggml blocks, both products.
    Quant(Arc<QuantWeight>),
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

/// Up to this many rows (generation, one token per prompt) multiply a dense f32 weight
/// through `MatVec`, which reads each weight row once, instead of gemm, which packs the
/// whole weight for every call.
const F32_MATVEC_MAX_ROWS: usize = 16;

impl Linear {
    /// A layer over weight blocks as loaded (`WeightFormat::File`).
    pub fn from_quant(weight: QuantWeight, bias: Option<Tensor>) -> Self {
        Self {
            in_features: weight.in_features,
            out_features: weight.out_features,
            weight: LinearWeight::Quant(Arc::new(weight)),
            bias,
            adapter: None,
        }
    }

    /// Lets the few-row products of a weight held as blocks run on the int8 kernels, which
    /// round the activations to 8 bits (int8_rows.rs); other weights are left as they are.
    pub fn allow_int8_products(&mut self) {
        if let LinearWeight::Quant(w) = &mut self.weight {
            // Unique at load, the only time this is called; a shared weight stays as it is.
            if let Some(w) = Arc::get_mut(w) {
                w.allow_int8_products();
            }
        }
    }

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
            WeightFormat::Q8_0 | WeightFormat::Q4K => {
                if let Some(dtype) = format.block_type(self.in_features) {
                    self.weight = LinearWeight::Quant(Arc::new(QuantWeight::quantize(w, dtype)?));
                }
            }
            // The file's blocks are taken at load (Llama::load); a dense weight stays dense.
            WeightFormat::File => {}
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
            LinearWeight::Bf16(w) => Tensor::from_vec(
                w.to_f32(),
                (self.out_features, self.in_features),
                &candle_core::Device::Cpu,
            ),
            LinearWeight::Quant(w) => Tensor::from_vec(
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
            LinearWeight::Dense(w)
                if rows <= F32_MATVEC_MAX_ROWS
                    && !x.track_op()
                    && x.dtype() == DType::F32
                    && w.dtype() == DType::F32
                    && w.device().is_cpu()
                    && w.is_contiguous() =>
            {
                x.contiguous()?.apply_op2_no_bwd(w, &MatVec)?
            }
            LinearWeight::Dense(w) => self.dense_forward(x, w)?,
            LinearWeight::F16(w) if rows <= F16_MATVEC_MAX_ROWS && x.dtype() == DType::F32 => {
                x.contiguous()?.apply_op2_no_bwd(w, &MatVec)?
            }
            LinearWeight::F16(w) => self.dense_forward(x, &w.to_dtype(x.dtype())?)?,
            LinearWeight::Bf16(w) => compact_product(x, w.clone(), Product::XWt)?,
            LinearWeight::Quant(w) => compact_product(x, w.clone(), Product::XWt)?,
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
            LinearWeight::Bf16(w) => compact_product(x, w.clone(), Product::XWt),
            LinearWeight::Quant(w) => compact_product(x, w.clone(), Product::XWt),
            LinearWeight::F16(_) => candle_core::bail!("training cannot run through f16 weights"),
        }
    }

    /// dy W (.., o) -> (.., i): the input gradient of a frozen linear.
    pub fn frozen_backward(&self, dy: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => dy.matmul(w),
            LinearWeight::Bf16(w) => compact_product(dy, w.clone(), Product::DyW),
            LinearWeight::Quant(w) => compact_product(dy, w.clone(), Product::DyW),
            LinearWeight::F16(_) => candle_core::bail!("training cannot run through f16 weights"),
        }
    }

    /// The frozen product over rows of f32 activations as a plain vector, for the
    /// hand-written training pass (which then adds its LoRA branch in place): x (n, i) -> x Wᵀ
    /// (n, o) for `Product::XWt`, dy (n, o) -> dy W (n, i) for `Product::DyW`. No bias.
    pub fn frozen_rows(&self, x: &Tensor, product: Product) -> Result<Vec<f32>> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        match &self.weight {
            LinearWeight::Bf16(w) => Ok(CompactWeight::product(w.as_ref(), &view(&x)?, product)),
            LinearWeight::Quant(w) => Ok(CompactWeight::product(w.as_ref(), &view(&x)?, product)),
            LinearWeight::Dense(w) if dense_f32_cpu(w) => {
                let (o, i) = (self.out_features, self.in_features);
                Ok(dense::rows(&view(&x)?, &view(w)?, (o, i), product))
            }
            _ => {
                let y = match product {
                    Product::XWt => self.frozen_forward(&x)?,
                    Product::DyW => self.frozen_backward(&x)?,
                };
                y.flatten_all()?.to_vec1::<f32>()
            }
        }
    }

    /// Whether training can run through this layer's weight.
    pub fn trainable_through(&self) -> bool {
        !matches!(self.weight, LinearWeight::F16(_))
    }

    /// Whether the frozen weight is held compact (bf16 or blocks), not as a dense tensor.
    pub fn holds_compact_weight(&self) -> bool {
        matches!(self.weight, LinearWeight::Bf16(_) | LinearWeight::Quant(_))
    }

    /// Bytes the frozen weight takes as held.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) | LinearWeight::F16(w) => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
            LinearWeight::Bf16(_) => {
                self.out_features.next_multiple_of(32) * self.in_features.next_multiple_of(32) * 2
            }
            LinearWeight::Quant(w) => w.storage_bytes(),
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

/// `x` (.., K) times a compact weight, differentiable to x when x tracks gradients.
fn compact_product(x: &Tensor, weight: Arc<dyn CompactWeight>, product: Product) -> Result<Tensor> {
    let op = CompactProduct { weight, product };
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    if x.track_op() {
        x.apply_op1(op)
    } else {
        x.apply_op1_no_bwd(&op)
    }
}
