//! tuna-eval: language-model loss and perplexity, prompts, and generation.

pub mod error;
pub mod generate;
pub mod loss;
pub mod prompt;

pub use error::EvalError;
pub use generate::{generate, GenerationStats, SamplingOptions, StopReason};
pub use loss::{evaluate_loss, LossReport};
pub use prompt::PromptSpec;
