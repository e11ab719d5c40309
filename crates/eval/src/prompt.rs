//! Turning what the user typed into prompt token ids: raw text (with BOS where the model adds
//! it) or a chat rendered by the model's template. Training uses the same template path, so
//! tuned models see at inference exactly the prompt shape they were trained on.

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

    /// The text fed to the tokenizer.
    pub fn render(&self, model: &Pretrained) -> Result<String> {
        if self.text.trim().is_empty() {
            return Err(EvalError::EmptyPrompt);
        }
        if !self.chat {
            return Ok(self.text.clone());
        }
        let template = model
            .chat_template
            .as_ref()
            .ok_or_else(|| EvalError::NoChatTemplate {
                model: model.source.path().display().to_string(),
            })?;
        Ok(template.render(&self.messages(), true)?)
    }

    /// Token ids: raw text gets the tokenizer's special tokens (BOS if the model wants it);
    /// rendered chat text already holds them, so nothing is added twice.
    pub fn encode(&self, model: &Pretrained) -> Result<Vec<u32>> {
        let text = self.render(model)?;
        Ok(model.tokenizer.encode(&text, !self.chat)?)
    }
}
