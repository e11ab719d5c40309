//! A whole prompting-vs-tuning study, as `tuna compare` and `tuna eval --strategies` run it:
//! the task settled from typed options (`Task::prepare`), then `Study::run` — the instruction
//! sweep on the valid split, every strategy (chain-of-thought on the first `cot_limit` rows),
//! the extra adapters, the learning curve — and, once every row exists, the report with its
//! baseline, differences and recommendation. The CLI turns flags into these types and prints
//! what comes back; it decides nothing here.

use std::path::{Path, PathBuf};

use serde::Serialize;

use tuna_data::FieldNames;
use tuna_model::Pretrained;

use crate::compare::{
    self, AdapterFacts, CompareReport, CompareSetup, CurvePoint, InstructionTrial, StrategyRow,
};
use crate::error::{EvalError, Result};
use crate::metrics::{Metric, Normalization};
use crate::strategy::{PromptShape, Strategy};
use crate::task::{self, TaskExample, TaskKind};

/// What a study measures, as typed options (the command line's flags, parsed).
#[derive(Debug, Clone)]
pub struct TaskOptions {
    pub strategies: Vec<Strategy>,
    /// Where shots, labels and the majority baseline come from.
    pub train_path: Option<PathBuf>,
    pub fields: FieldNames,
    /// The record field holding a worked explanation of the answer (cot-few shots).
    pub rationale_field: String,
    /// The label set (None: inferred from the train split).
    pub labels: Option<Vec<String>>,
    /// The metrics, the first the headline (None: the task's defaults).
    pub metrics: Option<Vec<Metric>>,
    pub normalization: Normalization,
    /// The prompting strategies' wording ({prompt} marks the input); None: the adapter's
    /// training wording, else one naming the labels.
    pub instruction: Option<String>,
    /// The prompting strategies' system turn; None: the adapter's.
    pub system: Option<String>,
    /// Score the first N test rows.
    pub limit: Option<usize>,
    /// Shots of few-shot and hybrid.
    pub shots: usize,
    /// The adapter run's wording and shots per prompt (default: none).
    pub tuned_shape: PromptShape,
    pub tuned_shots: usize,
    /// Drop test rows whose input also appears in the train split.
    pub exclude_leaks: bool,
}

/// A test row whose input the train split also holds (a duplicate inflates the tuned
/// number: the adapter may have seen the answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leak {
    pub test_line: usize,
    pub train_line: usize,
    /// The same text exactly, or only after case, whitespace and punctuation are normalized.
    pub exact: bool,
}

/// The leakage guard's findings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Leakage {
    pub train_path: Option<String>,
    pub exact: usize,
    pub normalized: usize,
    /// Whether the leaked rows were dropped from the test set (--exclude-leaks).
    pub excluded: bool,
    pub leaks: Vec<Leak>,
}

impl Leakage {
    /// One sentence for the report.
    pub fn summary(&self) -> String {
        let Some(train) = &self.train_path else {
            return "Leakage check: no train split to check the test inputs against.".into();
        };
        match self.exact + self.normalized {
            0 => format!("Leakage check: no test input appears in {train}."),
            n => format!(
                "Leakage: {n} test inputs also appear in {train} ({} exactly, {} after normalizing case, whitespace and punctuation); {}",
                self.exact,
                self.normalized,
                if self.excluded {
                    "they were left out of the test set (--exclude-leaks)."
                } else {
                    "they are scored, so the tuned number may be inflated (--exclude-leaks leaves them out)."
                }
            ),
        }
    }
}

