//! Loss masks on the testkit model (ChatML template, `<|im_end|>` = EOS = pad, like SmolLM2):
//! the exact trained-on tokens of each record kind, EOS included, and template parity with
//! what generation feeds the model.

use std::path::Path;

use tuna_data::record::parse_records;
use tuna_data::{
    jsonl::parse_jsonl, EncodeOptions, Encoded, Encoder, Example, FieldNames, PromptFormat,
    Truncation,
};
use tuna_model::{LoadOptions, Message, Pretrained};
use tuna_testkit::{tiny_model, TinySpec};

fn model() -> (tuna_testkit::TinyModel, Pretrained) {
    let m = tiny_model(TinySpec::default());
    let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    (m, p)
}

fn encode_all(
    p: &Pretrained,
    options: &EncodeOptions,
    jsonl: &str,
) -> Vec<Result<Encoded, String>> {
    let path = Path::new("d.jsonl");
    let lines = parse_jsonl(path, jsonl.as_bytes()).unwrap();
    let parsed = parse_records(path, &lines, &FieldNames::default()).unwrap();
    let encoder = Encoder::new(p, options).unwrap();
    parsed
        .records
        .iter()
        .map(|r| encoder.encode(path, r).map_err(|e| e.to_string()))
        .collect()
}

fn example(e: &Result<Encoded, String>) -> &Example {
    match e {
        Ok(Encoded::Example(x)) => x,
        other => panic!("expected an example, got {other:?}"),
    }
}

/// The trained tokens as text, with special tokens shown.
fn trained_text(p: &Pretrained, x: &Example) -> String {
    p.tokenizer.decode(&x.target_ids(), false).unwrap()
}

fn all_text(p: &Pretrained, x: &Example) -> String {
    p.tokenizer.decode(&x.ids, false).unwrap()
}

#[test]
fn each_record_kind_trains_on_its_target_and_eos() {
    let (_m, p) = model();
    let data = concat!(
        "{\"prompt\": \"is the sea at rest\", \"completion\": \"the sea is\"}\n",
        "{\"instruction\": \"name a cat\", \"input\": \"\", \"output\": \"tin\"}\n",
        "{\"text\": \"the cat sat\"}\n",
        "{\"messages\": [{\"role\": \"system\", \"content\": \"be terse\"}, {\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}, {\"role\": \"user\", \"content\": \"and?\"}, {\"role\": \"assistant\", \"content\": \"bye\"}]}\n",
    );
    let out = encode_all(&p, &EncodeOptions::default(), data);
    let x = example(&out[0]);
    assert_eq!(all_text(&p, x), "<|im_start|>user\nis the sea at rest<|im_end|>\n<|im_start|>assistant\nthe sea is<|im_end|>\n");
    assert_eq!(trained_text(&p, x), "the sea is<|im_end|>");
    assert_eq!(
        *x.target_ids().last().unwrap(),
        2,
        "EOS (= pad) is a target"
    );
    assert_eq!(trained_text(&p, example(&out[1])), "tin<|im_end|>");
    // Text: every token but the first (nothing predicts it), then EOS.
    let x = example(&out[2]);
    assert_eq!(all_text(&p, x), "the cat sat<|im_end|>");
    assert_eq!(x.n_trained(), x.ids.len() - 1);
    // Multi-turn: both assistant turns, each with its end of turn; no user/system token.
    let x = example(&out[3]);
    assert_eq!(trained_text(&p, x), "hello<|im_end|>bye<|im_end|>");
    assert_eq!(
        all_text(&p, x),
        "<|im_start|>system\nbe terse<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nand?<|im_end|>\n<|im_start|>assistant\nbye<|im_end|>\n"
    );
}

#[test]
fn train_on_prompt_trains_everything_but_the_first_token() {
    let (_m, p) = model();
    let options = EncodeOptions {
        train_on_prompt: true,
        ..Default::default()
    };
    let out = encode_all(
        &p,
        &options,
        "{\"prompt\": \"hi\", \"completion\": \"yo\"}\n",
    );
    let x = example(&out[0]);
    assert_eq!(x.n_trained(), x.ids.len() - 1);
    assert!(!x.trained[0]);
}

