//! Task metrics over (prediction, reference) pairs, and seeded bootstrap confidence intervals.
//!
//! Label tasks: accuracy and macro-F1 over the label set. Sequence tasks: exact match after
//! normalization, token-level F1, and the edit-distance error rate over whitespace tokens
//! (phones for a pronunciation task) or characters.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How predictions and references are made comparable before scoring (`--normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// Only surrounding whitespace is ignored.
    Exact,
    /// Case-folded, inner whitespace collapsed (the default).
    #[default]
    Case,
    /// As `Case`, and punctuation dropped.
    Alnum,
}

impl Normalization {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "exact" | "none" => Self::Exact,
            "case" => Self::Case,
            "alnum" => Self::Alnum,
            _ => return None,
        })
    }

    pub fn apply(self, s: &str) -> String {
        match self {
            Self::Exact => s.trim().to_string(),
            Self::Case => normalize(s),
            Self::Alnum => normalize(
                &s.chars()
                    .map(|c| {
                        if c.is_alphanumeric() || c.is_whitespace() {
                            c
                        } else {
                            ' '
                        }
                    })
                    .collect::<String>(),
            ),
        }
    }
}

/// What `--metric` picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    Accuracy,
    MacroF1,
    ExactMatch,
    TokenF1,
    /// Edit distance over whitespace-separated tokens / reference tokens (lower is better).
    TokenErrorRate,
    /// Edit distance over characters / reference characters (lower is better).
    CharErrorRate,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Self::Accuracy => "accuracy",
            Self::MacroF1 => "macro-F1",
            Self::ExactMatch => "exact match",
            Self::TokenF1 => "token F1",
            Self::TokenErrorRate => "token error rate",
            Self::CharErrorRate => "char error rate",
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Self::TokenErrorRate | Self::CharErrorRate)
    }

    /// Whether value `a` of this metric is better than `b` (error rates: lower). The one
    /// place that decides which way a metric points.
    pub fn better(self, a: f64, b: f64) -> bool {
        if self.higher_is_better() {
            a > b
        } else {
            a < b
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accuracy" => Self::Accuracy,
            "macro-f1" | "f1" => Self::MacroF1,
            "exact-match" | "em" => Self::ExactMatch,
            "token-f1" => Self::TokenF1,
            "token-error-rate" | "phone-error-rate" | "wer" => Self::TokenErrorRate,
            "char-error-rate" | "cer" => Self::CharErrorRate,
            _ => return None,
        })
    }

    /// The metric's value over the examples at `idx` (all of them, or a bootstrap resample),
    /// predictions and references compared after `norm`.
    pub fn value(
        self,
        pairs: &[(String, String)],
        idx: &[usize],
        labels: &[String],
        norm: Normalization,
    ) -> f64 {
        let picked = || {
            idx.iter()
                .map(move |&i| (norm.apply(&pairs[i].0), norm.apply(&pairs[i].1)))
        };
        match self {
            Self::Accuracy | Self::ExactMatch => {
                let hits = picked().filter(|(p, r)| p == r).count();
                hits as f64 / idx.len().max(1) as f64
            }
            Self::MacroF1 => {
                let pairs: Vec<(String, String)> = picked().collect();
                macro_f1(pairs.iter().map(|(p, r)| (p, r)), labels)
            }
            Self::TokenF1 => {
                picked().map(|(p, r)| token_f1(&p, &r)).sum::<f64>() / idx.len().max(1) as f64
            }
            Self::TokenErrorRate | Self::CharErrorRate => {
                let units = |s: &str| -> Vec<String> {
                    if self == Self::TokenErrorRate {
                        s.split_whitespace().map(String::from).collect()
                    } else {
                        s.chars().map(String::from).collect()
                    }
                };
                let (mut edits, mut total) = (0usize, 0usize);
                for (p, r) in picked() {
                    let (p, r) = (units(&p), units(&r));
                    edits += edit_distance(&p, &r);
                    total += r.len();
                }
                edits as f64 / total.max(1) as f64
            }
        }
    }
}

