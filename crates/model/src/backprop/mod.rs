//! The training pass written by hand: loss and LoRA gradients of a batch in one forward and
//! one backward over the decoder, on the CPU in f32.
//!
//! candle's autograd keeps every intermediate of the forward alive until the backward ends
//! and differentiates through composed ops (RMSNorm as five ops, softmax as four, rope as
//! six), and the vocabulary projection builds (tokens × vocab) logits several times over.
//! Here each layer keeps what its backward needs — its input, the rms factors, rotated q/k,
//! v, the attention output, the MLP's gate and up, each adapter's (n, r) inner activation —
//! and recomputes the cheap rest (normed inputs, attention probabilities, silu); the loss
//! head works on chunks of target rows and turns each chunk of logits into its gradient in
//! place. Frozen weights get no gradient.
//!
//! `Llama::hidden_states` with `Kernels::Differentiable` and candle's `backward` stay the
//! reference: the tests require both passes to agree on every architecture flag, and devices
//! or dtypes this pass does not cover use that path.
//!
//! b batch, t tokens, n = b·t rows, d hidden, h heads, kvh kv heads, g = h / kvh,
//! hd head dim, f = hd/2, ff intermediate, v vocab, m target rows.

mod attention;
mod causal_f32;
pub(crate) mod kernels;
mod linear;
mod low_rank;

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use crate::compact::Product;
use crate::decoder::{DecoderLayer, Llama, Packing};
use crate::layout::AttentionLayout;
use attention::AttentionShape;
use kernels::{tensor, to_vec, view};

/// Target rows pushed through the vocabulary projection at once: 256 × 49152 f32 logits are
/// 50 MB.
const HEAD_CHUNK_ROWS: usize = 256;

/// One batch as the training pass takes it: token ids (b, t) row-major, next-token targets
/// and their loss weights (0 where a position is not trained), optional packing.
#[derive(Debug, Clone, Copy)]
pub struct TrainBatch<'a> {
    pub ids: &'a [u32],
    pub rows: usize,
    pub cols: usize,
    pub packing: Option<Packing<'a>>,
    pub targets: &'a [u32],
    pub weights: &'a [f32],
}

/// The result of one training pass.
#[derive(Debug)]
pub struct TrainPass {
    /// Σ weight · −log p(target) over the batch.
    pub loss: f64,
    /// Gradients of grad_scale · loss for every LoRA A and B, keyed by their `Var`s.
    pub grads: GradStore,
    /// Wall time of the forward (loss included) and of the backward.
    pub forward_s: f64,
    pub backward_s: f64,
}

/// What a layer's backward needs from its forward.
struct LayerSaved {
    /// (n, d) the layer's input, and its rms factors (n).
    x: Tensor,
    rstd1: Vec<f32>,
    /// Rotated queries (b, kvh, g·t, hd), rotated keys and values (b, kvh, t, hd).
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Log-sum-exp of each attention row (b·h·t).
    lse: Vec<f32>,
    /// (n, h·hd) the attention output, o_proj's input.
    y: Tensor,
    /// (n, d) after the attention residual, and its rms factors.
    x2: Tensor,
    rstd2: Vec<f32>,
    /// (n, ff) each.
    gate: Tensor,
    up: Tensor,
    /// q, k, v, o, gate, up, down.
    projections: [linear::Saved; 7],
}

/// Per-pass constants: shapes, rope tables per token, each query's first visible key.
struct Pass {
    shape: AttentionShape,
    /// (n, f) each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    first: Vec<u32>,
    eps: f64,
    attention: attention::Products,
}

impl Pass {
    fn n(&self) -> usize {
        self.shape.b * self.shape.t
    }

    fn tables(&self) -> Option<(&[f32], &[f32])> {
        Some((&self.cos, &self.sin))
    }
}

