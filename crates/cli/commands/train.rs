//! `tuna train`: settings from a TOML file and flags resolved into one config, then the loop,
//! with progress on stderr and every event in the run's metrics.jsonl.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tuna_lora::TargetModules;
use tuna_train::{train_on, TrainConfig, TrainEvent};

use crate::args::TrainArgs;

type Apply<'a> = Box<dyn Fn(&mut TrainConfig) -> anyhow::Result<()> + 'a>;

/// A flag that sets a field of the config: its name, the config key it sets, how it sets it
/// (when the user gave it) and how the field reads. One table, used to overlay the flags on
/// a config, to check them against a resumed run's, to name the flag in a range error, and
/// to show each default in `--help`.
pub struct FlagSetting<'a> {
    pub flag: &'static str,
    pub key: &'static str,
    apply: Option<Apply<'a>>,
    pub value: fn(&TrainConfig) -> String,
}

impl FlagSetting<'_> {
    fn show(&self, c: &TrainConfig) -> String {
        format!("{} = {}", self.key, (self.value)(c))
    }
}

/// Every config flag, in the order `--help` lists them; `apply` is set for those given.
pub fn config_flags(args: &TrainArgs) -> Vec<FlagSetting<'_>> {
    let mut out = Vec::new();
    macro_rules! flag {
        ($name:literal, $key:literal, $value:expr, |$c:ident, $v:ident| $apply:expr, |$s:ident| $show:expr) => {
            out.push(FlagSetting {
                flag: $name,
                key: $key,
                apply: $value.map(|$v| -> Apply<'_> {
                    Box::new(move |$c: &mut TrainConfig| {
                        $apply;
                        Ok(())
                    })
                }),
                value: |$s: &TrainConfig| $show,
            });
        };
    }
    flag!(
        "--model",
        "model",
        args.model.model.clone(),
        |c, v| c.model = v.clone(),
        |c| format!("{:?}", c.model)
    );
    flag!(
        "--data",
        "data.train",
        args.data.clone(),
        |c, v| c.data.train = v.clone(),
        |c| format!("{:?}", c.data.train)
    );
    flag!(
        "--valid",
        "data.valid",
        args.valid.clone(),
        |c, v| c.data.valid = v.clone(),
        |c| format!("{:?}", c.data.valid)
    );
    flag!(
        "--valid-fraction",
        "data.valid_fraction",
        args.valid_fraction,
        |c, v| c.data.valid_fraction = v,
        |c| c.data.valid_fraction.to_string()
    );
    flag!(
        "--output",
        "output",
        args.output.clone(),
        |c, v| c.output = v.clone(),
        |c| format!("{:?}", c.output)
    );
    flag!(
        "--init-adapter",
        "init_adapter",
        args.init_adapter.as_ref().map(|p| p.display().to_string()),
        |c, v| c.init_adapter = v.clone(),
        |c| format!("{:?}", c.init_adapter)
    );
    flag!(
        "--weights",
        "weights",
        args.weights,
        |c, v| c.weights = v.format(),
        |c| toml_value(&c.weights)
    );
    flag!(
        "--train-subset",
        "data.train_subset",
        args.train_subset,
        |c, v| c.data.train_subset = v,
        |c| c.data.train_subset.to_string()
    );
    flag!(
        "--max-steps",
        "train.max_steps",
        args.max_steps,
        |c, v| c.train.max_steps = v,
        |c| c.train.max_steps.to_string()
    );
    flag!(
        "--epochs",
        "train.epochs",
        args.epochs,
        |c, v| {
            c.train.epochs = v;
            c.train.max_steps = 0
        },
        |c| c.train.epochs.to_string()
    );
    flag!(
        "--batch-size",
        "batch.batch_size",
        args.batch_size,
        |c, v| c.batch.batch_size = v,
        |c| c.batch.batch_size.to_string()
    );
    flag!(
        "--grad-accum",
        "train.grad_accum",
        args.grad_accum,
        |c, v| c.train.grad_accum = v,
        |c| c.train.grad_accum.to_string()
    );
    flag!("--lr", "optim.lr", args.lr, |c, v| c.optim.lr = v, |c| c
        .optim
        .lr
        .to_string());
    flag!(
        "--seq-len",
        "encoding.max_seq_len",
        args.seq_len,
        |c, v| c.encoding.max_seq_len = v,
        |c| c.encoding.max_seq_len.to_string()
    );
    flag!(
        "--lora-r",
        "lora.r",
        args.lora_r,
        |c, v| c.lora.r = v,
        |c| c.lora.r.to_string()
    );
    flag!(
        "--lora-alpha",
        "lora.lora_alpha",
        args.lora_alpha,
        |c, v| c.lora.lora_alpha = v,
        |c| c.lora.lora_alpha.to_string()
    );
    out.push(FlagSetting {
        flag: "--target-modules",
        key: "lora.target_modules",
        apply: args.target_modules.as_ref().map(|v| -> Apply<'_> {
            Box::new(move |c: &mut TrainConfig| {
                c.lora.target_modules = TargetModules::parse(v)?;
                Ok(())
            })
        }),
        value: |c| toml_value(&c.lora.target_modules),
    });
    flag!(
        "--eval-every",
        "train.eval_every",
        args.eval_every,
        |c, v| c.train.eval_every = v,
        |c| c.train.eval_every.to_string()
    );
    flag!(
        "--eval-metric",
        "train.eval_metric",
        args.eval_metric.clone(),
        |c, v| c.train.eval_metric = v.clone(),
        |c| format!("{:?}", c.train.eval_metric)
    );
    flag!(
        "--save-every",
        "train.save_every",
        args.save_every,
        |c, v| c.train.save_every = v,
        |c| c.train.save_every.to_string()
    );
    flag!(
        "--seed",
        "train.seed",
        args.seed,
        |c, v| c.train.seed = v,
        |c| c.train.seed.to_string()
    );
    flag!(
        "--prompt-template",
        "encoding.prompt_template",
        args.prompt_template.clone(),
        |c, v| c.encoding.prompt_template = Some(v.clone()),
        |c| format!("{:?}", c.encoding.prompt_template.as_deref().unwrap_or(""))
    );
    flag!(
        "--system-prompt",
        "encoding.system",
        args.system_prompt.clone(),
        |c, v| c.encoding.system = Some(v.clone()),
        |c| format!("{:?}", c.encoding.system.as_deref().unwrap_or(""))
    );
    flag!(
        "--train-shots",
        "encoding.shots",
        args.train_shots,
        |c, v| c.encoding.shots = v,
        |c| c.encoding.shots.to_string()
    );
    out
}

