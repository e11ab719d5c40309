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

/// Keeps the file's first `limit` records (non-blank lines, good or bad) of a lenient read:
/// the good lines among them and the errors of the bad ones.
pub fn keep_first(lines: &mut Vec<JsonlLine>, errors: &mut Vec<DataError>, limit: usize) {
    let mut numbers: Vec<usize> = lines.iter().map(|l| l.line).collect();
    numbers.extend(errors.iter().map(DataError::line));
    numbers.sort_unstable();
    if let Some(&cutoff) = numbers.get(limit.max(1) - 1) {
        lines.retain(|l| l.line <= cutoff);
        errors.retain(|e| e.line() <= cutoff);
    }
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
        match serde_json::from_str::<NoDuplicateKeys>(text).map(|v| v.0) {
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

/// A JSON value whose objects, at any depth, name each key once. serde_json's `Value` keeps
/// the last of two equal keys silently: `{"completion": "a", "completion": "b"}` would train
/// on "b" with no word said.
struct NoDuplicateKeys(Value);

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(NoDuplicateKeys)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(NoDuplicateKeys(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key `{key}` appears twice in one object (JSON keeps only the last)"
                )));
            }
            let NoDuplicateKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
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
    fn a_key_given_twice_is_an_error_at_any_depth() {
        let data = b"{\"text\": \"a\", \"text\": \"b\"}\n{\"messages\": [{\"role\": \"user\", \"role\": \"x\"}]}\n{\"text\": \"c\", \"n\": [1, 2.5, null, true]}\n";
        let (lines, errors) = parse_jsonl_lenient(Path::new("d.jsonl"), data).unwrap();
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "d.jsonl:1: (line): invalid JSON: the key `text` appears twice in one object (JSON keeps only the last) at line 1 column 20",
                "d.jsonl:2: (line): invalid JSON: the key `role` appears twice in one object (JSON keeps only the last) at line 1 column 37",
            ]
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(
            serde_json::Value::Object(lines[0].object.clone()),
            serde_json::json!({"text": "c", "n": [1, 2.5, null, true]})
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
