//! JSONL, fed damaged copies of a valid file: every bad line is an error naming the file and
//! the line, and nothing panics. `TUNA_FUZZ_CASES` sets the cases; the ignored test runs
//! 20,000.

use std::path::Path;

use tuna_data::jsonl::parse_jsonl_lenient;
use tuna_data::record::{parse_records_lenient, FieldNames};
use tuna_testkit::fuzz::{cases, check_reader};

const VALID: &str = concat!(
    "{\"prompt\": \"is 2 even\", \"completion\": \"yes\"}\n",
    "{\"text\": \"a line of text, with \\\"quotes\\\" and \\u00e9\"}\n",
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be terse.\"}, {\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n",
    "{\"instruction\": \"Add.\", \"input\": \"2 2\", \"output\": \"4\"}\n",
);

fn jsonl(n: usize) {
    let path = Path::new("data/train.jsonl");
    check_reader("jsonl", VALID.as_bytes(), n, "data/train.jsonl", |bytes| {
        let (lines, mut errors) = parse_jsonl_lenient(path, bytes).map_err(|e| e.to_string())?;
        let (_, record_errors) = parse_records_lenient(path, &lines, &FieldNames::default());
        errors.extend(record_errors);
        // Every error, one per bad line, must name the file.
        match errors
            .iter()
            .map(|e| e.to_string())
            .find(|m| !m.contains("data/train.jsonl"))
        {
            Some(unnamed) => Err(unnamed),
            None => match errors.first() {
                Some(e) => Err(e.to_string()),
                None => Ok(()),
            },
        }
    });
}

#[test]
fn damaged_jsonl_is_reported_line_by_line() {
    jsonl(cases(1000));
}

#[test]
#[ignore = "long: 20,000 cases"]
fn damaged_jsonl_at_length() {
    jsonl(20_000);
}
