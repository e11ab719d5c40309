//! Flags that define a task measurement (strategies, shots, labels, metrics, scoring), shared
//! by `tuna compare` and `tuna eval --strategies`, and the one place that turns them, the
//! test file and the adapter's run directory into what `tuna_eval::compare` runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use tuna_data::FieldNames;
use tuna_eval::compare::{self, AdapterFacts, CompareReport, CompareSetup, Method};
use tuna_eval::metrics::{Metric, Normalization};
use tuna_eval::strategy::{PromptShape, Strategy};
use tuna_eval::task::{self, TaskExample, TaskKind};
use tuna_model::Pretrained;
use tuna_train::run_dir::{LocatedAdapter, RunInfo};

use crate::args::MethodArg;

/// What `tuna compare` runs when --strategies is not given.
pub const COMPARE_STRATEGIES: &str = "zero,one,few,cot,tuned,hybrid";

#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// Comma-separated: zero, one, few, cot, cot-few, tuned, hybrid (cot-few, chain-of-thought
    /// with worked shots, joins cot when train records have rationales). Default in compare:
    /// zero,one,few,cot,tuned,hybrid; eval scores task metrics only when given (or --metric).
    #[arg(long)]
    pub strategies: Option<String>,
    /// Where shots, labels and the majority baseline come from (default: the adapter run's
    /// training file, else train.jsonl beside the test file).
    #[arg(long, value_parser = crate::args::input_file)]
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
    #[arg(long)]
    pub labels: Option<String>,
    /// Metrics, comma-separated, the first the headline: accuracy, macro-f1, exact-match,
    /// token-f1, token-error-rate (phones), char-error-rate (default: by task).
    #[arg(long)]
    pub metric: Option<String>,
    /// How answers meet references: case (case-folded, spaces collapsed), exact (only
    /// surrounding whitespace ignored) or alnum (case, and punctuation dropped).
    #[arg(long, default_value = "case")]
    pub normalize: String,
    /// Label tasks: rank the labels by log-likelihood, or generate and parse.
    #[arg(long, value_enum, default_value = "rank")]
    pub method: MethodArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest generated answer (sequence tasks, generate method).
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// Longest chain-of-thought answer.
    #[arg(long, default_value_t = 160)]
    pub cot_max_new_tokens: usize,
    /// Prompts generated together (generation-scored strategies).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

/// The test and train examples and every choice made from the flags, ready to score.
pub struct Task {
    pub test_path: PathBuf,
    pub test: Vec<TaskExample>,
    pub train: Vec<TaskExample>,
    pub kind: TaskKind,
    pub strategies: Vec<Strategy>,
    pub metrics: Vec<Metric>,
    pub normalization: Normalization,
    pub prompt_shape: PromptShape,
    pub tuned_shape: PromptShape,
    /// Shots the adapter's run trained with in each prompt.
    pub tuned_shots: usize,
}

