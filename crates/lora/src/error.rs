use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lora: {field}: {reason}")]
    BadConfig { field: String, reason: String },
    #[error("{path}: {field}: {reason}")]
    BadAdapterFile {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{path}: missing {what}")]
    Missing { path: PathBuf, what: &'static str },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl LoraError {
    pub fn bad_config(field: &str, reason: impl Into<String>) -> Self {
        Self::BadConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::BadConfig { .. } => Some("see configs/smollm2-135m-lora.toml for every LoRA key with its meaning".into()),
            Self::Missing { .. } => Some("an adapter directory holds adapter_config.json and adapter_model.safetensors (PEFT layout)".into()),
            Self::BadAdapterFile { .. } => Some("the adapter does not fit this base model, or its files are damaged".into()),
            _ => None,
        }
    }
}
