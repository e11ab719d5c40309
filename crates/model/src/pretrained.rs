//! Loading a whole pretrained model (decoder, tokenizer, chat template) from a model source.

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::decoder::Llama;
use crate::device::default_dtype;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::linear::WeightFormat;
use crate::source::{self, ModelSource};
use crate::tokenizer::{SpecialTokens, Tokenizer};
use crate::weights::WeightSource;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// None: `default_dtype(device)`.
    pub dtype: Option<DType>,
    /// How projections are held: `Dense` for training and scoring; `F16`/`Q8_0` for
    /// faster generation (no backward).
    pub weights: WeightFormat,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            weights: WeightFormat::Dense,
        }
    }
}

pub struct Pretrained {
    pub source: ModelSource,
    pub config: LlamaConfig,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
}

/// What a model's text side needs without its weights: config, tokenizer, chat template.
/// `tuna data` commands load only this.
pub struct ModelText {
    pub source: ModelSource,
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
}

impl ModelText {
    pub fn load(spec: &str) -> Result<Self> {
        let source = source::resolve(spec)?;
        let (text, _) = Self::open(source, false)?;
        Ok(text)
    }

    /// Reads the config and text files of `source`; with `weights`, opens the weight files too.
    fn open(source: ModelSource, weights: bool) -> Result<(Self, Option<WeightSource>)> {
        let (config, weight_source, mut tokenizer, template_source) = match &source {
            ModelSource::Gguf(path) => {
                let mut gguf = GgufFile::open(path)?;
                let config = gguf.config()?;
                let tokenizer = Tokenizer::from_gguf(&gguf)?;
                let template = gguf.meta_str("tokenizer.chat_template").map(String::from);
                let w = weights.then(|| {
                    WeightSource::gguf(gguf, config.num_attention_heads, config.num_key_value_heads)
                });
                (config, w, tokenizer, template)
            }
            ModelSource::HfDir(dir) => {
                let config = LlamaConfig::from_hf_json(&dir.join("config.json"))?;
                let (tokenizer, template) = hf_tokenizer(dir, &config)?;
                let w = if weights {
                    Some(WeightSource::safetensors(&source::safetensors_files(dir)?)?)
                } else {
                    None
                };
                (config, w, tokenizer, template)
            }
        };
        if let Some(w) = &weight_source {
            check_config_against_weights(&source, &config, w)?;
        }
        let chat_template = match template_source {
            Some(src) => {
                let name = |t: &Option<(u32, String)>| {
                    t.as_ref().map(|(_, s)| s.clone()).unwrap_or_default()
                };
                let template = ChatTemplate::new(
                    &src,
                    &name(&tokenizer.special.bos),
                    &name(&tokenizer.special.eos),
                )
                .map_err(|e| match e {
                    ModelError::ChatTemplate { reason } => ModelError::BadChatTemplate {
                        path: source.path().to_path_buf(),
                        reason,
                    },
                    other => other,
                })?;
                let eot = template
                    .end_of_turn_marker()
                    .and_then(|m| tokenizer.token_id(m));
                tokenizer.add_stop_id(eot);
                Some(template)
            }
            None => None,
        };
        for &id in &config.eos_token_ids {
            tokenizer.add_stop_id(Some(id));
        }
        Ok((
            Self {
                source,
                config,
                tokenizer,
                chat_template,
            },
            weight_source,
        ))
    }
}

/// The config's layer count and embedding shape against what the weight files hold, before
/// anything is sized from the config (a damaged or mismatched config would otherwise ask for
/// any amount of memory, or run a model cut short).
fn check_config_against_weights(
    source: &ModelSource,
    config: &LlamaConfig,
    weights: &WeightSource,
) -> Result<()> {
    let gguf = matches!(source, ModelSource::Gguf(_));
    let bad = |field: &str, reason: String| ModelError::BadConfig {
        path: source.config_path(),
        field: field.into(),
        reason,
    };
    let held = weights.layers_held();
    if held != config.num_hidden_layers {
        let field = if gguf {
            "block_count"
        } else {
            "num_hidden_layers"
        };
        let effect = if held > config.num_hidden_layers {
            "a model cut short would run without its last layers"
        } else {
            "the missing layers have no weights"
        };
        return Err(bad(
            field,
            format!(
                "is {}, but {} holds weights for {held} layers: the config and the weights disagree ({effect})",
                config.num_hidden_layers,
                weights.path().display()
            ),
        ));
    }
    if let Some(shape) = weights.shape_of("model.embed_tokens.weight") {
        let want = [config.vocab_size, config.hidden_size];
        if shape != want {
            let (field, value) = if shape.first() != Some(&config.vocab_size) {
                ("vocab_size", config.vocab_size)
            } else {
                (
                    if gguf {
                        "embedding_length"
                    } else {
                        "hidden_size"
                    },
                    config.hidden_size,
                )
            };
            return Err(bad(
                field,
                format!(
                    "is {value}, but the token embeddings in {} are {shape:?}: the config and the weights disagree",
                    weights.path().display()
                ),
            ));
        }
    }
    Ok(())
}