/// Case-folded, trimmed, inner whitespace collapsed to one space.
pub fn normalize(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Mean over the label set of per-label F1 (a label never predicted nor present counts 0 only
/// when it occurs in the references or predictions; labels absent from both are left out).
pub fn macro_f1<'a>(
    pairs: impl Iterator<Item = (&'a String, &'a String)>,
    labels: &[String],
) -> f64 {
    let mut counts: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new(); // tp, fp, fn
    for (p, r) in pairs {
        let (p, r) = (normalize(p), normalize(r));
        if p == r {
            counts.entry(p).or_default().0 += 1;
        } else {
            counts.entry(p).or_default().1 += 1;
            counts.entry(r).or_default().2 += 1;
        }
    }
    let labels: Vec<String> = if labels.is_empty() {
        counts.keys().cloned().collect()
    } else {
        let mut l: Vec<String> = labels.iter().map(|l| normalize(l)).collect();
        // Predictions outside the label set are errors and count as a class of their own.
        l.extend(
            counts
                .keys()
                .filter(|k| !l.contains(k))
                .cloned()
                .collect::<Vec<_>>(),
        );
        l
    };
    let f1s: Vec<f64> = labels
        .iter()
        .filter_map(|l| {
            let (tp, fp, fn_) = counts.get(l).copied().unwrap_or_default();
            (tp + fp + fn_ > 0).then(|| 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64)
        })
        .collect();
    f1s.iter().sum::<f64>() / f1s.len().max(1) as f64
}

/// SQuAD-style token F1 of one pair: overlap of normalized whitespace tokens (multiset).
pub fn token_f1(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (normalize(prediction), normalize(reference));
    let (p, r): (Vec<&str>, Vec<&str>) = (
        p.split_whitespace().collect(),
        r.split_whitespace().collect(),
    );
    if p.is_empty() || r.is_empty() {
        return if p.is_empty() && r.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &r {
        *left.entry(t).or_default() += 1;
    }
    let mut overlap = 0;
    for t in &p {
        if let Some(n) = left.get_mut(t).filter(|n| **n > 0) {
            *n -= 1;
            overlap += 1;
        }
    }
    if overlap == 0 {
        return 0.0;
    }
    let precision = overlap as f64 / p.len() as f64;
    let recall = overlap as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Levenshtein distance (insertions, deletions, substitutions, each 1).
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(x != y);
            row[j + 1] = sub.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

/// A point estimate with its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// Resamples for every interval: enough for a stable 2.5th/97.5th percentile.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// The metric with a percentile bootstrap 95% interval over examples, seeded.
pub fn bootstrap(
    metric: Metric,
    pairs: &[(String, String)],
    labels: &[String],
    norm: Normalization,
    seed: u64,
) -> Estimate {
    let all: Vec<usize> = (0..pairs.len()).collect();
    let value = metric.value(pairs, &all, labels, norm);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut samples: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let idx: Vec<usize> = (0..pairs.len())
                .map(|_| rng.random_range(0..pairs.len().max(1)))
                .collect();
            metric.value(pairs, &idx, labels, norm)
        })
        .collect();
    let (low, high) = percentiles(&mut samples);
    Estimate { value, low, high }
}

/// The difference a − b of one metric between two strategies scored on the same examples,
/// with a paired bootstrap interval (the same resampled examples for both).
pub fn paired_difference(
    metric: Metric,
    a: &[(String, String)],
    b: &[(String, String)],
    labels: &[String],
    norm: Normalization,
    seed: u64,
) -> Estimate {
    assert_eq!(
        a.len(),
        b.len(),
        "paired strategies score the same examples"
    );
    let all: Vec<usize> = (0..a.len()).collect();
    let value = metric.value(a, &all, labels, norm) - metric.value(b, &all, labels, norm);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut samples: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let idx: Vec<usize> = (0..a.len())
                .map(|_| rng.random_range(0..a.len().max(1)))
                .collect();
            metric.value(a, &idx, labels, norm) - metric.value(b, &idx, labels, norm)
        })
        .collect();
    let (low, high) = percentiles(&mut samples);
    Estimate { value, low, high }
}

