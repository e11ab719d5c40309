//! Scoring prompts on one model: the log-likelihood of candidate answers (label ranking) and
//! greedy generation, with a KV cache that keeps the prompt prefix shared with the previous
//! call — few-shot prompts repeat their shots for every example, so only each example's own
//! tail is computed.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use tuna_data::{EncodeOptions, Encoded, Encoder, LineRecord, PromptFormat, Record};
use tuna_model::cpu_time::CpuTimer;
use tuna_model::{AttentionLayout, Kernels, KvCache, Llama, Message, Pretrained};

use crate::error::{EvalError, Result};

/// A prompt and, per candidate answer, the tokens that follow it (the answer and its end of
/// turn).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptAndAnswers {
    pub prompt: Vec<u32>,
    pub candidates: Vec<Vec<u32>>,
}

/// Encodes prompts exactly as training encodes examples (tuna-data's `Encoder`): the chat
/// template for instruct models, raw text otherwise.
pub struct PromptEncoder<'a> {
    encoder: Encoder<'a>,
    path: &'a Path,
    context: usize,
}

impl<'a> PromptEncoder<'a> {
    pub fn new(model: &'a Pretrained, options: &'a EncodeOptions, path: &'a Path) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(model, options)?,
            path,
            context: model.config.max_position_embeddings,
        })
    }

    /// Options for scoring: no template of their own (strategies word the prompt), the
    /// model's whole context.
    pub fn options(model: &Pretrained) -> EncodeOptions {
        EncodeOptions {
            format: PromptFormat::Auto,
            max_seq_len: model.config.max_position_embeddings,
            prompt_template: None,
            system: None,
            ..EncodeOptions::default()
        }
    }

    /// The ids generation is fed for `messages` (ending with a user turn).
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encoder
            .prompt_ids(messages)
            .map_err(|reason| EvalError::Prompt { reason })
    }

    /// The prompt and each answer's trained tokens, as the training encoder lays them out.
    pub fn with_answers(
        &self,
        line: usize,
        messages: &[Message],
        answers: &[String],
    ) -> Result<PromptAndAnswers> {
        let mut prompt: Option<Vec<u32>> = None;
        let mut candidates = Vec::with_capacity(answers.len());
        for answer in answers {
            let record = if self.encoder.is_chat() {
                let mut m = messages.to_vec();
                m.push(Message::new("assistant", answer));
                Record::Messages(m)
            } else {
                let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                Record::PromptCompletion {
                    prompt: text.join("\n\n"),
                    completion: answer.clone(),
                }
            };
            let encoded = self
                .encoder
                .encode(self.path, &LineRecord { line, record })?;
            let example = match encoded {
                Encoded::Example(x) if !x.truncated => x,
                _ => {
                    return Err(EvalError::Prompt {
                        reason: format!(
                            "line {line}: the prompt with its answer does not fit the model's context ({} tokens); use fewer --shots",
                            self.context
                        ),
                    })
                }
            };
            // The answer is the last run of trained tokens.
            let end = example
                .trained
                .iter()
                .rposition(|&t| t)
                .map_or(0, |i| i + 1);
            let start = example.trained[..end]
                .iter()
                .rposition(|&t| !t)
                .map_or(0, |i| i + 1);
            let (p, c) = (&example.ids[..start], &example.ids[start..end]);
            match &prompt {
                None => prompt = Some(p.to_vec()),
                Some(q) if q == p => {}
                Some(_) => {
                    return Err(EvalError::Prompt {
                        reason: format!("line {line}: the answers change how the prompt tokenizes, so they cannot be ranked after one shared prompt"),
                    })
                }
            }
            candidates.push(c.to_vec());
        }
        Ok(PromptAndAnswers {
            prompt: prompt.unwrap_or_default(),
            candidates,
        })
    }
}

