//! GGUF files: opening them with a size check, reading the Llama-family config from their
//! metadata, and mapping llama.cpp tensor names to Hugging Face ones.
//!
//! Key names follow llama.cpp's gguf-py constants:
//! https://github.com/ggml-org/llama.cpp/blob/b4500/gguf-py/gguf/constants.py

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::config::{LlamaConfig, RopeScaling, SUPPORTED_ARCHITECTURES};
use crate::error::{ModelError, Result};

pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub file: File,
}

impl GgufFile {
    /// Opens and parses the header; refuses a file shorter than its tensor table says.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let content = Content::read(&mut file).map_err(|e| ModelError::BadGguf {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let file_size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| ModelError::io(path, e))?;
        for (name, info) in &content.tensor_infos {
            // Checked: a damaged header can hold dimensions whose product overflows.
            let elems = info
                .shape
                .dims()
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            let end = elems
                .map(|n| n / info.ggml_dtype.block_size() as u64)
                .and_then(|blocks| blocks.checked_mul(info.ggml_dtype.type_size() as u64))
                .and_then(|bytes| bytes.checked_add(info.offset))
                .and_then(|bytes| bytes.checked_add(content.tensor_data_offset));
            let Some(end) = end else {
                return Err(ModelError::BadGguf {
                    path: path.into(),
                    reason: format!(
                        "tensor `{name}`: its shape {:?} is too large",
                        info.shape.dims()
                    ),
                });
            };
            if end > file_size {
                return Err(ModelError::BadGguf {
                    path: path.into(),
                    reason: format!(
                        "truncated: tensor `{name}` ends at byte {end} but the file has {file_size} bytes"
                    ),
                });
            }
        }
        Ok(Self {
            path: path.into(),
            content,
            file,
        })
    }

    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        let v = self.meta(key)?;
        v.to_u64()
            .ok()
            .or_else(|| v.to_u32().ok().map(u64::from))
            .or_else(|| v.to_i32().ok().map(|x| x as u64))
            .or_else(|| v.to_i64().ok().map(|x| x as u64))
    }

    /// A float, with f32 values widened through their shortest decimal form (an f32 1e-5
    /// becomes the f64 1e-5 that config.json would hold, not 9.99999974e-6).
    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        let v = self.meta(key)?;
        match v.to_f32() {
            Ok(x) => x.to_string().parse().ok(),
            Err(_) => v.to_f64().ok(),
        }
    }

    pub fn meta_bool(&self, key: &str) -> Option<bool> {
        self.meta(key).and_then(|v| v.to_bool().ok())
    }

    fn need_u64(&self, key: &str) -> Result<usize> {
        self.meta_u64(key)
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::bad_config(&self.path, key, "missing from GGUF metadata"))
    }

    pub fn architecture(&self) -> Result<String> {
        let arch = self
            .meta_str("general.architecture")
            .ok_or_else(|| ModelError::bad_config(&self.path, "general.architecture", "missing"))?;
        if !matches!(arch, "llama" | "qwen2") {
            return Err(ModelError::UnsupportedArchitecture {
                path: self.path.clone(),
                arch: arch.into(),
                supported: SUPPORTED_ARCHITECTURES,
            });
        }
        Ok(arch.into())
    }

    /// The decoder config this file describes.
    pub fn config(&mut self) -> Result<LlamaConfig> {
        let arch = self.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = self.need_u64(&key("embedding_length"))?;
        let heads = self.need_u64(&key("attention.head_count"))?;
        let kv_heads = self
            .meta_u64(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(heads);
        let head_dim = match self.meta_u64(&key("attention.key_length")) {
            Some(v) => v as usize,
            None if heads > 0 => hidden_size / heads,
            None => {
                return Err(ModelError::bad_config(
                    &self.path,
                    key("attention.head_count"),
                    "must be greater than 0",
                ))
            }
        };
        let vocab_size = match self.meta_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => match self
                .meta("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
            {
                Some(tokens) => tokens.len(),
                None => self.need_u64(&key("vocab_size"))?,
            },
        };
        let has = |name: &str| self.content.tensor_infos.contains_key(name);
        let tie_word_embeddings = !has("output.weight");
        let attention_bias = has("blk.0.attn_q.bias");
        let o_proj_bias = has("blk.0.attn_output.bias");
        let rope_scaling = if has("rope_freqs.weight") {
            let t = self
                .content
                .tensor(
                    &mut self.file,
                    "rope_freqs.weight",
                    &candle_core::Device::Cpu,
                )
                .and_then(|q| q.dequantize(&candle_core::Device::Cpu))
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| ModelError::BadTensor {
                    path: self.path.clone(),
                    name: "rope_freqs.weight".into(),
                    reason: e.to_string(),
                })?;
            Some(RopeScaling::Factors { factors: t })
        } else {
            match self.meta_str(&key("rope.scaling.type")) {
                Some("linear") => self
                    .meta_f64(&key("rope.scaling.factor"))
                    .map(|factor| RopeScaling::Linear { factor }),
                Some("none") | None => None,
                Some(other) => {
                    return Err(ModelError::bad_config(
                        &self.path,
                        key("rope.scaling.type"),
                        format!("`{other}` is not supported (supported: none, linear)"),
                    ))
                }
            }
        };
        let config = LlamaConfig {
            model_type: arch.clone(),
            vocab_size,
            hidden_size,
            intermediate_size: self.need_u64(&key("feed_forward_length"))?,
            num_hidden_layers: self.need_u64(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: self
                .meta_f64(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: self.meta_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: self
                .meta_u64(&key("context_length"))
                .map(|v| v as usize)
                .unwrap_or(2048),
            tie_word_embeddings,
            attention_bias,
            o_proj_bias,
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: self
                .meta_u64("tokenizer.ggml.bos_token_id")
                .map(|v| v as u32),
            eos_token_ids: self
                .meta_u64("tokenizer.ggml.eos_token_id")
                .map(|v| v as u32)
                .into_iter()
                .collect(),
        };
        config.validate(&self.path)?;
        Ok(config)
    }

    /// llama.cpp's convert script permutes q/k rows for interleaved rope on the `llama`
    /// architecture only; other architectures keep Hugging Face's order.
    pub fn qk_rows_permuted(&self) -> bool {
        self.meta_str("general.architecture") == Some("llama")
    }
}

/// The GGUF tensor name of a Hugging Face parameter name, e.g.
/// `model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`.
pub fn gguf_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let gguf_module = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf_module}.{suffix}"))
}
