//! The training loss of a batch and its gradients: cross-entropy summed over the target
//! tokens (each times its weight), differentiated for every LoRA A and B.
//!
//! Two passes compute it. `tuna_model::backprop` is the hand-written one (f32 on the CPU):
//! what training uses whenever it applies. The autograd pass — the decoder's differentiable
//! forward and candle's `backward` — is the reference it is tested against, and the fallback
//! on other devices and dtypes. Only target rows go through the vocabulary projection in
//! either, so (tokens × vocab) logits are never built.
//!
//! n target rows, v vocab.

use std::time::Instant;

use candle_core::{DType, Tensor, D};
use tuna_data::Batch;
use tuna_eval::loss::{target_rows, train_batch};
use tuna_model::{Kernels, Llama, TrainPass};

/// Σ −log p(target) over the batch's weighted targets (a scalar with a gradient).
pub fn batch_loss_sum(model: &Llama, batch: &Batch) -> candle_core::Result<Tensor> {
    let (hidden, targets) = target_rows(model, batch, Kernels::Differentiable)?;
    // (n, d) -> (n, v)
    let logits = model.lm_head.forward(&hidden)?.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    logp.gather(&targets.unsqueeze(1)?, 1)?.sum_all()?.neg()
}

/// Σ −log p(target) over the batch and the gradients of `grad_scale` times it for the adapters,
/// by the hand-written pass when the model allows it, else by autograd. `seed` draws the
/// dropout masks, the same ones in either pass.
pub fn loss_and_grads(
    model: &Llama,
    batch: &Batch,
    grad_scale: f64,
    seed: u64,
) -> candle_core::Result<TrainPass> {
    if !model.supports_fused_backward() {
        return autograd_loss_and_grads(model, batch, grad_scale, seed);
    }
    model.loss_and_grads(&train_batch(batch), grad_scale, seed)
}

/// The same through the decoder's differentiable forward and candle's autograd.
pub fn autograd_loss_and_grads(
    model: &Llama,
    batch: &Batch,
    grad_scale: f64,
    seed: u64,
) -> candle_core::Result<TrainPass> {
    let started = Instant::now();
    model.seed_dropout(seed);
    let sum = batch_loss_sum(model, batch)?;
    let loss = sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let forward_s = started.elapsed().as_secs_f64();
    let grads = (sum * grad_scale)?.backward()?;
    // A GPU queues the backward: wait for it, so the split of the step's time is true.
    model.device().synchronize()?;
    Ok(TrainPass {
        loss,
        grads,
        forward_s,
        backward_s: started.elapsed().as_secs_f64() - forward_s,
    })
}
