//! The same tiny model through each source: safetensors (single and sharded) and a GGUF file
//! written the way llama.cpp lays one out (q/k rows permuted, GGUF names, tokenizer in the
//! metadata). Logits and token ids must agree.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::json;
use tuna_model::{Kernels, LoadOptions, Message, Pretrained};
use tuna_testkit::{max_abs_diff, tiny_model, write_json, write_tiny_gguf, TinySpec};

fn logits(p: &Pretrained) -> Tensor {
    let ids = Tensor::new(&[5u32, 200, 17, 3, 150, 99, 260], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    p.model.forward(&ids, Kernels::Differentiable).unwrap()
}

fn load(path: &str) -> Pretrained {
    Pretrained::load(path, &LoadOptions::default()).unwrap()
}

#[test]
fn gguf_with_permuted_qk_matches_safetensors() {
    let spec = TinySpec::default();
    let dir = tiny_model(spec.clone());
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(&spec, &gguf, "smollm");
    let (a, b) = (load(&dir.path_str()), load(gguf.to_str().unwrap()));
    assert_eq!(a.config, b.config);
    assert!(max_abs_diff(&logits(&a), &logits(&b)) < 1e-5);
    for text in [
        "the cat sat on the mat",
        "digits 12345 and  spaces",
        "<|im_start|>user\nhi<|im_end|>",
    ] {
        assert_eq!(
            a.tokenizer.encode(text, true).unwrap(),
            b.tokenizer.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    let messages = [Message::new("user", "hi")];
    let render = |p: &Pretrained| {
        p.chat_template
            .as_ref()
            .unwrap()
            .render(&messages, true)
            .unwrap()
    };
    assert_eq!(render(&a), render(&b));
    assert_eq!(a.tokenizer.special, b.tokenizer.special);
}

#[test]
fn gguf_pre_tokenizers_build_and_round_trip() {
    let spec = TinySpec::default();
    let dir = tempfile::tempdir().unwrap();
    for pre in ["smollm", "llama-bpe", "qwen2", "gpt2"] {
        let path = dir.path().join(format!("{pre}.gguf"));
        write_tiny_gguf(&spec, &path, pre);
        let p = load(path.to_str().unwrap());
        let text = "Hello there, 2024 is a year!\n\n  x";
        let ids = p.tokenizer.encode(text, true).unwrap();
        assert_eq!(p.tokenizer.decode(&ids, false).unwrap(), text, "{pre}");
    }
    let path = dir.path().join("odd.gguf");
    write_tiny_gguf(&spec, &path, "some-new-pre");
    let err = Pretrained::load(path.to_str().unwrap(), &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("GGUF pre-tokenizer `some-new-pre` is not supported"),
        "{err}"
    );
}

#[test]
fn sharded_safetensors_load_like_a_single_file() {
    let m = tiny_model(TinySpec {
        tie_word_embeddings: false,
        ..Default::default()
    });
    let single = load(&m.path_str());
    let all =
        candle_core::safetensors::load(m.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), all[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, m.path().join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), json!(file));
        }
    }
    std::fs::remove_file(m.path().join("model.safetensors")).unwrap();
    write_json(
        &m.path().join("model.safetensors.index.json"),
        &json!({"metadata": {}, "weight_map": weight_map}),
    );
    let sharded = load(&m.path_str());
    assert!(max_abs_diff(&logits(&single), &logits(&sharded)) < 1e-6);
}

#[test]
fn a_shape_mismatch_names_the_tensor() {
    let m = tiny_model(TinySpec::default());
    let config = m.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["intermediate_size"] = 48.into();
    write_json(&config, &json);
    let err = Pretrained::load(&m.path_str(), &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: tensor `model.layers.0.mlp.gate_proj.weight`: shape [64, 32], expected [48, 32] by {}",
            m.path().join("model.safetensors").display(),
            config.display()
        )
    );
}
