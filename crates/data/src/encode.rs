//! Records to token ids with a loss mask. The one place that decides which tokens are trained
//! on: completions and every assistant turn by default (`train_on_prompt` adds the prompts),
//! every token of a text record; EOS ends every target, as a token id, so tuned models stop.
//!
//! Chat records are rendered with the model's template turn by turn: the prompt before each
//! assistant turn is exactly what generation feeds the model (`Encoder::prompt_ids`), and the
//! assistant span up to its end-of-turn token is the target.

use serde::{Deserialize, Serialize};
use tuna_model::{ChatTemplate, Message, Pretrained, Tokenizer};

use crate::error::DataError;
use crate::record::{LineRecord, Record};

/// How prompts are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// The chat template when the model has one, else raw.
    #[default]
    Auto,
    /// Always the model's chat template (an error if it has none).
    Chat,
    /// Plain text: prompt tokens then completion tokens (base models).
    Raw,
}

/// Which end of an over-long example is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Drop the oldest tokens (the start of the prompt), keeping the targets at the end.
    #[default]
    Left,
    /// Cut the end (targets may lose their EOS).
    Right,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodeOptions {
    pub format: PromptFormat,
    pub max_seq_len: usize,
    pub truncation: Truncation,
    /// Train on prompt tokens too (system and user turns, prompts).
    pub train_on_prompt: bool,
    /// A system message for records that have none (chat format).
    pub system: Option<String>,
    /// Wraps the prompt of prompt/completion records; must contain `{prompt}`.
    pub prompt_template: Option<String>,
    /// An example whose targets are all truncated away: skipped and counted (true) or an error.
    pub skip_untrainable: bool,
    /// Worked examples before each prompt/completion record's prompt: this many other records
    /// of the same file (seeded per line), as earlier user/assistant turns (raw format: text
    /// blocks), with only the record's own completion trained on. An adapter trained so
    /// matches few-shot prompts (compare's hybrid) instead of fighting them.
    #[serde(skip_serializing_if = "is_zero")]
    pub shots: usize,
    /// Seeds the shots' draw: the run's seed (set by the trainer, not a config key).
    #[serde(skip)]
    pub shot_seed: u64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            format: PromptFormat::Auto,
            max_seq_len: 1024,
            truncation: Truncation::Left,
            train_on_prompt: false,
            system: None,
            prompt_template: None,
            skip_untrainable: true,
            shots: 0,
            shot_seed: 0,
        }
    }
}

/// One encoded example: `trained[i]` says whether token i is a target, predicted from the
/// tokens before it (so `trained[0]` is always false).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub line: usize,
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
    pub truncated: bool,
}

impl Example {
    pub fn n_trained(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }

    /// The trained token ids, in order.
    pub fn target_ids(&self) -> Vec<u32> {
        self.ids
            .iter()
            .zip(&self.trained)
            .filter(|(_, &t)| t)
            .map(|(&id, _)| id)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    Example(Example),
    /// A text record longer than `max_seq_len`, cut into windows that overlap by one token so
    /// that every next-token prediction is made exactly once and nothing is lost.
    Windows(Vec<Example>),
    /// Every target token was truncated away (`skip_untrainable`).
    SkippedUntrainable {
        line: usize,
    },
}

impl Encoded {
    pub fn into_examples(self) -> Vec<Example> {
        match self {
            Self::Example(e) => vec![e],
            Self::Windows(w) => w,
            Self::SkippedUntrainable { .. } => Vec::new(),
        }
    }
}

pub struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    template: Option<&'a ChatTemplate>,
    options: &'a EncodeOptions,
    eos: Option<u32>,
}

const ALPACA_HEADER: &str =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
const ALPACA_HEADER_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.";

impl<'a> Encoder<'a> {
    pub fn new(model: &'a Pretrained, options: &'a EncodeOptions) -> Result<Self, DataError> {
        Self::from_parts(&model.tokenizer, model.chat_template.as_ref(), options)
    }

