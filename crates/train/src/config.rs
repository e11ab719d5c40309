//! The resolved training configuration: what `--print-config` prints, what a run directory's
//! config.toml stores and what `--resume` reads back. A TOML file is parsed straight into it
//! (missing keys take the defaults below, unknown keys are errors naming the key), then flags
//! override, then `validate` checks ranges with the field's name.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tuna_data::{BatchOptions, EncodeOptions, FieldNames};
use tuna_lora::{LoraConfig, TargetModules};
use tuna_model::WeightFormat;

use crate::error::TrainError;
use crate::schedule::ScheduleKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A .gguf file, a Hugging Face model directory or a hub id.
    pub model: String,
    /// The run directory.
    pub output: PathBuf,
    /// Start from this adapter (fresh optimizer); "" for a new adapter.
    pub init_adapter: String,
    /// How the frozen projections are held: "f32" (the load dtype, f32 on the CPU), "bf16",
    /// "q8_0", "q4_k" or "file" (the GGUF's own blocks); see `WeightFormat`.
    pub weights: WeightFormat,
    pub data: DataSection,
    pub encoding: EncodeOptions,
    pub fields: FieldNames,
    pub batch: BatchOptions,
    pub lora: LoraSection,
    pub optim: OptimSection,
    pub train: LoopSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    pub train: PathBuf,
    /// Held-out file; "" to split `valid_fraction` off the training file instead.
    pub valid: PathBuf,
    pub valid_fraction: f64,
    /// Train on this many records of the train file (0: all), chosen by a seeded hash
    /// order so that smaller subsets sit inside larger ones (learning curves).
    pub train_subset: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    pub layers_to_transform: Vec<usize>,
    pub use_rslora: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimSection {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub max_grad_norm: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    /// Warmup as a share of all steps, used when warmup_steps is 0.
    pub warmup_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopSection {
    /// Optimizer steps; 0 means `epochs` passes over the data.
    pub max_steps: usize,
    pub epochs: f64,
    pub grad_accum: usize,
    /// Evaluate on the valid split every N steps (0: only at the end).
    pub eval_every: usize,
    /// Write a checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    /// Checkpoints kept besides best/ (oldest removed first).
    pub keep_last: usize,
    /// What an evaluation is judged by, for best/ and early stopping: "loss" (the valid
    /// loss), or a task metric scored on the valid split as `tuna compare` scores the tuned
    /// strategy (accuracy, macro-f1, exact-match, token-f1, token-error-rate,
    /// char-error-rate).
    pub eval_metric: String,
    /// Stop after this many evaluations without a better `eval_metric` (0: never).
    pub early_stopping_patience: usize,
    /// At each evaluation, greedy completions of this many held-out prompts (0: none).
    pub sample_count: usize,
    /// Tokens generated per sample at most.
    pub sample_max_new_tokens: usize,
    pub seed: u64,
}

impl TrainConfig {
    /// What evaluations are judged by (`validate` has checked the name).
    pub fn eval_metric(&self) -> crate::task_metric::EvalMetric {
        crate::task_metric::EvalMetric::parse(&self.train.eval_metric)
            .unwrap_or(crate::task_metric::EvalMetric::Loss)
    }

    /// The encoding, with training shots drawn with the run's seed.
    pub fn encoding_with_seed(&self) -> EncodeOptions {
        EncodeOptions {
            shot_seed: self.train.seed,
            ..self.encoding.clone()
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: "models/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            output: PathBuf::from("runs/tuna"),
            init_adapter: String::new(),
            weights: WeightFormat::Dense,
            data: DataSection::default(),
            encoding: EncodeOptions {
                max_seq_len: 512,
                ..EncodeOptions::default()
            },
            fields: FieldNames::default(),
            batch: BatchOptions::default(),
            lora: LoraSection::default(),
            optim: OptimSection::default(),
            train: LoopSection::default(),
        }
    }
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            valid: PathBuf::new(),
            valid_fraction: 0.0,
            train_subset: 0,
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            target_modules: TargetModules::all_linear(),
            layers_to_transform: Vec::new(),
            use_rslora: false,
        }
    }
}

impl Default for OptimSection {
    fn default() -> Self {
        // lr 1e-3: in the reference study of ../shared/DESIGN.md, 40 steps at 2e-4 learned only
        // the answer format and class prior on a binary task, 1e-3 learned the task.
        Self {
            lr: 1e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 0,
            warmup_ratio: 0.05,
        }
    }
}

