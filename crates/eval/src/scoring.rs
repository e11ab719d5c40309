//! Scoring prompts on one model: the log-likelihood of candidate answers (label ranking) and
//! greedy generation, with a KV cache that keeps the prompt prefix shared with the previous
//! call — few-shot prompts repeat their shots for every example, so only each example's own
//! tail is computed.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use tuna_data::{EncodeOptions, Encoded, Encoder, LineRecord, PromptFormat, Record};
use tuna_model::cpu_time::CpuTimer;
use tuna_model::{AttentionLayout, Branch, Kernels, KvCache, Llama, Message, Pretrained};

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

    /// Σ log p(candidate tokens | prompt) for each candidate of each row, every row in one
    /// forward. The prefix the rows' prompts share is run once and stays cached for the next
    /// call (few-shot prompts repeat their shots for every example); each row's own prompt
    /// continues it, and each candidate's tokens after its first continue their row's prompt,
    /// each seeing only what it would see run alone. Only the positions whose next token is
    /// scored go through the vocabulary projection.
    pub fn rank_rows(&mut self, rows: &[PromptAndAnswers]) -> Result<Vec<Vec<f64>>> {
        let started = Instant::now();
        let cpu = CpuTimer::start();
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        if rows.iter().any(|r| r.prompt.is_empty()) {
            return Err(EvalError::EmptyPrompt);
        }
        let shared = rows
            .iter()
            .map(|r| shareable(&first.prompt, &r.prompt))
            .min()
            .unwrap_or(0);
        self.extend_cache(&first.prompt[..shared])?;

        let RankForward {
            branches,
            ids,
            picks,
            scored,
        } = RankForward::lay_out(rows, shared);
        let llama = &self.model.model;
        let layout = AttentionLayout::tree(&branches, shared, llama.config.sliding_window)?;
        let computed = ids.len();
        let ids = Tensor::from_vec(ids, (1, computed), llama.device())?;
        let hidden = llama.hidden_states(&ids, &layout, Some(&mut self.cache), Kernels::Fused)?;
        self.cache.truncate(shared)?;
        let picks_t = Tensor::from_vec(
            picks.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            picks.len(),
            llama.device(),
        )?;
        let logits = llama.logits(&hidden.squeeze(0)?.index_select(&picks_t, 0)?)?;
        let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
        let vocab = logp.dim(1)?;
        let flat: Vec<i64> = scored
            .iter()
            .flatten()
            .flatten()
            .map(|&(pick, token)| (pick * vocab) as i64 + i64::from(token))
            .collect();
        let count = flat.len();
        let flat_t = Tensor::from_vec(flat, count, llama.device())?;
        let values = logp
            .flatten_all()?
            .index_select(&flat_t, 0)?
            .to_vec1::<f32>()?;
        let mut values = values.into_iter();
        let scores = scored
            .iter()
            .map(|per_candidate| {
                per_candidate
                    .iter()
                    .map(|tokens| match tokens.len() {
                        // An answer with no tokens cannot be scored; it never wins.
                        0 => f64::NEG_INFINITY,
                        n => values.by_ref().take(n).map(f64::from).sum(),
                    })
                    .collect()
            })
            .collect();
        self.usage.prompt_tokens += rows.iter().map(|r| r.prompt.len()).sum::<usize>();
        self.usage.computed_tokens += computed;
        self.usage.seconds += started.elapsed().as_secs_f64();
        self.usage.cpu_seconds += cpu.seconds();
        Ok(scores)
    }

    /// Makes the cache hold exactly `prefix`, running only what it does not already hold.
    fn extend_cache(&mut self, prefix: &[u32]) -> Result<()> {
        let kept = common_prefix(&self.cached, prefix);
        self.cache.truncate(kept)?;
        self.cached.truncate(kept);
        if kept < prefix.len() {
            let llama = &self.model.model;
            let new = &prefix[kept..];
            let ids = Tensor::new(new, llama.device())?.unsqueeze(0)?;
            let layout = AttentionLayout::causal(1, new.len(), kept, llama.config.sliding_window);
            llama.hidden_states(&ids, &layout, Some(&mut self.cache), Kernels::Fused)?;
            self.usage.computed_tokens += new.len();
        }
        self.cached = prefix.to_vec();
        Ok(())
    }
}

