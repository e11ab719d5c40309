//! A model ten times the default's size: TinyLlama-1.1B's shape with random weights, written
//! as Q8_0 and Q4_K GGUF files, trained for a few LoRA steps over the file's own blocks
//! (`--weights file`, QLoRA on the CPU). The figures it prints (tok/s, peak RSS) go to
//! BENCHMARKS.md; it asserts only what must hold on any machine: the steps run, the loss
//! falls on the repeated batch, and the model is held near its file's size, not as f32.
//!
//! Set TUNA_BIG_MODEL_DIR to keep the files (e.g. for `tuna bench train --model ...`).

use candle_core::quantized::GgmlDType;
use tuna_testkit::{tinyllama_shape, write_gguf, TINYLLAMA_VOCAB};

use crate::util::tuna;

fn train_over(dtype: GgmlDType, name: &str) {
    let kept = std::env::var_os("TUNA_BIG_MODEL_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().unwrap();
    let dir = kept.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("tinyllama-shape-random.{name}.gguf"));
    if !path.exists() {
        write_gguf(&tinyllama_shape(), &path, "smollm", dtype, TINYLLAMA_VOCAB);
    }
    let file_mib = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
    let model = path.to_str().unwrap();
    let args = [
        "bench",
        "train",
        "--model",
        model,
        "--weights",
        "file",
        "--batch-size",
        "1",
        "--seq-len",
        "64",
        "--warmup",
        "0",
        "--steps",
        "3",
        "--lora-r",
        "8",
        "--json",
    ];
    let run = tuna(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let result: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let losses: Vec<f64> = result["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_f64().unwrap())
        .collect();
    let rss = result["peak_rss_mib"].as_f64().unwrap();
    println!(
        "1.1B Llama shape, {name} file of {file_mib:.0} MiB: {:.1} tok/s training 1x64, peak RSS {rss:.0} MiB, losses {losses:?}",
        result["tokens_per_s"].as_f64().unwrap()
    );
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        losses[2] < losses[0],
        "three steps on one batch lower its loss: {losses:?}"
    );
    // Held as f32 the matrices alone would take 4.1 GiB; the file's blocks, the f32
    // embedding table (250 MiB) and the activations fit well inside twice the file.
    assert!(
        rss < 2.0 * file_mib + 512.0,
        "peak RSS {rss:.0} MiB over a {file_mib:.0} MiB file"
    );
}

#[test]
fn a_1b_llama_shape_trains_over_its_q8_0_file() {
    train_over(GgmlDType::Q8_0, "Q8_0");
}

#[test]
fn a_1b_llama_shape_trains_over_its_q4_k_file() {
    train_over(GgmlDType::Q4K, "Q4_K");
}
