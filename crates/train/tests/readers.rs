//! The trainer's readers of files a user can edit, fed damaged copies of valid ones:
//! trainer_state.json and config.toml either read or fail with an error naming the file, and
//! nothing panics. `TUNA_FUZZ_CASES` sets the cases; the ignored test runs 20,000.

use tuna_testkit::fuzz::{cases, check_reader};
use tuna_train::checkpoint::{self, TrainerState};
use tuna_train::TrainConfig;

fn trainer_state(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoint-3");
    std::fs::create_dir(&dir).unwrap();
    let state = TrainerState {
        step: 3,
        total_steps: 10,
        epoch: 0,
        batch_in_epoch: 3,
        best_eval_loss: Some(1.25),
        best_eval_metric: None,
        best_step: Some(2),
        evals_since_best: 1,
        tokens_seen: 3072,
        train_seconds: 4.5,
        cpu_seconds: 9.0,
        train_examples: Some(40),
        history: tuna_train::chart::History {
            steps: vec![(1, 2.0, 1e-3), (2, 1.5, 9e-4), (3, 1.4, 8e-4)],
            evals: vec![(2, 1.25)],
        },
    };
    let original = serde_json::to_vec_pretty(&state).unwrap();
    checkpoint::read_state(&dir).err(); // (missing file: an error, checked elsewhere)
    check_reader(
        "trainer_state.json",
        &original,
        n,
        "trainer_state.json",
        |bytes| {
            std::fs::write(dir.join(checkpoint::STATE_FILE), bytes).unwrap();
            checkpoint::read_state(&dir)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
}

fn config_toml(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.toml");
    let mut config = TrainConfig::default();
    config.data.train = "data/train.jsonl".into();
    let original = config.to_toml().into_bytes();
    check_reader("config.toml", &original, n, "config.toml", |bytes| {
        std::fs::write(&path, bytes).unwrap();
        // Parsing names the file; range checks (validate) are named by the command, which
        // knows whether a flag or this file set the value.
        TrainConfig::from_toml_file(&path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn damaged_trainer_state_and_config_are_refused_by_name() {
    trainer_state(cases(500));
    config_toml(cases(500));
}

#[test]
#[ignore = "long: 20,000 cases per reader"]
fn damaged_trainer_files_at_length() {
    trainer_state(20_000);
    config_toml(20_000);
}
