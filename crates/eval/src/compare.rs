//! `tuna compare`: every strategy on the same test examples, scored with the same metrics and
//! intervals, plus the majority-class baseline, paired differences and a recommendation
//! derived from the numbers.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tuna_model::Pretrained;

use crate::error::Result;
use crate::metrics::{
    bootstrap, distribution, normalize, paired_difference, Estimate, Metric, Normalization,
};
use crate::scoring::{rank_batches, PromptEncoder, Scorer, RANK_BATCH_TOKENS};
use crate::significance;
use crate::strategy::{draw_shots, extract_answer, messages, PromptShape, Strategy};
use crate::task::{label_index, label_prior, majority_label, TaskExample, TaskKind};

/// Tokens generated per answer at most, when answers are generated.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 48;
/// The same for chain-of-thought, whose answers reason first.
pub const DEFAULT_COT_MAX_NEW_TOKENS: usize = 160;
/// Prompts generated together.
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// How label tasks are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Rank the labels by the log-likelihood of each as the answer (deterministic).
    Rank,
    /// Generate greedily, then find the label in the text.
    Generate,
}

/// What the run directory tells about the adapter, for the table's cost columns.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdapterFacts {
    pub path: String,
    pub parameters: usize,
    pub bytes: u64,
    pub train_examples: usize,
    pub steps: usize,
    pub train_seconds: f64,
    pub cpu_seconds: Option<f64>,
}

#[derive(Clone)]
pub struct CompareSetup<'a> {
    pub base: &'a Pretrained,
    pub tuned: Option<&'a Pretrained>,
    pub test_path: &'a Path,
    pub test: &'a [TaskExample],
    pub train: &'a [TaskExample],
    pub kind: TaskKind,
    pub strategies: Vec<Strategy>,
    pub shots: usize,
    /// Seeded draws of shots per strategy that shows shots (the first, with `seed`, is
    /// the row; the others give the spread shot choice alone causes).
    pub shot_draws: usize,
    /// Shots the adapter was trained with in each prompt (`tuna train --train-shots`): the
    /// tuned strategy is prompted with as many.
    pub tuned_shots: usize,
    pub seed: u64,
    /// The wording prompting strategies use, and the adapter's training wording.
    pub prompt_shape: PromptShape,
    pub tuned_shape: PromptShape,
    pub method: Method,
    pub metrics: Vec<Metric>,
    /// How answers are compared with references.
    pub normalization: Normalization,
    pub max_new_tokens: usize,
    pub cot_max_new_tokens: usize,
    /// Prompts generated together (left-padded into one batch).
    pub batch_size: usize,
    pub adapter: Option<AdapterFacts>,
    /// Side-by-side rows in the report.
    pub samples: usize,
    /// Where scored strategies are kept and found again (None: score everything).
    pub cache: Option<&'a crate::score_cache::ScoreCache>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricValue {
    pub metric: Metric,
    /// The metric's name (`Metric::name`; not read back).
    #[serde(skip_deserializing)]
    pub name: &'static str,
    #[serde(flatten)]
    pub estimate: Estimate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StrategyRow {
    pub key: String,
    pub title: String,
    pub uses_adapter: bool,
    /// The adapter this row ran with (its cost columns).
    pub adapter: Option<AdapterFacts>,
    /// Examples the strategy needs: shots in the prompt, or the adapter's training set.
    pub examples_used: usize,
    pub method: String,
    pub metrics: Vec<MetricValue>,
    /// Predictions, most frequent first.
    pub distribution: Vec<(String, usize)>,
    /// Share of rows given the most frequent prediction.
    pub dominant_share: f64,
    /// One label on most rows (more than 80%) while the references are not like that.
    pub collapsed: bool,
    /// Mean −log p(reference) with the label likelihoods normalized over the label set.
    pub label_nll: Option<f64>,
    pub prompt_tokens_per_example: f64,
    pub generated_tokens_per_example: f64,
    pub seconds: f64,
    pub seconds_per_1k: f64,
    /// CPU-seconds (all threads) per 1k examples, where the process's CPU time is known.
    pub cpu_seconds_per_1k: Option<f64>,
    /// Every seeded draw of shots, the row's own first (strategies with shots only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shot_draws: Vec<ShotDraw>,
    pub predictions: Vec<String>,
}

/// One draw of shots and the headline metric it scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShotDraw {
    pub seed: u64,
    /// The shots' line numbers in the train file, in prompt order.
    pub shot_lines: Vec<usize>,
    pub value: f64,
}

impl StrategyRow {
    pub fn headline(&self) -> &MetricValue {
        &self.metrics[0]
    }

    /// The lowest and highest headline value over the shot draws, when there are several.
    pub fn draw_range(&self) -> Option<(f64, f64)> {
        (self.shot_draws.len() > 1).then(|| {
            self.shot_draws
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), d| {
                    (lo.min(d.value), hi.max(d.value))
                })
        })
    }
}

