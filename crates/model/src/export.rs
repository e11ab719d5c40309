//! Writing a model out: a Hugging Face directory (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json with the chat template, generation_config.json) that
//! transformers and tuna load, or a GGUF file (llama.cpp's tensor names and q/k row order,
//! the tokenizer and chat template in its metadata) that llama.cpp, candle-transformers'
//! quantized llama and tuna load.
//!
//! Both are written to a temporary sibling and renamed into place, so an interrupted export
//! (a full disk, Ctrl-C) never leaves a half-written model under the final name.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::config::RopeScaling;
use crate::error::{ModelError, Result};
use crate::gguf::{gguf_name, GgufFile};
use crate::pretrained::Pretrained;
use crate::rope::Rope;
use crate::source::ModelSource;
use crate::weights::permute_rows;

/// GGUF tensor encodings `--quant` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufQuant {
    F16,
    Q8_0,
    /// Q4_K where a row is a multiple of 256 wide, else Q8_0 (as llama.cpp falls back).
    Q4K,
}

impl GgufQuant {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f16" => Self::F16,
            "q8_0" | "q8-0" => Self::Q8_0,
            "q4_k" | "q4-k" | "q4_k_m" => Self::Q4K,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
        }
    }

    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_MOSTLY_*).
    fn file_type(self) -> u32 {
        match self {
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4K => 15,
        }
    }

    fn dtype_for(self, row_width: usize) -> GgmlDType {
        match self {
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K if row_width.is_multiple_of(GgmlDType::Q4K.block_size()) => GgmlDType::Q4K,
            Self::Q4K => GgmlDType::Q8_0,
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |e| ModelError::io(path, e)
}

fn candle(path: &Path) -> impl Fn(candle_core::Error) -> ModelError + '_ {
    move |e| ModelError::BadTensor {
        path: path.into(),
        name: "(export)".into(),
        reason: e.to_string(),
    }
}

/// A temporary name beside `path`, unique to this process.
fn temp_beside(path: &Path) -> PathBuf {
    sibling(path, &format!("partial-{}", std::process::id()))
}

/// `.NAME.<what>` beside `dir`.
fn sibling(dir: &Path, what: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    dir.with_file_name(format!(".{name}.{what}"))
}

/// An exclusive lock on `.NAME.export.lock`, held for a whole export: one export of NAME at
/// a time, so that temporaries found while holding it were left by an export that was
/// killed (the lock goes with its process, whatever host or container ran it, as far as the
/// file system honours locks).
struct ExportLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl ExportLock {
    fn acquire(dir: &Path) -> Result<Self> {
        let path = sibling(dir, "export.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { path, _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ModelError::BadExportTarget {
                path: dir.into(),
                reason: format!(
                    "another export is writing it now (it holds {})",
                    path.display()
                ),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(ModelError::io(&path, e)),
        }
    }
}

