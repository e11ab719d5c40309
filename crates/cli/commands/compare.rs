//! `tuna compare`: prompting strategies and the tuned adapter on one test set, written as
//! report.md, report.html and report.json; or, with --prompt, one prompt answered by the base
//! and the tuned model one after the other.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tuna_eval::compare::{self, CompareSetup};
use tuna_eval::strategy::{PromptShape, Strategy};
use tuna_eval::task::{check_references, load_examples};
use tuna_eval::{generate, PromptSpec, SamplingOptions};
use tuna_train::run_dir::{self, RunInfo};

use crate::args::CompareArgs;
use crate::data_args::parse_field_names;
use crate::model_args::InferenceWeights;
use crate::task_args::{
    adapter_facts, add_sample_column, split_path, trained_shape, COMPARE_STRATEGIES,
};

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let mut base_args = args.model.clone();
    base_args.adapter = None;
    // A learning-curve directory (tuna train --train-sizes): the largest run is "the" adapter.
    let curve = args
        .model
        .adapter
        .as_deref()
        .map(run_dir::curve_runs)
        .unwrap_or_default();
    let located = match curve.last() {
        Some((_, dir)) => Some(run_dir::locate_adapter(dir)?),
        None => args.model.locate_adapter()?,
    };
    let adapter = located.as_ref().map(|l| l.dir.clone());
    let mut tuned_args = args.model.clone();
    tuned_args.adapter = adapter.clone();
    let run = located.as_ref().and_then(|l| l.run.clone());
    if let Some(prompt) = &args.prompt {
        return side_by_side(&args, prompt, run.as_ref());
    }
    let (Some(data), Some(output)) = (&args.data, &args.output) else {
        bail!("--data and --output are required (or --prompt for one prompt)");
    };
    // The report directory before the (long) scoring, so a bad --output fails first.
    if output.is_file() {
        bail!(
            "--output {}: is a file; name a directory for the report",
            output.display()
        );
    }
    std::fs::create_dir_all(output)
        .with_context(|| format!("--output {}: cannot create", output.display()))?;
    let fields = parse_field_names(&args.fields)?;
    let task = args.task.prepare(
        data,
        args.limit,
        &fields,
        args.system_prompt.clone(),
        run.as_ref(),
        COMPARE_STRATEGIES,
    )?;

    // Checked before the (slow) model load.
    let variants = args
        .instructions
        .as_deref()
        .map(read_instructions)
        .transpose()?;
    eprintln!("loading {}", base_args.model);
    let scoring = InferenceWeights::for_scoring(args.weights);
    eprintln!(
        "scoring with {} weights ({}){}",
        scoring.name(),
        scoring.format().kernel(),
        if args.weights.is_none() && scoring != InferenceWeights::Dense {
            "; --weights f32 for the exact form"
        } else {
            ""
        }
    );
    let base = base_args.load(scoring)?;
    let tuned = match &adapter {
        Some(_) => {
            eprintln!("loading {} with the adapter", base_args.model);
            Some(tuned_args.load(scoring)?)
        }
        None => None,
    };
    let facts = located
        .as_ref()
        .map(|a| adapter_facts(a, tuned.as_ref()))
        .transpose()?;
    let mut setup = args
        .task
        .setup(&task, &base, tuned.as_ref(), facts, args.samples);
    let mut sweep = Vec::new();
    let mut sweep_path = None;
    if let Some(variants) = &variants {
        let valid_path = valid_path(&args, run.as_ref(), data).with_context(|| {
            "--instructions: the sweep needs a valid split: pass --valid FILE".to_string()
        })?;
        let mut valid = load_examples(&valid_path, &fields, &args.task.rationale_field)?;
        valid.truncate(args.sweep_limit);
        check_references(&valid_path, &valid, &task.kind)?;
        let mut best: Option<(usize, f64)> = None;
        for (i, template) in variants.iter().enumerate() {
            let trial = CompareSetup {
                tuned: None,
                test_path: &valid_path,
                test: &valid,
                strategies: vec![Strategy::Zero],
                shots: 0,
                prompt_shape: PromptShape {
                    template: Some(template.clone()),
                    system: setup.prompt_shape.system.clone(),
                },
                adapter: None,
                samples: 0,
                ..setup.clone()
            };
            eprintln!(
                "instruction {}/{}: {:?}",
                i + 1,
                variants.len(),
                short(template)
            );
            let row = compare::run(&trial, &mut |_| {})?.rows.remove(0);
            let metric = row.metrics[0].clone();
            let value = metric.estimate.value;
            let better = |b: f64| {
                if task.metrics[0].higher_is_better() {
                    value > b
                } else {
                    value < b
                }
            };
            if best.is_none_or(|(_, b)| better(b)) {
                best = Some((i, value));
            }
            sweep.push(compare::InstructionTrial {
                template: template.clone(),
                metric,
                chosen: false,
            });
        }
        if let Some((i, _)) = best {
            sweep[i].chosen = true;
            setup.prompt_shape.template = Some(variants[i].clone());
        }
        sweep_path = Some(valid_path.display().to_string());
    }

    let mut progress = |line: &str| eprintln!("{line}");
    let mut report = args.task.run_strategies(&setup, &mut progress)?;
    for (i, extra) in args.also_adapters.iter().enumerate() {
        eprintln!("also: {}", extra.display());
        let (mut row, _) = score_adapter(&args, &setup, extra, &mut progress)?;
        row.key = format!("tuned-{}", i + 2);
        row.title = format!("fine-tuned ({})", extra.display());
        add_sample_column(&mut report.samples, &task.test, &row, usize::MAX);
        report.rows.push(row);
    }
    report.instruction_sweep = sweep;
    report.sweep_path = sweep_path;
    for (n, dir) in &curve {
        let main = Some(dir) == adapter.as_ref();
        let tuned_row = report.rows.iter().find(|r| r.key == Strategy::Tuned.key());
        let (row, info) = match (tuned_row, run.as_ref()) {
            (Some(r), Some(info)) if main => (r.clone(), info.clone()),
            _ => {
                eprintln!("learning curve: {n} training records ({})", dir.display());
                let (row, info) = score_adapter(&args, &setup, dir, &mut progress)?;
                let info =
                    info.with_context(|| format!("{}: not a run directory", dir.display()))?;
                (row, info)
            }
        };
        let state = info.state.as_ref();
        report.learning_curve.push(compare::CurvePoint {
            adapter: dir.display().to_string(),
            train_examples: info.train_examples().unwrap_or(*n),
            steps: state.map_or(0, |s| s.step),
            train_seconds: state.map_or(0.0, |s| s.train_seconds),
            metric: row.metrics[0].clone(),
        });
    }
    write_reports(output, &report)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", tuna_eval::report::markdown(&report));
    }
    eprintln!(
        "wrote {}, {}, {}",
        output.join("report.md").display(),
        output.join("report.html").display(),
        output.join("report.json").display()
    );
    Ok(())
}