impl Llama {
    /// Whether `loss_and_grads` covers this model: f32 on the CPU, dense or bf16 weights.
    pub fn supports_fused_backward(&self) -> bool {
        self.device().is_cpu()
            && self.dtype() == DType::F32
            && self.lm_head.trainable_through()
            && self.lm_head.bias.is_none()
            && self.layers.iter().all(|l| {
                [
                    &l.self_attn.q_proj,
                    &l.self_attn.k_proj,
                    &l.self_attn.v_proj,
                    &l.self_attn.o_proj,
                    &l.mlp.gate_proj,
                    &l.mlp.up_proj,
                    &l.mlp.down_proj,
                ]
                .iter()
                .all(|p| p.trainable_through())
            })
    }

    /// Attention's products follow the frozen weights': bf16 tiles where the weights are
    /// held compact (bf16, or blocks multiplied through bf16 tiles) and the processor
    /// multiplies bf16 in hardware faster than f32 for a pass of `rows` rows, as PyTorch's
    /// bf16 autocast runs attention; f32 for f32 weights, the exact form.
    fn attention_products(&self, rows: usize) -> attention::Products {
        use crate::bf16_weight::Bf16Kernel;
        let compact = self
            .layers
            .iter()
            .all(|l| l.self_attn.q_proj.holds_compact_weight());
        match Bf16Kernel::chosen() {
            kernel if compact && !kernel.prefers_f32(rows) => attention::Products::Bf16(kernel),
            _ => attention::Products::F32,
        }
    }

    /// The pass's constants for `batch`, after checking that this model and batch suit it.
    fn pass(&self, batch: &TrainBatch, attention: attention::Products) -> Result<Pass> {
        if !self.supports_fused_backward() {
            candle_core::bail!(
                "the fused training pass needs an f32 CPU model with dense or bf16 weights"
            )
        }
        let c = &self.config;
        let (b, t) = (batch.rows, batch.cols);
        let n = b * t;
        if batch.ids.len() != n || batch.targets.len() != n || batch.weights.len() != n {
            candle_core::bail!("train batch: ids, targets and weights must have b*t = {n} entries")
        }
        let layout = match batch.packing {
            Some(p) => AttentionLayout::packed(p, b, t, c.sliding_window)?,
            None => AttentionLayout::causal(b, t, 0, c.sliding_window),
        };
        let (cos, sin) = self.rope.tables_at(&layout.positions(), DType::F32)?;
        Ok(Pass {
            shape: AttentionShape {
                b,
                t,
                h: c.num_attention_heads,
                kvh: c.num_key_value_heads,
                hd: c.head_dim,
            },
            cos: to_vec(&cos)?,
            sin: to_vec(&sin)?,
            first: layout.first_keys()?,
            eps: c.rms_norm_eps,
            attention,
        })
    }

    /// Σ weight_i · −log p(target_i) over the batch, forward only: the training pass's
    /// layers, keeping nothing for a backward, without dropout, attention in f32, and its
    /// loss head without the gradient. What held-out loss is scored with where
    /// `supports_fused_backward` holds (the same conditions).
    pub fn loss(&self, batch: &TrainBatch) -> Result<f64> {
        let pass = self.pass(batch, attention::Products::F32)?;
        let n = pass.n();
        let ids = Tensor::from_slice(batch.ids, n, self.device())?;
        let mut x = self.embed_tokens.index_select(&ids, 0)?;
        for layer in &self.layers {
            x = layer.train_forward(&x, &pass, None)?.0;
        }
        let (normed, _) = kernels::rms_norm(&view(&x)?, &view(&self.norm)?, pass.eps);
        let rows: Vec<usize> = (0..n).filter(|&i| batch.weights[i] > 0.0).collect();
        Ok(self.loss_head(&normed, &rows, batch, None)?.0)
    }

    /// Σ weight_i · −log p(target_i) over the batch, and the gradients of `grad_scale` times
    /// that sum for every LoRA A and B. `seed` draws dropout masks.
    pub fn loss_and_grads(
        &self,
        batch: &TrainBatch,
        grad_scale: f64,
        seed: u64,
    ) -> Result<TrainPass> {
        let started = Instant::now();
        let pass = self.pass(batch, self.attention_products(batch.rows * batch.cols))?;
        let (c, n) = (&self.config, pass.n());
        let ids = Tensor::from_slice(batch.ids, n, self.device())?;
        let mut x = self.embed_tokens.index_select(&ids, 0)?;
        let mut saved = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (out, s) = layer.train_forward(&x, &pass, Some(seed))?;
            saved.push(s);
            x = out;
        }

