//! What the eval tests check against: a sequence run alone from scratch through the
//! decoder's differentiable forward, full logits, log-softmax.

use candle_core::{Device, Tensor, D};
use tuna_model::{Kernels, Pretrained};

/// log p(· | ids[..=i]) for every position i, (len, v).
pub fn direct_log_probs(p: &Pretrained, ids: &[u32]) -> Vec<Vec<f32>> {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = p
        .model
        .forward(&x, Kernels::Differentiable)
        .unwrap()
        .squeeze(0)
        .unwrap();
    candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}
