//! `tuna train` through the binary: a short real run on SmolLM2 whose adapter generate and
//! eval then use; the resolved config; Ctrl-C writes a resumable checkpoint and exits 130;
//! bad configs and flags name the key.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tuna_testkit::{smollm2_gguf, tiny_model, TinySpec};

use crate::util::{redact, tuna, write_parity};

#[test]
fn a_short_run_on_the_real_model_yields_an_adapter_that_generate_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.jsonl");
    let lines: Vec<String> = std::fs::read_to_string("data/example/sentiment/train.jsonl")
        .unwrap()
        .lines()
        .take(8)
        .map(String::from)
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let model = smollm2_gguf().display().to_string();
    let out = tmp.path().join("run");
    let run = tuna(
        &[
            "train",
            "--model",
            &model,
            "--data",
            data.to_str().unwrap(),
            "--valid-fraction",
            "0.25",
            "--output",
            out.to_str().unwrap(),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--lora-r",
            "4",
            "--eval-every",
            "1",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), out.join("adapter").display().to_string());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"finished"));
    assert_eq!(kinds.iter().filter(|k| **k == "step").count(), 2);
    assert!(kinds.contains(&"eval"));
    let gen = tuna(
        &[
            "generate",
            "--model",
            &model,
            "--adapter",
            out.to_str().unwrap(),
            "--chat",
            "--prompt",
            "hi",
            "--max-new-tokens",
            "4",
        ],
        &[],
    );
    assert_eq!(gen.code, 0, "{}", gen.stderr);
}

