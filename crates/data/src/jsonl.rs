//! JSON Lines: one JSON object per line; blank lines are skipped; a UTF-8 BOM and CRLF line
//! ends are accepted. Every bad line is reported, not just the first.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{collect_errors, DataError};

#[derive(Debug, Clone, PartialEq)]
pub struct JsonlLine {
    /// 1-based line number in the file.
    pub line: usize,
    pub object: Map<String, Value>,
}

pub fn read_jsonl(path: &Path) -> Result<Vec<JsonlLine>, DataError> {
    let (lines, errors) = read_jsonl_lenient(path)?;
    collect_errors(errors)?;
    Ok(lines)
}

/// The good lines and the errors of the bad ones; `Err` only when the file cannot be read
/// or holds no record at all.
pub fn read_jsonl_lenient(path: &Path) -> Result<(Vec<JsonlLine>, Vec<DataError>), DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.into(),
        source,
    })?;
    parse_jsonl_lenient(path, &bytes)
}

pub fn parse_jsonl(path: &Path, bytes: &[u8]) -> Result<Vec<JsonlLine>, DataError> {
    let (lines, errors) = parse_jsonl_lenient(path, bytes)?;
    collect_errors(errors)?;
    Ok(lines)
}

pub fn parse_jsonl_lenient(
    path: &Path,
    bytes: &[u8],
) -> Result<(Vec<JsonlLine>, Vec<DataError>), DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                errors.push(DataError::bad_record(
                    path,
                    line_no,
                    "(line)",
                    format!("not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1),
                ));
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => lines.push(JsonlLine {
                line: line_no,
                object,
            }),
            Ok(other) => errors.push(DataError::bad_record(
                path,
                line_no,
                "(line)",
                format!("expected a JSON object, found {}", kind(&other)),
            )),
            Err(e) => errors.push(DataError::bad_record(
                path,
                line_no,
                "(line)",
                format!("invalid JSON: {e}"),
            )),
        }
    }
    if lines.is_empty() && errors.is_empty() {
        return Err(DataError::BadFile {
            path: path.into(),
            reason: "no records (the file is empty)".into(),
        });
    }
    Ok((lines, errors))
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let data = b"\xEF\xBB\xBF{\"text\": \"a\"}\r\n\n[1]\n{bad\n\xff\xfe\n{\"text\": \"b\"}\n";
        let err = parse_jsonl(Path::new("d.jsonl"), data)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "d.jsonl:3: (line): expected a JSON object, found an array\n\
             d.jsonl:4: (line): invalid JSON: key must be a string at line 1 column 2\n\
             d.jsonl:5: (line): not valid UTF-8 (byte 1 of the line)"
        );
    }

    #[test]
    fn bom_crlf_and_blank_lines_are_accepted() {
        let lines = parse_jsonl(
            Path::new("d.jsonl"),
            b"\xEF\xBB\xBF{\"a\": 1}\r\n\r\n{\"a\": 2}",
        )
        .unwrap();
        assert_eq!(lines.iter().map(|l| l.line).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn an_empty_file_is_an_error() {
        let err = parse_jsonl(Path::new("e.jsonl"), b"\n \n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "e.jsonl: no records (the file is empty)");
    }
}
