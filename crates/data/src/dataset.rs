//! A JSONL file read, parsed and encoded into examples, with the counts `tuna data validate`
//! reports and training logs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::encode::{Encoded, Encoder, Example};
use crate::error::{collect_errors, DataError};
use crate::jsonl::{keep_first, read_jsonl_lenient};
use crate::record::{parse_records_lenient, FieldNames, LineRecord, Record, RecordKind};

#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub examples: Vec<Example>,
    pub records: usize,
    pub kinds: BTreeMap<RecordKind, usize>,
    /// Examples longer than max_seq_len that lost tokens.
    pub truncated: usize,
    /// Examples dropped because truncation removed every target token.
    pub skipped_untrainable: usize,
    /// Their lines.
    pub skipped_lines: Vec<usize>,
    /// The parsed records, by line (the pool training shots come from).
    pub records_parsed: Vec<LineRecord>,
    /// Records identical to an earlier one (same JSON object).
    pub duplicates: usize,
    /// Fields no record kind uses: name -> first line.
    pub unknown_fields: BTreeMap<String, usize>,
    /// Line -> stable hash of its JSON object (split buckets).
    line_hashes: HashMap<usize, u64>,
}

/// FNV-1a, 64 bits: a stable hash for split buckets and duplicate detection (the same on
/// every platform and run, unlike std's hasher).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where training shots come from: the records of the train split (after any valid split
/// or subset, so that no held-out record shows up as a shot).
#[derive(Clone, Copy)]
pub struct ShotPool<'a> {
    pub records: &'a [LineRecord],
    /// The pool is the same file's records: a record is never its own shot.
    pub same_file: bool,
}