/// Case, whitespace and punctuation aside: what makes two inputs the same text.
fn leak_key(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Test rows whose input the train split holds, exactly or after `leak_key`.
fn find_leaks(test: &[TaskExample], train: &[TaskExample]) -> Vec<Leak> {
    use std::collections::HashMap;
    let mut exact: HashMap<&str, usize> = HashMap::new();
    let mut normalized: HashMap<String, usize> = HashMap::new();
    for x in train {
        exact.entry(x.input()).or_insert(x.line);
        normalized.entry(leak_key(x.input())).or_insert(x.line);
    }
    test.iter()
        .filter_map(|x| match exact.get(x.input()) {
            Some(&line) => Some(Leak {
                test_line: x.line,
                train_line: line,
                exact: true,
            }),
            None => normalized.get(&leak_key(x.input())).map(|&line| Leak {
                test_line: x.line,
                train_line: line,
                exact: false,
            }),
        })
        .collect()
}

/// The test and train examples and every choice made from the options, ready to score.
#[derive(Debug, Clone)]
pub struct Task {
    pub test_path: PathBuf,
    pub test: Vec<TaskExample>,
    pub train: Vec<TaskExample>,
    pub fields: FieldNames,
    pub rationale_field: String,
    pub kind: TaskKind,
    pub strategies: Vec<Strategy>,
    pub metrics: Vec<Metric>,
    pub normalization: Normalization,
    pub prompt_shape: PromptShape,
    pub tuned_shape: PromptShape,
    /// Shots the adapter's run trained with in each prompt.
    pub tuned_shots: usize,
    pub leakage: Leakage,
}

impl Task {
    /// Reads the test file (its first `limit` rows) and the train split, and settles the
    /// strategies, label set, metrics and wording.
    pub fn prepare(test_path: &Path, options: &TaskOptions) -> Result<Task> {
        let mut strategies = options.strategies.clone();
        let fields = &options.fields;
        let mut test = task::load_examples(test_path, fields, &options.rationale_field)?;
        if let Some(train) = &options.train_path {
            if same_file(train, test_path) {
                return Err(EvalError::BadOption {
                    field: "--train",
                    reason: format!(
                        "{} is the test file: shots and labels must come from another split",
                        train.display()
                    ),
                });
            }
        }
        let train = match &options.train_path {
            Some(p) => task::load_examples(p, fields, &options.rationale_field)?,
            None => Vec::new(),
        };
        let leaks = find_leaks(&test, &train);
        if options.exclude_leaks {
            test.retain(|x| !leaks.iter().any(|l| l.test_line == x.line));
        }
        if let Some(limit) = options.limit {
            test.truncate(limit);
        }
        // What is scored: the leaks among the rows kept (all of them, when excluded).
        let kept: Vec<Leak> = match options.exclude_leaks {
            true => leaks,
            false => leaks
                .into_iter()
                .filter(|l| test.iter().any(|x| x.line == l.test_line))
                .collect(),
        };
        let leakage = Leakage {
            train_path: options.train_path.as_ref().map(|p| p.display().to_string()),
            exact: kept.iter().filter(|l| l.exact).count(),
            normalized: kept.iter().filter(|l| !l.exact).count(),
            excluded: options.exclude_leaks,
            leaks: kept,
        };
        if test.is_empty() {
            return Err(EvalError::BadOption {
                field: "--limit",
                reason: "no test examples left to score".into(),
            });
        }
        let kind = match &options.labels {
            Some(labels) => TaskKind::Labels {
                labels: labels.clone(),
            },
            None if train.is_empty() => TaskKind::Sequence,
            None => task::infer_kind(&train),
        };
        task::check_references(test_path, &test, &kind)?;
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
                .map_or(0, |i| i + 1);
            strategies.insert(at, Strategy::CotFew);
        }
        if strategies.contains(&Strategy::CotFew) && rationales == 0 {
            return Err(EvalError::BadOption {
                field: "--strategies cot-few",
                reason: format!(
                    "no train record has a `{}` field to show as a worked answer (--rationale-field names it)",
                    options.rationale_field
                ),
            });
        }
        let needs_train = strategies.iter().any(|s| s.shot_count(options.shots) > 0)
            || (options.tuned_shots > 0 && strategies.contains(&Strategy::Tuned));
        if needs_train && train.is_empty() {
            return Err(EvalError::BadOption {
                field: "--train",
                reason: "few-shot strategies draw shots from a train split: pass --train FILE (or leave one-shot, few-shot and hybrid out of --strategies)".into(),
            });
        }
        let metrics = options
            .metrics
            .clone()
            .unwrap_or_else(|| kind.default_metrics());
        let tuned_shape = options.tuned_shape.clone();
        let prompt_shape = PromptShape {
            template: options
                .instruction
                .clone()
                .or_else(|| tuned_shape.template.clone())
                .or_else(|| default_instruction(&kind)),
            system: options
                .system
                .clone()
                .or_else(|| tuned_shape.system.clone()),
        };
        Ok(Task {
            test_path: test_path.to_path_buf(),
            test,
            train,
            fields: fields.clone(),
            rationale_field: options.rationale_field.clone(),
            kind,
            strategies,
            metrics,
            normalization: options.normalization,
            prompt_shape,
            tuned_shape,
            tuned_shots: options.tuned_shots,
            leakage,
        })
    }
}

