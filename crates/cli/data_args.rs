//! Flags that say how records become token ids (shared by eval, data and, later, train).

use clap::{Args, ValueEnum};
use tuna_data::{EncodeOptions, PromptFormat, Truncation};

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
    #[arg(long, default_value_t = 1024)]
    pub seq_len: usize,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    #[arg(long, value_enum, default_value = "left")]
    pub truncation: TruncationArg,
    /// System message for chat records that have none.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Wraps prompts of prompt/completion records, e.g. "Review: {prompt}\nSentiment:".
    #[arg(long)]
    pub prompt_template: Option<String>,
    /// Train (and score) prompt tokens too.
    #[arg(long)]
    pub train_on_prompt: bool,
}

impl DataArgs {
    pub fn encode_options(&self) -> EncodeOptions {
        EncodeOptions {
            format: match self.format {
                FormatArg::Auto => PromptFormat::Auto,
                FormatArg::Chat => PromptFormat::Chat,
                FormatArg::Raw => PromptFormat::Raw,
            },
            max_seq_len: self.seq_len,
            truncation: match self.truncation {
                TruncationArg::Left => Truncation::Left,
                TruncationArg::Right => Truncation::Right,
            },
            train_on_prompt: self.train_on_prompt,
            system: self.system_prompt.clone(),
            prompt_template: self.prompt_template.clone(),
            skip_untrainable: true,
        }
    }
}
