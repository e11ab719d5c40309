//! The bad-input corpus (tests/data/bad/): every file gives its `file:line: field:` messages,
//! all of them, with exit code 1 and no panic; whole stderr compared. Plus generated inputs
//! too large to commit.

use tuna_testkit::{tiny_model, TinySpec};

use crate::util::{redact, tuna};

/// (file, exit code, stderr with the path written as F).
const CORPUS: &[(&str, i32, &str)] = &[
    ("01-malformed-json.jsonl", 1, "F:1: (line): invalid JSON: EOF while parsing an object at line 1 column 12\nerror: 1 of 1 files have errors (listed above)\n"),
    ("02-trailing-garbage.jsonl", 1, "F:1: (line): invalid JSON: trailing characters at line 1 column 15\nerror: 1 of 1 files have errors (listed above)\n"),
    ("03-array-line.jsonl", 1, "F:2: (line): expected a JSON object, found an array\nerror: 1 of 1 files have errors (listed above)\n"),
    ("04-string-line.jsonl", 1, "F:1: (line): expected a JSON object, found a string\nerror: 1 of 1 files have errors (listed above)\n"),
    ("05-empty-file.jsonl", 1, "F: no records (the file is empty)\nerror: 1 of 1 files have errors (listed above)\n"),
    ("06-only-blank-lines.jsonl", 1, "F: no records (the file is empty)\nerror: 1 of 1 files have errors (listed above)\n"),
    ("07-text-not-string.jsonl", 1, "F:1: text: expected a string, found a number\nerror: 1 of 1 files have errors (listed above)\n"),
    ("08-text-empty.jsonl", 1, "F:1: text: is empty\nerror: 1 of 1 files have errors (listed above)\n"),
    ("09-prompt-without-completion.jsonl", 1, "F:1: completion: missing\nerror: 1 of 1 files have errors (listed above)\n"),
    ("10-completion-not-string.jsonl", 1, "F:1: completion: expected a string, found an array\nerror: 1 of 1 files have errors (listed above)\n"),
    ("11-completion-blank.jsonl", 1, "F:1: completion: is empty\nerror: 1 of 1 files have errors (listed above)\n"),
    ("12-messages-not-array.jsonl", 1, "F:1: messages: expected an array, found a string\nerror: 1 of 1 files have errors (listed above)\n"),
    ("13-messages-empty.jsonl", 1, "F:1: messages: is empty\nerror: 1 of 1 files have errors (listed above)\n"),
    ("14-message-not-object.jsonl", 1, "F:1: messages[0]: expected an object, found a string\nerror: 1 of 1 files have errors (listed above)\n"),
    ("15-unknown-role.jsonl", 1, "F:1: messages[0].role: unknown role `human` (expected system, user or assistant)\nerror: 1 of 1 files have errors (listed above)\n"),
    ("16-missing-role.jsonl", 1, "F:1: messages[0].role: missing\nerror: 1 of 1 files have errors (listed above)\n"),
    ("17-content-parts-list.jsonl", 1, "F:1: messages[0].content: expected a string, found an array\nerror: 1 of 1 files have errors (listed above)\n"),
    ("18-no-assistant-turn.jsonl", 1, "F:1: messages: has no assistant turn to train on\nerror: 1 of 1 files have errors (listed above)\n"),
    ("19-empty-assistant-turn.jsonl", 1, "F:1: messages[1].content: an assistant turn is empty\nerror: 1 of 1 files have errors (listed above)\n"),
    ("20-system-not-first.jsonl", 1, "F:1: messages[1].role: a system message must come first\nerror: 1 of 1 files have errors (listed above)\n"),
    ("21-alpaca-missing-output.jsonl", 1, "F:1: output: missing\nerror: 1 of 1 files have errors (listed above)\n"),
    ("22-alpaca-input-not-string.jsonl", 1, "F:1: input: expected a string, found null\nerror: 1 of 1 files have errors (listed above)\n"),
    ("23-no-known-kind.jsonl", 1, "F:1: (record): no known record kind: expected `text`, `prompt`+`completion`, `messages` or `instruction`+`output` (found: answer, question)\nerror: 1 of 1 files have errors (listed above)\n"),
    ("24-empty-object.jsonl", 1, "F:1: (record): no known record kind: expected `text`, `prompt`+`completion`, `messages` or `instruction`+`output` (found: no fields)\nerror: 1 of 1 files have errors (listed above)\n"),
    ("25-many-errors.jsonl", 1, "F:2: text: expected a string, found a number\nF:3: prompt: expected a string, found a number\nF:3: completion: expected a string, found a number\nF:4: (line): expected a JSON object, found null\nF:5: messages: has no assistant turn to train on\nerror: 1 of 1 files have errors (listed above)\n"),
    ("26-role-not-string.jsonl", 1, "F:1: messages[0].role: expected a string, found a number\nerror: 1 of 1 files have errors (listed above)\n"),
    ("27-unterminated-string.jsonl", 1, "F:1: (line): invalid JSON: EOF while parsing a string at line 1 column 17\nerror: 1 of 1 files have errors (listed above)\n"),
    ("28-non-utf8.jsonl", 1, "F:2: (line): not valid UTF-8 (byte 14 of the line)\nerror: 1 of 1 files have errors (listed above)\n"),
    ("29-bom-crlf-ok.jsonl", 0, ""),
    ("30-nul-byte.jsonl", 1, "F:1: (line): invalid JSON: control character (\\u0000-\\u001F) found while parsing a string at line 1 column 12\nerror: 1 of 1 files have errors (listed above)\n"),
];
#[test]
fn every_corpus_file_names_its_lines_and_fields() {
    let m = tiny_model(TinySpec::default());
    let files = std::fs::read_dir("tests/data/bad").unwrap().count();
    assert_eq!(
        files,
        CORPUS.len(),
        "every corpus file has an expected output"
    );
    for (name, code, want) in CORPUS {
        let path = format!("tests/data/bad/{name}");
        let run = tuna(&["data", "validate", "--model", &m.path_str(), &path], &[]);
        assert_eq!(run.stderr.replace(&path, "F"), *want, "{name}");
        assert_eq!(run.code, *code, "{name}");
    }
}

