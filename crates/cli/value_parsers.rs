//! Flag values checked as clap parses them, so a bad one is a usage error naming its flag.

use std::path::PathBuf;

/// `--quant`: the same spellings as `--weights` (q8_0 or q8-0).
pub fn gguf_quant(s: &str) -> Result<tuna_model::export::GgufQuant, String> {
    tuna_model::export::GgufQuant::parse(s).ok_or_else(|| "expected f16, q8_0 or q4_k".into())
}

/// A count that must be at least 1 (a benchmark of nothing has no median).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A file the command reads, checked as its flag is parsed, so that a missing path or a
/// directory is reported with the flag's name (clap adds it) and the exit code of a usage
/// error.
pub fn input_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    let relative = || match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => {
            format!(
                " (relative paths start at the current directory, {})",
                cwd.display()
            )
        }
        _ => String::new(),
    };
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            let mut jsonl: Vec<String> = std::fs::read_dir(&path)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".jsonl"))
                .collect();
            jsonl.sort();
            let inside = match jsonl.first() {
                Some(first) => format!(", e.g. {}", path.join(first).display()),
                None => String::new(),
            };
            Err(format!("is a directory; pass a file{inside}"))
        }
        Ok(_) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("no such file{}", relative()))
        }
        Err(e) => Err(e.to_string()),
    }
}
