//! The same code path for training and inference: the prompt part of an encoded training
//! example is exactly what `tuna generate` feeds the model; packed batches score like
//! separate ones.

use std::path::Path;

use tuna_data::record::parse_records;
use tuna_data::{
    epoch_plan, jsonl::parse_jsonl, make_batch, BatchOptions, EncodeOptions, Encoder, FieldNames,
};
use tuna_eval::loss::{batch_nll, examples_nll};
use tuna_eval::PromptSpec;
use tuna_model::{LoadOptions, Pretrained};
use tuna_testkit::{tiny_model, TinySpec};

const DATA: &str = concat!(
    "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"is the sea at rest\"}, {\"role\": \"assistant\", \"content\": \"the sea is\"}]}\n",
    "{\"prompt\": \"the cat\", \"completion\": \"is in the hat\"}\n",
    "{\"text\": \"at the sea there is a cat\"}\n",
    "{\"instruction\": \"name a cat\", \"input\": \"\", \"output\": \"tin\"}\n",
);

fn examples(p: &Pretrained, options: &EncodeOptions) -> Vec<tuna_data::Example> {
    let path = Path::new("d.jsonl");
    let parsed = parse_records(
        path,
        &parse_jsonl(path, DATA.as_bytes()).unwrap(),
        &FieldNames::default(),
    )
    .unwrap();
    let encoder = Encoder::new(p, options).unwrap();
    parsed
        .records
        .iter()
        .flat_map(|r| encoder.encode(path, r).unwrap().into_examples())
        .collect()
}

#[test]
fn the_prompt_of_a_training_example_is_what_generate_chat_feeds() {
    let m = tiny_model(TinySpec::default());
    let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    let x = &examples(&p, &EncodeOptions::default())[0];
    let first_target = x.trained.iter().position(|&t| t).unwrap();
    let spec = PromptSpec {
        text: "is the sea at rest".into(),
        chat: true,
        system: Some("be brief".into()),
    };
    assert_eq!(spec.encode(&p).unwrap(), x.ids[..first_target]);
}

#[test]
fn packed_batches_score_exactly_like_separate_rows() {
    let m = tiny_model(TinySpec::default());
    let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    let xs = examples(&p, &EncodeOptions::default());
    let (want, n) = examples_nll(&p.model, &xs, 4096).unwrap();
    let options = BatchOptions {
        batch_size: 2,
        pack: true,
        pack_len: 128,
        pad_to_multiple_of: 8,
        ..Default::default()
    };
    let (mut got, mut count) = (0.0, 0);
    let plan = epoch_plan(&xs, &options, 3, 0);
    assert!(
        plan.iter().flatten().any(|row| row.len() > 1),
        "some row holds several examples"
    );
    for rows in &plan {
        let (s, c) = batch_nll(
            &p.model,
            &make_batch(&xs, rows, 2, options.pad_to_multiple_of),
        )
        .unwrap();
        got += s;
        count += c;
    }
    assert_eq!(count, n);
    assert!(
        (got - want).abs() < 1e-3 * want.abs().max(1.0),
        "{got} vs {want}"
    );
}
