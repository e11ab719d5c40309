//! LoRA on tiny models: a fresh adapter changes nothing, merged equals unmerged, gradients
//! reach every adapter tensor and match finite differences, and adapters round-trip through
//! PEFT's layout key for key.

use candle_core::{Device, Tensor, D};
use tuna_lora::{peft, LoraConfig, TargetModules};
use tuna_model::{Kernels, LoadOptions, Pretrained};
use tuna_testkit::{max_abs_diff, tiny_model, TinySpec};

const IDS: [u32; 8] = [5, 200, 17, 3, 150, 99, 260, 42];

fn ids() -> Tensor {
    Tensor::new(&IDS, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn load(spec: TinySpec) -> (tuna_testkit::TinyModel, Pretrained) {
    let m = tiny_model(spec);
    let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    (m, p)
}

/// Gives every B seeded random values, so the adapters do something.
fn randomize_b(p: &mut Pretrained) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    for (_, _, b) in p.model.lora_vars() {
        let values: Vec<f32> = (0..b.elem_count())
            .map(|_| rng.random_range(-0.35..0.35))
            .collect();
        b.set(&Tensor::from_vec(values, b.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn logits(p: &Pretrained) -> Tensor {
    p.model.forward(&ids(), Kernels::Differentiable).unwrap()
}

fn loss(p: &Pretrained) -> Tensor {
    let logits = logits(p).squeeze(0).unwrap();
    let n = IDS.len() - 1;
    let logp = candle_nn::ops::log_softmax(&logits.narrow(0, 0, n).unwrap(), D::Minus1).unwrap();
    let targets = Tensor::new(&IDS[1..], &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    (logp.gather(&targets, 1).unwrap().sum_all().unwrap() * (-1.0 / n as f64)).unwrap()
}

#[test]
fn a_fresh_adapter_leaves_logits_unchanged() {
    let (_m, mut p) = load(TinySpec::default());
    let before = logits(&p);
    p.model.attach_lora(&LoraConfig::default(), 0).unwrap();
    assert_eq!(p.model.lora_vars().len(), 2 * 7);
    assert_eq!(max_abs_diff(&before, &logits(&p)), 0.0);
}

#[test]
fn merged_equals_unmerged() {
    for spec in [
        TinySpec::default(),
        TinySpec {
            model_type: "qwen2",
            attention_bias: true,
            tie_word_embeddings: false,
            ..Default::default()
        },
    ] {
        let (_m, mut p) = load(spec);
        let cfg = LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            use_rslora: true,
            ..Default::default()
        };
        p.model.attach_lora(&cfg, 1).unwrap();
        randomize_b(&mut p);
        let unmerged = logits(&p);
        p.model.merge_lora().unwrap();
        assert!(!p.model.has_lora());
        let d = max_abs_diff(&unmerged, &logits(&p));
        eprintln!("merged vs unmerged: {d:e}");
        assert!(d <= 1e-5, "{d}");
    }
}

#[test]
fn target_selection_follows_peft_names() {
    let (_m, mut p) = load(TinySpec::default());
    let cfg = LoraConfig {
        target_modules: TargetModules::parse("q_proj,v_proj").unwrap(),
        layers_to_transform: Some(vec![1]),
        ..Default::default()
    };
    p.model.attach_lora(&cfg, 0).unwrap();
    let names: Vec<String> = p.model.lora_vars().into_iter().map(|(m, ..)| m).collect();
    assert_eq!(
        names,
        [
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
    let err = TargetModules::parse("q_proj,qkv").unwrap_err().to_string();
    assert_eq!(err, "lora: target_modules: `qkv` is not a projection of this model (expected all-linear or some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; embeddings and lm_head are not supported)");
}

#[test]
fn every_adapter_tensor_gets_a_gradient_that_matches_finite_differences() {
    let (_m, mut p) = load(TinySpec::default());
    p.model
        .attach_lora(
            &LoraConfig {
                r: 2,
                lora_alpha: 4.0,
                ..Default::default()
            },
            3,
        )
        .unwrap();
    randomize_b(&mut p);
    p.model.set_training(true);
    let vars = p.model.lora_vars();
    let grads = loss(&p).backward().unwrap();
    for (module, a, b) in &vars {
        for (name, var) in [("lora_A", a), ("lora_B", b)] {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{module}.{name}: no gradient"));
            let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                g.iter().any(|&x| x != 0.0),
                "{module}.{name}: zero gradient"
            );
        }
    }
    // Central differences on a few entries of the first and last adapters.
    for (module, a, b) in [&vars[0], &vars[vars.len() - 1]] {
        for var in [a, b] {
            let g = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let flat = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for idx in [0, flat.len() - 1] {
                let h = 1e-2f32;
                let eval = |delta: f32| {
                    let mut v = flat.clone();
                    v[idx] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss(&p).to_scalar::<f32>().unwrap() as f64
                };
                let numeric = (eval(h) - eval(-h)) / (2.0 * h as f64);
                var.set(&Tensor::from_vec(flat.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let analytic = g[idx] as f64;
                assert!(
                    (numeric - analytic).abs() < 2e-3 + 0.05 * analytic.abs(),
                    "{module}[{idx}]: {analytic} vs {numeric}"
                );
            }
        }
    }
}

#[test]
fn adapters_round_trip_in_peft_layout() {
    let (m, mut p) = load(TinySpec::default());
    let cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: TargetModules::parse("q_proj,k_proj,down_proj").unwrap(),
        ..Default::default()
    };
    p.model.attach_lora(&cfg, 5).unwrap();
    randomize_b(&mut p);
    let want = logits(&p);
    let dir = m.path().join("adapter");
    p.model.save_lora(&dir, &cfg).unwrap();

    // The layout PEFT writes: these keys, A (r, in), B (out, r), and its config fields.
    let saved = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let mut keys: Vec<(String, Vec<usize>)> = saved
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    keys.sort();
    let expected: Vec<(String, Vec<usize>)> = [0, 1]
        .iter()
        .flat_map(|i| {
            [
                (
                    format!("base_model.model.model.layers.{i}.mlp.down_proj.lora_A.weight"),
                    vec![4, 64],
                ),
                (
                    format!("base_model.model.model.layers.{i}.mlp.down_proj.lora_B.weight"),
                    vec![32, 4],
                ),
                (
                    format!("base_model.model.model.layers.{i}.self_attn.k_proj.lora_A.weight"),
                    vec![4, 32],
                ),
                (
                    format!("base_model.model.model.layers.{i}.self_attn.k_proj.lora_B.weight"),
                    vec![16, 4],
                ),
                (
                    format!("base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight"),
                    vec![4, 32],
                ),
                (
                    format!("base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight"),
                    vec![32, 4],
                ),
            ]
        })
        .collect();
    assert_eq!(keys, expected);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "k_proj", "down_proj"])
    );
    assert_eq!(config["bias"], "none");

    let (_m2, mut fresh) = (
        0,
        Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap(),
    );
    fresh.model.load_lora(&peft::load(&dir).unwrap()).unwrap();
    assert_eq!(max_abs_diff(&want, &logits(&fresh)), 0.0);
}

#[test]
fn an_adapter_for_another_base_names_the_tensor() {
    let (m, mut p) = load(TinySpec::default());
    p.model
        .attach_lora(
            &LoraConfig {
                r: 2,
                ..Default::default()
            },
            0,
        )
        .unwrap();
    let dir = m.path().join("adapter");
    p.model
        .save_lora(
            &dir,
            &LoraConfig {
                r: 2,
                ..Default::default()
            },
        )
        .unwrap();
    let (_other_dir, mut other) = load(TinySpec {
        intermediate_size: 48,
        ..Default::default()
    });
    let err = other
        .model
        .load_lora(&peft::load(&dir).unwrap())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight: shape [64, 2], this base model needs [48, 2] (an adapter for another model?)",
            dir.join("adapter_model.safetensors").display()
        )
    );
    std::fs::write(dir.join("adapter_config.json"), "{\"peft_type\": \"IA3\"}").unwrap();
    let err = peft::load(&dir).err().unwrap().to_string();
    assert!(
        err.ends_with("adapter_config.json: peft_type: `IA3` is not supported (only LORA)"),
        "{err}"
    );
}

#[test]
fn outside_training_adapters_build_no_graph() {
    let (_m, mut p) = load(TinySpec::default());
    p.model.attach_lora(&LoraConfig::default(), 0).unwrap();
    let vars = p.model.lora_vars();
    let grads = loss(&p).backward().unwrap();
    assert!(
        grads.get(vars[0].1.as_tensor()).is_none(),
        "inference is detached"
    );
    p.model.set_training(true);
    let grads = loss(&p).backward().unwrap();
    assert!(grads.get(vars[0].1.as_tensor()).is_some());
}

#[test]
fn rank_and_alpha_patterns_follow_peft() {
    let (m, mut p) = load(TinySpec::default());
    let cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        use_rslora: true,
        target_modules: TargetModules::parse("q_proj,v_proj").unwrap(),
        // PEFT's keys: a name's tail after a dot, or a regex over the whole name.
        rank_pattern: [("q_proj".to_string(), 2)].into(),
        alpha_pattern: [(r"model\.layers\.1\.self_attn\.v_proj".to_string(), 3.0)].into(),
        ..Default::default()
    };
    assert_eq!(cfg.rank_for("model.layers.0.self_attn.q_proj"), 2);
    assert_eq!(cfg.rank_for("model.layers.0.self_attn.v_proj"), 4);
    assert_eq!(cfg.scale_for("model.layers.1.self_attn.v_proj"), 3.0 / 2.0);
    assert_eq!(cfg.scale_for("model.layers.0.self_attn.v_proj"), 8.0 / 2.0);
    assert_eq!(
        cfg.scale_for("model.layers.0.self_attn.q_proj"),
        8.0 / 2f64.sqrt()
    );
    p.model.attach_lora(&cfg, 2).unwrap();
    randomize_b(&mut p);
    let want = logits(&p);
    let dir = m.path().join("patterned");
    p.model.save_lora(&dir, &cfg).unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["rank_pattern"], serde_json::json!({"q_proj": 2}));
    let tensors =
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(
        tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].dims(),
        [2, 32]
    );
    let mut fresh = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    fresh.model.load_lora(&peft::load(&dir).unwrap()).unwrap();
    assert_eq!(max_abs_diff(&want, &logits(&fresh)), 0.0);
    // The scale is applied: the same tensors under a config without the patterns differ.
    let mut plain: serde_json::Value = saved.clone();
    plain["alpha_pattern"] = serde_json::json!({});
    std::fs::write(dir.join("adapter_config.json"), plain.to_string()).unwrap();
    let mut other = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    other.model.load_lora(&peft::load(&dir).unwrap()).unwrap();
    assert!(max_abs_diff(&want, &logits(&other)) > 1e-4);
    // A key that is not a pattern is refused, naming the field.
    plain["rank_pattern"] = serde_json::json!({"q_proj(": 2});
    std::fs::write(dir.join("adapter_config.json"), plain.to_string()).unwrap();
    let err = peft::load(&dir).err().unwrap().to_string();
    assert!(err.contains("adapter_config.json: rank_pattern: "), "{err}");
}

