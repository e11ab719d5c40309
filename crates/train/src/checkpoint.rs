//! Checkpoints: `checkpoint-<step>/` with the adapter (PEFT layout), optimizer moments and
//! trainer state, written under a temp name, fsynced, then renamed, so a killed write leaves
//! the previous checkpoints intact and never a half-written one under a real name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tuna_lora::peft;

use crate::error::TrainError;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    /// Where the data stream continues: epoch and micro-batch within it.
    pub epoch: u64,
    pub batch_in_epoch: usize,
    /// The eval loss at the best evaluation (by `train.eval_metric`), and the task metric
    /// there when one is the judge.
    pub best_eval_loss: Option<f64>,
    #[serde(default)]
    pub best_eval_metric: Option<f64>,
    pub best_step: Option<usize>,
    pub evals_since_best: usize,
    pub tokens_seen: usize,
    /// Wall time spent training so far (summed over resumed parts).
    pub train_seconds: f64,
    /// CPU time of the training process over the same span (all threads), where the
    /// platform reports it.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// Training examples (after the valid split and any subset): what a reader of the run
    /// reports as the data it took. None in runs written before it was recorded.
    #[serde(default)]
    pub train_examples: Option<usize>,
    /// The losses and learning rates so far, for the chart.
    #[serde(default)]
    pub history: crate::chart::History,
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `run_dir/checkpoint-<step>/`: adapter files, optimizer.safetensors, trainer_state.json.
pub fn write(
    run_dir: &Path,
    adapter: impl FnOnce(&Path) -> Result<(), TrainError>,
    optimizer: &HashMap<String, Tensor>,
    state: &TrainerState,
) -> Result<PathBuf, TrainError> {
    let final_dir = run_dir.join(format!("checkpoint-{}", state.step));
    let tmp = run_dir.join(format!(".checkpoint-{}.partial", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
    adapter(&tmp)?;
    let opt_path = tmp.join(OPTIMIZER_FILE);
    candle_core::safetensors::save(optimizer, &opt_path)?;
    std::fs::File::open(&opt_path)
        .and_then(|f| f.sync_all())
        .map_err(TrainError::io(&opt_path))?;
    let json = serde_json::to_string_pretty(state).expect("state serializes");
    peft::write_atomic(&tmp.join(STATE_FILE), json.as_bytes())?;
    sync_dir(&tmp);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(TrainError::io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(TrainError::io(&final_dir))?;
    sync_dir(run_dir);
    Ok(final_dir)
}

/// Checkpoints in `run_dir`, oldest first: (step, path). Temp directories are not checkpoints.
pub fn list(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Removes all but the newest `keep_last` checkpoints.
pub fn prune(run_dir: &Path, keep_last: usize) -> Result<(), TrainError> {
    let all = list(run_dir);
    for (_, path) in all.iter().take(all.len().saturating_sub(keep_last)) {
        std::fs::remove_dir_all(path).map_err(TrainError::io(path))?;
    }
    Ok(())
}

/// Copies the adapter files of `checkpoint` to `dest` (e.g. best/), replacing it atomically.
pub fn publish_adapter(checkpoint: &Path, dest: &Path) -> Result<(), TrainError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
    for file in [peft::CONFIG_FILE, peft::WEIGHTS_FILE] {
        let from = checkpoint.join(file);
        std::fs::copy(&from, tmp.join(file)).map_err(TrainError::io(&from))?;
    }
    sync_dir(&tmp);
    let old = parent.join(format!(".{name}.old"));
    if dest.exists() {
        std::fs::rename(dest, &old).map_err(TrainError::io(dest))?;
    }
    std::fs::rename(&tmp, dest).map_err(TrainError::io(dest))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(TrainError::io(&old))?;
    }
    Ok(())
}

/// Reads a checkpoint's trainer state.
pub fn read_state(checkpoint: &Path) -> Result<TrainerState, TrainError> {
    let state_path = checkpoint.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(TrainError::io(&state_path))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| TrainError::BadCheckpoint {
            path: state_path.clone(),
            reason: e.to_string(),
        })?;
    check_state(&state, checkpoint).map_err(|reason| TrainError::BadCheckpoint {
        path: state_path,
        reason: format!("{reason}; the file was edited or is corrupt, and resuming from it would not continue the run that wrote it"),
    })?;
    Ok(state)
}

/// The facts a state must agree on: its step is the one its directory is named after, no
/// later than the run's last step, and its best step is one already done.
fn check_state(state: &TrainerState, checkpoint: &Path) -> Result<(), String> {
    let named = checkpoint
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("checkpoint-"))
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(named) = named {
        if state.step != named {
            return Err(format!(
                "step is {}, but this is checkpoint-{named}",
                state.step
            ));
        }
    }
    if state.step > state.total_steps {
        return Err(format!(
            "step {} is past total_steps {}",
            state.step, state.total_steps
        ));
    }
    if let Some(best) = state.best_step.filter(|&b| b > state.step) {
        return Err(format!(
            "best_step {best} is later than step {}",
            state.step
        ));
    }
    if !(state.train_seconds.is_finite() && state.train_seconds >= 0.0) {
        return Err(format!(
            "train_seconds {} is not a duration",
            state.train_seconds
        ));
    }
    Ok(())
}

/// Reads a checkpoint's state and optimizer moments.
pub fn read(checkpoint: &Path) -> Result<(TrainerState, HashMap<String, Tensor>), TrainError> {
    let state = read_state(checkpoint)?;
    let opt_path = checkpoint.join(OPTIMIZER_FILE);
    let optimizer = candle_core::safetensors::load(&opt_path, &Device::Cpu).map_err(|e| {
        TrainError::BadCheckpoint {
            path: opt_path,
            reason: e.to_string(),
        }
    })?;
    Ok((state, optimizer))
}
