//! Token-weighted loss on held-out data: cross-entropy summed over the target tokens (the same
//! loss mask as training: completions and assistant turns, every token of text records),
//! divided by their count over the whole file.
//!
//! b batch, t tokens, d hidden, v vocab, n rows in a head chunk.

use std::path::Path;

use candle_core::{DType, Tensor, D};
use serde::Serialize;
use tuna_data::{Batch, Dataset, EncodeOptions, Encoder, Example, FieldNames, ShotPool};
use tuna_model::{AttentionLayout, Kernels, Llama, Packing, Pretrained, TrainBatch};

use crate::error::{EvalError, Result};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LossReport {
    /// Mean negative log-likelihood per target token, in nats.
    pub loss: f64,
    pub perplexity: f64,
    /// Target tokens scored.
    pub tokens: usize,
    pub records: usize,
    /// Examples cut to max_seq_len, and those dropped because no target was left.
    pub truncated: usize,
    pub skipped: usize,
}

/// Rows of the vocabulary projection computed at once, so that (tokens × v) logits are never
/// all in memory: 512 × 49152 f32 is 100 MB.
const HEAD_CHUNK_ROWS: usize = 512;

/// The final hidden states of the batch's target positions, (n, d), and their target ids,
/// (n,). Only these rows need the vocabulary projection: on a label task 1-3% of the tokens.
pub fn target_rows(
    model: &Llama,
    batch: &Batch,
    kernels: Kernels,
) -> candle_core::Result<(Tensor, Tensor)> {
    let device = model.device();
    let ids = Tensor::from_slice(&batch.inputs, (batch.rows, batch.cols), device)?;
    let packing = batch.packed.then_some(Packing {
        positions: &batch.positions,
        segments: &batch.segments,
    });
    let layout = match packing {
        Some(p) => AttentionLayout::packed(p, batch.rows, batch.cols, model.config.sliding_window)?,
        None => AttentionLayout::causal(batch.rows, batch.cols, 0, model.config.sliding_window),
    };
    let hidden = model.hidden_states(&ids, &layout, None, kernels)?;
    let (b, t, d) = hidden.dims3()?;
    let rows: Vec<u32> = (0..b * t)
        .filter(|&i| batch.weights[i] > 0.0)
        .map(|i| i as u32)
        .collect();
    let targets: Vec<u32> = rows.iter().map(|&i| batch.targets[i as usize]).collect();
    let n = rows.len();
    // (b, t, d) -> (b*t, d) -> (n, d)
    let hidden = hidden
        .reshape((b * t, d))?
        .index_select(&Tensor::from_vec(rows, n, device)?, 0)?;
    Ok((hidden, Tensor::from_vec(targets, n, device)?))
}

/// The batch as the hand-written pass takes it.
pub fn train_batch(batch: &Batch) -> TrainBatch<'_> {
    TrainBatch {
        ids: &batch.inputs,
        rows: batch.rows,
        cols: batch.cols,
        packing: batch.packed.then_some(Packing {
            positions: &batch.positions,
            segments: &batch.segments,
        }),
        targets: &batch.targets,
        weights: &batch.weights,
    }
}

/// (summed NLL over the batch's weighted targets, their count). No gradient. On the CPU in
/// f32 the forward is the training pass's (`Llama::loss`: its attention skips the keys a
/// causal query cannot see, and its kernels write in place); elsewhere candle's.
pub fn batch_nll(model: &Llama, batch: &Batch) -> candle_core::Result<(f64, usize)> {
    if model.supports_fused_backward() {
        return Ok((model.loss(&train_batch(batch))?, batch.n_targets));
    }
    let (hidden, targets) = target_rows(model, batch, Kernels::Fused)?;
    let n = targets.dim(0)?;
    let mut sum = 0f64;
    for start in (0..n).step_by(HEAD_CHUNK_ROWS) {
        let len = HEAD_CHUNK_ROWS.min(n - start);
        // (len, d) -> (len, v)
        let logits = model
            .lm_head
            .forward(&hidden.narrow(0, start, len)?)?
            .to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let target = targets.narrow(0, start, len)?.unsqueeze(1)?;
        sum -= logp
            .gather(&target, 1)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok((sum, batch.n_targets))
}

/// (Σ −log p(ids[i + 1] | ids[..=i]), the count) over one sequence: the perplexity of a
/// chunk of text, as llama-perplexity scores it (every prediction counted).
pub fn sequence_nll(model: &Llama, ids: &[u32]) -> candle_core::Result<(f64, usize)> {
    let example = Example {
        line: 0,
        ids: ids.to_vec(),
        trained: vec![true; ids.len()],
        truncated: false,
    };
    batch_nll(model, &Batch::from_rows(&[vec![&example]], 0, 1))
}

/// Summed NLL and target count over `examples`, longest first in batches of about
/// `tokens_per_batch` tokens.
pub fn examples_nll(
    model: &Llama,
    examples: &[Example],
    tokens_per_batch: usize,
) -> candle_core::Result<(f64, usize)> {
    let mut order: Vec<&Example> = examples.iter().collect();
    order.sort_by_key(|x| std::cmp::Reverse(x.ids.len()));
    let (mut sum, mut count) = (0f64, 0usize);
    let mut i = 0;
    while i < order.len() {
        let rows = (tokens_per_batch / order[i].ids.len().max(1)).max(1);
        let group: Vec<Vec<&Example>> = order[i..(i + rows).min(order.len())]
            .iter()
            .map(|x| vec![*x])
            .collect();
        let (s, c) = batch_nll(model, &Batch::from_rows(&group, 0, 1))?;
        sum += s;
        count += c;
        i += group.len();
    }
    Ok((sum, count))
}

/// Loss and perplexity of `model` on a JSONL file of any record kind.
pub fn evaluate_loss(
    model: &Pretrained,
    path: &Path,
    options: &EncodeOptions,
    fields: &FieldNames,
    limit: Option<usize>,
    tokens_per_batch: usize,
) -> Result<LossReport> {
    evaluate_loss_with_shots(model, path, options, fields, limit, tokens_per_batch, None)
}

/// `evaluate_loss`, with training shots (`options.shots`) drawn from `pool` (None: the file
/// itself), as the run that trained the adapter drew them.
pub fn evaluate_loss_with_shots(
    model: &Pretrained,
    path: &Path,
    options: &EncodeOptions,
    fields: &FieldNames,
    limit: Option<usize>,
    tokens_per_batch: usize,
    pool: Option<ShotPool>,
) -> Result<LossReport> {
    let encoder = Encoder::new(model, options)?;
    let data = Dataset::load_first(path, &encoder, fields, pool, limit)?;
    if data.examples.is_empty() {
        return Err(EvalError::NothingToScore {
            path: path.display().to_string(),
        });
    }
    let (sum, count) = examples_nll(&model.model, &data.examples, tokens_per_batch)?;
    let loss = sum / count as f64;
    Ok(LossReport {
        loss,
        perplexity: loss.exp(),
        tokens: count,
        records: data.records,
        truncated: data.truncated,
        skipped: data.skipped_untrainable,
    })
}
