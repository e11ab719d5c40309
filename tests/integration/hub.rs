//! Hub ids resolve through a Hugging Face cache laid out on disk (no machine here reaches the
//! hub): HF_HUB_CACHE / HF_HOME locate it and HF_HUB_OFFLINE keeps tuna off the network.

use std::path::Path;

use tuna_testkit::{tiny_vocab_size, write_tiny_model, TinySpec};

use crate::util::{redact, tuna, tuna_in};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// hub/models--owner--name/{refs/main, snapshots/<commit>/...}, as huggingface_hub writes it.
fn lay_out_cache(hub: &Path, repo: &str) {
    let folder = hub.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), COMMIT).unwrap();
    let snapshot = folder.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    write_tiny_model(&snapshot, &TinySpec::default(), tiny_vocab_size());
}

fn eval_file(dir: &Path) -> String {
    let data = dir.join("text.jsonl");
    std::fs::write(&data, "{\"text\": \"the cat is in the hat\"}\n").unwrap();
    data.display().to_string()
}

#[test]
fn a_hub_id_loads_from_hf_hub_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub-cache");
    lay_out_cache(&hub, "tuna-test/tiny-llama");
    let data = eval_file(tmp.path());
    let run = tuna(
        &[
            "eval",
            "--model",
            "tuna-test/tiny-llama",
            "--data",
            &data,
            "--json",
        ],
        &[
            ("HF_HUB_CACHE", hub.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HOME", "/nonexistent"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert!(report["loss"].as_f64().unwrap() > 0.0);
}

#[test]
fn hf_home_locates_the_cache_when_hf_hub_cache_is_unset() {
    let tmp = tempfile::tempdir().unwrap();
    lay_out_cache(&tmp.path().join("home/hub"), "tuna-test/tiny-llama");
    let data = eval_file(tmp.path());
    let home = tmp.path().join("home");
    let run = tuna(
        &[
            "eval",
            "--model",
            "tuna-test/tiny-llama",
            "--data",
            &data,
            "--json",
        ],
        &[
            ("HF_HOME", home.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HUB_CACHE", ""),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn a_hub_id_missing_from_the_cache_offline_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub-cache");
    std::fs::create_dir_all(&hub).unwrap();
    let run = tuna(
        &["generate", "--model", "tuna-test/absent", "--prompt", "hi"],
        &[
            ("HF_HUB_CACHE", hub.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        redact(&run.stderr, tmp.path()),
        "error: model tuna-test/absent is not in the local Hugging Face cache (<TMP>/hub-cache) and the hub is offline\n\
         hint: unset HF_HUB_OFFLINE to download it, or pass a local path to --model\n"
    );
}

#[test]
fn an_adapter_hub_id_loads_from_the_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    write_tiny_model(&model, &TinySpec::default(), tiny_vocab_size());
    // An adapter made with tuna, laid out in the cache as the hub would store it.
    let run = tmp.path().join("run");
    let train = tmp.path().join("train.jsonl");
    std::fs::write(
        &train,
        "{\"prompt\": \"the cat\", \"completion\": \"is in the hat\"}\n".repeat(8),
    )
    .unwrap();
    let trained = tuna(
        &[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--output",
            run.to_str().unwrap(),
            "--max-steps",
            "1",
            "--lora-r",
            "2",
            "--eval-every",
            "0",
        ],
        &[],
    );
    assert_eq!(trained.code, 0, "{}", trained.stderr);
    let hub = tmp.path().join("hub-cache");
    let folder = hub.join("models--tuna-test--tiny-adapter");
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), COMMIT).unwrap();
    let snapshot = folder.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(run.join("adapter").join(f), snapshot.join(f)).unwrap();
    }
    let data = eval_file(tmp.path());
    let env = [
        ("HF_HUB_CACHE", hub.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let from_hub = tuna(
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            "tuna-test/tiny-adapter",
            "--data",
            &data,
            "--json",
        ],
        &env,
    );
    assert_eq!(from_hub.code, 0, "{}", from_hub.stderr);
    let local = tuna(
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            run.to_str().unwrap(),
            "--data",
            &data,
            "--json",
        ],
        &[],
    );
    assert_eq!(from_hub.stdout, local.stdout);
    // Not in the cache and offline: a clear error.
    let missing = tuna(
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            "tuna-test/other-adapter",
            "--data",
            &data,
        ],
        &env,
    );
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("tuna-test/other-adapter"),
        "{}",
        missing.stderr
    );
}

#[test]
fn a_path_like_model_or_adapter_that_does_not_exist_is_not_sent_to_the_hub() {
    // `models/` and `runs/` exist here, so `models/SmolLM2` and `runs/nosuch` are mistyped
    // paths, not hub ids: the error says what the directory holds, and names the flag.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("models")).unwrap();
    std::fs::write(
        tmp.path().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        b"",
    )
    .unwrap();
    std::fs::create_dir_all(tmp.path().join("runs/sentiment")).unwrap();
    let hub = tmp.path().join("hub-cache");
    let env = [("HF_HUB_CACHE", hub.to_str().unwrap())];
    let run = tuna_in(
        tmp.path(),
        &["generate", "--model", "models/SmolLM2", "--prompt", "hi"],
        &env,
    );
    assert_eq!((run.code, run.stdout.as_str()), (1, ""));
    assert_eq!(
        run.stderr,
        "error: model not found: models/SmolLM2 (models/ holds: SmolLM2-135M-Instruct.Q4_1.gguf)\n\
         hint: --model takes a .gguf file, a Hugging Face model directory (config.json + *.safetensors) \
         or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct; scripts/fetch-model.sh fetches the \
         default model into models/\n"
    );
    let model = tmp.path().join("tiny");
    std::fs::create_dir_all(&model).unwrap();
    write_tiny_model(&model, &TinySpec::default(), tiny_vocab_size());
    let run = tuna_in(
        tmp.path(),
        &[
            "generate",
            "--model",
            "tiny",
            "--adapter",
            "runs/nosuch",
            "--prompt",
            "hi",
        ],
        &env,
    );
    assert_eq!((run.code, run.stdout.as_str()), (1, ""));
    assert_eq!(
        run.stderr,
        "error: adapter not found: runs/nosuch (runs/ holds: sentiment)\n\
         hint: --adapter takes a run directory of `tuna train` (its adapter/ is used), an adapter \
         directory (adapter_config.json + adapter_model.safetensors, PEFT layout) or a hub id such as \
         owner/name\n"
    );
}

#[test]
fn an_adapter_hub_id_missing_offline_names_the_adapter_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub-cache");
    std::fs::create_dir_all(&hub).unwrap();
    write_tiny_model(tmp.path(), &TinySpec::default(), tiny_vocab_size());
    let run = tuna_in(
        tmp.path(),
        &[
            "generate",
            "--model",
            ".",
            "--adapter",
            "tuna-test/absent",
            "--prompt",
            "hi",
        ],
        &[
            ("HF_HUB_CACHE", hub.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        redact(&run.stderr, tmp.path()),
        "error: adapter tuna-test/absent is not in the local Hugging Face cache (<TMP>/hub-cache) and the hub is offline\n\
         hint: unset HF_HUB_OFFLINE to download it, or pass a local path to --adapter\n"
    );
}
