//! `tuna chat`: a multi-turn conversation through the model's chat template, each answer
//! streamed; with --compare, every turn answered by the base model and then the tuned one,
//! each keeping its own side of the conversation (as a two-pane compare chat does).
//!
//! Lines on stdin are user turns; `/reset` clears the conversation, `/system TEXT` sets the
//! system message (and clears), `/quit` or end of input ends. On a terminal a `> ` prompt
//! and a banner go to stderr; through a pipe only the answers are printed, one per line.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use tuna_data::{EncodeOptions, Encoder, PromptFormat};
use tuna_eval::{generate, SamplingOptions};
use tuna_model::{Message, Pretrained};

use crate::args::ChatArgs;
use crate::model_args::InferenceWeights;

/// One model and its side of the conversation.
struct Side {
    label: &'static str,
    model: Pretrained,
    turns: Vec<Message>,
}

impl Side {
    /// The prompt ids of the system message and the turns so far, dropping the oldest
    /// exchanges while the prompt and an answer would not fit the model's context.
    fn prompt_ids(
        &mut self,
        system: Option<&str>,
        answer_tokens: usize,
    ) -> anyhow::Result<Vec<u32>> {
        let options = EncodeOptions {
            format: PromptFormat::Chat,
            ..EncodeOptions::default()
        };
        let encoder = Encoder::new(&self.model, &options)?;
        let context = self.model.config.max_position_embeddings;
        loop {
            let mut messages = Vec::with_capacity(self.turns.len() + 1);
            if let Some(system) = system {
                messages.push(Message::new("system", system));
            }
            messages.extend(self.turns.iter().cloned());
            let ids = encoder
                .prompt_ids(&messages)
                .map_err(|reason| tuna_eval::EvalError::Prompt { reason })?;
            if ids.len() + answer_tokens <= context || self.turns.len() <= 1 {
                return Ok(ids);
            }
            // The oldest user turn and its answer.
            self.turns.drain(..2.min(self.turns.len() - 1));
            eprintln!("({}: the oldest exchange was dropped to fit the model's context of {context} tokens)", self.label);
        }
    }
}

enum Line<'a> {
    Turn(&'a str),
    Reset,
    System(&'a str),
    Quit,
    Unknown(&'a str),
}

fn parse_line(line: &str) -> Line<'_> {
    let trimmed = line.trim();
    let Some(command) = trimmed.strip_prefix('/') else {
        return Line::Turn(trimmed);
    };
    let (name, rest) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    match name {
        "reset" | "clear" => Line::Reset,
        "system" => Line::System(rest.trim()),
        "quit" | "exit" | "bye" => Line::Quit,
        _ => Line::Unknown(name),
    }
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let options: SamplingOptions = args.sampling.options();
    options.validate()?;
    if args.compare && args.model.adapter.is_none() {
        bail!("--compare: answers every turn with the base and the tuned model; pass --adapter RUN (a run directory of tuna train or an adapter)");
    }
    // A run's system message is the one the adapter was trained with.
    let run = args.model.locate_adapter()?.and_then(|l| l.run);
    let mut system = args
        .system_prompt
        .clone()
        .or_else(|| run.and_then(|r| r.config.encoding.system));
    let weights = InferenceWeights::for_generation(args.weights, &args.model.model);
    let mut sides = Vec::new();
    if args.compare {
        let mut base = args.model.clone();
        base.adapter = None;
        sides.push(("base", base));
    }
    let label = if args.model.adapter.is_some() {
        "tuned"
    } else {
        "base"
    };
    sides.push((label, args.model.clone()));
    let mut sides: Vec<Side> = sides
        .into_iter()
        .map(|(label, model_args)| {
            let model = model_args.load(weights)?;
            if model.chat_template.is_none() {
                return Err(tuna_eval::EvalError::NoChatTemplate {
                    model: model.source.path().display().to_string(),
                }
                .into());
            }
            Ok(Side {
                label,
                model,
                turns: Vec::new(),
            })
        })
        .collect::<anyhow::Result<_>>()?;

    let interactive = std::io::stdin().is_terminal();
    let color = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    if interactive {
        eprintln!(
            "chatting with {}{}; /reset clears the conversation, /system TEXT sets the system message, /quit or Ctrl-D ends",
            args.model.model,
            match &args.model.adapter {
                Some(a) if args.compare => format!(" (base, then + {})", a.display()),
                Some(a) => format!(" + {}", a.display()),
                None => String::new(),
            }
        );
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut stdout = std::io::stdout();
    let mut line = String::new();
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        let text = match parse_line(&line) {
            Line::Quit => break,
            Line::Reset => {
                sides.iter_mut().for_each(|s| s.turns.clear());
                eprintln!("(conversation cleared)");
                continue;
            }
            Line::System(text) => {
                system = (!text.is_empty()).then(|| text.to_string());
                sides.iter_mut().for_each(|s| s.turns.clear());
                eprintln!(
                    "({}; conversation cleared)",
                    if system.is_some() {
                        "system message set"
                    } else {
                        "system message removed"
                    }
                );
                continue;
            }
            Line::Unknown(name) => {
                eprintln!("unknown command /{name}: /reset, /system TEXT or /quit");
                continue;
            }
            Line::Turn("") => continue,
            Line::Turn(text) => text.to_string(),
        };
        for side in sides.iter_mut() {
            side.turns.push(Message::new("user", &text));
            let ids = side.prompt_ids(system.as_deref(), options.max_new_tokens)?;
            if args.compare {
                match color {
                    true => write!(stdout, "\x1b[1m{}:\x1b[0m ", side.label)?,
                    false => write!(stdout, "{}: ", side.label)?,
                }
            }
            let mut answer = String::new();
            generate(&side.model, &ids, &options, |piece| {
                answer.push_str(piece);
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            })?;
            writeln!(stdout)?;
            side.turns.push(Message::new("assistant", answer.trim()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_told_from_turns() {
        assert!(matches!(
            parse_line("  hello there \n"),
            Line::Turn("hello there")
        ));
        assert!(matches!(parse_line("/reset\n"), Line::Reset));
        assert!(matches!(
            parse_line("/system  Be terse. \n"),
            Line::System("Be terse.")
        ));
        assert!(matches!(parse_line("/system\n"), Line::System("")));
        assert!(matches!(parse_line("/quit"), Line::Quit));
        assert!(matches!(parse_line("/nope x"), Line::Unknown("nope")));
    }
}
