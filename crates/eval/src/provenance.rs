//! Exactly what produced a report: sha256 of the model's files, the adapter's, every data
//! file and the prompt wording, tuna's version and the command line. report.json holds the
//! full hashes; the reports show the first 12 hex digits.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Provenance {
    /// tuna's version and commit.
    pub tuna: String,
    pub command_line: Vec<String>,
    /// (what it is, path, sha256), in the order given.
    pub files: Vec<HashedFile>,
    /// sha256 of the prompting strategies' wording and system turn, as rendered into the
    /// prompts (template, system).
    pub templates: Vec<HashedText>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HashedFile {
    pub role: String,
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HashedText {
    pub role: String,
    pub sha256: String,
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |e: std::io::Error| EvalError::Provenance {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn sha256_text(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Provenance {
    pub fn new(tuna: &str, command_line: Vec<String>) -> Self {
        Self {
            tuna: tuna.into(),
            command_line,
            ..Self::default()
        }
    }

    /// Hashes `path` (a file, or a directory's files in name order) as `role`.
    pub fn add(&mut self, role: &str, path: &Path) -> Result<()> {
        let mut paths: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| EvalError::Provenance {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        for p in paths.drain(..) {
            self.files.push(HashedFile {
                role: role.into(),
                sha256: sha256_file(&p)?,
                path: p.display().to_string(),
            });
        }
        Ok(())
    }

    pub fn add_text(&mut self, role: &str, text: &str) {
        self.templates.push(HashedText {
            role: role.into(),
            sha256: sha256_text(text),
        });
    }

    /// One line for the reports: each role with its short hash(es).
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for f in &self.files {
            let name = Path::new(&f.path)
                .file_name()
                .map_or(f.path.clone(), |n| n.to_string_lossy().into_owned());
            parts.push(format!("{} {name} {}", f.role, &f.sha256[..12]));
        }
        for t in &self.templates {
            parts.push(format!("{} {}", t.role, &t.sha256[..12]));
        }
        format!(
            "Provenance (sha256): {}; tuna {}.",
            parts.join(", "),
            self.tuna
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_published_sha256_vectors() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            sha256_text("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_text(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "abc").unwrap();
        let mut p = Provenance::new("0.1.0", vec!["tuna".into()]);
        p.add("test", &dir.path().join("a.txt")).unwrap();
        p.add_text("template", "");
        assert_eq!(p.files[0].sha256, sha256_text("abc"));
        assert_eq!(
            p.summary(),
            "Provenance (sha256): test a.txt ba7816bf8f01, template e3b0c44298fc; tuna 0.1.0."
        );
        let missing = p.add("train", &dir.path().join("nope.jsonl")).unwrap_err();
        assert!(missing.to_string().contains("nope.jsonl"), "{missing}");
    }
}