/// `tuna train --help` with each config flag's config key and default, read from
/// `TrainConfig::default()`, so the help and the defaults cannot drift apart.
pub fn help_with_defaults(cli: clap::Command) -> clap::Command {
    use clap::{Args, FromArgMatches};
    let Ok(matches) =
        TrainArgs::augment_args(clap::Command::new("train")).try_get_matches_from(["train"])
    else {
        return cli;
    };
    let Ok(args) = TrainArgs::from_arg_matches(&matches) else {
        return cli;
    };
    let defaults = TrainConfig::default();
    let notes: Vec<(String, String)> = config_flags(&args)
        .iter()
        .map(|s| {
            let value = (s.value)(&defaults);
            let default = match value.as_str() {
                "\"\"" => String::new(),
                v => format!("; default: {v}"),
            };
            let id = s.flag.trim_start_matches("--").replace('-', "_");
            (id, format!("[config: {}{default}]", s.key))
        })
        .collect();
    cli.mut_subcommand("train", |mut train| {
        for (id, note) in notes {
            train = train.mut_arg(id, |arg| {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let long = arg.get_long_help().map(|h| format!("{h} {note}"));
                let arg = arg.help(format!("{help} {note}").trim().to_string());
                match long {
                    Some(long) => arg.long_help(long),
                    None => arg,
                }
            });
        }
        train
    })
}

/// A config value as config.toml spells it.
fn toml_value(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The config flags the user gave.
fn given_flags(args: &TrainArgs) -> Vec<FlagSetting<'_>> {
    config_flags(args)
        .into_iter()
        .filter(|s| s.apply.is_some())
        .collect()
}

/// Applies a given flag (`given_flags` holds only flags with an `apply`).
fn apply(setting: &FlagSetting<'_>, c: &mut TrainConfig) -> anyhow::Result<()> {
    match &setting.apply {
        Some(apply) => apply(c),
        None => Ok(()),
    }
}

