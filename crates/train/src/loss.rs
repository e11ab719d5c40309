//! The training loss of a batch: cross-entropy summed over its target tokens, with a
//! gradient. Only the rows that are targets go through the vocabulary projection — on a label
//! task that is 1-3% of the tokens — so (tokens × vocab) logits are never built.
//!
//! b batch, t tokens, d hidden, n target rows, v vocab.

use candle_core::{DType, Tensor, D};
use tuna_data::Batch;
use tuna_model::{Kernels, Llama, Packing};

/// Σ −log p(target) over the batch's weighted targets (a scalar with a gradient).
pub fn batch_loss_sum(model: &Llama, batch: &Batch) -> candle_core::Result<Tensor> {
    let device = model.device();
    let ids = Tensor::from_slice(&batch.inputs, (batch.rows, batch.cols), device)?;
    let packing = batch.packed.then_some(Packing {
        positions: &batch.positions,
        segments: &batch.segments,
    });
    let hidden = model.hidden_states(&ids, None, packing, Kernels::Differentiable)?;
    let (b, t, d) = hidden.dims3()?;
    let rows: Vec<u32> = (0..b * t)
        .filter(|&i| batch.weights[i] > 0.0)
        .map(|i| i as u32)
        .collect();
    let targets: Vec<u32> = rows.iter().map(|&i| batch.targets[i as usize]).collect();
    let n = rows.len();
    let rows = Tensor::from_vec(rows, n, device)?;
    // (b, t, d) -> (b*t, d) -> (n, d) -> (n, v)
    let selected = hidden.reshape((b * t, d))?.index_select(&rows, 0)?;
    let logits = model.lm_head.forward(&selected)?.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = Tensor::from_vec(targets, (n, 1), device)?;
    logp.gather(&targets, 1)?.sum_all()?.neg()
}
