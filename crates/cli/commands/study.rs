//! `tuna study`: the whole prompting-vs-tuning study in one command and one directory —
//! train the adapter (one run per training seed), then `compare` every strategy against
//! them — where a second invocation reuses what is done: finished runs are kept, unfinished
//! ones resumed, and the report rebuilt only when an adapter, a data file or a flag changed —
//! and then only the strategies these touch are scored again.
//!
//! ```text
//! OUTPUT/seed-<S>/     one `tuna train` run per training seed
//! OUTPUT/report/       report.md, report.html, report.json
//! OUTPUT/scores/       one file per scored strategy (`compare --score-cache`)
//! OUTPUT/study.json    what the report was made from (reuse check)
//! ```
//!
//! Each stage is the same command a user would run by hand, built from the study's flags,
//! so every flag is checked and named as there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;

use crate::args::{Cli, Command, StudyArgs};

const MANIFEST: &str = "study.json";

/// `--flag value` pairs for each option given.
fn push_opt(argv: &mut Vec<String>, flag: &str, value: Option<impl ToString>) {
    if let Some(v) = value {
        argv.push(flag.into());
        argv.push(v.to_string());
    }
}

/// The training flags the study passes on to each seed's `tuna train`.
fn training_flags(args: &StudyArgs) -> Vec<String> {
    let t = &args.training;
    let mut argv = Vec::new();
    push_opt(
        &mut argv,
        "--config",
        t.config.as_ref().map(|p| p.display()),
    );
    push_opt(&mut argv, "--max-steps", t.max_steps);
    push_opt(&mut argv, "--epochs", t.epochs);
    push_opt(&mut argv, "--lr", t.lr);
    push_opt(&mut argv, "--lora-r", t.lora_r);
    push_opt(&mut argv, "--lora-alpha", t.lora_alpha);
    push_opt(&mut argv, "--batch-size", t.batch_size);
    push_opt(&mut argv, "--seq-len", t.seq_len);
    push_opt(&mut argv, "--target-modules", t.target_modules.as_ref());
    push_opt(&mut argv, "--prompt-template", t.prompt_template.as_ref());
    push_opt(&mut argv, "--system-prompt", t.system_prompt.as_ref());
    push_opt(
        &mut argv,
        "--weights",
        t.train_weights.map(|w| w.name().to_string()),
    );
    push_opt(&mut argv, "--eval-metric", t.eval_metric.as_ref());
    argv
}

/// The model flags every stage shares.
fn model_flags(args: &StudyArgs) -> Vec<String> {
    let mut argv = vec!["--model".into(), args.model.clone()];
    push_opt(&mut argv, "--device", Some(&args.device));
    argv
}

/// Parses `argv` as the command line it is and runs it.
fn run_command(argv: &[String]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    match cli.command {
        Command::Train(a) => super::train::run(*a),
        Command::Compare(a) => super::compare::run(*a),
        _ => unreachable!("the study runs train and compare only"),
    }
}

fn seed_dir(output: &Path, seed: u64) -> PathBuf {
    output.join(format!("seed-{seed}"))
}

/// The adapter of seed `seed` that the compare scores: the run's best/ when --eval-metric
/// picked it (the best evaluation on the valid split by that metric), else the run, whose
/// final adapter/ compare takes.
fn seed_adapter(args: &StudyArgs, seed: u64) -> PathBuf {
    let dir = seed_dir(&args.output, seed);
    let best = dir.join("best");
    match &args.training.eval_metric {
        Some(_) if best.join(tuna_lora::peft::WEIGHTS_FILE).is_file() => best,
        _ => dir,
    }
}

/// The weights file `seed_adapter` names, for the reuse check.
fn seed_weights(args: &StudyArgs, seed: u64) -> PathBuf {
    let adapter = seed_adapter(args, seed);
    match adapter.join(tuna_lora::peft::WEIGHTS_FILE).is_file() {
        true => adapter.join(tuna_lora::peft::WEIGHTS_FILE),
        false => adapter.join("adapter").join(tuna_lora::peft::WEIGHTS_FILE),
    }
}

