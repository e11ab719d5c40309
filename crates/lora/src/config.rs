//! `LoraConfig` with PEFT's field names, as adapter_config.json stores them.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::LoraError;

/// The seven projections of a Llama-family block, in PEFT's names.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// `"all-linear"` or a list of module names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Named(Vec<String>),
    /// PEFT's "all-linear": every projection (not lm_head).
    AllLinear(String),
}

impl TargetModules {
    pub fn all_linear() -> Self {
        Self::AllLinear("all-linear".into())
    }

    /// Parses a flag: `all-linear` or `q_proj,v_proj`.
    pub fn parse(s: &str) -> Result<Self, LoraError> {
        let t = if s == "all-linear" {
            Self::all_linear()
        } else {
            Self::Named(
                s.split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect(),
            )
        };
        t.validate()?;
        Ok(t)
    }

    pub fn modules(&self) -> Vec<&str> {
        match self {
            Self::AllLinear(_) => PROJECTIONS.to_vec(),
            Self::Named(names) => names.iter().map(String::as_str).collect(),
        }
    }

    fn validate(&self) -> Result<(), LoraError> {
        match self {
            Self::AllLinear(s) if s != "all-linear" => {
                Err(LoraError::bad_config("target_modules", format!("`{s}`: expected \"all-linear\" or a list of module names")))
            }
            Self::AllLinear(_) => Ok(()),
            Self::Named(names) if names.is_empty() => Err(LoraError::bad_config("target_modules", "is empty")),
            Self::Named(names) => match names.iter().find(|n| !PROJECTIONS.contains(&n.as_str())) {
                Some(bad) => Err(LoraError::bad_config(
                    "target_modules",
                    format!("`{bad}` is not a projection of this model (expected all-linear or some of {})", PROJECTIONS.join(", ")),
                )),
                None => Ok(()),
            },
        }
    }
}

fn default_peft_type() -> String {
    "LORA".into()
}
fn default_task_type() -> String {
    "CAUSAL_LM".into()
}
fn default_bias() -> String {
    "none".into()
}

/// adapter_config.json. Fields tuna does not use are kept when reading PEFT files
/// (`#[serde(flatten)] other`), and refused where they change the math (see `validate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    #[serde(default = "default_task_type")]
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module ranks and alphas, keyed by a module-name pattern as PEFT matches them
    /// (the key, a regex, must match the whole name or its tail after a dot; the first
    /// matching key in the file's order wins, so the order is kept).
    #[serde(default)]
    pub rank_pattern: IndexMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: IndexMap<String, f64>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            peft_type: default_peft_type(),
            task_type: default_task_type(),
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            target_modules: TargetModules::all_linear(),
            layers_to_transform: None,
            use_rslora: false,
            bias: default_bias(),
            base_model_name_or_path: None,
            fan_in_fan_out: false,
            inference_mode: false,
            use_dora: false,
            modules_to_save: None,
            rank_pattern: IndexMap::new(),
            alpha_pattern: IndexMap::new(),
        }
    }
}

/// PEFT's `get_pattern_key`: the first key (in the file's order) whose regex matches the
/// module name whole or after a dot.
fn pattern_value<T: Copy>(patterns: &IndexMap<String, T>, module: &str) -> Option<T> {
    patterns
        .iter()
        .find(|(key, _)| {
            regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).is_ok_and(|re| re.is_match(module))
        })
        .map(|(_, v)| *v)
}

impl LoraConfig {
    /// Multiplies the adapter branch: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale(&self) -> f64 {
        self.scale_of(self.r, self.lora_alpha)
    }

    fn scale_of(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// The rank of `module` (a full name such as `model.layers.0.self_attn.q_proj`):
    /// rank_pattern's first matching key, else `r`.
    pub fn rank_for(&self, module: &str) -> usize {
        pattern_value(&self.rank_pattern, module).unwrap_or(self.r)
    }

    /// The branch scale of `module`, with rank_pattern and alpha_pattern applied.
    pub fn scale_for(&self, module: &str) -> f64 {
        let alpha = pattern_value(&self.alpha_pattern, module).unwrap_or(self.lora_alpha);
        self.scale_of(self.rank_for(module), alpha)
    }

    /// Whether `module` (e.g. `q_proj`) of layer `layer` gets an adapter.
    pub fn targets(&self, module: &str, layer: usize) -> bool {
        self.target_modules.modules().contains(&module)
            && self
                .layers_to_transform
                .as_ref()
                .is_none_or(|l| l.contains(&layer))
    }

    /// Refuses what tuna does not implement, naming the field, rather than ignoring it.
    pub fn validate(&self, num_layers: usize) -> Result<(), LoraError> {
        let bad = |field: &str, reason: String| LoraError::bad_config(field, reason);
        if self.peft_type != "LORA" {
            return Err(bad(
                "peft_type",
                format!("`{}` is not supported (only LORA)", self.peft_type),
            ));
        }
        if self.r == 0 {
            return Err(bad("r", "must be at least 1".into()));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(bad("lora_alpha", "must be a number > 0".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(bad("lora_dropout", "must be in [0, 1)".into()));
        }
        if self.bias != "none" {
            return Err(bad(
                "bias",
                format!("`{}` is not supported (only \"none\")", self.bias),
            ));
        }
        if self.use_dora {
            return Err(bad("use_dora", "DoRA is not supported".into()));
        }
        if self.fan_in_fan_out {
            return Err(bad(
                "fan_in_fan_out",
                "is for GPT-2 style Conv1D layers, which Llama models do not have".into(),
            ));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(bad(
                "modules_to_save",
                "full copies of modules are not supported".into(),
            ));
        }
        self.target_modules.validate()?;
        for (field, key) in self
            .rank_pattern
            .keys()
            .map(|k| ("rank_pattern", k))
            .chain(self.alpha_pattern.keys().map(|k| ("alpha_pattern", k)))
        {
            if let Err(e) = regex::Regex::new(key) {
                return Err(bad(
                    field,
                    format!("key `{key}` is not a valid pattern: {e}"),
                ));
            }
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, &r)| r == 0) {
            return Err(bad("rank_pattern", format!("rank for `{k}` must be > 0")));
        }
        if let Some(layers) = &self.layers_to_transform {
            if let Some(l) = layers.iter().find(|&&l| l >= num_layers) {
                return Err(bad(
                    "layers_to_transform",
                    format!("layer {l} does not exist (the model has {num_layers})"),
                ));
            }
        }
        Ok(())
    }
}
