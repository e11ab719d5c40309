//! `tuna eval`: loss and perplexity on held-out data (with the adapter when given); with
//! --strategies or --metric, task metrics too: each prompting strategy on the base model and
//! the tuned adapter, with intervals and the majority-class baseline.

use std::path::Path;

use serde::Serialize;
use tuna_data::{EncodeOptions, FieldNames, PromptFormat, ShotPool};
use tuna_eval::compare::{CompareReport, StrategyRow};
use tuna_eval::{evaluate_loss_with_shots, LossReport};
use tuna_model::Pretrained;
use tuna_train::run_dir::{LocatedAdapter, RunInfo};

use crate::args::EvalArgs;
use crate::task_args::{adapter_facts, StrategyArg};
use tuna_eval::study::{AdapterArm, BoxError, Study, Task};

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let located = args.model.locate_adapter()?;
    // A strategy the user named that scores the adapter cannot run without one: refused
    // before anything loads, not skipped with a note and exit 0.
    if let (None, Some(_)) = (&located, &args.task.strategies) {
        let named = args.task.strategies_or(&[]);
        if let Some(s) = named.iter().find(|s| s.uses_adapter()) {
            let list: Vec<&str> = named.iter().map(|s| s.key()).collect();
            anyhow::bail!(
                "--strategies {}: `{}` scores the fine-tuned model, and no --adapter was given; pass --adapter RUN (a run directory of tuna train) or leave `{}` out",
                list.join(","),
                s.key(),
                s.key()
            );
        }
    }
    let run = located.as_ref().and_then(|l| l.run.clone());
    let (options, fields) = encoding(&args, run.as_ref())?;
    let model = args.encoding.model_spec(&args.model)?.load(args.weights)?;
    // An adapter trained with shots is scored with shots from its own train split.
    let pool = match run.as_ref().filter(|_| options.shots > 0) {
        Some(run) => Some((
            tuna_train::trainer::shot_pool(&model, &run.config)?,
            tuna_eval::study::same_file(&args.data, &run.config.data.train),
        )),
        None => None,
    };
    let loss = evaluate_loss_with_shots(
        &model,
        &args.data,
        &options,
        &fields,
        args.limit,
        args.batch_tokens,
        pool.as_ref().map(|(records, same_file)| ShotPool {
            records,
            same_file: *same_file,
        }),
    )?;
    let wants_task = args.task.strategies.is_some()
        || args.task.metric.is_some()
        || args.task.labels.is_some()
        || args.task.train.is_some();
    let report = match wants_task {
        true => Some(task_metrics(
            &args,
            model,
            located.as_ref(),
            &options,
            &fields,
        )?),
        false => None,
    };
    if args.json {
        let out = JsonOutput {
            loss: &loss,
            examples: report.as_ref().map(|r| r.examples),
            strategies: report.as_ref().map_or_else(Vec::new, |r| {
                r.rows.iter().chain(&r.baseline).map(row_json).collect()
            }),
        };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "{}: loss {:.4}  perplexity {:.3}  ({} target tokens, {} records, {} truncated, {} skipped)",
        args.data.display(),
        loss.loss,
        loss.perplexity,
        loss.tokens,
        loss.records,
        loss.truncated,
        loss.skipped
    );
    if let Some(report) = &report {
        print_task_metrics(report);
    }
    Ok(())
}

/// --json: the loss report's fields, then the task metrics when asked for.
#[derive(Serialize)]
struct JsonOutput<'a> {
    #[serde(flatten)]
    loss: &'a LossReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    examples: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    strategies: Vec<serde_json::Value>,
}

