//! Flags that say how records become token ids (shared by eval, data and, later, train).

use clap::{Args, ValueEnum};
use tuna_data::{DataError, EncodeOptions, FieldNames, PromptFormat, Truncation};

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
    /// Longest example in tokens; longer ones are truncated (text records are windowed).
    /// Default 1024, or the adapter run's when eval gets a run.
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
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
    pub fn encode_options(&self) -> EncodeOptions {
        EncodeOptions {
            format: match self.format {
                FormatArg::Auto => PromptFormat::Auto,
                FormatArg::Chat => PromptFormat::Chat,
                FormatArg::Raw => PromptFormat::Raw,
            },
            max_seq_len: self.seq_len.unwrap_or(1024),
            truncation: match self.truncation {
                None | Some(TruncationArg::Left) => Truncation::Left,
                Some(TruncationArg::Right) => Truncation::Right,
            },
            train_on_prompt: self.train_on_prompt,
            system: self.system_prompt.clone(),
            prompt_template: self.prompt_template.clone(),
            skip_untrainable: self.untrainable != Some(UntrainableArg::Error),
            ..EncodeOptions::default()
        }
    }

    pub fn field_names(&self) -> Result<FieldNames, DataError> {
        parse_field_names(&self.fields)
    }
}

/// `--field KIND=NAME` flags to field names.
pub fn parse_field_names(specs: &[String]) -> Result<FieldNames, DataError> {
    let mut names = FieldNames::default();
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
