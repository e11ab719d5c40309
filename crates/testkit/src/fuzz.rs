//! Damaged inputs for the readers of user files: each case is a valid file truncated,
//! bit-flipped, overwritten with extreme bytes, spliced, or replaced by random bytes, drawn
//! from a fixed seed so a failing case can be rerun. A reader passes when every case ends in
//! `Ok` or an error that names the file — never a panic.
//!
//! `TUNA_FUZZ_CASES` sets the cases per reader (the test command's default is small; the
//! ignored `*_at_length` tests run many more).

use std::panic::{catch_unwind, AssertUnwindSafe};

/// The cases per reader: `TUNA_FUZZ_CASES`, else `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("TUNA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A seeded generator of damaged copies of one file.
pub struct Mutator {
    state: u64,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A damaged copy of `original`, and what was done to it.
    pub fn mutate(&mut self, original: &[u8]) -> (String, Vec<u8>) {
        let mut bytes = original.to_vec();
        let n = bytes.len();
        match self.below(6) {
            0 => {
                let at = self.below(n);
                bytes.truncate(at);
                (format!("truncated to {at} bytes"), bytes)
            }
            1 => {
                let flips = 1 + self.below(8);
                // Headers hold the lengths and counts: aim half of the flips at the start.
                let mut at = Vec::new();
                for k in 0..flips {
                    let span = if k % 2 == 0 { n.min(256) } else { n };
                    let i = self.below(span);
                    bytes[i] ^= 1 << self.below(8);
                    at.push(i);
                }
                (format!("bits flipped at bytes {at:?}"), bytes)
            }
            2 => {
                // An 8-byte run set to all ones or zeros: lengths and counts at their extremes.
                let i = self.below(n.min(512));
                let fill = if self.next().is_multiple_of(2) {
                    0xFF
                } else {
                    0x00
                };
                for b in bytes.iter_mut().skip(i).take(8) {
                    *b = fill;
                }
                (format!("bytes {i}..{} set to {fill:#04x}", i + 8), bytes)
            }
            3 => {
                // A random stretch of the file copied over another place.
                let (from, to, len) = (self.below(n), self.below(n), 1 + self.below(64));
                let chunk: Vec<u8> = bytes.iter().skip(from).take(len).copied().collect();
                for (k, b) in chunk.into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(to + k) {
                        *slot = b;
                    }
                }
                (format!("{len} bytes from {from} copied to {to}"), bytes)
            }
            4 => {
                let len = self.below(2 * n.max(16));
                let random: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
                (format!("{len} random bytes"), random)
            }
            _ => {
                // The valid start, then random bytes.
                let keep = self.below(n);
                bytes.truncate(keep);
                let extra = self.below(64);
                bytes.extend((0..extra).map(|_| self.next() as u8));
                (format!("cut at {keep}, then {extra} random bytes"), bytes)
            }
        }
    }
}

/// Feeds `cases` damaged copies of `original` to `read`, which writes them where the reader
/// looks and returns its error text (`Ok` when the damaged file still reads). Every error
/// must contain `names` (the file's name); no case may panic.
pub fn check_reader(
    what: &str,
    original: &[u8],
    cases: usize,
    names: &str,
    mut read: impl FnMut(&[u8]) -> Result<(), String>,
) {
    let mut m = Mutator::new(what.len() as u64);
    for case in 0..cases {
        let (damage, bytes) = m.mutate(original);
        match catch_unwind(AssertUnwindSafe(|| read(&bytes))) {
            Err(_) => panic!("{what}: case {case} ({damage}) panicked"),
            Ok(Err(message)) => assert!(
                message.contains(names),
                "{what}: case {case} ({damage}): the error does not name {names}: {message}"
            ),
            Ok(Ok(())) => {}
        }
    }
}
