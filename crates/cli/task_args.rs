//! Flags that define a task measurement (strategies, shots, labels, metrics, scoring), shared
//! by `tuna compare` and `tuna eval --strategies`, typed as clap parses them and turned into
//! the library's `TaskOptions` and `CompareSetup`. What a study does with them is
//! `tuna_eval::study`'s.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use tuna_data::FieldNames;
use tuna_eval::compare::{AdapterFacts, CompareSetup, Method};
use tuna_eval::metrics::{Metric, Normalization};
use tuna_eval::strategy::{PromptShape, Strategy};
use tuna_eval::study::{split_file, Task, TaskOptions};
use tuna_model::Pretrained;
use tuna_train::run_dir::{LocatedAdapter, RunInfo};

/// What `tuna compare` runs when --strategies is not given.
pub const COMPARE_STRATEGIES: [StrategyArg; 6] = [
    StrategyArg::Zero,
    StrategyArg::One,
    StrategyArg::Few,
    StrategyArg::Cot,
    StrategyArg::Tuned,
    StrategyArg::Hybrid,
];

/// The values of --strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    #[value(alias = "zero-shot")]
    Zero,
    #[value(alias = "one-shot")]
    One,
    #[value(alias = "few-shot")]
    Few,
    #[value(alias = "chain-of-thought")]
    Cot,
    CotFew,
    Tuned,
    Hybrid,
}

impl StrategyArg {
    pub fn strategy(self) -> Strategy {
        match self {
            Self::Zero => Strategy::Zero,
            Self::One => Strategy::One,
            Self::Few => Strategy::Few,
            Self::Cot => Strategy::Cot,
            Self::CotFew => Strategy::CotFew,
            Self::Tuned => Strategy::Tuned,
            Self::Hybrid => Strategy::Hybrid,
        }
    }
}

/// The values of --metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricArg {
    Accuracy,
    #[value(alias = "f1")]
    MacroF1,
    #[value(alias = "em")]
    ExactMatch,
    TokenF1,
    #[value(alias = "phone-error-rate", alias = "wer")]
    TokenErrorRate,
    #[value(alias = "cer")]
    CharErrorRate,
}

impl MetricArg {
    fn metric(self) -> Metric {
        match self {
            Self::Accuracy => Metric::Accuracy,
            Self::MacroF1 => Metric::MacroF1,
            Self::ExactMatch => Metric::ExactMatch,
            Self::TokenF1 => Metric::TokenF1,
            Self::TokenErrorRate => Metric::TokenErrorRate,
            Self::CharErrorRate => Metric::CharErrorRate,
        }
    }
}

/// The values of --normalize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NormalizeArg {
    /// Case-folded, spaces collapsed.
    Case,
    /// Only surrounding whitespace ignored.
    #[value(alias = "none")]
    Exact,
    /// As case, and punctuation dropped.
    Alnum,
}

/// The values of --method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Rank the labels by log-likelihood (deterministic).
    Rank,
    /// Generate greedily, then find the label in the text.
    Generate,
}

#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// Comma-separated (cot-few, chain-of-thought with worked shots, joins cot when train
    /// records have rationales). Default in compare: zero,one,few,cot,tuned,hybrid; eval
    /// scores task metrics only when given (or --metric).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub strategies: Option<Vec<StrategyArg>>,
    /// Where shots, labels and the majority baseline come from (default: the adapter run's
    /// training file, else train.jsonl beside the test file).
    #[arg(long, value_parser = crate::value_parsers::input_file)]
    pub train: Option<PathBuf>,
    /// The record field holding a worked explanation of the answer (for cot-few shots).
    #[arg(long, default_value = tuna_eval::task::RATIONALE_FIELD)]
    pub rationale_field: String,
    /// Shots for few-shot and hybrid (drawn from the train split, balanced per label).
    #[arg(long, default_value_t = 5)]
    pub shots: usize,
    /// Seeded draws of shots for each strategy that shows some: the first draw is the row,
    /// the others measure how much the choice of shots alone moves the metric.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub shot_draws: u64,
    /// Chain-of-thought generates long answers: score it on the first N test examples at
    /// most (its row says how many).
    #[arg(long, default_value_t = 100)]
    pub cot_limit: usize,
    /// The prompting strategies' wording around each input ({prompt} marks the input).
    /// Default: the adapter run's prompt template, else one naming the labels.
    #[arg(long)]
    pub instruction: Option<String>,
    /// The label set, comma-separated (default: inferred from the train split).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Metrics, comma-separated, the first the headline (default: by task; token-error-rate
    /// is the phone error rate of a pronunciation task).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub metric: Option<Vec<MetricArg>>,
    /// How answers meet references.
    #[arg(long, value_enum, default_value = "case")]
    pub normalize: NormalizeArg,
    /// Label tasks: how answers are scored.
    #[arg(long, value_enum, default_value = "rank")]
    pub method: MethodArg,
    /// Seeds the shot draws and the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest generated answer (sequence tasks, generate method).
    #[arg(long, default_value_t = tuna_eval::compare::DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Longest chain-of-thought answer.
    #[arg(long, default_value_t = tuna_eval::compare::DEFAULT_COT_MAX_NEW_TOKENS)]
    pub cot_max_new_tokens: usize,
    /// Prompts generated together (generation-scored strategies).
    #[arg(long, default_value_t = tuna_eval::compare::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Leave out test rows whose input also appears in the train split (the report counts
    /// and lists them either way).
    #[arg(long)]
    pub exclude_leaks: bool,
}