#[test]
fn a_10_mb_line_is_handled_whole_or_reported() {
    let m = tiny_model(TinySpec::default());
    let big = "the cat sat on the mat. ".repeat(10 * 1024 * 1024 / 24);
    // Valid: scored in windows, nothing lost.
    let ok = m.path().join("big.jsonl");
    std::fs::write(&ok, format!("{{\"text\": \"{big}\"}}\n")).unwrap();
    let run = tuna(
        &[
            "data",
            "validate",
            "--model",
            &m.path_str(),
            "--json",
            ok.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report[0]["records"], 1);
    assert!(report[0]["examples"].as_u64().unwrap() > 1000, "windows");
    assert_eq!(report[0]["truncated"], 0);
    // Malformed: one line of error, not 10 MB of echo.
    let bad = m.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{{\"text\": \"{big}\n")).unwrap();
    let run = tuna(
        &[
            "data",
            "validate",
            "--model",
            &m.path_str(),
            bad.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        redact(&run.stderr, m.path()),
        "<TMP>/bad.jsonl:1: (line): invalid JSON: EOF while parsing a string at line 1 column 10485754\n\
         error: 1 of 1 files have errors (listed above)\n"
    );
}

#[test]
fn validate_summarizes_each_file() {
    let m = tiny_model(TinySpec::default());
    let data = m.path().join("mix.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"the sea\", \"completion\": \"at rest\", \"id\": 1}\n{\"text\": \"the cat\"}\n{\"prompt\": \"the sea\", \"completion\": \"at rest\", \"id\": 1}\n",
    )
    .unwrap();
    let run = tuna(
        &[
            "data",
            "validate",
            "--model",
            &m.path_str(),
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        redact(&run.stdout, m.path()),
        "<TMP>/mix.jsonl\n\
         \x20 records: 3 (prompt/completion 2, text 1)\n\
         \x20 tokens per example: p50 29, p95 29, max 29\n\
         \x20 trained on: 16 of 63 tokens (25.4%)\n\
         \x20 truncated: 0, skipped (no target left): 0, duplicates: 1\n\
         \x20 ignored fields: id (first on line 1)\n"
    );
}

#[test]
fn preview_marks_the_trained_span_when_piped() {
    let m = tiny_model(TinySpec::default());
    let data = m.path().join("one.jsonl");
    std::fs::write(&data, "{\"prompt\": \"hi\", \"completion\": \"the sea\"}\n").unwrap();
    let run = tuna(
        &[
            "data",
            "preview",
            "--model",
            &m.path_str(),
            data.to_str().unwrap(),
            "-n",
            "1",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = run.stdout;
    assert!(
        text.starts_with("── line 1 (prompt/completion, 26 tokens, 6 trained)\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n[[the sea<|im_end|>]]\n\nids: 1 "),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no color codes when piped");
}

#[test]
fn fields_can_be_renamed_from_the_command_line() {
    let m = tiny_model(TinySpec::default());
    let data = m.path().join("qa.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"the sea\", \"answer\": \"at rest\"}\n",
    )
    .unwrap();
    let file = data.to_str().unwrap();
    let run = tuna(
        &[
            "data",
            "validate",
            "--model",
            &m.path_str(),
            file,
            "--field",
            "prompt=question",
            "--field",
            "completion=answer",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("records: 1 (prompt/completion 1)"),
        "{}",
        run.stdout
    );
    let run = tuna(
        &[
            "data",
            "validate",
            "--model",
            &m.path_str(),
            file,
            "--field",
            "prompt",
        ],
        &[],
    );
    assert_eq!(
        run.stderr,
        "error: --field prompt: expected KIND=NAME\nhint: run the command with --help for the accepted values\n"
    );
}
