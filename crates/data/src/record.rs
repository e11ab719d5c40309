//! Record kinds, detected per line: `{"text"}`, `{"prompt","completion"}`,
//! `{"messages":[{"role","content"}]}` and alpaca `{"instruction","input","output"}`.
//! Field names can be remapped; fields a record does not use are reported once per file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tuna_model::Message;

use crate::error::{collect_errors, DataError};
use crate::jsonl::{kind, JsonlLine};

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Plain text: every token is trained on.
    Text(String),
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    /// A conversation; assistant turns are the targets.
    Messages(Vec<Message>),
    Alpaca {
        instruction: String,
        input: String,
        output: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Text,
    PromptCompletion,
    Messages,
    Alpaca,
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Self::Text(_) => RecordKind::Text,
            Self::PromptCompletion { .. } => RecordKind::PromptCompletion,
            Self::Messages(_) => RecordKind::Messages,
            Self::Alpaca { .. } => RecordKind::Alpaca,
        }
    }
}

impl RecordKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::PromptCompletion => "prompt/completion",
            Self::Messages => "messages",
            Self::Alpaca => "alpaca",
        }
    }
}

/// The JSON field names of each record kind (remappable in config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldNames {
    pub text: String,
    pub prompt: String,
    pub completion: String,
    pub messages: String,
    pub role: String,
    pub content: String,
    pub instruction: String,
    pub input: String,
    pub output: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        let s = String::from;
        Self {
            text: s("text"),
            prompt: s("prompt"),
            completion: s("completion"),
            messages: s("messages"),
            role: s("role"),
            content: s("content"),
            instruction: s("instruction"),
            input: s("input"),
            output: s("output"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LineRecord {
    /// 1-based line in its file.
    pub line: usize,
    pub record: Record,
}

/// A file's records, and the fields no record kind used (name -> first line).
#[derive(Debug, Clone, Default)]
pub struct ParsedRecords {
    pub records: Vec<LineRecord>,
    pub unknown_fields: BTreeMap<String, usize>,
}

const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Parses every line; all bad lines are reported together.
pub fn parse_records(
    path: &Path,
    lines: &[JsonlLine],
    fields: &FieldNames,
) -> Result<ParsedRecords, DataError> {
    let (out, errors) = parse_records_lenient(path, lines, fields);
    collect_errors(errors)?;
    Ok(out)
}

/// The records of the good lines, and the errors of the others.
pub fn parse_records_lenient(
    path: &Path,
    lines: &[JsonlLine],
    fields: &FieldNames,
) -> (ParsedRecords, Vec<DataError>) {
    let mut out = ParsedRecords::default();
    let mut errors = Vec::new();
    for l in lines {
        let mut used: Vec<&str> = Vec::new();
        match parse_one(path, l, fields, &mut used) {
            Ok(record) => out.records.push(LineRecord {
                line: l.line,
                record,
            }),
            Err(mut e) => errors.append(&mut e),
        }
        for key in l.object.keys() {
            if !used.contains(&key.as_str()) {
                out.unknown_fields.entry(key.clone()).or_insert(l.line);
            }
        }
    }
    (out, errors)
}

/// A string field: present, a string, and (when `non_empty`) not blank.
fn string_field(
    path: &Path,
    line: usize,
    obj: &Map<String, Value>,
    name: &str,
    non_empty: bool,
    errors: &mut Vec<DataError>,
) -> Option<String> {
    match obj.get(name) {
        Some(Value::String(s)) if non_empty && s.trim().is_empty() => {
            errors.push(DataError::bad_record(path, line, name, "is empty"));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(DataError::bad_record(
                path,
                line,
                name,
                format!("expected a string, found {}", kind(other)),
            ));
            None
        }
        None => {
            errors.push(DataError::bad_record(path, line, name, "missing"));
            None
        }
    }
}

fn parse_one<'a>(
    path: &Path,
    l: &JsonlLine,
    f: &'a FieldNames,
    used: &mut Vec<&'a str>,
) -> Result<Record, Vec<DataError>> {
    let obj = &l.object;
    let line = l.line;
    let mut errors = Vec::new();
    let has = |k: &str| obj.contains_key(k);
    let record = if has(&f.messages) {
        used.push(&f.messages);
        parse_messages(path, line, &obj[&f.messages], f, &mut errors).map(Record::Messages)
    } else if has(&f.prompt) || has(&f.completion) {
        used.extend([f.prompt.as_str(), f.completion.as_str()]);
        let prompt = string_field(path, line, obj, &f.prompt, true, &mut errors);
        let completion = string_field(path, line, obj, &f.completion, true, &mut errors);
        prompt
            .zip(completion)
            .map(|(prompt, completion)| Record::PromptCompletion { prompt, completion })
    } else if has(&f.instruction) || has(&f.output) {
        used.extend([f.instruction.as_str(), f.input.as_str(), f.output.as_str()]);
        let instruction = string_field(path, line, obj, &f.instruction, true, &mut errors);
        let input = if has(&f.input) {
            string_field(path, line, obj, &f.input, false, &mut errors)
        } else {
            Some(String::new())
        };
        let output = string_field(path, line, obj, &f.output, true, &mut errors);
        match (instruction, input, output) {
            (Some(instruction), Some(input), Some(output)) => Some(Record::Alpaca {
                instruction,
                input,
                output,
            }),
            _ => None,
        }
    } else if has(&f.text) {
        used.push(&f.text);
        string_field(path, line, obj, &f.text, true, &mut errors).map(Record::Text)
    } else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        errors.push(DataError::bad_record(
            path,
            line,
            "(record)",
            format!(
                "no known record kind: expected `{}`, `{}`+`{}`, `{}` or `{}`+`{}` (found: {})",
                f.text,
                f.prompt,
                f.completion,
                f.messages,
                f.instruction,
                f.output,
                if keys.is_empty() {
                    "no fields".to_string()
                } else {
                    keys.join(", ")
                }
            ),
        ));
        None
    };
    match record {
        Some(r) if errors.is_empty() => Ok(r),
        _ => Err(errors),
    }
}

