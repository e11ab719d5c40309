//! Flags shared by every command that loads a model.

use clap::{Args, ValueEnum};
use tuna_model::device::{auto_device, parse_device, parse_dtype};
use tuna_model::{LoadOptions, ModelText, Pretrained, WeightFormat};

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
    /// Weight dtype: f32, bf16 or f16 (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// A LoRA adapter in PEFT layout (a directory or a hub id, owner/name[@revision]), or a
    /// run directory of tuna train (its adapter/).
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
}

/// The adapter directory `path` names: itself, or a run directory's adapter/.
pub fn adapter_dir(path: &std::path::Path) -> std::path::PathBuf {
    let in_run = path.join("adapter");
    if !path.join(tuna_lora::peft::CONFIG_FILE).is_file()
        && in_run.join(tuna_lora::peft::CONFIG_FILE).is_file()
    {
        in_run
    } else {
        path.to_path_buf()
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

/// How the projections are held for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InferenceWeights {
    /// The load dtype (f32 on the CPU): exact, what training and scoring use.
    Dense,
    /// f16 weights with f32 activations: half the memory traffic per token.
    F16,
    /// ggml Q8_0 blocks (activations quantized too): fastest, least exact.
    Q8_0,
    /// bf16 weights through the processor's matrix units (AMX) where it has them, activations
    /// rounded to bf16 in the products (as under PyTorch's bf16 autocast); half of f32's
    /// memory; trains too.
    Bf16,
}

impl InferenceWeights {
    pub fn format(self) -> WeightFormat {
        match self {
            Self::Dense => WeightFormat::Dense,
            Self::F16 => WeightFormat::F16,
            Self::Q8_0 => WeightFormat::Q8_0,
            Self::Bf16 => WeightFormat::Bf16,
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
            dtype: self.dtype.as_deref().map(parse_dtype).transpose()?,
            weights,
        };
        let mut model = Pretrained::load(&self.model, &options)?;
        if let Some(path) = &self.adapter {
            let path = tuna_model::source::resolve_adapter(path)?;
            let loaded = tuna_lora::peft::load(&adapter_dir(&path))?;
            model.model.load_lora(&loaded)?;
        }
        Ok(model)
    }
}
