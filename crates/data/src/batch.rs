//! Examples to padded batches: a seeded shuffle per epoch, length bucketing, padding to the
//! longest row (or a multiple), optional packing of several examples per row with positions
//! reset and no attention across examples. Token counts travel with each batch, since losses
//! are divided by the target tokens of a whole optimizer step.
//!
//! b rows, t columns.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::encode::Example;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchOptions {
    pub batch_size: usize,
    /// Pad each batch's width up to a multiple of this.
    pub pad_to_multiple_of: usize,
    /// Group examples of similar length (less padding).
    pub bucket_by_length: bool,
    /// Pack several examples into each row of `pack_len` tokens.
    pub pack: bool,
    pub pack_len: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            batch_size: 4,
            pad_to_multiple_of: 8,
            bucket_by_length: true,
            pack: false,
            pack_len: 1024,
        }
    }
}

/// Inputs and next-token targets, row-major (b, t).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub cols: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// 1.0 where the target is trained on.
    pub weights: Vec<f32>,
    /// Position of each input in its own example (packing resets it per example).
    pub positions: Vec<u32>,
    /// Which example of its row each input belongs to (attention stays inside it); padding
    /// has `u32::MAX`.
    pub segments: Vec<u32>,
    /// Whether any row holds more than one example (the decoder then needs `segments`).
    pub packed: bool,
    /// Target tokens with weight 1.
    pub n_targets: usize,
    /// Input tokens that are not padding.
    pub n_tokens: usize,
    /// Source lines of the examples, for error messages.
    pub lines: Vec<usize>,
}

impl Batch {
    /// One row per group of examples; each example contributes `ids[..n-1]` as inputs and
    /// `ids[1..]` as targets.
    pub fn from_rows(rows: &[Vec<&Example>], pad_id: u32, pad_to_multiple_of: usize) -> Self {
        let width = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|x| x.ids.len().saturating_sub(1))
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0);
        let m = pad_to_multiple_of.max(1);
        let cols = width.div_ceil(m).max(1) * m;
        let n = rows.len() * cols;
        let mut b = Batch {
            rows: rows.len(),
            cols,
            inputs: vec![pad_id; n],
            targets: vec![pad_id; n],
            weights: vec![0.0; n],
            positions: vec![0; n],
            segments: vec![u32::MAX; n],
            packed: rows.iter().any(|r| r.len() > 1),
            n_targets: 0,
            n_tokens: 0,
            lines: Vec::new(),
        };
        for (row, examples) in rows.iter().enumerate() {
            let mut col = row * cols;
            for (seg, x) in examples.iter().enumerate() {
                b.lines.push(x.line);
                for i in 0..x.ids.len().saturating_sub(1) {
                    b.inputs[col] = x.ids[i];
                    b.targets[col] = x.ids[i + 1];
                    b.weights[col] = if x.trained[i + 1] { 1.0 } else { 0.0 };
                    b.positions[col] = i as u32;
                    b.segments[col] = seg as u32;
                    col += 1;
                }
            }
        }
        b.n_targets = b.weights.iter().filter(|&&w| w > 0.0).count();
        b.n_tokens = b.segments.iter().filter(|&&s| s != u32::MAX).count();
        b
    }
}

/// The rows of one epoch, as groups of example indices, in training order. Deterministic in
/// (seed, epoch).
pub fn epoch_plan(
    examples: &[Example],
    options: &BatchOptions,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<Vec<usize>>> {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rng);
    let len = |i: &usize| examples[*i].ids.len();
    let rows: Vec<Vec<usize>> = if options.pack {
        pack_rows(&order, examples, options.pack_len)
    } else {
        if options.bucket_by_length {
            // Sort within windows of 50 batches: rows of a batch have similar lengths, yet the
            // order across windows stays random.
            for window in order.chunks_mut(options.batch_size.max(1) * 50) {
                window.sort_by_key(len);
            }
        }
        order.into_iter().map(|i| vec![i]).collect()
    };
    let mut batches: Vec<Vec<Vec<usize>>> = rows
        .chunks(options.batch_size.max(1))
        .map(|c| c.to_vec())
        .collect();
    if options.bucket_by_length || options.pack {
        batches.shuffle(&mut rng);
    }
    batches
}

