//! The model's tokenizer: Hugging Face `tokenizer.json`, or the same JSON built from GGUF
//! metadata (byte-level BPE: the `gpt2` tokenizer model with the smollm, llama-bpe, qwen2 and
//! gpt2 pre-tokenizers, as llama.cpp's llama-vocab.cpp splits them).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Special-token facts the rest of tuna needs, resolved once from whichever files the model has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    pub pad: Option<(u32, String)>,
    /// Whether encoding a text adds BOS in front (`add_bos_token`).
    pub add_bos: bool,
    /// Ids that end a generation: EOS, generation_config's eos ids, the template's end of turn.
    pub stop_ids: Vec<u32>,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub special: SpecialTokens,
    /// Where it was read from, for error messages.
    pub path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    pub fn from_json(json: &[u8], path: &Path, special: SpecialTokens) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(json).map_err(|e| ModelError::BadTokenizer {
                path: path.into(),
                reason: e.to_string(),
            })?;
        let mut tok = Self {
            inner,
            special,
            path: path.into(),
        };
        tok.add_stop_id(tok.special.eos.as_ref().map(|(id, _)| *id));
        Ok(tok)
    }

    /// Reads `tokenizer.json` of a Hugging Face model directory.
    pub fn from_file(path: &Path, special: SpecialTokens) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&bytes, path, special)
    }

    pub fn add_stop_id(&mut self, id: Option<u32>) {
        if let Some(id) = id {
            if !self.special.stop_ids.contains(&id) {
                self.special.stop_ids.push(id);
            }
        }
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Token ids of `text`. With `add_special_tokens`, the tokenizer's own post-processor
    /// runs (BOS where the model's config asks for it); templated chat text already holds
    /// its special tokens and is encoded without.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| ModelError::BadTokenizer {
                path: self.path.clone(),
                reason: format!("encoding failed: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::BadTokenizer {
                path: self.path.clone(),
                reason: format!("decoding failed: {e}"),
            })
    }

    /// The tokenizer as tokenizer.json text (what an exported model directory holds).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| ModelError::BadTokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.special.stop_ids.contains(&id)
    }

    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let json = gguf_tokenizer_json(gguf)?;
        let special = gguf_special_tokens(gguf);
        Self::from_json(json.to_string().as_bytes(), &gguf.path, special)
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::BadTokenizer {
        path: path.into(),
        reason: reason.into(),
    }
}

// Pre-tokenizer split patterns, from llama.cpp's llama-vocab.cpp (LLAMA_VOCAB_PRE_TYPE_*).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_byte_level(pattern: &str) -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

fn gguf_strings(gguf: &GgufFile, key: &str) -> Result<Vec<String>> {
    let values = gguf
        .meta(key)
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| bad(&gguf.path, format!("GGUF metadata `{key}` is missing")))?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| bad(&gguf.path, format!("`{key}` holds a non-string")))
        })
        .collect()
}

fn gguf_special_tokens(gguf: &GgufFile) -> SpecialTokens {
    let tokens = gguf
        .meta("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok());
    let token = |key: &str| -> Option<(u32, String)> {
        let id = gguf.meta_u64(key)? as u32;
        let text = tokens?.get(id as usize)?.to_string().ok()?.clone();
        Some((id, text))
    };
    SpecialTokens {
        bos: token("tokenizer.ggml.bos_token_id"),
        eos: token("tokenizer.ggml.eos_token_id"),
        pad: token("tokenizer.ggml.padding_token_id"),
        // llama.cpp's default when the key is absent is true for SPM and false for BPE.
        add_bos: gguf
            .meta_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(false),
        stop_ids: token("tokenizer.ggml.eot_token_id")
            .map(|(id, _)| vec![id])
            .unwrap_or_default(),
    }
}

/// The `tokenizer.json` transformers would build for this GGUF's byte-level BPE vocabulary.
pub fn gguf_tokenizer_json(gguf: &GgufFile) -> Result<Value> {
    let path = &gguf.path;
    let model = gguf.meta_str("tokenizer.ggml.model").unwrap_or("(missing)");
    if model != "gpt2" {
        return Err(bad(
            path,
            format!(
                "GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`); \
                 use the model's Hugging Face directory, which has tokenizer.json"
            ),
        ));
    }
    let tokens = gguf_strings(gguf, "tokenizer.ggml.tokens")?;
    let merges = gguf_strings(gguf, "tokenizer.ggml.merges")?;
    let token_types: Vec<i64> = gguf
        .meta("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| {
            v.iter()
                .map(|x| x.to_i32().map(i64::from).unwrap_or(1))
                .collect()
        })
        .unwrap_or_default();

    let pre = gguf.meta_str("tokenizer.ggml.pre").unwrap_or("default");
    let (normalizer, pre_tokenizer) = match pre {
        "smollm" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
        ),
        "llama-bpe" | "llama3" | "smaug-bpe" => (Value::Null, split_then_byte_level(LLAMA3_PATTERN)),
        "qwen2" => (json!({"type": "NFC"}), split_then_byte_level(QWEN2_PATTERN)),
        "gpt-2" | "gpt2" | "default" => (Value::Null, byte_level(true)),
        other => {
            return Err(bad(
                path,
                format!(
                    "GGUF pre-tokenizer `{other}` is not supported (supported: smollm, llama-bpe, qwen2, gpt2); \
                     use the model's Hugging Face directory, which has tokenizer.json"
                ),
            ))
        }
    };

    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => Err(bad(
                path,
                format!("merge `{m}` is not two tokens separated by a space"),
            )),
        })
        .collect::<Result<_>>()?;
    // Control (3) and user-defined (4) tokens are matched whole, before the BPE model.
    let added_tokens: Vec<Value> = token_types
        .iter()
        .enumerate()
        .filter(|(_, &ty)| ty == 3 || ty == 4)
        .map(|(id, &ty)| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": ty == 4, "special": ty == 3})
        })
        .collect();

    let special = gguf_special_tokens(gguf);
    let add_eos = gguf
        .meta_bool("tokenizer.ggml.add_eos_token")
        .unwrap_or(false);
    let mut single = Vec::new();
    let mut special_map = serde_json::Map::new();
    if let (true, Some((id, text))) = (special.add_bos, &special.bos) {
        single.push(json!({"SpecialToken": {"id": text, "type_id": 0}}));
        special_map.insert(
            text.clone(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let (true, Some((id, text))) = (add_eos, &special.eos) {
        single.push(json!({"SpecialToken": {"id": text, "type_id": 0}}));
        special_map.insert(
            text.clone(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
    }
    let post_processor = json!({"type": "TemplateProcessing", "single": single,
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": special_map});

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    }))
}

/// Turns generated ids into text pieces as they come, holding back bytes that do not yet form
/// whole UTF-8 characters (a multi-byte character can span tokens).
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// Adds a token; returns the text that became printable.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        match text.get(self.printed..) {
            Some(piece) if !piece.is_empty() => {
                let piece = piece.to_string();
                self.printed = text.len();
                Ok(Some(piece))
            }
            _ => Ok(None),
        }
    }

    /// Whatever is left once generation ends.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.tokenizer.decode(&self.ids, true)?;
        let piece = text
            .get(self.printed..)
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        self.printed = text.len();
        Ok(piece)
    }
}
