//! Token-weighted language-model loss: the cross-entropy of every next-token prediction,
//! summed, divided by the number of predictions over the whole file.
//!
//! b batch, t tokens, d hidden, v vocab, n rows in a head chunk.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;
use tuna_data::{read_jsonl, record::text_records};
use tuna_model::{Kernels, Llama, Pretrained};

use crate::error::{EvalError, Result};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LossReport {
    /// Mean negative log-likelihood per predicted token, in nats.
    pub loss: f64,
    pub perplexity: f64,
    /// Predicted tokens.
    pub tokens: usize,
    pub records: usize,
}

/// Summed cross-entropy of predicting `ids[i + 1]` from `ids[..=i]`, over every position
/// whose `weights` entry is 1: returns (sum, count).
pub struct SequenceBatch {
    /// (b, t) input ids, right-padded.
    pub ids: Tensor,
    /// (b, t) target ids (padding positions hold any valid id).
    pub targets: Tensor,
    /// (b, t) 1.0 where the target counts, 0.0 elsewhere.
    pub weights: Tensor,
}

impl SequenceBatch {
    /// Next-token batch from token sequences: inputs are all but the last token, targets all
    /// but the first; rows are right-padded to the longest.
    pub fn next_token(seqs: &[&[u32]], device: &Device) -> candle_core::Result<Self> {
        let t = seqs
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .max(1);
        let b = seqs.len();
        let (mut ids, mut targets, mut weights) =
            (vec![0u32; b * t], vec![0u32; b * t], vec![0f32; b * t]);
        for (row, s) in seqs.iter().enumerate() {
            for i in 0..s.len().saturating_sub(1) {
                ids[row * t + i] = s[i];
                targets[row * t + i] = s[i + 1];
                weights[row * t + i] = 1.0;
            }
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            targets: Tensor::from_vec(targets, (b, t), device)?,
            weights: Tensor::from_vec(weights, (b, t), device)?,
        })
    }
}

/// Rows of the vocabulary projection computed at once, so that (tokens × v) logits are never
/// all in memory: 512 × 49152 f32 is 100 MB.
const HEAD_CHUNK_ROWS: usize = 512;

/// (summed NLL over weighted targets, number of weighted targets), no gradient.
pub fn batch_nll(model: &Llama, batch: &SequenceBatch) -> candle_core::Result<(f64, usize)> {
    let hidden = model.hidden_states(&batch.ids, None, Kernels::Fused)?;
    let (b, t, d) = hidden.dims3()?;
    // (b, t, d) -> (b*t, d)
    let hidden = hidden.reshape((b * t, d))?;
    let targets = batch.targets.flatten_all()?;
    let weights = batch.weights.flatten_all()?;
    let mut sum = 0f64;
    for start in (0..b * t).step_by(HEAD_CHUNK_ROWS) {
        let n = HEAD_CHUNK_ROWS.min(b * t - start);
        // (n, d) -> (n, v)
        let logits = model
            .lm_head
            .forward(&hidden.narrow(0, start, n)?)?
            .to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let target = targets.narrow(0, start, n)?.unsqueeze(1)?;
        let nll = logp.gather(&target, 1)?.squeeze(1)?.neg()?;
        let w = weights.narrow(0, start, n)?;
        sum += (nll * w)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let count = batch.weights.sum_all()?.to_scalar::<f32>()? as usize;
    Ok((sum, count))
}

/// Splits a long sequence into windows of at most `seq_len + 1` tokens that overlap by one,
/// so each next-token prediction is counted exactly once.
fn windows(ids: &[u32], seq_len: usize) -> Vec<&[u32]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = (start + seq_len + 1).min(ids.len());
        out.push(&ids[start..end]);
        start = end - 1;
    }
    out
}

/// Loss and perplexity of `model` on a JSONL file of `{"text": ...}` records, every
/// next-token prediction counted. Texts longer than `seq_len` are scored in windows.
pub fn evaluate_text_loss(
    model: &Pretrained,
    path: &Path,
    seq_len: usize,
    limit: Option<usize>,
    tokens_per_batch: usize,
) -> Result<LossReport> {
    if seq_len == 0 {
        return Err(EvalError::BadOption {
            field: "--seq-len",
            reason: "must be greater than 0".into(),
        });
    }
    let lines = read_jsonl(path)?;
    let mut records = text_records(path, &lines)?;
    if let Some(limit) = limit {
        records.truncate(limit);
    }
    let encoded: Vec<Vec<u32>> = records
        .iter()
        .map(|r| model.tokenizer.encode(&r.text, true))
        .collect::<std::result::Result<_, _>>()?;
    let mut pieces: Vec<&[u32]> = encoded
        .iter()
        .flat_map(|ids| windows(ids, seq_len))
        .collect();
    if pieces.is_empty() {
        return Err(EvalError::NothingToScore {
            path: path.display().to_string(),
        });
    }
    // Longest first, so each batch pads little.
    pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let device = model.model.device().clone();
    let (mut sum, mut count) = (0f64, 0usize);
    let mut i = 0;
    while i < pieces.len() {
        let rows = (tokens_per_batch / pieces[i].len()).max(1);
        let group = &pieces[i..(i + rows).min(pieces.len())];
        let (s, c) = batch_nll(&model.model, &SequenceBatch::next_token(group, &device)?)?;
        sum += s;
        count += c;
        i += group.len();
    }
    let loss = sum / count as f64;
    Ok(LossReport {
        loss,
        perplexity: loss.exp(),
        tokens: count,
        records: records.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn windows_count_every_prediction_once() {
        let ids: Vec<u32> = (0..10).collect();
        let w = windows(&ids, 4);
        assert_eq!(w, vec![&ids[0..5], &ids[4..9], &ids[8..10]]);
        let predictions: usize = w.iter().map(|p| p.len() - 1).sum();
        assert_eq!(predictions, 9);
        assert!(windows(&ids[..1], 4).is_empty());
    }
}
