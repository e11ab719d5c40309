//! Hub ids resolve through a Hugging Face cache laid out on disk (no machine here reaches the
//! hub): HF_HUB_CACHE / HF_HOME locate it and HF_HUB_OFFLINE keeps tuna off the network.

use std::path::Path;

use tuna_testkit::{tiny_vocab_size, write_tiny_model, TinySpec};

use crate::util::{redact, tuna};

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