        // Final norm, then the loss head on the target rows only.
        let d = c.hidden_size;
        let (normed, rstd) = kernels::rms_norm(&view(&x)?, &view(&self.norm)?, pass.eps);
        let rows: Vec<usize> = (0..n).filter(|&i| batch.weights[i] > 0.0).collect();
        let (loss, d_rows) = self.loss_head(&normed, &rows, batch, Some(grad_scale))?;
        let mut d_normed = vec![0f32; n * d];
        for (k, &row) in rows.iter().enumerate() {
            d_normed[row * d..][..d].copy_from_slice(&d_rows[k * d..][..d]);
        }
        let mut dx = vec![0f32; n * d];
        kernels::rms_norm_backward_add(&view(&x)?, &rstd, &view(&self.norm)?, &d_normed, &mut dx);
        drop((normed, d_normed, x));
        let forward_s = started.elapsed().as_secs_f64();

        let mut grads = GradStore::default();
        let mut dx = tensor(dx, &[n, d])?;
        for layer in self.layers.iter().rev() {
            let s = saved.pop().expect("one saved state per layer");
            dx = layer.train_backward(&dx, s, &pass, &mut grads)?;
        }
        Ok(TrainPass {
            loss,
            grads,
            forward_s,
            backward_s: started.elapsed().as_secs_f64() - forward_s,
        })
    }

    /// Rows of the loss head's chunks: HEAD_CHUNK_ROWS, or twice that where a compact head
    /// weight goes through f32 gemm over its decoded rows only from a batch between the two
    /// (`Bf16Kernel::prefers_f32`): each chunk decodes the whole vocabulary once, which
    /// then pays (measured on the Xeon without AMX, bench train --weights bf16: 302 -> 369
    /// tok/s).
    fn head_chunk_rows(&self) -> usize {
        let kernel = crate::bf16_weight::Bf16Kernel::chosen();
        let doubled = 2 * HEAD_CHUNK_ROWS;
        if self.lm_head.holds_compact_weight()
            && kernel.prefers_f32(doubled)
            && !kernel.prefers_f32(HEAD_CHUNK_ROWS)
        {
            doubled
        } else {
            HEAD_CHUNK_ROWS
        }
    }

    /// Cross-entropy over the target `rows` of the final normed hidden states (n, d), chunk
    /// by chunk: returns (Σ weight · nll, the gradient of grad_scale · that sum for each
    /// target row (m, d); none without `grad_scale`).
    fn loss_head(
        &self,
        normed: &[f32],
        rows: &[usize],
        batch: &TrainBatch,
        grad_scale: Option<f64>,
    ) -> Result<(f64, Vec<f32>)> {
        let d = self.config.hidden_size;
        let mut loss = 0f64;
        let mut d_rows = Vec::with_capacity(rows.len() * d);
        for chunk in rows.chunks(self.head_chunk_rows()) {
            let mut h = Vec::with_capacity(chunk.len() * d);
            for &row in chunk {
                h.extend_from_slice(&normed[row * d..][..d]);
            }
            let h = tensor(h, &[chunk.len(), d])?;
            // (m, d) @ (d, v) -> (m, v)
            let mut logits = self.lm_head.frozen_rows(&h, Product::XWt)?;
            let targets: Vec<u32> = chunk.iter().map(|&r| batch.targets[r]).collect();
            let weights: Vec<f32> = chunk.iter().map(|&r| batch.weights[r]).collect();
            let scale = grad_scale.unwrap_or(0.0) as f32;
            let scales: Vec<f32> = weights.iter().map(|&x| x * scale).collect();
            let nll = kernels::cross_entropy_rows(&mut logits, &targets, &scales);
            loss += nll
                .iter()
                .zip(&weights)
                .map(|(l, &w)| l * w as f64)
                .sum::<f64>();
            if grad_scale.is_none() {
                continue;
            }
            let v = logits.len() / chunk.len();
            // (m, v) @ (v, d) -> (m, d)
            let logits = tensor(logits, &[chunk.len(), v])?;
            d_rows.extend_from_slice(&self.lm_head.frozen_rows(&logits, Product::DyW)?);
        }
        Ok((loss, d_rows))
    }
}