/// A range error about a key the user set with a flag names the flag they typed; one from
/// the -c file names the file.
fn name_the_flag(
    err: tuna_train::TrainError,
    given: &[FlagSetting<'_>],
    config_file: Option<&std::path::Path>,
) -> anyhow::Error {
    use tuna_train::TrainError;
    let (field, reason) = match &err {
        TrainError::BadConfig { field, reason, .. } => (field.clone(), reason.clone()),
        TrainError::Lora(tuna_lora::LoraError::BadConfig { field, reason }) => {
            (format!("lora.{field}"), reason.clone())
        }
        _ => return err.into(),
    };
    let typed = given.iter().find(|s| s.key == field);
    match (typed, config_file) {
        (Some(s), _) => tuna_data::DataError::BadOption {
            field: s.flag.into(),
            reason: format!("{reason} (config key {field})"),
        }
        .into(),
        (None, Some(file)) => anyhow::Error::new(TrainError::bad_config(
            &file.display().to_string(),
            &field,
            reason,
        )),
        (None, None) => err.into(),
    }
}

/// The config a run uses: on --resume, the run's own config.toml, where a flag may only
/// repeat what it holds or, for --max-steps, go past the run's last checkpoint; else the -c
/// file (or the defaults) with the flags on top.
pub fn resolve(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    if let Some(run) = &args.resume {
        return resolve_resumed(args, run);
    }
    if args.init_adapter.is_some() {
        for (flag, set) in [
            ("--lora-r", args.lora_r.is_some()),
            ("--lora-alpha", args.lora_alpha.is_some()),
            ("--target-modules", args.target_modules.is_some()),
        ] {
            if set {
                anyhow::bail!("{flag}: the adapter of --init-adapter fixes its rank, alpha and modules (its adapter_config.json); leave {flag} out");
            }
        }
    }
    let mut c = match &args.config {
        Some(path) => TrainConfig::from_toml_file(path)?,
        None => TrainConfig::default(),
    };
    let given = given_flags(args);
    for setting in &given {
        apply(setting, &mut c)?;
    }
    if !c.init_adapter.is_empty() {
        // The run's [lora] is the adapter it starts from, so config.toml says what trained.
        let dir = tuna_train::run_dir::locate_adapter(std::path::Path::new(&c.init_adapter))?.dir;
        let loaded = tuna_lora::peft::load(&dir)?.config;
        c.init_adapter = dir.display().to_string();
        c.lora.r = loaded.r;
        c.lora.lora_alpha = loaded.lora_alpha;
        c.lora.target_modules = loaded.target_modules.clone();
        c.lora.layers_to_transform = loaded.layers_to_transform.clone().unwrap_or_default();
        c.lora.use_rslora = loaded.use_rslora;
    }
    c.validate()
        .map_err(|e| name_the_flag(e, &given, args.config.as_deref()))?;
    Ok(c)
}

fn resolve_resumed(args: &TrainArgs, run: &std::path::Path) -> anyhow::Result<TrainConfig> {
    let path = run.join("config.toml");
    if !path.is_file() {
        anyhow::bail!(
            "{}: missing: --resume takes a run directory that tuna train wrote",
            path.display()
        );
    }
    if args.config.is_some() {
        anyhow::bail!(
            "-c/--config: --resume continues the run with its own {}; leave -c out",
            path.display()
        );
    }
    // The run goes on where it is now, even if it was moved since it started.
    let mut stored = TrainConfig::from_toml_file(&path)?;
    stored.output = run.to_path_buf();
    let mut c = stored.clone();
    let given = given_flags(args);
    for setting in &given {
        let mut probe = c.clone();
        apply(setting, &mut probe)?;
        if setting.flag == "--output" {
            // The same directory by another spelling is the same run.
            let same = std::fs::canonicalize(&probe.output).ok() == std::fs::canonicalize(run).ok();
            if same {
                continue;
            }
        }
        if setting.flag == "--max-steps" {
            continue_for_more_steps(&stored, &probe, run)?;
            c = probe;
            continue;
        }
        if probe != c {
            anyhow::bail!(
                "{}: {} has {}, and --resume continues the run as it was configured; leave {} out (or start a new run with --output){}",
                setting.flag,
                path.display(),
                setting.show(&c),
                setting.flag,
                if setting.flag == "--epochs" { "; --max-steps N continues a run to step N" } else { "" }
            );
        }
    }
    c.validate()
        .map_err(|e| name_the_flag(e, &given, Some(&path)))?;
    Ok(c)
}

/// Checks `--max-steps` on a resumed run and says how the run goes on: to the new last step,
/// with the learning-rate schedule recomputed over it (as HF Trainer does when a resumed
/// run's max_steps grows).
fn continue_for_more_steps(
    stored: &TrainConfig,
    wanted: &TrainConfig,
    run: &std::path::Path,
) -> anyhow::Result<()> {
    let steps = wanted.train.max_steps;
    if steps == stored.train.max_steps {
        return Ok(());
    }
    let at = match tuna_train::checkpoint::list(run).pop() {
        // Read (and checked) before saying how the run goes on from it.
        Some((_, path)) => tuna_train::checkpoint::read_state(&path)?.step,
        None => 0,
    };
    if steps <= at {
        anyhow::bail!(
            "--max-steps {steps}: the run's last checkpoint is at step {at} already; pass a larger --max-steps to continue it, or leave --max-steps out"
        );
    }
    let was = match stored.train.max_steps {
        0 => format!("{} epochs", stored.train.epochs),
        n => format!("{n} steps"),
    };
    let schedule = tuna_train::trainer::schedule_for(wanted, steps);
    eprintln!(
        "resume: continuing from step {at} to step {steps} (the run was set to {was}); the learning-rate schedule is recomputed over {steps} steps: lr {:.3e} at step {}",
        schedule.lr(at + 1),
        at + 1
    );
    Ok(())
}

fn fmt_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The last `n` characters of `text` (a prompt's end is what the model answers).
fn tail(text: &str, n: usize) -> String {
    let chars: Vec<char> = text.trim().chars().collect();
    let start = chars.len().saturating_sub(n);
    let prefix = if start > 0 { "…" } else { "" };
    format!("{prefix}{}", chars[start..].iter().collect::<String>())
}

/// One line per event on stderr.
fn progress_line(e: &TrainEvent) -> String {
    match e {
        TrainEvent::Started {
            total_steps,
            start_step,
            train_examples,
            valid_examples,
            train_target_tokens,
            trainable_params,
            world_size,
            skipped_untrainable,
            truncated,
        } => {
            let mut dropped = String::new();
            if *truncated > 0 {
                dropped.push_str(&format!("; {truncated} truncated to max_seq_len"));
            }
            if skipped_untrainable.0 + skipped_untrainable.1 > 0 {
                dropped.push_str(&format!(
                    "; skipped, no target left after truncation: {} train, {} valid",
                    skipped_untrainable.0, skipped_untrainable.1
                ));
            }
            let ranks = match world_size {
                1 => String::new(),
                n => format!("; data-parallel over {n} ranks (tok/s below are the job's)"),
            };
            format!(
                "training: {train_examples} examples ({train_target_tokens} target tokens), {valid_examples} valid; {trainable_params} trainable parameters; steps {}..{total_steps}{ranks}{dropped}",
                start_step + 1
            )
        }
        TrainEvent::Step {
            step,
            total_steps,
            loss,
            lr,
            grad_norm,
            tokens_per_s,
            elapsed_s,
            ..
        } => {
            let eta = elapsed_s / *step as f64 * (*total_steps - *step) as f64;
            format!(
                "step {step}/{total_steps}  loss {loss:.4}  lr {lr:.2e}  grad-norm {grad_norm:.3}  {tokens_per_s:.0} tok/s  elapsed {}  eta {}",
                fmt_duration(*elapsed_s),
                fmt_duration(eta)
            )
        }
        TrainEvent::Eval {
            step,
            loss,
            perplexity,
            tokens,
            metric,
            metric_value,
            best,
        } => format!(
            "eval @ {step}: loss {loss:.4}  ppl {perplexity:.3}  ({tokens} target tokens){}{}",
            match (metric, metric_value) {
                (Some(m), Some(v)) => format!("  {m} {v:.4}"),
                _ => String::new(),
            },
            if *best { "  best" } else { "" }
        ),
        TrainEvent::Sample {
            step,
            line,
            prompt,
            output,
            reference,
        } => format!(
            "sample @ {step} (valid line {line}): {:?} -> {:?} (reference {:?})",
            tail(prompt, 60),
            output.trim(),
            reference.trim()
        ),
        TrainEvent::Checkpoint { path, .. } => format!("checkpoint: {path}"),
        TrainEvent::Finished {
            adapter,
            best_eval_loss,
            best_eval_metric,
            eval_metric,
            best_step,
            train_seconds,
            stopped_early,
            ..
        } => format!(
            "done{} in {}: adapter {adapter}{}",
            if *stopped_early { " (early stop)" } else { "" },
            fmt_duration(*train_seconds),
            match (best_eval_loss, best_eval_metric, best_step) {
                (Some(l), Some(m), Some(s)) => {
                    format!("; best {eval_metric} {m:.4} at step {s} (eval loss {l:.4} there)")
                }
                (Some(l), None, Some(s)) => format!("; best eval loss {l:.4} at step {s}"),
                _ => String::new(),
            }
        ),
    }
}

/// Progress on stderr: a bar on a terminal (steps, loss, lr, tok/s, ETA; evaluations and
/// checkpoints printed above it), one plain line per event otherwise, nothing with --quiet.
enum Progress {
    Quiet,
    Lines,
    Bar(Option<indicatif::ProgressBar>),
}

impl Progress {
    fn new(quiet: bool) -> Self {
        if quiet {
            Self::Quiet
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Self::Bar(None)
        } else {
            Self::Lines
        }
    }

    fn show(&mut self, e: &TrainEvent) {
        match self {
            Self::Quiet => {}
            Self::Lines => eprintln!("{}", progress_line(e)),
            Self::Bar(bar) => {
                if let TrainEvent::Started {
                    total_steps,
                    start_step,
                    ..
                } = e
                {
                    let pb = indicatif::ProgressBar::new(*total_steps as u64);
                    pb.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} {msg} eta {eta}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    pb.set_position(*start_step as u64);
                    pb.println(progress_line(e));
                    *bar = Some(pb);
                    return;
                }
                let Some(pb) = bar.as_ref() else { return };
                match e {
                    TrainEvent::Step {
                        step,
                        loss,
                        lr,
                        tokens_per_s,
                        ..
                    } => {
                        pb.set_position(*step as u64);
                        pb.set_message(format!(
                            "loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s"
                        ));
                    }
                    TrainEvent::Finished { .. } => {
                        pb.finish_and_clear();
                        eprintln!("{}", progress_line(e));
                    }
                    other => pb.println(progress_line(other)),
                }
            }
        }
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = resolve(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    if let Some(n) = args.nproc.filter(|&n| n > 1) {
        // Every rank checks the flags again; this process only waits for the job.
        let gpu = !config_device_is_cpu(&args.model.device);
        let code = super::distributed::spawn_ranks(n, gpu)?;
        if code != 0 {
            std::process::exit(code);
        }
        return Ok(());
    }
    if args.train_sizes.is_empty() {
        return train_one(&args, config, &mut None);
    }
    let mut sizes = args.train_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.contains(&0) {
        anyhow::bail!("--train-sizes: sizes must be > 0");
    }
    // One engine for every size: MPI cannot start again once finalized.
    let mut comm = None;
    for n in sizes {
        let mut c = config.clone();
        c.data.train_subset = n;
        c.output = config.output.join(format!("size-{n}"));
        eprintln!(
            "== learning curve: {n} training records -> {}",
            c.output.display()
        );
        train_one(&args, c, &mut comm)?;
    }
    Ok(())
}

/// Whether `--device` keeps the run on the CPU (a CPU-only build, or `cpu` asked).
fn config_device_is_cpu(device: &str) -> bool {
    device == "cpu" || !(cfg!(feature = "cuda") || cfg!(feature = "metal"))
}

/// One run; `comm` is the data-parallel engine, made on the first run (after the model
/// is on its device) and kept for the next.
fn train_one(
    args: &TrainArgs,
    config: TrainConfig,
    comm: &mut Option<Box<dyn tuna_train::collective::Collective>>,
) -> anyhow::Result<()> {
    let resume = args.resume.is_some();
    let mut model_args = args.model.clone();
    model_args.model = Some(config.model.clone());
    model_args.device = super::distributed::rank_device(&model_args.device);
    let mut model = model_args.load_as(config.weights)?;

    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    // A second Ctrl-C is left to the default handler (immediate exit).
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to quit now)"
        );
    });
    if comm.is_none() {
        *comm = Some(super::distributed::world(model.model.device())?);
    }
    let comm = comm.as_deref().expect("made above");
    // Rank 0 speaks for the job; the others report only their own failure.
    let mut progress = Progress::new(args.quiet || comm.rank() > 0);
    let mut observe = |e: &TrainEvent| progress.show(e);
    let outcome = match train_on(&mut model, &config, resume, &interrupt, comm, &mut observe) {
        Ok(outcome) => outcome,
        Err(e @ tuna_train::TrainError::Interrupted { .. }) => return Err(e.into()),
        Err(e) => {
            let err = anyhow::Error::from(e);
            super::distributed::fail_rank(comm, &err);
            return Err(err);
        }
    };
    if comm.rank() > 0 {
        return Ok(());
    }
    if args.json {
        let run = serde_json::json!({
            "run": config.output.display().to_string(),
            "adapter": outcome.adapter_dir.display().to_string(),
            "state": outcome.state,
        });
        println!("{run}");
    } else {
        println!("{}", outcome.adapter_dir.display());
    }
    Ok(())
}