/// The seed of shot draw `d`: the setup's own for the first.
fn draw_seed(seed: u64, d: usize) -> u64 {
    seed.wrapping_add((d as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub metric: &'static str,
    /// a − b with a paired bootstrap interval.
    pub difference: Estimate,
}

/// One arm against the best prompting arm on the same rows, by the rows each gets right:
/// the exact McNemar test, Holm-adjusted across every arm so tested, and the smallest
/// difference these rows could detect. Only where the headline is right-or-wrong per row
/// (accuracy, exact match).
#[derive(Debug, Clone, Serialize)]
pub struct ArmTest {
    pub arm: String,
    pub against: String,
    /// Rows only the arm gets right, and rows only the other one does.
    pub only_arm: usize,
    pub only_against: usize,
    pub p: f64,
    pub p_holm: f64,
    /// The accuracy difference these rows detect with 80% power at α = 0.05, given how
    /// often the two arms disagree.
    pub detectable: f64,
}

/// When the adapter's training pays for itself against the best prompting arm, from the
/// seconds per query measured on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct Payback {
    pub against: String,
    #[serde(flatten)]
    pub break_even: significance::BreakEven,
    pub training_cpu_s: Option<f64>,
    /// The same in CPU-seconds (all threads), where both sides' CPU time is known.
    pub cpu_break_even: Option<significance::BreakEven>,
    /// Prompt tokens per 1k queries, tuned and prompted.
    pub tuned_prompt_tokens_per_1k: f64,
    pub prompt_prompt_tokens_per_1k: f64,
}

impl Payback {
    pub fn sentence(&self) -> String {
        let b = &self.break_even;
        let mut out = match b.queries {
            Some(q) => format!(
                "At the speeds measured here ({:.3} s a query for {}, {:.3} s tuned), the {:.0} s of training pay for themselves after {q:.0} queries",
                b.prompt_s_per_query, self.against, b.tuned_s_per_query, b.training_s
            ),
            None => format!(
                "Tuned queries are no faster here than {}'s ({:.3} s against {:.3} s), so the {:.0} s of training are not repaid in query time",
                self.against, b.tuned_s_per_query, b.prompt_s_per_query, b.training_s
            ),
        };
        if let Some(c) = &self.cpu_break_even {
            out.push_str(&format!(
                "; in CPU time, {:.0} CPU-s of training against {:.0} CPU-s per 1k queries tuned and {:.0} prompted, {}",
                c.training_s,
                c.tuned_s_per_query * 1000.0,
                c.prompt_s_per_query * 1000.0,
                match c.queries {
                    Some(q) => format!("repaid after {q:.0} queries"),
                    None => "never repaid".to_string(),
                }
            ));
        }
        out.push_str(&format!(
            "; per 1k queries the adapter sends {:.0}k prompt tokens against {:.0}k.",
            self.tuned_prompt_tokens_per_1k / 1000.0,
            self.prompt_prompt_tokens_per_1k / 1000.0
        ));
        out
    }
}

/// Rows one arm gets right and another wrong, both ways, with the first few of each.
#[derive(Debug, Clone, Serialize)]
pub struct Flips {
    pub a: String,
    pub b: String,
    /// Right under a, wrong under b; and the reverse.
    pub a_only: usize,
    pub b_only: usize,
    pub a_only_rows: Vec<FlipRow>,
    pub b_only_rows: Vec<FlipRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlipRow {
    pub line: usize,
    pub input: String,
    pub reference: String,
    pub a: String,
    pub b: String,
}

/// Examples of each flip direction in the report.
const FLIP_EXAMPLES: usize = 3;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub line: usize,
    pub input: String,
    pub reference: String,
    /// (strategy key, prediction)
    pub predictions: Vec<(String, String)>,
}

/// One instruction wording tried zero-shot on the valid split.
#[derive(Debug, Clone, Serialize)]
pub struct InstructionTrial {
    pub template: String,
    pub metric: MetricValue,
    pub chosen: bool,
}

/// The adapter trained on one data size, scored like the tuned strategy.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub adapter: String,
    pub train_examples: usize,
    pub steps: usize,
    pub train_seconds: f64,
    pub metric: MetricValue,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub model: String,
    pub test_path: String,
    pub examples: usize,
    pub train_examples: usize,
    pub task: TaskKind,
    pub seed: u64,
    pub shots: usize,
    pub normalization: Normalization,
    pub prompt_shape: PromptShape,
    pub tuned_shape: PromptShape,
    pub adapter: Option<AdapterFacts>,
    pub rows: Vec<StrategyRow>,
    pub baseline: Option<StrategyRow>,
    /// The prior-only floor: −log of the train split's frequency of each test reference,
    /// averaged (what a model that knows only the label frequencies scores).
    pub prior_floor_nll: Option<f64>,
    pub comparisons: Vec<Comparison>,
    /// Every arm scored on all rows against the best prompting arm (label tasks).
    pub tests: Vec<ArmTest>,
    /// tuned vs the best prompting arm, and hybrid vs tuned.
    pub flips: Vec<Flips>,
    /// When tuning pays for itself against the best prompting arm.
    pub payback: Option<Payback>,
    /// The tuned and hybrid arms across training seeds (set by a study with several seeds).
    pub seed_spreads: Vec<crate::study::SeedSpread>,
    /// Test inputs the train split also holds (set by the study).
    pub leakage: crate::study::Leakage,
    /// What produced the report (set by the command that writes it).
    pub provenance: crate::provenance::Provenance,
    pub recommendation: String,
    pub samples: Vec<Sample>,
    pub notes: Vec<String>,
    /// Adapters trained on nested subsets of the train split (`tuna train --train-sizes`),
    /// smallest first.
    pub learning_curve: Vec<CurvePoint>,
    /// The instruction variants swept on the valid split (`--instructions`); the chosen one
    /// words every prompting strategy.
    pub instruction_sweep: Vec<InstructionTrial>,
    pub sweep_path: Option<String>,
}