impl Default for LoopSection {
    fn default() -> Self {
        Self {
            max_steps: 0,
            epochs: 1.0,
            grad_accum: 1,
            eval_every: 50,
            save_every: 100,
            keep_last: 2,
            eval_metric: "loss".into(),
            early_stopping_patience: 0,
            sample_count: 2,
            sample_max_new_tokens: 32,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Parses a TOML file; unknown keys and wrong types are errors naming the key and line.
    pub fn from_toml_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Self, TrainError> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            let place = match line {
                Some(l) => format!("{source_name}:{l}"),
                None => source_name.to_string(),
            };
            TrainError::bad_config(&place, "(toml)", e.message().to_string())
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serializes")
    }

    pub fn lora_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora.r,
            lora_alpha: self.lora.lora_alpha,
            lora_dropout: self.lora.lora_dropout,
            target_modules: self.lora.target_modules.clone(),
            layers_to_transform: (!self.lora.layers_to_transform.is_empty())
                .then(|| self.lora.layers_to_transform.clone()),
            use_rslora: self.lora.use_rslora,
            base_model_name_or_path: Some(self.model.clone()),
            ..LoraConfig::default()
        }
    }

    /// Range checks, each naming its key.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &str, reason: &str| Err(TrainError::bad_config("config", field, reason));
        if self.data.train.as_os_str().is_empty() {
            return bad("data.train", "is required (--data FILE)");
        }
        if self.output.as_os_str().is_empty() {
            return bad("output", "is required (--output DIR)");
        }
        if self.output.is_file() {
            return bad(
                "output",
                &format!(
                    "{} is a file; name a directory for the run",
                    self.output.display()
                ),
            );
        }
        if self.weights == WeightFormat::F16 {
            return bad(
                "weights",
                "training cannot run through f16 weights (f32, bf16, q8_0, q4_k or file)",
            );
        }
        if !(0.0..1.0).contains(&self.data.valid_fraction) {
            return bad("data.valid_fraction", "must be in [0, 1)");
        }
        match crate::task_metric::EvalMetric::parse(&self.train.eval_metric) {
            None => {
                return bad(
                    "train.eval_metric",
                    &format!(
                        "{:?} is not a metric ({})",
                        self.train.eval_metric,
                        crate::task_metric::EVAL_METRICS.join(", ")
                    ),
                )
            }
            Some(crate::task_metric::EvalMetric::Task(m))
                if self.data.valid.as_os_str().is_empty() && self.data.valid_fraction == 0.0 =>
            {
                return bad(
                    "train.eval_metric",
                    &format!(
                        "{} is scored on a valid split, and this run has none (--valid FILE or data.valid_fraction)",
                        m.name()
                    ),
                )
            }
            Some(_) => {}
        }
        if self.encoding.max_seq_len < 2 {
            return bad("encoding.max_seq_len", "must be at least 2");
        }
        if self.batch.batch_size == 0 {
            return bad("batch.batch_size", "must be at least 1");
        }
        if self.batch.pad_to_multiple_of == 0 {
            return bad("batch.pad_to_multiple_of", "must be at least 1");
        }
        if !(self.optim.lr.is_finite() && self.optim.lr > 0.0) {
            return bad("optim.lr", "must be a number > 0");
        }
        if !(0.0..1.0).contains(&self.optim.beta1) || !(0.0..1.0).contains(&self.optim.beta2) {
            return bad("optim.beta1", "beta1 and beta2 must be in [0, 1)");
        }
        if self.optim.weight_decay < 0.0 || !self.optim.weight_decay.is_finite() {
            return bad("optim.weight_decay", "must be a number >= 0");
        }
        if self.optim.max_grad_norm < 0.0 || !self.optim.max_grad_norm.is_finite() {
            return bad("optim.max_grad_norm", "must be >= 0 (0 turns clipping off)");
        }
        if !(0.0..1.0).contains(&self.optim.warmup_ratio) {
            return bad("optim.warmup_ratio", "must be in [0, 1)");
        }
        if self.train.max_steps == 0 && !(self.train.epochs.is_finite() && self.train.epochs > 0.0)
        {
            return bad("train.epochs", "must be > 0 when train.max_steps is 0");
        }
        if self.train.grad_accum == 0 {
            return bad("train.grad_accum", "must be at least 1");
        }
        if self.train.keep_last == 0 {
            return bad(
                "train.keep_last",
                "must be at least 1 (the last checkpoint is what --resume reads)",
            );
        }
        self.lora_config()
            .validate(usize::MAX)
            .map_err(TrainError::from)?;
        Ok(())
    }
}