    pub fn from_parts(
        tokenizer: &'a Tokenizer,
        template: Option<&'a ChatTemplate>,
        options: &'a EncodeOptions,
    ) -> Result<Self, DataError> {
        let bad = |field: &str, reason: &str| DataError::BadOption {
            field: field.into(),
            reason: reason.into(),
        };
        if options.max_seq_len < 2 {
            return Err(bad("max_seq_len", "must be at least 2"));
        }
        if let Some(t) = &options.prompt_template {
            if !t.contains("{prompt}") {
                return Err(bad("prompt_template", "must contain {prompt}"));
            }
        }
        let template = match options.format {
            PromptFormat::Raw => None,
            PromptFormat::Auto => template,
            PromptFormat::Chat => Some(template.ok_or_else(|| {
                bad(
                    "format",
                    "is `chat` but the model has no chat template (use `raw` or `auto`)",
                )
            })?),
        };
        Ok(Self {
            tokenizer,
            template,
            options,
            eos: tokenizer.special.eos.as_ref().map(|(id, _)| *id),
        })
    }

    pub fn options(&self) -> &EncodeOptions {
        self.options
    }

    /// Whether prompts go through the chat template.
    pub fn is_chat(&self) -> bool {
        self.template.is_some()
    }

    /// The user-turn text of a prompt/completion record's prompt.
    pub fn format_prompt(&self, prompt: &str) -> String {
        match &self.options.prompt_template {
            Some(t) => t.replace("{prompt}", prompt),
            None => prompt.to_string(),
        }
    }

    /// The messages a record stands for (chat format); the last one is the assistant's.
    pub fn messages(&self, record: &Record) -> Vec<Message> {
        let mut messages = match record {
            Record::Text(t) => return vec![Message::new("assistant", t)],
            Record::PromptCompletion { prompt, completion } => {
                vec![
                    Message::new("user", &self.format_prompt(prompt)),
                    Message::new("assistant", completion),
                ]
            }
            Record::Alpaca {
                instruction,
                input,
                output,
            } => {
                let user = if input.is_empty() {
                    instruction.clone()
                } else {
                    format!("{instruction}\n\n{input}")
                };
                vec![
                    Message::new("user", &user),
                    Message::new("assistant", output),
                ]
            }
            Record::Messages(m) => m.clone(),
        };
        if let Some(system) = &self.options.system {
            if messages.first().is_none_or(|m| m.role != "system") {
                messages.insert(0, Message::new("system", system));
            }
        }
        messages
    }

