//! `tuna bench`: speed and memory figures, printed (never asserted by tests).

use std::time::Instant;

use serde_json::json;
use tuna_eval::{generate, SamplingOptions};

use std::process::Command;

use anyhow::{bail, Context};

use tuna_data::{epoch_plan, make_batch, BatchOptions, Dataset, Encoder};

use crate::args::{
    BenchArgs, BenchCommand, BenchDataArgs, BenchGenerateArgs, BenchScoreArgs, BenchTrainArgs,
    ReferenceArgs,
};
use crate::model_args::InferenceWeights;

/// The prompt ../shared/bench/peft_cpu_baseline.py uses, so both tokenize the same text.
const GEN_PROMPT: &str =
    "The history of the Roman Empire spans more than a thousand years, from the founding of the \
city of Rome to the fall of Constantinople. In this short essay, we will look at the main \
reasons why the empire grew so large and why it finally collapsed.";

/// Peak resident set size of this process in MiB (Linux VmHWM).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// `cpu`, `cuda:N` or `metal:N`: where the figures were measured.
fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// "cpu (bf16 weights, amx-bf16)": where a result's figures were measured and how.
fn measured_on(result: &serde_json::Value) -> String {
    let field = |k: &str| result[k].as_str().unwrap_or("?").to_string();
    format!(
        "{} ({} weights, {})",
        field("device"),
        field("weights"),
        field("kernel")
    )
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Generate(a) => bench_generate(a),
        BenchCommand::Data(a) => bench_data(a),
        BenchCommand::Train(a) => bench_train(a),
        BenchCommand::Score(a) => bench_score(a),
    }
}

