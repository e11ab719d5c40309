//! Who attends to whom in one forward, built once from how its tokens are laid out — causal
//! after a KV cache, packed examples, left-padded rows, a tree of branches after a shared
//! prompt — and the model's sliding window. The decoder takes its mask and rope positions from it; the
//! hand-written training pass takes the first key each query may see.
//!
//! Every key (cached or new) has a position and a group. Query i of a row is that row's key
//! `s - t + i`; it sees key j when j comes no later than itself, the two are in one group (or
//! the key's group is one the query's branch continues, or the shared group, a prompt every
//! branch continues), and their positions are less than the window apart. A padding query sees only itself, so its softmax stays finite.
//!
//! b rows, t new tokens (queries), s keys (cached + new).

use candle_core::{DType, Device, Result, Tensor};

use crate::decoder::Packing;

/// The group of padding: seen by no other token.
pub const PADDING: u32 = u32::MAX;
/// The group of a prompt that every branch sees.
pub const SHARED: u32 = u32::MAX - 1;

/// One branch of a tree laid out after a shared prompt: `len` tokens continuing an earlier
/// branch (`parent`, its index) or, with none, the prompt itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    pub len: usize,
    pub parent: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttentionLayout {
    pub rows: usize,
    pub queries: usize,
    pub keys: usize,
    /// (b, s) each key's position (the last t of a row are its new tokens').
    key_positions: Vec<u32>,
    /// (b, s) each key's group.
    groups: Vec<u32>,
    /// The group each group continues (SHARED for a branch off the prompt); empty where no
    /// group continues another.
    parents: Vec<u32>,
    window: usize,
    /// Every row lays its keys out alike (one mask row-broadcast).
    rows_alike: bool,
    /// Built by `causal`: every key one sequence, positions 0..s (decode's fast path).
    causal: bool,
}

impl AttentionLayout {
    /// b rows of t new tokens after `start` cached ones, each row one sequence.
    pub fn causal(b: usize, t: usize, start: usize, window: Option<usize>) -> Self {
        let s = start + t;
        Self {
            rows: b,
            queries: t,
            keys: s,
            key_positions: (0..b).flat_map(|_| 0..s as u32).collect(),
            groups: vec![0; b * s],
            parents: Vec::new(),
            window: window.unwrap_or(usize::MAX),
            rows_alike: true,
            causal: true,
        }
    }

    /// Rows holding several examples: each token's position in its example and the example
    /// it belongs to (padding: `u32::MAX`). No cache.
    pub fn packed(p: Packing, b: usize, t: usize, window: Option<usize>) -> Result<Self> {
        if p.positions.len() != b * t || p.segments.len() != b * t {
            candle_core::bail!(
                "packing: positions/segments must have b*t = {} entries",
                b * t
            );
        }
        Ok(Self {
            rows: b,
            queries: t,
            keys: t,
            key_positions: p.positions.to_vec(),
            groups: p.segments.to_vec(),
            parents: Vec::new(),
            window: window.unwrap_or(usize::MAX),
            rows_alike: false,
            causal: false,
        })
    }

    /// Left-padded rows (batched generation), t new tokens after `start` cached ones: row r's
    /// first `left_pad[r]` positions are padding, and its real tokens take positions from 0.
    /// The same `left_pad` goes with every call on one cache.
    pub fn left_padded(left_pad: &[usize], t: usize, start: usize, window: Option<usize>) -> Self {
        let (b, s) = (left_pad.len(), start + t);
        let mut key_positions = Vec::with_capacity(b * s);
        let mut groups = Vec::with_capacity(b * s);
        for &pad in left_pad {
            for j in 0..s {
                key_positions.push(j.saturating_sub(pad) as u32);
                groups.push(if j < pad { PADDING } else { 0 });
            }
        }
        Self {
            rows: b,
            queries: t,
            keys: s,
            key_positions,
            groups,
            parents: Vec::new(),
            window: window.unwrap_or(usize::MAX),
            rows_alike: false,
            causal: false,
        }
    }

