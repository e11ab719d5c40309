use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}: {field}: {reason}")]
    BadConfig {
        source_name: String,
        field: String,
        reason: String,
    },
    #[error("{path}: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error("{path}: the run directory already holds a run (use --resume {path} to continue it, or another --output)")]
    RunExists { path: PathBuf },
    #[error(
        "step {step}: the loss is {value}; training stopped ({})",
        match last_checkpoint {
            Some(p) => format!("the last good checkpoint, {}, is kept", p.display()),
            None => "no checkpoint had been written yet".to_string(),
        }
    )]
    NonFiniteLoss {
        step: usize,
        value: f64,
        last_checkpoint: Option<PathBuf>,
    },
    #[error("interrupted after step {step}; a checkpoint was written")]
    Interrupted { step: usize, run: PathBuf },
    #[error("data-parallel training: {reason}")]
    Distributed { reason: String },
    #[error("{split}: no example with a target token{detail}")]
    NoTrainingData { split: String, detail: String },
    #[error(transparent)]
    Model(#[from] tuna_model::ModelError),
    #[error(transparent)]
    Lora(#[from] tuna_lora::LoraError),
    #[error(transparent)]
    Data(#[from] tuna_data::DataError),
    #[error(transparent)]
    Eval(#[from] tuna_eval::EvalError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub fn bad_config(source_name: &str, field: &str, reason: impl Into<String>) -> Self {
        Self::BadConfig {
            source_name: source_name.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::BadConfig { .. } => Some("configs/smollm2-135m-lora.toml lists every key with its meaning; --print-config shows the resolved config".into()),
            Self::NonFiniteLoss { .. } => Some("lower --lr, or keep --max-grad-norm on (default 1.0)".into()),
            Self::Interrupted { run, .. } => Some(format!("continue with: tuna train --resume {}", run.display())),
            Self::NoTrainingData { .. } => Some("tuna data validate FILE shows what each record trains on".into()),
            Self::Model(e) => e.hint(),
            Self::Lora(e) => e.hint(),
            Self::Data(e) => e.hint(),
            _ => None,
        }
    }
}
