//! The training loop on a tiny model: the eval loss falls, a resumed run continues exactly,
//! gradient accumulation equals one big batch, a killed checkpoint write leaves the previous
//! ones intact, and bad configs name their key.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tuna_data::{make_batch, Dataset, EncodeOptions, Encoder, FieldNames};
use tuna_model::{LoadOptions, Pretrained};
use tuna_testkit::{tiny_model, TinyModel, TinySpec};
use tuna_train::trainer::accumulate_gradients;
use tuna_train::{checkpoint, train, TrainConfig, TrainError, TrainEvent};

fn write_data(dir: &Path) -> (String, String) {
    let words = ["cat", "sea", "hat", "mat", "rest", "tin"];
    let mut train = String::new();
    for i in 0..48 {
        let w = words[i % words.len()];
        train.push_str(&format!(
            "{{\"prompt\": \"the {w} {i}\", \"completion\": \"is {w}\"}}\n"
        ));
    }
    let valid: String = words
        .iter()
        .map(|w| format!("{{\"prompt\": \"the {w} 99\", \"completion\": \"is {w}\"}}\n"))
        .collect();
    let (t, v) = (dir.join("train.jsonl"), dir.join("valid.jsonl"));
    std::fs::write(&t, train).unwrap();
    std::fs::write(&v, valid).unwrap();
    (t.display().to_string(), v.display().to_string())
}

fn config(m: &TinyModel, out: &str, steps: usize) -> TrainConfig {
    let (train, valid) = write_data(m.path());
    let mut c = TrainConfig {
        model: m.path_str(),
        output: m.path().join(out),
        ..Default::default()
    };
    c.data.train = train.into();
    c.data.valid = valid.into();
    c.lora.r = 4;
    c.lora.lora_alpha = 8.0;
    c.optim.lr = 5e-3;
    c.train.max_steps = steps;
    c.train.eval_every = 5;
    c.train.save_every = 5;
    c.batch.batch_size = 4;
    c
}

fn load(m: &TinyModel) -> Pretrained {
    Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap()
}

/// Runs `config`, returning the per-step losses and eval losses.
fn run(
    m: &TinyModel,
    c: &TrainConfig,
    resume: bool,
    stop_at: Option<usize>,
) -> (Vec<f64>, Vec<f64>, Result<(), TrainError>) {
    let mut model = load(m);
    let interrupt = AtomicBool::new(false);
    let (mut losses, mut evals) = (Vec::new(), Vec::new());
    let result = train(&mut model, c, resume, &interrupt, &mut |e| match e {
        TrainEvent::Step { step, loss, .. } => {
            losses.push(*loss);
            if Some(*step) == stop_at {
                interrupt.store(true, Ordering::SeqCst);
            }
        }
        TrainEvent::Eval { loss, .. } => evals.push(*loss),
        _ => {}
    });
    (losses, evals, result.map(|_| ()))
}

