//! The model's readers of user files, fed damaged copies of valid ones (truncated,
//! bit-flipped, extreme lengths, random bytes): each case loads or fails with an error naming
//! the file, and none panics. `TUNA_FUZZ_CASES` sets the cases; the ignored tests run 20,000.

use std::path::Path;

use tuna_model::{LoadOptions, Pretrained};
use tuna_testkit::fuzz::{cases, check_reader};
use tuna_testkit::{tiny_model, write_tiny_gguf, TinySpec};

/// Loads `file` in `dir` after writing `bytes` to it; the error text when it fails.
fn load_after_writing(dir: &Path, model: &Path, file: &str, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(dir.join(file), bytes).unwrap();
    Pretrained::load(&model.display().to_string(), &LoadOptions::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn gguf(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    write_tiny_gguf(&TinySpec::default(), &path, "smollm");
    let original = std::fs::read(&path).unwrap();
    check_reader("gguf", &original, n, "model.gguf", |bytes| {
        load_after_writing(tmp.path(), &path, "model.gguf", bytes)
    });
}

fn hf_dir(file: &str, n: usize) {
    let m = tiny_model(TinySpec::default());
    let original = std::fs::read(m.path().join(file)).unwrap();
    check_reader(file, &original, n, file, |bytes| {
        load_after_writing(m.path(), m.path(), file, bytes)
    });
}

fn adapter(file: &str, n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/peft-fixture");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture.join(f), tmp.path().join(f)).unwrap();
    }
    let original = std::fs::read(fixture.join(file)).unwrap();
    check_reader(file, &original, n, file, |bytes| {
        std::fs::write(tmp.path().join(file), bytes).unwrap();
        tuna_lora::peft::load(tmp.path())
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn damaged_gguf_files_are_refused_by_name() {
    gguf(cases(400));
}

#[test]
fn damaged_safetensors_and_config_json_are_refused_by_name() {
    hf_dir("model.safetensors", cases(300));
    hf_dir("config.json", cases(300));
}

#[test]
fn damaged_adapter_files_are_refused_by_name() {
    adapter("adapter_config.json", cases(400));
    adapter("adapter_model.safetensors", cases(400));
}

#[test]
#[ignore = "long: 20,000 cases per reader"]
fn damaged_model_files_at_length() {
    gguf(20_000);
    hf_dir("model.safetensors", 20_000);
    hf_dir("config.json", 20_000);
    adapter("adapter_config.json", 20_000);
    adapter("adapter_model.safetensors", 20_000);
}