impl DecoderLayer {
    /// The layer's output and what its backward needs; `seed` draws the adapters' dropout
    /// masks (none without it).
    fn train_forward(
        &self,
        x: &Tensor,
        pass: &Pass,
        seed: Option<u64>,
    ) -> Result<(Tensor, LayerSaved)> {
        let AttentionShape { b, t, h, kvh, hd } = pass.shape;
        let (n, d) = (pass.n(), x.dim(1)?);
        let (a, m) = (&self.self_attn, &self.mlp);

        let (h1, rstd1) = kernels::rms_norm(&view(x)?, &view(&self.input_layernorm)?, pass.eps);
        let h1 = tensor(h1, &[n, d])?;
        let (q, sq) = linear::forward(&a.q_proj, &h1, seed)?;
        let (k, sk) = linear::forward(&a.k_proj, &h1, seed)?;
        let (v, sv) = linear::forward(&a.v_proj, &h1, seed)?;
        drop(h1);
        let q = tensor(
            kernels::to_heads(&view(&q)?, pass.tables(), b, t, h, hd),
            &[b, kvh, h / kvh * t, hd],
        )?;
        let k = tensor(
            kernels::to_heads(&view(&k)?, pass.tables(), b, t, kvh, hd),
            &[b, kvh, t, hd],
        )?;
        let v = tensor(
            kernels::to_heads(&view(&v)?, None, b, t, kvh, hd),
            &[b, kvh, t, hd],
        )?;
        let (y, lse) = attention::forward(&q, &k, &v, &pass.first, pass.shape, pass.attention)?;
        let y = tensor(
            kernels::from_heads(&view(&y)?, None, b, t, h, hd),
            &[n, h * hd],
        )?;
        let (o, so) = linear::forward(&a.o_proj, &y, seed)?;
        let x2 = (x + o)?;

        let (h2, rstd2) = kernels::rms_norm(
            &view(&x2)?,
            &view(&self.post_attention_layernorm)?,
            pass.eps,
        );
        let h2 = tensor(h2, &[n, d])?;
        let (gate, sg) = linear::forward(&m.gate_proj, &h2, seed)?;
        let (up, su) = linear::forward(&m.up_proj, &h2, seed)?;
        drop(h2);
        let act = tensor(kernels::silu_mul(&view(&gate)?, &view(&up)?), gate.dims())?;
        let (down, sd) = linear::forward(&m.down_proj, &act, seed)?;
        let out = (&x2 + down)?;
        Ok((
            out,
            LayerSaved {
                x: x.clone(),
                rstd1,
                q,
                k,
                v,
                lse,
                y,
                x2,
                rstd2,
                gate,
                up,
                projections: [sq, sk, sv, so, sg, su, sd],
            },
        ))
    }