#[test]
fn eval_loss_falls_and_the_run_directory_tells_the_story() {
    let m = tiny_model(TinySpec::default());
    let c = config(&m, "run", 30);
    let (losses, evals, result) = run(&m, &c, false, None);
    result.unwrap();
    assert_eq!(losses.len(), 30);
    assert!(
        evals.last().unwrap() < &(evals[0] * 0.8),
        "eval losses {evals:?}"
    );
    let dir = m.path().join("run");
    for f in [
        "config.toml",
        "chart.svg",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "best/adapter_model.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert_eq!(checkpoint::list(&dir).len(), 2, "keep_last 2");
    let resolved = TrainConfig::from_toml_file(&dir.join("config.toml")).unwrap();
    assert_eq!(resolved, c);
    // The adapter changes the model.
    let mut tuned = load(&m);
    tuned
        .model
        .load_lora(&tuna_lora::peft::load(&dir.join("adapter")).unwrap())
        .unwrap();
    // A second run into the same directory is refused rather than mixing runs.
    let (_, _, again) = run(&m, &c, false, None);
    assert!(matches!(again, Err(TrainError::RunExists { .. })));
}

#[test]
fn a_resumed_run_continues_exactly() {
    let m = tiny_model(TinySpec::default());
    let whole = config(&m, "whole", 20);
    let (all, _, r) = run(&m, &whole, false, None);
    r.unwrap();
    let split = config(&m, "split", 20);
    let (first, _, r) = run(&m, &split, false, Some(10));
    assert!(
        matches!(r, Err(TrainError::Interrupted { step: 10, .. })),
        "{:?}",
        r.err()
    );
    let (rest, _, r) = run(&m, &split, true, None);
    r.unwrap();
    let joined: Vec<f64> = first.into_iter().chain(rest).collect();
    assert_eq!(joined.len(), all.len());
    for (i, (a, b)) in all.iter().zip(&joined).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * a.abs().max(1.0),
            "step {}: {a} vs {b}",
            i + 1
        );
    }
    // The resumed run's chart shows the whole run (its history is in the checkpoint), the
    // same as the run made in one go; the state records the training examples.
    let (whole_dir, split_dir) = (m.path().join("whole"), m.path().join("split"));
    let chart = |dir: &Path| std::fs::read_to_string(dir.join("chart.svg")).unwrap();
    assert_eq!(chart(&split_dir), chart(&whole_dir));
    let (_, last) = checkpoint::list(&split_dir).pop().unwrap();
    let state = checkpoint::read_state(&last).unwrap();
    assert_eq!(state.history.steps.len(), 20);
    assert_eq!(state.history.evals.len(), 4);
    let info = tuna_train::run_dir::read(&split_dir).unwrap();
    assert!(info.train_examples().is_some_and(|n| n > 0));
    // metrics.jsonl holds every step once: the first part's, then the resumed part's.
    let metrics = std::fs::read_to_string(split_dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=20).collect::<Vec<u64>>());
}

#[test]
fn a_failed_new_run_leaves_no_directory_and_a_file_is_no_run_directory() {
    let m = tiny_model(TinySpec::default());
    let mut c = config(&m, "nothing", 2);
    std::fs::write(m.path().join("empty.jsonl"), "{\"text\": \"\"}\n").unwrap();
    c.data.train = m.path().join("empty.jsonl");
    let (_, _, r) = run(&m, &c, false, None);
    assert!(r.is_err());
    assert!(
        !m.path().join("nothing").exists(),
        "a failed run left its directory"
    );
    // An empty directory the user made stays, empty.
    std::fs::create_dir(m.path().join("made")).unwrap();
    c.output = m.path().join("made");
    let (_, _, r) = run(&m, &c, false, None);
    assert!(r.is_err());
    assert_eq!(std::fs::read_dir(m.path().join("made")).unwrap().count(), 0);
    std::fs::write(m.path().join("file"), "x").unwrap();
    c.output = m.path().join("file");
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.ends_with("file is a file; name a directory for the run"),
        "{err}"
    );
}

#[test]
fn accumulation_equals_one_big_batch() {
    let m = tiny_model(TinySpec::default());
    let c = config(&m, "acc", 1);
    let mut model = load(&m);
    model.model.attach_lora(&c.lora_config(), 0).unwrap();
    for (_, _, b) in model.model.lora_vars() {
        b.set(
            &candle_core::Tensor::randn(0f32, 0.1, b.shape(), &candle_core::Device::Cpu).unwrap(),
        )
        .unwrap();
    }
    let vars: Vec<candle_core::Var> = model
        .model
        .lora_vars()
        .into_iter()
        .flat_map(|(_, a, b)| [a, b])
        .collect();
    let options = EncodeOptions::default();
    let encoder = Encoder::new(&model, &options).unwrap();
    let data = Dataset::load(&c.data.train, &encoder, &FieldNames::default()).unwrap();
    let xs = &data.examples[..8];
    let rows = |r: std::ops::Range<usize>| -> Vec<Vec<usize>> { r.map(|i| vec![i]).collect() };
    let one = [make_batch(xs, &rows(0..8), 2, 8)];
    let two = [
        make_batch(xs, &rows(0..4), 2, 1),
        make_batch(xs, &rows(4..8), 2, 64),
    ];
    assert_ne!(one[0].cols, two[1].cols, "different padding");
    let (g1, l1, n1) = accumulate_gradients(&model, &vars, &one, 0).unwrap();
    let (g2, l2, n2) = accumulate_gradients(&model, &vars, &two, 0).unwrap();
    assert_eq!(n1, n2);
    assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
    for (a, b) in g1.iter().zip(&g2) {
        assert!(tuna_testkit::max_abs_diff(a, b) < 1e-5);
    }
}

