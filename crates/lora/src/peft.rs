//! PEFT's adapter directory: adapter_config.json and adapter_model.safetensors with keys
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (A: r × in, B: out × r).
//! Writes go to a temp name and are renamed, so a reader never sees half an adapter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::config::LoraConfig;
use crate::error::LoraError;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The PEFT key prefix of a module, e.g. `base_model.model.model.layers.3.self_attn.q_proj`.
pub fn module_key(hf_module: &str) -> String {
    format!("base_model.model.{hf_module}")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LoraError + '_ {
    move |source| LoraError::Io {
        path: path.into(),
        source,
    }
}

/// Writes `file` through a temp name in the same directory, fsynced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LoraError> {
    use std::io::Write;
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Saves `adapters` (HF module name -> (A, B)) in PEFT's layout into `dir` (created).
pub fn save(
    dir: &Path,
    config: &LoraConfig,
    adapters: &[(String, Tensor, Tensor)],
) -> Result<(), LoraError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (module, a, b) in adapters {
        let key = module_key(module);
        tensors.insert(format!("{key}.lora_A.weight"), a.contiguous()?);
        tensors.insert(format!("{key}.lora_B.weight"), b.contiguous()?);
    }
    let weights = dir.join(WEIGHTS_FILE);
    let tmp = dir.join(format!("{WEIGHTS_FILE}.partial"));
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &weights).map_err(io(&weights))?;
    let json = serde_json::to_string_pretty(&config.for_peft()).expect("LoraConfig serializes");
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
}

/// The field that keeps `raw` from reading as a LoraConfig: each field is tried alone on an
/// otherwise minimal config (serde's own message does not name it).
fn culprit_field(raw: &serde_json::Value) -> Option<String> {
    let object = raw.as_object()?;
    object.iter().find_map(|(key, value)| {
        let mut one = serde_json::json!({"r": 1, "lora_alpha": 1, "target_modules": "all-linear"});
        one[key] = value.clone();
        serde_json::from_value::<LoraConfig>(one)
            .is_err()
            .then(|| key.clone())
    })
}

/// An adapter directory read back: its config and, per HF module name, (A, B).
pub struct LoadedAdapter {
    pub dir: PathBuf,
    pub config: LoraConfig,
    pub tensors: HashMap<String, (Tensor, Tensor)>,
}

pub fn load(dir: &Path) -> Result<LoadedAdapter, LoraError> {
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(LoraError::Missing {
            path: config_path,
            what: "adapter_config.json",
        });
    }
    let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LoraError::BadAdapterFile {
            path: config_path.clone(),
            field: "(json)".into(),
            reason: e.to_string(),
        })?;
    let peft_type = raw
        .get("peft_type")
        .and_then(|v| v.as_str())
        .unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(LoraError::BadAdapterFile {
            path: config_path,
            field: "peft_type".into(),
            reason: format!("`{peft_type}` is not supported (only LORA)"),
        });
    }
    let config: LoraConfig =
        serde_json::from_value(raw.clone()).map_err(|e| LoraError::BadAdapterFile {
            path: config_path.clone(),
            field: culprit_field(&raw).unwrap_or_else(|| "(config)".into()),
            reason: e.to_string(),
        })?;
    // Before the tensors: an unsupported feature is named by its config field, not by the
    // extra tensor it brings (a DoRA magnitude, an embedding adapter, a bias).
    config.check_supported().map_err(|e| match e {
        LoraError::BadConfig { field, reason } => LoraError::BadAdapterFile {
            path: config_path.clone(),
            field,
            reason,
        },
        other => other,
    })?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(LoraError::Missing {
            path: weights,
            what: "adapter_model.safetensors",
        });
    }
    let all = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| {
        LoraError::BadAdapterFile {
            path: weights.clone(),
            field: "(safetensors)".into(),
            reason: e.to_string(),
        }
    })?;
    let mut a_parts: HashMap<String, Tensor> = HashMap::new();
    let mut b_parts: HashMap<String, Tensor> = HashMap::new();
    for (key, t) in all {
        let bad = |reason: &str| LoraError::BadAdapterFile {
            path: weights.clone(),
            field: key.clone(),
            reason: reason.into(),
        };
        let rest = key
            .strip_prefix("base_model.model.")
            .ok_or_else(|| bad("not a PEFT LoRA key"))?;
        // PEFT saves without the adapter name; some tools keep `.default`.
        let rest = rest
            .replace(".lora_A.default.weight", ".lora_A.weight")
            .replace(".lora_B.default.weight", ".lora_B.weight");
        if let Some(module) = rest.strip_suffix(".lora_A.weight") {
            a_parts.insert(module.to_string(), t);
        } else if let Some(module) = rest.strip_suffix(".lora_B.weight") {
            b_parts.insert(module.to_string(), t);
        } else {
            return Err(bad("only lora_A / lora_B weights are supported (no biases, embeddings or saved modules)"));
        }
    }
    let mut tensors = HashMap::new();
    for (module, a) in a_parts {
        let b = b_parts
            .remove(&module)
            .ok_or_else(|| LoraError::BadAdapterFile {
                path: weights.clone(),
                field: format!("base_model.model.{module}.lora_B.weight"),
                reason: "missing (lora_A has no lora_B)".into(),
            })?;
        tensors.insert(module, (a, b));
    }
    if let Some(module) = b_parts.keys().next() {
        return Err(LoraError::BadAdapterFile {
            path: weights,
            field: format!("base_model.model.{module}.lora_A.weight"),
            reason: "missing (lora_B has no lora_A)".into(),
        });
    }
    Ok(LoadedAdapter {
        dir: dir.into(),
        config,
        tensors,
    })
}
