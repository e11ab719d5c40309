//! `tuna data validate` and `tuna data preview`: see what training will see.

use std::io::IsTerminal;
use std::path::Path;

use serde_json::json;
use tuna_data::{
    jsonl::read_jsonl_lenient, record::parse_records, Dataset, Encoded, Encoder, Example,
};
use tuna_model::ModelText;

use crate::args::{DataCommand, DataPreviewArgs, DataValidateArgs};

pub fn run(command: DataCommand) -> anyhow::Result<()> {
    match command {
        DataCommand::Validate(a) => validate(a),
        DataCommand::Preview(a) => preview(a),
    }
}

fn percentile(sorted: &[usize], p: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn validate(args: DataValidateArgs) -> anyhow::Result<()> {
    let model = args.encoding.model_spec(&args.model)?.load_text()?;
    let options = args.encoding.encode_options()?;
    let fields = args.encoding.field_names()?;
    let encoder = Encoder::from_parts(&model.tokenizer, model.chat_template.as_ref(), &options)?;
    let mut failed = 0;
    let mut reports = Vec::new();
    for path in &args.files {
        match Dataset::load(path, &encoder, &fields) {
            Ok(data) => {
                let report = summarize(&data);
                if !args.json {
                    print_summary(path, &report);
                }
                reports.push(report);
            }
            Err(err) => {
                failed += 1;
                eprintln!("{err}");
                reports.push(json!({"file": path.display().to_string(), "error": err.to_string(), "errors": err.each()}));
            }
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(reports));
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} files have errors (listed above)",
            args.files.len()
        );
    }
    Ok(())
}

fn summarize(data: &Dataset) -> serde_json::Value {
    let mut lengths: Vec<usize> = data.examples.iter().map(|x| x.ids.len()).collect();
    lengths.sort_unstable();
    let tokens = data.tokens();
    let trained = data.trained_tokens();
    json!({
        "file": data.path.display().to_string(),
        "records": data.records,
        "kinds": data.kinds.iter().map(|(k, n)| (k.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "examples": data.examples.len(),
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_fraction": if tokens > 0 { trained as f64 / tokens as f64 } else { 0.0 },
        "length_p50": percentile(&lengths, 50.0),
        "length_p95": percentile(&lengths, 95.0),
        "length_max": lengths.last().copied().unwrap_or(0),
        "truncated": data.truncated,
        "skipped_untrainable": data.skipped_untrainable,
        "duplicates": data.duplicates,
        "unknown_fields": data.unknown_fields,
    })
}

fn print_summary(path: &Path, r: &serde_json::Value) {
    let kinds: Vec<String> = r["kinds"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect())
        .unwrap_or_default();
    println!("{}", path.display());
    println!("  records: {} ({})", r["records"], kinds.join(", "));
    println!(
        "  tokens per example: p50 {}, p95 {}, max {}",
        r["length_p50"], r["length_p95"], r["length_max"]
    );
    println!(
        "  trained on: {} of {} tokens ({:.1}%)",
        r["trained_tokens"],
        r["tokens"],
        100.0 * r["trained_fraction"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  truncated: {}, skipped (no target left): {}, duplicates: {}",
        r["truncated"], r["skipped_untrainable"], r["duplicates"]
    );
    if let Some(unknown) = r["unknown_fields"].as_object().filter(|m| !m.is_empty()) {
        let list: Vec<String> = unknown
            .iter()
            .map(|(k, line)| format!("{k} (first on line {line})"))
            .collect();
        println!("  ignored fields: {}", list.join(", "));
    }
}

/// How trained spans are marked: color on a terminal, brackets otherwise or with NO_COLOR.
struct Marks {
    open: &'static str,
    close: &'static str,
}

impl Marks {
    fn detect() -> Self {
        let color = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        if color {
            Self {
                open: "\x1b[1;32m",
                close: "\x1b[0m",
            }
        } else {
            Self {
                open: "[[",
                close: "]]",
            }
        }
    }
}

/// Runs of equal `trained` flags: (trained, ids).
fn runs(x: &Example) -> Vec<(bool, Vec<u32>)> {
    let mut out: Vec<(bool, Vec<u32>)> = Vec::new();
    for (&id, &t) in x.ids.iter().zip(&x.trained) {
        match out.last_mut() {
            Some((flag, ids)) if *flag == t => ids.push(id),
            _ => out.push((t, vec![id])),
        }
    }
    out
}

fn render(model: &ModelText, x: &Example, marks: &Marks) -> anyhow::Result<(String, String)> {
    let (mut text, mut ids) = (String::new(), Vec::new());
    for (trained, run) in runs(x) {
        let piece = model.tokenizer.decode(&run, false)?;
        let nums: Vec<String> = run.iter().map(u32::to_string).collect();
        if trained {
            text.push_str(&format!("{}{piece}{}", marks.open, marks.close));
            ids.push(format!("{}{}{}", marks.open, nums.join(" "), marks.close));
        } else {
            text.push_str(&piece);
            ids.push(nums.join(" "));
        }
    }
    Ok((text, ids.join(" ")))
}

fn preview(args: DataPreviewArgs) -> anyhow::Result<()> {
    let model = args.encoding.model_spec(&args.model)?.load_text()?;
    let options = args.encoding.encode_options()?;
    let fields = args.encoding.field_names()?;
    let encoder = Encoder::from_parts(&model.tokenizer, model.chat_template.as_ref(), &options)?;
    // Only the records shown are parsed: a bad line further down is not this command's news.
    let (mut lines, mut errors) = read_jsonl_lenient(&args.file)?;
    tuna_data::jsonl::keep_first(&mut lines, &mut errors, args.n);
    tuna_data::error::collect_errors(errors)?;
    let parsed = parse_records(&args.file, &lines, &fields)?;
    let marks = Marks::detect();
    let mut shown = Vec::new();
    for r in parsed.records.iter().take(args.n) {
        let kind = r.record.kind().name();
        let examples = match encoder.encode(&args.file, r)? {
            Encoded::SkippedUntrainable { .. } if args.json => {
                shown.push(json!({"line": r.line, "kind": kind, "skipped": "truncation left no target token"}));
                continue;
            }
            Encoded::SkippedUntrainable { .. } => {
                println!(
                    "── line {} ({kind}): skipped, truncation left no target token\n",
                    r.line
                );
                continue;
            }
            other => other.into_examples(),
        };
        for x in examples {
            if args.json {
                let mut pieces = Vec::new();
                for (trained, ids) in runs(&x) {
                    let text = model.tokenizer.decode(&ids, false)?;
                    pieces.push(json!({"trained": trained, "text": text, "ids": ids}));
                }
                shown.push(json!({
                    "line": r.line, "kind": kind, "tokens": x.ids.len(),
                    "trained": x.n_trained(), "truncated": x.truncated, "runs": pieces,
                }));
                continue;
            }
            println!(
                "── line {} ({kind}, {} tokens, {} trained{})",
                r.line,
                x.ids.len(),
                x.n_trained(),
                if x.truncated { ", truncated" } else { "" }
            );
            let (text, ids) = render(&model, &x, &marks)?;
            println!("{text}");
            println!("ids: {ids}\n");
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(shown));
    }
    Ok(())
}
