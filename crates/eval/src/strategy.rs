//! Prompting strategies as prompt builders over one test set: zero-shot, one-shot, few-shot,
//! chain-of-thought, the tuned adapter, and the hybrid (adapter + few-shot).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use tuna_model::Message;

use crate::metrics::normalize;
use crate::task::TaskExample;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Zero,
    One,
    Few,
    Cot,
    /// Chain-of-thought with k shots that show their rationale (when the data has them).
    CotFew,
    Tuned,
    Hybrid,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "zero" | "zero-shot" => Self::Zero,
            "one" | "one-shot" => Self::One,
            "few" | "few-shot" => Self::Few,
            "cot" | "chain-of-thought" => Self::Cot,
            "cot-few" => Self::CotFew,
            "tuned" => Self::Tuned,
            "hybrid" => Self::Hybrid,
            _ => return None,
        })
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Zero => "zero",
            Self::One => "one",
            Self::Few => "few",
            Self::Cot => "cot",
            Self::CotFew => "cot-few",
            Self::Tuned => "tuned",
            Self::Hybrid => "hybrid",
        }
    }

    /// The report's row name.
    pub fn title(self, shots: usize) -> String {
        match self {
            Self::Zero => "zero-shot".into(),
            Self::One => "one-shot".into(),
            Self::Few => format!("few-shot (k={shots})"),
            Self::Cot => "chain-of-thought (zero-shot)".into(),
            Self::CotFew => format!("chain-of-thought (k={shots}, with rationales)"),
            Self::Tuned => "fine-tuned (LoRA)".into(),
            Self::Hybrid => format!("hybrid (LoRA + k={shots})"),
        }
    }

    pub fn uses_adapter(self) -> bool {
        matches!(self, Self::Tuned | Self::Hybrid)
    }

    /// Shots in the prompt for `k` = --shots.
    pub fn shot_count(self, k: usize) -> usize {
        match self {
            Self::Zero | Self::Cot | Self::Tuned => 0,
            Self::One => 1,
            Self::Few | Self::Hybrid | Self::CotFew => k,
        }
    }

    /// Prompts that ask for reasoning, answered by generation and answer extraction.
    pub fn chain_of_thought(self) -> bool {
        matches!(self, Self::Cot | Self::CotFew)
    }
}

/// How a prompt is worded: an instruction template around the raw input (`{prompt}` marks
/// it; without one the input follows the instruction after a blank line) and a system turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PromptShape {
    pub template: Option<String>,
    pub system: Option<String>,
}

impl PromptShape {
    pub fn fill(&self, input: &str) -> String {
        match &self.template {
            Some(t) if t.contains("{prompt}") => t.replace("{prompt}", input),
            Some(t) => format!("{t}\n\n{input}"),
            None => input.to_string(),
        }
    }
}

/// What chain-of-thought prompts add after the question.
pub const COT_SUFFIX: &str = "\n\nThink step by step. Then give the final answer on its own last line, as \"Answer: <answer>\".";

/// The conversation a strategy sends for `example`: the system turn, the shots as earlier
/// user/assistant turns, then the example's own turns with the instruction around its input.
pub fn messages(
    shape: &PromptShape,
    shots: &[&TaskExample],
    example: &TaskExample,
    chain_of_thought: bool,
) -> Vec<Message> {
    let mut out = Vec::new();
    let system = example
        .context
        .first()
        .filter(|m| m.role == "system")
        .map(|m| m.content.clone())
        .or_else(|| shape.system.clone());
    if let Some(system) = system {
        out.push(Message::new("system", &system));
    }
    for shot in shots {
        match (&shot.rationale, chain_of_thought) {
            (Some(rationale), true) => {
                out.push(Message::new(
                    "user",
                    &format!("{}{COT_SUFFIX}", shape.fill(shot.input())),
                ));
                out.push(Message::new(
                    "assistant",
                    &format!("{rationale}\nAnswer: {}", shot.reference.trim()),
                ));
            }
            _ => {
                out.push(Message::new("user", &shape.fill(shot.input())));
                out.push(Message::new("assistant", shot.reference.trim()));
            }
        }
    }
    let turns: Vec<&Message> = example
        .context
        .iter()
        .filter(|m| m.role != "system")
        .collect();
    for (i, m) in turns.iter().enumerate() {
        if i + 1 == turns.len() {
            let mut text = shape.fill(&m.content);
            if chain_of_thought {
                text.push_str(COT_SUFFIX);
            }
            out.push(Message::new("user", &text));
        } else {
            out.push((*m).clone());
        }
    }
    out
}

/// `k` shots from the train split, seeded. For a label task they are balanced: labels take
/// turns (in a seeded order), each contributing its own shuffled examples.
pub fn draw_shots<'a>(
    train: &'a [TaskExample],
    k: usize,
    labels: &[String],
    seed: u64,
) -> Vec<&'a TaskExample> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if labels.is_empty() {
        let mut all: Vec<&TaskExample> = train.iter().collect();
        all.shuffle(&mut rng);
        all.truncate(k);
        return all;
    }
    let mut pools: Vec<Vec<&TaskExample>> = labels
        .iter()
        .map(|l| {
            let mut pool: Vec<&TaskExample> = train
                .iter()
                .filter(|x| normalize(&x.reference) == normalize(l))
                .collect();
            pool.shuffle(&mut rng);
            pool
        })
        .collect();
    pools.shuffle(&mut rng);
    let mut out = Vec::with_capacity(k);
    while out.len() < k && pools.iter().any(|p| !p.is_empty()) {
        for pool in pools.iter_mut() {
            if out.len() < k {
                if let Some(x) = pool.pop() {
                    out.push(x);
                }
            }
        }
    }
    // The last shot sits next to the question; a seeded order keeps any one label from
    // always being there.
    out.shuffle(&mut rng);
    out
}