/// The tuned strategy with the adapter at `dir` on `setup`'s test rows, prompted as its run
/// was trained; also returns that run's directory facts.
fn score_adapter(
    args: &CompareArgs,
    setup: &CompareSetup,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<(compare::StrategyRow, Option<RunInfo>)> {
    let located = run_dir::locate_adapter(dir)?;
    let mut model_args = args.model.clone();
    model_args.adapter = Some(located.dir.clone());
    let model = model_args.load(InferenceWeights::for_scoring(args.weights))?;
    let info = located.run.clone();
    let one = CompareSetup {
        tuned: Some(&model),
        strategies: vec![Strategy::Tuned],
        tuned_shape: trained_shape(info.as_ref()),
        tuned_shots: info.as_ref().map_or(0, |r| r.config.encoding.shots),
        adapter: Some(adapter_facts(&located, Some(&model))?),
        samples: 0,
        ..setup.clone()
    };
    let row = compare::run(&one, progress)?.rows.remove(0);
    Ok((row, info))
}

/// --valid, else the adapter run's valid file, else valid.jsonl beside the test file.
fn valid_path(args: &CompareArgs, run: Option<&RunInfo>, data: &Path) -> Option<PathBuf> {
    split_path(
        args.valid.as_deref(),
        run.map(|r| r.config.data.valid.as_path()),
        data,
        "valid.jsonl",
    )
}

/// Instruction variants: blocks of text separated by lines of `---`.
fn read_instructions(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the instruction variants", path.display()))?;
    let mut variants = Vec::new();
    let mut current = Vec::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim() == "---" {
            let block = current.join("\n").trim().to_string();
            if !block.is_empty() {
                variants.push(block);
            }
            current.clear();
        } else {
            current.push(line);
        }
    }
    if variants.is_empty() {
        bail!(
            "{}: no instruction variants (separate them with lines of ---)",
            path.display()
        );
    }
    Ok(variants)
}

fn short(s: &str) -> String {
    let one_line = s.replace('\n', " ");
    match one_line.char_indices().nth(70) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

/// report.md, report.html and report.json, each written to a temporary name then renamed.
fn write_reports(dir: &Path, report: &compare::CompareReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let files = [
        ("report.md", tuna_eval::report::markdown(report)),
        ("report.html", tuna_eval::report::html(report)),
        ("report.json", serde_json::to_string_pretty(report)? + "\n"),
    ];
    for (name, text) in files {
        tuna_lora::peft::write_atomic(&dir.join(name), text.as_bytes())?;
    }
    Ok(())
}

/// One prompt: the base model's answer, then the tuned model's and each --also-adapter's,
/// streamed.
fn side_by_side(args: &CompareArgs, prompt: &str, run: Option<&RunInfo>) -> anyhow::Result<()> {
    if args.model.adapter.is_none() {
        bail!("--prompt compares the base model with a tuned one: pass --adapter too");
    }
    let mut base_args = args.model.clone();
    base_args.adapter = None;
    let system = args
        .system_prompt
        .clone()
        .or_else(|| run.and_then(|r| r.config.encoding.system.clone()));
    let spec = PromptSpec {
        text: prompt.to_string(),
        chat: args.chat,
        system: if args.chat { system } else { None },
    };
    let options = SamplingOptions {
        max_new_tokens: args.task.max_new_tokens,
        ..Default::default()
    };
    let mut models = vec![
        ("base".to_string(), base_args),
        ("tuned".to_string(), args.model.clone()),
    ];
    for extra in &args.also_adapters {
        let mut extra_args = args.model.clone();
        extra_args.adapter = Some(extra.clone());
        models.push((format!("tuned ({})", extra.display()), extra_args));
    }
    for (label, model_args) in &models {
        let model = model_args.load(InferenceWeights::for_generation(
            args.weights,
            &model_args.model,
        ))?;
        let ids = spec.encode(&model)?;
        println!("== {label}");
        let mut out = std::io::stdout();
        generate(&model, &ids, &options, |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })?;
        println!();
    }
    Ok(())
}