/// Runs every strategy of `setup` and summarizes them; `progress` hears one line per
/// strategy and example batch.
pub fn run(setup: &CompareSetup, progress: &mut dyn FnMut(&str)) -> Result<CompareReport> {
    let (rows, notes) = score_strategies(setup, progress)?;
    summarize(setup, rows, notes)
}

/// The best prompting row: the best headline value among the rows without an adapter that
/// were scored on all `examples` test rows (chain-of-thought on a prefix, --cot-limit, is
/// another test set). The one rule the recommendation and the report both use.
pub fn best_prompting(rows: &[StrategyRow], examples: usize) -> Option<&StrategyRow> {
    rows.iter()
        .filter(|r| !r.uses_adapter && r.predictions.len() == examples)
        .fold(None::<&StrategyRow>, |best, r| match best {
            Some(b)
                if !r
                    .headline()
                    .metric
                    .better(r.headline().estimate.value, b.headline().estimate.value) =>
            {
                Some(b)
            }
            _ => Some(r),
        })
}

/// One row per strategy of `setup` (those needing an adapter are skipped, with a note, when
/// there is none), in order.
pub fn score_strategies(
    setup: &CompareSetup,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<StrategyRow>, Vec<String>)> {
    let labels = setup.kind.labels().to_vec();
    let mut notes = Vec::new();
    let mut rows = Vec::new();
    for &strategy in &setup.strategies {
        let model = if strategy.uses_adapter() {
            match setup.tuned {
                Some(m) => m,
                None => {
                    notes.push(format!(
                        "{} skipped: no --adapter was given",
                        strategy.title(setup.shots)
                    ));
                    continue;
                }
            }
        } else {
            setup.base
        };
        let key = match setup.cache {
            Some(cache) => cache.key(setup, strategy)?,
            None => None,
        };
        let kept = key
            .as_ref()
            .zip(setup.cache)
            .and_then(|(key, cache)| cache.get(key));
        if let Some(row) = kept {
            progress(&format!("{}: scored before, kept", row.title));
            rows.push(row);
            continue;
        }
        let row = run_strategy(setup, strategy, model, &labels, progress)?;
        if let (Some(key), Some(cache)) = (&key, setup.cache) {
            // A row that cannot be kept is still a result: say so and go on.
            if let Err(e) = cache.put(key, &row) {
                progress(&format!(
                    "warning: {e} (the row is kept in this report only)"
                ));
            }
        }
        rows.push(row);
    }
    Ok((rows, notes))
}

/// The report over `rows` (every row the study scored, whatever their source): the
/// majority baseline, the prior-only floor, the paired differences, the side-by-side
/// samples and, last, the recommendation.
pub fn summarize(
    setup: &CompareSetup,
    rows: Vec<StrategyRow>,
    notes: Vec<String>,
) -> Result<CompareReport> {
    let labels = setup.kind.labels().to_vec();
    let pairs_of = |predictions: &[String]| -> Vec<(String, String)> {
        predictions
            .iter()
            .cloned()
            .zip(setup.test.iter().map(|x| x.reference.trim().to_string()))
            .collect()
    };

    let baseline = match (&setup.kind, majority_label(setup.train, &labels)) {
        (TaskKind::Labels { .. }, Some(majority)) => {
            let predictions = vec![majority.clone(); setup.test.len()];
            Some(row_from_predictions(
                setup,
                "majority",
                format!("majority class (\"{majority}\")"),
                false,
                setup.train.len(),
                "constant",
                predictions,
                None,
                Default::default(),
                &labels,
            ))
        }
        _ => None,
    };
    let prior_floor_nll = (!labels.is_empty() && !setup.train.is_empty()).then(|| {
        let prior = label_prior(setup.train, &labels);
        let total: f64 = setup
            .test
            .iter()
            .map(|x| {
                let i = label_index(&labels, &x.reference).unwrap_or(0);
                -(prior[i].max(1e-9)).ln()
            })
            .sum();
        total / setup.test.len() as f64
    });

    let headline = setup.metrics[0];
    let best_prompting = best_prompting(&rows, setup.test.len());
    let tuned = rows.iter().find(|r| r.key == Strategy::Tuned.key());
    let hybrid = rows.iter().find(|r| r.key == Strategy::Hybrid.key());
    let mut comparisons = Vec::new();
    let mut compare = |a: &StrategyRow, b: &StrategyRow| {
        let d = paired_difference(
            headline,
            &pairs_of(&a.predictions),
            &pairs_of(&b.predictions),
            &labels,
            setup.normalization,
            setup.seed ^ 0x5eed,
        );
        comparisons.push(Comparison {
            a: a.key.clone(),
            b: b.key.clone(),
            metric: headline.name(),
            difference: d,
        });
        d
    };
    let tuned_vs_prompt = match (tuned, best_prompting) {
        (Some(t), Some(p)) => Some(compare(t, p)),
        _ => None,
    };
    if let (Some(h), Some(t)) = (hybrid, tuned) {
        compare(h, t);
    }
    let n = setup.test.len();
    let right = |r: &StrategyRow| -> Vec<bool> {
        let norm = setup.normalization;
        r.predictions
            .iter()
            .zip(setup.test)
            .map(|(p, x)| norm.apply(p) == norm.apply(&x.reference))
            .collect()
    };
    let tests = match best_prompting {
        Some(best) if matches!(headline, Metric::Accuracy | Metric::ExactMatch) => {
            arm_tests(&rows, best, n, &right)
        }
        _ => Vec::new(),
    };
    let mut flips = Vec::new();
    for (a, b) in [(tuned, best_prompting), (hybrid, tuned)] {
        if let (Some(a), Some(b)) = (a, b) {
            flips.push(flips_between(a, b, setup.test, &right(a), &right(b)));
        }
    }
    let tuned_test = tests.iter().find(|t| t.arm == Strategy::Tuned.key());
    let payback = match (tuned, best_prompting, &setup.adapter) {
        (Some(t), Some(p), Some(a)) if a.train_seconds > 0.0 => Some(Payback {
            against: p.title.clone(),
            break_even: significance::break_even(
                a.train_seconds,
                t.seconds_per_1k / 1000.0,
                p.seconds_per_1k / 1000.0,
            ),
            training_cpu_s: a.cpu_seconds,
            cpu_break_even: match (a.cpu_seconds, t.cpu_seconds_per_1k, p.cpu_seconds_per_1k) {
                (Some(train), Some(tuned), Some(prompt)) => Some(significance::break_even(
                    train,
                    tuned / 1000.0,
                    prompt / 1000.0,
                )),
                _ => None,
            },
            tuned_prompt_tokens_per_1k: t.prompt_tokens_per_example * 1000.0,
            prompt_prompt_tokens_per_1k: p.prompt_tokens_per_example * 1000.0,
        }),
        _ => None,
    };
    let recommendation = recommend(
        headline,
        best_prompting,
        tuned,
        tuned_test,
        payback.as_ref(),
        hybrid,
        baseline.as_ref(),
        tuned_vs_prompt,
        prior_floor_nll,
        setup.adapter.as_ref(),
        setup.tuned_shots,
    );

    let samples = setup
        .test
        .iter()
        .enumerate()
        .take(setup.samples)
        .map(|(i, x)| Sample {
            line: x.line,
            input: x.input().to_string(),
            reference: x.reference.trim().to_string(),
            // A row scored on a prefix of the test set has no prediction past it.
            predictions: rows
                .iter()
                .map(|r| {
                    let p = r.predictions.get(i).cloned();
                    (r.key.clone(), p.unwrap_or_else(|| "—".into()))
                })
                .collect(),
        })
        .collect();
    Ok(CompareReport {
        model: setup.base.source.path().display().to_string(),
        test_path: setup.test_path.display().to_string(),
        examples: setup.test.len(),
        train_examples: setup.train.len(),
        task: setup.kind.clone(),
        seed: setup.seed,
        shots: setup.shots,
        normalization: setup.normalization,
        prompt_shape: setup.prompt_shape.clone(),
        tuned_shape: setup.tuned_shape.clone(),
        adapter: setup.adapter.clone(),
        rows,
        baseline,
        prior_floor_nll,
        comparisons,
        tests,
        flips,
        payback,
        seed_spreads: Vec::new(),
        leakage: Default::default(),
        provenance: Default::default(),
        recommendation,
        samples,
        notes,
        learning_curve: Vec::new(),
        instruction_sweep: Vec::new(),
        sweep_path: None,
    })
}

