//! Reading a finished (or interrupted) run directory back: the resolved config, the newest
//! trainer state, and the training-set size from metrics.jsonl — what `tuna compare` puts in
//! its cost columns and how it words the tuned model's prompts.

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::error::TrainError;

#[derive(Debug, Clone)]
pub struct RunInfo {
    pub dir: PathBuf,
    pub config: TrainConfig,
    /// The newest checkpoint's state (steps, wall and CPU time).
    pub state: Option<TrainerState>,
    /// Training examples, from the run's `started` event.
    pub train_examples: Option<usize>,
}

/// The run directory an adapter path belongs to: the path itself when it holds config.toml,
/// or its parent (for runs/NAME/adapter, runs/NAME/best, runs/NAME/checkpoint-N).
pub fn run_dir_of(adapter_path: &Path) -> Option<PathBuf> {
    [Some(adapter_path), adapter_path.parent()]
        .into_iter()
        .flatten()
        .find(|d| d.join("config.toml").is_file())
        .map(Path::to_path_buf)
}

pub fn read(dir: &Path) -> Result<RunInfo, TrainError> {
    let config = TrainConfig::from_toml_file(&dir.join("config.toml"))?;
    let state = match checkpoint::list(dir).pop() {
        Some((_, newest)) => Some(checkpoint::read_state(&newest)?),
        None => None,
    };
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let train_examples = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "started")
        .filter_map(|v| v["train_examples"].as_u64())
        .next_back()
        .map(|n| n as usize);
    Ok(RunInfo {
        dir: dir.to_path_buf(),
        config,
        state,
        train_examples,
    })
}