fn fmt_seconds(s: f64) -> String {
    if s >= 90.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

/// Trains (or resumes, or keeps) the run of training seed `seed`; false when kept.
fn train_seed(args: &StudyArgs, seed: u64) -> anyhow::Result<bool> {
    let dir = seed_dir(&args.output, seed);
    let mut argv: Vec<String> = vec!["tuna".into(), "train".into()];
    argv.extend(model_flags(args));
    argv.extend([
        "--data".into(),
        args.train.display().to_string(),
        "--output".into(),
        dir.display().to_string(),
    ]);
    push_opt(
        &mut argv,
        "--valid",
        args.valid.as_ref().map(|p| p.display()),
    );
    argv.extend(["--seed".into(), seed.to_string()]);
    argv.extend(training_flags(args));
    if tuna_train::checkpoint::list(&dir).pop().is_none() {
        run_command(&argv)?;
        return Ok(true);
    }
    // A run is there: the settings these flags (and -c) resolve to against its config.toml.
    let cli = Cli::try_parse_from(&argv).map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    let Command::Train(train) = cli.command else {
        unreachable!("built as a train command")
    };
    let wanted = super::train::resolve(&train)?;
    let info = tuna_train::run_dir::read(&dir)?;
    let mut stored = info.config.clone();
    stored.output = wanted.output.clone();
    let finished = info.state.as_ref().is_some_and(|s| s.step >= s.total_steps)
        && dir
            .join("adapter")
            .join(tuna_lora::peft::CONFIG_FILE)
            .is_file();
    if stored == wanted && finished {
        return Ok(false);
    }
    let mut same_but_steps = stored.clone();
    same_but_steps.train.max_steps = wanted.train.max_steps;
    if same_but_steps != wanted {
        let (old, new) = (stored.to_toml(), wanted.to_toml());
        let changed: Vec<&str> = new
            .lines()
            .filter(|l| !old.lines().any(|o| o == *l))
            .collect();
        bail!(
            "study: {} was trained with other settings (now: {}); pass the flags it was trained with, or another --output",
            dir.display(),
            changed.join("; ")
        );
    }
    // The same run, unfinished or asked for more steps: it goes on where it stopped.
    let mut resume: Vec<String> = vec!["tuna".into(), "train".into()];
    resume.extend(model_flags(args));
    resume.extend(["--resume".into(), dir.display().to_string()]);
    if wanted.train.max_steps != stored.train.max_steps || args.training.max_steps.is_some() {
        resume.extend(["--max-steps".into(), wanted.train.max_steps.to_string()]);
    }
    run_command(&resume)?;
    Ok(true)
}

/// What the report is made from: the compare command line and the hashes of the adapters
/// and data files.
fn manifest(
    args: &StudyArgs,
    compare_argv: &[String],
    seeds: &[u64],
) -> anyhow::Result<serde_json::Value> {
    let hash = |p: &Path| -> anyhow::Result<String> { Ok(tuna_eval::provenance::sha256_file(p)?) };
    let mut files = serde_json::Map::new();
    for seed in seeds {
        let weights = seed_weights(args, *seed);
        files.insert(weights.display().to_string(), hash(&weights)?.into());
    }
    for path in [Some(&args.train), Some(&args.test), args.valid.as_ref()]
        .into_iter()
        .flatten()
    {
        files.insert(path.display().to_string(), hash(path)?.into());
    }
    Ok(json!({ "compare": compare_argv, "files": files }))
}

pub fn run(args: StudyArgs) -> anyhow::Result<()> {
    if args.output.is_file() {
        bail!(
            "--output {}: is a file; name a directory for the study",
            args.output.display()
        );
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("--output {}: cannot create", args.output.display()))?;
    let seeds: Vec<u64> = (0..args.seeds as u64).map(|i| args.seed + i).collect();
    let started = Instant::now();

    // Stage 1: one adapter per training seed.
    let mut trained = 0;
    for (i, &seed) in seeds.iter().enumerate() {
        let dir = seed_dir(&args.output, seed);
        eprintln!(
            "== study 1/2: training seed {seed} ({} of {}) -> {}",
            i + 1,
            seeds.len(),
            dir.display()
        );
        let seed_started = Instant::now();
        if train_seed(&args, seed)? {
            trained += 1;
            let left = seeds.len() - i - 1;
            if left > 0 {
                eprintln!(
                    "study: seed {seed} took {}; about {} more for the other {left}",
                    fmt_seconds(seed_started.elapsed().as_secs_f64()),
                    fmt_seconds(seed_started.elapsed().as_secs_f64() * left as f64)
                );
            }
        } else {
            eprintln!(
                "study: {} is finished with these settings: kept",
                dir.display()
            );
        }
    }

    // Stage 2: every strategy against the adapters, on the test split.
    let report_dir = args.output.join("report");
    let mut argv: Vec<String> = vec!["tuna".into(), "compare".into()];
    argv.extend(model_flags(&args));
    argv.extend([
        "--data".into(),
        args.test.display().to_string(),
        "--train".into(),
        args.train.display().to_string(),
        "--adapter".into(),
        seed_adapter(&args, seeds[0]).display().to_string(),
        "--output".into(),
        report_dir.display().to_string(),
        "--score-cache".into(),
        args.output.join("scores").display().to_string(),
    ]);
    for &seed in &seeds[1..] {
        argv.extend([
            "--also-adapter".into(),
            seed_adapter(&args, seed).display().to_string(),
        ]);
    }
    if seeds.len() > 1 {
        let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
        argv.extend(["--training-seeds".into(), list.join(",")]);
    }
    push_opt(
        &mut argv,
        "--valid",
        args.valid.as_ref().map(|p| p.display()),
    );
    let c = &args.compare;
    push_opt(&mut argv, "--strategies", c.strategies.as_ref());
    push_opt(&mut argv, "--shots", c.shots);
    push_opt(&mut argv, "--shot-draws", c.shot_draws);
    push_opt(&mut argv, "--limit", c.limit);
    push_opt(&mut argv, "--cot-limit", c.cot_limit);
    push_opt(
        &mut argv,
        "--instructions",
        c.instructions.as_ref().map(|p| p.display()),
    );
    push_opt(&mut argv, "--metric", c.metric.as_ref());
    push_opt(&mut argv, "--labels", c.labels.as_ref());
    push_opt(&mut argv, "--samples", c.samples);
    push_opt(
        &mut argv,
        "--weights",
        c.score_weights.map(|w| w.name().to_string()),
    );
    if c.exclude_leaks {
        argv.push("--exclude-leaks".into());
    }
    let manifest_path = args.output.join(MANIFEST);
    let wanted = manifest(&args, &argv, &seeds)?;
    let stored: Option<serde_json::Value> = std::fs::read_to_string(&manifest_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if trained == 0 && stored.as_ref() == Some(&wanted) && report_dir.join("report.json").is_file()
    {
        eprintln!("== study 2/2: the report is up to date with the adapters, data and flags: kept");
    } else {
        eprintln!(
            "== study 2/2: comparing every strategy with {} adapter{} on {}",
            seeds.len(),
            if seeds.len() == 1 { "" } else { "s" },
            args.test.display()
        );
        run_command(&argv)?;
        tuna_lora::peft::write_atomic(
            &manifest_path,
            (serde_json::to_string_pretty(&wanted)? + "\n").as_bytes(),
        )?;
    }
    eprintln!(
        "study done in {}: {}",
        fmt_seconds(started.elapsed().as_secs_f64()),
        report_dir.join("report.html").display()
    );
    println!("{}", report_dir.display());
    Ok(())
}
