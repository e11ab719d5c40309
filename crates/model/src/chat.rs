//! Chat templates: the model's Jinja template rendered with minijinja the way transformers'
//! `apply_chat_template` renders it (trim_blocks, lstrip_blocks, loop controls,
//! `raise_exception`, Python string methods).
//! https://github.com/huggingface/transformers/blob/v4.46.0/src/transformers/utils/chat_template_utils.py

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    pub source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::ChatTemplate {
                reason: format!("does not parse: {e}"),
            })?;
        Ok(Self {
            env,
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ModelError::ChatTemplate {
                reason: e.to_string(),
            })?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| ModelError::ChatTemplate {
                reason: match e.kind() {
                    ErrorKind::InvalidOperation => format!(
                        "the template refused the messages: {}",
                        e.detail().unwrap_or("")
                    ),
                    _ => e.to_string(),
                },
            })
    }

    /// The token that closes a turn in this template, when it has one that differs from EOS
    /// (`<|eot_id|>` in Llama 3, `<|im_end|>` in ChatML): generation stops there too.
    pub fn end_of_turn_marker(&self) -> Option<&'static str> {
        [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "</s>",
            "<end_of_turn>",
        ]
        .into_iter()
        .find(|m| self.source.contains(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_transformers_with_python_methods_and_bos() {
        // A Llama-3-style template: bos_token, loop controls, .strip(), trim/lstrip blocks.
        let src = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{% continue %}{% endif %}\n    {{ '<|start|>' + m['role'] + '\\n' + m['content'].strip() + '<|end|>' }}\n{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let msgs = [
            Message::new("system", "  be brief "),
            Message::new("tool", "x"),
            Message::new("user", "hi"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            // jinja2 3.1 with transformers' settings renders exactly this.
            "<s>    <|start|>system\nbe brief<|end|>\n    <|start|>user\nhi<|end|>\n<|start|>assistant\n"
        );
        assert_eq!(t.end_of_turn_marker(), Some("<|end|>"));
    }

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}ok";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let err = t
            .render(&[Message::new("assistant", "x")], false)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "chat template: the template refused the messages: Conversations must start with a user turn");
        assert_eq!(t.render(&[Message::new("user", "x")], false).unwrap(), "ok");
    }

    #[test]
    fn a_template_that_does_not_parse_is_an_error() {
        let err = ChatTemplate::new("{% for %}", "", "")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("chat template: does not parse:"), "{err}");
    }
}
