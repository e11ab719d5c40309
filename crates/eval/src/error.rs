use tuna_data::DataError;
use tuna_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{field}: {reason}")]
    BadOption { field: &'static str, reason: String },
    #[error("prompt: {reason}")]
    Prompt { reason: String },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{model}: the model has no chat template")]
    NoChatTemplate { model: String },
    #[error("{path}: no example has a target token, so there is nothing to score")]
    NothingToScore { path: String },
    #[error("{path}:{line}: {reason}")]
    BadTaskRecord {
        path: String,
        line: usize,
        reason: String,
    },
    /// An adapter the study loads on its way (extra adapters, learning-curve runs).
    #[error("{path}: {source}")]
    Adapter {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path}: cannot hash for the report's provenance: {reason}")]
    Provenance { path: String, reason: String },
    #[error("{path}: cannot keep a scored strategy: {reason}")]
    ScoreCache { path: String, reason: String },
    #[error("{path}: the test set is empty")]
    EmptyTestSet { path: String },
    #[error("{path}:{line}: the reference {reference:?} is not in the label set ({labels})")]
    LabelNotInSet {
        path: String,
        line: usize,
        reference: String,
        labels: String,
    },
}

impl EvalError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Model(e) => e.hint(),
            Self::Data(e) => e.hint(),
            Self::BadOption { .. } => {
                Some("run the command with --help for the accepted values".into())
            }
            Self::NothingToScore { .. } => {
                Some("each record needs a text of at least two tokens".into())
            }
            Self::BadTaskRecord { .. } => Some(
                "tuna compare scores prompt/completion, instruction/output or messages records whose last turn is the reference answer".into(),
            ),
            Self::LabelNotInSet { .. } => Some(
                "pass every label with --labels, or drop --labels to infer them from the train split".into(),
            ),
            Self::EmptyPrompt => {
                Some("pass --prompt TEXT, --prompt-file FILE, or text on stdin".into())
            }
            Self::NoChatTemplate { .. } => {
                Some("drop --chat to feed the prompt as raw text, or use an instruct model".into())
            }
            _ => None,
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