#[test]
fn print_config_shows_the_resolved_settings() {
    let run = tuna(
        &[
            "train",
            "-c",
            "configs/smollm2-135m-lora.toml",
            "--lr",
            "0.002",
            "--max-steps",
            "7",
            "--print-config",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("lr = 0.002\n") && run.stdout.contains("max_steps = 7\n"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("train = \"data/example/sentiment/train.jsonl\"\n"));
}

#[test]
fn bad_configs_and_flags_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[lora]\nr = 8\nrank = 4\n").unwrap();
    let run = tuna(
        &["train", "-c", cfg.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        redact(&run.stderr, tmp.path()),
        "error: <TMP>/bad.toml:3: (toml): unknown field `rank`, expected one of `r`, `lora_alpha`, `lora_dropout`, `target_modules`, `layers_to_transform`, `use_rslora`\n\
         hint: configs/smollm2-135m-lora.toml lists every key with its meaning; --print-config shows the resolved config\n"
    );
    // A range error names the flag the user typed, and the key it sets.
    for (flag, value, want) in [
        (
            "--lr",
            "-1",
            "error: --lr: must be a number > 0 (config key optim.lr)\n",
        ),
        (
            "--batch-size",
            "0",
            "error: --batch-size: must be at least 1 (config key batch.batch_size)\n",
        ),
        (
            "--valid-fraction",
            "1.5",
            "error: --valid-fraction: must be in [0, 1) (config key data.valid_fraction)\n",
        ),
        (
            "--seq-len",
            "1",
            "error: --seq-len: must be at least 2 (config key encoding.max_seq_len)\n",
        ),
        (
            "--lora-r",
            "0",
            "error: --lora-r: must be at least 1 (config key lora.r)\n",
        ),
        (
            "--eval-metric",
            "accuracy",
            "error: --eval-metric: accuracy is scored on a valid split, and this run has none (--valid FILE or data.valid_fraction) (config key train.eval_metric)\n",
        ),
    ] {
        let run = tuna(
            &[
                "train",
                "--data",
                "data/example/sentiment/train.jsonl",
                flag,
                value,
                "--print-config",
            ],
            &[],
        );
        assert_eq!(run.code, 1, "{flag}");
        assert_eq!(
            run.stderr,
            format!("{want}hint: run the command with --help for the accepted values\n")
        );
    }
    // The same range error from a -c file names the file and the key.
    std::fs::write(&cfg, "[encoding]\nmax_seq_len = 1\n").unwrap();
    let run = tuna(
        &[
            "train",
            "-c",
            cfg.to_str().unwrap(),
            "--data",
            "data/example/sentiment/train.jsonl",
            "--print-config",
        ],
        &[],
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        redact(&run.stderr, tmp.path()),
        "error: <TMP>/bad.toml: encoding.max_seq_len: must be at least 2\n\
         hint: configs/smollm2-135m-lora.toml lists every key with its meaning; --print-config shows the resolved config\n"
    );
    let run = tuna(
        &[
            "train",
            "--data",
            "data/example/sentiment/train.jsonl",
            "--target-modules",
            "qkv",
            "--print-config",
        ],
        &[],
    );
    assert!(
        run.stderr
            .starts_with("error: lora: target_modules: `qkv` is not a projection of this model"),
        "{}",
        run.stderr
    );
}

#[test]
fn ctrl_c_writes_a_resumable_checkpoint_and_exits_130() {
    let m = tiny_model(TinySpec::default());
    let data = m.path().join("train.jsonl");
    let lines: Vec<String> = (0..64)
        .map(|i| format!("{{\"prompt\": \"the cat {i}\", \"completion\": \"is at sea\"}}"))
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = m.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tuna"))
        .args([
            "train",
            "--model",
            &m.path_str(),
            "--data",
            data.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--max-steps",
            "100000",
            "--batch-size",
            "1",
            "--save-every",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.starts_with("step 3/") {
        line.clear();
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(
        rest.contains("hint: continue with: tuna train --resume"),
        "{rest}"
    );
    let checkpoints: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert!(out
        .join(&checkpoints[0])
        .join("trainer_state.json")
        .is_file());
}

/// prompt/completion lines "is N even" -> yes/no, for the tiny model.
#[test]
fn a_moved_run_resumes_where_it_is_and_failed_runs_leave_nothing() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let model = m.path_str();
    let data = dir.join("train.jsonl");
    write_parity(&data, 0..16);
    let first = dir.join("first");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--model", &model, "--data", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        tuna(&args, &[])
    };
    let r = train(&[
        "--output",
        first.to_str().unwrap(),
        "--max-steps",
        "2",
        "--save-every",
        "1",
        "--lora-r",
        "3",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Moved (or copied) elsewhere, the run goes on there; the old place is not written.
    let moved = dir.join("moved");
    std::fs::rename(&first, &moved).unwrap();
    let r = tuna(
        &[
            "train",
            "--model",
            &model,
            "--resume",
            moved.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!first.exists(), "resume wrote to where the run used to be");
    assert!(
        r.stdout.trim_end().ends_with("moved/adapter"),
        "{}",
        r.stdout
    );

    // --init-adapter fixes the rank: a different --lora-r is refused, not saved wrongly.
    let r = train(&[
        "--output",
        dir.join("init").to_str().unwrap(),
        "--max-steps",
        "1",
        "--init-adapter",
        moved.join("adapter").to_str().unwrap(),
        "--lora-r",
        "3",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("--lora-r: the adapter of --init-adapter fixes its rank"),
        "{}",
        r.stderr
    );
    // Without it, the run (given as its run directory) is the adapter's: rank 3 in its
    // config.toml and in the adapter it saves.
    let init = dir.join("init");
    let r = train(&[
        "--output",
        init.to_str().unwrap(),
        "--max-steps",
        "1",
        "--init-adapter",
        moved.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let config_toml = std::fs::read_to_string(init.join("config.toml")).unwrap();
    assert!(config_toml.contains("\nr = 3\n"), "{config_toml}");
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(init.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["r"], 3);

    // A valid split with nothing to score is an error (its loss would read 0 and "win"),
    // and the run directory that failed is gone.
    let config = dir.join("right.toml");
    std::fs::write(
        &config,
        "[encoding]\ntruncation = \"right\"\nmax_seq_len = 120\n",
    )
    .unwrap();
    let long_valid = dir.join("valid.jsonl");
    let long_prompt = "is it even ".repeat(40);
    std::fs::write(
        &long_valid,
        format!("{{\"prompt\": \"{long_prompt}\", \"completion\": \"no\"}}\n"),
    )
    .unwrap();
    let failed = dir.join("failed");
    let r = train(&[
        "-c",
        config.to_str().unwrap(),
        "--valid",
        long_valid.to_str().unwrap(),
        "--output",
        failed.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "error: valid {}: no example",
            long_valid.display()
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("no example with a target token"),
        "{}",
        r.stderr
    );
    assert!(!failed.exists(), "a failed run leaves no directory");
}

#[test]
fn resume_refuses_a_changed_flag_and_continues_a_finished_run_for_more_steps() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let model = m.path_str();
    let data = dir.join("train.jsonl");
    write_parity(&data, 0..16);
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let r = tuna(
        &[
            "train",
            "--model",
            &model,
            "--data",
            data.to_str().unwrap(),
            "--output",
            run_s,
            "--max-steps",
            "2",
            "--save-every",
            "1",
            "--eval-every",
            "2",
            "--lora-r",
            "3",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A flag that repeats the run's config is accepted; one that changes it is refused (it
    // used to be accepted and ignored).
    let r = tuna(&["train", "--resume", run_s, "--eval-every", "5"], &[]);
    assert_eq!(r.code, 1);
    assert_eq!(
        redact(&r.stderr, dir),
        "error: --eval-every: <TMP>/run/config.toml has train.eval_every = 2, and --resume continues \
         the run as it was configured; leave --eval-every out (or start a new run with --output)\n"
    );
    let r = tuna(&["train", "--resume", run_s, "--max-steps", "1"], &[]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: --max-steps 1: the run's last checkpoint is at step 2 already; pass a larger \
         --max-steps to continue it, or leave --max-steps out\n"
    );
    // A finished run goes on to the new last step, and says how its schedule continues.
    let r = tuna(
        &[
            "train",
            "--resume",
            run_s,
            "--max-steps",
            "4",
            "--lora-r",
            "3",
            "--quiet",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(
            "resume: continuing from step 2 to step 4 (the run was set to 2 steps); the \
             learning-rate schedule is recomputed over 4 steps: lr "
        ),
        "{}",
        r.stderr
    );
    let steps: Vec<usize> = tuna_train::checkpoint::list(&run)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps.last(), Some(&4), "checkpoints {steps:?}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("max_steps = 4\n"), "{config}");
}

#[test]
fn json_reports_the_run_and_an_edited_trainer_state_is_refused() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let data = dir.join("train.jsonl");
    write_parity(&data, 0..8);
    let run = dir.join("run");
    let r = tuna(
        &[
            "train",
            "--model",
            &m.path_str(),
            "--data",
            data.to_str().unwrap(),
            "--output",
            run.to_str().unwrap(),
            "--max-steps",
            "2",
            "--save-every",
            "1",
            "--lora-r",
            "2",
            "--quiet",
            "--json",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["run"], run.display().to_string());
    assert_eq!(v["adapter"], run.join("adapter").display().to_string());
    assert_eq!(v["state"]["step"], 2);
    assert_eq!(v["state"]["total_steps"], 2);

    let state_path = run.join("checkpoint-2/trainer_state.json");
    let good = std::fs::read_to_string(&state_path).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
    for (field, value, why) in [
        ("step", 99, "step is 99, but this is checkpoint-2"),
        ("best_step", 7, "best_step 7 is later than step 2"),
        ("total_steps", 1, "step 2 is past total_steps 1"),
    ] {
        let was = state[field].clone();
        state[field] = value.into();
        std::fs::write(&state_path, state.to_string()).unwrap();
        let r = tuna(
            &[
                "train",
                "--resume",
                run.to_str().unwrap(),
                "--max-steps",
                "3",
            ],
            &[],
        );
        assert_eq!(r.code, 1, "{field}");
        assert_eq!(
            redact(&r.stderr, dir),
            format!(
                "error: <TMP>/run/checkpoint-2/trainer_state.json: {why}; the file was edited or is corrupt, \
                 and resuming from it would not continue the run that wrote it\n"
            )
        );
        state[field] = was;
    }
    std::fs::write(&state_path, good).unwrap();
    let r = tuna(
        &[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--max-steps",
            "3",
            "--quiet",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}