/// Whether two paths name one file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
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

/// A split's file: the flag's, else the adapter run's (when it is still there), else
/// `sibling` beside the test file.
pub fn split_file(
    flag: Option<&Path>,
    from_run: Option<&Path>,
    test: &Path,
    sibling: &str,
) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(p) = from_run.filter(|p| !p.as_os_str().is_empty() && p.is_file()) {
        return Some(p.to_path_buf());
    }
    let beside = test.with_file_name(sibling);
    (beside.is_file() && beside != test).then_some(beside)
}

/// Instruction wordings tried zero-shot on a valid split; the best words every prompting
/// strategy (prompting's fair shot).
#[derive(Debug, Clone)]
pub struct InstructionSweep {
    pub variants: Vec<String>,
    pub valid_path: PathBuf,
    /// Valid rows per variant.
    pub limit: usize,
    /// How the valid file's records are read (the test file's field names).
    pub fields: FieldNames,
    pub rationale_field: String,
}

/// An adapter besides the main one, loaded when the study reaches it: its model, facts and
/// how its run prompted it.
pub struct AdapterArm {
    pub model: Pretrained,
    pub facts: AdapterFacts,
    pub shape: PromptShape,
    pub shots: usize,
}

/// Loads an adapter arm from its directory (the command line knows how adapter paths
/// resolve and which weights to load).
pub type LoadArm<'a> = dyn FnMut(&Path) -> std::result::Result<AdapterArm, BoxError> + 'a;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Study<'a> {
    pub setup: CompareSetup<'a>,
    /// Chain-of-thought generates long answers: it is scored on the first N test rows.
    pub cot_limit: usize,
    pub sweep: Option<InstructionSweep>,
    /// More adapters, each scored like the tuned strategy as a row of its own.
    pub extra_adapters: Vec<PathBuf>,
    /// A learning curve: (training records, run directory), smallest first.
    pub curve: Vec<(usize, PathBuf)>,
    /// The main adapter's directory: its curve point reuses the tuned row.
    pub main_adapter: Option<PathBuf>,
    /// What the leakage guard found (`Task::leakage`).
    pub leakage: Leakage,
    /// The training seeds of the main adapter and of each extra adapter, when the extras
    /// are the same training run with other seeds: the report then gives the tuned
    /// number's spread across seeds and says whether the verdict holds on every one.
    pub training_seeds: Vec<u64>,
}

/// An adapter arm's headline (tuned or hybrid) across training seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedSpread {
    /// The arm's key (`tuned`, `hybrid`); its other seeds' rows are `<key>-2`, `<key>-3`, ...
    pub arm: String,
    pub title: String,
    pub seeds: Vec<u64>,
    pub values: Vec<f64>,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Whether every seed's adapter reaches the same verdict against the best prompting arm.
    pub verdict_holds: bool,
    pub sentence: String,
}

