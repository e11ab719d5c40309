//! The hand-written training pass (tuna_model::backprop) against candle's autograd through
//! the differentiable decoder: the same loss and the same gradient for every adapter tensor,
//! on every architecture flag, padded and packed batches alike. The autograd pass is itself
//! checked against finite differences (crates/model/tests/lora.rs).

use candle_core::{Device, Tensor, Var};
use tuna_data::{make_batch, Batch, Example};
use tuna_lora::{LoraConfig, TargetModules};
use tuna_model::{LoadOptions, Pretrained, WeightFormat};
use tuna_testkit::{assert_gradient_within, max_abs_diff, tiny_model, TinySpec};
use tuna_train::loss::{autograd_loss_and_grads, loss_and_grads};

fn examples(vocab: u32) -> Vec<Example> {
    let lengths = [9, 5, 12, 7, 3];
    lengths
        .iter()
        .enumerate()
        .map(|(k, &len)| {
            let ids: Vec<u32> = (0..len)
                .map(|i| ((k * 31 + i * 7 + 3) as u32) % vocab)
                .collect();
            // Train on the second half of each example, as with a completion.
            let trained = (0..len).map(|i| i >= len / 2).collect();
            Example {
                line: k + 1,
                ids,
                trained,
                truncated: false,
            }
        })
        .collect()
}

/// A tiny model with adapters on every projection and non-zero B, so that every A gets a
/// gradient.
fn model_with_adapters(spec: TinySpec, dropout: f64) -> (Pretrained, Vec<Var>) {
    model_with_adapters_over(spec, dropout, WeightFormat::Dense)
}

fn model_with_adapters_over(
    spec: TinySpec,
    dropout: f64,
    weights: WeightFormat,
) -> (Pretrained, Vec<Var>) {
    let m = tiny_model(spec);
    let options = LoadOptions {
        weights,
        ..LoadOptions::default()
    };
    let mut model = Pretrained::load(&m.path_str(), &options).unwrap();
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: dropout,
        target_modules: TargetModules::all_linear(),
        ..Default::default()
    };
    model.model.attach_lora(&config, 1).unwrap();
    // B nonzero so that every gradient flows, drawn from a fixed seed so that the
    // comparisons below are the same on every run (uniform in ±0.35: std 0.2).
    let mut state = 0x2545F4914F6CDD1Du64;
    for (_, _, b) in model.model.lora_vars() {
        let values: Vec<f32> = (0..b.elem_count())
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.7
            })
            .collect();
        b.set(&Tensor::from_vec(values, b.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    model.model.set_training(true);
    let vars = model
        .model
        .lora_vars()
        .into_iter()
        .flat_map(|(_, a, b)| [a, b])
        .collect();
    (model, vars)
}

fn batches(vocab: u32) -> Vec<Batch> {
    let xs = examples(vocab);
    let rows: Vec<Vec<usize>> = (0..xs.len()).map(|i| vec![i]).collect();
    vec![
        make_batch(&xs, &rows, 0, 8),
        make_batch(&xs, &[vec![0, 1, 4], vec![2, 3]], 0, 8),
    ]
}

fn assert_passes_agree(spec: TinySpec, what: &str) {
    assert_passes_agree_over(spec, what, WeightFormat::Dense)
}

fn assert_passes_agree_over(spec: TinySpec, what: &str, weights: WeightFormat) {
    assert_passes_agree_with(spec, what, weights, 0.0)
}

fn assert_passes_agree_with(spec: TinySpec, what: &str, weights: WeightFormat, dropout: f64) {
    let (model, vars) = model_with_adapters_over(spec, dropout, weights);
    // bf16: activations are rounded on the way into each product, so f32-level differences
    // between the passes now and then land on the next bf16 value; and over compact weights
    // the fused pass runs attention's products in bf16 too (where the processor multiplies
    // bf16 in hardware), the autograd reference in f32. The exact logic of the hand-written
    // backward is held to 1e-4 by the dense case; attention's bf16 products are checked
    // against the f32 ones in backprop/attention.rs.
    let (loss_rel, grad_rel) = match weights {
        WeightFormat::Dense => (1e-4, 1e-4),
        _ => (1e-3, 3e-2),
    };
    let vocab = model.model.config.vocab_size as u32;
    for (i, batch) in batches(vocab).iter().enumerate() {
        let scale = 1.0 / batch.n_targets as f64;
        let seed = 11 + i as u64;
        let fused = loss_and_grads(&model.model, batch, scale, seed).unwrap();
        let reference = autograd_loss_and_grads(&model.model, batch, scale, seed).unwrap();
        assert!(
            (fused.loss - reference.loss).abs() < loss_rel * reference.loss.abs(),
            "{what}, batch {i}: loss {} vs {}",
            fused.loss,
            reference.loss
        );
        for (k, v) in vars.iter().enumerate() {
            let ours = fused.grads.get(v.as_tensor()).expect("a gradient");
            let theirs = reference.grads.get(v.as_tensor()).expect("a gradient");
            let what = format!("{what}, batch {i}, tensor {k}");
            assert_gradient_within(ours, theirs, grad_rel, &what);
        }
    }
}

#[test]
fn the_forward_only_loss_is_the_training_pass_loss_without_dropout() {
    let vocab = 16;
    for weights in [WeightFormat::Dense, WeightFormat::Bf16] {
        let (model, _) = model_with_adapters_over(TinySpec::default(), 0.0, weights);
        let (dropped, _) = model_with_adapters_over(TinySpec::default(), 0.5, weights);
        for (i, batch) in batches(vocab).iter().enumerate() {
            let trained = loss_and_grads(&model.model, batch, 1.0, 3).unwrap().loss;
            let tb = tuna_eval::loss::train_batch(batch);
            // Attention runs in f32 in the forward-only pass; over bf16 weights the training
            // pass may run it in bf16.
            let tol = if weights == WeightFormat::Dense {
                1e-5
            } else {
                1e-3
            };
            for (m, what) in [
                (&model, "no dropout"),
                (&dropped, "dropout 0.5, in training"),
            ] {
                let loss = m.model.loss(&tb).unwrap();
                assert!(
                    (loss - trained).abs() < tol * trained.abs(),
                    "{weights:?}, batch {i}, {what}: {loss} vs {trained}"
                );
            }
        }
    }
}

#[test]
fn fused_pass_equals_autograd_on_llama_with_gqa_and_tied_head() {
    assert!(batches(16)[1].packed, "the second batch packs examples");
    assert_passes_agree(TinySpec::default(), "llama");
}

#[test]
fn fused_pass_equals_autograd_over_bf16_weights() {
    // Both passes run the bf16 products (the kernel this machine picks; TUNA_KERNEL=portable
    // forces the other): the hand-written backward and the op's autograd backward agree.
    assert_passes_agree_over(TinySpec::default(), "llama bf16", WeightFormat::Bf16);
    let untied = TinySpec {
        model_type: "qwen2",
        attention_bias: true,
        tie_word_embeddings: false,
        ..TinySpec::default()
    };
    assert_passes_agree_over(untied, "qwen2 bf16", WeightFormat::Bf16);
    // And bf16 weights move the loss only by their rounding (same adapter: the model's
    // projections converted in place).
    let batch = &batches(16)[0];
    let (mut model, _) = model_with_adapters(TinySpec::default(), 0.0);
    let dense = loss_and_grads(&model.model, batch, 1.0, 0).unwrap().loss;
    for layer in &mut model.model.layers {
        let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
        for p in [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ] {
            p.convert(WeightFormat::Bf16).unwrap();
        }
    }
    model.model.lm_head.convert(WeightFormat::Bf16).unwrap();
    let bf16 = loss_and_grads(&model.model, batch, 1.0, 0).unwrap().loss;
    assert!(
        (dense - bf16).abs() < 0.01 * dense.abs() && dense != bf16,
        "dense {dense} vs bf16 {bf16}"
    );
}

#[test]
fn fused_pass_equals_autograd_over_block_quantized_weights() {
    // Q8_0, and Q4_K (rows of 32 and 64 values are not whole 256-blocks: Q5_0, as
    // llama-quantize falls back); the batches here are > 16 rows, so the products go through
    // the decoded copy (bf16 tiles on AMX, f32 gemm elsewhere) in both passes.
    let untied = TinySpec {
        model_type: "qwen2",
        attention_bias: true,
        tie_word_embeddings: false,
        ..TinySpec::default()
    };
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        assert_passes_agree_over(TinySpec::default(), &format!("llama {format:?}"), format);
        assert_passes_agree_over(untied.clone(), &format!("qwen2 {format:?}"), format);
    }
}

