//! Flags shared by every command that loads a model.

use clap::{Args, ValueEnum};
use tuna_model::device::{auto_device, parse_device};
use tuna_model::{LoadOptions, ModelText, Pretrained, WeightFormat};
use tuna_train::run_dir::LocatedAdapter;

/// The default model, as scripts/fetch-model.sh lays it out.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face model directory, or a hub id (owner/name[@revision]).
    #[arg(long, env = "TUNA_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// cpu, cuda, cuda:N, metal, or auto (the GPU this binary was built for, when present).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Weight dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// A LoRA adapter in PEFT layout (a directory or a hub id, owner/name[@revision]), or a
    /// run directory of tuna train (its adapter/).
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
}

/// The values of --dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    #[value(alias = "float32")]
    F32,
    #[value(alias = "bfloat16")]
    Bf16,
    #[value(alias = "float16")]
    F16,
}

impl DtypeArg {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
            Self::F16 => candle_core::DType::F16,
        }
    }
}

/// `--device`, saying on stderr when `auto` falls back to the CPU in a GPU build.
pub fn resolve_device(spec: &str) -> anyhow::Result<candle_core::Device> {
    if spec == "auto" {
        let (device, note) = auto_device();
        if let Some(note) = note {
            eprintln!("{note}");
        }
        return Ok(device);
    }
    Ok(parse_device(spec)?)
}

/// How the frozen projection weights are held (`--weights`). Measured costs in accuracy
/// and speed are in BENCHMARKS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InferenceWeights {
    /// f32 (4 bytes a parameter): exact; what every other form is measured against.
    #[value(name = "f32", alias = "dense")]
    Dense,
    /// f16 weights, f32 activations: half the memory traffic per token; generation only.
    F16,
    /// bf16 (2 bytes), multiplied on AMX tiles or with AVX512-BF16 where the processor has
    /// them, activations rounded to bf16 in the products as under PyTorch's bf16 autocast
    /// (text-sample loss within 0.1% of f32); trains, about 1.5x the f32 speed on AMX and
    /// Zen 4. Where bf16 instructions are slower than f32 ones (an Intel Xeon without AMX)
    /// or absent, batches of 320 rows and more multiply the weight decoded to f32, with f32
    /// activations, at about the f32 speed.
    Bf16,
    /// ggml Q8_0 blocks quantized at load (1.06 bytes; text-sample loss within 0.2% of f32);
    /// trains. Up to 16 rows at a time (generation) multiply in f32; bigger batches multiply
    /// the decoded blocks as bf16 (AMX, AVX512-BF16) or f32 (as for bf16).
    #[value(name = "q8_0", alias = "q8-0")]
    Q8_0,
    /// ggml Q4_K blocks quantized at load (0.56 bytes; Q5_0 for rows not a multiple of 256,
    /// as llama-quantize does); the largest accuracy cost (text-sample loss +3.5%); trains
    /// (QLoRA).
    #[value(name = "q4_k", alias = "q4-k")]
    Q4K,
    /// The GGUF file's own blocks as loaded, never expanded (a model takes its file's size;
    /// for the default model its f32 form is these same blocks decoded, so generation is
    /// exact up to summation order; bigger batches multiply them as bf16 where the
    /// processor has AMX or AVX512-BF16);
    /// trains (QLoRA over the file). Other sources load as f32.
    File,
}

impl InferenceWeights {
    /// Generation's default, chosen by measurement (BENCHMARKS.md): a GGUF model keeps its
    /// file's blocks (batch-1 products in f32 over the decoded blocks: the f32 model's
    /// tokens, the fastest form), any other source f16 (half of f32's memory traffic).
    pub fn for_generation(chosen: Option<Self>, model: &str) -> Self {
        chosen.unwrap_or(if model.to_ascii_lowercase().ends_with(".gguf") {
            Self::File
        } else {
            Self::F16
        })
    }

    /// compare's default for scoring, chosen by measurement (BENCHMARKS.md): bf16 where the
    /// processor multiplies bf16 in hardware (AMX, AVX512-BF16; on Zen 4 the label-ranked
    /// passes ran 2x faster with the same zero-shot accuracy and one tuned row of 200
    /// different), else f32.
    pub fn for_scoring(chosen: Option<Self>) -> Self {
        use tuna_model::bf16_weight::Bf16Kernel;
        chosen.unwrap_or(if Bf16Kernel::chosen() == Bf16Kernel::Portable {
            Self::Dense
        } else {
            Self::Bf16
        })
    }

    /// The value's name as the command line spells it.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    pub fn format(self) -> WeightFormat {
        match self {
            Self::Dense => WeightFormat::Dense,
            Self::F16 => WeightFormat::F16,
            Self::Bf16 => WeightFormat::Bf16,
            Self::Q8_0 => WeightFormat::Q8_0,
            Self::Q4K => WeightFormat::Q4K,
            Self::File => WeightFormat::File,
        }
    }
}

impl ModelArgs {
    /// Config, tokenizer and chat template only (no weights).
    pub fn load_text(&self) -> anyhow::Result<ModelText> {
        Ok(ModelText::load(&self.model)?)
    }

    pub fn load(&self, weights: InferenceWeights) -> anyhow::Result<Pretrained> {
        self.load_as(weights.format())
    }

    pub fn load_as(&self, weights: WeightFormat) -> anyhow::Result<Pretrained> {
        let options = LoadOptions {
            device: resolve_device(&self.device)?,
            dtype: self.dtype.map(DtypeArg::dtype),
            weights,
        };
        let mut model = Pretrained::load(&self.model, &options)?;
        if let Some(located) = self.locate_adapter()? {
            let loaded = tuna_lora::peft::load(&located.dir)?;
            model.model.load_lora(&loaded)?;
        }
        Ok(model)
    }

    /// What --adapter names (tuna_train::run_dir::locate_adapter decides, for every command).
    pub fn locate_adapter(&self) -> anyhow::Result<Option<LocatedAdapter>> {
        Ok(self
            .adapter
            .as_deref()
            .map(tuna_train::run_dir::locate_adapter)
            .transpose()?)
    }
}
