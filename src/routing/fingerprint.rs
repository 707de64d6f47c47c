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
/// Each 8-byte word is XORed into the low half of a 128-bit state, which is
/// then multiplied by an odd constant (a bijection mod 2^128) and rotated by
/// 64 bits so the well-mixed high half of the product feeds the next word.
/// Because every step is a bijection of the state, two inputs can only
/// collide if their differences cancel twice in a row (~2^-128 for inputs
/// that are not built to collide). Collisions are not a safety problem for
/// the proxy anyway: a write that were routed to a replica fails there with
/// SQLSTATE 25006 instead of changing data.
#[derive(Clone)]
pub(crate) struct FpHasher {
    state: u128,
    word: u64,
    filled: u32,
    len: u64,
}

impl FpHasher {
    pub(crate) fn new() -> Self {
        Self {
            state: K2,
            word: 0,
            filled: 0,
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn byte(&mut self, b: u8) {
        self.word |= u64::from(b) << (self.filled * 8);
        self.filled += 1;
        if self.filled == 8 {
            self.mix(self.word);
            self.word = 0;
            self.filled = 0;
        }
    }

    #[inline]
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    #[inline]
    fn mix(&mut self, word: u64) {
        self.len = self.len.wrapping_add(1);
        self.state = (self.state ^ u128::from(word))
            .wrapping_mul(K1)
            .rotate_left(64);
    }

    pub(crate) fn finish(mut self) -> Fingerprint {
        let total_bytes = self
            .len
            .wrapping_mul(8)
            .wrapping_add(u64::from(self.filled));
        let tail = self.word;
        self.mix(tail);
        self.mix(total_bytes);
        // Final avalanche so every output bit depends on every input bit
        // (the last word above has only gone through one multiply).
        let mut s = self.state;
        s = (s ^ (s >> 64)).wrapping_mul(K2);
        s = (s ^ (s >> 61)).wrapping_mul(K1);
        s ^= s >> 64;
        Fingerprint(s)
    }
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
    fn chunking_does_not_matter() {
        let mut h = FpHasher::new();
        h.bytes(b"select a");
        h.bytes(b"bc from t");
        assert_eq!(h.finish(), fp("select abc from t"));
    }
}
