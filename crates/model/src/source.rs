//! What the user typed for `--model`, resolved to files on disk: a `.gguf` file, a Hugging
//! Face model directory, or a hub id fetched through hf-hub's cache.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    /// A directory with config.json, safetensors weights and tokenizer files.
    HfDir(PathBuf),
}

impl ModelSource {
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf(p) | Self::HfDir(p) => p,
        }
    }

    /// Where the model's shapes are written: config.json, or the GGUF file's metadata.
    pub fn config_path(&self) -> PathBuf {
        match self {
            Self::Gguf(p) => p.clone(),
            Self::HfDir(dir) => dir.join("config.json"),
        }
    }
}

/// Files a Hugging Face model directory may hold that tuna reads.
pub const HF_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

pub fn resolve(spec: &str) -> Result<ModelSource> {
    let path = Path::new(spec);
    if path.is_file() {
        let mut magic = [0u8; 4];
        let is_gguf = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .map(|_| &magic == b"GGUF")
            .unwrap_or(false);
        if is_gguf {
            return Ok(ModelSource::Gguf(path.into()));
        }
        let reason = if path.extension().is_some_and(|e| e == "gguf") {
            "the file does not start with the GGUF magic bytes".to_string()
        } else {
            "a model file must be a GGUF file".to_string()
        };
        return Err(ModelError::UnknownSource {
            path: path.into(),
            reason,
        });
    }
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(ModelError::UnknownSource {
                path: path.into(),
                reason: "the directory has no config.json".into(),
            });
        }
        return Ok(ModelSource::HfDir(path.into()));
    }
    if is_hub_id(spec) {
        return hub::fetch(spec).map(ModelSource::HfDir);
    }
    Err(ModelError::NotFound {
        spec: spec.into(),
        nearby: nearby(path),
    })
}

/// For a path that does not exist: what its parent directory holds, when it exists (a
/// mistyped name is then easy to spot), as an error message's suffix.
fn nearby(path: &Path) -> String {
    // A bare name has no directory the user pointed at: listing the current one is noise.
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return String::new(),
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return String::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    const SHOWN: usize = 6;
    let more = names.len().saturating_sub(SHOWN);
    names.truncate(SHOWN);
    match (names.is_empty(), more) {
        (true, _) => format!(" ({}/ is empty)", parent.display()),
        (false, 0) => format!(" ({}/ holds: {})", parent.display(), names.join(", ")),
        (false, more) => format!(
            " ({}/ holds: {}, and {more} more)",
            parent.display(),
            names.join(", ")
        ),
    }
}

/// The directory of a LoRA adapter named by `spec`: a local path as it is, or a hub id
/// (`owner/name[@revision]`) fetched into the Hugging Face cache (adapter_config.json and
/// adapter_model.safetensors; HF_HUB_OFFLINE=1 reads the cache only).
pub fn resolve_adapter(spec: &Path) -> Result<PathBuf> {
    let text = spec.to_string_lossy();
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    if !is_hub_id(&text) {
        return Err(ModelError::AdapterNotFound {
            spec: text.into_owned(),
            nearby: nearby(spec),
        });
    }
    hub::fetch_files(&text, &["adapter_config.json", "adapter_model.safetensors"])
}

/// `owner/name`, optionally `@revision`: what the hub accepts, and not a path. A spec whose
/// first part is a directory here (`runs/nosuch`, `models/SmolLM2`) is a path, mistyped or
/// not yet made, rather than a hub id: as transformers' from_pretrained decides for an
/// existing directory.
fn is_hub_id(spec: &str) -> bool {
    if let Some((first, _)) = spec.split_once('/') {
        if Path::new(first).is_dir() {
            return false;
        }
    }
    let id = spec.split('@').next().unwrap_or(spec);
    let parts: Vec<&str> = id.split('/').collect();
    let ok_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    parts.len() == 2 && parts.iter().all(|p| ok_part(p)) && !spec.ends_with(".gguf")
}