fn percentiles(samples: &mut [f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

/// How often each prediction occurs, most frequent first.
pub fn distribution(predictions: impl Iterator<Item = String>) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for p in predictions {
        *counts.entry(p).or_default() += 1;
    }
    let mut out: Vec<(String, usize)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: Normalization = Normalization::Case;

    fn pairs(p: &[&str], r: &[&str]) -> Vec<(String, String)> {
        p.iter()
            .zip(r)
            .map(|(p, r)| (p.to_string(), r.to_string()))
            .collect()
    }

    #[test]
    fn accuracy_and_macro_f1_by_hand() {
        // refs:  a a a b b c ; preds: a a b b c c
        let x = pairs(
            &["a", "a", "b", "b", "c", "c"],
            &["a", "a", "a", "b", "b", "c"],
        );
        let all: Vec<usize> = (0..6).collect();
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert!((Metric::Accuracy.value(&x, &all, &labels, N) - 4.0 / 6.0).abs() < 1e-12);
        // a: tp 2 fp 0 fn 1 -> 4/5; b: tp 1 fp 1 fn 1 -> 2/4; c: tp 1 fp 1 fn 0 -> 2/3
        let want = (0.8 + 0.5 + 2.0 / 3.0) / 3.0;
        assert!((Metric::MacroF1.value(&x, &all, &labels, N) - want).abs() < 1e-12);
        // A label in the set that nobody predicts or needs does not count; an answer outside
        // the set is a class of its own with F1 0.
        let y = pairs(&["a", "zzz"], &["a", "b"]);
        let f1 = Metric::MacroF1.value(&y, &[0, 1], &labels, N);
        // a: 1; b: tp 0 fn 1 -> 0; zzz: fp 1 -> 0
        assert!((f1 - 1.0 / 3.0).abs() < 1e-12, "{f1}");
    }

    #[test]
    fn exact_match_normalizes_case_and_spaces() {
        let x = pairs(&["  Positive ", "K AE1  T"], &["positive", "k ae1 t"]);
        assert_eq!(Metric::ExactMatch.value(&x, &[0, 1], &[], N), 1.0);
        // --normalize exact keeps case and inner spaces; alnum also drops punctuation.
        assert_eq!(
            Metric::ExactMatch.value(&x, &[0, 1], &[], Normalization::Exact),
            0.0
        );
        let y = pairs(&["Positive."], &["positive"]);
        assert_eq!(Metric::ExactMatch.value(&y, &[0], &[], N), 0.0);
        assert_eq!(
            Metric::ExactMatch.value(&y, &[0], &[], Normalization::Alnum),
            1.0
        );
    }

    #[test]
    fn error_rates_and_token_f1_by_hand() {
        // K AE1 T vs K AH0 T S: one substitution, one deletion -> 2 edits over 4 phones
        let x = pairs(&["K AE1 T"], &["K AH0 T S"]);
        assert!((Metric::TokenErrorRate.value(&x, &[0], &[], N) - 0.5).abs() < 1e-12);
        assert_eq!(
            edit_distance(
                &['k', 'i', 't', 't', 'e', 'n'],
                &['s', 'i', 't', 't', 'i', 'n', 'g']
            ),
            3
        );
        // overlap {K, T}: precision 2/3, recall 2/4 -> F1 = 4/7
        assert!((token_f1("K AE1 T", "K AH0 T S") - 4.0 / 7.0).abs() < 1e-12);
        // Pooled over examples: (2 + 0) edits / (4 + 2) reference phones.
        let y = pairs(&["K AE1 T", "AH0 B"], &["K AH0 T S", "AH0 B"]);
        assert!((Metric::TokenErrorRate.value(&y, &[0, 1], &[], N) - 2.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_estimate() {
        let preds: Vec<&str> = (0..200)
            .map(|i| if i % 4 == 0 { "b" } else { "a" })
            .collect();
        let refs: Vec<&str> = (0..200)
            .map(|i| if i % 5 == 0 { "b" } else { "a" })
            .collect();
        let x = pairs(&preds, &refs);
        let a = bootstrap(Metric::Accuracy, &x, &[], N, 7);
        assert_eq!(
            a,
            bootstrap(Metric::Accuracy, &x, &[], N, 7),
            "same seed, same interval"
        );
        assert_ne!(a, bootstrap(Metric::Accuracy, &x, &[], N, 8));
        assert!(a.low < a.value && a.value < a.high, "{a:?}");
        // About ±1.96·sqrt(p(1−p)/n) = ±0.05 for p = 0.7, n = 200.
        assert!((a.high - a.low) > 0.07 && (a.high - a.low) < 0.16, "{a:?}");
        // A strategy against itself differs by exactly 0.
        let d = paired_difference(Metric::Accuracy, &x, &x, &[], N, 1);
        assert_eq!((d.value, d.low, d.high), (0.0, 0.0, 0.0));
    }

    #[test]
    fn distribution_counts_most_frequent_first() {
        let d = distribution(["b", "a", "b"].iter().map(|s| s.to_string()));
        assert_eq!(d, vec![("b".to_string(), 2), ("a".to_string(), 1)]);
    }
}
