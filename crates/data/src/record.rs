//! Record kinds. This first cut knows `{"text": ...}` records, used by `tuna eval`'s
//! language-model loss.

use std::path::Path;

use serde_json::Value;

use crate::error::{collect_errors, DataError};
use crate::jsonl::{kind, JsonlLine};

#[derive(Debug, Clone, PartialEq)]
pub struct TextRecord {
    pub line: usize,
    pub text: String,
}

/// The `text` field of every line; all bad lines reported together.
pub fn text_records(path: &Path, lines: &[JsonlLine]) -> Result<Vec<TextRecord>, DataError> {
    let mut out = Vec::with_capacity(lines.len());
    let mut errors = Vec::new();
    for l in lines {
        match l.object.get("text") {
            Some(Value::String(s)) if !s.is_empty() => out.push(TextRecord {
                line: l.line,
                text: s.clone(),
            }),
            Some(Value::String(_)) => {
                errors.push(DataError::bad_record(path, l.line, "text", "is empty"))
            }
            Some(other) => errors.push(DataError::bad_record(
                path,
                l.line,
                "text",
                format!("expected a string, found {}", kind(other)),
            )),
            None => {
                let keys: Vec<&str> = l.object.keys().map(String::as_str).collect();
                errors.push(DataError::bad_record(
                    path,
                    l.line,
                    "text",
                    format!("missing (the record has: {})", keys.join(", ")),
                ))
            }
        }
    }
    collect_errors(errors)?;
    Ok(out)
}
