//! `tuna compare` through the binary: every strategy on a tiny model with an adapter trained
//! by `tuna train`, the three report files, the real model on a few sentiment rows, and bad
//! inputs that must name what is wrong.

use std::path::Path;

use tuna_testkit::{smollm2_gguf, tiny_model, TinySpec};

use crate::util::{redact, tuna};

const LABELS: [&str; 2] = ["yes", "no"];

/// prompt/completion lines: "is 3 even" -> yes/no.
fn write_task(dir: &Path, name: &str, range: std::ops::Range<usize>) -> String {
    let text: String = range
        .map(|i| {
            format!(
                "{{\"prompt\": \"is {i} even\", \"completion\": \"{}\"}}\n",
                LABELS[i % 2]
            )
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `tuna train` on the tiny model at `model` with the data at `train`; `flags` adds the rest.
/// Returns what it printed (the adapter directories).
fn train_tiny(model: &str, train: &str, flags: &[&str]) -> String {
    let mut args = vec!["train", "--model", model, "--data", train];
    args.extend_from_slice(flags);
    let r = tuna(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
}

fn read_report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn every_strategy_lands_in_the_three_reports() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let train = write_task(dir, "train.jsonl", 0..40);
    let valid = write_task(dir, "valid.jsonl", 40..48);
    let test = write_task(dir, "test.jsonl", 100..130);
    let run = dir.join("run");
    train_tiny(
        &m.path_str(),
        &train,
        &[
            "--valid",
            &valid,
            "--output",
            run.to_str().unwrap(),
            "--max-steps",
            "4",
            "--lora-r",
            "4",
            "--prompt-template",
            "Even? {prompt}",
        ],
    );
    let out = dir.join("report");
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--adapter",
            run.to_str().unwrap(),
            "--data",
            &test,
            "--output",
            out.to_str().unwrap(),
            "--shots",
            "2",
            "--cot-limit",
            "4",
            "--cot-max-new-tokens",
            "6",
            "--samples",
            "3",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report = read_report(&out);
    let keys: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["zero", "one", "few", "cot", "tuned", "hybrid"]);
    // Strategies with shots ran three seeded draws (the row is the first); the others one.
    for row in report["rows"].as_array().unwrap() {
        let draws = row["shot_draws"].as_array().map_or(0, |d| d.len());
        let with_shots = ["one", "few", "hybrid"].contains(&row["key"].as_str().unwrap());
        assert_eq!(draws, if with_shots { 3 } else { 0 }, "{}", row["key"]);
        if with_shots {
            assert_eq!(row["shot_draws"][0]["seed"], 0);
            assert_eq!(row["shot_draws"][0]["value"], row["metrics"][0]["value"]);
            let shots: Vec<&serde_json::Value> = row["shot_draws"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| &d["shot_lines"])
                .collect();
            assert!(
                shots[0] != shots[1] || shots[1] != shots[2],
                "the draws differ"
            );
        }
    }
    assert_eq!(report["task"]["labels"], serde_json::json!(["yes", "no"]));
    assert_eq!(report["examples"], 30);
    // The train file came from the run's config, the wording from its prompt template.
    assert_eq!(report["train_examples"], 40);
    assert_eq!(report["tuned_shape"]["template"], "Even? {prompt}");
    assert_eq!(report["adapter"]["steps"], 4);
    assert!(report["adapter"]["parameters"].as_u64().unwrap() > 0);
    assert_eq!(report["baseline"]["key"], "majority");
    // Provenance: every file hashed (its sha256 matches one computed here), tuna's version.
    let files = report["provenance"]["files"].as_array().unwrap();
    let role = |r: &str| files.iter().filter(|f| f["role"] == r).count();
    assert_eq!((role("test"), role("train")), (1, 1));
    assert!(role("model") >= 2 && role("adapter") == 2, "{files:?}");
    let test_hash = files.iter().find(|f| f["role"] == "test").unwrap()["sha256"].clone();
    assert_eq!(
        test_hash,
        tuna_eval::provenance::sha256_file(Path::new(&test)).unwrap()
    );
    assert!(report["provenance"]["tuna"]
        .as_str()
        .unwrap()
        .starts_with(env!("CARGO_PKG_VERSION")));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let short = &test_hash.as_str().unwrap()[..12];
    assert!(md.contains(&format!("test test.jsonl {short}")), "{md}");
    for row in report["rows"].as_array().unwrap() {
        for m in row["metrics"].as_array().unwrap() {
            let (v, lo, hi) = (
                m["value"].as_f64().unwrap(),
                m["low"].as_f64().unwrap(),
                m["high"].as_f64().unwrap(),
            );
            assert!(lo <= v && v <= hi, "{row}");
        }
    }
    let cot = &report["rows"][3];
    assert_eq!(
        cot["predictions"].as_array().unwrap().len(),
        4,
        "--cot-limit"
    );
    assert!(report["recommendation"].as_str().unwrap().len() > 20);
    assert_eq!(report["samples"].as_array().unwrap().len(), 3);
    assert_eq!(
        report["samples"][0]["predictions"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("Shots are noisy: each strategy that shows shots ran with 3 seeded draws"),
        "{md}"
    );
    assert!(md.contains("| strategy | modification | data required | implementation time | cost per 1k test examples | accuracy [95% CI] | macro-F1 [95% CI] | predictions |"), "{md}");
    assert!(md.contains("majority class"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // One renderer: the two reports hold the same sections, in the same order.
    let md_titles: Vec<String> = md
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|t| t.replace('`', ""))
        .collect();
    let html_titles: Vec<String> = html
        .split("<h2>")
        .skip(1)
        .map(|rest| {
            let title = rest.split("</h2>").next().unwrap();
            title.replace("<code>", "").replace("</code>", "")
        })
        .collect();
    assert_eq!(md_titles, html_titles);
    for title in [
        "Recommendation",
        "The table",
        "Significance",
        "Flips",
        "Wording",
    ] {
        assert!(
            md_titles.iter().any(|t| t == title),
            "{title} missing: {md_titles:?}"
        );
    }
    // The facts the HTML used to lack.
    for fact in ["Scoring: ", "prior-only floor", "prompting: template"] {
        assert!(html.contains(fact), "report.html lacks {fact:?}");
    }
    assert!(html.starts_with("<!doctype html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<svg").count(), 2);
    assert!(
        !html.contains("http://")
            || html.matches("http://").count()
                == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "self-contained"
    );
}

#[test]
fn one_prompt_is_answered_by_base_and_tuned() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let train = write_task(dir, "train.jsonl", 0..16);
    let run = dir.join("run");
    train_tiny(
        &m.path_str(),
        &train,
        &[
            "--output",
            run.to_str().unwrap(),
            "--max-steps",
            "2",
            "--lora-r",
            "2",
            "--eval-every",
            "0",
        ],
    );
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--adapter",
            run.to_str().unwrap(),
            "--prompt",
            "is 4 even",
            "--max-new-tokens",
            "3",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"== base"));
    assert!(lines.contains(&"== tuned"), "{}", r.stdout);
}

#[test]
fn the_real_model_ranks_labels_on_sentiment_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report");
    let model = smollm2_gguf().display().to_string();
    let r = tuna(
        &[
            "compare",
            "--model",
            &model,
            "--data",
            "data/example/sentiment/test.jsonl",
            "--output",
            out.to_str().unwrap(),
            "--strategies",
            "zero,few",
            "--shots",
            "3",
            "--limit",
            "12",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report = read_report(&out);
    // Labels inferred from the sibling train.jsonl; no adapter, so the recommendation says
    // how to measure one.
    let mut labels: Vec<&str> = report["task"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    labels.sort();
    assert_eq!(labels, ["negative", "neutral", "positive"]);
    assert!(report["recommendation"]
        .as_str()
        .unwrap()
        .contains("tuna train"));
    for row in report["rows"].as_array().unwrap() {
        assert_eq!(row["predictions"].as_array().unwrap().len(), 12);
        assert_eq!(row["method"], "rank labels by log-likelihood");
        assert!(row["label_nll"].as_f64().unwrap() > 0.0);
    }
    // Few-shot prompts share their shots: most of their tokens came from the cache.
    assert!(
        report["rows"][1]["prompt_tokens_per_example"]
            .as_f64()
            .unwrap()
            > report["rows"][0]["prompt_tokens_per_example"]
                .as_f64()
                .unwrap()
    );
}

#[test]
fn bad_inputs_name_the_file_line_or_flag() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let train = write_task(dir, "train.jsonl", 0..20);
    let out = dir.join("out");
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        (
            "text records have no reference",
            "{\"text\": \"just text\"}\n".into(),
            vec![],
            "error: <TMP>/test.jsonl:1: a text record has no reference answer to compare with",
        ),
        (
            "a reference outside the label set",
            "{\"prompt\": \"is 1 even\", \"completion\": \"maybe\"}\n".into(),
            vec![],
            "error: <TMP>/test.jsonl:1: the reference \"maybe\" is not in the label set (yes, no)",
        ),
        (
            "an empty test set",
            "\n".into(),
            vec![],
            "error: <TMP>/test.jsonl: no records (the file is empty)",
        ),
    ];
    let model = m.path_str();
    for (what, content, extra, want) in cases {
        let test = dir.join("test.jsonl");
        std::fs::write(&test, content).unwrap();
        let mut args = vec![
            "compare",
            "--model",
            &model,
            "--data",
            test.to_str().unwrap(),
            "--train",
            &train,
            "--output",
            out.to_str().unwrap(),
        ];
        if extra.is_empty() {
            args.extend(["--strategies", "zero"]);
        }
        args.extend(extra);
        let r = tuna(&args, &[]);
        assert_eq!(r.code, 1, "{what}: {}", r.stderr);
        let first = redact(&r.stderr, dir);
        assert_eq!(first.lines().next().unwrap_or(""), want, "{what}");
    }
    // An adapter trained on another base: the mismatching tensor is named.
    let other = tiny_model(TinySpec {
        hidden_size: 48,
        ..Default::default()
    });
    let run = other.path().join("run");
    train_tiny(
        &other.path_str(),
        &train,
        &[
            "--output",
            run.to_str().unwrap(),
            "--max-steps",
            "1",
            "--lora-r",
            "2",
            "--eval-every",
            "0",
        ],
    );
    let test = write_task(dir, "test.jsonl", 50..54);
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--adapter",
            run.to_str().unwrap(),
            "--data",
            &test,
            "--train",
            &train,
            "--output",
            out.to_str().unwrap(),
            "--strategies",
            "zero,tuned",
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("lora_A.weight") && r.stderr.contains("48"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_learning_curve_directory_is_charted() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let train = write_task(dir, "train.jsonl", 0..40);
    let test = write_task(dir, "test.jsonl", 100..110);
    let curve = dir.join("curve");
    let printed = train_tiny(
        &m.path_str(),
        &train,
        &[
            "--output",
            curve.to_str().unwrap(),
            "--train-sizes",
            "16,8",
            "--max-steps",
            "2",
            "--lora-r",
            "2",
            "--eval-every",
            "0",
        ],
    );
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [
            curve.join("size-8/adapter").to_str().unwrap(),
            curve.join("size-16/adapter").to_str().unwrap()
        ]
    );
    let out = dir.join("report");
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--adapter",
            curve.to_str().unwrap(),
            "--data",
            &test,
            "--train",
            &train,
            "--output",
            out.to_str().unwrap(),
            "--strategies",
            "zero,tuned",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report = read_report(&out);
    let sizes: Vec<u64> = report["learning_curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["train_examples"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [8, 16]);
    // The largest run is the tuned row, and its point is that row's number.
    assert!(report["adapter"]["path"]
        .as_str()
        .unwrap()
        .contains("size-16"));
    assert_eq!(
        report["learning_curve"][1]["metric"]["value"],
        report["rows"][1]["metrics"][0]["value"]
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Learning curve") && html.matches("<svg").count() == 3);

    // Several adapters in one report: each extra one is a row with its own cost columns, and
    // scores as it did on the learning curve.
    let size8 = report["learning_curve"][0]["metric"]["value"].clone();
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--adapter",
            curve.join("size-16").to_str().unwrap(),
            "--also-adapter",
            curve.join("size-8").to_str().unwrap(),
            "--data",
            &test,
            "--train",
            &train,
            "--output",
            out.to_str().unwrap(),
            "--strategies",
            "zero,tuned",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report = read_report(&out);
    let rows = report["rows"].as_array().unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["zero", "tuned", "tuned-2"]);
    assert_eq!(rows[1]["adapter"]["train_examples"], 16);
    assert_eq!(rows[2]["adapter"]["train_examples"], 8);
    assert_eq!(rows[2]["metrics"][0]["value"], size8);
    assert_eq!(
        report["samples"][0]["predictions"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn instruction_variants_are_swept_on_the_valid_split() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let train = write_task(dir, "train.jsonl", 0..20);
    let valid = write_task(dir, "valid.jsonl", 60..70);
    let test = write_task(dir, "test.jsonl", 100..106);
    let variants = dir.join("instructions.txt");
    std::fs::write(
        &variants,
        "Even or not? {prompt}\n---\nAnswer yes or no.\n\n{prompt}\n",
    )
    .unwrap();
    let out = dir.join("report");
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--data",
            &test,
            "--train",
            &train,
            "--valid",
            &valid,
            "--instructions",
            variants.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--strategies",
            "zero,few",
            "--shots",
            "2",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report = read_report(&out);
    let sweep = report["instruction_sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2);
    assert_eq!(sweep[1]["template"], "Answer yes or no.\n\n{prompt}");
    let chosen: Vec<&serde_json::Value> = sweep.iter().filter(|t| t["chosen"] == true).collect();
    assert_eq!(chosen.len(), 1);
    assert_eq!(report["prompt_shape"]["template"], chosen[0]["template"]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Instruction sweep"), "{md}");
    // No variants in the file: a clear error.
    std::fs::write(&variants, "---\n").unwrap();
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--data",
            &test,
            "--train",
            &train,
            "--valid",
            &valid,
            "--instructions",
            variants.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(
        redact(&r.stderr, dir)
            .starts_with("error: <TMP>/instructions.txt: no instruction variants"),
        "{}",
        r.stderr
    );
}

#[test]
fn rationales_in_the_train_split_add_few_shot_chain_of_thought() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let train: String = (0..12)
        .map(|i| {
            format!(
                "{{\"prompt\": \"is {i} even\", \"completion\": \"{}\", \"why\": \"{i} mod 2 is {}.\"}}\n",
                LABELS[i % 2],
                i % 2
            )
        })
        .collect();
    let train_path = dir.join("train.jsonl");
    std::fs::write(&train_path, train).unwrap();
    let test = write_task(dir, "test.jsonl", 100..104);
    let out = dir.join("report");
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--data",
            &test,
            "--train",
            train_path.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--strategies",
            "zero,cot",
            "--shots",
            "2",
            "--rationale-field",
            "why",
            "--cot-max-new-tokens",
            "4",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report = read_report(&out);
    let keys: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["zero", "cot", "cot-few"]);
    assert_eq!(report["rows"][2]["examples_used"], 2);
    // Asking for it without rationales is an error naming the field.
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--data",
            &test,
            "--train",
            train_path.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--strategies",
            "cot-few",
        ],
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("`rationale` field"), "{}", r.stderr);
}

#[test]
fn eval_scores_the_adapter_as_trained_and_each_strategy() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let train = write_task(dir, "train.jsonl", 0..40);
    let valid = write_task(dir, "valid.jsonl", 40..48);
    let run = dir.join("run");
    train_tiny(
        &m.path_str(),
        &train,
        &[
            "--valid",
            &valid,
            "--output",
            run.to_str().unwrap(),
            "--max-steps",
            "4",
            "--lora-r",
            "4",
            "--prompt-template",
            "Even? {prompt}",
            // Short enough to cut the prompts: eval must cut them the same way.
            "--seq-len",
            "12",
        ],
    );
    // The loss of the run's last eval, from the run directory alone: its prompt template
    // and sequence length come with it.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last_eval: serde_json::Value = metrics
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "eval" && e["step"] == 4)
        .expect("an eval at the last step");
    let model = m.path_str();
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            &model,
            "--adapter",
            run.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tuna(&args, &[])
    };
    let r = eval(&["--data", &valid, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("as the adapter was trained"),
        "{}",
        r.stderr
    );
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let (ours, theirs) = (
        out["loss"].as_f64().unwrap(),
        last_eval["loss"].as_f64().unwrap(),
    );
    assert!(
        (ours - theirs).abs() < 1e-5 * theirs,
        "eval {ours} vs training's {theirs}"
    );
    assert!(
        out.get("strategies").is_none(),
        "no task metrics unless asked"
    );
    let r = eval(&["--data", &valid, "--json", "--seq-len", "1024"]);
    let longer: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        (longer["loss"].as_f64().unwrap() - theirs).abs() > 1e-4,
        "the run's sequence length cuts these prompts"
    );

    // Task metrics: prompting on the base, the adapter, and the majority baseline.
    let test = write_task(dir, "test.jsonl", 100..120);
    let r = eval(&[
        "--data",
        &test,
        "--strategies",
        "zero,few,tuned",
        "--shots",
        "2",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let rows = out["strategies"].as_array().unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["zero", "few", "tuned", "majority"]);
    assert_eq!(out["examples"], 20);
    assert_eq!(rows[1]["examples_used"], 2);
    assert_eq!(rows[2]["examples_used"], 40);
    assert!(rows[2]["metrics"][0]["name"] == "accuracy");
    let r = eval(&["--data", &test, "--metric", "accuracy"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("task metrics on 20 examples (labels yes, no):"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("fine-tuned (LoRA)"), "{}", r.stdout);
    // An unknown strategy is a usage error naming the flag and the choices.
    let r = eval(&["--data", &test, "--strategies", "zero,tuned,ten-shot"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.starts_with(
            "error: invalid value 'ten-shot' for '--strategies <STRATEGIES>'\n  [possible values: zero, one, few, cot, cot-few, tuned, hybrid]"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn an_adapter_trained_with_shots_is_scored_and_evaluated_with_them() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let train = write_task(dir, "train.jsonl", 0..30);
    let valid = write_task(dir, "valid.jsonl", 40..46);
    let test = write_task(dir, "test.jsonl", 100..110);
    let run = dir.join("run");
    let model = m.path_str();
    train_tiny(
        &model,
        &train,
        &[
            "--valid",
            &valid,
            "--output",
            run.to_str().unwrap(),
            "--max-steps",
            "2",
            "--lora-r",
            "4",
            "--train-shots",
            "2",
        ],
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("shots = 2"), "{config}");
    // eval's loss is training's: the valid records with their shots.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last_eval: serde_json::Value = metrics
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "eval" && e["step"] == 2)
        .expect("an eval at the last step");
    let r = tuna(
        &[
            "eval",
            "--model",
            &model,
            "--adapter",
            run.to_str().unwrap(),
            "--data",
            &valid,
            "--json",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("training shots"), "{}", r.stderr);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let (ours, theirs) = (
        out["loss"].as_f64().unwrap(),
        last_eval["loss"].as_f64().unwrap(),
    );
    assert!(
        (ours - theirs).abs() < 1e-5 * theirs,
        "eval {ours} vs training's {theirs}"
    );
    // compare prompts the tuned strategy with two shots, as trained.
    let out_dir = dir.join("report");
    let r = tuna(
        &[
            "compare",
            "--model",
            &model,
            "--adapter",
            run.to_str().unwrap(),
            "--data",
            &test,
            "--output",
            out_dir.to_str().unwrap(),
            "--strategies",
            "zero,tuned,hybrid",
            "--shots",
            "3",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report = read_report(&out_dir);
    let tuned = &report["rows"][1];
    assert_eq!(tuned["key"], "tuned");
    assert_eq!(tuned["title"], "fine-tuned (LoRA, k=2 as trained)");
    assert_eq!(tuned["examples_used"], 30 + 2);
    assert_eq!(
        tuned["shot_draws"][0]["shot_lines"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(report["rows"][2]["title"], "hybrid (LoRA + k=3)");
}

#[test]
fn test_rows_the_adapter_trained_on_are_flagged_and_can_be_left_out() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let train = write_task(dir, "train.jsonl", 0..24);
    // Test rows 0..6 are in the training data (4 of them only up to case and spacing).
    let mut test_text: String = (0..6)
        .map(|i| {
            let prompt = match i % 3 {
                0 => format!("is {i} even"),
                1 => format!("Is  {i} even?"),
                _ => format!("IS {i} EVEN"),
            };
            format!(
                "{{\"prompt\": \"{prompt}\", \"completion\": \"{}\"}}\n",
                LABELS[i % 2]
            )
        })
        .collect();
    for i in 100..106 {
        test_text.push_str(&format!(
            "{{\"prompt\": \"is {i} even\", \"completion\": \"{}\"}}\n",
            LABELS[i % 2]
        ));
    }
    let test = dir.join("test.jsonl");
    std::fs::write(&test, test_text).unwrap();
    let run = dir.join("run");
    train_tiny(
        &m.path_str(),
        &train,
        &[
            "--output",
            run.to_str().unwrap(),
            "--max-steps",
            "3",
            "--lora-r",
            "2",
        ],
    );
    let model = m.path_str();
    let compare = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "compare",
            "--model",
            &model,
            "--adapter",
            run.to_str().unwrap(),
            "--data",
            test.to_str().unwrap(),
            "--strategies",
            "zero,tuned",
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let r = tuna(&args, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        read_report(out)
    };
    let all = compare(&dir.join("all"), &[]);
    let leakage = &all["leakage"];
    assert_eq!(
        (leakage["exact"].as_u64(), leakage["normalized"].as_u64()),
        (Some(2), Some(4))
    );
    let lines: Vec<u64> = leakage["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["test_line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 2, 3, 4, 5, 6]);
    assert!(all["recommendation"]
        .as_str()
        .unwrap()
        .contains("Caution: 6 test inputs also appear in the train split"));
    let md = std::fs::read_to_string(dir.join("all/report.md")).unwrap();
    assert!(md.contains("Leakage: 6 test inputs also appear in"), "{md}");

    let clean = compare(&dir.join("clean"), &["--exclude-leaks"]);
    assert_eq!(clean["examples"], 6);
    assert_eq!(clean["leakage"]["excluded"], true);
    let tuned = |r: &serde_json::Value| r["rows"][1]["predictions"].as_array().unwrap().len();
    assert_eq!((tuned(&all), tuned(&clean)), (12, 6));
    assert!(!clean["recommendation"]
        .as_str()
        .unwrap()
        .contains("Caution: 6 test inputs"));

    // Shots never come from the test file itself.
    let r = tuna(
        &[
            "compare",
            "--model",
            &m.path_str(),
            "--data",
            test.to_str().unwrap(),
            "--train",
            test.to_str().unwrap(),
            "--strategies",
            "few",
            "--output",
            dir.join("self").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        redact(&r.stderr, dir),
        "error: --train: <TMP>/test.jsonl is the test file: shots and labels must come from another split\n\
         hint: run the command with --help for the accepted values\n"
    );
}
