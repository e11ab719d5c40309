//! `tuna study` through the binary: two training seeds and the compare in one directory; a
//! second invocation reuses every run and the report; a changed flag is refused by name.

use tuna_testkit::{tiny_model, TinySpec};

use crate::util::{redact, tuna, write_parity};

#[test]
fn a_study_trains_every_seed_compares_and_reuses_what_is_done() {
    let m = tiny_model(TinySpec::default());
    let dir = m.path();
    let (train, test) = (dir.join("train.jsonl"), dir.join("test.jsonl"));
    write_parity(&train, 0..24);
    write_parity(&test, 100..112);
    let out = dir.join("study");
    let model = m.path_str();
    let study = |extra: &[&str]| {
        let mut args = vec![
            "study",
            "--model",
            &model,
            "--train",
            train.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--seeds",
            "2",
            "--max-steps",
            "2",
            "--lora-r",
            "2",
            "--strategies",
            "zero,tuned,hybrid",
            "--shots",
            "2",
        ];
        args.extend_from_slice(extra);
        tuna(&args, &[])
    };
    let r = study(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.trim_end().ends_with("study/report"),
        "{}",
        r.stdout
    );
    for seed in ["seed-0", "seed-1"] {
        assert!(out
            .join(seed)
            .join("adapter/adapter_model.safetensors")
            .is_file());
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/report.json")).unwrap())
            .unwrap();
    let keys: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["zero", "tuned", "hybrid", "tuned-2", "hybrid-2"]);
    // The second seed's hybrid row has the first seed's first draw of shots.
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows[4]["shot_draws"].as_array().unwrap().len(), 1);
    assert_eq!(
        rows[4]["shot_draws"][0]["shot_lines"],
        rows[2]["shot_draws"][0]["shot_lines"]
    );
    let spreads = report["seed_spreads"].as_array().unwrap();
    assert_eq!(spreads.len(), 2);
    assert_eq!(spreads[1]["arm"], "hybrid");
    assert_eq!(
        spreads[1]["values"],
        serde_json::json!([
            rows[2]["metrics"][0]["value"],
            rows[4]["metrics"][0]["value"]
        ])
    );
    let spread = &spreads[0];
    assert_eq!(spread["arm"], "tuned");
    assert_eq!(spread["seeds"], serde_json::json!([0, 1]));
    assert_eq!(spread["values"].as_array().unwrap().len(), 2);
    assert!(report["recommendation"]
        .as_str()
        .unwrap()
        .contains("Across 2 training seeds the adapter scored"));
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(md.contains("## Training seeds"), "{md}");
    assert!(
        md.contains("Training seeds: the adapter was trained 2 times with seeds 0, 1"),
        "{md}"
    );

    // Again with the same flags: both runs kept, the report kept.
    let written = std::fs::metadata(out.join("report/report.json"))
        .unwrap()
        .modified()
        .unwrap();
    let r = study(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let stderr = redact(&r.stderr, dir);
    assert_eq!(
        stderr
            .matches("is finished with these settings: kept")
            .count(),
        2,
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "== study 2/2: the report is up to date with the adapters, data and flags: kept"
        ),
        "{stderr}"
    );
    assert_eq!(
        std::fs::metadata(out.join("report/report.json"))
            .unwrap()
            .modified()
            .unwrap(),
        written
    );

    // A scoring flag that only shot strategies depend on: the report is made again, but
    // only the hybrid row is scored again (the other seed's hybrid row has one draw).
    let r = study(&["--shot-draws", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let kept: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.ends_with(": scored before, kept"))
        .collect();
    assert_eq!(
        kept,
        [
            "zero-shot: scored before, kept",
            "fine-tuned (LoRA): scored before, kept",
            "fine-tuned (LoRA): scored before, kept",
            "hybrid (LoRA + k=2): scored before, kept",
        ],
        "{}",
        r.stderr
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/report.json")).unwrap())
            .unwrap();
    assert_eq!(
        again["rows"][0]["predictions"],
        report["rows"][0]["predictions"]
    );
    assert_eq!(again["rows"][0]["metrics"], report["rows"][0]["metrics"]);
    assert_eq!(again["rows"][2]["shot_draws"].as_array().unwrap().len(), 2);
    // A damaged score file is scored again, not trusted (--samples changes only the
    // report, so the compare runs again with the same rows to find).
    for entry in std::fs::read_dir(out.join("scores")).unwrap() {
        std::fs::write(entry.unwrap().path(), "{\"key\": ").unwrap();
    }
    let r = study(&["--shot-draws", "2", "--samples", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("scored before, kept"), "{}", r.stderr);

    // A scoring flag changed: the runs are kept, the report made again.
    let r = study(&["--limit", "6"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("== study 2/2: comparing every strategy with 2 adapters"),
        "{}",
        r.stderr
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["examples"], 6);

    // A training flag changed: refused, naming it, nothing retrained.
    let r = study(&["--lr", "0.5"]);
    assert_eq!(r.code, 1);
    assert!(
        redact(&r.stderr, dir).contains("error: study: <TMP>/study/seed-0 was trained with other settings (now: lr = 0.5); pass the flags it was trained with, or another --output"),
        "{}",
        r.stderr
    );
}
