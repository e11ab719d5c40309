//! The decoder on tiny random models: every architecture flag against candle-transformers'
//! own implementations (an independent reference), the KV cache against the full forward, and
//! gradients through the differentiable path against finite differences.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarBuilder;
use serde_json::json;
use tuna_model::{AttentionLayout, Branch, Kernels, KvCache, LoadOptions, Pretrained};
use tuna_testkit::{assert_close, max_abs_diff, tiny_model, TinyModel, TinySpec};

const IDS: [u32; 9] = [5, 200, 17, 3, 150, 99, 260, 42, 8];

fn load(m: &TinyModel) -> Pretrained {
    Pretrained::load(&m.path_str(), &LoadOptions::default()).expect("tiny model loads")
}

fn ids() -> Tensor {
    Tensor::new(&IDS, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn specs() -> Vec<(&'static str, TinySpec)> {
    let base = TinySpec::default();
    vec![
        ("gqa2_tied", base.clone()),
        (
            "mha_untied",
            TinySpec {
                num_key_value_heads: 4,
                tie_word_embeddings: false,
                ..base.clone()
            },
        ),
        (
            "mqa",
            TinySpec {
                num_key_value_heads: 1,
                ..base.clone()
            },
        ),
        (
            "qwen2_qkv_bias",
            TinySpec {
                model_type: "qwen2",
                attention_bias: true,
                rope_theta: 1e6,
                ..base.clone()
            },
        ),
        (
            "llama3_rope_scaling",
            TinySpec {
                rope_theta: 500_000.0,
                rope_scaling: Some(
                    json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
                ),
                ..base.clone()
            },
        ),
        (
            "mistral",
            TinySpec {
                model_type: "mistral",
                num_key_value_heads: 1,
                ..base.clone()
            },
        ),
        (
            "linear_rope_scaling",
            TinySpec {
                rope_scaling: Some(json!({"rope_type": "linear", "factor": 4.0})),
                ..base.clone()
            },
        ),
        (
            "sliding_window",
            TinySpec {
                model_type: "mistral",
                sliding_window: Some(3),
                ..base
            },
        ),
    ]
}

/// Last-position logits of candle-transformers' model for the same weights, for each prefix
/// of IDS, stacked: (len, v). Only for the flags that model supports.
fn reference_logits(m: &TinyModel) -> Option<Tensor> {
    use candle_transformers::models::{llama, mistral, qwen2};
    let s = &m.spec;
    let dev = Device::Cpu;
    let path = m.path().join("model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &dev) }.unwrap();
    let mut rows = Vec::new();
    match s.model_type {
        "llama" => {
            if matches!(&s.rope_scaling, Some(v) if v["rope_type"] != "llama3") {
                return None;
            }
            let text = std::fs::read_to_string(m.path().join("config.json")).unwrap();
            let cfg: llama::LlamaConfig = serde_json::from_str(&text).unwrap();
            let cfg = cfg.into_config(false);
            let model = llama::Llama::load(vb, &cfg).unwrap();
            for n in 1..=IDS.len() {
                let mut cache = llama::Cache::new(false, DType::F32, &cfg, &dev).unwrap();
                let x = Tensor::new(&IDS[..n], &dev).unwrap().unsqueeze(0).unwrap();
                rows.push(
                    model
                        .forward(&x, 0, &mut cache)
                        .unwrap()
                        .squeeze(0)
                        .unwrap(),
                );
            }
        }
        "qwen2" => {
            let cfg = qwen2::Config {
                vocab_size: m.vocab_size,
                hidden_size: s.hidden_size,
                intermediate_size: s.intermediate_size,
                num_hidden_layers: s.num_hidden_layers,
                num_attention_heads: s.num_attention_heads,
                num_key_value_heads: s.num_key_value_heads,
                max_position_embeddings: 512,
                sliding_window: 512,
                max_window_layers: 0,
                tie_word_embeddings: s.tie_word_embeddings,
                rope_theta: s.rope_theta,
                rms_norm_eps: 1e-5,
                use_sliding_window: false,
                hidden_act: candle_nn::Activation::Silu,
            };
            for n in 1..=IDS.len() {
                let mut model = qwen2::ModelForCausalLM::new(&cfg, vb.clone()).unwrap();
                let x = Tensor::new(&IDS[..n], &dev).unwrap().unsqueeze(0).unwrap();
                rows.push(
                    model
                        .forward(&x, 0)
                        .unwrap()
                        .squeeze(0)
                        .unwrap()
                        .squeeze(0)
                        .unwrap(),
                );
            }
        }
        "mistral" => {
            if s.sliding_window.is_some() {
                // candle's mistral lets a query see window + 1 keys, transformers `window`.
                return None;
            }
            let cfg = mistral::Config {
                vocab_size: m.vocab_size,
                hidden_size: s.hidden_size,
                intermediate_size: s.intermediate_size,
                num_hidden_layers: s.num_hidden_layers,
                num_attention_heads: s.num_attention_heads,
                head_dim: None,
                num_key_value_heads: s.num_key_value_heads,
                hidden_act: candle_nn::Activation::Silu,
                max_position_embeddings: 512,
                rms_norm_eps: 1e-5,
                rope_theta: s.rope_theta,
                sliding_window: None,
                use_flash_attn: false,
            };
            if s.tie_word_embeddings {
                // candle's mistral always reads lm_head.weight.
                return None;
            }
            for n in 1..=IDS.len() {
                let mut model = mistral::Model::new(&cfg, vb.clone()).unwrap();
                let x = Tensor::new(&IDS[..n], &dev).unwrap().unsqueeze(0).unwrap();
                rows.push(
                    model
                        .forward(&x, 0)
                        .unwrap()
                        .squeeze(0)
                        .unwrap()
                        .squeeze(0)
                        .unwrap(),
                );
            }
        }
        _ => return None,
    }
    Some(Tensor::stack(&rows, 0).unwrap())
}

#[test]
fn every_architecture_flag_matches_candle_transformers() {
    let mut compared = 0;
    for (name, spec) in specs() {
        let spec = if spec.model_type == "mistral" && spec.sliding_window.is_none() {
            TinySpec {
                tie_word_embeddings: false,
                ..spec
            }
        } else {
            spec
        };
        let m = tiny_model(spec);
        let Some(reference) = reference_logits(&m) else {
            continue;
        };
        let ours = load(&m)
            .model
            .forward(&ids(), Kernels::Differentiable)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let d = max_abs_diff(&ours, &reference);
        assert!(d < 1e-4, "{name}: max |ours - candle-transformers| = {d}");
        compared += 1;
    }
    assert_eq!(compared, 6, "every spec with a reference was compared");
}

#[test]
fn kv_cache_and_fused_kernels_match_the_full_forward() {
    for (name, spec) in specs() {
        let m = tiny_model(spec);
        let p = load(&m);
        let full = p
            .model
            .forward(&ids(), Kernels::Differentiable)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let fused = p
            .model
            .forward(&ids(), Kernels::Fused)
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert!(
            max_abs_diff(&full, &fused) < 1e-4,
            "{name}: fused vs differentiable"
        );
        // A 4-token prompt, then one token at a time.
        let mut cache = KvCache::new(p.config.num_hidden_layers);
        let mut rows = vec![];
        let prompt = Tensor::new(&IDS[..4], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        rows.push(
            p.model
                .forward_cached(&prompt, &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap(),
        );
        for &id in &IDS[4..] {
            let x = Tensor::new(&[id], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            rows.push(
                p.model
                    .forward_cached(&x, &mut cache)
                    .unwrap()
                    .squeeze(0)
                    .unwrap(),
            );
        }
        let cached = Tensor::stack(&rows, 0).unwrap();
        let d = max_abs_diff(&full.narrow(0, 3, IDS.len() - 3).unwrap(), &cached);
        assert!(d < 1e-4, "{name}: cached vs full forward: {d}");
    }
}

#[test]
fn sliding_window_hides_old_keys() {
    // With a window of 3, the last position cannot see token 0: changing it changes nothing
    // in layer 1... but layer 2 sees layer-1 states that did. So compare a 1-layer model.
    let spec = TinySpec {
        model_type: "mistral",
        sliding_window: Some(3),
        num_hidden_layers: 1,
        ..Default::default()
    };
    let p = load(&tiny_model(spec));
    let a = Tensor::new(&[7u32, 20, 30, 40, 50], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let b = Tensor::new(&[9u32, 20, 30, 40, 50], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let la = p.model.forward(&a, Kernels::Differentiable).unwrap();
    let lb = p.model.forward(&b, Kernels::Differentiable).unwrap();
    let last = |l: &Tensor| l.narrow(1, 4, 1).unwrap();
    assert_close(&last(&la), &last(&lb), 1e-6);
    // ...while position 2 (window reaches token 0) does change.
    let third = |l: &Tensor| l.narrow(1, 2, 1).unwrap();
    assert!(max_abs_diff(&third(&la), &third(&lb)) > 1e-3);
}

/// Mean next-token cross-entropy of IDS under the model.
fn loss(p: &Pretrained) -> Tensor {
    let logits = p
        .model
        .forward(&ids(), Kernels::Differentiable)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let n = IDS.len() - 1;
    let logp = candle_nn::ops::log_softmax(&logits.narrow(0, 0, n).unwrap(), D::Minus1).unwrap();
    let targets = Tensor::new(&IDS[1..], &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    (logp.gather(&targets, 1).unwrap().sum_all().unwrap() * (-1.0 / n as f64)).unwrap()
}

#[test]
fn gradients_reach_every_weight_and_match_finite_differences() {
    let spec = TinySpec {
        model_type: "qwen2",
        attention_bias: true,
        tie_word_embeddings: false,
        ..Default::default()
    };
    let mut p = load(&tiny_model(spec));
    // Make a few weights of layer 1 trainable: every op between them and the loss is on the path.
    let layer = &mut p.model.layers[1];
    let q_w = Var::from_tensor(&layer.self_attn.q_proj.dense_weight().unwrap()).unwrap();
    let k_b = Var::from_tensor(layer.self_attn.k_proj.bias.as_ref().unwrap()).unwrap();
    let norm = Var::from_tensor(&layer.input_layernorm).unwrap();
    let down = Var::from_tensor(&layer.mlp.down_proj.dense_weight().unwrap()).unwrap();
    layer.self_attn.q_proj.weight =
        tuna_model::linear::LinearWeight::Dense(q_w.as_tensor().clone());
    layer.self_attn.k_proj.bias = Some(k_b.as_tensor().clone());
    layer.input_layernorm = norm.as_tensor().clone();
    layer.mlp.down_proj.weight = tuna_model::linear::LinearWeight::Dense(down.as_tensor().clone());

    let grads = loss(&p).backward().unwrap();
    for (name, var) in [
        ("q_proj.weight", &q_w),
        ("k_proj.bias", &k_b),
        ("input_layernorm", &norm),
        ("down_proj.weight", &down),
    ] {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");

        // Central differences on three entries, in f64 arithmetic over f32 forwards.
        let flat = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for idx in [0, flat.len() / 2, flat.len() - 1] {
            let h = 1e-2f32;
            let mut plus = flat.clone();
            plus[idx] += h;
            var.set(&Tensor::from_vec(plus, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let lp = loss(&p).to_scalar::<f32>().unwrap() as f64;
            let mut minus = flat.clone();
            minus[idx] -= h;
            var.set(&Tensor::from_vec(minus, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let lm = loss(&p).to_scalar::<f32>().unwrap() as f64;
            var.set(&Tensor::from_vec(flat.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let numeric = (lp - lm) / (2.0 * h as f64);
            let analytic = g[idx] as f64;
            let err = (numeric - analytic).abs();
            assert!(
                err < 2e-3 + 0.05 * analytic.abs(),
                "{name}[{idx}]: analytic {analytic}, numeric {numeric}"
            );
        }
    }
}

#[test]
fn packed_rows_give_each_example_its_own_logits() {
    for (name, spec) in specs() {
        let p = load(&tiny_model(spec));
        let a = [5u32, 200, 17, 3, 150];
        let b = [99u32, 260, 42, 8];
        // Row 0: a then b then one pad; row 1: b then padding.
        let ids: Vec<u32> = [&a[..], &b[..], &[0], &b[..], &[0, 0, 0, 0, 0, 0]].concat();
        let positions: Vec<u32> = [
            &[0, 1, 2, 3, 4][..],
            &[0, 1, 2, 3],
            &[0],
            &[0, 1, 2, 3],
            &[0; 6],
        ]
        .concat();
        let segments: Vec<u32> = [
            &[0u32; 5][..],
            &[1; 4],
            &[u32::MAX],
            &[0; 4],
            &[u32::MAX; 6],
        ]
        .concat();
        let x = Tensor::from_vec(ids, (2, 10), &Device::Cpu).unwrap();
        let packing = tuna_model::Packing {
            positions: &positions,
            segments: &segments,
        };
        let window = p.config.sliding_window;
        let layout = AttentionLayout::packed(packing, 2, 10, window).unwrap();
        let packed = logits_with(&p, &x, &layout, None, Kernels::Differentiable);
        let alone = |ids: &[u32]| {
            let x = Tensor::new(ids, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            p.model
                .forward(&x, Kernels::Differentiable)
                .unwrap()
                .squeeze(0)
                .unwrap()
        };
        let row =
            |r: usize, from: usize, n: usize| packed.get(r).unwrap().narrow(0, from, n).unwrap();
        assert!(
            max_abs_diff(&row(0, 0, 5), &alone(&a)) < 1e-4,
            "{name}: a in row 0"
        );
        assert!(
            max_abs_diff(&row(0, 5, 4), &alone(&b)) < 1e-4,
            "{name}: b after a"
        );
        assert!(
            max_abs_diff(&row(1, 0, 4), &alone(&b)) < 1e-4,
            "{name}: b in row 1"
        );
        let all = packed.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            all.iter().all(|v| v.is_finite()),
            "{name}: padding stays finite"
        );
    }
}

/// The logits of every new token of `ids`, laid out as `layout`, after what `cache` holds.
fn logits_with(
    p: &Pretrained,
    ids: &Tensor,
    layout: &AttentionLayout,
    cache: Option<&mut KvCache>,
    kernels: Kernels,
) -> Tensor {
    let hidden = p.model.hidden_states(ids, layout, cache, kernels).unwrap();
    p.model.logits(&hidden).unwrap()
}

/// Causal after the cache: the logits of every new position, (1, t, v).
fn cached_all(p: &Pretrained, ids: &Tensor, cache: &mut KvCache) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    let layout = AttentionLayout::causal(b, t, cache.len(), p.config.sliding_window);
    logits_with(p, ids, &layout, Some(cache), Kernels::Fused)
}

/// Left-padded rows after the same rows in the cache: each row's last logits, (b, v).
fn left_padded_last(p: &Pretrained, ids: &Tensor, cache: &mut KvCache, pad: &[usize]) -> Tensor {
    let t = ids.dim(1).unwrap();
    let layout = AttentionLayout::left_padded(pad, t, cache.len(), p.config.sliding_window);
    let logits = logits_with(p, ids, &layout, Some(cache), Kernels::Fused);
    logits.narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap()
}

/// Branches after the cached prompt in one forward, the cache left holding the prompt:
/// the logits of every branch token, branches one after another, (Σ len, v).
fn branch_logits(p: &Pretrained, branches: &[&[u32]], cache: &mut KvCache) -> Tensor {
    let start = cache.len();
    let roots: Vec<Branch> = branches
        .iter()
        .map(|b| Branch {
            len: b.len(),
            parent: None,
        })
        .collect();
    let layout = AttentionLayout::tree(&roots, start, p.config.sliding_window).unwrap();
    let ids = Tensor::from_vec(branches.concat(), (1, layout.queries), &Device::Cpu).unwrap();
    let logits = logits_with(p, &ids, &layout, Some(cache), Kernels::Fused);
    cache.truncate(start).unwrap();
    logits.squeeze(0).unwrap()
}

#[test]
fn left_padded_batches_give_each_row_its_own_logits() {
    for (name, spec) in specs() {
        let m = tiny_model(spec);
        let p = load(&m);
        // Three prompts of different lengths, left-padded into one batch, then two steps of
        // one token per row on the same cache.
        let prompts: [&[u32]; 3] = [&IDS[..6], &IDS[2..5], &IDS[1..2]];
        let steps: [[u32; 3]; 2] = [[7, 9, 11], [3, 5, 2]];
        let longest = prompts.iter().map(|x| x.len()).max().unwrap();
        let pad: Vec<usize> = prompts.iter().map(|x| longest - x.len()).collect();
        let mut ids = Vec::new();
        for (x, &n) in prompts.iter().zip(&pad) {
            ids.extend(std::iter::repeat_n(0u32, n));
            ids.extend_from_slice(x);
        }
        let mut cache = KvCache::new(p.config.num_hidden_layers);
        let ids = Tensor::from_vec(ids, (3, longest), &Device::Cpu).unwrap();
        let mut batched = vec![left_padded_last(&p, &ids, &mut cache, &pad)];
        for step in steps {
            let x = Tensor::from_vec(step.to_vec(), (3, 1), &Device::Cpu).unwrap();
            batched.push(left_padded_last(&p, &x, &mut cache, &pad));
        }
        for (row, prompt) in prompts.iter().enumerate() {
            let mut alone = KvCache::new(p.config.num_hidden_layers);
            let x = Tensor::new(*prompt, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let mut want = vec![p.model.forward_cached(&x, &mut alone).unwrap()];
            for step in steps {
                let x = Tensor::new(&[step[row]], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                want.push(p.model.forward_cached(&x, &mut alone).unwrap());
            }
            for (k, (b, w)) in batched.iter().zip(&want).enumerate() {
                let got = b.get(row).unwrap().unsqueeze(0).unwrap();
                let d = max_abs_diff(&got, w);
                assert!(d < 1e-4, "{name}: row {row}, step {k}: {d}");
            }
        }
    }
}

#[test]
fn branches_after_a_cached_prompt_match_each_branch_run_alone() {
    // Label ranking runs every candidate answer in one forward after the shared prompt.
    for (name, spec) in specs() {
        let m = tiny_model(spec);
        let p = load(&m);
        let layers = p.config.num_hidden_layers;
        let prompt = Tensor::new(&IDS[..6], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let branches: [&[u32]; 3] = [&[7, 9, 11], &[3], &[250, 4]];
        let mut cache = KvCache::new(layers);
        p.model.forward_cached(&prompt, &mut cache).unwrap();
        let together = branch_logits(&p, &branches, &mut cache);
        assert_eq!(cache.len(), 6, "{name}: the cache keeps the prompt only");
        let mut first = 0;
        for (i, branch) in branches.iter().enumerate() {
            let mut alone = cache.clone();
            let x = Tensor::new(*branch, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let want = cached_all(&p, &x, &mut alone);
            let got = together.narrow(0, first, branch.len()).unwrap();
            let d = max_abs_diff(&got, &want.squeeze(0).unwrap());
            assert!(d < 1e-4, "{name}: branch {i}: {d}");
            first += branch.len();
        }
        // The cache still serves the prompt: a branch run after the batched one is unchanged.
        let x = Tensor::new(branches[0], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let again = cached_all(&p, &x, &mut cache);
        let d = max_abs_diff(
            &together.narrow(0, 0, 3).unwrap(),
            &again.squeeze(0).unwrap(),
        );
        assert!(d < 1e-4, "{name}: after the branches: {d}");
    }
}