    /// A tree of branches after a shared prompt of `start` cached tokens, one row, branches
    /// one after another: each sees the prompt, the branches it continues and its own earlier
    /// tokens, never another branch, at the positions it would take if run alone after them.
    /// A branch continues an earlier one only.
    pub fn tree(branches: &[Branch], start: usize, window: Option<usize>) -> Result<Self> {
        let t: usize = branches.iter().map(|b| b.len).sum();
        let mut key_positions: Vec<u32> = (0..start as u32).collect();
        let mut groups = vec![SHARED; start];
        let mut parents = Vec::with_capacity(branches.len());
        // The position after each branch's last token, where a branch continuing it starts.
        let mut ends = Vec::with_capacity(branches.len());
        for (k, branch) in branches.iter().enumerate() {
            let from = match branch.parent {
                None => {
                    parents.push(SHARED);
                    start
                }
                Some(p) if p < k => {
                    parents.push(p as u32);
                    ends[p]
                }
                Some(p) => candle_core::bail!(
                    "attention layout: branch {k} continues branch {p}, which does not come before it"
                ),
            };
            key_positions.extend((from..from + branch.len).map(|i| i as u32));
            groups.extend(std::iter::repeat_n(k as u32, branch.len));
            ends.push(from + branch.len);
        }
        Ok(Self {
            rows: 1,
            queries: t,
            keys: start + t,
            key_positions,
            groups,
            parents,
            window: window.unwrap_or(usize::MAX),
            rows_alike: true,
            causal: false,
        })
    }

    /// Whether group `g` continues group `ancestor`, directly or through others.
    fn continues(&self, mut g: u32, ancestor: u32) -> bool {
        while let Some(&parent) = self.parents.get(g as usize) {
            if parent == ancestor {
                return true;
            }
            g = parent;
        }
        false
    }

    /// Keys already in the cache before these queries.
    pub fn start(&self) -> usize {
        self.keys - self.queries
    }

