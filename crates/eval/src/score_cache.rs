//! Scored strategies kept on disk, so a study that is run again (or was stopped part-way)
//! scores only what it has not scored yet: one JSON file per strategy row, named by the
//! sha256 of everything the row depends on — the model's files and weight form, tuna's
//! version, the adapter's files, the strategy, the wording, the shots' source, every test
//! row, the metrics and the scoring settings. Change any of them and the row is scored
//! again; a damaged or unreadable file is scored again, never trusted.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::compare::{CompareSetup, StrategyRow};
use crate::error::{EvalError, Result};
use crate::provenance::sha256_file;
use crate::strategy::Strategy;
use crate::task::TaskExample;

pub struct ScoreCache {
    dir: PathBuf,
    /// What every row depends on beyond the setup: the model's files, the weight form the
    /// scoring ran with, tuna's version.
    context: String,
}

impl ScoreCache {
    /// The cache in `dir` (created), for rows scored under `context`.
    pub fn open(dir: &Path, context: impl Into<String>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            context: context.into(),
        })
    }

    /// The row's file name: the sha256 of what it depends on; None when the row cannot be
    /// named (an adapter without facts to hash).
    pub fn key(&self, setup: &CompareSetup, strategy: Strategy) -> Result<Option<String>> {
        let mut h = Hasher::default();
        h.text("tuna score cache 1");
        h.text(&self.context);
        h.text(strategy.key());
        if strategy.uses_adapter() {
            let Some(facts) = &setup.adapter else {
                return Ok(None);
            };
            let dir = Path::new(&facts.path);
            for file in [tuna_lora::peft::WEIGHTS_FILE, tuna_lora::peft::CONFIG_FILE] {
                let path = dir.join(file);
                match path.is_file() {
                    true => h.text(&sha256_file(&path)?),
                    false => return Ok(None),
                }
            }
            // The row shows the adapter's cost columns.
            h.text(&serde_json::to_string(facts).unwrap_or_default());
            h.text(&format!("{:?}", setup.tuned_shape));
            h.text(&setup.tuned_shots.to_string());
        } else {
            h.text(&format!("{:?}", setup.prompt_shape));
        }
        let k = match strategy {
            Strategy::Tuned => setup.tuned_shots,
            _ => strategy.shot_count(setup.shots),
        };
        h.text(&format!(
            "shots {} draws {} seed {} method {:?} metrics {:?} normalization {:?} max_new {} cot_max_new {} batch {} kind {:?}",
            setup.shots,
            if k > 0 { setup.shot_draws } else { 1 },
            setup.seed,
            setup.method,
            setup.metrics,
            setup.normalization,
            setup.max_new_tokens,
            setup.cot_max_new_tokens,
            setup.batch_size,
            setup.kind,
        ));
        h.examples(setup.test);
        if k > 0 {
            h.examples(setup.train);
        }
        Ok(Some(h.finish()))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The row scored under `key`, if one was kept and reads back whole.
    pub fn get(&self, key: &str) -> Option<StrategyRow> {
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        let mut row: StrategyRow = serde_json::from_str(&text).ok()?;
        for m in &mut row.metrics {
            m.name = m.metric.name();
        }
        Some(row)
    }

    /// Keeps `row` under `key` (written whole or not at all).
    pub fn put(&self, key: &str, row: &StrategyRow) -> Result<()> {
        let path = self.path(key);
        let tmp = self
            .dir
            .join(format!(".{key}.{}.json.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(serde_json::to_string(row)?.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(&path, e)
        })
    }
}

fn io_error(path: &Path, e: std::io::Error) -> EvalError {
    EvalError::ScoreCache {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// sha256 over length-prefixed pieces, so no two sequences of pieces hash alike by
/// running together.
#[derive(Default)]
struct Hasher(Sha256);

impl Hasher {
    fn text(&mut self, s: &str) {
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
    }

    fn examples(&mut self, examples: &[TaskExample]) {
        self.text(&examples.len().to_string());
        for x in examples {
            self.text(&x.line.to_string());
            self.text(&x.context.len().to_string());
            for m in &x.context {
                self.text(&m.role);
                self.text(&m.content);
            }
            self.text(&x.reference);
            match &x.rationale {
                Some(r) => self.text(&format!("rationale {r}")),
                None => self.text("no rationale"),
            }
        }
    }

    fn finish(self) -> String {
        crate::provenance::hex(&self.0.finalize())
    }
}