#[test]
fn a_killed_checkpoint_write_leaves_the_previous_one_intact() {
    let m = tiny_model(TinySpec::default());
    let c = config(&m, "kill", 10);
    let (_, _, r) = run(&m, &c, false, Some(5));
    assert!(matches!(r, Err(TrainError::Interrupted { .. })));
    let dir = m.path().join("kill");
    // A write killed half-way: a temp directory with some files and no state.
    let partial = dir.join(".checkpoint-6.partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("adapter_model.safetensors"), b"half").unwrap();
    assert_eq!(
        checkpoint::list(&dir).last().unwrap().0,
        5,
        "the temp directory is not a checkpoint"
    );
    let (rest, _, r) = run(&m, &c, true, None);
    r.unwrap();
    assert_eq!(rest.len(), 5, "resumed from step 5");
}

#[test]
fn bad_configs_name_the_key() {
    let err = TrainConfig::from_toml_str("[optim]\nlr = 0.1\nlearning_rate = 3\n", "c.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("c.toml:3: (toml): unknown field `learning_rate`"),
        "{err}"
    );
    let err = TrainConfig::from_toml_str("[train]\nmax_steps = \"ten\"\n", "c.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("c.toml:2: (toml): invalid type: string \"ten\""),
        "{err}"
    );
    let mut c = TrainConfig::default();
    c.data.train = "x.jsonl".into();
    c.optim.lr = -1.0;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config: optim.lr: must be a number > 0"
    );
    c.optim.lr = 1e-3;
    c.lora.r = 0;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "lora: r: must be at least 1"
    );
}

/// Runs `config` and returns every event and the result.
fn run_events(m: &TinyModel, c: &TrainConfig) -> (Vec<TrainEvent>, Result<(), TrainError>) {
    let mut model = load(m);
    let interrupt = AtomicBool::new(false);
    let mut events = Vec::new();
    let result = train(&mut model, c, false, &interrupt, &mut |e| {
        events.push(e.clone())
    });
    (events, result.map(|_| ()))
}