    /// (b, t) the rope position of each new token, row-major.
    pub fn positions(&self) -> Vec<u32> {
        let (s, start) = (self.keys, self.start());
        (0..self.rows)
            .flat_map(|r| {
                self.key_positions[r * s + start..(r + 1) * s]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// `Some(start)` when every row's new tokens sit at start, start + 1, ... (rope can then
    /// take its tables by offset).
    pub fn consecutive_from(&self) -> Option<usize> {
        let start = self.start();
        if self.causal {
            return Some(start);
        }
        let first = *self.key_positions.get(start)? as usize;
        let plain = (0..self.rows).all(|r| {
            self.key_positions[r * self.keys + start..(r + 1) * self.keys]
                .iter()
                .enumerate()
                .all(|(i, &p)| p as usize == first + i)
        });
        plain.then_some(first)
    }

    /// Whether query `i` of `row` sees key `j`.
    pub fn visible(&self, row: usize, i: usize, j: usize) -> bool {
        let s = self.keys;
        let q = self.start() + i;
        if j > q {
            return false;
        }
        let (qg, kg) = (self.groups[row * s + q], self.groups[row * s + j]);
        if qg == PADDING {
            return j == q;
        }
        let (qp, kp) = (
            self.key_positions[row * s + q],
            self.key_positions[row * s + j],
        );
        (kg == qg || kg == SHARED || self.continues(qg, kg))
            && kp <= qp
            && ((qp - kp) as usize) < self.window
    }

    /// The additive mask, 0 where a query sees a key and -inf elsewhere: (1, 1, 1, t, s) when
    /// every row is laid out alike, else (b, 1, 1, t, s); None when every query sees every key
    /// (one new token with no window in reach).
    pub fn mask(&self, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        let (t, s) = (self.queries, self.keys);
        // Decode: one new token that sees every key, without building the pattern.
        if self.causal && t == 1 && s <= self.window {
            return Ok(None);
        }
        let rows = if self.rows_alike { 1 } else { self.rows };
        let mut mask = Vec::with_capacity(rows * t * s);
        let mut all_visible = true;
        for row in 0..rows {
            for i in 0..t {
                for j in 0..s {
                    let seen = self.visible(row, i, j);
                    all_visible &= seen;
                    mask.push(if seen { 0.0 } else { f32::NEG_INFINITY });
                }
            }
        }
        if all_visible {
            return Ok(None);
        }
        Tensor::from_vec(mask, (rows, 1, 1, t, s), device)?
            .to_dtype(dtype)
            .map(Some)
    }

    /// The first key each query (b·t, row-major) sees, for attention kernels that take each
    /// query's keys as one run ending at itself (training: no cache, no branches). Errors
    /// when a query's keys are not such a run.
    pub fn first_keys(&self) -> Result<Vec<u32>> {
        let (t, s) = (self.queries, self.keys);
        let mut first = Vec::with_capacity(self.rows * t);
        for row in 0..self.rows {
            for i in 0..t {
                let q = s - t + i;
                let lo = (0..=q).find(|&j| self.visible(row, i, j)).unwrap_or(q);
                if (lo..=q).any(|j| !self.visible(row, i, j)) {
                    candle_core::bail!(
                        "attention layout: query {i} of row {row} does not see one run of keys"
                    );
                }
                first.push(lo as u32);
            }
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout's visibility as strings of 1 (seen) and 0, one per query.
    fn pattern(layout: &AttentionLayout, row: usize) -> Vec<String> {
        (0..layout.queries)
            .map(|i| {
                (0..layout.keys)
                    .map(|j| if layout.visible(row, i, j) { '1' } else { '0' })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn causal_with_a_cache_and_a_window() {
        let l = AttentionLayout::causal(2, 2, 3, Some(3));
        assert_eq!(pattern(&l, 1), ["01110", "00111"]);
        assert_eq!(l.consecutive_from(), Some(3));
        assert_eq!(l.positions(), [3, 4, 3, 4]);
        // One new token with every key in reach: no mask at all.
        let one = AttentionLayout::causal(1, 1, 4, None);
        assert!(one.mask(DType::F32, &Device::Cpu).unwrap().is_none());
        let mask = l.mask(DType::F32, &Device::Cpu).unwrap().unwrap();
        assert_eq!(mask.dims(), [1, 1, 1, 2, 5]);
    }

    #[test]
    fn packed_examples_stay_apart_and_padding_sees_itself() {
        // Example 0 at 0..3, example 1 at 3..5, padding at 5.
        let seg = [0, 0, 0, 1, 1, u32::MAX];
        let pos = [0, 1, 2, 0, 1, 0];
        let p = Packing {
            positions: &pos,
            segments: &seg,
        };
        let l = AttentionLayout::packed(p, 1, 6, None).unwrap();
        assert_eq!(
            pattern(&l, 0),
            ["100000", "110000", "111000", "000100", "000110", "000001"]
        );
        assert_eq!(l.first_keys().unwrap(), [0, 0, 0, 3, 3, 5]);
        let windowed = AttentionLayout::packed(p, 1, 6, Some(2)).unwrap();
        assert_eq!(windowed.first_keys().unwrap(), [0, 0, 1, 3, 3, 5]);
        assert_eq!(l.consecutive_from(), None);
        assert_eq!(
            AttentionLayout::causal(2, 3, 0, None).first_keys().unwrap(),
            [0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            AttentionLayout::causal(1, 4, 0, Some(3))
                .first_keys()
                .unwrap(),
            [0, 0, 0, 1]
        );
    }

    #[test]
    fn left_padding_is_invisible_and_positions_start_after_it() {
        let l = AttentionLayout::left_padded(&[2, 0], 3, 0, None);
        assert_eq!(pattern(&l, 0), ["100", "010", "001"]);
        assert_eq!(pattern(&l, 1), ["100", "110", "111"]);
        assert_eq!(l.positions(), [0, 0, 0, 0, 1, 2]);
        // The next token after that prompt: row 0 at position 1, row 1 at position 3.
        let next = AttentionLayout::left_padded(&[2, 0], 1, 3, None);
        assert_eq!(pattern(&next, 0), ["0011"]);
        assert_eq!(next.positions(), [1, 3]);
    }

    fn roots(lengths: &[usize]) -> Vec<Branch> {
        lengths
            .iter()
            .map(|&len| Branch { len, parent: None })
            .collect()
    }

    #[test]
    fn branches_see_the_prompt_and_themselves() {
        let l = AttentionLayout::tree(&roots(&[2, 1]), 2, None).unwrap();
        assert_eq!(pattern(&l, 0), ["11100", "11110", "11001"]);
        assert_eq!(l.positions(), [2, 3, 2]);
        assert!(
            l.first_keys().is_err(),
            "the third query's keys are not one run"
        );
        let windowed = AttentionLayout::tree(&roots(&[2]), 2, Some(2)).unwrap();
        assert_eq!(pattern(&windowed, 0), ["0110", "0011"]);
    }

    #[test]
    fn a_branch_sees_the_branches_it_continues_and_no_sibling() {
        // Prompt of 1; branch 0 (2 tokens) and its children 1 (1 token) and 2 (2 tokens,
        // continued by 3); branch 4 off the prompt.
        let b = |len, parent| Branch { len, parent };
        let tree = [
            b(2, None),
            b(1, Some(0)),
            b(2, Some(0)),
            b(1, Some(2)),
            b(1, None),
        ];
        let l = AttentionLayout::tree(&tree, 1, None).unwrap();
        assert_eq!(
            pattern(&l, 0),
            ["11000000", "11100000", "11110000", "11101000", "11101100", "11101110", "10000001",]
        );
        assert_eq!(l.positions(), [1, 2, 3, 3, 4, 5, 1]);
        // Position order, not only group, bounds what a window lets through.
        let windowed = AttentionLayout::tree(&tree, 1, Some(2)).unwrap();
        assert_eq!(pattern(&windowed, 0)[5], "00000110");
        let backwards = [b(1, Some(1)), b(1, None)];
        let err = AttentionLayout::tree(&backwards, 0, None).unwrap_err();
        assert!(
            err.to_string().contains("branch 0 continues branch 1"),
            "{err}"
        );
    }
}