#[test]
fn raw_format_appends_eos_as_a_token_id() {
    let (_m, p) = model();
    let options = EncodeOptions {
        format: PromptFormat::Raw,
        prompt_template: Some("Q: {prompt}\nA:".into()),
        ..Default::default()
    };
    let out = encode_all(
        &p,
        &options,
        "{\"prompt\": \"is it\", \"completion\": \" the sea\"}\n",
    );
    let x = example(&out[0]);
    assert_eq!(all_text(&p, x), "Q: is it\nA: the sea<|im_end|>");
    assert_eq!(trained_text(&p, x), " the sea<|im_end|>");
}

#[test]
fn the_prompt_part_is_what_generation_feeds_the_model() {
    let (_m, p) = model();
    for format in [PromptFormat::Auto, PromptFormat::Raw] {
        let options = EncodeOptions {
            format,
            system: Some("be kind".into()),
            ..Default::default()
        };
        let encoder = Encoder::new(&p, &options).unwrap();
        let out = encode_all(
            &p,
            &options,
            "{\"prompt\": \"the sea\", \"completion\": \"is at rest\"}\n",
        );
        let x = example(&out[0]);
        let first_target = x.trained.iter().position(|&t| t).unwrap();
        let messages = [
            Message::new("system", "be kind"),
            Message::new("user", "the sea"),
        ];
        let messages: &[Message] = if format == PromptFormat::Raw {
            &messages[1..]
        } else {
            &messages
        };
        assert_eq!(
            x.ids[..first_target],
            encoder.prompt_ids(messages).unwrap()[..],
            "{format:?}"
        );
    }
}

#[test]
fn truncation_keeps_targets_or_counts_the_example() {
    let (_m, p) = model();
    let long_prompt = "the sea ".repeat(40);
    let data = format!("{{\"prompt\": \"{long_prompt}\", \"completion\": \"at rest\"}}\n");
    let left = EncodeOptions {
        max_seq_len: 24,
        ..Default::default()
    };
    let x = example(&encode_all(&p, &left, &data)[0]).clone();
    assert!(x.truncated && x.ids.len() == 24);
    assert_eq!(trained_text(&p, &x), "at rest<|im_end|>");
    // Cutting the end removes every target: skipped and counted, or an error, as configured.
    let right = EncodeOptions {
        max_seq_len: 24,
        truncation: Truncation::Right,
        ..Default::default()
    };
    assert_eq!(
        encode_all(&p, &right, &data)[0],
        Ok(Encoded::SkippedUntrainable { line: 1 })
    );
    let strict = EncodeOptions {
        skip_untrainable: false,
        ..right
    };
    assert_eq!(
        encode_all(&p, &strict, &data)[0],
        Err(
            "d.jsonl:1: (length): every target token is past max_seq_len 24 (truncation right)"
                .into()
        )
    );
}

