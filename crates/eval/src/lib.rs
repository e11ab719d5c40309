//! tuna-eval: language-model loss and perplexity, prompts, generation, task metrics, and the
//! prompting-vs-fine-tuning comparison.

pub mod compare;
pub mod error;
pub mod generate;
pub mod loss;
pub mod metrics;
pub mod prompt;
pub mod provenance;
pub mod report;
pub mod score_cache;
pub mod scoring;
pub mod significance;
pub mod strategy;
pub mod study;
pub mod task;

pub use error::EvalError;
pub use generate::{generate, GenerationStats, SamplingOptions, StopReason};
pub use loss::{evaluate_loss, evaluate_loss_with_shots, LossReport};
pub use prompt::PromptSpec;