impl Drop for ExportLock {
    fn drop(&mut self) {
        // Removed while still held; the lock itself goes when the file closes.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Cleans up after exports that were killed (call it holding the `ExportLock`): their
/// half-written `.NAME.partial-PID` go, and when NAME is missing, the newest `.NAME.old-PID`
/// (the previous export, moved aside just before the kill) goes back to NAME.
fn recover_interrupted(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let mut partial = Vec::new();
    let mut old = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some((kind, pid)) = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        match kind {
            "partial" => partial.push(entry.path()),
            "old" => old.push((modified, entry.path())),
            _ => {}
        }
    }
    old.sort();
    if !dir.exists() {
        if let Some((_, newest)) = old.pop() {
            let _ = std::fs::rename(newest, dir);
        }
    }
    for path in partial.into_iter().chain(old.into_iter().map(|(_, p)| p)) {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Writes the model as a Hugging Face directory at `dir` (the model's tensors as they are:
/// merge an adapter first), plus `model-<quant>.gguf` inside it when `gguf` is set. `dir`
/// must be absent or empty unless `force`; the old contents are replaced only once the new
/// directory is complete.
pub fn export(model: &Pretrained, dir: &Path, gguf: Option<GgufQuant>, force: bool) -> Result<()> {
    // transformers' config.json has no per-frequency rope factors (a GGUF's rope_freqs):
    // such a model goes out as GGUF only.
    let hf = !matches!(model.config.rope_scaling, Some(RopeScaling::Factors { .. }));
    if !hf && gguf.is_none() {
        return Err(ModelError::bad_config(
            model.source.path(),
            "rope_freqs",
            "per-frequency rope factors have no config.json form; export with --gguf (the GGUF keeps them)",
        ));
    }
    publish(dir, force, |tmp| {
        if hf {
            fill_hf_dir(model, tmp)?;
        }
        match gguf {
            Some(q) => fill_gguf(model, &tmp.join(gguf_file_name(q)), q),
            None => Ok(()),
        }
    })
}

/// The file `export_lora_gguf` writes inside its directory.
pub const LORA_GGUF_FILE: &str = "adapter.gguf";

/// Writes the model's LoRA adapters alone as `dir/adapter.gguf`, the GGUF LoRA layout
/// llama.cpp loads over the same base (`llama-cli -m BASE.gguf --lora dir/adapter.gguf`):
/// `general.type = adapter`, `adapter.type = lora`, per projection `blk.N.<module>.weight.lora_a`
/// (PEFT's A, r × in) and `.lora_b` (B, out × r), f32, B's q/k rows in llama.cpp's rotary
/// order for Llama-architecture bases. llama.cpp scales each pair by alpha / r with one
/// alpha for the file: a uniform scale is written as that alpha, per-module scales are folded
/// into B (alpha 0, which llama.cpp reads as scale 1). Same publication rules as `export`.
pub fn export_lora_gguf(model: &mut Pretrained, dir: &Path, force: bool) -> Result<()> {
    let source = model.source.path().to_path_buf();
    let c = model.config.clone();
    let arch = gguf_arch(&c.model_type);
    let adapters: Vec<(String, Tensor, Tensor, f64)> = model
        .model
        .projections_mut()
        .into_iter()
        .filter_map(|(m, _, _, l)| {
            l.adapter
                .as_ref()
                .map(|a| (m, a.a.as_tensor().clone(), a.b.as_tensor().clone(), a.scale))
        })
        .collect();
    if adapters.is_empty() {
        return Err(ModelError::BadExportTarget {
            path: dir.into(),
            reason: "the model has no adapter to write (pass --adapter DIR)".into(),
        });
    }
    // alpha = scale · r when every module shares it; otherwise each B carries its scale.
    let alphas: Vec<f64> = adapters
        .iter()
        .map(|(_, a, _, scale)| scale * a.dim(0).unwrap_or(0) as f64)
        .collect();
    let uniform = alphas
        .iter()
        .all(|x| (x - alphas[0]).abs() <= 1e-9 * alphas[0].abs());
    publish(dir, force, |tmp| {
        let path = tmp.join(LORA_GGUF_FILE);
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        for (module, a, b, scale) in &adapters {
            let weight = format!("{module}.weight");
            let name = gguf_name(&weight).ok_or_else(|| ModelError::BadTensor {
                path: source.clone(),
                name: weight.clone(),
                reason: "has no GGUF name".into(),
            })?;
            let a = a
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(&Device::Cpu));
            let mut b = b
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(&Device::Cpu));
            if !uniform {
                b = b.and_then(|t| t.affine(*scale, 0.0));
            }
            let (a, mut b) = (a.map_err(candle(&path))?, b.map_err(candle(&path))?);
            if arch == "llama" {
                if module.ends_with("self_attn.q_proj") {
                    b = permute_rows(&b, c.num_attention_heads).map_err(candle(&path))?;
                } else if module.ends_with("self_attn.k_proj") {
                    b = permute_rows(&b, c.num_key_value_heads).map_err(candle(&path))?;
                }
            }
            for (suffix, t) in [("lora_a", a), ("lora_b", b)] {
                let q = QTensor::quantize(&t, GgmlDType::F32).map_err(candle(&path))?;
                tensors.push((format!("{name}.{suffix}"), q));
            }
        }
        let alpha = if uniform { alphas[0] as f32 } else { 0.0 };
        let metadata: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String(arch.into())),
            ("general.type", Value::String("adapter".into())),
            ("general.name", Value::String("tuna LoRA adapter".into())),
            ("adapter.type", Value::String("lora".into())),
            ("adapter.lora.alpha", Value::F32(alpha)),
        ];
        let mut file = std::fs::File::create(&path).map_err(io(&path))?;
        let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let tens: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        candle_core::quantized::gguf_file::write(&mut file, &meta, &tens).map_err(candle(&path))?;
        file.flush().map_err(io(&path))
    })
}

/// llama.cpp's architecture name: Llama, SmolLM2, TinyLlama and Mistral are all `llama`.
fn gguf_arch(model_type: &str) -> &'static str {
    match model_type {
        "qwen2" => "qwen2",
        _ => "llama",
    }
}

