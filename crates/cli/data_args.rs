//! Flags that say how records become token ids (shared by eval, data and bench data), and
//! the training config they can start from (-c), so these commands encode as training does.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tuna_data::{DataError, EncodeOptions, FieldNames, PromptFormat, Truncation};
use tuna_train::TrainConfig;

use crate::model_args::ModelArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// The chat template when the model has one, else raw text.
    Auto,
    Chat,
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TruncationArg {
    /// Drop the start of the prompt.
    Left,
    /// Cut the end.
    Right,
}

#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Encode as this training config does (tuna train -c FILE, or a run's config.toml):
    /// its encoding, field names and model; flags override it.
    #[arg(short = 'c', long = "config", value_parser = crate::value_parsers::input_file)]
    pub config: Option<PathBuf>,
    /// Longest example in tokens; longer ones are truncated (text records are windowed).
    /// Default 1024, or the adapter run's when eval gets a run.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// How records become text (default: auto).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Which end of a too-long prompt goes: left (default) or right.
    #[arg(long, value_enum)]
    pub truncation: Option<TruncationArg>,
    /// System message for chat records that have none.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Wraps prompts of prompt/completion records, e.g. "Review: {prompt}\nSentiment:".
    #[arg(long)]
    pub prompt_template: Option<String>,
    /// Train (and score) prompt tokens too.
    #[arg(long)]
    pub train_on_prompt: bool,
    /// An example that truncation leaves with no target: `skip` it (counted, the default) or
    /// stop with an `error`.
    #[arg(long, value_enum)]
    pub untrainable: Option<UntrainableArg>,
    /// Rename a record field, e.g. --field prompt=question --field completion=answer
    /// (text, prompt, completion, messages, role, content, instruction, input, output).
    #[arg(long = "field", value_name = "KIND=NAME")]
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UntrainableArg {
    Skip,
    Error,
}

impl DataArgs {
    /// The -c config, when given.
    pub fn train_config(&self) -> anyhow::Result<Option<TrainConfig>> {
        Ok(match &self.config {
            Some(path) => Some(TrainConfig::from_toml_file(path)?),
            None => None,
        })
    }

    /// The encoding: the -c config's (else the defaults), with the flags given on top.
    pub fn encode_options(&self) -> anyhow::Result<EncodeOptions> {
        let mut o = match self.train_config()? {
            Some(c) => c.encoding_with_seed(),
            None => EncodeOptions {
                max_seq_len: 1024,
                ..EncodeOptions::default()
            },
        };
        if let Some(n) = self.seq_len {
            o.max_seq_len = n;
        }
        if let Some(format) = self.format {
            o.format = match format {
                FormatArg::Auto => PromptFormat::Auto,
                FormatArg::Chat => PromptFormat::Chat,
                FormatArg::Raw => PromptFormat::Raw,
            };
        }
        if let Some(t) = self.truncation {
            o.truncation = match t {
                TruncationArg::Left => Truncation::Left,
                TruncationArg::Right => Truncation::Right,
            };
        }
        o.train_on_prompt |= self.train_on_prompt;
        if self.system_prompt.is_some() {
            o.system = self.system_prompt.clone();
        }
        if self.prompt_template.is_some() {
            o.prompt_template = self.prompt_template.clone();
        }
        if let Some(u) = self.untrainable {
            o.skip_untrainable = u == UntrainableArg::Skip;
        }
        Ok(o)
    }

    /// The field names: the -c config's, with --field flags on top.
    pub fn field_names(&self) -> anyhow::Result<FieldNames> {
        let base = self.train_config()?.map(|c| c.fields).unwrap_or_default();
        Ok(parse_field_names_onto(base, &self.fields)?)
    }

    /// The model to load: --model when the user chose one, else the -c config's.
    pub fn model_spec(&self, model: &ModelArgs) -> anyhow::Result<ModelArgs> {
        let mut model = model.clone();
        if let Some(c) = self.train_config()? {
            if model.model == crate::model_args::DEFAULT_MODEL {
                model.model = c.model;
            }
        }
        Ok(model)
    }
}

/// `--field KIND=NAME` flags to field names.
pub fn parse_field_names(specs: &[String]) -> Result<FieldNames, DataError> {
    parse_field_names_onto(FieldNames::default(), specs)
}

/// `--field KIND=NAME` flags over `names`.
fn parse_field_names_onto(
    mut names: FieldNames,
    specs: &[String],
) -> Result<FieldNames, DataError> {
    for spec in specs {
        let bad = |reason: &str| DataError::BadOption {
            field: format!("--field {spec}"),
            reason: reason.into(),
        };
        let (kind, name) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected KIND=NAME"))?;
        if name.is_empty() {
            return Err(bad("the field name is empty"));
        }
        let slot = match kind {
                "text" => &mut names.text,
                "prompt" => &mut names.prompt,
                "completion" => &mut names.completion,
                "messages" => &mut names.messages,
                "role" => &mut names.role,
                "content" => &mut names.content,
                "instruction" => &mut names.instruction,
                "input" => &mut names.input,
                "output" => &mut names.output,
                _ => return Err(bad("KIND must be one of text, prompt, completion, messages, role, content, instruction, input, output")),
            };
        *slot = name.to_string();
    }
    Ok(names)
}
