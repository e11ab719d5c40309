//! The training loss of a batch: cross-entropy summed over its target tokens, with a
//! gradient. Only the rows that are targets go through the vocabulary projection
//! (`tuna_eval::loss::target_rows`), so (tokens × vocab) logits are never built.
//!
//! n target rows, v vocab.

use candle_core::{DType, Tensor, D};
use tuna_data::Batch;
use tuna_eval::loss::target_rows;
use tuna_model::{Kernels, Llama};

/// Σ −log p(target) over the batch's weighted targets (a scalar with a gradient).
pub fn batch_loss_sum(model: &Llama, batch: &Batch) -> candle_core::Result<Tensor> {
    let (hidden, targets) = target_rows(model, batch, Kernels::Differentiable)?;
    // (n, d) -> (n, v)
    let logits = model.lm_head.forward(&hidden)?.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    logp.gather(&targets.unsqueeze(1)?, 1)?.sum_all()?.neg()
}