/// Wall time and tokens spent by a scorer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Prompt tokens of all calls (what an API would bill), and those actually computed
    /// (the rest came from the shared-prefix cache).
    pub prompt_tokens: usize,
    pub computed_tokens: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
    /// CPU-seconds of this process (all threads) over the same calls.
    pub cpu_seconds: f64,
}

pub struct Scorer<'a> {
    model: &'a Pretrained,
    cache: KvCache,
    /// The tokens whose keys and values `cache` holds.
    cached: Vec<u32>,
    pub usage: Usage,
}

impl<'a> Scorer<'a> {
    pub fn new(model: &'a Pretrained) -> Self {
        Self {
            model,
            cache: KvCache::new(model.config.num_hidden_layers),
            cached: Vec::new(),
            usage: Usage::default(),
        }
    }

    /// Runs the part of `prompt` not already cached; returns the log-probabilities of the
    /// next token (v).
    fn feed(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        if prompt.is_empty() {
            return Err(EvalError::EmptyPrompt);
        }
        let shared = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // At least the last prompt token runs, for its logits.
        let keep = shared.min(prompt.len() - 1);
        self.cache.truncate(keep)?;
        let new = &prompt[keep..];
        let ids = Tensor::new(new, self.model.model.device())?.unsqueeze(0)?;
        let llama = &self.model.model;
        let layout = AttentionLayout::causal(1, new.len(), keep, llama.config.sliding_window);
        let hidden = llama.hidden_states(&ids, &layout, Some(&mut self.cache), Kernels::Fused)?;
        let logits = llama.logits(&hidden)?;
        self.cached = prompt.to_vec();
        self.usage.prompt_tokens += prompt.len();
        self.usage.computed_tokens += new.len();
        let last = logits.squeeze(0)?.get(new.len() - 1)?;
        log_softmax(&last)
    }

    /// Runs several continuations of the cached prompt in one forward (each sees the prompt
    /// and its own earlier tokens, at the positions it would take alone) and returns the
    /// logits of every branch token, branches one after another, (Σ len, v). The cache is
    /// left holding the prompt only.
    fn run_branches(&mut self, branches: &[&[u32]]) -> Result<Tensor> {
        let llama = &self.model.model;
        let start = self.cache.len();
        let lengths: Vec<usize> = branches.iter().map(|b| b.len()).collect();
        let layout = AttentionLayout::branches(&lengths, start, llama.config.sliding_window);
        let ids = Tensor::from_vec(branches.concat(), (1, layout.queries), llama.device())?;
        let hidden = llama.hidden_states(&ids, &layout, Some(&mut self.cache), Kernels::Fused)?;
        self.cache.truncate(start)?;
        // (1, t, d) -> (t, v)
        Ok(llama.logits(&hidden.squeeze(0)?)?)
    }

    /// Σ log p(candidate tokens | prompt) for each candidate. The candidates' tokens after
    /// their first run together in one forward over the cached prompt (each sees the prompt
    /// and its own tokens only), not one forward each.
    pub fn rank(&mut self, prompt: &[u32], candidates: &[Vec<u32>]) -> Result<Vec<f64>> {
        let started = Instant::now();
        let cpu = CpuTimer::start();
        let first = self.feed(prompt)?;
        // A candidate's first token is scored by the prompt's last logits; the rest by the
        // branch forward, fed every token but the candidate's last.
        let branches: Vec<&[u32]> = candidates
            .iter()
            .filter(|c| c.len() > 1)
            .map(|c| &c[..c.len() - 1])
            .collect();
        let mut rest = Vec::new();
        if !branches.is_empty() {
            let logits = self.run_branches(&branches)?;
            let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
            let targets: Vec<u32> = candidates
                .iter()
                .filter(|c| c.len() > 1)
                .flat_map(|c| c[1..].iter().copied())
                .collect();
            let targets = Tensor::new(targets.as_slice(), logp.device())?.unsqueeze(1)?;
            rest = logp.gather(&targets, 1)?.squeeze(1)?.to_vec1::<f32>()?;
            self.usage.computed_tokens += rest.len();
        }
        let mut rest = rest.into_iter();
        let scores = candidates
            .iter()
            .map(|c| match c.first() {
                // An answer with no tokens cannot be scored; it never wins.
                None => f64::NEG_INFINITY,
                Some(&c0) => {
                    let tail: f64 = rest.by_ref().take(c.len() - 1).map(f64::from).sum();
                    first[c0 as usize] as f64 + tail
                }
            })
            .collect();
        self.usage.seconds += started.elapsed().as_secs_f64();
        self.usage.cpu_seconds += cpu.seconds();
        Ok(scores)
    }
}

