//! Export on tiny models: the HF directory and the GGUF file load back with the same logits,
//! an occupied target is refused without force, and a failed export leaves the target as it
//! was and no temporary files.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use tuna_model::config::RopeScaling;
use tuna_model::export::{export, gguf_file_name, GgufQuant};
use tuna_model::{Kernels, LoadOptions, ModelError, Pretrained, WeightFormat};
use tuna_testkit::{export_temporaries, max_abs_diff, tiny_model, write_tiny_gguf, TinySpec};

fn logits(p: &Pretrained) -> Tensor {
    let ids = Tensor::new(&[3u32, 17, 42, 7, 99, 5], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    p.model.forward(&ids, Kernels::Differentiable).unwrap()
}

#[test]
fn hf_and_gguf_exports_load_back_with_the_same_logits() {
    for spec in [
        TinySpec::default(),
        TinySpec {
            model_type: "qwen2",
            attention_bias: true,
            tie_word_embeddings: false,
            ..Default::default()
        },
    ] {
        let m = tiny_model(spec.clone());
        let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
        let out = m.path().join("export");
        export(&p, &out, Some(GgufQuant::F16), false).unwrap();
        let hf = Pretrained::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
        assert_eq!(hf.config, p.config);
        assert_eq!(hf.tokenizer.special, p.tokenizer.special);
        assert!(max_abs_diff(&logits(&hf), &logits(&p)) < 1e-6);
        let gguf = out.join(gguf_file_name(GgufQuant::F16));
        let g = Pretrained::load(gguf.to_str().unwrap(), &LoadOptions::default()).unwrap();
        assert_eq!(g.config.hidden_size, p.config.hidden_size);
        assert_eq!(
            g.tokenizer.encode("the cat sat", false).unwrap(),
            p.tokenizer.encode("the cat sat", false).unwrap()
        );
        assert_eq!(
            g.chat_template.as_ref().map(|t| &t.source),
            p.chat_template.as_ref().map(|t| &t.source)
        );
        // f16 weights: close, not equal.
        let d = max_abs_diff(&logits(&g), &logits(&p));
        assert!(d < 2e-2, "{}: gguf f16 vs f32: {d}", spec.model_type);
        assert!(export_temporaries(m.path()).is_empty());
    }
}

#[test]
fn a_gguf_source_keeps_its_tokenizer_metadata_and_q8_0_loads() {
    let m = tiny_model(TinySpec::default());
    let src = m.path().join("tiny.gguf");
    write_tiny_gguf(&TinySpec::default(), &src, "smollm");
    let p = Pretrained::load(src.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let out = m.path().join("export");
    export(&p, &out, Some(GgufQuant::Q8_0), false).unwrap();
    let g = Pretrained::load(
        out.join(gguf_file_name(GgufQuant::Q8_0)).to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(g.tokenizer.special, p.tokenizer.special);
    // 8-bit weights: within 2% of the logits' range.
    let reference = logits(&p);
    let range = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(&logits(&g), &reference);
    assert!(d < 0.02 * range, "gguf q8_0 vs f32: {d} (range {range})");
}

#[test]
fn file_blocks_give_the_logits_of_the_same_blocks_decoded() {
    // A Q8_0 GGUF (q/k rows permuted as llama.cpp stores them) loaded two ways: decoded to
    // f32 (dense) and kept as the file's blocks. One token goes row by row against the blocks
    // (f32 activations: equal up to summation order); a longer sequence through the decoded
    // copy (bf16 tiles on AMX: within bf16 rounding).
    for spec in [
        TinySpec::default(),
        TinySpec {
            model_type: "qwen2",
            attention_bias: true,
            tie_word_embeddings: false,
            ..TinySpec::default()
        },
    ] {
        let m = tiny_model(spec.clone());
        let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
        let out = m.path().join("export");
        export(&p, &out, Some(GgufQuant::Q8_0), false).unwrap();
        let gguf = out.join(gguf_file_name(GgufQuant::Q8_0));
        let load = |weights| {
            let options = LoadOptions {
                weights,
                ..LoadOptions::default()
            };
            Pretrained::load(gguf.to_str().unwrap(), &options).unwrap()
        };
        let (dense, file) = (load(WeightFormat::Dense), load(WeightFormat::File));
        let held = file.model.layers[0].self_attn.q_proj.weight_bytes();
        assert!(
            held < dense.model.layers[0].self_attn.q_proj.weight_bytes() / 3,
            "{held} bytes"
        );
        // One token runs the few-row kernels: exact f32 dots of the decoded blocks, or, where
        // the processor has int8 dot instructions, activations rounded to 8 bits
        // (int8_rows.rs), about as coarse as the bf16 tiles that 24 tokens run on.
        let one = if tuna_model::int8_rows::packs(GgmlDType::Q8_0) {
            3e-2
        } else {
            1e-4
        };
        for (len, tol) in [(1, one), (24, 3e-2)] {
            let ids: Vec<u32> = (0..len).map(|i| (i * 5 + 1) % 16).collect();
            let logits = |p: &Pretrained| {
                let x = Tensor::new(ids.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                p.model.forward(&x, Kernels::Differentiable).unwrap()
            };
            let reference = logits(&dense);
            let range = reference
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_abs_diff(&logits(&file), &reference);
            assert!(
                d < tol * range.max(1.0),
                "{} {len} tokens: {d} (range {range})",
                spec.model_type
            );
        }
    }
}

#[test]
fn an_occupied_target_is_refused_and_a_failed_export_changes_nothing() {
    let m = tiny_model(TinySpec::default());
    let mut p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    let out = m.path().join("export");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = export(&p, &out, None, false).unwrap_err();
    assert!(
        matches!(err, ModelError::ExportTargetExists { .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .ends_with("exists and is not empty; pass --force to replace it"));
    // A refused model with --force: the old directory stays as it was and nothing temporary
    // is left (tests/integration/export.rs fails a write halfway, and kills one).
    p.config.rope_scaling = Some(RopeScaling::Factors {
        factors: vec![1.0; p.config.head_dim / 2],
    });
    let err = export(&p, &out, None, true).unwrap_err();
    assert!(err.to_string().contains("rope"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    assert!(
        export_temporaries(m.path()).is_empty(),
        "{:?}",
        export_temporaries(m.path())
    );
    // With force and a good model, the directory is replaced.
    p.config.rope_scaling = None;
    export(&p, &out, None, true).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").is_file());
    assert!(export_temporaries(m.path()).is_empty());
}

#[test]
fn an_export_killed_between_its_renames_gets_the_old_model_back() {
    let m = tiny_model(TinySpec::default());
    let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    let out = m.path().join("export");
    // What a kill right after "move the old export aside" leaves: no target, the old export
    // under a temporary name, and (from another killed export) a half-written one.
    let aside = m.path().join(".export.old-4999999");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::write(aside.join("keep.txt"), "mine").unwrap();
    let stale = m.path().join(".export.partial-4999999");
    std::fs::create_dir_all(&stale).unwrap();
    let err = export(&p, &out, None, false).unwrap_err();
    assert!(
        matches!(err, ModelError::ExportTargetExists { .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert!(
        export_temporaries(m.path()).is_empty(),
        "{:?}",
        export_temporaries(m.path())
    );
}