#[test]
fn messages_need_a_chat_template() {
    let (_m, p) = model();
    let options = EncodeOptions {
        format: PromptFormat::Raw,
        ..Default::default()
    };
    let out = encode_all(&p, &options, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n");
    assert_eq!(
        out[0],
        Err("d.jsonl:1: messages: a messages record needs a chat template and this model has none (use prompt/completion records)".into())
    );
}

#[test]
fn long_texts_become_overlapping_windows_that_lose_nothing() {
    let (_m, p) = model();
    let text = "the cat sat on the mat at sea ".repeat(6);
    let options = EncodeOptions {
        max_seq_len: 16,
        ..Default::default()
    };
    let out = encode_all(&p, &options, &format!("{{\"text\": \"{text}\"}}\n"));
    let Ok(Encoded::Windows(windows)) = &out[0] else {
        panic!("{:?}", out[0])
    };
    let whole = p.tokenizer.encode(&text, true).unwrap();
    let predicted: usize = windows.iter().map(|w| w.n_trained()).sum();
    assert_eq!(
        predicted,
        whole.len(),
        "every token after the first, plus EOS, predicted once"
    );
    assert!(windows.iter().all(|w| w.ids.len() <= 16 && !w.trained[0]));
    let mut joined: Vec<u32> = windows[0].ids.clone();
    for w in &windows[1..] {
        assert_eq!(
            w.ids[0],
            *joined.last().unwrap(),
            "windows overlap by one token"
        );
        joined.extend(&w.ids[1..]);
    }
    assert_eq!(joined[..whole.len()], whole[..]);
}

#[test]
fn training_shots_are_context_laid_out_as_few_shot_prompts_are() {
    let (m, p) = model();
    let path = m.path().join("shots.jsonl");
    let records = [
        ("the sea", "is at rest"),
        ("a cat", "sat"),
        ("the sun", "is hot"),
    ];
    let text: String = records
        .iter()
        .map(|(q, a)| format!("{{\"prompt\": \"{q}\", \"completion\": \"{a}\"}}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    for format in [PromptFormat::Auto, PromptFormat::Raw] {
        let options = EncodeOptions {
            format,
            prompt_template: Some("Q: {prompt}".into()),
            shots: 2,
            shot_seed: 7,
            ..Default::default()
        };
        let encoder = Encoder::new(&p, &options).unwrap();
        let data = tuna_data::Dataset::load(&path, &encoder, &FieldNames::default()).unwrap();
        assert_eq!(data.examples.len(), 3);
        for (i, x) in data.examples.iter().enumerate() {
            // Only the record's own completion (and its end of turn) is trained on.
            assert_eq!(
                trained_text(&p, x),
                format!("{}<|im_end|>", records[i].1),
                "{format:?}"
            );
            // Its prompt is the few-shot prompt of the other two records, in some order.
            let first_target = x.trained.iter().position(|&t| t).unwrap();
            let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
            let matches = [[others[0], others[1]], [others[1], others[0]]]
                .iter()
                .any(|order| {
                    let mut messages = Vec::new();
                    for &j in order {
                        messages.push(Message::new("user", &format!("Q: {}", records[j].0)));
                        messages.push(Message::new("assistant", records[j].1));
                    }
                    messages.push(Message::new("user", &format!("Q: {}", records[i].0)));
                    x.ids[..first_target] == encoder.prompt_ids(&messages).unwrap()[..]
                });
            assert!(matches, "{format:?}, record {i}: {}", all_text(&p, x));
        }
        // The draw is seeded: the same options give the same examples.
        let again = tuna_data::Dataset::load(&path, &encoder, &FieldNames::default()).unwrap();
        assert_eq!(again.examples, data.examples);
    }
    // Shots need prompt/completion records.
    std::fs::write(
        &path,
        "{\"text\": \"the cat sat\"}\n{\"prompt\": \"a\", \"completion\": \"b\"}\n",
    )
    .unwrap();
    let options = EncodeOptions {
        shots: 1,
        ..Default::default()
    };
    let encoder = Encoder::new(&p, &options).unwrap();
    let err = tuna_data::Dataset::load(&path, &encoder, &FieldNames::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shots.jsonl:1: (shots): training with shots needs prompt/completion records; this is a text record"),
        "{err}"
    );
}

#[test]
fn training_shots_come_only_from_the_pool_given() {
    let (m, p) = model();
    let path = m.path().join("pool.jsonl");
    let text: String = (0..12)
        .map(|i| format!("{{\"prompt\": \"q{i}\", \"completion\": \"a{i}\"}}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    let options = EncodeOptions {
        shots: 2,
        ..Default::default()
    };
    let encoder = Encoder::new(&p, &options).unwrap();
    let all = tuna_data::Dataset::load(&path, &encoder, &FieldNames::default()).unwrap();
    // The pool: lines 1-3 only (as a train split would be); every example's shots are
    // among them, and a pool line never shows itself.
    let pool: Vec<tuna_data::LineRecord> = all
        .records_parsed
        .iter()
        .filter(|r| r.line <= 3)
        .cloned()
        .collect();
    let with_pool = tuna_data::Dataset::load_with_shots(
        &path,
        &encoder,
        &FieldNames::default(),
        Some(tuna_data::ShotPool {
            records: &pool,
            same_file: true,
        }),
    )
    .unwrap();
    for x in &with_pool.examples {
        let text = all_text(&p, x);
        let shown: Vec<usize> = (1..=12)
            .filter(|&line| {
                text.contains(&format!("a{} ", line - 1))
                    || text.contains(&format!("a{}<", line - 1))
            })
            .filter(|&line| line != x.line)
            .collect();
        assert_eq!(shown.len(), 2, "line {}: {text}", x.line);
        assert!(
            shown.iter().all(|&l| l <= 3),
            "line {}: shots {shown:?} outside the pool",
            x.line
        );
    }
}
