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

/// PEFT's `target_modules`: a list of module names (each matching a module's full name or
/// its tail after a dot, e.g. `q_proj` or `self_attn.q_proj`), `"all-linear"`, or any other
/// string, which PEFT reads as a regex that must match a module's full name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Named(Vec<String>),
    /// `"all-linear"` (every projection, not lm_head) or a regex on full module names.
    Pattern(String),
}

impl TargetModules {
    pub fn all_linear() -> Self {
        Self::Pattern("all-linear".into())
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

    /// A regex rather than "all-linear" or a list.
    pub fn is_regex(&self) -> bool {
        matches!(self, Self::Pattern(p) if !p.eq_ignore_ascii_case("all-linear"))
    }

    /// Whether the projection named `module` in full (`model.layers.3.self_attn.q_proj`) is
    /// targeted, by PEFT's rules.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            Self::Pattern(p) if p.eq_ignore_ascii_case("all-linear") => true,
            Self::Pattern(p) => full_match(p, module),
            Self::Named(names) => names
                .iter()
                .any(|n| module == n || module.ends_with(&format!(".{n}"))),
        }
    }

    fn validate(&self) -> Result<(), LoraError> {
        match self {
            Self::Pattern(p) if p.eq_ignore_ascii_case("all-linear") => Ok(()),
            Self::Pattern(p) => regex::Regex::new(p).map(|_| ()).map_err(|e| {
                LoraError::bad_config(
                    "target_modules",
                    format!("`{p}` is neither \"all-linear\" nor a valid regex: {e}"),
                )
            }),
            Self::Named(names) if names.is_empty() => {
                Err(LoraError::bad_config("target_modules", "is empty"))
            }
            Self::Named(names) => {
                let projection = |n: &str| PROJECTIONS.contains(&n.rsplit('.').next().unwrap_or(n));
                match names.iter().find(|n| !projection(n)) {
                    Some(bad) => Err(LoraError::bad_config(
                        "target_modules",
                        format!(
                            "`{bad}` is not a projection of this model (expected all-linear or some of {}; embeddings and lm_head are not supported)",
                            PROJECTIONS.join(", ")
                        ),
                    )),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Python's `re.fullmatch(pattern, text)`.
fn full_match(pattern: &str, text: &str) -> bool {
    regex::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(text))
}

/// `layers_to_transform`: PEFT accepts one layer index or a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<usize>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(usize),
        Many(Vec<usize>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(l)) => Some(vec![l]),
        Some(OneOrMany::Many(l)) => Some(l),
    })
}

/// PEFT fields that change the adapter's forward pass or add weights tuna does not apply:
/// an adapter that sets any of them is refused rather than run wrong.
const UNSUPPORTED_FIELDS: [(&str, &str); 10] = [
    ("alora_invocation_tokens", "activated LoRA (aLoRA)"),
    ("use_qalora", "QALoRA"),
    ("layer_replication", "layer replication"),
    ("lora_bias", "a bias on lora_B"),
    ("trainable_token_indices", "trainable token embeddings"),
    (
        "target_parameters",
        "adapters on parameters rather than modules",
    ),
    ("use_bdlora", "BD-LoRA"),
    ("arrow_config", "Arrow routing"),
    ("kasa_config", "KaSA"),
    ("monteclora_config", "MonteCLoRA"),
];

/// A PEFT field is set when it is not null, false, 0, "" or empty.
fn is_set(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
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
/// (`other`, written back on save), and refused where they change the math (see
/// `check_supported`).
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
    #[serde(default, deserialize_with = "one_or_many")]
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
    /// Every other field of the file (PEFT has many; see `UNSUPPORTED_FIELDS`).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
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
            other: serde_json::Map::new(),
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

    /// Whether `module` (a full name such as `model.layers.0.self_attn.q_proj`) of layer
    /// `layer` gets an adapter.
    pub fn targets(&self, module: &str, layer: usize) -> bool {
        self.target_modules.matches(module)
            && self
                .layers_to_transform
                .as_ref()
                .is_none_or(|l| l.contains(&layer))
    }

    /// Refuses what tuna does not implement, naming the field, rather than ignoring it;
    /// `validate` adds the checks that need the model.
    pub fn check_supported(&self) -> Result<(), LoraError> {
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
        if self.target_modules.is_regex() && self.layers_to_transform.is_some() {
            return Err(bad(
                "layers_to_transform",
                "cannot go with a regex target_modules (PEFT refuses the pair too): put the layers in the regex".into(),
            ));
        }
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
        for (field, what) in UNSUPPORTED_FIELDS {
            if let Some(v) = self.other.get(field).filter(|v| is_set(v)) {
                return Err(bad(field, format!("{what} is not supported (set to {v})")));
            }
        }
        Ok(())
    }

    /// The config as written to adapter_config.json: PEFT refuses `layers_to_transform`
    /// beside a string `target_modules`, so "all-linear" with layers is written as the list
    /// of projections.
    pub fn for_peft(&self) -> LoraConfig {
        let mut out = self.clone();
        if self.layers_to_transform.is_some()
            && matches!(self.target_modules, TargetModules::Pattern(_))
        {
            out.target_modules =
                TargetModules::Named(PROJECTIONS.iter().map(|p| p.to_string()).collect());
        }
        out
    }

    /// `check_supported`, and every layer index within the model's `num_layers`.
    pub fn validate(&self, num_layers: usize) -> Result<(), LoraError> {
        self.check_supported()?;
        let bad = |field: &str, reason: String| LoraError::bad_config(field, reason);
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
