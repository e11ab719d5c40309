//! Test-only helpers: tiny random Llama-family models and a tiny byte-level BPE tokenizer,
//! written to a temp directory in code so that tests need no download, plus tensor
//! comparison helpers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

pub mod fuzz;

/// The knobs of a tiny model; every Llama-family difference tuna supports is a field.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub model_type: &'static str,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub rope_scaling: Option<Value>,
    pub sliding_window: Option<usize>,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            model_type: "llama",
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            attention_bias: false,
            tie_word_embeddings: true,
            rope_theta: 10_000.0,
            rope_scaling: None,
            sliding_window: None,
            seed: 0,
        }
    }
}

/// A model directory in a temp dir; removed on drop.
pub struct TinyModel {
    pub dir: tempfile::TempDir,
    pub spec: TinySpec,
    pub vocab_size: usize,
}

impl TinyModel {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> String {
        self.dir.path().display().to_string()
    }
}

pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's byte-to-unicode table: the printable stand-in for every byte
/// (https://github.com/openai/gpt-2/blob/master/src/encoder.py, bytes_to_unicode).
pub fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut table = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        if printable.contains(&b) {
            table[b as usize] = char::from_u32(b).expect("valid char");
        } else {
            table[b as usize] = char::from_u32(256 + extra).expect("valid char");
            extra += 1;
        }
    }
    printable.clear();
    table
}

/// Special tokens of the tiny tokenizer, ChatML-style like SmolLM2: ids 0, 1, 2.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Merges of the tiny tokenizer, in priority order.
const MERGES: [(&str, &str); 12] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "s"),
    ("r", "e"),
    ("a", "t"),
    ("Ġ", "c"),
    ("i", "s"),
];

/// A byte-level BPE tokenizer.json: 3 specials, 256 byte tokens, then one token per merge.
/// With `digits`, digits are split one by one first (SmolLM2's pre-tokenizer).
pub fn tiny_tokenizer_json(digits: bool) -> Value {
    let mut vocab = serde_json::Map::new();
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for c in bytes_to_unicode() {
        let id = vocab.len();
        vocab.insert(c.to_string(), json!(id));
    }
    for (a, b) in MERGES {
        let id = vocab.len();
        vocab.insert(format!("{a}{b}"), json!(id));
    }
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = if digits {
        json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
    } else {
        byte_level
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": MERGES.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()},
    })
}

pub fn tiny_vocab_size() -> usize {
    SPECIAL_TOKENS.len() + 256 + MERGES.len()
}

/// Random weights with Hugging Face names for `spec`, seeded.
pub fn tiny_weights(spec: &TinySpec, vocab: usize) -> HashMap<String, Tensor> {
    let mut tensors = HashMap::new();
    for_each_weight(spec, vocab, |name, t| {
        tensors.insert(name, t);
    });
    tensors
}

/// The weights of `tiny_weights`, one tensor at a time (a 1B-parameter shape never holds
/// all of them as f32 at once).
pub fn for_each_weight(spec: &TinySpec, vocab: usize, mut emit: impl FnMut(String, Tensor)) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let mut rand_tensor = |shape: &[usize], center: f32, scale: f32| -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| center + scale * rng.random_range(-1.0f32..1.0))
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).expect("shape matches data")
    };
    let d = spec.hidden_size;
    let hd = d / spec.num_attention_heads;
    let (q_out, kv_out, ff) = (
        spec.num_attention_heads * hd,
        spec.num_key_value_heads * hd,
        spec.intermediate_size,
    );
    emit(
        "model.embed_tokens.weight".into(),
        rand_tensor(&[vocab, d], 0.0, 1.0),
    );
    for i in 0..spec.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let lin = |out: usize, inp: usize| (out, inp, 1.0 / (inp as f32).sqrt() * 1.7);
        let mut linears = vec![
            ("self_attn.q_proj", lin(q_out, d)),
            ("self_attn.k_proj", lin(kv_out, d)),
            ("self_attn.v_proj", lin(kv_out, d)),
            ("self_attn.o_proj", lin(d, q_out)),
            ("mlp.gate_proj", lin(ff, d)),
            ("mlp.up_proj", lin(ff, d)),
            ("mlp.down_proj", lin(d, ff)),
        ];
        for (name, (out, inp, scale)) in linears.drain(..) {
            emit(
                format!("{p}.{name}.weight"),
                rand_tensor(&[out, inp], 0.0, scale),
            );
            if spec.attention_bias
                && matches!(
                    name,
                    "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj"
                )
            {
                emit(format!("{p}.{name}.bias"), rand_tensor(&[out], 0.0, 0.5));
            }
        }
        emit(
            format!("{p}.input_layernorm.weight"),
            rand_tensor(&[d], 1.0, 0.2),
        );
        emit(
            format!("{p}.post_attention_layernorm.weight"),
            rand_tensor(&[d], 1.0, 0.2),
        );
    }
    emit("model.norm.weight".into(), rand_tensor(&[d], 1.0, 0.2));
    if !spec.tie_word_embeddings {
        emit("lm_head.weight".into(), rand_tensor(&[vocab, d], 0.0, 0.3));
    }
}

/// Writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
/// generation_config.json for `spec` into a new temp dir.
pub fn tiny_model(spec: TinySpec) -> TinyModel {
    let dir = tempfile::tempdir().expect("temp dir");
    let vocab = tiny_vocab_size();
    write_tiny_model(dir.path(), &spec, vocab);
    TinyModel {
        dir,
        spec,
        vocab_size: vocab,
    }
}

pub fn write_tiny_model(dir: &Path, spec: &TinySpec, vocab: usize) {
    let mut config = json!({
        "architectures": [match spec.model_type { "qwen2" => "Qwen2ForCausalLM", "mistral" => "MistralForCausalLM", _ => "LlamaForCausalLM" }],
        "model_type": spec.model_type,
        "vocab_size": vocab,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": spec.rope_theta,
        "max_position_embeddings": 512,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    if spec.model_type == "llama" {
        config["attention_bias"] = json!(spec.attention_bias);
    }
    if let Some(scaling) = &spec.rope_scaling {
        config["rope_scaling"] = scaling.clone();
    }
    if let Some(window) = spec.sliding_window {
        config["sliding_window"] = json!(window);
        if spec.model_type == "qwen2" {
            config["use_sliding_window"] = json!(true);
        }
    }
    write_json(&dir.join("config.json"), &config);
    let tensors = tiny_weights(spec, vocab);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))
        .expect("write safetensors");
    write_json(&dir.join("tokenizer.json"), &tiny_tokenizer_json(true));
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                "add_bos_token": false, "chat_template": CHATML_TEMPLATE}),
    );
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": 1, "eos_token_id": 2}),
    );
}

pub fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).expect("json")).expect("write json");
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .expect("flatten");
    let b = b
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .expect("flatten");
    let diff = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max(0))
        .expect("diff");
    diff.to_scalar::<f32>().expect("scalar")
}

/// Asserts `ours` is a non-zero gradient equal to `reference` within 1e-4 of the
/// reference's largest entry (at least 1e-7); `what` names it in the failure.
#[track_caller]
pub fn assert_same_gradient(ours: &Tensor, reference: &Tensor, what: &str) {
    assert_gradient_within(ours, reference, 1e-4, what)
}

/// As `assert_same_gradient`, within `rel` of the reference's largest entry (at least
/// `rel` · 1e-3).
#[track_caller]
pub fn assert_gradient_within(ours: &Tensor, reference: &Tensor, rel: f32, what: &str) {
    let size = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(size > 0.0, "{what}: zero gradient");
    let diff = max_abs_diff(ours, reference);
    assert!(
        diff <= rel * size.max(1e-3),
        "{what}: gradients differ by {diff} (size {size})"
    );
}

#[track_caller]
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "max |a - b| = {d} > {tol}");
}

/// The export temporaries (`.NAME.partial-PID`, `.NAME.old-PID`) in `dir`: none may be
/// left once an export has ended, however it ended.
pub fn export_temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-") || n.contains(".old-"))
        .collect()
}