fn run_strategy(
    setup: &CompareSetup,
    strategy: Strategy,
    model: &Pretrained,
    labels: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<StrategyRow> {
    // Chain-of-thought shots come from the examples that have a rationale.
    let with_rationale: Vec<TaskExample>;
    let pool = if strategy == Strategy::CotFew {
        with_rationale = setup
            .train
            .iter()
            .filter(|x| x.rationale.is_some())
            .cloned()
            .collect();
        &with_rationale[..]
    } else {
        setup.train
    };
    let k = match strategy {
        Strategy::Tuned => setup.tuned_shots,
        _ => strategy.shot_count(setup.shots),
    };
    let draws = if k > 0 { setup.shot_draws.max(1) } else { 1 };
    let mut row = None;
    let mut shot_draws = Vec::new();
    // A draw that repeats an earlier one's shots (in another order) is passed over: a small
    // pool has few sets to offer.
    let mut seen: Vec<Vec<usize>> = Vec::new();
    for attempt in 0..draws * 4 {
        if seen.len() == draws {
            break;
        }
        let seed = draw_seed(setup.seed, attempt);
        let shots = draw_shots(pool, k, labels, seed);
        let mut set: Vec<usize> = shots.iter().map(|x| x.line).collect();
        set.sort_unstable();
        if seen.contains(&set) {
            continue;
        }
        seen.push(set);
        let d = seen.len() - 1;
        // Few-shot rows name the shots they really got (a small train split may have fewer).
        let mut title = match strategy {
            Strategy::Tuned if k > 0 => format!("fine-tuned (LoRA, k={} as trained)", shots.len()),
            _ => strategy.title(shots.len().max(k.min(1))),
        };
        if d > 0 {
            title = format!("{title}, shot draw {}/{draws}", d + 1);
        }
        let scored = score(setup, strategy, model, labels, &shots, &title, progress)?;
        let examples_used = if strategy.uses_adapter() {
            setup.adapter.as_ref().map_or(0, |a| a.train_examples) + shots.len()
        } else {
            shots.len()
        };
        let this = row_from_predictions(
            setup,
            strategy.key(),
            title,
            strategy.uses_adapter(),
            examples_used,
            scored.method,
            scored.predictions,
            scored.label_nll,
            scored.usage,
            labels,
        );
        if k > 0 {
            shot_draws.push(ShotDraw {
                seed,
                shot_lines: shots.iter().map(|x| x.line).collect(),
                value: this.headline().estimate.value,
            });
        }
        row.get_or_insert(this);
    }
    let mut row = row.expect("at least one draw");
    row.shot_draws = shot_draws;
    Ok(row)
}

/// One strategy's predictions with one set of shots.
struct Scored {
    predictions: Vec<String>,
    label_nll: Option<f64>,
    usage: crate::scoring::Usage,
    method: &'static str,
}

fn score(
    setup: &CompareSetup,
    strategy: Strategy,
    model: &Pretrained,
    labels: &[String],
    shots: &[&TaskExample],
    title: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Scored> {
    let options = PromptEncoder::options(model);
    let encoder = PromptEncoder::new(model, &options, setup.test_path)?;
    let shape = if strategy.uses_adapter() {
        &setup.tuned_shape
    } else {
        &setup.prompt_shape
    };
    let cot = strategy.chain_of_thought();
    let rank = !labels.is_empty() && setup.method == Method::Rank && !cot;
    let mut scorer = Scorer::new(model);
    let mut predictions = Vec::with_capacity(setup.test.len());
    let mut nll = 0f64;
    // Reports after every 50th example and the last (batches may step over a multiple).
    let mut reported = 0;
    let mut report = |done: usize, seconds: f64, progress: &mut dyn FnMut(&str)| {
        if done / 50 > reported / 50 || done == setup.test.len() {
            reported = done;
            progress(&format!(
                "{title}: {done}/{} examples, {seconds:.1} s",
                setup.test.len()
            ));
        }
    };
    if rank {
        let encoded = setup
            .test
            .iter()
            .map(|x| encoder.with_answers(x.line, &messages(shape, shots, x, false), labels))
            .collect::<Result<Vec<_>>>()?;
        let mut done = 0;
        for batch in rank_batches(&encoded, RANK_BATCH_TOKENS) {
            for scores in scorer.rank_rows(batch)? {
                let x = &setup.test[done];
                let best = (0..scores.len())
                    .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                    .unwrap_or(0);
                predictions.push(labels[best].clone());
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
                let r = label_index(labels, &x.reference).unwrap_or(0);
                nll += lse - scores[r];
                done += 1;
            }
            report(done, scorer.usage.seconds, progress);
        }
    } else {
        let max_new = if cot {
            setup.cot_max_new_tokens
        } else {
            setup.max_new_tokens
        };
        for chunk in setup.test.chunks(setup.batch_size.max(1)) {
            let prompts = chunk
                .iter()
                .map(|x| encoder.prompt(&messages(shape, shots, x, cot)))
                .collect::<Result<Vec<_>>>()?;
            for out in scorer.greedy_batch(&prompts, max_new)? {
                let text = model.tokenizer.decode(&out, true)?;
                predictions.push(extract_answer(&text, labels, cot));
                report(predictions.len(), scorer.usage.seconds, progress);
            }
        }
    }
    Ok(Scored {
        predictions,
        label_nll: rank.then(|| nll / setup.test.len() as f64),
        usage: scorer.usage,
        method: if rank {
            "rank labels by log-likelihood"
        } else if cot {
            "generate (chain of thought), extract the answer"
        } else {
            "generate greedily, parse"
        },
    })
}

#[allow(clippy::too_many_arguments)]
fn row_from_predictions(
    setup: &CompareSetup,
    key: &str,
    title: String,
    uses_adapter: bool,
    examples_used: usize,
    method: &str,
    predictions: Vec<String>,
    label_nll: Option<f64>,
    usage: crate::scoring::Usage,
    labels: &[String],
) -> StrategyRow {
    let pairs: Vec<(String, String)> = predictions
        .iter()
        .cloned()
        .zip(setup.test.iter().map(|x| x.reference.trim().to_string()))
        .collect();
    let metrics = setup
        .metrics
        .iter()
        .map(|&metric| MetricValue {
            metric,
            name: metric.name(),
            estimate: bootstrap(metric, &pairs, labels, setup.normalization, setup.seed),
        })
        .collect();
    let n = setup.test.len().max(1) as f64;
    let dist = distribution(predictions.iter().map(|p| normalize(p)));
    let dominant_share = dist.first().map_or(0.0, |d| d.1 as f64 / n);
    let reference_share = distribution(setup.test.iter().map(|x| normalize(&x.reference)))
        .first()
        .map_or(0.0, |d| d.1 as f64 / n);
    StrategyRow {
        key: key.to_string(),
        title,
        uses_adapter,
        adapter: setup.adapter.clone().filter(|_| uses_adapter),
        examples_used,
        method: method.to_string(),
        metrics,
        distribution: dist,
        dominant_share,
        collapsed: !labels.is_empty()
            && labels.len() > 1
            && dominant_share > 0.8
            && reference_share < 0.8,
        label_nll,
        prompt_tokens_per_example: usage.prompt_tokens as f64 / n,
        generated_tokens_per_example: usage.generated_tokens as f64 / n,
        seconds: usage.seconds,
        seconds_per_1k: usage.seconds / n * 1000.0,
        cpu_seconds_per_1k: (usage.cpu_seconds > 0.0).then(|| usage.cpu_seconds / n * 1000.0),
        shot_draws: Vec::new(),
        predictions,
    }
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Points, for metrics in [0, 1]: "0.312" -> "31.2 points".
fn points(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// Every arm scored on all rows, except `best` itself, against `best`.
fn arm_tests(
    rows: &[StrategyRow],
    best: &StrategyRow,
    n: usize,
    right: &dyn Fn(&StrategyRow) -> Vec<bool>,
) -> Vec<ArmTest> {
    let best_right = right(best);
    let mut tests: Vec<ArmTest> = rows
        .iter()
        .filter(|r| r.key != best.key && r.predictions.len() == n)
        .map(|r| {
            let arm_right = right(r);
            let count = |f: &dyn Fn(bool, bool) -> bool| {
                arm_right
                    .iter()
                    .zip(&best_right)
                    .filter(|(&a, &b)| f(a, b))
                    .count()
            };
            let (only_arm, only_against) = (count(&|a, b| a && !b), count(&|a, b| !a && b));
            let discordant = (only_arm + only_against) as f64 / n.max(1) as f64;
            ArmTest {
                arm: r.key.clone(),
                against: best.key.clone(),
                only_arm,
                only_against,
                p: significance::mcnemar_exact(only_arm as u64, only_against as u64),
                p_holm: f64::NAN,
                detectable: significance::minimum_detectable_difference(n, discordant, 0.05, 0.8),
            }
        })
        .collect();
    let adjusted = significance::holm(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
    for (t, p) in tests.iter_mut().zip(adjusted) {
        t.p_holm = p;
    }
    tests
}

fn flips_between(
    a: &StrategyRow,
    b: &StrategyRow,
    test: &[TaskExample],
    a_right: &[bool],
    b_right: &[bool],
) -> Flips {
    let rows = |want_a: bool| -> (usize, Vec<FlipRow>) {
        let hits: Vec<usize> = (0..a_right.len().min(b_right.len()))
            .filter(|&i| a_right[i] == want_a && b_right[i] != want_a)
            .collect();
        let examples = hits
            .iter()
            .take(FLIP_EXAMPLES)
            .map(|&i| FlipRow {
                line: test[i].line,
                input: test[i].input().to_string(),
                reference: test[i].reference.trim().to_string(),
                a: a.predictions[i].clone(),
                b: b.predictions[i].clone(),
            })
            .collect();
        (hits.len(), examples)
    };
    let (a_only, a_only_rows) = rows(true);
    let (b_only, b_only_rows) = rows(false);
    Flips {
        a: a.key.clone(),
        b: b.key.clone(),
        a_only,
        b_only,
        a_only_rows,
        b_only_rows,
    }
}

#[allow(clippy::too_many_arguments)]
fn recommend(
    metric: Metric,
    best_prompting: Option<&StrategyRow>,
    tuned: Option<&StrategyRow>,
    tuned_test: Option<&ArmTest>,
    payback: Option<&Payback>,
    hybrid: Option<&StrategyRow>,
    baseline: Option<&StrategyRow>,
    tuned_vs_prompt: Option<Estimate>,
    prior_floor: Option<f64>,
    adapter: Option<&AdapterFacts>,
    tuned_shots: usize,
) -> String {
    let mut out = Vec::new();
    let name = metric.name();
    match (best_prompting, tuned, tuned_vs_prompt) {
        (Some(p), Some(t), Some(d)) => {
            // Right-or-wrong rows: the exact McNemar test, Holm-adjusted over every arm
            // compared with the best prompt; other metrics: the paired bootstrap interval.
            let significant = match tuned_test {
                Some(test) => test.p_holm < 0.05,
                None => d.low > 0.0 || d.high < 0.0,
            };
            let tuned_better = metric.better(d.value, 0.0);
            let cost = adapter.map_or(String::new(), |a| {
                format!(
                    " after {:.0} s of training on {} examples ({} steps)",
                    a.train_seconds, a.train_examples, a.steps
                )
            });
            // The winner's margin: the interval flips with the sign.
            let (low, high) = if d.value < 0.0 { (-d.high, -d.low) } else { (d.low, d.high) };
            let diff = format!(
                "{} points of {name} (95% CI {} to {})",
                points(d.value.abs()),
                points(low),
                points(high)
            );
            if significant && tuned_better {
                out.push(format!(
                    "Fine-tuning wins: the adapter beats the best prompting strategy ({}) by {diff}{cost}.",
                    p.title
                ));
            } else if significant {
                out.push(format!(
                    "Prompting wins: {} beats the adapter by {diff}, with no training at all.",
                    p.title
                ));
            } else {
                out.push(format!(
                    "No clear winner: the adapter and the best prompting strategy ({}) differ by {diff}, {} — prompting costs no training.",
                    p.title,
                    match tuned_test {
                        Some(test) => format!("and the exact McNemar test cannot tell them apart (p = {:.3}, Holm-adjusted over the arms compared)", test.p_holm),
                        None => "an interval that includes 0".to_string(),
                    }
                ));
            }
            if let Some(payback) = payback {
                out.push(payback.sentence());
            }
            if let Some(test) = tuned_test.filter(|t| t.detectable.is_finite()) {
                out.push(format!(
                    "On these rows (they disagree on {} of them) a difference smaller than {} points of {name} would likely go unseen (80% power).",
                    test.only_arm + test.only_against,
                    points(test.detectable)
                ));
            }
            if let Some((lo, hi)) = p.draw_range() {
                let tv = t.headline().estimate.value;
                let best_draw = if metric.better(hi, lo) { hi } else { lo };
                let reaches = !metric.better(tv, best_draw);
                out.push(format!(
                    "The choice of shots alone moved {} between {lo:.3} and {hi:.3} over {} seeded draws{}.",
                    p.title,
                    p.shot_draws.len(),
                    if reaches { ", and at least one draw reached the adapter" } else { ", none of them reaching the adapter" }
                ));
            }
            if let Some(b) = baseline {
                let (pv, tv, bv) = (
                    p.headline().estimate.value,
                    t.headline().estimate.value,
                    b.headline().estimate.value,
                );
                if metric.better(bv, pv) {
                    out.push(format!(
                        "{} scores below the majority-class baseline ({name} {:.3} vs {bv:.3}): always giving the most frequent answer does better.",
                        capitalized(&p.title),
                        pv
                    ));
                } else if metric.better(tv, bv) && metric.better(tv, pv) {
                    // How far prompting got from the baseline toward the adapter.
                    let share = ((pv - bv) / (tv - bv)).clamp(-9.99, 9.99);
                    out.push(format!(
                        "Measured from the majority-class baseline ({name} {:.3}), {} gets {:.0}% of the way to the adapter ({:.3} vs {:.3}).",
                        bv,
                        p.title,
                        share * 100.0,
                        pv,
                        tv
                    ));
                }
            }
        }
        (Some(p), None, _) => out.push(format!(
            "Best prompting strategy: {} ({name} {:.3}). Train an adapter (tuna train) and pass --adapter to measure fine-tuning against it.",
            p.title,
            p.headline().estimate.value
        )),
        _ => {}
    }
    if let (Some(t), Some(floor)) = (tuned, prior_floor) {
        if let Some(nll) = t.label_nll {
            if nll >= floor - 0.05 {
                out.push(format!(
                    "Caution: the adapter's label loss ({nll:.3} nats) is no better than the prior-only floor ({floor:.3}): it learned the label frequencies, not the task. Train longer or with a higher learning rate."
                ));
            }
        }
    }
    for r in best_prompting.into_iter().chain(tuned).chain(hybrid) {
        if r.collapsed {
            out.push(format!(
                "{} puts one answer on {:.0}% of the rows; its accuracy says little.",
                capitalized(&r.title),
                r.dominant_share * 100.0
            ));
        }
    }
    if let (Some(h), Some(t)) = (hybrid, tuned) {
        let (hv, tv) = (h.headline().estimate.value, t.headline().estimate.value);
        let worse = metric.better(tv, hv);
        out.push(match (worse, tuned_shots) {
            (true, 0) => format!("Adding shots to the tuned model hurt here ({name} {hv:.3} vs {tv:.3}): the adapter was trained without shots in its prompts (tuna train --train-shots K trains with them)."),
            (true, k) => format!("The hybrid's shots did worse than the {k} the adapter was trained with ({name} {hv:.3} vs {tv:.3})."),
            (false, _) => format!("Adding shots to the tuned model did not hurt ({name} {hv:.3} vs {tv:.3})."),
        });
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, value: f64, uses_adapter: bool) -> StrategyRow {
        StrategyRow {
            key: key.into(),
            title: key.into(),
            uses_adapter,
            adapter: None,
            examples_used: 0,
            method: "rank".into(),
            metrics: vec![MetricValue {
                metric: Metric::Accuracy,
                name: Metric::Accuracy.name(),
                estimate: Estimate {
                    value,
                    low: value - 0.05,
                    high: value + 0.05,
                },
            }],
            distribution: Vec::new(),
            dominant_share: 0.5,
            collapsed: false,
            label_nll: None,
            prompt_tokens_per_example: 0.0,
            generated_tokens_per_example: 0.0,
            seconds: 0.0,
            seconds_per_1k: 0.0,
            cpu_seconds_per_1k: None,
            shot_draws: Vec::new(),
            predictions: Vec::new(),
        }
    }

    fn test(p_holm: f64) -> ArmTest {
        ArmTest {
            arm: "tuned".into(),
            against: "zero".into(),
            only_arm: 40,
            only_against: 10,
            p: p_holm,
            p_holm,
            detectable: 0.08,
        }
    }

    fn difference(value: f64, low: f64, high: f64) -> Option<Estimate> {
        Some(Estimate { value, low, high })
    }

    /// The recommendation for a zero-shot arm, a tuned arm and (optionally) a baseline.
    fn say(
        zero: f64,
        tuned: f64,
        tested: Option<ArmTest>,
        baseline: Option<f64>,
        d: Option<Estimate>,
    ) -> String {
        let (z, t) = (row("zero", zero, false), row("tuned", tuned, true));
        let b = baseline.map(|v| row("majority", v, false));
        recommend(
            Metric::Accuracy,
            Some(&z),
            Some(&t),
            tested.as_ref(),
            None,
            None,
            b.as_ref(),
            d,
            None,
            None,
            0,
        )
    }

    #[test]
    fn fine_tuning_wins_when_the_test_says_so() {
        let text = say(0.4, 0.7, Some(test(0.001)), None, difference(0.3, 0.2, 0.4));
        assert!(text.starts_with("Fine-tuning wins: the adapter beats the best prompting strategy (zero) by 30.0 points of accuracy (95% CI 20.0 to 40.0)."), "{text}");
        assert!(
            text.contains(
                "a difference smaller than 8.0 points of accuracy would likely go unseen"
            ),
            "{text}"
        );
    }

    #[test]
    fn prompting_wins_when_the_adapter_is_significantly_worse() {
        let text = say(
            0.6,
            0.3,
            Some(test(0.002)),
            None,
            difference(-0.3, -0.4, -0.2),
        );
        assert!(text.starts_with("Prompting wins: zero beats the adapter by 30.0 points of accuracy (95% CI 20.0 to 40.0), with no training at all."), "{text}");
    }

    #[test]
    fn no_clear_winner_when_the_test_cannot_tell() {
        // The interval excludes 0, but after Holm's correction the test cannot tell.
        let text = say(
            0.5,
            0.56,
            Some(test(0.2)),
            None,
            difference(0.06, 0.01, 0.11),
        );
        assert!(text.starts_with("No clear winner: the adapter and the best prompting strategy (zero) differ by 6.0 points"), "{text}");
        assert!(text.contains("the exact McNemar test cannot tell them apart (p = 0.200, Holm-adjusted over the arms compared)"), "{text}");
        // Without a test (not a right-or-wrong metric) the interval decides.
        let text = say(0.5, 0.52, None, None, difference(0.02, -0.03, 0.07));
        assert!(text.contains("an interval that includes 0"), "{text}");
    }

    #[test]
    fn prompting_below_the_majority_baseline_is_said_plainly() {
        // A spam/ham task where every prompting arm is below always answering "ham": no
        // "-139% of the way to the adapter".
        let text = say(
            0.2,
            0.9,
            Some(test(0.001)),
            Some(0.5),
            difference(0.7, 0.6, 0.8),
        );
        assert!(
            text.contains(
                "Zero scores below the majority-class baseline (accuracy 0.200 vs 0.500)"
            ),
            "{text}"
        );
        assert!(!text.contains("of the way"), "{text}");
        let text = say(
            0.6,
            0.9,
            Some(test(0.001)),
            Some(0.5),
            difference(0.3, 0.2, 0.4),
        );
        assert!(
            text.contains("zero gets 25% of the way to the adapter"),
            "{text}"
        );
    }

    #[test]
    fn the_prior_floor_caution() {
        let (z, mut t) = (row("zero", 0.5, false), row("tuned", 0.55, true));
        t.label_nll = Some(1.09);
        let text = recommend(
            Metric::Accuracy,
            Some(&z),
            Some(&t),
            Some(&test(0.3)),
            None,
            None,
            None,
            difference(0.05, -0.02, 0.12),
            Some(1.10),
            None,
            0,
        );
        assert!(text.contains("Caution: the adapter's label loss (1.090 nats) is no better than the prior-only floor (1.100)"), "{text}");
    }

    #[test]
    fn the_payback_sentence_says_when_training_is_repaid() {
        let payback = |tuned_s: f64| Payback {
            against: "few-shot (k=5)".into(),
            break_even: significance::break_even(80.0, tuned_s, 0.45),
            training_cpu_s: Some(150.0),
            cpu_break_even: None,
            tuned_prompt_tokens_per_1k: 72_000.0,
            prompt_prompt_tokens_per_1k: 356_000.0,
        };
        assert_eq!(
            payback(0.30).sentence(),
            "At the speeds measured here (0.450 s a query for few-shot (k=5), 0.300 s tuned), the 80 s of training pay for themselves after 534 queries; per 1k queries the adapter sends 72k prompt tokens against 356k."
        );
        assert!(payback(0.5).sentence().starts_with("Tuned queries are no faster here than few-shot (k=5)'s (0.500 s against 0.450 s), so the 80 s of training are not repaid in query time"));
        // In CPU time: 150 CPU-s of training, 0.5 CPU-s a query tuned against 0.75
        // prompted, so 150 / 0.25 = 600 queries.
        let mut cpu = payback(0.30);
        cpu.cpu_break_even = Some(significance::break_even(150.0, 0.5, 0.75));
        assert_eq!(
            cpu.sentence(),
            "At the speeds measured here (0.450 s a query for few-shot (k=5), 0.300 s tuned), the 80 s of training pay for themselves after 534 queries; in CPU time, 150 CPU-s of training against 500 CPU-s per 1k queries tuned and 750 prompted, repaid after 600 queries; per 1k queries the adapter sends 72k prompt tokens against 356k."
        );
        cpu.cpu_break_even = Some(significance::break_even(150.0, 0.9, 0.85));
        assert!(
            cpu.sentence()
                .contains("tuned and 850 prompted, never repaid;"),
            "{}",
            cpu.sentence()
        );
    }

    #[test]
    fn mcnemar_arms_and_flips_count_the_rows_each_gets_right() {
        let test_rows: Vec<TaskExample> = (0..6)
            .map(|i| TaskExample {
                line: i + 1,
                context: vec![tuna_model::Message::new("user", &format!("q{i}"))],
                reference: if i % 2 == 0 { "yes" } else { "no" }.into(),
                rationale: None,
            })
            .collect();
        let mut zero = row("zero", 0.5, false);
        zero.predictions = ["yes", "yes", "yes", "yes", "yes", "yes"]
            .map(String::from)
            .to_vec();
        let mut tuned = row("tuned", 0.83, true);
        tuned.predictions = ["yes", "no", "yes", "no", "no", "no"]
            .map(String::from)
            .to_vec();
        let right = |r: &StrategyRow| -> Vec<bool> {
            r.predictions
                .iter()
                .zip(&test_rows)
                .map(|(p, x)| *p == x.reference)
                .collect()
        };
        let tests = arm_tests(&[zero.clone(), tuned.clone()], &zero, 6, &right);
        assert_eq!(tests.len(), 1);
        // tuned alone right on lines 2, 4, 6; zero alone right on line 5.
        assert_eq!((tests[0].only_arm, tests[0].only_against), (3, 1));
        assert!((tests[0].p - 0.625).abs() < 1e-12, "{}", tests[0].p);
        let flips = flips_between(&tuned, &zero, &test_rows, &right(&tuned), &right(&zero));
        assert_eq!((flips.a_only, flips.b_only), (3, 1));
        assert_eq!(flips.b_only_rows[0].line, 5);
        assert_eq!(
            flips.a_only_rows.iter().map(|r| r.line).collect::<Vec<_>>(),
            [2, 4, 6]
        );
    }
}
