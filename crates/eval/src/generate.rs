//! Autoregressive generation with a KV cache: greedy or sampled (temperature, top-k, top-p),
//! repetition penalty, stop at EOS / end of turn, streamed as text.

use std::time::Instant;

use candle_core::{DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Serialize;
use tuna_model::tokenizer::TextStream;
use tuna_model::{KvCache, Pretrained};

use crate::error::{EvalError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// 1.0 means none; > 1 discourages tokens seen in the last `repeat_last_n`.
    pub repetition_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
    /// Keep going past stop tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 299_792_458,
            ignore_eos: false,
        }
    }
}

impl SamplingOptions {
    /// Checks ranges; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| {
            Err(EvalError::BadOption {
                field,
                reason: reason.into(),
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("--temperature", "must be a finite number >= 0");
        }
        if self.top_k == Some(0) {
            return bad("--top-k", "must be at least 1");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("--top-p", "must be in (0, 1]");
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("--repetition-penalty", "must be a finite number > 0");
        }
        if self.max_new_tokens == 0 {
            return bad("--max-new-tokens", "must be at least 1");
        }
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        match (temperature, self.top_k, self.top_p) {
            (t, _, _) if t <= 0.0 => Sampling::ArgMax,
            (t, None, None) => Sampling::All { temperature: t },
            (t, Some(k), None) => Sampling::TopK { k, temperature: t },
            (t, None, Some(p)) => Sampling::TopP { p, temperature: t },
            (t, Some(k), Some(p)) => Sampling::TopKThenTopP {
                k,
                p,
                temperature: t,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop token (EOS or end of turn) was generated.
    Stop,
    MaxNewTokens,
    /// The model's context length was reached.
    ContextFull,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub prompt_seconds: f64,
    pub generated_tokens: usize,
    /// Time for all tokens after the first (each one forward of one token).
    pub generation_seconds: f64,
    pub stop_reason: StopReason,
}

impl GenerationStats {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_seconds.max(1e-9)
    }

    pub fn generation_tokens_per_second(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.generation_seconds.max(1e-9)
    }
}

/// Generates after `prompt_ids`, calling `on_text` with each printable piece. Returns the new
/// ids (stop token excluded) and timings.
pub fn generate(
    model: &Pretrained,
    prompt_ids: &[u32],
    options: &SamplingOptions,
    mut on_text: impl FnMut(&str),
) -> Result<(Vec<u32>, GenerationStats)> {
    options.validate()?;
    if prompt_ids.is_empty() {
        return Err(EvalError::EmptyPrompt);
    }
    let llama = &model.model;
    let device = llama.device();
    let context = model.config.max_position_embeddings;
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let mut processor = LogitsProcessor::from_sampling(options.seed, options.sampling());
    let mut stream = TextStream::new(&model.tokenizer);
    let mut all: Vec<u32> = prompt_ids.to_vec();
    let mut new_ids = Vec::new();

    let started = Instant::now();
    let input = Tensor::new(prompt_ids, device)?.unsqueeze(0)?;
    let mut logits = llama.forward_cached(&input, &mut cache)?;
    let prompt_seconds = started.elapsed().as_secs_f64();
    let gen_started = Instant::now();
    let stop_reason = loop {
        // (1, v) -> (v,)
        let mut row = logits.squeeze(0)?.to_dtype(DType::F32)?;
        if options.repetition_penalty != 1.0 {
            let from = all.len().saturating_sub(options.repeat_last_n);
            row = candle_transformers::utils::apply_repeat_penalty(
                &row,
                options.repetition_penalty,
                &all[from..],
            )?;
        }
        let next = processor.sample(&row)?;
        if !options.ignore_eos && model.tokenizer.is_stop(next) {
            break StopReason::Stop;
        }
        new_ids.push(next);
        all.push(next);
        if let Some(text) = stream.push(next)? {
            on_text(&text);
        }
        if new_ids.len() >= options.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        if all.len() >= context {
            break StopReason::ContextFull;
        }
        let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
        logits = llama.forward_cached(&input, &mut cache)?;
    };
    if let Some(text) = stream.finish()? {
        on_text(&text);
    }
    let stats = GenerationStats {
        prompt_tokens: prompt_ids.len(),
        prompt_seconds,
        generated_tokens: new_ids.len(),
        generation_seconds: gen_started.elapsed().as_secs_f64(),
        stop_reason,
    };
    Ok((new_ids, stats))
}
