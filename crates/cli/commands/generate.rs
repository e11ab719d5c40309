//! `tuna generate`: one prompt in, streamed text out.

use std::io::{IsTerminal, Read, Write};

use anyhow::Context;
use tuna_eval::{generate, PromptSpec, SamplingOptions};

use crate::args::{GenerateArgs, SamplingArgs};
use crate::model_args::InferenceWeights;

impl SamplingArgs {
    pub fn options(&self) -> SamplingOptions {
        SamplingOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            ..SamplingOptions::default()
        }
    }
}

fn prompt_text(args: &GenerateArgs) -> anyhow::Result<String> {
    if let Some(p) = &args.prompt {
        return Ok(p.clone());
    }
    if let Some(path) = &args.prompt_file {
        return std::fs::read_to_string(path).with_context(|| format!("{}", path.display()));
    }
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(String::new());
    }
    let mut text = String::new();
    stdin
        .read_to_string(&mut text)
        .context("reading the prompt from stdin")?;
    Ok(text)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let options = args.sampling.options();
    options.validate()?;
    let spec = PromptSpec {
        text: prompt_text(&args)?,
        chat: args.chat,
        system: args.system.clone(),
    };
    if spec.text.trim().is_empty() {
        return Err(tuna_eval::EvalError::EmptyPrompt.into());
    }
    let model = args.model.load(InferenceWeights::for_generation(
        args.weights,
        &args.model.model,
    ))?;
    let ids = spec.encode(&model)?;
    let mut stdout = std::io::stdout().lock();
    let mut text = String::new();
    let (_, stats) = generate(&model, &ids, &options, |piece| {
        if args.json {
            text.push_str(piece);
        } else {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if args.json {
        let mut out = serde_json::to_value(&stats)?;
        out["text"] = serde_json::Value::String(text);
        let _ = writeln!(stdout, "{out}");
        return Ok(());
    }
    let _ = writeln!(stdout);
    eprintln!(
        "prompt: {} tokens at {:.1} tok/s; generated: {} tokens at {:.1} tok/s; stop: {}",
        stats.prompt_tokens,
        stats.prompt_tokens_per_second(),
        stats.generated_tokens,
        stats.generation_tokens_per_second(),
        serde_json::to_value(stats.stop_reason)?
            .as_str()
            .unwrap_or("?"),
    );
    Ok(())
}