/// For each record, `k` pool records (prompt/completion ones) as its shots, as indices into
/// the pool, drawn with a seed of its own (`seed` and its line), so a record's shots do not
/// depend on the rest of the draw.
fn draw_training_shots(
    records: &[LineRecord],
    pool: ShotPool,
    k: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    use rand::seq::index::sample;
    use rand::SeedableRng;
    if k == 0 {
        return vec![Vec::new(); records.len()];
    }
    let usable: Vec<usize> = (0..pool.records.len())
        .filter(|&i| matches!(pool.records[i].record, Record::PromptCompletion { .. }))
        .collect();
    let position: HashMap<usize, usize> = usable
        .iter()
        .enumerate()
        .map(|(at, &i)| (pool.records[i].line, at))
        .collect();
    records
        .iter()
        .map(|r| {
            // The pool without the record itself: positions past it shift by one.
            let own = if pool.same_file {
                position.get(&r.line).copied()
            } else {
                None
            };
            let others = usable.len() - usize::from(own.is_some());
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed ^ (r.line as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            sample(&mut rng, others, k.min(others))
                .into_iter()
                .map(|at| match own {
                    Some(p) if at >= p => usable[at + 1],
                    _ => usable[at],
                })
                .collect()
        })
        .collect()
}

impl Dataset {
    /// Reads, parses and encodes `path`; every bad line is reported, not just the first.
    /// Training shots, when the encoder adds them, come from the file itself.
    pub fn load(path: &Path, encoder: &Encoder, fields: &FieldNames) -> Result<Self, DataError> {
        Self::load_with_shots(path, encoder, fields, None)
    }

    /// `load`, with the training shots drawn from `pool` (None: the file itself).
    pub fn load_with_shots(
        path: &Path,
        encoder: &Encoder,
        fields: &FieldNames,
        pool: Option<ShotPool>,
    ) -> Result<Self, DataError> {
        Self::load_first(path, encoder, fields, pool, None)
    }

    /// `load_with_shots` over the file's first `limit` records (non-blank lines, good or
    /// bad): only those are encoded and only their errors reported. Shots drawn from the
    /// file itself still come from all of its good records, so a limit does not change
    /// which shots a record gets.
    pub fn load_first(
        path: &Path,
        encoder: &Encoder,
        fields: &FieldNames,
        pool: Option<ShotPool>,
        limit: Option<usize>,
    ) -> Result<Self, DataError> {
        let (mut lines, mut errors) = read_jsonl_lenient(path)?;
        let mut shot_lines = None;
        if let Some(limit) = limit {
            if pool.is_none() && encoder.options().shots > 0 {
                shot_lines = Some(lines.clone());
            }
            keep_first(&mut lines, &mut errors, limit);
        }
        // serde_json's map is sorted by key, so equal objects print the same.
        let line_hashes: HashMap<usize, u64> = lines
            .iter()
            .map(|l| {
                (
                    l.line,
                    stable_hash(
                        serde_json::to_string(&l.object)
                            .unwrap_or_default()
                            .as_bytes(),
                    ),
                )
            })
            .collect();
        let mut seen = HashSet::new();
        let duplicates = lines
            .iter()
            .filter(|l| !seen.insert(line_hashes[&l.line]))
            .count();
        let (parsed, record_errors) = parse_records_lenient(path, &lines, fields);
        errors.extend(record_errors);
        let whole_file = shot_lines.map(|all| parse_records_lenient(path, &all, fields).0);
        let pool = pool.unwrap_or(ShotPool {
            records: whole_file.as_ref().map_or(&parsed.records, |p| &p.records),
            same_file: true,
        });
        let shots = draw_training_shots(
            &parsed.records,
            pool,
            encoder.options().shots,
            encoder.options().shot_seed,
        );
        let encoded: Vec<Result<Encoded, DataError>> = parsed
            .records
            .par_iter()
            .zip(&shots)
            .map(|(r, shots)| {
                let shots: Vec<&LineRecord> = shots.iter().map(|&i| &pool.records[i]).collect();
                encoder.encode_with_shots(path, r, &shots)
            })
            .collect();
        let mut kinds = BTreeMap::new();
        for r in &parsed.records {
            *kinds.entry(r.record.kind()).or_insert(0) += 1;
        }
        let mut examples = Vec::new();
        let mut truncated = 0;
        let mut skipped_lines = Vec::new();
        for e in encoded {
            match e {
                Ok(Encoded::SkippedUntrainable { line }) => skipped_lines.push(line),
                Ok(enc) => {
                    let exs = enc.into_examples();
                    truncated += exs.iter().filter(|x| x.truncated).count();
                    examples.extend(exs);
                }
                Err(err) => errors.push(err),
            }
        }
        collect_errors(errors)?;
        Ok(Self {
            path: path.into(),
            examples,
            records: parsed.records.len(),
            kinds,
            truncated,
            skipped_untrainable: skipped_lines.len(),
            skipped_lines,
            duplicates,
            unknown_fields: parsed.unknown_fields,
            line_hashes,
            records_parsed: parsed.records,
        })
    }

    /// Keeps the records whose line is in `keep` (examples, skipped lines, parsed records)
    /// and recounts what depends on them.
    pub fn retain_lines(&mut self, keep: &HashSet<usize>) {
        self.examples.retain(|x| keep.contains(&x.line));
        self.skipped_lines.retain(|l| keep.contains(l));
        self.records_parsed.retain(|r| keep.contains(&r.line));
        self.truncated = self.examples.iter().filter(|x| x.truncated).count();
        self.skipped_untrainable = self.skipped_lines.len();
        self.records = self.records_parsed.len();
    }

    /// Every line this dataset holds a record of.
    pub fn lines(&self) -> HashSet<usize> {
        self.records_parsed.iter().map(|r| r.line).collect()
    }

    pub fn tokens(&self) -> usize {
        self.examples.iter().map(|x| x.ids.len()).sum()
    }

    pub fn trained_tokens(&self) -> usize {
        self.examples.iter().map(Example::n_trained).sum()
    }

    /// Keeps the examples of `n` records chosen by a seeded hash order of the records, so
    /// that for one seed a smaller subset is always inside a larger one (learning curves).
    pub fn subset(mut self, n: usize, seed: u64) -> Self {
        let mut lines: Vec<(u64, usize)> = self
            .line_hashes
            .iter()
            .map(|(&line, &h)| {
                let mut key = seed.to_le_bytes().to_vec();
                key.extend_from_slice(&h.to_le_bytes());
                key.extend_from_slice(&(line as u64).to_le_bytes());
                (stable_hash(&key), line)
            })
            .collect();
        lines.sort_unstable();
        let keep: HashSet<usize> = lines.iter().take(n).map(|&(_, line)| line).collect();
        self.retain_lines(&keep);
        self
    }

    /// Splits off a deterministic held-out share: an example goes to the second part when the
    /// hash of its record falls in the first `fraction` of 10,000 buckets. Equal records land
    /// on the same side, and adding records never moves the others.
    pub fn split_fraction(mut self, fraction: f64) -> (Self, Self) {
        let buckets = 10_000u64;
        let threshold = (fraction.clamp(0.0, 1.0) * buckets as f64).round() as u64;
        let hashes = self.line_hashes.clone();
        let bucket = |line: usize| hashes.get(&line).map_or(u64::MAX, |h| h % buckets);
        let lines = self.lines();
        let mut held: HashSet<usize> = lines
            .iter()
            .copied()
            .filter(|&l| bucket(l) < threshold)
            .collect();
        // A small file can leave the split empty by chance: hold out the records of the
        // lowest bucket then (equal records share it), if that leaves some to train on.
        let trainable: HashSet<usize> = self.examples.iter().map(|x| x.line).collect();
        if threshold > 0 && !trainable.iter().any(|l| held.contains(l)) {
            if let Some(lowest) = trainable.iter().map(|&l| bucket(l)).min() {
                let fallback: HashSet<usize> = lines
                    .iter()
                    .copied()
                    .filter(|&l| bucket(l) == lowest)
                    .collect();
                if trainable.iter().any(|l| !fallback.contains(l)) {
                    held = fallback;
                }
            }
        }
        let kept: HashSet<usize> = lines.difference(&held).copied().collect();
        let mut valid = self.clone();
        valid.retain_lines(&held);
        self.retain_lines(&kept);
        (self, valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{EncodeOptions, Encoder};
    use tuna_model::Pretrained;
    use tuna_testkit::{tiny_model, TinySpec};

    #[test]
    fn held_out_fraction_is_deterministic_and_keeps_equal_records_together() {
        let m = tiny_model(TinySpec::default());
        let p = Pretrained::load(&m.path_str(), &Default::default()).unwrap();
        let path = m.path().join("d.jsonl");
        let mut lines: Vec<String> = (0..400)
            .map(|i| format!("{{\"text\": \"the cat {i}\"}}"))
            .collect();
        lines.push("{\"text\": \"the cat 7\"}".into()); // a duplicate of line 8
        std::fs::write(&path, lines.join("\n")).unwrap();
        let options = EncodeOptions::default();
        let encoder = Encoder::new(&p, &options).unwrap();
        let load = || Dataset::load(&path, &encoder, &FieldNames::default()).unwrap();
        let (train, valid) = load().split_fraction(0.1);
        let (train2, valid2) = load().split_fraction(0.1);
        assert_eq!(valid.examples, valid2.examples);
        assert_eq!(train.examples.len() + valid.examples.len(), 401);
        assert!(
            (20..=60).contains(&valid.examples.len()),
            "{}",
            valid.examples.len()
        );
        let in_valid = |line| valid.examples.iter().any(|x| x.line == line);
        assert_eq!(in_valid(8), in_valid(401), "equal records share a side");
        assert_eq!(load().duplicates, 1);
        let _ = train2;
    }

    #[test]
    fn subsets_are_seeded_and_nested() {
        let m = tiny_model(TinySpec::default());
        let p = Pretrained::load(&m.path_str(), &Default::default()).unwrap();
        let path = m.path().join("d.jsonl");
        let lines: Vec<String> = (0..100)
            .map(|i| format!("{{\"text\": \"a {i}\"}}"))
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let options = EncodeOptions::default();
        let encoder = Encoder::new(&p, &options).unwrap();
        let load = || Dataset::load(&path, &encoder, &FieldNames::default()).unwrap();
        let lines_of =
            |d: &Dataset| -> HashSet<usize> { d.examples.iter().map(|x| x.line).collect() };
        let small = lines_of(&load().subset(10, 3));
        let large = lines_of(&load().subset(40, 3));
        assert_eq!((small.len(), large.len()), (10, 40));
        assert!(small.is_subset(&large), "nested");
        assert_ne!(small, lines_of(&load().subset(10, 4)), "seeded");
        assert_ne!(
            small,
            (1..=10).collect::<HashSet<usize>>(),
            "not the first lines"
        );
        assert_eq!(load().subset(10, 3).records, 10);
    }
}