    /// The token ids generation is fed for `messages` (which end with a user turn): in chat
    /// format the template with its generation prompt, else the raw text with BOS if the
    /// model adds one. Training encodes the prompt part of each example with this function.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>, String> {
        match self.template {
            Some(t) => {
                let text = t.render(messages, true).map_err(|e| e.to_string())?;
                self.tokenizer
                    .encode(&text, false)
                    .map_err(|e| e.to_string())
            }
            None => {
                let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                self.tokenizer
                    .encode(&text.join("\n\n"), true)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// `r` with `shots` (other prompt/completion records) as worked examples before its
    /// prompt; only its own completion is a target. Without shots, `encode`.
    pub fn encode_with_shots(
        &self,
        path: &std::path::Path,
        r: &LineRecord,
        shots: &[&LineRecord],
    ) -> Result<Encoded, DataError> {
        if shots.is_empty() {
            return self.encode(path, r);
        }
        let bad = |field: &str, reason: String| DataError::bad_record(path, r.line, field, reason);
        let pair = |x: &LineRecord| match &x.record {
            Record::PromptCompletion { prompt, completion } => {
                Some((prompt.clone(), completion.clone()))
            }
            _ => None,
        };
        let Some((prompt, completion)) = pair(r) else {
            return Err(bad(
                "(shots)",
                format!(
                    "training with shots needs prompt/completion records; this is a {} record",
                    r.record.kind().name()
                ),
            ));
        };
        let worked: Vec<(String, String)> = shots.iter().filter_map(|x| pair(x)).collect();
        let mut seq = Sequence::default();
        match self.template {
            Some(template) => {
                let mut messages = self.messages(&r.record);
                let at = messages.len() - 2;
                for (p, c) in worked.iter().rev() {
                    // Trimmed, as few-shot prompts show a shot's answer.
                    messages.insert(at, Message::new("assistant", c.trim()));
                    messages.insert(at, Message::new("user", &self.format_prompt(p)));
                }
                let last = messages.len() - 1;
                self.encode_chat_from(template, &messages, last, &mut seq)
                    .map_err(|e| bad("(template)", e))?;
            }
            None => {
                // As a few-shot raw prompt is laid out: blocks separated by blank lines.
                let mut blocks: Vec<String> = Vec::new();
                for (p, c) in &worked {
                    blocks.push(self.format_prompt(p));
                    blocks.push(c.trim().to_string());
                }
                blocks.push(self.format_prompt(&prompt));
                let p = self
                    .tokenizer
                    .encode(&blocks.join("\n\n"), true)
                    .map_err(|e| bad("prompt", e.to_string()))?;
                let c = self
                    .tokenizer
                    .encode(&completion, false)
                    .map_err(|e| bad("completion", e.to_string()))?;
                seq.push(&p, self.options.train_on_prompt);
                seq.push(&c, true);
                self.close_target(&mut seq);
            }
        }
        self.truncate(path, r.line, seq)
    }

    pub fn encode(&self, path: &std::path::Path, r: &LineRecord) -> Result<Encoded, DataError> {
        let bad = |field: &str, reason: String| DataError::bad_record(path, r.line, field, reason);
        let mut seq = Sequence::default();
        match (&r.record, self.template) {
            (Record::Text(text), _) => {
                let ids = self.tokenizer.encode(text, true).map_err(|e| bad("text", e.to_string()))?;
                seq.push(&ids, true);
                self.close_target(&mut seq);
                if seq.ids.len() > self.options.max_seq_len {
                    return Ok(Encoded::Windows(windows(r.line, &seq.ids, self.options.max_seq_len)));
                }
            }
            (Record::Messages(_), None) => {
                return Err(bad(
                    "messages",
                    "a messages record needs a chat template and this model has none (use prompt/completion records)".into(),
                ))
            }
            (record, None) => {
                let (prompt, target) = match record {
                    Record::PromptCompletion { prompt, completion } => (self.format_prompt(prompt), completion.clone()),
                    Record::Alpaca { instruction, input, output } => (alpaca_prompt(instruction, input), output.clone()),
                    Record::Text(_) | Record::Messages(_) => unreachable!("handled above"),
                };
                let p = self.tokenizer.encode(&prompt, true).map_err(|e| bad("prompt", e.to_string()))?;
                let c = self.tokenizer.encode(&target, false).map_err(|e| bad("completion", e.to_string()))?;
                seq.push(&p, self.options.train_on_prompt);
                seq.push(&c, true);
                self.close_target(&mut seq);
            }
            (record, Some(template)) => self.encode_chat(template, &self.messages(record), &mut seq).map_err(|e| bad("(template)", e))?,
        }
        self.truncate(path, r.line, seq)
    }

    /// Turn by turn: the prompt before each assistant turn (as generation would see it), then
    /// the turn itself up to and including its end-of-turn token.
    fn encode_chat(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
        seq: &mut Sequence,
    ) -> Result<(), String> {
        self.encode_chat_from(template, messages, 0, seq)
    }

    /// `encode_chat` with the assistant turns before message `first_target` kept as context
    /// (not targets).
    fn encode_chat_from(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
        first_target: usize,
        seq: &mut Sequence,
    ) -> Result<(), String> {
        let mut consumed = String::new();
        let marker = template.end_of_turn_marker();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let target = i >= first_target;
            let prompt_text = template
                .render(&messages[..i], true)
                .map_err(|e| e.to_string())?;
            let full_text = template
                .render(&messages[..=i], false)
                .map_err(|e| e.to_string())?;
            let (Some(new_prompt), Some(turn)) = (
                prompt_text.strip_prefix(&consumed),
                full_text.strip_prefix(&prompt_text),
            ) else {
                return Err(format!(
                    "the chat template does not render turn {i} as a continuation of the turns before it, so its loss mask cannot be built"
                ));
            };
            let prompt_ids = self
                .tokenizer
                .encode(new_prompt, false)
                .map_err(|e| e.to_string())?;
            seq.push(&prompt_ids, self.options.train_on_prompt);
            // The target ends with the end-of-turn marker; what follows it (a newline) is not.
            let (turn_text, rest) =
                match marker.and_then(|mk| turn.find(mk).map(|at| at + mk.len())) {
                    Some(end) => turn.split_at(end),
                    None => (turn, ""),
                };
            let target_ids = self
                .tokenizer
                .encode(turn_text, false)
                .map_err(|e| e.to_string())?;
            if target {
                seq.push(&target_ids, true);
                self.close_target(seq);
            } else {
                seq.push(&target_ids, self.options.train_on_prompt);
            }
            let rest_ids = self
                .tokenizer
                .encode(rest, false)
                .map_err(|e| e.to_string())?;
            seq.push(&rest_ids, self.options.train_on_prompt);
            consumed = full_text;
        }
        Ok(())
    }

    /// Appends EOS as a trained token unless the target already ends with a stop token.
    fn close_target(&self, seq: &mut Sequence) {
        let ends_with_stop = seq.ids.last().is_some_and(|&id| self.tokenizer.is_stop(id));
        if let (false, Some(eos)) = (ends_with_stop, self.eos) {
            seq.push(&[eos], true);
        }
    }

    fn truncate(
        &self,
        path: &std::path::Path,
        line: usize,
        mut seq: Sequence,
    ) -> Result<Encoded, DataError> {
        let max = self.options.max_seq_len;
        let truncated = seq.ids.len() > max;
        if truncated {
            let cut = seq.ids.len() - max;
            match self.options.truncation {
                Truncation::Left => {
                    seq.ids.drain(..cut);
                    seq.trained.drain(..cut);
                }
                Truncation::Right => {
                    seq.ids.truncate(max);
                    seq.trained.truncate(max);
                }
            }
        }
        if let Some(first) = seq.trained.first_mut() {
            *first = false; // nothing predicts the first token
        }
        if !seq.trained.iter().any(|&t| t) {
            if self.options.skip_untrainable && truncated {
                return Ok(Encoded::SkippedUntrainable { line });
            }
            let reason = if truncated {
                format!(
                    "every target token is past max_seq_len {max} (truncation {:?})",
                    self.options.truncation
                )
                .to_lowercase()
            } else {
                "the example has no target token".into()
            };
            return Err(DataError::bad_record(path, line, "(length)", reason));
        }
        Ok(Encoded::Example(Example {
            line,
            ids: seq.ids,
            trained: seq.trained,
            truncated,
        }))
    }
}

/// Windows of at most `max` tokens overlapping by one; each trains on all but its first token.
fn windows(line: usize, ids: &[u32], max: usize) -> Vec<Example> {
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = (start + max).min(ids.len());
        let window = ids[start..end].to_vec();
        let mut trained = vec![true; window.len()];
        trained[0] = false;
        out.push(Example {
            line,
            ids: window,
            trained,
            truncated: false,
        });
        start = end - 1;
    }
    out
}

fn alpaca_prompt(instruction: &str, input: &str) -> String {
    // https://github.com/tatsu-lab/stanford_alpaca/blob/761dc5b/train.py#L31
    if input.is_empty() {
        format!("{ALPACA_HEADER}\n\n### Instruction:\n{instruction}\n\n### Response:\n")
    } else {
        format!("{ALPACA_HEADER_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
    }
}

#[derive(Debug, Default)]
struct Sequence {
    ids: Vec<u32>,
    trained: Vec<bool>,
}

impl Sequence {
    fn push(&mut self, ids: &[u32], trained: bool) {
        self.ids.extend_from_slice(ids);
        self.trained.extend(std::iter::repeat_n(trained, ids.len()));
    }
}