/// Fills a temp directory beside `dir` with `fill`, then swaps it in: `dir` must be absent
/// or empty unless `force`, and its old contents go only once the new ones are complete.
fn publish(dir: &Path, force: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.file_name().is_none() {
        return Err(ModelError::BadExportTarget {
            path: dir.into(),
            reason: "name the directory to write (not . or ..)".into(),
        });
    }
    if dir.is_file() {
        return Err(ModelError::BadExportTarget {
            path: dir.into(),
            reason: "is a file: name a directory to write the model into".into(),
        });
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let _lock = ExportLock::acquire(dir)?;
    recover_interrupted(dir);
    let occupied = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if occupied && !force {
        return Err(ModelError::ExportTargetExists { path: dir.into() });
    }
    let tmp = temp_beside(dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    if let Err(e) = fill(&tmp).and_then(|()| sync_files(&tmp)) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = sibling(dir, &format!("old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&old);
    let had_old = dir.exists();
    if had_old {
        if let Err(e) = std::fs::rename(dir, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ModelError::io(dir, e));
        }
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        // Put the previous export back where it was.
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(ModelError::io(dir, e));
    }
    let _ = std::fs::remove_dir_all(&old);
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Flushes every file of `dir` and the directory itself to disk before the rename publishes
/// them.
fn sync_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let path = entry.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The GGUF file's name inside an export directory.
pub fn gguf_file_name(quant: GgufQuant) -> String {
    format!("model-{}.gguf", quant.name())
}

fn fill_hf_dir(model: &Pretrained, dir: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = model
        .model
        .named_tensors()
        .map_err(candle(dir))?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(candle(dir))?;
    let weights = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).map_err(candle(&weights))?;
    // The safetensors writer creates its file owner-only; give it the directory's usual mode.
    if let Ok(meta) = std::fs::metadata(dir) {
        let mut mode = meta.permissions();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            mode.set_mode(mode.mode() & 0o666);
        }
        let _ = std::fs::set_permissions(&weights, mode);
    }
    let mut config = model.config.to_hf_json();
    config["torch_dtype"] = "float32".into();
    write_json(&dir.join("config.json"), &config)?;
    let special = &model.tokenizer.special;
    let text = |t: &Option<(u32, String)>| t.as_ref().map(|(_, s)| s.clone());
    let mut tokenizer_config = json!({
        "add_bos_token": special.add_bos,
        "add_eos_token": false,
        "bos_token": text(&special.bos),
        "eos_token": text(&special.eos),
        "pad_token": text(&special.pad),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
    });
    if let Some(t) = &model.chat_template {
        tokenizer_config["chat_template"] = t.source.clone().into();
    }
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config)?;
    let tokenizer = dir.join("tokenizer.json");
    std::fs::write(&tokenizer, model.tokenizer.to_json()?).map_err(io(&tokenizer))?;
    let mut generation = json!({"do_sample": false});
    if let Some((id, _)) = &special.bos {
        generation["bos_token_id"] = (*id).into();
    }
    generation["eos_token_id"] = special.stop_ids.clone().into();
    if let Some((id, _)) = &special.pad {
        generation["pad_token_id"] = (*id).into();
    }
    write_json(&dir.join("generation_config.json"), &generation)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text + "\n").map_err(io(path))
}

fn fill_gguf(model: &Pretrained, path: &Path, quant: GgufQuant) -> Result<()> {
    let c = &model.config;
    let arch = gguf_arch(&c.model_type);
    let permute = arch == "llama";
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(
                model
                    .source
                    .path()
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "tuna export".into()),
            ),
        ),
        ("general.file_type".into(), Value::U32(quant.file_type())),
    ];
    let key = |k: &str| format!("{arch}.{k}");
    let u32v = |x: usize| Value::U32(x as u32);
    metadata.extend([
        (key("context_length"), u32v(c.max_position_embeddings)),
        (key("embedding_length"), u32v(c.hidden_size)),
        (key("block_count"), u32v(c.num_hidden_layers)),
        (key("feed_forward_length"), u32v(c.intermediate_size)),
        (key("attention.head_count"), u32v(c.num_attention_heads)),
        (key("attention.head_count_kv"), u32v(c.num_key_value_heads)),
        (key("attention.key_length"), u32v(c.head_dim)),
        (key("attention.value_length"), u32v(c.head_dim)),
        (key("rope.dimension_count"), u32v(c.head_dim)),
        (key("vocab_size"), u32v(c.vocab_size)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (key("rope.freq_base"), Value::F32(c.rope_theta as f32)),
    ]);
    if let Some(RopeScaling::Linear { factor }) = &c.rope_scaling {
        metadata.push((key("rope.scaling.type"), Value::String("linear".into())));
        metadata.push((key("rope.scaling.factor"), Value::F32(*factor as f32)));
    }
    metadata.extend(tokenizer_metadata(model)?);

    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let (heads, kv_heads) = (c.num_attention_heads, c.num_key_value_heads);
    for (hf, t) in model.model.named_tensors().map_err(candle(path))? {
        let name = gguf_name(&hf).ok_or_else(|| ModelError::BadTensor {
            path: path.into(),
            name: hf.clone(),
            reason: "has no GGUF name".into(),
        })?;
        let mut t = t.to_dtype(DType::F32).map_err(candle(path))?;
        if permute {
            if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_proj.bias") {
                t = permute_rows(&t, heads).map_err(candle(path))?;
            } else if hf.ends_with("self_attn.k_proj.weight")
                || hf.ends_with("self_attn.k_proj.bias")
            {
                t = permute_rows(&t, kv_heads).map_err(candle(path))?;
            }
        }
        // Norms and biases stay f32, as llama.cpp keeps them.
        let dtype = if t.rank() == 1 {
            GgmlDType::F32
        } else {
            quant.dtype_for(t.dim(1).map_err(candle(path))?)
        };
        let q = QTensor::quantize(&t, dtype).map_err(candle(path))?;
        tensors.push((name, q));
    }
    if let Some(factors) = rope_factors(model) {
        let t = Tensor::new(factors.as_slice(), &Device::Cpu).map_err(candle(path))?;
        let q = QTensor::quantize(&t, GgmlDType::F32).map_err(candle(path))?;
        tensors.push(("rope_freqs.weight".into(), q));
    }

    let mut file = std::fs::File::create(path).map_err(io(path))?;
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tens: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut file, &meta, &tens).map_err(candle(path))?;
    file.flush().map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// llama.cpp's rope_freqs: per-frequency divisors of the base inverse frequencies, for