impl Study<'_> {
    /// Runs the study; `progress` hears one line per stage, strategy and batch.
    pub fn run(&self, load: &mut LoadArm, progress: &mut dyn FnMut(&str)) -> Result<CompareReport> {
        let mut setup = self.setup.clone();
        let mut sweep_trials = Vec::new();
        if let Some(sweep) = &self.sweep {
            let (trials, chosen) = run_sweep(&setup, sweep, progress)?;
            setup.prompt_shape.template = Some(chosen);
            sweep_trials = trials;
        }
        let (mut rows, mut notes) = self.strategy_rows(&setup, progress)?;
        let hybrid_asked = setup.strategies.contains(&Strategy::Hybrid);
        for (i, path) in self.extra_adapters.iter().enumerate() {
            progress(&format!("also: {}", path.display()));
            let arm = load(path).map_err(|e| arm_error(path, e))?;
            let seed = self.training_seeds.get(i + 1);
            let mut row = score_arm(&setup, &arm, Strategy::Tuned, progress)?;
            row.key = format!("tuned-{}", i + 2);
            row.title = match seed {
                Some(seed) => format!("fine-tuned (LoRA, training seed {seed})"),
                None => format!("fine-tuned ({})", path.display()),
            };
            rows.push(row);
            // Another training seed of the main run: its hybrid row too, with the main
            // hybrid row's first draw of shots, so the two differ by the training seed alone.
            if let (Some(seed), true) = (seed, hybrid_asked) {
                let one_draw = CompareSetup {
                    shot_draws: 1,
                    ..setup.clone()
                };
                let mut row = score_arm(&one_draw, &arm, Strategy::Hybrid, progress)?;
                row.key = format!("hybrid-{}", i + 2);
                row.title = format!("{}, training seed {seed}", row.title);
                rows.push(row);
            }
        }
        let mut learning_curve = Vec::new();
        for (n, dir) in &self.curve {
            let main = self.main_adapter.as_ref() == Some(dir);
            let tuned = rows.iter().find(|r| r.key == Strategy::Tuned.key());
            let (metric, facts) = match (tuned, &setup.adapter) {
                (Some(row), Some(facts)) if main => (row.metrics[0].clone(), facts.clone()),
                _ => {
                    progress(&format!(
                        "learning curve: {n} training records ({})",
                        dir.display()
                    ));
                    let arm = load(dir).map_err(|e| arm_error(dir, e))?;
                    let row = score_arm(&setup, &arm, Strategy::Tuned, progress)?;
                    (row.metrics[0].clone(), arm.facts)
                }
            };
            learning_curve.push(CurvePoint {
                adapter: dir.display().to_string(),
                train_examples: if facts.train_examples > 0 {
                    facts.train_examples
                } else {
                    *n
                },
                steps: facts.steps,
                train_seconds: facts.train_seconds,
                metric,
            });
        }
        if self.cot_limit < setup.test.len() {
            for row in rows
                .iter()
                .filter(|r| r.predictions.len() < setup.test.len())
            {
                notes.push(format!(
                    "{} was scored on the first {} of {} examples (--cot-limit), so its interval is wider",
                    row.key,
                    row.predictions.len(),
                    setup.test.len()
                ));
            }
        }
        // Last, over every row: the baseline, the differences and the recommendation.
        let mut report = compare::summarize(&setup, rows, notes)?;
        report.instruction_sweep = sweep_trials;
        report.sweep_path = self
            .sweep
            .as_ref()
            .map(|s| s.valid_path.display().to_string());
        report.learning_curve = learning_curve;
        let leaked = self.leakage.exact + self.leakage.normalized;
        if leaked > 0 && !self.leakage.excluded && report.rows.iter().any(|r| r.uses_adapter) {
            report.recommendation.push_str(&format!(
                " Caution: {leaked} test inputs also appear in the train split; if the adapter trained on them, its number is inflated (--exclude-leaks scores without them)."
            ));
        }
        report.leakage = self.leakage.clone();
        if self.training_seeds.len() > 1 {
            report.seed_spreads = [Strategy::Tuned, Strategy::Hybrid]
                .iter()
                .filter_map(|s| seed_spread(&report, s.key(), &self.training_seeds))
                .collect();
            if let Some(tuned) = report.seed_spreads.first().filter(|s| s.arm == "tuned") {
                report.recommendation.push(' ');
                report.recommendation.push_str(&tuned.sentence);
            }
        }
        Ok(report)
    }

    /// Every strategy of the setup in the order asked, chain-of-thought on the first
    /// `cot_limit` rows only.
    fn strategy_rows(
        &self,
        setup: &CompareSetup,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(Vec<StrategyRow>, Vec<String>)> {
        let (mut cot, rest): (Vec<Strategy>, Vec<Strategy>) =
            setup.strategies.iter().partition(|s| s.chain_of_thought());
        let mut notes = Vec::new();
        if self.cot_limit == 0 && !cot.is_empty() {
            notes.push("--cot-limit 0: chain-of-thought left out".to_string());
            cot.clear();
        }
        let main = CompareSetup {
            strategies: rest,
            ..setup.clone()
        };
        let (mut rows, mut main_notes) = compare::score_strategies(&main, progress)?;
        notes.append(&mut main_notes);
        if cot.is_empty() {
            return Ok((rows, notes));
        }
        let n = setup.test.len().min(self.cot_limit);
        let on_prefix = CompareSetup {
            strategies: cot,
            test: &setup.test[..n],
            ..setup.clone()
        };
        let (cot_rows, mut cot_notes) = compare::score_strategies(&on_prefix, progress)?;
        notes.append(&mut cot_notes);
        for mut row in cot_rows {
            if n < setup.test.len() {
                row.title = format!("{} (first {n} examples)", row.title);
            }
            // Keep the strategies' order as asked.
            let at = setup
                .strategies
                .iter()
                .position(|s| s.key() == row.key)
                .unwrap_or(rows.len())
                .min(rows.len());
            rows.insert(at, row);
        }
        Ok((rows, notes))
    }
}

