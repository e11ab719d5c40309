//! `tuna compare`: every strategy on the same test examples, scored with the same metrics and
//! intervals, plus the majority-class baseline, paired differences and a recommendation
//! derived from the numbers.

use std::path::Path;

use serde::Serialize;
use tuna_model::Pretrained;

use crate::error::Result;
use crate::metrics::{
    bootstrap, distribution, normalize, paired_difference, Estimate, Metric, Normalization,
};
use crate::scoring::{PromptEncoder, Scorer};
use crate::strategy::{draw_shots, extract_answer, messages, PromptShape, Strategy};
use crate::task::{label_index, label_prior, majority_label, TaskExample, TaskKind};

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
#[derive(Debug, Clone, Default, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricValue {
    pub metric: Metric,
    pub name: &'static str,
    #[serde(flatten)]
    pub estimate: Estimate,
}

#[derive(Debug, Clone, Serialize)]
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
    /// Every seeded draw of shots, the row's own first (strategies with shots only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shot_draws: Vec<ShotDraw>,
    pub predictions: Vec<String>,
}

/// One draw of shots and the headline metric it scored.
#[derive(Debug, Clone, Serialize)]
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
        let row = run_strategy(setup, strategy, model, &labels, progress)?;
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
    let recommendation = recommend(
        headline,
        best_prompting,
        tuned,
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
    let report_every = |done: usize, seconds: f64, progress: &mut dyn FnMut(&str)| {
        if done.is_multiple_of(50) || done == setup.test.len() {
            progress(&format!(
                "{title}: {done}/{} examples, {seconds:.1} s",
                setup.test.len()
            ));
        }
    };
    if rank {
        for (i, x) in setup.test.iter().enumerate() {
            let m = messages(shape, shots, x, false);
            let encoded = encoder.with_answers(x.line, &m, labels)?;
            let scores = scorer.rank(&encoded.prompt, &encoded.candidates)?;
            let best = (0..scores.len())
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .unwrap_or(0);
            predictions.push(labels[best].clone());
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
            let r = label_index(labels, &x.reference).unwrap_or(0);
            nll += lse - scores[r];
            report_every(i + 1, scorer.usage.seconds, progress);
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
                report_every(predictions.len(), scorer.usage.seconds, progress);
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

#[allow(clippy::too_many_arguments)]
fn recommend(
    metric: Metric,
    best_prompting: Option<&StrategyRow>,
    tuned: Option<&StrategyRow>,
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
            let significant = d.low > 0.0 || d.high < 0.0;
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
                    "No clear winner: the adapter and the best prompting strategy ({}) differ by {diff}, an interval that includes 0 — prompting costs no training.",
                    p.title
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
                // How far prompting got from the baseline toward the adapter, when the
                // adapter is the better of the two and both beat the baseline's ground.
                if metric.better(tv, bv) && metric.better(tv, pv) {
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
