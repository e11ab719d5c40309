//! `tuna compare`: prompting strategies and the tuned adapter on one test set, written as
//! report.md, report.html and report.json; or, with --prompt, one prompt answered by the base
//! and the tuned model one after the other.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tuna_eval::compare;
use tuna_eval::provenance::Provenance;
use tuna_eval::score_cache::ScoreCache;
use tuna_eval::study::{split_file, AdapterArm, BoxError, InstructionSweep, Study, Task};
use tuna_eval::{generate, PromptSpec, SamplingOptions};
use tuna_model::source::ModelSource;
use tuna_train::run_dir::{self, RunInfo};

use crate::args::CompareArgs;
use crate::data_args::parse_field_names;
use crate::model_args::InferenceWeights;
use crate::task_args::{adapter_facts, trained_shape, COMPARE_STRATEGIES};

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
    if !args.training_seeds.is_empty() && args.training_seeds.len() != 1 + args.also_adapters.len()
    {
        bail!(
            "--training-seeds: {} seeds for {} adapters (--adapter and {} --also-adapter); give one seed per adapter",
            args.training_seeds.len(),
            1 + args.also_adapters.len(),
            args.also_adapters.len()
        );
    }
    let fields = parse_field_names(&args.fields)?;
    let options = args.task.options(
        data,
        args.limit,
        &fields,
        args.system_prompt.clone(),
        run.as_ref(),
        &COMPARE_STRATEGIES,
    )?;
    let task = Task::prepare(data, &options)?;

    // Checked before the (slow) model load.
    let sweep = match &args.instructions {
        Some(path) => Some(InstructionSweep {
            variants: read_instructions(path)?,
            valid_path: valid_path(&args, run.as_ref(), data).with_context(|| {
                "--instructions: the sweep needs a valid split: pass --valid FILE".to_string()
            })?,
            limit: args.sweep_limit,
            fields: fields.clone(),
            rationale_field: args.task.rationale_field.clone(),
        }),
        None => None,
    };
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
    // What the report is made from, hashed before the scoring: the score cache names its
    // rows by the model's hashes.
    let mut provenance = provenance(&args, &base, located.as_ref(), &task, sweep.as_ref())?;
    let cache = match &args.score_cache {
        Some(dir) => Some(ScoreCache::open(
            dir,
            score_context(
                &provenance,
                scoring,
                &format!(
                    "{:?} {:?}",
                    base.model.device().location(),
                    args.model.dtype
                ),
            ),
        )?),
        None => None,
    };
    let mut setup = args
        .task
        .setup(&task, &base, tuned.as_ref(), facts, args.samples);
    setup.cache = cache.as_ref();
    let study = Study {
        setup,
        cot_limit: args.task.cot_limit,
        sweep,
        extra_adapters: args.also_adapters.clone(),
        curve: curve.clone(),
        main_adapter: adapter.clone(),
        leakage: task.leakage.clone(),
        training_seeds: args.training_seeds.clone(),
    };
    // Extra adapters and learning-curve runs load as the study reaches them, over the same
    // base and weights.
    let mut load = |dir: &Path| -> Result<AdapterArm, BoxError> {
        load_arm(&args, dir, scoring).map_err(BoxError::from)
    };
    let mut report = study.run(&mut load, &mut |line| eprintln!("{line}"))?;
    add_wording(&mut provenance, &report.prompt_shape);
    report.provenance = provenance;
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

/// What a scored row depends on beyond its setup: tuna's version, the model's files, the
/// weight form and the device it was scored with.
fn score_context(p: &Provenance, weights: InferenceWeights, device: &str) -> String {
    let model: Vec<&str> = p
        .files
        .iter()
        .filter(|f| f.role == "model")
        .map(|f| f.sha256.as_str())
        .collect();
    format!(
        "tuna {}; model {}; weights {}; device {device}",
        p.tuna,
        model.join(","),
        weights.name()
    )
}

/// What the report was made from: the model's files, the adapters', the data files,
/// hashed; tuna's version and the command line (the wording is added once chosen).
fn provenance(
    args: &CompareArgs,
    base: &tuna_model::Pretrained,
    located: Option<&run_dir::LocatedAdapter>,
    task: &Task,
    sweep: Option<&InstructionSweep>,
) -> anyhow::Result<Provenance> {
    let mut p = Provenance::new(crate::args::VERSION, std::env::args().collect());
    match &base.source {
        ModelSource::Gguf(path) => p.add("model", path)?,
        ModelSource::HfDir(dir) => {
            for file in [
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
                "chat_template.jinja",
            ] {
                if dir.join(file).is_file() {
                    p.add("model", &dir.join(file))?;
                }
            }
            for shard in tuna_model::source::safetensors_files(dir)? {
                p.add("model", &shard)?;
            }
        }
    }
    if let Some(located) = located {
        p.add("adapter", &located.dir)?;
    }
    for extra in &args.also_adapters {
        p.add("also-adapter", &run_dir::locate_adapter(extra)?.dir)?;
    }
    p.add("test", &task.test_path)?;
    if let Some(train) = &task.leakage.train_path {
        p.add("train", Path::new(train))?;
    }
    if let Some(sweep) = sweep {
        p.add("valid", &sweep.valid_path)?;
    }
    if let Some(path) = &args.instructions {
        p.add("instructions", path)?;
    }
    Ok(p)
}

/// The prompting strategies' wording, as rendered into the prompts.
fn add_wording(p: &mut Provenance, wording: &tuna_eval::strategy::PromptShape) {
    if let Some(template) = &wording.template {
        p.add_text("instruction", template);
    }
    if let Some(system) = &wording.system {
        p.add_text("system", system);
    }
}

/// The adapter at `dir` over the base, with what its run says of how it was prompted.
fn load_arm(
    args: &CompareArgs,
    dir: &Path,
    weights: InferenceWeights,
) -> anyhow::Result<AdapterArm> {
    let located = run_dir::locate_adapter(dir)?;
    let mut model_args = args.model.clone();
    model_args.adapter = Some(located.dir.clone());
    let model = model_args.load(weights)?;
    let run = located.run.as_ref();
    Ok(AdapterArm {
        facts: adapter_facts(&located, Some(&model))?,
        shape: trained_shape(run),
        shots: run.map_or(0, |r| r.config.encoding.shots),
        model,
    })
}

/// --valid, else the adapter run's valid file, else valid.jsonl beside the test file.
fn valid_path(args: &CompareArgs, run: Option<&RunInfo>, data: &Path) -> Option<PathBuf> {
    split_file(
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
