//! Recognises a statement that is the previous one with other integers in
//! it, so a client repeating a statement shape (`WHERE aid = 4711`, then
//! `= 815`) is classified without lexing it again.
//!
//! Why it is exact: the lexer decides where a token ends from the bytes at
//! and after it, never from those before. Take `prev`, lexed, and `text`
//! that equals it byte for byte except that some of `prev`'s numeric
//! literals made only of digits are other runs of digits. Up to the first
//! such literal both lex the same. A run of digits at a token boundary is a
//! numeric literal in either, and it ends at the first byte the lexer does
//! not take into a number: in `prev` that byte (and the one after, which
//! the fraction rule looks at) came right after the literal, and `text`
//! has the same bytes there, so `text`'s literal ends right after its
//! digits too. From there on both lex the same again. Normalisation turns
//! every literal into a placeholder and does not look at its digits, so the
//! fingerprint, the hint (comments are compared byte for byte) and
//! therefore the classification are those of `prev`. What a statement's
//! values change (the session settings of a `SET`) is the caller's to
//! exclude.

use std::ops::Range;

/// Whether `text` is `prev` with some of the all-digit numeric literals at
/// `numbers` (byte ranges in `prev`, in order, as the fingerprint pass
/// found them) replaced by other runs of digits; everything else must be
/// the same bytes. When it is, `out` holds the literals' ranges in `text`.
///
/// `text` is raw bytes, so that a UTF-8 client's statement can be matched
/// before it is validated (bytes of `prev`'s shape differ from it only
/// in ASCII digits).
pub fn same_shape(
    prev: &str,
    numbers: &[Range<usize>],
    text: &[u8],
    out: &mut Vec<Range<usize>>,
) -> bool {
    let digits = all_digits(prev, numbers);
    same_shape_as(prev, numbers, digits, text, out)
}

/// Whether every literal at `numbers` in `text` is made of digits only:
/// what [`same_shape_as`] is told, so that a caller matching many
/// statements against the same template looks at its literals once.
/// (A statement that [`same_shape`] matches has the same answer as the
/// template: its literals are the template's, or other runs of digits
/// where the template's were digits.)
pub fn all_digits(text: &str, numbers: &[Range<usize>]) -> bool {
    numbers.iter().all(|r| {
        text.as_bytes()
            .get(r.clone())
            .is_some_and(|l| leading_digits(l) == l.len())
    })
}

/// [`same_shape`], told whether all of `prev`'s literals are digits only
/// ([`all_digits`]; `false` is always safe, only slower).
///
/// Why it looks as it does: a client repeating one statement with other
/// numbers (`pgbench -S`) runs it on every request. The bytes between
/// literals are compared with `memcmp` (one call for the text up to a
/// statement's only literal), the digits counted with a plain loop, and a
/// short rest (`;`, `)`) compared byte by byte rather than with a call:
/// ~220 instructions per `-S` statement went to the iterator chains and
/// the calls this replaced.
#[inline]
pub fn same_shape_as(
    prev: &str,
    numbers: &[Range<usize>],
    digits_only: bool,
    text: &[u8],
    out: &mut Vec<Range<usize>>,
) -> bool {
    out.clear();
    let (p, q) = (prev.as_bytes(), text);
    let (mut i, mut j) = (0, 0);
    for r in numbers {
        let (Some(gap), Some(literal)) = (p.get(i..r.start), p.get(r.clone())) else {
            return false;
        };
        let Some(rest) = q.get(j..) else {
            return false;
        };
        if rest.len() < gap.len() || rest[..gap.len()] != *gap {
            return false;
        }
        j += gap.len();
        let rest = &q[j..];
        let len = if digits_only || leading_digits(literal) == literal.len() {
            leading_digits(rest)
        } else if rest.starts_with(literal) {
            literal.len()
        } else {
            return false;
        };
        if len == 0 {
            return false;
        }
        out.push(j..j + len);
        j += len;
        i = r.end;
    }
    match (p.get(i..), q.get(j..)) {
        (Some(a), Some(b)) => same_bytes(a, b),
        _ => false,
    }
}

/// How many bytes `s` starts with are ASCII digits.
#[inline]
fn leading_digits(s: &[u8]) -> usize {
    s.iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len())
}

/// `a == b`, without a `memcmp` call for the short rests of statements.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() > 16 {
        return a == b;
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::lexer::Quoting;
    use crate::routing::normalize::fingerprint_noting_numbers;

    fn check(prev: &str, text: &str) -> bool {
        let mut numbers = Vec::new();
        let (fp, _) = fingerprint_noting_numbers(prev, Quoting::Standard, &mut numbers);
        let mut out = Vec::new();
        let same = same_shape(prev, &numbers, text.as_bytes(), &mut out);
        if same {
            let mut again = Vec::new();
            let (fq, _) = fingerprint_noting_numbers(text, Quoting::Standard, &mut again);
            assert_eq!(fp, fq, "{prev:?} / {text:?}");
            assert_eq!(out, again, "{prev:?} / {text:?}");
        }
        same
    }

    #[test]
    fn other_integers_are_the_same_shape() {
        let q = "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;";
        assert!(check(
            q,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 815;"
        ));
        assert!(check(
            q,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1234567890;"
        ));
        assert!(check("select 1, 22, 333", "select 9, 8, 7"));
        assert!(check(
            "select x from t limit 10 offset 0",
            "select x from t limit 10 offset 20"
        ));
    }

    #[test]
    fn anything_else_is_not() {
        let q = "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;";
        // Not digits, or more than digits.
        assert!(!check(
            q,
            "SELECT abalance FROM pgbench_accounts WHERE aid = x;"
        ));
        assert!(!check(
            q,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4.5;"
        ));
        assert!(!check(
            q,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4e5;"
        ));
        assert!(!check(
            q,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 47abc;"
        ));
        assert!(!check(
            q,
            "SELECT abalance FROM pgbench_accounts WHERE aid = ;"
        ));
        // Other words, spaces or comments.
        assert!(!check(
            q,
            "SELECT bbalance FROM pgbench_accounts WHERE aid = 4711;"
        ));
        assert!(!check(
            q,
            "SELECT abalance FROM pgbench_accounts WHERE aid =  4711;"
        ));
        assert!(!check(
            q,
            "/* pgsidecar:primary */ SELECT abalance FROM pgbench_accounts WHERE aid = 1;"
        ));
        assert!(!check(
            q,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711; DELETE FROM t"
        ));
        // Digits that are not a literal of their own stay as they were.
        assert!(!check(
            "select * from t1 where a = 1",
            "select * from t2 where a = 1"
        ));
        assert!(!check("select $1 + 1", "select $2 + 1"));
        // Literals that are more than digits must stay the same.
        assert!(check("select 1.5, 2", "select 1.5, 3"));
        assert!(!check("select 1.5, 2", "select 1.6, 2"));
        // A range `..` after an integer, as the lexer sees it.
        assert!(check("select a[1..2]", "select a[10..2]"));
    }
}