/// Forward passes over chunks of seeded random tokens, logits and mean next-token loss of
/// every position (what scoring a text costs), median over repetitions.
fn bench_score(args: BenchScoreArgs) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};

    let model = args.model.load(args.weights)?;
    let llama = &model.model;
    let vocab = model.config.vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let chunks: Vec<Vec<u32>> = (0..args.chunks)
        .map(|_| (0..args.seq).map(|_| rng.random_range(0..vocab)).collect())
        .collect();
    let mut tps = Vec::new();
    let mut loss = 0.0;
    for rep in 0..=args.reps {
        let started = Instant::now();
        let mut sum = 0.0;
        for chunk in &chunks {
            let (nll, count) = tuna_eval::loss::sequence_nll(llama, chunk)?;
            sum += nll / count as f64;
        }
        llama.device().synchronize()?;
        let seconds = started.elapsed().as_secs_f64();
        loss = sum / chunks.len() as f64;
        if rep > 0 {
            tps.push((args.chunks * args.seq) as f64 / seconds);
        }
        if !args.json {
            eprintln!(
                "rep {rep} ({}): {:.1} tok/s",
                if rep == 0 { "warm-up" } else { "timed" },
                (args.chunks * args.seq) as f64 / seconds
            );
        }
    }
    let result = json!({
        "bench": "score",
        "model": args.model.model,
        "device": device_name(llama.device()),
        "weights": args.weights.name(),
        "kernel": args.weights.format().kernel(),
        "seq": args.seq,
        "chunks": args.chunks,
        "tokens_per_s": median(tps),
        "loss": loss,
        "threads": rayon::current_num_threads(),
        "peak_rss_mib": peak_rss_mib(),
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "score {} chunks x {} on {}: {:.1} tok/s (median of {}); loss {:.4} (random tokens); peak RSS {:.0} MiB",
            args.chunks,
            args.seq,
            measured_on(&result),
            result["tokens_per_s"].as_f64().unwrap_or(0.0),
            args.reps,
            loss,
            result["peak_rss_mib"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}

/// The reference's training workload: LoRA on all 7 projections, AdamW, seeded random-token
/// batches whose every next token is a target; warm-up steps, then timed steps.
fn bench_train(args: BenchTrainArgs) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    use tuna_data::{Batch, Example};
    use tuna_train::optim::{AdamW, AdamWParams};

    if args.grad_accum > 1 && args.reference.reference_python.is_some() {
        anyhow::bail!("--grad-accum: the PyTorch reference runs one micro-batch per step; leave --grad-accum out to compare with it");
    }
    // The references run first (a child inherits the parent's RSS high-water mark on
    // Linux): PyTorch fp32, then under bf16 autocast, the faster of which is the peer.
    let (batch_s, seq_s, steps_s, warmup_s) = (
        args.batch.to_string(),
        args.seq.to_string(),
        args.steps.to_string(),
        args.warmup.to_string(),
    );
    let mode = [
        "--mode", "train", "--batch", &batch_s, "--seq", &seq_s, "--steps", &steps_s, "--warmup",
        &warmup_s,
    ];
    let reference = run_reference(&args.reference, &args.model.model, &mode)?;
    let autocast: Vec<&str> = mode.iter().copied().chain(["--autocast", "bf16"]).collect();
    let reference_bf16 = match reference {
        Some(_) => run_reference(&args.reference, &args.model.model, &autocast)?,
        None => None,
    };
    let mut model = args.model.load(args.weights)?;
    let lora = tuna_lora::LoraConfig {
        r: args.lora_r,
        lora_alpha: args.lora_alpha,
        ..Default::default()
    };
    model.model.attach_lora(&lora, 0)?;
    model.model.set_training(true);
    let vars: Vec<candle_core::Var> = model
        .model
        .lora_vars()
        .into_iter()
        .flat_map(|(_, a, b)| [a, b])
        .collect();
    let trainable: usize = vars.iter().map(|v| v.elem_count()).sum();
    let mut optimizer = AdamW::new(vars.clone(), AdamWParams::default())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let vocab = model.config.vocab_size as u32;
    let mut micro_batch = |first_line: usize| {
        let examples: Vec<Example> = (0..args.batch)
            .map(|i| {
                let ids: Vec<u32> = (0..=args.seq).map(|_| rng.random_range(0..vocab)).collect();
                let mut trained = vec![true; ids.len()];
                trained[0] = false;
                Example {
                    line: first_line + i,
                    ids,
                    trained,
                    truncated: false,
                }
            })
            .collect();
        let rows: Vec<Vec<&Example>> = examples.iter().map(|x| vec![x]).collect();
        Batch::from_rows(&rows, 0, 1)
    };
    let micro: Vec<Batch> = (0..args.grad_accum)
        .map(|k| micro_batch(1 + k * args.batch))
        .collect();
    // The loop's own step: accumulation, clipping as training's default, the update.
    let max_grad_norm = tuna_train::TrainConfig::default().optim.max_grad_norm;
    let tokens = args.batch * args.seq * args.grad_accum;
    let (mut fwd, mut bwd, mut opt, mut tps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut losses = Vec::new();
    for step in 0..args.warmup + args.steps {
        let done = tuna_train::trainer::optimizer_step(
            &model,
            &vars,
            &mut optimizer,
            &micro,
            step as u64,
            max_grad_norm,
            2e-4,
            &tuna_train::collective::Single,
        )?;
        let (f, b, o) = (done.forward_s, done.backward_s, done.optimizer_s);
        let loss = done.loss;
        losses.push(loss);
        let timed = step >= args.warmup;
        if !args.json {
            eprintln!(
                "step {step} ({}): loss {:.4}  {:.3} s (fwd {f:.3} bwd {b:.3} opt {o:.3})  {:.1} tok/s",
                if timed { "timed" } else { "warm-up" },
                loss,
                f + b + o,
                tokens as f64 / (f + b + o)
            );
        }
        if timed {
            fwd.push(f);
            bwd.push(b);
            opt.push(o);
            tps.push(tokens as f64 / (f + b + o));
        }
    }
    let mut result = json!({
        "bench": "train",
        "model": args.model.model,
        "device": device_name(model.model.device()),
        "dtype": format!("{:?}", model.model.dtype()).to_lowercase(),
        "weights": args.weights.name(),
        "kernel": args.weights.format().kernel(),
        "batch": args.batch,
        "seq": args.seq,
        "grad_accum": args.grad_accum,
        "trainable_params": trainable,
        "steps": args.steps,
        "tokens_per_s": median(tps),
        "fwd_s": median(fwd),
        "bwd_s": median(bwd),
        "opt_s": median(opt),
        "losses": losses,
        "threads": rayon::current_num_threads(),
        "peak_rss_mib": peak_rss_mib(),
    });
    if let Some(reference) = reference {
        attach_reference(&mut result, &reference);
    }
    if let Some(bf16) = reference_bf16 {
        let theirs = bf16["tokens_per_sec_median"].as_f64().unwrap_or(f64::NAN);
        let ours = result["tokens_per_s"].as_f64().unwrap_or(0.0);
        let fp32 = result["reference"]["tokens_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        result["reference_bf16_autocast"] = json!({
            "tokens_per_s": theirs,
            "peak_rss_mib": bf16["peak_rss_mib"],
        });
        result["speedup_vs_faster_reference"] = json!(ours / theirs.max(fp32));
    }
    if args.json {
        println!("{result}");
    } else {
        println!(
            "train {}x{}{} on {}: {:.1} tok/s (median of {}); fwd {:.2} s, bwd {:.2} s, opt {:.3} s per step; peak RSS {:.0} MiB; {} trainable parameters",
            args.batch,
            args.seq,
            match args.grad_accum {
                1 => String::new(),
                n => format!(" (x{n} micro-batches a step)"),
            },
            measured_on(&result),
            result["tokens_per_s"].as_f64().unwrap_or(0.0),
            args.steps,
            result["fwd_s"].as_f64().unwrap_or(0.0),
            result["bwd_s"].as_f64().unwrap_or(0.0),
            result["opt_s"].as_f64().unwrap_or(0.0),
            result["peak_rss_mib"].as_f64().unwrap_or(0.0),
            trainable
        );
        print_reference(&result);
        if let Some(speedup) = result["speedup_vs_faster_reference"].as_f64() {
            let r = &result["reference_bf16_autocast"];
            println!(
                "reference under bf16 autocast: {:.1} tok/s, peak RSS {:.0} MiB; tuna / the faster reference = {speedup:.2}x speed",
                r["tokens_per_s"].as_f64().unwrap_or(0.0),
                r["peak_rss_mib"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

/// Read + parse + encode (chat template, masks) + one epoch of batches, timed end to end.
fn bench_data(args: BenchDataArgs) -> anyhow::Result<()> {
    let model = args.encoding.model_spec(&args.model)?.load_text()?;
    let options = args.encoding.encode_options()?;
    let fields = args.encoding.field_names()?;
    let encoder = Encoder::from_parts(&model.tokenizer, model.chat_template.as_ref(), &options)?;
    let batch_options = BatchOptions {
        batch_size: args.batch_size,
        ..BatchOptions::default()
    };
    let pad = model
        .tokenizer
        .special
        .pad
        .as_ref()
        .map_or(0, |(id, _)| *id);
    let (mut rates, mut tokens, mut records, mut batches) = (Vec::new(), 0, 0, 0);
    for rep in 0..args.reps {
        let started = Instant::now();
        let data = Dataset::load(&args.file, &encoder, &fields)?;
        let plan = epoch_plan(&data.examples, &batch_options, 0, rep as u64);
        let mut n_targets = 0;
        for rows in &plan {
            n_targets +=
                make_batch(&data.examples, rows, pad, batch_options.pad_to_multiple_of).n_targets;
        }
        let seconds = started.elapsed().as_secs_f64();
        tokens = data.tokens();
        records = data.records;
        batches = plan.len();
        rates.push(tokens as f64 / seconds);
        if !args.json {
            eprintln!("rep {rep}: {records} records, {tokens} tokens ({n_targets} targets), {batches} batches in {seconds:.3} s");
        }
    }
    let result = json!({
        "bench": "data",
        "file": args.file.display().to_string(),
        "records": records,
        "tokens": tokens,
        "batches": batches,
        "tokens_per_s": median(rates),
        "threads": rayon::current_num_threads(),
        "peak_rss_mib": peak_rss_mib(),
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "data: {:.0} tokens/s (read + encode + batch, median of {}); {} records, {} tokens; peak RSS {:.0} MiB",
            result["tokens_per_s"].as_f64().unwrap_or(0.0),
            args.reps,
            records,
            tokens,
            result["peak_rss_mib"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

fn bench_generate(args: BenchGenerateArgs) -> anyhow::Result<()> {
    // The reference runs first: a child inherits the parent's RSS high-water mark on Linux.
    let reference = run_reference(
        &args.reference,
        &args.model.model,
        &[
            "--mode",
            "generate",
            "--prompt-tokens",
            &args.prompt_tokens.to_string(),
            "--new-tokens",
            &args.new_tokens.to_string(),
            "--gen-reps",
            &args.reps.to_string(),
        ],
    )?;
    let weights = InferenceWeights::for_generation(args.weights, &args.model.model);
    let load_started = Instant::now();
    let model = args.model.load(weights)?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let mut ids = model.tokenizer.encode(GEN_PROMPT, true)?;
    ids.truncate(args.prompt_tokens);
    let options = SamplingOptions {
        max_new_tokens: args.new_tokens,
        ignore_eos: true,
        ..SamplingOptions::default()
    };
    let (mut totals, mut prompt_tps, mut decode_tps) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..=args.reps {
        let started = Instant::now();
        let (_, stats) = generate(&model, &ids, &options, |_| {})?;
        let total = started.elapsed().as_secs_f64();
        if rep == 0 {
            continue; // warm-up
        }
        totals.push(stats.generated_tokens as f64 / total);
        prompt_tps.push(stats.prompt_tokens_per_second());
        decode_tps.push(stats.generation_tokens_per_second());
        if !args.json {
            eprintln!(
                "rep {rep}: {} new tokens in {total:.3} s = {:.1} tok/s (prompt {:.1} tok/s, decode {:.1} tok/s)",
                stats.generated_tokens,
                stats.generated_tokens as f64 / total,
                stats.prompt_tokens_per_second(),
                stats.generation_tokens_per_second()
            );
        }
    }
    let result = json!({
        "bench": "generate",
        "model": args.model.model,
        "device": device_name(model.model.device()),
        // The compact forms are CPU kernels: a GPU runs the dense weights.
        "weights": if model.model.device().is_cpu() {
            weights.name()
        } else {
            format!("dense {:?}", model.model.dtype()).to_lowercase()
        },
        "prompt_tokens": ids.len(),
        "new_tokens": args.new_tokens,
        "reps": args.reps,
        "tokens_per_s": median(totals),
        "prompt_tokens_per_s": median(prompt_tps),
        "decode_tokens_per_s": median(decode_tps),
        "load_seconds": load_seconds,
        "peak_rss_mib": peak_rss_mib(),
    });
    let mut result = result;
    if let Some(reference) = reference {
        attach_reference(&mut result, &reference);
    }
    if args.json {
        println!("{result}");
    } else {
        println!(
            "generate on {} ({} weights): {:.1} tok/s (new tokens / total time, median of {}); prompt {:.1} tok/s; decode {:.1} tok/s; peak RSS {:.0} MiB; load {:.2} s",
            result["device"].as_str().unwrap_or("?"),
            result["weights"].as_str().unwrap_or("?"),
            result["tokens_per_s"].as_f64().unwrap_or(0.0),
            args.reps,
            result["prompt_tokens_per_s"].as_f64().unwrap_or(0.0),
            result["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
            result["peak_rss_mib"].as_f64().unwrap_or(0.0),
            load_seconds
        );
        print_reference(&result);
    }
    Ok(())
}

/// Puts the reference's figures beside ours: `reference`, and the speed and memory ratios.
fn attach_reference(result: &mut serde_json::Value, reference: &serde_json::Value) {
    let theirs = reference["tokens_per_sec_median"]
        .as_f64()
        .unwrap_or(f64::NAN);
    result["reference"] = json!({
        "tokens_per_s": theirs,
        "peak_rss_mib": reference["peak_rss_mib"],
        "fwd_s": reference["fwd_sec"]["median"],
        "bwd_s": reference["bwd_sec"]["median"],
        "opt_s": reference["opt_sec"]["median"],
        "versions": reference["versions"],
    });
    result["speedup_vs_reference"] = json!(result["tokens_per_s"].as_f64().unwrap_or(0.0) / theirs);
    result["rss_vs_reference"] = json!(
        result["peak_rss_mib"].as_f64().unwrap_or(0.0)
            / reference["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
    );
}

fn print_reference(result: &serde_json::Value) {
    if let Some(speedup) = result["speedup_vs_reference"].as_f64() {
        println!(
            "reference (PyTorch+PEFT): {:.1} tok/s, peak RSS {:.0} MiB; tuna / reference = {speedup:.2}x speed, {:.2}x memory",
            result["reference"]["tokens_per_s"].as_f64().unwrap_or(0.0),
            result["reference"]["peak_rss_mib"].as_f64().unwrap_or(0.0),
            result["rss_vs_reference"].as_f64().unwrap_or(0.0)
        );
    }
}

/// Runs ../shared/bench/peft_cpu_baseline.py on the same model and threads when
/// --reference-python is given; returns the JSON object its last stdout line holds.
fn run_reference(
    reference: &ReferenceArgs,
    model: &str,
    mode_args: &[&str],
) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(python) = &reference.reference_python else {
        return Ok(None);
    };
    if !model.ends_with(".gguf") {
        bail!("--reference-python: the reference script loads GGUF files only, and --model is {model}");
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!(
        "running the reference: {} {} (this takes a minute)",
        python.display(),
        reference.reference_script.display()
    );
    let output = Command::new(python)
        .arg(&reference.reference_script)
        .args(["--gguf", model, "--threads", &threads.to_string()])
        .args(mode_args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!("the reference script failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let mut result: serde_json::Value = serde_json::from_str(last)
        .with_context(|| format!("the reference's last line is not JSON: {last}"))?;
    // The script's own high-water mark, reset after loading (VmHWM after clear_refs), when it
    // has one; ru_maxrss of a child starts at its parent's RSS at fork.
    if let Some(phase) = result
        .get("peak_rss_phase_mib")
        .filter(|v| v.is_number())
        .cloned()
    {
        result["peak_rss_mib"] = phase;
    }
    Ok(Some(result))
}