fn parse_messages(
    path: &Path,
    line: usize,
    value: &Value,
    f: &FieldNames,
    errors: &mut Vec<DataError>,
) -> Option<Vec<Message>> {
    let field = &f.messages;
    let Value::Array(items) = value else {
        errors.push(DataError::bad_record(
            path,
            line,
            field,
            format!("expected an array, found {}", kind(value)),
        ));
        return None;
    };
    if items.is_empty() {
        errors.push(DataError::bad_record(path, line, field, "is empty"));
        return None;
    }
    let before = errors.len();
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Value::Object(m) = item else {
            errors.push(DataError::bad_record(
                path,
                line,
                &at,
                format!("expected an object, found {}", kind(item)),
            ));
            continue;
        };
        let role = string_field(path, line, m, &f.role, true, errors)
            .map(|r| (r, format!("{at}.{}", f.role)));
        let content = string_field(path, line, m, &f.content, false, errors);
        // Re-label the errors string_field pushed with the message's index.
        for e in errors.iter_mut().skip(before) {
            if let DataError::BadRecord { field: ef, .. } = e {
                if ef == &f.role || ef == &f.content {
                    *ef = format!("{at}.{ef}");
                }
            }
        }
        let (Some((role, role_at)), Some(content)) = (role, content) else {
            continue;
        };
        if !ROLES.contains(&role.as_str()) {
            errors.push(DataError::bad_record(
                path,
                line,
                role_at,
                format!("unknown role `{role}` (expected system, user or assistant)"),
            ));
            continue;
        }
        if role == "system" && i != 0 {
            errors.push(DataError::bad_record(
                path,
                line,
                role_at,
                "a system message must come first",
            ));
            continue;
        }
        if role == "assistant" && content.trim().is_empty() {
            errors.push(DataError::bad_record(
                path,
                line,
                format!("{at}.{}", f.content),
                "an assistant turn is empty",
            ));
            continue;
        }
        messages.push(Message { role, content });
    }
    if errors.len() > before {
        return None;
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        errors.push(DataError::bad_record(
            path,
            line,
            field,
            "has no assistant turn to train on",
        ));
        return None;
    }
    Some(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonl::parse_jsonl;

    fn parse(text: &str) -> Result<ParsedRecords, DataError> {
        let p = Path::new("d.jsonl");
        parse_records(p, &parse_jsonl(p, text.as_bytes())?, &FieldNames::default())
    }

    #[test]
    fn kinds_are_detected_per_line() {
        let parsed = parse(concat!(
            "{\"text\": \"a\"}\n",
            "{\"prompt\": \"p\", \"completion\": \"c\", \"id\": 7}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n",
            "{\"instruction\": \"i\", \"input\": \"\", \"output\": \"o\", \"id\": 8}\n",
        ))
        .unwrap();
        let kinds: Vec<RecordKind> = parsed.records.iter().map(|r| r.record.kind()).collect();
        assert_eq!(
            kinds,
            [
                RecordKind::Text,
                RecordKind::PromptCompletion,
                RecordKind::Messages,
                RecordKind::Alpaca
            ]
        );
        assert_eq!(
            parsed.unknown_fields,
            BTreeMap::from([("id".to_string(), 2)])
        );
    }

    #[test]
    fn every_problem_of_every_line_is_named() {
        let err = parse(concat!(
            "{\"messages\": []}\n",
            "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": 3}]}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n",
            "{\"prompt\": \"p\"}\n",
            "{\"foo\": 1}\n",
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "d.jsonl:1: messages: is empty\n\
             d.jsonl:2: messages[0].role: unknown role `robot` (expected system, user or assistant)\n\
             d.jsonl:2: messages[1].content: expected a string, found a number\n\
             d.jsonl:3: messages: has no assistant turn to train on\n\
             d.jsonl:4: completion: missing\n\
             d.jsonl:5: (record): no known record kind: expected `text`, `prompt`+`completion`, `messages` or `instruction`+`output` (found: foo)"
        );
    }

    #[test]
    fn field_names_can_be_remapped() {
        let p = Path::new("d.jsonl");
        let lines = parse_jsonl(p, b"{\"question\": \"q\", \"answer\": \"a\"}").unwrap();
        let fields = FieldNames {
            prompt: "question".into(),
            completion: "answer".into(),
            ..Default::default()
        };
        let parsed = parse_records(p, &lines, &fields).unwrap();
        assert_eq!(
            parsed.records[0].record,
            Record::PromptCompletion {
                prompt: "q".into(),
                completion: "a".into()
            }
        );
    }
}