/// The answer in a generated text. Chain-of-thought: the text after the last "Answer:".
/// Label tasks: the label named earliest (whole words, case-insensitive), else the text.
pub fn extract_answer(output: &str, labels: &[String], chain_of_thought: bool) -> String {
    let mut text = output.trim().to_string();
    if chain_of_thought {
        // ASCII lowercasing keeps byte offsets, so `at` indexes `text` too.
        let lower = text.to_ascii_lowercase();
        if let Some(at) = lower.rfind("answer:") {
            text = text[at + "answer:".len()..].trim().to_string();
        } else if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
            text = last.trim().to_string();
        }
    }
    text = text
        .trim_matches(|c: char| c.is_whitespace() || "\"'*.`".contains(c))
        .to_string();
    if labels.is_empty() {
        return text;
    }
    let lower = text.to_ascii_lowercase();
    let is_word_char = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
    let mut best: Option<(usize, &String)> = None;
    for label in labels {
        let l = label.trim().to_ascii_lowercase();
        if l.is_empty() {
            continue;
        }
        let mut from = 0;
        while let Some(pos) = lower[from..].find(&l) {
            let at = from + pos;
            let before = lower[..at].chars().next_back();
            let after = lower[at + l.len()..].chars().next();
            if !is_word_char(before) && !is_word_char(after) {
                // The earliest mention; at the same spot the longer label ("very good"
                // over "very").
                if best.is_none_or(|(b, bl)| at < b || (at == b && label.len() > bl.len())) {
                    best = Some((at, label));
                }
                break;
            }
            from = at + l.len();
        }
    }
    match best {
        Some((_, label)) => label.clone(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(line: usize, input: &str, reference: &str) -> TaskExample {
        TaskExample {
            line,
            context: vec![Message::new("user", input)],
            reference: reference.into(),
            rationale: None,
        }
    }

    #[test]
    fn few_shot_messages_put_shots_before_the_question() {
        let shape = PromptShape {
            template: Some("Sentiment of: {prompt}".into()),
            system: Some("Be brief.".into()),
        };
        let shot = ex(1, "great", "positive");
        let m = messages(&shape, &[&shot], &ex(2, "awful", "negative"), false);
        let flat: Vec<(&str, &str)> = m
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        assert_eq!(
            flat,
            [
                ("system", "Be brief."),
                ("user", "Sentiment of: great"),
                ("assistant", "positive"),
                ("user", "Sentiment of: awful"),
            ]
        );
        let cot = messages(&shape, &[], &ex(2, "awful", "negative"), true);
        assert!(cot[1].content.ends_with(COT_SUFFIX));
        // Chain-of-thought shots show their reasoning and the answer line.
        let mut reasoned = ex(3, "meh", "neutral");
        reasoned.rationale = Some("Neither praise nor blame.".into());
        let m = messages(&shape, &[&reasoned], &ex(2, "awful", "negative"), true);
        assert_eq!(m[1].content, format!("Sentiment of: meh{COT_SUFFIX}"));
        assert_eq!(m[2].content, "Neither praise nor blame.\nAnswer: neutral");
        assert!(m[3].content.ends_with(COT_SUFFIX));
    }

    #[test]
    fn balanced_shots_cover_the_labels_and_follow_the_seed() {
        let train: Vec<TaskExample> = (0..30)
            .map(|i| ex(i, &format!("t{i}"), ["a", "b", "c"][i % 3]))
            .collect();
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let shots = draw_shots(&train, 6, &labels, 3);
        assert_eq!(shots.len(), 6);
        for l in &labels {
            assert_eq!(shots.iter().filter(|x| &x.reference == l).count(), 2, "{l}");
        }
        assert_eq!(shots, draw_shots(&train, 6, &labels, 3));
        assert_ne!(shots, draw_shots(&train, 6, &labels, 4));
    }

    #[test]
    fn answers_are_extracted_from_chain_of_thought_and_free_text() {
        let labels: Vec<String> = ["negative", "neutral", "positive"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cot = "The text says the battery died; that is bad, not positive.\nAnswer: Negative.";
        assert_eq!(extract_answer(cot, &labels, true), "negative");
        // Without an Answer: line, the last line.
        assert_eq!(
            extract_answer("Hmm, mixed.\nneutral", &labels, true),
            "neutral"
        );
        // The earliest label named wins; "nonpositive" is not the word "positive".
        assert_eq!(
            extract_answer(
                "It is nonpositive, so negative, not positive",
                &labels,
                false
            ),
            "negative"
        );
        assert_eq!(extract_answer("**Positive**", &labels, false), "positive");
        assert_eq!(extract_answer("no idea", &labels, false), "no idea");
        assert_eq!(extract_answer("Answer: K AE1 T", &[], true), "K AE1 T");
    }
}
