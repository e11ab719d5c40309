//! A run directory, the one owner of what `tuna train` writes there and of reading it back:
//!
//! ```text
//! RUN/config.toml          the resolved config (what ran; --resume reads it)
//! RUN/metrics.jsonl        one JSON object per TrainEvent, appended
//! RUN/chart.svg            train loss, eval loss and lr over the whole run
//! RUN/checkpoint-<step>/   adapter, optimizer moments, trainer_state.json
//! RUN/best/                the adapter of the lowest eval loss
//! RUN/adapter/             the final adapter (what --adapter RUN loads)
//! RUN/size-<n>/            the runs of a learning curve (tuna train --train-sizes)
//! ```
//!
//! and what an `--adapter` path names (`locate_adapter`): a PEFT directory, a run, a run's
//! best/ or checkpoint, or a hub id.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tuna_lora::peft;

use crate::chart::History;
use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::events::TrainEvent;

pub const CONFIG_FILE: &str = "config.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHART_FILE: &str = "chart.svg";
pub const ADAPTER_DIR: &str = "adapter";
pub const BEST_DIR: &str = "best";

/// A run directory opened for training. Under data-parallel training only rank 0 writes
/// it; the other ranks open it to read (resume) and every write is a no-op there.
pub struct RunDir {
    path: PathBuf,
    /// None: this process does not write the directory.
    metrics: Option<File>,
    /// Whether the directory was made by this run or found empty: a failure before anything
    /// was recorded then leaves it as it was.
    fresh: bool,
    existed: bool,
    recorded: bool,
}

impl RunDir {
    /// Opens `path` for a new run (refused when it holds a run already) or, with `resume`, to
    /// continue the run there; `writes` false opens it only to read (a rank other than 0).
    pub fn open(path: &Path, resume: bool, writes: bool) -> Result<Self, TrainError> {
        if path.is_file() {
            return Err(TrainError::bad_config(
                "config",
                "output",
                format!("{} is a file; name a directory for the run", path.display()),
            ));
        }
        if !resume && checkpoint::list(path).pop().is_some() {
            return Err(TrainError::RunExists { path: path.into() });
        }
        if !writes {
            return Ok(Self {
                path: path.into(),
                metrics: None,
                fresh: false,
                existed: true,
                recorded: false,
            });
        }
        let existed = path.exists();
        let fresh = std::fs::read_dir(path).map_or(true, |mut d| d.next().is_none());
        std::fs::create_dir_all(path).map_err(TrainError::io(path))?;
        let metrics_path = path.join(METRICS_FILE);
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(TrainError::io(&metrics_path))?;
        Ok(Self {
            path: path.into(),
            metrics: Some(metrics),
            fresh: fresh && !resume,
            existed,
            recorded: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_config(&self, config: &TrainConfig) -> Result<(), TrainError> {
        if self.metrics.is_none() {
            return Ok(());
        }
        peft::write_atomic(&self.path.join(CONFIG_FILE), config.to_toml().as_bytes())?;
        Ok(())
    }

    /// Appends `event` to metrics.jsonl.
    pub fn record(&mut self, event: &TrainEvent) -> Result<(), TrainError> {
        let Some(metrics) = self.metrics.as_mut() else {
            return Ok(());
        };
        let path = self.path.join(METRICS_FILE);
        let line = serde_json::to_string(event).expect("events serialize");
        writeln!(metrics, "{line}").map_err(TrainError::io(&path))?;
        self.recorded = true;
        Ok(())
    }

    /// Redraws chart.svg from the run's history.
    pub fn draw_chart(&self, history: &History, total_steps: usize) -> Result<(), TrainError> {
        if self.metrics.is_none() {
            return Ok(());
        }
        history.write(&self.path.join(CHART_FILE), total_steps)
    }

    /// The newest checkpoint: (step, directory).
    pub fn latest_checkpoint(&self) -> Option<(usize, PathBuf)> {
        checkpoint::list(&self.path).pop()
    }

    pub fn adapter_dir(&self) -> PathBuf {
        self.path.join(ADAPTER_DIR)
    }

    pub fn best_dir(&self) -> PathBuf {
        self.path.join(BEST_DIR)
    }

    /// After a failed run: when it was new and neither recorded an event nor wrote a
    /// checkpoint, removes what it wrote (an empty directory the user made stays, empty).
    pub fn discard_if_nothing_recorded(&self) {
        if !self.fresh || self.recorded || self.latest_checkpoint().is_some() {
            return;
        }
        if !self.existed {
            let _ = std::fs::remove_dir_all(&self.path);
            return;
        }
        for entry in std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// A run read back: what `tuna compare`, `eval` and `chat` take from the adapter's run.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub dir: PathBuf,
    pub config: TrainConfig,
    /// The newest checkpoint's state (steps, wall and CPU time, training examples).
    pub state: Option<TrainerState>,
}

impl RunInfo {
    /// Training examples, as the run counted them (None for runs written before
    /// trainer_state.json recorded them).
    pub fn train_examples(&self) -> Option<usize> {
        self.state.as_ref().and_then(|s| s.train_examples)
    }
}

/// The run directory an adapter path belongs to: the path itself when it holds config.toml,
/// or its parent (for runs/NAME/adapter, runs/NAME/best, runs/NAME/checkpoint-N).
pub fn run_dir_of(adapter_path: &Path) -> Option<PathBuf> {
    [Some(adapter_path), adapter_path.parent()]
        .into_iter()
        .flatten()
        .find(|d| d.join(CONFIG_FILE).is_file())
        .map(Path::to_path_buf)
}

pub fn read(dir: &Path) -> Result<RunInfo, TrainError> {
    let config = TrainConfig::from_toml_file(&dir.join(CONFIG_FILE))?;
    let state = match checkpoint::list(dir).pop() {
        Some((_, newest)) => Some(checkpoint::read_state(&newest)?),
        None => None,
    };
    Ok(RunInfo {
        dir: dir.to_path_buf(),
        config,
        state,
    })
}

/// What an `--adapter` names, located once for every command.
#[derive(Debug, Clone)]
pub struct LocatedAdapter {
    /// The PEFT directory (adapter_config.json, adapter_model.safetensors).
    pub dir: PathBuf,
    /// Its run, when it belongs to one.
    pub run: Option<RunInfo>,
}

/// Locates `spec`: a hub id is fetched into the cache; a run directory names its final
/// adapter/; a run's best/ or checkpoint-N/, or a bare PEFT directory, names itself.
pub fn locate_adapter(spec: &Path) -> Result<LocatedAdapter, TrainError> {
    let path = tuna_model::source::resolve_adapter(spec)?;
    let in_run = path.join(ADAPTER_DIR);
    let dir = if !path.join(peft::CONFIG_FILE).is_file() && in_run.join(peft::CONFIG_FILE).is_file()
    {
        in_run
    } else {
        path
    };
    let run = run_dir_of(&dir).map(|d| read(&d)).transpose()?;
    Ok(LocatedAdapter { dir, run })
}

/// The size-N/ runs of a learning-curve directory, smallest first (empty for a plain run).
pub fn curve_runs(dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut runs: Vec<(usize, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("size-")?
                .parse()
                .ok()?;
            e.path().join(CONFIG_FILE).is_file().then(|| (n, e.path()))
        })
        .collect();
    runs.sort();
    runs
}
