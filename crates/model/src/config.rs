//! The decoder's hyper-parameters, read from a Hugging Face `config.json` or from GGUF
//! metadata. One struct for the whole Llama family; the differences are fields.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Architectures the decoder implements, by `model_type` / GGUF `general.architecture`.
pub const SUPPORTED_ARCHITECTURES: &str = "llama, mistral, qwen2";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `model_type` as Hugging Face names it (`llama`, `mistral`, `qwen2`).
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2, some Llama fine-tunes).
    pub attention_bias: bool,
    /// Bias on o_proj (Llama's `attention_bias` covers it; Qwen2 has none).
    pub o_proj_bias: bool,
    pub mlp_bias: bool,
    /// Mistral: a key farther back than this many positions is not attended to.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions divided by `factor` (Hugging Face "linear").
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors as llama.cpp stores them for Llama 3.1 (`rope_freqs.weight`).
    Factors { factors: Vec<f32> },
}

impl LlamaConfig {
    pub fn num_kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Checks the relations between fields that the decoder relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ModelError::bad_config(
                    path,
                    field,
                    "must be greater than 0",
                ));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ModelError::bad_config(
                path,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::bad_config(
                path,
                "head_dim",
                "rotary embeddings need an even head_dim",
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(ModelError::bad_config(
                path,
                "rms_norm_eps",
                "must be greater than 0",
            ));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(ModelError::bad_config(
                path,
                "rope_theta",
                "must be greater than 0",
            ));
        }
        if let Some(RopeScaling::Factors { factors }) = &self.rope_scaling {
            if factors.len() != self.head_dim / 2 {
                return Err(ModelError::bad_config(
                    path,
                    "rope_freqs",
                    format!(
                        "has {} factors, head_dim/2 is {}",
                        factors.len(),
                        self.head_dim / 2
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let bad = |field: &str, e: serde_json::Error| ModelError::BadConfig {
            path: path.into(),
            field: field.into(),
            reason: e.to_string(),
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad("(json)", e))?;
        let raw = match RawHfConfig::deserialize(&json) {
            Ok(raw) => raw,
            Err(e) => return Err(bad(&culprit_field::<RawHfConfig>(&json), e)),
        };
        raw.resolve(path)
    }
}

/// The top-level key of `json` whose value stops it from deserializing as `T` (serde_json
/// names the type it expected, not the field): the first key without which the rest
/// deserializes. "(json)" when no one key is to blame.
fn culprit_field<T: serde::de::DeserializeOwned>(json: &serde_json::Value) -> String {
    let Some(object) = json.as_object() else {
        return "(json)".into();
    };
    for key in object.keys() {
        let mut rest = object.clone();
        rest.remove(key);
        if serde_json::from_value::<T>(serde_json::Value::Object(rest)).is_ok() {
            return key.clone();
        }
    }
    "(json)".into()
}

/// `config.json` as written by transformers, fields optional where transformers defaults them.
#[derive(Debug, Deserialize)]
struct RawHfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn token_ids(value: &Option<serde_json::Value>) -> Vec<u32> {
    match value {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|v| vec![v as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl RawHfConfig {
    fn resolve(self, path: &Path) -> Result<LlamaConfig> {
        let arch_hint = self
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or_default();
        let model_type = self.model_type.clone().unwrap_or_else(|| arch_hint.clone());
        if !matches!(model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.into(),
                arch: if model_type.is_empty() {
                    "(none: config.json has no model_type)".into()
                } else {
                    model_type
                },
                supported: SUPPORTED_ARCHITECTURES,
            });
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(ModelError::bad_config(
                    path,
                    "hidden_act",
                    format!("`{act}` is not supported (only silu)"),
                ));
            }
        }
        let need = |field: &str, v: Option<usize>| {
            v.ok_or_else(|| ModelError::bad_config(path, field, "missing"))
        };
        let hidden_size = need("hidden_size", self.hidden_size)?;
        let num_attention_heads = need("num_attention_heads", self.num_attention_heads)?;
        if num_attention_heads == 0 {
            return Err(ModelError::bad_config(
                path,
                "num_attention_heads",
                "must be greater than 0",
            ));
        }
        let is_qwen2 = model_type == "qwen2";
        let attention_bias = self.attention_bias.unwrap_or(is_qwen2);
        let sliding_window = match (&self.sliding_window, self.use_sliding_window) {
            (_, Some(false)) => None,
            (Some(serde_json::Value::Number(n)), _)
                if !is_qwen2 || self.use_sliding_window == Some(true) =>
            {
                n.as_u64().map(|v| v as usize)
            }
            _ => None,
        };
        let config = LlamaConfig {
            vocab_size: need("vocab_size", self.vocab_size)?,
            hidden_size,
            intermediate_size: need("intermediate_size", self.intermediate_size)?,
            num_hidden_layers: need("num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: self.head_dim.unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: self.rope_theta.unwrap_or(10_000.0),
            rope_scaling: parse_rope_scaling(path, self.rope_scaling.as_ref())?,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias,
            // Llama's attention_bias covers o_proj too; Qwen2 has biases on q/k/v only.
            o_proj_bias: attention_bias && !is_qwen2,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            sliding_window,
            bos_token_id: token_ids(&self.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&self.eos_token_id),
            model_type,
        };
        config.validate(path)?;
        Ok(config)
    }
}

fn parse_rope_scaling(
    path: &Path,
    value: Option<&serde_json::Value>,
) -> Result<Option<RopeScaling>> {
    let Some(value) = value else { return Ok(None) };
    if value.is_null() {
        return Ok(None);
    }
    let get = |key: &str| value.get(key).and_then(|v| v.as_f64());
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let factor = || {
        get("factor").ok_or_else(|| ModelError::bad_config(path, "rope_scaling.factor", "missing"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: get("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: get("high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: get("original_max_position_embeddings")
                .unwrap_or(8192.0) as usize,
        })),
        other => Err(ModelError::bad_config(
            path,
            "rope_scaling.rope_type",
            format!("`{other}` is not supported (supported: default, linear, llama3)"),
        )),
    }
}

impl LlamaConfig {
    /// The `config.json` transformers would need for this config (export and tests).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let config = self;
        let mut v = serde_json::json!({
            "architectures": [match config.model_type.as_str() {
                "qwen2" => "Qwen2ForCausalLM",
                "mistral" => "MistralForCausalLM",
                _ => "LlamaForCausalLM",
            }],
            "model_type": config.model_type,
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "rms_norm_eps": config.rms_norm_eps,
            "rope_theta": config.rope_theta,
            "max_position_embeddings": config.max_position_embeddings,
            "tie_word_embeddings": config.tie_word_embeddings,
            "attention_bias": config.attention_bias,
            "mlp_bias": config.mlp_bias,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if let Some(bos) = config.bos_token_id {
            v["bos_token_id"] = bos.into();
        }
        match config.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = (*one).into(),
            many => v["eos_token_id"] = many.to_vec().into(),
        }
        match &config.rope_scaling {
            Some(RopeScaling::Linear { factor }) => {
                v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                v["rope_scaling"] = serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                })
            }
            Some(RopeScaling::Factors { .. }) | None => {}
        }
        v
    }
}
