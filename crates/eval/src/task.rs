//! A task to score: held-out examples with a reference answer each, and whether the answers
//! come from a small label set (classification) or are free sequences.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use tuna_data::{parse_records, read_jsonl, FieldNames, Record};
use tuna_model::Message;

use crate::error::{EvalError, Result};
use crate::metrics::{normalize, Metric};

/// One example: the conversation up to the question (optional system turn, earlier turns,
/// a last user turn holding the raw input, before any instruction template), and the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskExample {
    pub line: usize,
    pub context: Vec<Message>,
    pub reference: String,
    /// A worked explanation leading to the answer, when the record has one (chain-of-thought
    /// shots use it).
    pub rationale: Option<String>,
}

impl TaskExample {
    /// The raw input: the last user turn.
    pub fn input(&self) -> &str {
        self.context.last().map_or("", |m| m.content.as_str())
    }
}

/// At most this many distinct answers make a label task when inferred from the train split.
pub const MAX_INFERRED_LABELS: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TaskKind {
    /// Answers from a fixed set, in the order first seen.
    Labels {
        labels: Vec<String>,
    },
    Sequence,
}

impl TaskKind {
    pub fn labels(&self) -> &[String] {
        match self {
            Self::Labels { labels } => labels,
            Self::Sequence => &[],
        }
    }

    /// The metrics reported, the headline first.
    pub fn default_metrics(&self) -> Vec<Metric> {
        match self {
            Self::Labels { .. } => vec![Metric::Accuracy, Metric::MacroF1],
            Self::Sequence => vec![
                Metric::ExactMatch,
                Metric::TokenErrorRate,
                Metric::CharErrorRate,
            ],
        }
    }
}

/// The record field holding a rationale, unless `--field rationale=NAME` renames it.
pub const RATIONALE_FIELD: &str = "rationale";

/// Reads a JSONL file of prompt/completion, instruction/output or messages records (the last
/// message the assistant's reference), with an optional string field `rationale_field`.
/// Text records have no reference and are refused.
pub fn load_examples(
    path: &Path,
    fields: &FieldNames,
    rationale_field: &str,
) -> Result<Vec<TaskExample>> {
    let shown = path.display().to_string();
    let lines = read_jsonl(path)?;
    let rationales: BTreeMap<usize, String> = lines
        .iter()
        .filter_map(|l| {
            let text = l.object.get(rationale_field)?.as_str()?.trim();
            (!text.is_empty()).then(|| (l.line, text.to_string()))
        })
        .collect();
    let parsed = parse_records(path, &lines, fields)?;
    let bad = |line: usize, reason: &str| EvalError::BadTaskRecord {
        path: shown.clone(),
        line,
        reason: reason.to_string(),
    };
    let mut out = Vec::with_capacity(parsed.records.len());
    for r in parsed.records {
        let (context, reference) = match r.record {
            Record::PromptCompletion { prompt, completion } => {
                (vec![Message::new("user", &prompt)], completion)
            }
            Record::Alpaca {
                instruction,
                input,
                output,
            } => {
                let user = if input.is_empty() {
                    instruction
                } else {
                    format!("{instruction}\n\n{input}")
                };
                (vec![Message::new("user", &user)], output)
            }
            Record::Messages(mut messages) => {
                let last = messages.pop();
                match last {
                    Some(ref m) if m.role == "assistant" => {}
                    _ => {
                        return Err(bad(
                            r.line,
                            "messages: the last turn must be the assistant's reference answer",
                        ))
                    }
                }
                if messages.last().is_none_or(|m| m.role != "user") {
                    return Err(bad(
                        r.line,
                        "messages: the reference answer must follow a user turn",
                    ));
                }
                let reference = last.map(|m| m.content).unwrap_or_default();
                (messages, reference)
            }
            Record::Text(_) => {
                return Err(bad(
                    r.line,
                    "a text record has no reference answer to compare with",
                ))
            }
        };
        if reference.trim().is_empty() {
            return Err(bad(r.line, "the reference answer is empty"));
        }
        out.push(TaskExample {
            line: r.line,
            context,
            reference,
            rationale: rationales.get(&r.line).cloned(),
        });
    }
    if out.is_empty() {
        return Err(EvalError::EmptyTestSet { path: shown });
    }
    Ok(out)
}