impl TaskArgs {
    /// The strategies named, each once (`default` when none were).
    pub fn strategies_or(&self, default: &[StrategyArg]) -> Vec<Strategy> {
        let mut out: Vec<Strategy> = Vec::new();
        for s in self.strategies.as_deref().unwrap_or(default) {
            if !out.contains(&s.strategy()) {
                out.push(s.strategy());
            }
        }
        out
    }

    /// The library's options for a task on `data`: `system` is the prompting strategies'
    /// system turn (default: the run's), `run` the adapter's run directory when it has one.
    pub fn options(
        &self,
        data: &Path,
        limit: Option<usize>,
        fields: &FieldNames,
        system: Option<String>,
        run: Option<&RunInfo>,
        default_strategies: &[StrategyArg],
    ) -> anyhow::Result<TaskOptions> {
        let labels = self.labels.as_ref().map(|l| {
            l.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        });
        if labels.as_ref().is_some_and(Vec::is_empty) {
            anyhow::bail!("--labels: name at least one label");
        }
        Ok(TaskOptions {
            strategies: self.strategies_or(default_strategies),
            train_path: split_file(
                self.train.as_deref(),
                run.map(|r| r.config.data.train.as_path()),
                data,
                "train.jsonl",
            ),
            fields: fields.clone(),
            rationale_field: self.rationale_field.clone(),
            labels,
            metrics: self
                .metric
                .as_ref()
                .map(|m| m.iter().map(|a| a.metric()).collect()),
            normalization: match self.normalize {
                NormalizeArg::Case => Normalization::Case,
                NormalizeArg::Exact => Normalization::Exact,
                NormalizeArg::Alnum => Normalization::Alnum,
            },
            instruction: self.instruction.clone(),
            system,
            limit,
            shots: self.shots,
            tuned_shape: trained_shape(run),
            tuned_shots: run.map_or(0, |r| r.config.encoding.shots),
            exclude_leaks: self.exclude_leaks,
        })
    }

    /// What the library scores, for `task` on `base` (and `tuned`).
    pub fn setup<'a>(
        &self,
        task: &'a Task,
        base: &'a Pretrained,
        tuned: Option<&'a Pretrained>,
        adapter: Option<AdapterFacts>,
        samples: usize,
    ) -> CompareSetup<'a> {
        CompareSetup {
            base,
            tuned,
            test_path: &task.test_path,
            test: &task.test,
            train: &task.train,
            kind: task.kind.clone(),
            strategies: task.strategies.clone(),
            shots: self.shots,
            shot_draws: self.shot_draws as usize,
            tuned_shots: task.tuned_shots,
            seed: self.seed,
            prompt_shape: task.prompt_shape.clone(),
            tuned_shape: task.tuned_shape.clone(),
            method: match self.method {
                MethodArg::Rank => Method::Rank,
                MethodArg::Generate => Method::Generate,
            },
            metrics: task.metrics.clone(),
            normalization: task.normalization,
            max_new_tokens: self.max_new_tokens,
            cot_max_new_tokens: self.cot_max_new_tokens,
            batch_size: self.batch_size,
            adapter,
            samples,
            cache: None,
        }
    }
}

/// The wording a run was trained with (its config's template and system turn).
pub fn trained_shape(run: Option<&RunInfo>) -> PromptShape {
    run.map_or_else(PromptShape::default, |r| PromptShape {
        template: r.config.encoding.prompt_template.clone(),
        system: r.config.encoding.system.clone(),
    })
}

/// The adapter `located`: its size, and what its run directory says of its training.
pub fn adapter_facts(
    located: &LocatedAdapter,
    tuned: Option<&Pretrained>,
) -> anyhow::Result<AdapterFacts> {
    let (dir, run) = (&located.dir, located.run.as_ref());
    let weights = dir.join(tuna_lora::peft::WEIGHTS_FILE);
    let bytes = std::fs::metadata(&weights)
        .with_context(|| format!("{}: cannot read the adapter weights", weights.display()))?
        .len();
    let parameters = tuned.map_or(0, |m| m.model.adapter_parameters());
    let state = run.and_then(|r| r.state.as_ref());
    Ok(AdapterFacts {
        path: dir.display().to_string(),
        parameters,
        bytes,
        train_examples: run.and_then(|r| r.train_examples()).unwrap_or(0),
        steps: state.map_or(0, |s| s.step),
        train_seconds: state.map_or(0.0, |s| s.train_seconds),
        cpu_seconds: state.map(|s| s.cpu_seconds).filter(|c| *c > 0.0),
    })
}