impl Scorer<'_> {
    /// Greedy decoding of several prompts at once: left-padded into one batch with one KV
    /// cache, each row stopping at its own stop token (excluded) or `max_new` tokens.
    pub fn greedy_batch(&mut self, prompts: &[Vec<u32>], max_new: usize) -> Result<Vec<Vec<u32>>> {
        let started = Instant::now();
        let cpu = CpuTimer::start();
        let b = prompts.len();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 {
            return Ok(Vec::new());
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(EvalError::EmptyPrompt);
        }
        let context = self.model.config.max_position_embeddings;
        if longest + max_new > context {
            return Err(EvalError::Prompt {
                reason: format!("a prompt of {longest} tokens plus {max_new} new ones does not fit the model's context ({context} tokens); use fewer --shots or a lower --max-new-tokens"),
            });
        }
        let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let mut ids = Vec::with_capacity(b * longest);
        for (p, &n) in prompts.iter().zip(&pad) {
            // Padding positions are masked out; any id will do.
            ids.extend(std::iter::repeat_n(p[0], n));
            ids.extend_from_slice(p);
        }
        let llama = &self.model.model;
        let device = llama.device();
        let mut cache = KvCache::new(self.model.config.num_hidden_layers);
        let ids = Tensor::from_vec(ids, (b, longest), device)?;
        let mut logits = last_logits_left_padded(llama, &ids, &mut cache, &pad)?;
        let mut out = vec![Vec::new(); b];
        let mut done = vec![max_new == 0; b];
        while !done.iter().all(|&d| d) {
            let next = logits
                .argmax(D::Minus1)?
                .to_dtype(DType::U32)?
                .to_vec1::<u32>()?;
            for (r, &id) in next.iter().enumerate() {
                if done[r] {
                    continue;
                }
                if self.model.tokenizer.is_stop(id) {
                    done[r] = true;
                } else {
                    out[r].push(id);
                    done[r] = out[r].len() >= max_new;
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
            let ids = Tensor::from_vec(next, (b, 1), device)?;
            logits = last_logits_left_padded(llama, &ids, &mut cache, &pad)?;
        }
        self.usage.prompt_tokens += prompts.iter().map(Vec::len).sum::<usize>();
        self.usage.computed_tokens += b * longest;
        self.usage.generated_tokens += out.iter().map(Vec::len).sum::<usize>();
        self.usage.seconds += started.elapsed().as_secs_f64();
        self.usage.cpu_seconds += cpu.seconds();
        Ok(out)
    }
}

fn log_softmax(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?.to_vec1::<f32>()?)
}

/// Left-padded rows (b, t) after the same rows in `cache`: the logits of each row's last
/// position, (b, v).
fn last_logits_left_padded(
    llama: &Llama,
    ids: &Tensor,
    cache: &mut KvCache,
    left_pad: &[usize],
) -> Result<Tensor> {
    let t = ids.dim(1)?;
    let layout =
        AttentionLayout::left_padded(left_pad, t, cache.len(), llama.config.sliding_window);
    let hidden = llama.hidden_states(ids, &layout, Some(cache), Kernels::Fused)?;
    Ok(llama.logits(&hidden.narrow(1, t - 1, 1)?)?.squeeze(1)?)
}