#[test]
fn adapters_stored_in_f16_or_bf16_load() {
    let (m, mut p) = load(TinySpec::default());
    let cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..Default::default()
    };
    p.model.attach_lora(&cfg, 4).unwrap();
    randomize_b(&mut p);
    let want = logits(&p);
    let dir = m.path().join("f32");
    p.model.save_lora(&dir, &cfg).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    for dtype in [candle_core::DType::F16, candle_core::DType::BF16] {
        let half = m.path().join(format!("{dtype:?}"));
        std::fs::create_dir_all(&half).unwrap();
        std::fs::copy(
            dir.join("adapter_config.json"),
            half.join("adapter_config.json"),
        )
        .unwrap();
        let converted: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&converted, half.join("adapter_model.safetensors")).unwrap();
        let mut fresh = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
        fresh.model.load_lora(&peft::load(&half).unwrap()).unwrap();
        // Rounding only: f16 keeps 11 bits of mantissa, bf16 8.
        let tolerance = if dtype == candle_core::DType::F16 {
            5e-3
        } else {
            5e-2
        };
        let d = max_abs_diff(&want, &logits(&fresh));
        assert!(d > 0.0 && d < tolerance, "{dtype:?}: {d}");
    }
}

/// A saved r=2 adapter on every projection of a tiny model, and its directory.
fn saved_adapter() -> (tuna_testkit::TinyModel, std::path::PathBuf) {
    let (m, mut p) = load(TinySpec::default());
    let cfg = LoraConfig {
        r: 2,
        ..Default::default()
    };
    p.model.attach_lora(&cfg, 0).unwrap();
    let dir = m.path().join("adapter");
    p.model.save_lora(&dir, &cfg).unwrap();
    (m, dir)
}

fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(peft::CONFIG_FILE);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
}

fn add_tensor(dir: &std::path::Path, key: &str, shape: &[usize]) {
    let path = dir.join(peft::WEIGHTS_FILE);
    let mut all = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    all.insert(
        key.to_string(),
        Tensor::ones(shape, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&all, &path).unwrap();
}

#[test]
fn unsupported_peft_features_are_refused_naming_the_field() {
    let layer0 = "base_model.model.model.layers.0";
    // (config field, its value, and for a tensor-shape case the tensor and its shape)
    type Case = (
        &'static str,
        serde_json::Value,
        Option<(String, Vec<usize>)>,
    );
    let cases: Vec<Case> = vec![
        (
            "use_dora",
            serde_json::json!(true),
            Some((
                format!("{layer0}.self_attn.q_proj.lora_magnitude_vector"),
                vec![64],
            )),
        ),
        ("bias", serde_json::json!("lora_only"), None),
        ("modules_to_save", serde_json::json!(["lm_head"]), None),
        (
            "target_modules",
            serde_json::json!(["q_proj", "embed_tokens"]),
            Some((
                "base_model.model.model.embed_tokens.lora_embedding_A".into(),
                vec![2, 300],
            )),
        ),
        ("fan_in_fan_out", serde_json::json!(true), None),
        ("alora_invocation_tokens", serde_json::json!([5, 6]), None),
        (
            "lora_bias",
            serde_json::json!(true),
            Some((format!("{layer0}.self_attn.q_proj.lora_B.bias"), vec![64])),
        ),
        (
            "layer_replication",
            serde_json::json!([[0, 2], [1, 2]]),
            None,
        ),
        ("trainable_token_indices", serde_json::json!([3, 4]), None),
        ("target_parameters", serde_json::json!(["experts.w1"]), None),
        ("use_qalora", serde_json::json!(true), None),
        ("layers_to_transform", serde_json::json!("first"), None),
        ("r", serde_json::json!(0), None),
    ];
    for (field, value, tensor) in cases {
        let (_m, dir) = saved_adapter();
        edit_config(&dir, |c| c[field] = value.clone());
        if let Some((key, shape)) = &tensor {
            add_tensor(&dir, key, shape);
        }
        let err = peft::load(&dir).err().map(|e| e.to_string());
        let want = format!("{}: {field}: ", dir.join(peft::CONFIG_FILE).display());
        assert!(
            err.as_deref().is_some_and(|e| e.starts_with(&want)),
            "{field} = {value}: got {err:?}, want an error starting {want:?}"
        );
    }

    let (_m, dir) = saved_adapter();
    std::fs::remove_file(dir.join(peft::CONFIG_FILE)).unwrap();
    let err = peft::load(&dir).err().unwrap().to_string();
    assert_eq!(
        err,
        format!(
            "{}: missing adapter_config.json",
            dir.join(peft::CONFIG_FILE).display()
        )
    );
}

#[test]
fn every_peft_form_of_target_modules_and_layers_loads() {
    let (_m, dir) = saved_adapter();
    let (_m2, mut base) = load(TinySpec::default());
    let full = peft::load(&dir).unwrap();
    base.model.load_lora(&full).unwrap();
    let want = logits(&base);
    for (field, value) in [
        (
            "target_modules",
            serde_json::json!(r".*\.(q|k|v|o|gate|up|down)_proj"),
        ),
        (
            "target_modules",
            serde_json::json!([
                "self_attn.q_proj",
                "self_attn.k_proj",
                "v_proj",
                "o_proj",
                "mlp.gate_proj",
                "up_proj",
                "down_proj"
            ]),
        ),
        ("layers_to_transform", serde_json::json!([0, 1])),
        // Fields that shape training, not the forward pass, load unchanged.
        ("init_lora_weights", serde_json::json!("gaussian")),
        ("exclude_modules", serde_json::json!(["lm_head"])),
        ("loftq_config", serde_json::json!({})),
        (
            "runtime_config",
            serde_json::json!({"ephemeral_gpu_offload": false}),
        ),
        ("use_qalora", serde_json::json!(false)),
    ] {
        edit_config(&dir, |c| c[field] = value.clone());
        let (_m3, mut p) = load(TinySpec::default());
        p.model.load_lora(&peft::load(&dir).unwrap()).unwrap();
        assert_eq!(max_abs_diff(&want, &logits(&p)), 0.0, "{field} = {value}");
    }

    // One layer as a bare number with suffix names, and a regex alone, select what PEFT
    // selects.
    let by_names: LoraConfig = serde_json::from_value(serde_json::json!({
        "r": 2, "lora_alpha": 4, "layers_to_transform": 1,
        "target_modules": ["self_attn.q_proj", "v_proj"]
    }))
    .unwrap();
    assert_eq!(by_names.layers_to_transform, Some(vec![1]));
    let by_regex: LoraConfig = serde_json::from_value(serde_json::json!({
        "r": 2, "lora_alpha": 4,
        "target_modules": r"model\.layers\.1\.self_attn\.(q|v)_proj"
    }))
    .unwrap();
    for cfg in [by_names, by_regex] {
        let (_m4, mut p) = load(TinySpec::default());
        p.model.attach_lora(&cfg, 0).unwrap();
        let names: Vec<String> = p.model.lora_vars().into_iter().map(|(m, ..)| m).collect();
        assert_eq!(
            names,
            [
                "model.layers.1.self_attn.q_proj",
                "model.layers.1.self_attn.v_proj"
            ]
        );
    }

    // PEFT refuses layers_to_transform beside a regex; tuna too. A target that selects
    // nothing is an error, not an adapter-less training run.
    let (_m5, mut p) = load(TinySpec::default());
    let both: LoraConfig = serde_json::from_value(serde_json::json!({
        "r": 2, "lora_alpha": 4, "layers_to_transform": [1], "target_modules": ".*q_proj"
    }))
    .unwrap();
    let err = p.model.attach_lora(&both, 0).unwrap_err().to_string();
    assert!(
        err.starts_with("lora: layers_to_transform: cannot go with a regex"),
        "{err}"
    );
    let nothing = LoraConfig {
        target_modules: TargetModules::Pattern("q_proj,v_proj".into()),
        ..Default::default()
    };
    let err = p.model.attach_lora(&nothing, 0).unwrap_err().to_string();
    assert!(err.contains("selects no projection of this model"), "{err}");
}

#[test]
fn all_linear_with_some_layers_is_saved_in_a_form_peft_accepts() {
    let (m, mut p) = load(TinySpec::default());
    let cfg = LoraConfig {
        r: 2,
        layers_to_transform: Some(vec![0]),
        ..Default::default()
    };
    p.model.attach_lora(&cfg, 0).unwrap();
    let dir = m.path().join("adapter");
    p.model.save_lora(&dir, &cfg).unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(peft::CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        saved["target_modules"],
        serde_json::json!(tuna_lora::PROJECTIONS)
    );
    assert_eq!(saved["layers_to_transform"], serde_json::json!([0]));
    let (_m2, mut fresh) = load(TinySpec::default());
    fresh.model.load_lora(&peft::load(&dir).unwrap()).unwrap();
    assert_eq!(max_abs_diff(&logits(&p), &logits(&fresh)), 0.0);
}

/// tests/data/peft-fixture: an adapter PEFT saved (scripts/make-peft-fixture.py), with
/// PEFT's own delta weights beside it.
fn peft_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/peft-fixture")
}