    fn train_backward(
        &self,
        dout: &Tensor,
        s: LayerSaved,
        pass: &Pass,
        grads: &mut GradStore,
    ) -> Result<Tensor> {
        let AttentionShape { b, t, h, kvh, hd } = pass.shape;
        let (n, d) = (pass.n(), dout.dim(1)?);
        let (a, m) = (&self.self_attn, &self.mlp);
        let [sq, sk, sv, so, sg, su, sd] = &s.projections;

        // MLP: out = x2 + down(silu(gate) · up)
        let act = tensor(
            kernels::silu_mul(&view(&s.gate)?, &view(&s.up)?),
            s.gate.dims(),
        )?;
        let d_act = linear::backward(&m.down_proj, &act, sd, dout, grads)?;
        drop(act);
        let (d_gate, d_up) =
            kernels::silu_mul_backward(&view(&s.gate)?, &view(&s.up)?, &view(&d_act)?);
        drop(d_act);
        let post_norm = view(&self.post_attention_layernorm)?;
        let h2 = tensor(
            kernels::rms_norm_apply(&view(&s.x2)?, &s.rstd2, &post_norm),
            &[n, d],
        )?;
        let d_gate = tensor(d_gate, s.gate.dims())?;
        let d_up = tensor(d_up, s.up.dims())?;
        let mut dh2 = linear::backward_rows(&m.gate_proj, &h2, sg, &d_gate, grads)?;
        add_in_place(
            &mut dh2,
            &linear::backward_rows(&m.up_proj, &h2, su, &d_up, grads)?,
        );
        drop((h2, d_gate, d_up));
        let mut dx2 = to_vec(dout)?;
        kernels::rms_norm_backward_add(&view(&s.x2)?, &s.rstd2, &post_norm, &dh2, &mut dx2);
        drop(dh2);
        let dx2 = tensor(dx2, &[n, d])?;

        // Attention: x2 = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1)))
        let dy = linear::backward(&a.o_proj, &s.y, so, &dx2, grads)?;
        let delta = {
            let (dy, y) = (view(&dy)?, view(&s.y)?);
            let mut delta = vec![0f32; b * h * t];
            delta
                .par_iter_mut()
                .enumerate()
                .with_min_len(256)
                .for_each(|(row, out)| {
                    // row = (bi·h + head)·t + ti
                    let (bi, head, ti) = (row / (h * t), row / t % h, row % t);
                    let at = ((bi * t + ti) * h + head) * hd;
                    *out = dy[at..at + hd]
                        .iter()
                        .zip(&y[at..at + hd])
                        .map(|(a, b)| a * b)
                        .sum();
                });
            delta
        };
        let dy = tensor(
            kernels::to_heads(&view(&dy)?, None, b, t, h, hd),
            &[b, kvh, h / kvh * t, hd],
        )?;
        let (dq, dk, dv) = attention::backward(
            &s.q,
            &s.k,
            &s.v,
            &s.lse,
            &pass.first,
            &dy,
            &delta,
            pass.shape,
            pass.attention,
        )?;
        drop(dy);
        let dq = tensor(
            kernels::from_heads(&view(&dq)?, pass.tables(), b, t, h, hd),
            &[n, h * hd],
        )?;
        let dk = tensor(
            kernels::from_heads(&view(&dk)?, pass.tables(), b, t, kvh, hd),
            &[n, kvh * hd],
        )?;
        let dv = tensor(
            kernels::from_heads(&view(&dv)?, None, b, t, kvh, hd),
            &[n, kvh * hd],
        )?;
        let input_norm = view(&self.input_layernorm)?;
        let h1 = tensor(
            kernels::rms_norm_apply(&view(&s.x)?, &s.rstd1, &input_norm),
            &[n, d],
        )?;
        let mut dh1 = linear::backward_rows(&a.q_proj, &h1, sq, &dq, grads)?;
        add_in_place(
            &mut dh1,
            &linear::backward_rows(&a.k_proj, &h1, sk, &dk, grads)?,
        );
        add_in_place(
            &mut dh1,
            &linear::backward_rows(&a.v_proj, &h1, sv, &dv, grads)?,
        );
        let mut dx = to_vec(&dx2)?;
        kernels::rms_norm_backward_add(&view(&s.x)?, &s.rstd1, &input_norm, &dh1, &mut dx);
        tensor(dx, &[n, d])
    }
}

/// acc += x, element by element (the summed input gradients of projections sharing an input).
fn add_in_place(acc: &mut [f32], x: &[f32]) {
    debug_assert_eq!(acc.len(), x.len());
    for (a, x) in acc.iter_mut().zip(x) {
        *a += x;
    }
}