/// The rows of arm `arm` for every training seed (`tuned`, `tuned-2`, ...), their spread,
/// and whether each reaches the same verdict against the best prompting arm: a significant
/// win, a significant loss, or neither (by the Holm-adjusted McNemar test where the report
/// has one, else by which side of the best prompt the seed lands).
fn seed_spread(report: &CompareReport, arm: &str, seeds: &[u64]) -> Option<SeedSpread> {
    let keys: Vec<String> = std::iter::once(arm.to_string())
        .chain((2..=seeds.len()).map(|i| format!("{arm}-{i}")))
        .collect();
    let rows: Vec<&StrategyRow> = keys
        .iter()
        .filter_map(|k| report.rows.iter().find(|r| &r.key == k))
        .collect();
    if rows.len() != seeds.len() {
        return None;
    }
    let best = compare::best_prompting(&report.rows, report.examples)?;
    let metric = best.headline().metric;
    let verdict = |row: &StrategyRow| -> i8 {
        match report.tests.iter().find(|t| t.arm == row.key) {
            Some(t) if t.p_holm < 0.05 => {
                if t.only_arm > t.only_against {
                    1
                } else {
                    -1
                }
            }
            Some(_) => 0,
            None => {
                let (v, b) = (
                    row.headline().estimate.value,
                    best.headline().estimate.value,
                );
                if metric.better(v, b) {
                    1
                } else if metric.better(b, v) {
                    -1
                } else {
                    0
                }
            }
        }
    };
    let verdicts: Vec<i8> = rows.iter().map(|r| verdict(r)).collect();
    let verdict_holds = verdicts.iter().all(|&v| v == verdicts[0]);
    let values: Vec<f64> = rows.iter().map(|r| r.headline().estimate.value).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let (min, max) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let listed: Vec<String> = seeds
        .iter()
        .zip(&values)
        .map(|(s, v)| format!("{v:.3} (seed {s})"))
        .collect();
    let word = |v: i8| match v {
        1 => "beats",
        -1 => "loses to",
        _ => "cannot be told apart from",
    };
    let who = match arm {
        "tuned" => "the adapter".to_string(),
        _ => rows[0].title.clone(),
    };
    let sentence = if verdict_holds {
        format!(
            "Across {} training seeds {who} scored {} (mean {mean:.3}, range {min:.3} to {max:.3}) and {} {} on every seed: the verdict holds across seeds.",
            seeds.len(),
            listed.join(", "),
            word(verdicts[0]),
            best.title
        )
    } else {
        format!(
            "Across {} training seeds {who} scored {} (mean {mean:.3}, range {min:.3} to {max:.3}), and the seeds disagree on whether it beats {}: the verdict does not hold across seeds.",
            seeds.len(),
            listed.join(", "),
            best.title
        )
    };
    Some(SeedSpread {
        arm: arm.to_string(),
        title: rows[0].title.clone(),
        seeds: seeds.to_vec(),
        values,
        mean,
        min,
        max,
        verdict_holds,
        sentence,
    })
}