impl Pretrained {
    /// Resolves `spec` (a .gguf path, a model directory or a hub id) and loads it.
    pub fn load(spec: &str, options: &LoadOptions) -> Result<Self> {
        Self::load_source(source::resolve(spec)?, options)
    }

    pub fn load_source(source: ModelSource, options: &LoadOptions) -> Result<Self> {
        let dtype = options
            .dtype
            .unwrap_or_else(|| default_dtype(&options.device));
        let (text, weights) = ModelText::open(source, true)?;
        let mut weights = weights.expect("open(.., true) returns the weights");
        let model = Llama::load(
            &text.config,
            &mut weights,
            dtype,
            &options.device,
            options.weights,
        )
        .map_err(|e| match e {
            // A shape the weights do not have comes from the config: name both files.
            ModelError::BadTensor { path, name, reason } if reason.starts_with("shape ") => {
                ModelError::BadTensor {
                    reason: format!("{reason} by {}", text.source.config_path().display()),
                    path,
                    name,
                }
            }
            ModelError::BadTensor { path, name, reason } if reason == "missing" => {
                ModelError::BadTensor {
                    reason: format!(
                        "missing (needed by {})",
                        text.source.config_path().display()
                    ),
                    path,
                    name,
                }
            }
            other => other,
        })?;
        Ok(Self {
            source: text.source,
            config: text.config,
            model,
            tokenizer: text.tokenizer,
            chat_template: text.chat_template,
        })
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::bad_config(path, "(json)", e.to_string()))
}

/// A token in tokenizer_config.json: `"<s>"` or `{"content": "<s>", ...}`.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// tokenizer.json + tokenizer_config.json (+ generation_config.json, chat_template.jinja).
fn hf_tokenizer(dir: &Path, config: &LlamaConfig) -> Result<(Tokenizer, Option<String>)> {
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(ModelError::MissingFile {
            path: tokenizer_path,
            what: "tokenizer (tokenizer.json)",
        });
    }
    let tok_config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let mut tokenizer = Tokenizer::from_file(&tokenizer_path, SpecialTokens::default())?;
    let resolve = |key: &str, fallback_id: Option<u32>| -> Option<(u32, String)> {
        match token_text(tok_config.get(key)) {
            Some(text) => tokenizer.token_id(&text).map(|id| (id, text)),
            None => fallback_id.and_then(|id| tokenizer.id_to_token(id).map(|t| (id, t))),
        }
    };
    let bos = resolve("bos_token", config.bos_token_id);
    let eos = resolve("eos_token", config.eos_token_ids.first().copied());
    let pad = resolve("pad_token", None);
    // What encode() really does, whatever the config files claim.
    let add_bos = match &bos {
        Some((id, _)) => tokenizer.encode("a", true)?.first() == Some(id),
        None => false,
    };
    tokenizer.special = SpecialTokens {
        bos,
        eos: eos.clone(),
        pad,
        add_bos,
        stop_ids: Vec::new(),
    };
    tokenizer.add_stop_id(eos.map(|(id, _)| id));
    let gen_config = dir.join("generation_config.json");
    if let Some(gen) = read_json(&gen_config)? {
        match gen.get("eos_token_id") {
            Some(Value::Number(n)) => tokenizer.add_stop_id(n.as_u64().map(|v| v as u32)),
            Some(Value::Array(ids)) => ids
                .iter()
                .for_each(|v| tokenizer.add_stop_id(v.as_u64().map(|v| v as u32))),
            _ => {}
        }
    }
    let template = match tok_config.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        Some(Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| named.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(String::from),
        _ => {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?)
            } else {
                None
            }
        }
    };
    Ok((tokenizer, template))
}
