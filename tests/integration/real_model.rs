//! The real default model (SmolLM2-135M-Instruct GGUF, fetched by scripts/fetch-model.sh):
//! its facts, its tokenizer against transformers' goldens, and its logits and greedy tokens
//! against candle-transformers' quantized_llama run in f32 (an independent implementation
//! that uses GGUF's interleaved rope on the permuted q/k rows).

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use tuna_eval::{generate, SamplingOptions};
use tuna_model::gguf::GgufFile;
use tuna_model::tokenizer::gguf_tokenizer_json;
use tuna_model::{Kernels, LoadOptions, Message, Pretrained};
use tuna_testkit::{max_abs_diff, repo_root, smollm2_gguf, write_json};

const SENTENCE_IDS: [u32; 12] = [
    504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 4521, 314,
];

fn smollm2() -> &'static Pretrained {
    static MODEL: OnceLock<Pretrained> = OnceLock::new();
    MODEL.get_or_init(|| {
        Pretrained::load(smollm2_gguf().to_str().unwrap(), &LoadOptions::default())
            .expect("SmolLM2 loads")
    })
}

/// transformers' outputs for this GGUF, made by scripts/golden/make_goldens.py.
fn goldens() -> Value {
    let path = repo_root().join("scripts/golden/smollm2_goldens.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// candle-transformers' quantized llama with every tensor dequantized to f32.
fn reference_model() -> candle_transformers::models::quantized_llama::ModelWeights {
    // Read by QMatMul on first use in each thread; this test's thread sets it first.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let path = smollm2_gguf();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut file,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn gguf_facts_are_read_from_the_file() {
    let mut g = GgufFile::open(&smollm2_gguf()).unwrap();
    let c = g.config().unwrap();
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim
        ),
        (30, 576, 9, 3, 64)
    );
    assert_eq!(
        (c.intermediate_size, c.vocab_size, c.max_position_embeddings),
        (1536, 49152, 8192)
    );
    assert_eq!((c.rope_theta, c.rms_norm_eps), (100_000.0, 1e-5));
    assert!(c.tie_word_embeddings && !c.attention_bias && c.rope_scaling.is_none());
    let mut by_type: HashMap<String, usize> = HashMap::new();
    for info in g.content.tensor_infos.values() {
        *by_type.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
    }
    assert_eq!(
        by_type,
        HashMap::from([("Q4_1".into(), 210), ("F32".into(), 61), ("Q8_0".into(), 1)])
    );
    assert_eq!(g.meta_str("tokenizer.ggml.pre"), Some("smollm"));
    let t = &smollm2().tokenizer.special;
    assert_eq!(t.bos, Some((1, "<|im_start|>".into())));
    assert_eq!(t.eos, Some((2, "<|im_end|>".into())));
    assert_eq!(t.pad, Some((2, "<|im_end|>".into())));
    assert!(!t.add_bos, "SmolLM2 adds no BOS");
}

#[test]
fn tokenizer_matches_transformers_goldens() {
    let tok = &smollm2().tokenizer;
    let g = goldens();
    for case in g["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), want, "encode {text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), text, "decode {text:?}");
    }
    // Where transformers' GGUF loader drops SmolLM2's digit splitting, tuna follows the
    // model's own tokenizer.json and llama.cpp (Digits, then ByteLevel).
    for case in g["pretokenizer_divergence"]["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> =
            serde_json::from_value(case["ids_digits_then_bytelevel"].clone()).unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), want, "encode {text:?}");
    }
}

#[test]
fn chat_template_matches_transformers() {
    let m = smollm2();
    let template = m
        .chat_template
        .as_ref()
        .expect("SmolLM2 has a chat template");
    for case in goldens()["chat"].as_array().unwrap() {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let text = template.render(&messages, add).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(m.tokenizer.encode(&text, false).unwrap(), want);
    }
    // <|im_end|> ends a turn: generation stops there.
    assert!(m.tokenizer.is_stop(2));
}

