//! Errors of model loading and running. Every variant names the file, field or tensor it is
//! about; `hint()` says what the user can do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model not found: {spec}{nearby}")]
    NotFound { spec: String, nearby: String },
    #[error("adapter not found: {spec}{nearby}")]
    AdapterNotFound { spec: String, nearby: String },
    #[error("{path}: not a model file or directory: {reason}")]
    UnknownSource { path: PathBuf, reason: String },
    #[error("{path}: missing {what}")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("{path}: field `{field}`: {reason}")]
    BadConfig {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{path}: architecture `{arch}` is not supported (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: &'static str,
    },
    #[error("{path}: invalid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path}: invalid safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}`: {reason}")]
    BadTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: tokenizer: {reason}")]
    BadTokenizer { path: PathBuf, reason: String },
    #[error("{path}: exists and is not empty; pass --force to replace it")]
    ExportTargetExists { path: PathBuf },
    #[error("{path}: {reason}")]
    BadExportTarget { path: PathBuf, reason: String },
    #[error("chat template: {reason}")]
    ChatTemplate { reason: String },
    /// A template that does not load, with the model it came with.
    #[error("{path}: chat template: {reason}")]
    BadChatTemplate { path: PathBuf, reason: String },
    #[error("{} {spec} is not in the local Hugging Face cache ({cache}) and the hub is offline", .item.noun())]
    HubOffline {
        item: HubItem,
        spec: String,
        cache: PathBuf,
    },
    #[error("hub download of {} {spec} failed: {reason}", .item.noun())]
    Hub {
        item: HubItem,
        spec: String,
        reason: String,
    },
    #[error("device `{device}`: {reason}")]
    Device { device: String, reason: String },
    #[error(transparent)]
    Lora(#[from] tuna_lora::LoraError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// What a hub id names, so that errors name the flag the user typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubItem {
    Model,
    Adapter,
}

impl HubItem {
    pub fn noun(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Adapter => "adapter",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            Self::Model => "--model",
            Self::Adapter => "--adapter",
        }
    }
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn bad_config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::BadConfig {
            path: path.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NotFound { .. } => Some(
                "--model takes a .gguf file, a Hugging Face model directory (config.json + \
                 *.safetensors) or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct; \
                 scripts/fetch-model.sh fetches the default model into models/"
                    .into(),
            ),
            Self::UnknownSource { .. } => Some(
                "a model directory needs config.json and model.safetensors (or \
                 model.safetensors.index.json with its shards); a file must end in .gguf"
                    .into(),
            ),
            Self::MissingFile { .. } => Some(
                "copy the missing file from the model's Hugging Face repository".into(),
            ),
            Self::UnsupportedArchitecture { .. } => Some(
                "tuna trains Llama-family decoders: Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2/2.5"
                    .into(),
            ),
            Self::BadGguf { .. } | Self::BadSafetensors { .. } => Some(
                "the file may be truncated or corrupt: download it again (scripts/fetch-model.sh checks the sha256 of the default model)"
                    .into(),
            ),
            Self::AdapterNotFound { .. } => Some(
                "--adapter takes a run directory of `tuna train` (its adapter/ is used), an \
                 adapter directory (adapter_config.json + adapter_model.safetensors, PEFT \
                 layout) or a hub id such as owner/name"
                    .into(),
            ),
            Self::HubOffline { item, .. } => Some(format!(
                "unset HF_HUB_OFFLINE to download it, or pass a local path to {}",
                item.flag()
            )),
            Self::Hub { item, .. } => Some(format!(
                "check the network and the {} id, or pass a local path to {}; set HF_HUB_OFFLINE=1 to use only the cache",
                item.noun(),
                item.flag()
            )),
            Self::BadConfig { .. } => Some(
                "the model's config (config.json or GGUF metadata) is inconsistent: fix that field or download the model again"
                    .into(),
            ),
            Self::BadTensor { .. } => Some(
                "the weights do not match the model's config: check that config.json and the weight files come from the same model"
                    .into(),
            ),
            Self::BadTokenizer { .. } => Some(
                "the tokenizer files may be missing, corrupt or of a kind tuna does not read; a Hugging Face model directory's tokenizer.json always works"
                    .into(),
            ),
            Self::ChatTemplate { .. } | Self::BadChatTemplate { .. } => Some(
                "the model's chat template (tokenizer_config.json or GGUF tokenizer.chat_template) failed; drop --chat to feed raw text"
                    .into(),
            ),
            Self::Device { .. } => Some(
                "build with --features cuda (or metal) for a GPU, or pass --device cpu".into(),
            ),
            Self::Lora(e) => e.hint(),
            _ => None,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