/// scalings GGUF has no key for (llama3, or factors read from a GGUF).
fn rope_factors(model: &Pretrained) -> Option<Vec<f32>> {
    match &model.config.rope_scaling {
        Some(RopeScaling::Llama3 { .. }) | Some(RopeScaling::Factors { .. }) => {
            let scaled = Rope::new(&model.config, &Device::Cpu);
            let unscaled = crate::config::LlamaConfig {
                rope_scaling: None,
                ..model.config.clone()
            };
            let base = Rope::new(&unscaled, &Device::Cpu);
            Some(
                base.inverse_frequencies()
                    .iter()
                    .zip(scaled.inverse_frequencies())
                    .map(|(b, s)| b / s)
                    .collect(),
            )
        }
        _ => None,
    }
}

/// The tokenizer.* keys: copied from the source GGUF when there is one (exact), else built
/// from tokenizer.json (byte-level BPE only).
fn tokenizer_metadata(model: &Pretrained) -> Result<Vec<(String, Value)>> {
    let mut out: Vec<(String, Value)> = Vec::new();
    if let ModelSource::Gguf(src) = &model.source {
        let gguf = GgufFile::open(src)?;
        for (k, v) in &gguf.content.metadata {
            if k.starts_with("tokenizer.") {
                out.push((k.clone(), v.clone()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(out);
    }
    let json: serde_json::Value =
        serde_json::from_str(&model.tokenizer.to_json()?).expect("tokenizers writes JSON");
    let bad = |reason: &str| ModelError::BadTokenizer {
        path: model.tokenizer.path.clone(),
        reason: format!("cannot be written to GGUF: {reason}"),
    };
    if json["model"]["type"] != "BPE" {
        return Err(bad("only byte-level BPE tokenizers are supported"));
    }
    let vocab = json["model"]["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is missing"))?;
    let mut tokens = vec![String::new(); model.config.vocab_size.max(vocab.len())];
    let mut types = vec![1i32; tokens.len()];
    for (token, id) in vocab {
        if let Some(slot) = id.as_u64().and_then(|i| tokens.get_mut(i as usize)) {
            *slot = token.clone();
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = content.to_string();
                types[id as usize] = if added["special"] == true { 3 } else { 4 };
            }
        }
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]");
            types[i] = 5;
        }
    }
    let merges: Vec<Value> = json["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            serde_json::Value::String(s) => Some(Value::String(s.clone())),
            serde_json::Value::Array(pair) => Some(Value::String(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            ))),
            _ => None,
        })
        .collect();
    // The pre-tokenizer llama.cpp should use, by the families tuna knows.
    let pre = match (model.config.model_type.as_str(), model.config.vocab_size) {
        ("qwen2", _) => "qwen2",
        (_, 128_256) => "llama-bpe",
        (_, 49_152) => "smollm",
        _ => "gpt2",
    };
    let special = &model.tokenizer.special;
    out.extend([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(special.add_bos),
        ),
    ]);
    for (k, t) in [
        ("bos", &special.bos),
        ("eos", &special.eos),
        ("padding", &special.pad),
    ] {
        if let Some((id, _)) = t {
            out.push((format!("tokenizer.ggml.{k}_token_id"), Value::U32(*id)));
        }
    }
    if let Some(t) = &model.chat_template {
        out.push((
            "tokenizer.chat_template".into(),
            Value::String(t.source.clone()),
        ));
    }
    Ok(out)
}