/// A label task when the train split's answers are few and repeat (at most
/// `MAX_INFERRED_LABELS` distinct ones, each seen four times on average); else a sequence task.
pub fn infer_kind(train: &[TaskExample]) -> TaskKind {
    // Labels in the order first seen, each spelled as most of the split spells it (ranking
    // scores that exact text).
    let mut order: Vec<String> = Vec::new();
    let mut spellings: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for x in train {
        let key = normalize(&x.reference);
        let counts = spellings.entry(key.clone()).or_default();
        if counts.is_empty() {
            order.push(key);
        }
        *counts.entry(x.reference.trim().to_string()).or_default() += 1;
    }
    if order.is_empty() || order.len() > MAX_INFERRED_LABELS || order.len() * 4 > train.len() {
        return TaskKind::Sequence;
    }
    let labels = order
        .iter()
        .map(|key| {
            let counts = &spellings[key];
            let best = counts.values().max().copied().unwrap_or(0);
            counts
                .iter()
                .find(|(_, &n)| n == best)
                .map(|(s, _)| s.clone())
                .unwrap_or_else(|| key.clone())
        })
        .collect();
    TaskKind::Labels { labels }
}

/// Every reference of a label task must be one of its labels.
pub fn check_references(path: &Path, examples: &[TaskExample], kind: &TaskKind) -> Result<()> {
    let TaskKind::Labels { labels } = kind else {
        return Ok(());
    };
    let known: Vec<String> = labels.iter().map(|l| normalize(l)).collect();
    for x in examples {
        if !known.contains(&normalize(&x.reference)) {
            return Err(EvalError::LabelNotInSet {
                path: path.display().to_string(),
                line: x.line,
                reference: x.reference.clone(),
                labels: labels.join(", "),
            });
        }
    }
    Ok(())
}

/// Which of `labels` `answer` is (compared after case and space normalization).
pub fn label_index(labels: &[String], answer: &str) -> Option<usize> {
    let answer = normalize(answer);
    labels.iter().position(|l| normalize(l) == answer)
}

/// How many train answers are each label, in `labels` order.
fn label_counts(train: &[TaskExample], labels: &[String]) -> Vec<usize> {
    let mut counts = vec![0usize; labels.len()];
    for i in train
        .iter()
        .filter_map(|x| label_index(labels, &x.reference))
    {
        counts[i] += 1;
    }
    counts
}

/// The most frequent answer of the train split (ties: first seen).
pub fn majority_label(train: &[TaskExample], labels: &[String]) -> Option<String> {
    let counts = label_counts(train, labels);
    let best = counts
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))?;
    Some(labels[best.0].clone())
}

/// Label frequencies of the train split, in `labels` order (a prior-only model's beliefs).
pub fn label_prior(train: &[TaskExample], labels: &[String]) -> Vec<f64> {
    let counts = label_counts(train, labels);
    let total = counts.iter().sum::<usize>().max(1) as f64;
    counts.iter().map(|&c| c as f64 / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(line: usize, reference: &str) -> TaskExample {
        TaskExample {
            line,
            context: vec![Message::new("user", "x")],
            reference: reference.into(),
            rationale: None,
        }
    }

    #[test]
    fn labels_are_inferred_from_repeated_answers() {
        // Each label keeps its most frequent spelling: "pos" 8 times over "Pos " once, "neg"
        // 4 times over "NEG" once.
        let train: Vec<TaskExample> = (0..12)
            .map(|i| ex(i + 1, ["pos", "neg", "pos"][i % 3]))
            .chain([ex(13, "NEG"), ex(14, "Pos ")])
            .collect();
        assert_eq!(
            infer_kind(&train),
            TaskKind::Labels {
                labels: vec!["pos".into(), "neg".into()]
            }
        );
        assert_eq!(
            majority_label(&train, train_labels(&train).as_slice()),
            Some("pos".into())
        );
        let prior = label_prior(&train, &train_labels(&train));
        assert!((prior[0] - 9.0 / 14.0).abs() < 1e-12);
        let words: Vec<TaskExample> = (0..12).map(|i| ex(i + 1, &format!("w{i}"))).collect();
        assert_eq!(infer_kind(&words), TaskKind::Sequence);
    }

    fn train_labels(train: &[TaskExample]) -> Vec<String> {
        infer_kind(train).labels().to_vec()
    }

    #[test]
    fn a_reference_outside_the_label_set_names_its_line() {
        let kind = TaskKind::Labels {
            labels: vec!["pos".into(), "neg".into()],
        };
        let test = vec![ex(1, "pos"), ex(2, "meh")];
        let err = check_references(Path::new("t.jsonl"), &test, &kind).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.jsonl:2: the reference \"meh\" is not in the label set (pos, neg)"
        );
    }
}