/// Weight files of a Hugging Face directory: the shards named by
/// model.safetensors.index.json, else model.safetensors.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::bad_config(&index, "(json)", e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                ModelError::bad_config(&index, "weight_map", "missing or not an object")
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(ModelError::bad_config(
                &index,
                "weight_map",
                "names no shard",
            ));
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::MissingFile {
        path: dir.into(),
        what: "model.safetensors (or model.safetensors.index.json)",
    })
}

mod hub {
    //! hf-hub 0.4 reads HF_HOME only; HF_HUB_CACHE and HF_HUB_OFFLINE are honored here as
    //! huggingface_hub documents them
    //! (https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables).

    use std::path::PathBuf;

    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    use super::{safetensors_files, HF_FILES};
    use crate::error::{HubItem, ModelError, Result};

    pub fn cache_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
            return dir.into();
        }
        if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join("hub");
        }
        Cache::default().path().clone()
    }

    pub fn offline() -> bool {
        std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"))
            .unwrap_or(false)
    }

    /// The snapshot directory of `spec` in the cache, downloading what is missing unless offline.
    pub fn fetch(spec: &str) -> Result<PathBuf> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev.to_string()),
            None => (spec, "main".to_string()),
        };
        let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision);
        let cache = Cache::new(cache_dir());
        let cached = cache.repo(repo.clone());
        let Some(config) = cached.get("config.json") else {
            if offline() {
                return Err(ModelError::HubOffline {
                    item: HubItem::Model,
                    spec: spec.into(),
                    cache: cache.path().clone(),
                });
            }
            return download(spec, &cache, &repo);
        };
        let dir = config.parent().map(PathBuf::from).unwrap_or_default();
        if !offline() && safetensors_files(&dir).is_err() {
            return download(spec, &cache, &repo);
        }
        Ok(dir)
    }

    /// The snapshot directory holding `files` of `spec` (all required), from the cache or,
    /// unless offline, downloaded.
    pub fn fetch_files(spec: &str, files: &[&str]) -> Result<PathBuf> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev.to_string()),
            None => (spec, "main".to_string()),
        };
        let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision);
        let cache = Cache::new(cache_dir());
        let cached = cache.repo(repo.clone());
        let found: Option<Vec<PathBuf>> = files.iter().map(|f| cached.get(f)).collect();
        if let Some(first) = found.as_ref().and_then(|f| f.first()) {
            return Ok(first.parent().map(PathBuf::from).unwrap_or_default());
        }
        if offline() {
            return Err(ModelError::HubOffline {
                item: HubItem::Adapter,
                spec: spec.into(),
                cache: cache.path().clone(),
            });
        }
        let api = ApiBuilder::from_cache(cache.clone())
            .with_progress(true)
            .build()
            .map_err(|e| ModelError::Hub {
                item: HubItem::Adapter,
                spec: spec.into(),
                reason: e.to_string(),
            })?;
        let api = api.repo(repo);
        let mut dir = PathBuf::new();
        for f in files {
            let path = api.get(f).map_err(|e| ModelError::Hub {
                item: HubItem::Adapter,
                spec: spec.into(),
                reason: format!("{f}: {e}"),
            })?;
            dir = path.parent().map(PathBuf::from).unwrap_or_default();
        }
        Ok(dir)
    }

    fn download(spec: &str, cache: &Cache, repo: &Repo) -> Result<PathBuf> {
        let hub_err = |e: hf_hub::api::sync::ApiError| ModelError::Hub {
            item: HubItem::Model,
            spec: spec.into(),
            reason: e.to_string(),
        };
        let api = ApiBuilder::from_cache(cache.clone())
            .with_progress(true)
            .build()
            .map_err(hub_err)?;
        let api = api.repo(repo.clone());
        let config = api.get("config.json").map_err(hub_err)?;
        let dir = config.parent().map(PathBuf::from).unwrap_or_default();
        for optional in &HF_FILES[1..] {
            let _ = api.get(optional);
        }
        if api.get("model.safetensors.index.json").is_ok() {
            for shard in safetensors_files(&dir)? {
                let name = shard
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                api.get(&name).map_err(hub_err)?;
            }
        } else {
            api.get("model.safetensors").map_err(hub_err)?;
        }
        Ok(dir)
    }
}