#[test]
fn an_adapter_saved_by_peft_applies_the_deltas_peft_computes() {
    let loaded = peft::load(&peft_fixture()).unwrap();
    let config = &loaded.config;
    assert!(config.use_rslora);
    assert_eq!((config.r, config.lora_alpha), (4, 8.0));
    let expected = candle_core::safetensors::load(
        peft_fixture().join("expected_delta.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut modules: Vec<&String> = loaded.tensors.keys().collect();
    modules.sort();
    assert_eq!(
        modules,
        [
            "model.layers.1.mlp.down_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );

    // Folded into the tiny base, each weight moves by exactly PEFT's delta.
    let (_m, mut p) = load(TinySpec::default());
    p.model.load_lora(&loaded).unwrap();
    let mut checked = 0;
    for (module, _, _, linear) in p.model.projections_mut() {
        let Some(want) = expected.get(&module) else {
            assert!(linear.adapter.is_none(), "{module} has no adapter in PEFT");
            continue;
        };
        let before = linear.dense_weight().unwrap();
        linear.merge_adapter().unwrap();
        let delta = (linear.dense_weight().unwrap() - before).unwrap();
        let d = max_abs_diff(&delta, want);
        assert!(d < 1e-5, "{module}: merged delta vs PEFT's: {d}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn tensors_the_config_leaves_out_are_refused() {
    // A config narrowed after saving: PEFT would build only layer 0's modules.
    let (_m, dir) = saved_adapter();
    edit_config(&dir, |c| c["layers_to_transform"] = serde_json::json!([0]));
    let (_m2, mut p) = load(TinySpec::default());
    let err = p
        .model
        .load_lora(&peft::load(&dir).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.1.") && err.contains("leave this module out"),
        "{err}"
    );
}