/// First-fit packing in the given order: each row holds examples whose inputs (len - 1
/// tokens each) fit in `pack_len`.
fn pack_rows(order: &[usize], examples: &[Example], pack_len: usize) -> Vec<Vec<usize>> {
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for &i in order {
        let need = examples[i].ids.len().saturating_sub(1);
        match rows.iter_mut().find(|(used, _)| used + need <= pack_len) {
            Some((used, row)) => {
                *used += need;
                row.push(i);
            }
            None => rows.push((need, vec![i])),
        }
    }
    rows.into_iter().map(|(_, r)| r).collect()
}

/// Materializes a planned batch.
pub fn make_batch(
    examples: &[Example],
    plan: &[Vec<usize>],
    pad_id: u32,
    pad_to_multiple_of: usize,
) -> Batch {
    let rows: Vec<Vec<&Example>> = plan
        .iter()
        .map(|r| r.iter().map(|&i| &examples[i]).collect())
        .collect();
    Batch::from_rows(&rows, pad_id, pad_to_multiple_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(line: usize, ids: &[u32], trained_from: usize) -> Example {
        Example {
            line,
            ids: ids.to_vec(),
            trained: (0..ids.len()).map(|i| i >= trained_from).collect(),
            truncated: false,
        }
    }

    #[test]
    fn rows_are_shifted_padded_and_counted() {
        let a = ex(1, &[10, 11, 12, 13], 2);
        let b = ex(2, &[20, 21], 1);
        let batch = Batch::from_rows(&[vec![&a], vec![&b]], 0, 4);
        assert_eq!((batch.rows, batch.cols), (2, 4));
        assert_eq!(batch.inputs, [10, 11, 12, 0, 20, 0, 0, 0]);
        assert_eq!(batch.targets, [11, 12, 13, 0, 21, 0, 0, 0]);
        assert_eq!(batch.weights, [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            (batch.n_targets, batch.n_tokens, batch.packed),
            (3, 4, false)
        );
    }

    #[test]
    fn packed_rows_reset_positions_per_example() {
        let a = ex(1, &[10, 11, 12], 1);
        let b = ex(2, &[20, 21, 22], 1);
        let batch = Batch::from_rows(&[vec![&a, &b]], 0, 1);
        assert_eq!(batch.inputs, [10, 11, 20, 21]);
        assert_eq!(batch.targets, [11, 12, 21, 22]);
        assert_eq!(batch.positions, [0, 1, 0, 1]);
        assert_eq!(batch.segments, [0, 0, 1, 1]);
        assert!(batch.packed);
    }

    #[test]
    fn epochs_are_seeded_shuffles_that_cover_every_example_once() {
        let examples: Vec<Example> = (0..37).map(|i| ex(i + 1, &vec![1; 2 + i % 9], 1)).collect();
        let options = BatchOptions {
            batch_size: 4,
            ..Default::default()
        };
        let e0 = epoch_plan(&examples, &options, 7, 0);
        assert_eq!(e0, epoch_plan(&examples, &options, 7, 0), "deterministic");
        assert_ne!(
            e0,
            epoch_plan(&examples, &options, 7, 1),
            "reshuffled per epoch"
        );
        let mut seen: Vec<usize> = e0.iter().flatten().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..37).collect::<Vec<_>>());
        let packed = epoch_plan(
            &examples,
            &BatchOptions {
                pack: true,
                pack_len: 16,
                ..options
            },
            7,
            0,
        );
        for row in packed.iter().flatten() {
            assert!(
                row.iter()
                    .map(|&i| examples[i].ids.len() - 1)
                    .sum::<usize>()
                    <= 16
            );
        }
    }
}
