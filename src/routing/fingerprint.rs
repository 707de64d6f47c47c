//! The statement fingerprint: a 128-bit hash of the normalised statement
//! text, computed byte by byte while the lexer runs so a cache lookup never
//! has to build (or allocate) the normalised string.

use std::fmt;

/// Identity of a statement *shape*: equal for statements that differ only in
/// literal values, whitespace, comments (hints included) and keyword case.
///
/// It is the hash of [`super::StatementInfo::normalized`] (before any
/// truncation of that text), so two fingerprints are equal exactly when the
/// normalised texts are, up to 128-bit hash collisions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u128);

impl Fingerprint {
    /// The low 64 bits: enough to pick a cache shard or a digest bucket.
    pub fn low64(self) -> u64 {
        self.0 as u64
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({:032x})", self.0)
    }
}

/// 32 lower-case hex digits, the form used in logs and `/queries`.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Odd 128-bit multipliers (digits of pi and e); any odd constant with
/// well-spread bits works, these are just not hand-picked.
const K1: u128 = 0x243F_6A88_85A3_08D3_1319_8A2E_0370_7345;
const K2: u128 = 0xB7E1_5162_8AED_2A6A_BF71_5880_9CF4_F3C7;

/// Streaming hash over bytes, a word at a time.
///
/// Bytes are packed into 64-bit little-endian words (up to 8 at a time, so
/// a short token costs a few shifts, not a mixing step per byte); each full
/// word is XORed into the low half of a 128-bit state, which is then
/// multiplied by an odd constant (a bijection mod 2^128) and rotated by 64
/// bits so the well-mixed high half of the product feeds the next word.
/// Because every step is a bijection of the state, two inputs can only
/// collide if their differences cancel twice in a row (~2^-128 for inputs
/// not built to collide). Collisions are not a safety problem for the proxy
/// anyway: a write routed to a replica by one fails there with SQLSTATE
/// 25006 and changes nothing.
#[derive(Clone)]
pub(crate) struct FpHasher {
    state: u128,
    /// Pending bytes (the low `filled` bytes), not yet mixed.
    word: u64,
    filled: u32,
    total: u64,
}

impl FpHasher {
    pub(crate) fn new() -> Self {
        Self {
            state: K2,
            word: 0,
            filled: 0,
            total: 0,
        }
    }

    #[inline]
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            self.push_word(load(chunk), chunk.len() as u32);
        }
    }

    /// Like [`Self::bytes`] with ASCII upper case folded to lower case.
    #[inline]
    pub(crate) fn lower(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            self.push_word(ascii_lower(load(chunk)), chunk.len() as u32);
        }
    }

    /// Appends the low `n` (1..=8) bytes of `w`.
    #[inline]
    fn push_word(&mut self, w: u64, n: u32) {
        self.total = self.total.wrapping_add(u64::from(n));
        self.word |= w << (8 * self.filled);
        let filled = self.filled + n;
        if filled >= 8 {
            self.state = mix(self.state, self.word);
            // The bytes of `w` that did not fit (none if `filled` was 0).
            self.word = if self.filled == 0 {
                0
            } else {
                w >> (8 * (8 - self.filled))
            };
            self.filled = filled - 8;
        } else {
            self.filled = filled;
        }
    }

    pub(crate) fn finish(self) -> Fingerprint {
        let mut s = mix(mix(self.state, self.word), self.total);
        // Final avalanche so every output bit depends on every input bit
        // (the last words above have only gone through one multiply).
        s = (s ^ (s >> 64)).wrapping_mul(K2);
        s = (s ^ (s >> 61)).wrapping_mul(K1);
        s ^= s >> 64;
        Fingerprint(s)
    }
}

/// Up to 8 bytes as a little-endian word, zero-padded.
#[inline]
fn load(chunk: &[u8]) -> u64 {
    if let Ok(bytes) = <[u8; 8]>::try_from(chunk) {
        return u64::from_le_bytes(bytes);
    }
    chunk
        .iter()
        .enumerate()
        .fold(0, |w, (i, &b)| w | (u64::from(b) << (8 * i)))
}

/// ASCII `A-Z` → `a-z` in all 8 bytes at once; other bytes (including
/// UTF-8 bytes ≥ 0x80 and zero padding) are unchanged.
#[inline]
fn ascii_lower(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low7 = w & LOW7;
    let ge_a = low7 + ONES * (0x80 - b'A' as u64);
    let gt_z = low7 + ONES * (0x80 - b'Z' as u64 - 1);
    let upper = ge_a & !gt_z & !w & HIGH;
    w | (upper >> 2)
}

#[inline]
fn mix(state: u128, word: u64) -> u128 {
    (state ^ u128::from(word)).wrapping_mul(K1).rotate_left(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(s: &str) -> Fingerprint {
        let mut h = FpHasher::new();
        h.bytes(s.as_bytes());
        h.finish()
    }

    #[test]
    fn distinguishes_lengths_and_bytes() {
        assert_ne!(fp(""), fp("\0"));
        assert_ne!(fp("a"), fp("a\0"));
        assert_ne!(fp("abcdefgh"), fp("abcdefgi"));
        assert_ne!(fp("select $1"), fp("select $2"));
        assert_eq!(fp("select 1"), fp("select 1"));
    }

    #[test]
    fn ascii_lower_matches_std() {
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b, b'A', b'z', b'@', b'[', 0xC3, b'Z', b'`']);
            let want: Vec<u8> = w
                .to_le_bytes()
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .collect();
            assert_eq!(ascii_lower(w).to_le_bytes().to_vec(), want, "{b}");
        }
    }

    #[test]
    fn long_inputs_and_case_folding() {
        let long = "select a_rather_long_column_name from a_table where x = $1 and y = $2 ";
        assert_ne!(fp(long), fp(&long.replace("$2", "$3")));
        let mut h = FpHasher::new();
        h.lower(long.to_uppercase().as_bytes());
        assert_eq!(h.finish(), fp(&long.to_lowercase()));
    }

    #[test]
    fn chunking_does_not_matter() {
        let mut h = FpHasher::new();
        h.bytes(b"select a");
        h.bytes(b"bc from t");
        assert_eq!(h.finish(), fp("select abc from t"));
    }
}
