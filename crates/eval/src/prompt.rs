//! Turning what the user typed into prompt token ids, through tuna-data's `Encoder` — the code
//! that also encodes the prompt part of every training example — so a tuned model sees at
//! inference exactly the prompt shape it was trained on.

use tuna_data::{EncodeOptions, Encoder, PromptFormat};
use tuna_model::{Message, Pretrained};

use crate::error::{EvalError, Result};

#[derive(Debug, Clone, Default)]
pub struct PromptSpec {
    pub text: String,
    /// Render through the chat template as one user turn.
    pub chat: bool,
    /// A system turn before it (chat only).
    pub system: Option<String>,
}

impl PromptSpec {
    pub fn messages(&self) -> Vec<Message> {
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &self.text));
        messages
    }

    /// Token ids: raw text gets the tokenizer's special tokens (BOS if the model wants it);
    /// chat text is rendered by the template, which already holds them.
    pub fn encode(&self, model: &Pretrained) -> Result<Vec<u32>> {
        if self.text.trim().is_empty() {
            return Err(EvalError::EmptyPrompt);
        }
        if self.chat && model.chat_template.is_none() {
            return Err(EvalError::NoChatTemplate {
                model: model.source.path().display().to_string(),
            });
        }
        let options = EncodeOptions {
            format: if self.chat {
                PromptFormat::Chat
            } else {
                PromptFormat::Raw
            },
            ..EncodeOptions::default()
        };
        let encoder = Encoder::new(model, &options)?;
        encoder
            .prompt_ids(&self.messages())
            .map_err(|reason| EvalError::Prompt { reason })
    }
}