#[test]
fn fused_pass_equals_autograd_on_qwen2_bias_untied_head_and_mha() {
    assert_passes_agree(
        TinySpec {
            model_type: "qwen2",
            attention_bias: true,
            tie_word_embeddings: false,
            num_key_value_heads: 4,
            ..Default::default()
        },
        "qwen2",
    );
}

#[test]
fn fused_pass_equals_autograd_with_sliding_window_and_llama3_rope() {
    assert_passes_agree(
        TinySpec {
            model_type: "mistral",
            sliding_window: Some(4),
            num_key_value_heads: 1,
            ..Default::default()
        },
        "mistral",
    );
    assert_passes_agree(
        TinySpec {
            rope_scaling: Some(serde_json::json!({
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8
            })),
            ..Default::default()
        },
        "llama3 rope",
    );
}

#[test]
fn fused_pass_equals_autograd_with_dropout() {
    // Both passes draw each adapter's mask from (seed, its module), so they drop the same
    // inputs and agree as closely as without dropout.
    assert_passes_agree_with(
        TinySpec::default(),
        "llama, dropout 0.2",
        WeightFormat::Dense,
        0.2,
    );
}

#[test]
fn dropout_masks_follow_the_seed() {
    let (model, vars) = model_with_adapters(TinySpec::default(), 0.3);
    let batch = &batches(model.model.config.vocab_size as u32)[0];
    let grad = |seed: u64| {
        let pass = loss_and_grads(&model.model, batch, 1.0, seed).unwrap();
        pass.grads.get(vars[0].as_tensor()).unwrap().clone()
    };
    assert_eq!(
        max_abs_diff(&grad(5), &grad(5)),
        0.0,
        "same seed, same masks"
    );
    assert!(
        max_abs_diff(&grad(5), &grad(6)) > 0.0,
        "another seed, other masks"
    );
    // The autograd pass too (it used to draw unseeded masks).
    let autograd = |seed: u64| {
        let pass = autograd_loss_and_grads(&model.model, batch, 1.0, seed).unwrap();
        pass.grads.get(vars[0].as_tensor()).unwrap().clone()
    };
    assert_eq!(max_abs_diff(&autograd(5), &autograd(5)), 0.0);
    assert!(max_abs_diff(&autograd(5), &autograd(6)) > 0.0);
    // Without dropout the seed does not matter.
    let (plain, vars) = model_with_adapters(TinySpec::default(), 0.0);
    let g = |seed| {
        loss_and_grads(&plain.model, batch, 1.0, seed)
            .unwrap()
            .grads
            .get(vars[0].as_tensor())
            .unwrap()
            .clone()
    };
    assert_eq!(max_abs_diff(&g(5), &g(6)), 0.0);
}