impl TaskArgs {
    /// Reads `data` (the first `limit` rows) and the train split, and settles the strategies,
    /// label set, metrics and wording. `system` is the prompting strategies' system turn
    /// (default: the run's); `run` is the adapter's run directory, when it has one.
    pub fn prepare(
        &self,
        data: &Path,
        limit: Option<usize>,
        fields: &FieldNames,
        system: Option<String>,
        run: Option<&RunInfo>,
        default_strategies: &str,
    ) -> anyhow::Result<Task> {
        let mut strategies =
            parse_strategies(self.strategies.as_deref().unwrap_or(default_strategies))?;
        let mut test = task::load_examples(data, fields, &self.rationale_field)?;
        if let Some(limit) = limit {
            test.truncate(limit);
        }
        if test.is_empty() {
            bail!("--limit: no test examples left to score");
        }
        let train = match self.train_path(run, data) {
            Some(p) => task::load_examples(&p, fields, &self.rationale_field)?,
            None => Vec::new(),
        };
        let kind = match &self.labels {
            Some(l) => TaskKind::Labels {
                labels: l
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            },
            None if train.is_empty() => TaskKind::Sequence,
            None => task::infer_kind(&train),
        };
        task::check_references(data, &test, &kind)?;
        // Few-shot chain-of-thought joins plain chain-of-thought when the train split has
        // rationales to show.
        let rationales = train.iter().filter(|x| x.rationale.is_some()).count();
        if rationales > 0
            && strategies.contains(&Strategy::Cot)
            && !strategies.contains(&Strategy::CotFew)
        {
            let at = strategies
                .iter()
                .position(|s| *s == Strategy::Cot)
                .unwrap_or(0)
                + 1;
            strategies.insert(at, Strategy::CotFew);
        }
        if strategies.contains(&Strategy::CotFew) && rationales == 0 {
            bail!("--strategies cot-few: no train record has a `{}` field to show as a worked answer (--rationale-field names it)", self.rationale_field);
        }
        let tuned_shots = run.map_or(0, |r| r.config.encoding.shots);
        let needs_train = strategies.iter().any(|s| s.shot_count(self.shots) > 0)
            || (tuned_shots > 0 && strategies.contains(&Strategy::Tuned));
        if needs_train && train.is_empty() {
            bail!("few-shot strategies draw shots from a train split: pass --train FILE (or leave one-shot, few-shot and hybrid out of --strategies)");
        }
        let normalization = Normalization::parse(&self.normalize).with_context(|| {
            format!(
                "--normalize: unknown mode {:?} (case, exact, alnum)",
                self.normalize
            )
        })?;
        let metrics = match &self.metric {
            Some(m) => m
                .split(',')
                .map(|name| {
                    Metric::parse(name.trim()).with_context(|| {
                        format!("--metric: unknown metric {name:?} (accuracy, macro-f1, exact-match, token-f1, token-error-rate, char-error-rate)")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => kind.default_metrics(),
        };
        let tuned_shape = trained_shape(run);
        let prompt_shape = PromptShape {
            template: self
                .instruction
                .clone()
                .or_else(|| tuned_shape.template.clone())
                .or_else(|| default_instruction(&kind)),
            system: system.or_else(|| tuned_shape.system.clone()),
        };
        Ok(Task {
            test_path: data.to_path_buf(),
            test,
            train,
            kind,
            strategies,
            metrics,
            normalization,
            prompt_shape,
            tuned_shape,
            tuned_shots,
        })
    }

    /// --train, else the adapter run's training file, else train.jsonl beside the test file.
    fn train_path(&self, run: Option<&RunInfo>, data: &Path) -> Option<PathBuf> {
        split_path(
            self.train.as_deref(),
            run.map(|r| r.config.data.train.as_path()),
            data,
            "train.jsonl",
        )
    }

    /// What `tuna_eval::compare::run` needs, for `task` scored on `base` (and `tuned`).
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
        }
    }

    /// Every strategy of `setup`, chain-of-thought on the first --cot-limit rows only (it
    /// generates long answers), the rows in the order asked.
    pub fn run_strategies(
        &self,
        setup: &CompareSetup,
        progress: &mut dyn FnMut(&str),
    ) -> anyhow::Result<CompareReport> {
        let (mut cot, rest): (Vec<Strategy>, Vec<Strategy>) =
            setup.strategies.iter().partition(|s| s.chain_of_thought());
        if self.cot_limit == 0 && !cot.is_empty() {
            eprintln!("--cot-limit 0: chain-of-thought left out");
            cot.clear();
        }
        let mut report = None;
        if !rest.is_empty() || cot.is_empty() {
            let main = CompareSetup {
                strategies: rest,
                ..setup.clone()
            };
            report = Some(compare::run(&main, progress)?);
        }
        if !cot.is_empty() {
            let n = setup.test.len().min(self.cot_limit);
            let cot_setup = CompareSetup {
                strategies: cot,
                test: &setup.test[..n],
                ..setup.clone()
            };
            let cot_report = compare::run(&cot_setup, progress)?;
            report = Some(match report {
                None => cot_report,
                Some(mut r) => {
                    for mut row in cot_report.rows {
                        if n < setup.test.len() {
                            row.title = format!("{} (first {n} examples)", row.title);
                            r.notes.push(format!(
                                "{} was scored on the first {n} of {} examples (--cot-limit), so its interval is wider",
                                row.key,
                                setup.test.len()
                            ));
                        }
                        // Keep the strategies' order as asked.
                        let at = setup
                            .strategies
                            .iter()
                            .position(|s| s.key() == row.key)
                            .unwrap_or(r.rows.len())
                            .min(r.rows.len());
                        add_sample_column(&mut r.samples, setup.test, &row, at);
                        r.rows.insert(at, row);
                    }
                    r
                }
            });
        }
        Ok(report.expect("at least one strategy ran"))
    }
}

/// A split's file: the flag's, else the run's (when it is still there), else `sibling`
/// beside the test file.
pub fn split_path(
    flag: Option<&Path>,
    from_run: Option<&Path>,
    data: &Path,
    sibling: &str,
) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(p) = from_run.filter(|p| !p.as_os_str().is_empty() && p.is_file()) {
        return Some(p.to_path_buf());
    }
    let beside = data.with_file_name(sibling);
    (beside.is_file() && beside != data).then_some(beside)
}

/// The wording a run was trained with (its config's template and system turn).
pub fn trained_shape(run: Option<&RunInfo>) -> PromptShape {
    run.map_or_else(PromptShape::default, |r| PromptShape {
        template: r.config.encoding.prompt_template.clone(),
        system: r.config.encoding.system.clone(),
    })
}

/// Puts `row`'s predictions into the side-by-side samples as a column at `at` (clamped).
pub fn add_sample_column(
    samples: &mut [compare::Sample],
    test: &[TaskExample],
    row: &compare::StrategyRow,
    at: usize,
) {
    for sample in samples {
        let pred = test
            .iter()
            .position(|x| x.line == sample.line)
            .and_then(|i| row.predictions.get(i))
            .cloned()
            .unwrap_or_else(|| "—".into());
        let col = at.min(sample.predictions.len());
        sample.predictions.insert(col, (row.key.clone(), pred));
    }
}

/// The adapter at `path`: its size, and what its run directory says of its training.
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

pub(crate) fn parse_strategies(list: &str) -> anyhow::Result<Vec<Strategy>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let s = Strategy::parse(name).with_context(|| {
            format!("--strategies: unknown strategy {name:?} (zero, one, few, cot, cot-few, tuned, hybrid)")
        })?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    if out.is_empty() {
        bail!("--strategies: name at least one of zero, one, few, cot, tuned, hybrid");
    }
    Ok(out)
}

fn default_instruction(kind: &TaskKind) -> Option<String> {
    match kind {
        TaskKind::Labels { labels } => Some(format!(
            "Answer with exactly one of: {}.\n\n{{prompt}}",
            labels.join(", ")
        )),
        TaskKind::Sequence => None,
    }
}
