use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {field}: {reason}")]
    BadRecord {
        path: PathBuf,
        line: usize,
        field: String,
        reason: String,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{field}: {reason}")]
    BadOption { field: String, reason: String },
    /// Several bad records; each is printed on its own line, the first `SHOWN_ERRORS` of them.
    #[error("{}", show_many(.0))]
    Many(Vec<DataError>),
}

/// How many of a file's bad lines an error prints: a file with a systematic problem (a
/// wrong field name) fails on every line, and a screenful says it as well as thousands.
pub const SHOWN_ERRORS: usize = 20;

fn show_many(errors: &[DataError]) -> String {
    let mut lines: Vec<String> = errors
        .iter()
        .take(SHOWN_ERRORS)
        .map(|e| e.to_string())
        .collect();
    if errors.len() > SHOWN_ERRORS {
        lines.push(format!(
            "... and {} more bad lines ({} in all; `tuna data validate --json FILE` lists every one)",
            errors.len() - SHOWN_ERRORS,
            errors.len()
        ));
    }
    lines.join("\n")
}

impl DataError {
    pub fn bad_record(
        path: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::BadRecord {
            path: path.into(),
            line,
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::BadRecord { .. } | Self::Many(_) => {
                Some("each line must be one JSON object, e.g. {\"text\": \"...\"}".into())
            }
            Self::BadFile { .. } => {
                Some("the file must be UTF-8 JSON Lines: one JSON object per line".into())
            }
            Self::BadOption { .. } => {
                Some("run the command with --help for the accepted values".into())
            }
            Self::Io { .. } => None,
        }
    }
}

impl DataError {
    /// Every message, one per bad line (none left out, unlike the display of `Many`).
    pub fn each(&self) -> Vec<String> {
        match self {
            Self::Many(all) => all.iter().map(|e| e.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }

    /// The line it is about, for ordering (0 when it is about the whole file).
    pub fn line(&self) -> usize {
        match self {
            Self::BadRecord { line, .. } => *line,
            _ => 0,
        }
    }
}

/// Collapses a list of errors into one (the list itself, in line order, when there are
/// several).
pub fn collect_errors(mut errors: Vec<DataError>) -> Result<(), DataError> {
    errors.sort_by_key(DataError::line);
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(DataError::Many(errors)),
    }
}