/// The repository root (for tests that use the real model in models/).
pub fn repo_root() -> PathBuf {
    // TUNA_REPO_ROOT, else above this crate's source, else above the working directory (a
    // test binary carried to another machine runs from a checkout at another path).
    if let Some(dir) = std::env::var_os("TUNA_REPO_ROOT") {
        return dir.into();
    }
    let above = |mut dir: PathBuf| loop {
        if dir.join("Cargo.lock").exists() || dir.join(".git").exists() {
            return Some(dir);
        }
        if !dir.pop() {
            return None;
        }
    };
    above(PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .or_else(|| std::env::current_dir().ok().and_then(above))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The default model fetched by scripts/fetch-model.sh. Panics with the fix when absent: the
/// tests that need it must not pass silently without it.
pub fn smollm2_gguf() -> PathBuf {
    let path = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-model.sh (scripts/test.sh does it for you)",
        path.display()
    );
    path
}

/// llama.cpp's q/k row permutation for interleaved rope, written out with index loops
/// (convert_hf_to_gguf.py, LlamaModel.permute: reshape(heads, 2, hd/2, ..).swapaxes(1, 2)):
/// HF row h*hd + a*hd/2 + i moves to h*hd + 2i + a.
pub fn llama_cpp_permute(t: &Tensor, heads: usize) -> Tensor {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let hd = rows / heads;
    let data = t
        .flatten_all()
        .and_then(|f| f.to_vec1::<f32>())
        .expect("f32 tensor");
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for a in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + a * hd / 2 + i;
                let dst = h * hd + 2 * i + a;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Tensor::from_vec(out, dims, &Device::Cpu).expect("same shape")
}

/// llama.cpp's tensor name for a Hugging Face one (written independently of tuna's mapping).
fn gguf_tensor_name(hf: &str) -> String {
    let table = [
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("post_attention_layernorm", "ffn_norm"),
        ("input_layernorm", "attn_norm"),
        ("model.layers.", "blk."),
    ];
    let mut name = hf.to_string();
    for (from, to) in table {
        name = name.replace(from, to);
    }
    name
}

/// The tiny model of `spec` as a GGUF file, laid out as llama.cpp's converter writes a Llama:
/// `llama.*` metadata, q/k rows permuted, F32 tensors, the tiny tokenizer's vocabulary and
/// merges with pre-tokenizer `pre`, ChatML template.
pub fn write_tiny_gguf(spec: &TinySpec, path: &Path, pre: &str) {
    write_gguf(
        spec,
        path,
        pre,
        candle_core::quantized::GgmlDType::F32,
        tiny_vocab_size(),
    );
}

/// TinyLlama-1.1B's shape (2048 wide, 22 layers, 32 heads over 4 KV heads, 5632 MLP,
/// untied head; its vocabulary of 32000 is `TINYLLAMA_VOCAB`), random weights: for the
/// speed and memory tests of a model ten times the default's size.
pub fn tinyllama_shape() -> TinySpec {
    TinySpec {
        hidden_size: 2048,
        intermediate_size: 5632,
        num_hidden_layers: 22,
        num_attention_heads: 32,
        num_key_value_heads: 4,
        tie_word_embeddings: false,
        ..TinySpec::default()
    }
}

pub const TINYLLAMA_VOCAB: usize = 32000;

/// `write_tiny_gguf` with the matrices stored as `dtype` blocks (norms stay F32, as
/// llama-quantize leaves them) and the vocabulary padded to `vocab` entries with plain
/// tokens no merge produces. Tensors are made and quantized one at a time, so a
/// 1B-parameter shape peaks near the file's size.
pub fn write_gguf(
    spec: &TinySpec,
    path: &Path,
    pre: &str,
    dtype: candle_core::quantized::GgmlDType,
    vocab: usize,
) {
    use candle_core::quantized::gguf_file::{self, Value as G};
    use candle_core::quantized::{GgmlDType, QTensor};

    let tiny = tiny_vocab_size();
    assert!(vocab >= tiny, "the vocabulary holds the tiny tokenizer's");
    let hd = spec.hidden_size / spec.num_attention_heads;
    let tok_json = tiny_tokenizer_json(true);
    let mut tokens = vec![String::new(); tiny];
    for (t, id) in tok_json["model"]["vocab"].as_object().expect("vocab") {
        tokens[id.as_u64().expect("id") as usize] = t.clone();
    }
    tokens.extend((tiny..vocab).map(|i| format!("<pad{i}>")));
    let types: Vec<G> = (0..vocab)
        .map(|i| G::I32(if i < SPECIAL_TOKENS.len() { 3 } else { 1 }))
        .collect();
    let merges: Vec<G> = MERGES
        .iter()
        .map(|(a, b)| G::String(format!("{a} {b}")))
        .collect();
    let u32v = |v: usize| G::U32(v as u32);
    let metadata: Vec<(&str, G)> = vec![
        ("general.architecture", G::String("llama".into())),
        ("llama.context_length", u32v(512)),
        ("llama.embedding_length", u32v(spec.hidden_size)),
        ("llama.block_count", u32v(spec.num_hidden_layers)),
        ("llama.feed_forward_length", u32v(spec.intermediate_size)),
        ("llama.attention.head_count", u32v(spec.num_attention_heads)),
        (
            "llama.attention.head_count_kv",
            u32v(spec.num_key_value_heads),
        ),
        ("llama.rope.dimension_count", u32v(hd)),
        ("llama.rope.freq_base", G::F32(spec.rope_theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon", G::F32(1e-5)),
        ("tokenizer.ggml.model", G::String("gpt2".into())),
        ("tokenizer.ggml.pre", G::String(pre.into())),
        (
            "tokenizer.ggml.tokens",
            G::Array(tokens.into_iter().map(G::String).collect()),
        ),
        ("tokenizer.ggml.token_type", G::Array(types)),
        ("tokenizer.ggml.merges", G::Array(merges)),
        ("tokenizer.ggml.bos_token_id", u32v(1)),
        ("tokenizer.ggml.eos_token_id", u32v(2)),
        ("tokenizer.ggml.padding_token_id", u32v(2)),
        ("tokenizer.ggml.add_bos_token", G::Bool(false)),
        ("tokenizer.chat_template", G::String(CHATML_TEMPLATE.into())),
    ];
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for_each_weight(spec, vocab, |name, t| {
        let t = if name.contains("q_proj") {
            llama_cpp_permute(&t, spec.num_attention_heads)
        } else if name.contains("k_proj") {
            llama_cpp_permute(&t, spec.num_key_value_heads)
        } else {
            t
        };
        let blocks = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
        let q = QTensor::quantize(&t, blocks).expect("quantize a tensor");
        tensors.push((gguf_tensor_name(&name), q));
    });
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let md: Vec<(&str, &G)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).expect("create gguf");
    gguf_file::write(&mut file, &md, &ts).expect("write gguf");
}
