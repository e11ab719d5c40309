//! `evaluate_text_loss` (batched, right-padded, chunked head) against a direct computation:
//! one record at a time, full logits, log-softmax, mean over every next-token prediction.

mod common;

use common::direct_log_probs;
use tuna_data::{EncodeOptions, FieldNames};
use tuna_eval::evaluate_loss;
use tuna_model::{LoadOptions, Pretrained};
use tuna_testkit::{tiny_model, TinySpec};

const TEXTS: [&str; 3] = [
    "the cat is in the hat",
    "at the sea there is a cat",
    "re: the 42 tests",
];

fn direct_loss(p: &Pretrained) -> (f64, usize) {
    let (mut sum, mut n) = (0f64, 0usize);
    for text in TEXTS {
        // Text records are trained (and scored) with EOS appended.
        let mut ids = p.tokenizer.encode(text, true).unwrap();
        ids.push(2);
        let logp = direct_log_probs(p, &ids);
        for i in 0..ids.len() - 1 {
            sum -= logp[i][ids[i + 1] as usize] as f64;
            n += 1;
        }
    }
    (sum / n as f64, n)
}

#[test]
fn batched_loss_equals_the_direct_computation() {
    let m = tiny_model(TinySpec::default());
    let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    let data = m.path().join("text.jsonl");
    let lines: Vec<String> = TEXTS
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let (want, n) = direct_loss(&p);
    assert!(
        p.model.supports_fused_backward(),
        "scored by the training pass's forward (Llama::loss)"
    );
    // A small batch budget forces several batches with padding.
    let opts = |max_seq_len| EncodeOptions {
        max_seq_len,
        ..Default::default()
    };
    let fields = FieldNames::default();
    let report = evaluate_loss(&p, &data, &opts(1024), &fields, None, 20).unwrap();
    assert_eq!(report.tokens, n);
    assert_eq!(report.records, 3);
    assert!(
        (report.loss - want).abs() < 1e-5,
        "{} vs {want}",
        report.loss
    );
    assert!((report.perplexity - want.exp()).abs() < 1e-4 * want.exp());
    // Short windows still count every prediction once.
    let windowed = evaluate_loss(&p, &data, &opts(4), &fields, None, 4096).unwrap();
    assert_eq!(windowed.tokens, n);
    let limited = evaluate_loss(&p, &data, &opts(1024), &fields, Some(1), 4096).unwrap();
    assert_eq!(limited.records, 1);
}