/// The instruction variants scored zero-shot on the valid split, and the chosen wording.
fn run_sweep(
    setup: &CompareSetup,
    sweep: &InstructionSweep,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<InstructionTrial>, String)> {
    let mut valid = task::load_examples(&sweep.valid_path, &sweep.fields, &sweep.rationale_field)?;
    valid.truncate(sweep.limit);
    task::check_references(&sweep.valid_path, &valid, &setup.kind)?;
    let headline = setup.metrics[0];
    let mut trials: Vec<InstructionTrial> = Vec::new();
    let mut best: Option<(usize, f64)> = None;
    for (i, template) in sweep.variants.iter().enumerate() {
        progress(&format!(
            "instruction {}/{}: {:?}",
            i + 1,
            sweep.variants.len(),
            crate::report::short(template, 70)
        ));
        let trial = CompareSetup {
            tuned: None,
            test_path: &sweep.valid_path,
            test: &valid,
            strategies: vec![Strategy::Zero],
            shots: 0,
            prompt_shape: PromptShape {
                template: Some(template.clone()),
                system: setup.prompt_shape.system.clone(),
            },
            adapter: None,
            samples: 0,
            ..setup.clone()
        };
        let (mut rows, _) = compare::score_strategies(&trial, &mut |_| {})?;
        let metric = rows.remove(0).metrics.remove(0);
        let value = metric.estimate.value;
        if best.is_none_or(|(_, b)| headline.better(value, b)) {
            best = Some((i, value));
        }
        trials.push(InstructionTrial {
            template: template.clone(),
            metric,
            chosen: false,
        });
    }
    let (chosen, _) = best.ok_or_else(|| EvalError::BadOption {
        field: "--instructions",
        reason: "no instruction variants".into(),
    })?;
    trials[chosen].chosen = true;
    Ok((trials, sweep.variants[chosen].clone()))
}

/// An extra adapter scored by `strategy` (tuned or hybrid), prompted as its own run was
/// trained.
fn score_arm(
    setup: &CompareSetup,
    arm: &AdapterArm,
    strategy: Strategy,
    progress: &mut dyn FnMut(&str),
) -> Result<StrategyRow> {
    let one = CompareSetup {
        tuned: Some(&arm.model),
        strategies: vec![strategy],
        tuned_shape: arm.shape.clone(),
        tuned_shots: arm.shots,
        adapter: Some(arm.facts.clone()),
        samples: 0,
        ..setup.clone()
    };
    let (mut rows, _) = compare::score_strategies(&one, progress)?;
    Ok(rows.remove(0))
}

fn arm_error(path: &Path, source: BoxError) -> EvalError {
    EvalError::Adapter {
        path: path.display().to_string(),
        source,
    }
}