/// The flags' encoding, with what they leave unset taken from the adapter's run (its prompt
/// template, system turn, format, sequence length, truncation, field names and prompt loss),
/// so that the loss is the one training reported. (A run's format or prompt loss is kept
/// unless --format or --train-on-prompt say otherwise: a flag can only turn them on.)
fn encoding(args: &EvalArgs, run: Option<&RunInfo>) -> anyhow::Result<(EncodeOptions, FieldNames)> {
    let mut options = args.encoding.encode_options()?;
    let mut fields = args.encoding.field_names()?;
    // A -c config says how to encode, as a run's config.toml would.
    let Some(run) = run.filter(|_| args.encoding.config.is_none()) else {
        return Ok((options, fields));
    };
    let trained = &run.config.encoding;
    let mut taken = Vec::new();
    if options.prompt_template.is_none() && trained.prompt_template.is_some() {
        options.prompt_template = trained.prompt_template.clone();
        taken.push("prompt template");
    }
    if options.system.is_none() && trained.system.is_some() {
        options.system = trained.system.clone();
        taken.push("system prompt");
    }
    if options.format == PromptFormat::Auto && trained.format != PromptFormat::Auto {
        options.format = trained.format;
        taken.push("format");
    }
    if !options.train_on_prompt && trained.train_on_prompt {
        options.train_on_prompt = true;
        taken.push("prompt loss");
    }
    if args.encoding.seq_len.is_none() && options.max_seq_len != trained.max_seq_len {
        options.max_seq_len = trained.max_seq_len;
        taken.push("sequence length");
    }
    if args.encoding.truncation.is_none() && options.truncation != trained.truncation {
        options.truncation = trained.truncation;
        taken.push("truncation");
    }
    if args.encoding.untrainable.is_none() {
        options.skip_untrainable = trained.skip_untrainable;
    }
    if trained.shots > 0 {
        options.shots = trained.shots;
        options.shot_seed = run.config.train.seed;
        taken.push("training shots");
    }
    if args.encoding.fields.is_empty() && run.config.fields != FieldNames::default() {
        fields = run.config.fields.clone();
        taken.push("field names");
    }
    if !taken.is_empty() {
        eprintln!(
            "as the adapter was trained ({}): {}",
            run.dir.join("config.toml").display(),
            taken.join(", ")
        );
    }
    Ok((options, fields))
}

/// The strategies of --strategies (default: zero-shot, and the adapter when given) on the
/// same file, encoded as the loss was; `loaded` is the model the loss was scored with.
fn task_metrics(
    args: &EvalArgs,
    loaded: Pretrained,
    adapter: Option<&LocatedAdapter>,
    options: &EncodeOptions,
    fields: &FieldNames,
) -> anyhow::Result<CompareReport> {
    let run = adapter.and_then(|a| a.run.as_ref());
    let defaults: &[StrategyArg] = if adapter.is_some() {
        &[StrategyArg::Zero, StrategyArg::Tuned]
    } else {
        &[StrategyArg::Zero]
    };
    // The loss's prompt template words the prompting strategies unless --instruction does.
    let mut task_args = args.task.clone();
    if task_args.instruction.is_none() {
        task_args.instruction = options.prompt_template.clone();
    }
    let task_options = task_args.options(
        &args.data,
        args.limit,
        fields,
        options.system.clone(),
        run,
        defaults,
    )?;
    let task = Task::prepare(&args.data, &task_options)?;
    // The strategies run on the weights the loss ran on (--weights), the prompting ones on
    // the base model, tuned and hybrid on base + adapter.
    let (base, tuned) = match adapter {
        None => (loaded, None),
        Some(_) => {
            let mut base_args = args.model.clone();
            base_args.adapter = None;
            (base_args.load(args.weights)?, Some(loaded))
        }
    };
    let facts = adapter
        .map(|a| adapter_facts(a, tuned.as_ref()))
        .transpose()?;
    let study = Study {
        setup: task_args.setup(&task, &base, tuned.as_ref(), facts, 0),
        cot_limit: task_args.cot_limit,
        sweep: None,
        extra_adapters: Vec::new(),
        curve: Vec::new(),
        main_adapter: None,
        leakage: task.leakage.clone(),
        training_seeds: Vec::new(),
    };
    let mut no_more_adapters = |dir: &Path| -> Result<AdapterArm, BoxError> {
        Err(format!("{}: not loaded", dir.display()).into())
    };
    Ok(study.run(&mut no_more_adapters, &mut |line| eprintln!("{line}"))?)
}

fn row_json(row: &StrategyRow) -> serde_json::Value {
    let mut value = serde_json::to_value(row).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("predictions");
    }
    value
}

fn print_task_metrics(report: &CompareReport) {
    println!(
        "task metrics on {} examples ({}):",
        report.examples,
        match &report.task {
            tuna_eval::task::TaskKind::Labels { labels } => format!("labels {}", labels.join(", ")),
            tuna_eval::task::TaskKind::Sequence => "free-form answers".into(),
        }
    );
    let width = report
        .rows
        .iter()
        .chain(&report.baseline)
        .map(|r| r.title.chars().count())
        .max()
        .unwrap_or(0);
    for row in report.rows.iter().chain(&report.baseline) {
        let metrics: Vec<String> = row
            .metrics
            .iter()
            .map(|m| {
                format!(
                    "{} {:.3} [{:.3}, {:.3}]",
                    m.name, m.estimate.value, m.estimate.low, m.estimate.high
                )
            })
            .collect();
        let flag = if row.collapsed && row.key != "majority" {
            format!(
                "  (one answer on {:.0}% of rows)",
                row.dominant_share * 100.0
            )
        } else {
            String::new()
        };
        println!("  {:width$}  {}{flag}", row.title, metrics.join("  "));
    }
    for note in &report.notes {
        println!("  note: {note}");
    }
}
