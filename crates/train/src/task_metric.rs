//! Evaluation by the task's own metric during training (`train.eval_metric`): the valid
//! split scored as `tuna compare` scores the tuned strategy — labels ranked by
//! log-likelihood for a label task, greedy generation otherwise, answers normalized by case
//! — so that `best/` can follow accuracy or an error rate rather than the loss (the two can
//! disagree: a lower loss on a label task does not always mean more rows right).

use std::path::{Path, PathBuf};

use tuna_data::Dataset;
use tuna_eval::compare::{
    self, CompareSetup, Method, DEFAULT_BATCH_SIZE, DEFAULT_COT_MAX_NEW_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
};
use tuna_eval::metrics::{Metric, Normalization};
use tuna_eval::strategy::{PromptShape, Strategy};
use tuna_eval::task::{self, TaskExample, TaskKind, RATIONALE_FIELD};
use tuna_model::Pretrained;

use crate::config::TrainConfig;
use crate::error::TrainError;

/// What `train.eval_metric` names: the valid loss, or a task metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalMetric {
    Loss,
    Task(Metric),
}

/// The names `train.eval_metric` accepts (the flags' possible values, and errors).
pub const EVAL_METRICS: [&str; 7] = [
    "loss",
    "accuracy",
    "macro-f1",
    "exact-match",
    "token-f1",
    "token-error-rate",
    "char-error-rate",
];

impl EvalMetric {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "loss" => Some(Self::Loss),
            other => Metric::parse(other).map(Self::Task),
        }
    }

    /// Whether `a` is a better evaluation than `b` (loss and error rates: lower).
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Self::Loss => a < b,
            Self::Task(m) => m.better(a, b),
        }
    }
}

/// The valid split as task rows, and how the run's adapter is prompted.
pub struct TaskMetric {
    pub metric: Metric,
    valid_path: PathBuf,
    valid: Vec<TaskExample>,
    train: Vec<TaskExample>,
    kind: TaskKind,
    shape: PromptShape,
    shots: usize,
    seed: u64,
}

impl TaskMetric {
    /// The valid records of `valid` (a file of its own, or the lines split off the train
    /// file) read as task rows, with the label set inferred from the train file.
    pub fn prepare(
        metric: Metric,
        config: &TrainConfig,
        valid: &Dataset,
    ) -> Result<Self, TrainError> {
        let read = |path: &Path| {
            task::load_examples(path, &config.fields, RATIONALE_FIELD).map_err(|e| {
                TrainError::bad_config(
                    "config",
                    "train.eval_metric",
                    format!(
                        "{} scores prompt/completion, instruction/output or messages records: {e}",
                        metric.name()
                    ),
                )
            })
        };
        let train = read(&config.data.train)?;
        let mut rows = read(&valid.path)?;
        let lines = valid.lines();
        rows.retain(|x| lines.contains(&x.line));
        // Split off the train file: shots come from the lines that train only.
        let train: Vec<TaskExample> = if valid.path == config.data.train {
            train
                .into_iter()
                .filter(|x| !lines.contains(&x.line))
                .collect()
        } else {
            train
        };
        let kind = task::infer_kind(&train);
        task::check_references(&valid.path, &rows, &kind).map_err(TrainError::from)?;
        Ok(Self {
            metric,
            valid_path: valid.path.clone(),
            valid: rows,
            train,
            kind,
            shape: PromptShape {
                template: config.encoding.prompt_template.clone(),
                system: config.encoding.system.clone(),
            },
            shots: config.encoding.shots,
            seed: config.train.seed,
        })
    }

    /// Valid rows scored.
    pub fn rows(&self) -> usize {
        self.valid.len()
    }

    /// The metric over the valid rows with `model` (the adapter as it is now).
    pub fn score(&self, model: &Pretrained) -> Result<f64, TrainError> {
        let setup = CompareSetup {
            base: model,
            tuned: Some(model),
            test_path: &self.valid_path,
            test: &self.valid,
            train: &self.train,
            kind: self.kind.clone(),
            strategies: vec![Strategy::Tuned],
            shots: 0,
            shot_draws: 1,
            tuned_shots: self.shots,
            seed: self.seed,
            prompt_shape: self.shape.clone(),
            tuned_shape: self.shape.clone(),
            method: Method::Rank,
            metrics: vec![self.metric],
            normalization: Normalization::Case,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            cot_max_new_tokens: DEFAULT_COT_MAX_NEW_TOKENS,
            batch_size: DEFAULT_BATCH_SIZE,
            adapter: None,
            samples: 0,
            cache: None,
        };
        let (rows, _) = compare::score_strategies(&setup, &mut |_| {})?;
        Ok(rows[0].headline().estimate.value)
    }
}