#[test]
fn early_stopping_ends_the_run_after_patience_evaluations_without_progress() {
    let m = tiny_model(TinySpec::default());
    let mut c = config(&m, "early", 20);
    // So small a step that the eval loss never improves on the first evaluation.
    c.optim.lr = 1e-30;
    c.train.eval_every = 1;
    c.train.early_stopping_patience = 2;
    let (events, result) = run_events(&m, &c);
    result.unwrap();
    let evals = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Eval { .. }))
        .count();
    assert_eq!(
        evals, 3,
        "best at step 1, then 2 evaluations without progress"
    );
    match events.last() {
        Some(TrainEvent::Finished {
            step,
            stopped_early,
            best_step,
            ..
        }) => assert_eq!((*step, *stopped_early, *best_step), (3, true, Some(1))),
        other => panic!("last event {other:?}"),
    }
    assert!(m
        .path()
        .join("early/best/adapter_model.safetensors")
        .is_file());
    assert!(m
        .path()
        .join("early/adapter/adapter_model.safetensors")
        .is_file());
    // Each evaluation came with greedy samples of held-out prompts and their references.
    let samples: Vec<&TrainEvent> = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Sample { .. }))
        .collect();
    assert_eq!(samples.len(), 3 * c.train.sample_count);
    match samples[0] {
        TrainEvent::Sample {
            step,
            line,
            prompt,
            reference,
            ..
        } => {
            assert_eq!((*step, *line), (1, 1));
            assert!(prompt.contains("the cat 99"), "{prompt:?}");
            assert!(reference.contains("is cat"), "{reference:?}");
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let m = tiny_model(TinySpec::default());
    let mut c = config(&m, "nan", 10);
    // Adam moves every weight by about lr per step: the second forward overflows.
    c.optim.lr = 1e30;
    c.train.save_every = 1;
    c.train.eval_every = 0;
    let (events, result) = run_events(&m, &c);
    let Err(TrainError::NonFiniteLoss {
        step,
        last_checkpoint: Some(last),
        ..
    }) = &result
    else {
        panic!("{result:?}");
    };
    assert!(*step >= 2, "step {step}");
    assert_eq!(last, &m.path().join(format!("nan/checkpoint-{}", step - 1)));
    let (state, tensors) = checkpoint::read(last).unwrap();
    assert_eq!(state.step, step - 1);
    assert!(!tensors.is_empty());
    assert!(result
        .unwrap_err()
        .to_string()
        .contains("the last good checkpoint"));
    assert!(!events
        .iter()
        .any(|e| matches!(e, TrainEvent::Finished { .. })));
}

#[test]
fn eval_metric_scores_the_valid_split_and_best_follows_it() {
    use tuna_train::task_metric::TaskMetric;
    let m = tiny_model(TinySpec::default());
    let mut c = config(&m, "by-accuracy", 12);
    c.train.eval_every = 2;
    c.train.sample_count = 0;
    c.train.eval_metric = "accuracy".into();
    let (events, result) = run_events(&m, &c);
    result.unwrap();
    let evals: Vec<(usize, f64, f64, bool)> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Eval {
                step,
                loss,
                metric,
                metric_value,
                best,
                ..
            } => {
                assert_eq!(*metric, Some("accuracy"));
                Some((*step, *loss, metric_value.unwrap(), *best))
            }
            _ => None,
        })
        .collect();
    assert_eq!(evals.len(), 6);
    assert!(
        evals.iter().all(|e| (0.0..=1.0).contains(&e.2)),
        "{evals:?}"
    );
    // best/ is the first evaluation with the highest accuracy, whatever the loss did.
    let top = evals.iter().map(|e| e.2).fold(f64::MIN, f64::max);
    let best = evals.iter().find(|e| e.2 == top).unwrap();
    let mut so_far = f64::MIN;
    for e in &evals {
        assert_eq!(e.3, e.2 > so_far, "{evals:?}");
        so_far = so_far.max(e.2);
    }
    let (best_step, best_metric, best_loss) = match events.last() {
        Some(TrainEvent::Finished {
            best_step,
            best_eval_metric,
            best_eval_loss,
            eval_metric,
            ..
        }) => {
            assert_eq!(eval_metric, "accuracy");
            (*best_step, *best_eval_metric, *best_eval_loss)
        }
        other => panic!("last event {other:?}"),
    };
    assert_eq!(best_step, Some(best.0));
    assert_eq!(best_metric, Some(best.2));
    assert_eq!(best_loss, Some(best.1));
    // The adapter in best/, loaded from disk and scored the same way, scores what the run
    // recorded for that step (the scoring in the loop saw the adapter as saved).
    let mut tuned = load(&m);
    let adapter = tuna_lora::peft::load(&m.path().join("by-accuracy/best")).unwrap();
    tuned.model.load_lora(&adapter).unwrap();
    let options = EncodeOptions::default();
    let encoder = Encoder::new(&tuned, &options).unwrap();
    let valid = Dataset::load(&c.data.valid, &encoder, &FieldNames::default()).unwrap();
    let scorer = TaskMetric::prepare(tuna_eval::metrics::Metric::Accuracy, &c, &valid).unwrap();
    assert_eq!(scorer.rows(), 6);
    assert_eq!(scorer.score(&tuned).unwrap(), best.2);
}

#[test]
fn a_bad_eval_metric_is_refused_naming_the_key() {
    let m = tiny_model(TinySpec::default());
    let mut c = config(&m, "bad-metric", 2);
    c.train.eval_metric = "accurcy".into();
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config: train.eval_metric: \"accurcy\" is not a metric (loss, accuracy, macro-f1, exact-match, token-f1, token-error-rate, char-error-rate)"
    );
    c.train.eval_metric = "accuracy".into();
    c.data.valid = "".into();
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config: train.eval_metric: accuracy is scored on a valid split, and this run has none (--valid FILE or data.valid_fraction)"
    );
    let (_, result) = run_events(&m, &c);
    assert!(result.is_err());
    assert!(!m.path().join("bad-metric").exists());
}