#[test]
fn logits_match_quantized_llama_in_f32_at_every_position() {
    let ours = smollm2()
        .model
        .forward(
            &Tensor::new(&SENTENCE_IDS, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            Kernels::Differentiable,
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    let mut reference = reference_model();
    for (pos, &id) in SENTENCE_IDS.iter().enumerate() {
        let x = Tensor::new(&[id], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = reference.forward(&x, pos).unwrap().squeeze(0).unwrap();
        let got = ours.get(pos).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-3, "position {pos}: max |ours - reference| = {d}");
    }
    // transformers' greedy next token after the sentence is " Berlin".
    let last = ours.get(SENTENCE_IDS.len() - 1).unwrap();
    assert_eq!(last.argmax(0).unwrap().to_scalar::<u32>().unwrap(), 11452);
}

#[test]
fn greedy_generation_matches_the_reference_for_64_tokens() {
    let m = smollm2();
    let prompt = m.tokenizer.encode("<|im_start|>user\nWrite a short story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let options = SamplingOptions {
        max_new_tokens: 64,
        ignore_eos: true,
        ..Default::default()
    };
    let (ours, _) = generate(m, &prompt, &options, |_| {}).unwrap();

    let mut reference = reference_model();
    let mut want = Vec::new();
    let mut logits = reference
        .forward(
            &Tensor::new(prompt.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            0,
        )
        .unwrap();
    for step in 0..64 {
        let next = logits
            .squeeze(0)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        want.push(next);
        let x = Tensor::new(&[next], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        logits = reference.forward(&x, prompt.len() + step).unwrap();
    }
    assert_eq!(ours, want);
}

#[test]
fn the_same_model_as_an_hf_directory_gives_the_same_logits() {
    let m = smollm2();
    let dir = tempfile::tempdir().unwrap();
    // An HF directory made from the GGUF: q/k rows already in HF order after loading.
    let tensors: HashMap<String, Tensor> = m.model.named_tensors().unwrap().into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    write_json(&dir.path().join("config.json"), &m.config.to_hf_json());
    let gguf = GgufFile::open(&smollm2_gguf()).unwrap();
    write_json(
        &dir.path().join("tokenizer.json"),
        &gguf_tokenizer_json(&gguf).unwrap(),
    );
    let template = &m.chat_template.as_ref().unwrap().source;
    write_json(
        &dir.path().join("tokenizer_config.json"),
        &json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                "add_bos_token": false, "chat_template": template}),
    );
    let hf = Pretrained::load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(hf.config, m.config);
    assert_eq!(hf.tokenizer.special, m.tokenizer.special);
    let ids = Tensor::new(&SENTENCE_IDS, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let a = m.model.forward(&ids, Kernels::Differentiable).unwrap();
    let b = hf.model.forward(&ids, Kernels::Differentiable).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-5);
    let text = "Hello, world! 1234 🦀";
    assert_eq!(
        hf.tokenizer.encode(text, true).unwrap(),
        m.tokenizer.encode(text, true).unwrap()
    );
}

#[test]
fn f16_generation_weights_stay_close_to_f32() {
    let dense = smollm2();
    let options = LoadOptions {
        weights: tuna_model::WeightFormat::F16,
        ..Default::default()
    };
    let half = Pretrained::load(smollm2_gguf().to_str().unwrap(), &options).unwrap();
    let ids = Tensor::new(&SENTENCE_IDS, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    // Full sequence (the f32 matmul after converting) and one token at a time (the f16 op).
    let a = dense
        .model
        .forward(&ids, Kernels::Fused)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let b = half
        .model
        .forward(&ids, Kernels::Fused)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let mut cache = tuna_model::KvCache::new(half.config.num_hidden_layers);
    let rows: Vec<Tensor> = SENTENCE_IDS
        .iter()
        .map(|&id| {
            let x = Tensor::new(&[id], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            half.model
                .forward_cached(&x, &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap()
        })
        .collect();
    let c = Tensor::stack(&rows, 0).unwrap();
    for (name, other) in [("f16 full", &b), ("f16 cached", &c)] {
        let d = max_abs_diff(&a, other);
        assert!(d < 0.1, "{name}: max |f32 - f16| logits = {d}");
        assert_eq!(
            a.argmax(1).unwrap().to_vec1::<u32>().unwrap(),
            other.argmax(1).unwrap().to_vec1::<u32>().unwrap(),
            "{name}"
        );
    }
}

/// The text sample's NLL teacher-forced one token at a time through the KV cache: the
/// batch-1 generation path (for the file's blocks, the fused block dots).
fn one_token_at_a_time_nll(p: &Pretrained, ids: &[u32]) -> f64 {
    let mut cache = tuna_model::KvCache::new(p.config.num_hidden_layers);
    let mut nll = 0.0;
    for pair in ids.windows(2) {
        let x = Tensor::new(&pair[..1], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = p.model.forward_cached(&x, &mut cache).unwrap();
        let logp = tuna_model::decoder::log_softmax(&logits.flatten_all().unwrap()).unwrap();
        nll -= logp
            .get(pair[1] as usize)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
    }
    nll / (ids.len() - 1) as f64
}

#[test]
fn generation_over_the_file_blocks_keeps_the_loss_within_half_a_percent_of_f32() {
    let text = std::fs::read_to_string(repo_root().join("data/example/text-sample.jsonl")).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let dense = smollm2();
    let mut ids = dense.tokenizer.encode(&text.join(" "), false).unwrap();
    ids.truncate(200);
    let options = LoadOptions {
        weights: tuna_model::WeightFormat::File,
        ..Default::default()
    };
    let file = Pretrained::load(smollm2_gguf().to_str().unwrap(), &options).unwrap();
    let (want, got) = (
        one_token_at_a_time_nll(dense, &ids),
        one_token_at_a_time_nll(&file, &ids),
    );
    eprintln!(
        "one token at a time, {} tokens: f32 {want:.5}, file blocks {got:.5}",
        ids.len()
    );
    assert!(
        (got - want).abs() < 0.005 * want,
        "file blocks {got} vs f32 {want}"
    );
}

#[test]
fn batched_greedy_generation_equals_one_prompt_at_a_time() {
    let m = smollm2();
    let questions = [
        "What is the capital of France?",
        "Name three colors.",
        "Write one sentence about the sea and the wind that blows over it at night.",
    ];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            let text = format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
            m.tokenizer.encode(&text, false).unwrap()
        })
        .collect();
    let mut scorer = tuna_eval::scoring::Scorer::new(m);
    let batched = scorer.greedy_batch(&prompts, 16).unwrap();
    let options = SamplingOptions {
        max_new_tokens: 16,
        ..Default::default()
    };
    for (prompt, got) in prompts.iter().zip(&batched) {
        let (want, _) = generate(m, prompt, &options, |_| {}).unwrap();
        assert_eq!(got, &want, "{:?}", m.tokenizer.decode(&want, true));
    }
}