/// What `Scorer::rank_rows` runs after the shared prefix: the branches, their tokens one
/// after another, the positions among them whose logits score a token, and per row and
/// candidate its (position among `picks`, token) pairs (none for an empty candidate).
struct RankForward {
    branches: Vec<Branch>,
    ids: Vec<u32>,
    picks: Vec<usize>,
    scored: Vec<Vec<Vec<(usize, u32)>>>,
}

impl RankForward {
    /// Each row's prompt after `shared` is a branch off the prefix, scored at its last
    /// token; each candidate's tokens but its last are a branch off its row, each scoring
    /// the next.
    fn lay_out(rows: &[PromptAndAnswers], shared: usize) -> Self {
        let mut f = Self {
            branches: Vec::new(),
            ids: Vec::new(),
            picks: Vec::new(),
            scored: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            let own = &row.prompt[shared..];
            let root = f.branches.len();
            f.branches.push(Branch {
                len: own.len(),
                parent: None,
            });
            f.ids.extend_from_slice(own);
            f.picks.push(f.ids.len() - 1);
            let last = f.picks.len() - 1;
            let mut per_candidate = Vec::with_capacity(row.candidates.len());
            for c in &row.candidates {
                let Some((&c0, rest)) = c.split_first() else {
                    per_candidate.push(Vec::new());
                    continue;
                };
                let mut tokens = vec![(last, c0)];
                if !rest.is_empty() {
                    f.branches.push(Branch {
                        len: rest.len(),
                        parent: Some(root),
                    });
                    for (&fed, &next) in c.iter().zip(rest) {
                        f.ids.push(fed);
                        f.picks.push(f.ids.len() - 1);
                        tokens.push((f.picks.len() - 1, next));
                    }
                }
                per_candidate.push(tokens);
            }
            f.scored.push(per_candidate);
        }
        f
    }
}

/// Tokens one label-ranking forward aims to compute (see `rank_batches`). Measured on the
/// sentiment task's zero-shot pass (BENCHMARKS.md): 160 tokens left the products small, and
/// from 512 up the attention over every branch of the batch (the mask hides most of it)
/// cost more than the larger products saved.
pub const RANK_BATCH_TOKENS: usize = 256;

/// Splits rows, in order, into batches for `Scorer::rank_rows` that compute about `tokens`
/// tokens each: each row's prompt after the prefix its batch shares, and its candidates'
/// tokens after their first. A batch holds at least one row.
pub fn rank_batches(rows: &[PromptAndAnswers], tokens: usize) -> Vec<&[PromptAndAnswers]> {
    let tails = |r: &PromptAndAnswers| -> usize {
        r.candidates.iter().map(|c| c.len().saturating_sub(1)).sum()
    };
    let mut batches = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let first = &rows[start];
        let mut shared = shareable(&first.prompt, &first.prompt);
        let (mut prompts, mut tail) = (first.prompt.len(), tails(first));
        let mut end = start + 1;
        while let Some(next) = rows.get(end) {
            let s = shared.min(shareable(&first.prompt, &next.prompt));
            let n = end + 1 - start;
            let cost = prompts + next.prompt.len() - n * s + tail + tails(next);
            if cost > tokens {
                break;
            }
            (shared, prompts, tail) = (s, prompts + next.prompt.len(), tail + tails(next));
            end += 1;
        }
        batches.push(&rows[start..end]);
        start = end;
    }
    batches
}

/// How much of `first` a batch with `prompt` can run once for both: their common prefix,
/// short of `prompt`'s last token, which runs with the row for its logits.
fn shareable(first: &[u32], prompt: &[u32]) -> usize {
    common_prefix(first, prompt).min(prompt.len().saturating_sub(1))
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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
