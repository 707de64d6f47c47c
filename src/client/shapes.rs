//! Statement shapes this worker thread classified lately, shared by the
//! clients it runs: a client that alternates between statements (a TPC-B
//! transaction's seven, an ORM's handful) finds each one's classification
//! here by its shape, where its own memo (`client/state.rs`) only holds
//! the last one.
//!
//! Why per thread: the clients of one thread take turns, so the table
//! needs no lock and no atomic, and what it holds stays in its core's
//! cache; with several worker threads each warms its own.
//!
//! Why placed by the bytes before the first digit: they are the same for
//! every value of a statement with other integers in it (what
//! [`template::same_shape_as`] accepts), and one pass finds them. A set
//! of four slots holds the last shapes classified there; every match is
//! checked byte for byte (the literals excepted) against a kept shape,
//! so a collision costs a miss, never a wrong classification.

use std::cell::RefCell;
use std::ops::Range;

use crate::routing::{Classified, Quoting, template};

/// Sets of slots per thread (a power of two), and slots per set: a
/// statement whose variants share the bytes before the first digit
/// (`VALUES (1, 2, 3, -4)` and `(1, 2, 3, 4)`) keeps both.
const SETS: usize = 16;
const WAYS: usize = 4;
/// Longest text kept, in bytes (the memo's own limit).
pub const MAX_TEXT: usize = 1024;

/// Most literal positions a kept shape has.
const MAX_NUMBERS: usize = 64;

/// One statement text, how it was read and its classification: the
/// memo's current entry and each slot of the table.
#[derive(Default)]
pub struct Shape {
    /// The string mode the text was lexed in (`None`: unsure).
    pub read_as: Option<Quoting>,
    pub text: String,
    pub class: Option<Classified>,
    /// Byte ranges of `text`'s numeric literals (only when read sure).
    pub numbers: Vec<Range<usize>>,
    /// Every literal in `numbers` is digits only
    /// ([`template::all_digits`], looked at once per text classified).
    pub digits_only: bool,
}

#[derive(Default)]
struct Slot {
    /// [`place`]'s hash of the shape's text.
    tag: u64,
    /// [`Classifier::id`](crate::routing::Classifier::id) of the
    /// classifier that classified it: another one (a test's, another
    /// proxy's in the same process) may decide otherwise.
    classifier: u64,
    shape: Shape,
}

#[derive(Default)]
struct Set {
    ways: [Slot; WAYS],
    /// The way the next shape kept in this set replaces (first in, first
    /// out: a shape in use is kept again as soon as it misses).
    next: usize,
}

thread_local! {
    /// Allocated on the thread's first [`remember`].
    static TABLE: RefCell<Vec<Set>> = const { RefCell::new(Vec::new()) };
}

/// The set for `raw`, and the tag that tells its shape from others
/// there: a hash of the bytes before the first digit and their count.
///
/// Why eight bytes at a time, digits found with a bit trick: a byte loop
/// looking for the first digit cost ~3 instructions per byte, ~200 per
/// statement of TPC-B.
#[inline]
fn place(raw: &[u8]) -> (usize, u64) {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let (words, rest) = raw.as_chunks::<8>();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    let mut h = 0;
    for (i, w) in words.iter().chain([&last]).enumerate() {
        let w = u64::from_le_bytes(*w);
        // Digits become bytes below 10 (and nothing else does); the
        // lowest byte flagged is the first such byte (a false flag only
        // follows a true one). The padding (zeros) is not flagged.
        let t = w ^ (0x30 * ONES);
        let digits = t.wrapping_sub(10 * ONES) & !t & (0x80 * ONES);
        if digits != 0 {
            let n = (digits.trailing_zeros() / 8) as usize;
            let before = w & (1u64 << (n * 8)).wrapping_sub(1);
            let prefix = i * 8 + n;
            return finish(mix(h, before), prefix);
        }
        h = mix(h, w);
    }
    finish(h, raw.len())
}

/// [`place`]'s result from the hash of a prefix `len` bytes long.
#[inline]
fn finish(h: u64, len: usize) -> (usize, u64) {
    let h = (h ^ len as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    // The high bits are the well-mixed ones.
    ((h >> (64 - SETS.trailing_zeros())) as usize, h)
}

/// Takes `raw` as `cur` when a shape this thread classified with
/// `classifier`, read as `reading`, is `raw` with other integers (or
/// `raw` itself): `cur` then holds `raw`'s text (`raw` is valid UTF-8:
/// it is the shape's text up to its first literal, and only the rest is
/// validated), its literals (swapped in from `spare`) and the shape's
/// classification. `false` leaves `cur` as it was.
pub fn recall(
    classifier: u64,
    reading: Option<Quoting>,
    raw: &[u8],
    cur: &mut Shape,
    spare: &mut Vec<Range<usize>>,
) -> bool {
    if raw.len() > MAX_TEXT {
        return false;
    }
    let (at, tag) = place(raw);
    TABLE.with_borrow(|table| {
        let Some(set) = table.get(at) else {
            return false;
        };
        let Some((shape, class)) = set.ways.iter().find_map(|slot| {
            let shape = &slot.shape;
            let class = shape.class.as_ref()?;
            (slot.tag == tag
                && slot.classifier == classifier
                && shape.read_as == reading
                && template::same_shape_as(
                    &shape.text,
                    &shape.numbers,
                    shape.digits_only,
                    raw,
                    spare,
                ))
            .then_some((shape, class))
        }) else {
            return false;
        };
        // Up to its first literal `raw` is the shape's text (checked
        // above), which is a char boundary: a literal starts with a digit.
        let from = shape.numbers.first().map_or(raw.len(), |r| r.start);
        let (Some(head), Some(tail)) = (shape.text.get(..from), raw.get(from..)) else {
            return false;
        };
        let Ok(tail) = std::str::from_utf8(tail) else {
            return false;
        };
        cur.text.clear();
        cur.text.push_str(head);
        cur.text.push_str(tail);
        std::mem::swap(&mut cur.numbers, spare);
        cur.class = Some(class.clone());
        cur.read_as = reading;
        cur.digits_only = shape.digits_only;
        true
    })
}

/// Keeps `shape` (just classified by `classifier`) for this thread's
/// clients, in place of the oldest shape kept in its set. Not kept: texts longer than
/// [`MAX_TEXT`] and statements whose values matter (a `SET`: its session
/// changes are computed from its very text). The slot's buffers are
/// reused, so a thread that has filled its table allocates no more.
pub fn remember(classifier: u64, shape: &Shape) {
    let Some(class) = &shape.class else {
        return;
    };
    if class.info.has_session_changes
        || shape.text.len() > MAX_TEXT
        || shape.numbers.len() > MAX_NUMBERS
    {
        return;
    }
    let (at, tag) = place(shape.text.as_bytes());
    TABLE.with_borrow_mut(|table| {
        if table.is_empty() {
            table.resize_with(SETS, Set::default);
        }
        let Some(set) = table.get_mut(at) else {
            return;
        };
        let way = set.next % WAYS;
        set.next = way + 1;
        let slot = &mut set.ways[way];
        slot.tag = tag;
        slot.classifier = classifier;
        let kept = &mut slot.shape;
        kept.read_as = shape.read_as;
        kept.text.clear();
        kept.text.push_str(&shape.text);
        kept.numbers.clear();
        kept.numbers.extend_from_slice(&shape.numbers);
        kept.digits_only = shape.digits_only;
        kept.class = Some(class.clone());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Classifier;
    use std::sync::Arc;

    fn shape_of(classifier: &Classifier, text: &str) -> Shape {
        let mut numbers = Vec::new();
        let class = classifier.classify_noting_numbers_in(text, Quoting::Standard, &mut numbers);
        Shape {
            read_as: Some(Quoting::Standard),
            digits_only: template::all_digits(text, &numbers),
            text: text.to_string(),
            class: Some(class),
            numbers,
        }
    }

    fn recalled(classifier: &Classifier, reading: Option<Quoting>, raw: &str) -> Option<Shape> {
        let (mut cur, mut spare) = (Shape::default(), Vec::new());
        recall(
            classifier.id(),
            reading,
            raw.as_bytes(),
            &mut cur,
            &mut spare,
        )
        .then_some(cur)
    }

    #[test]
    fn a_shape_kept_by_one_client_is_recalled_with_other_integers() {
        let classifier = Classifier::new(&[], 10_000, 0);
        let prev = "UPDATE pgbench_tellers SET tbalance = tbalance + 42 WHERE tid = 7;";
        let kept = shape_of(&classifier, prev);
        remember(classifier.id(), &kept);
        let next = "UPDATE pgbench_tellers SET tbalance = tbalance + 1234 WHERE tid = 10;";
        let cur = recalled(&classifier, Some(Quoting::Standard), next).expect("recalled");
        assert_eq!(cur.text, next);
        let class = cur.class.expect("class");
        assert!(Arc::ptr_eq(&class.info, &kept.class.as_ref().unwrap().info));
        // The literals' ranges are the new text's, as the lexer finds them.
        assert_eq!(cur.numbers, shape_of(&classifier, next).numbers);
    }

    #[test]
    fn the_place_depends_on_the_bytes_before_the_first_digit_only() {
        let texts = [
            "",
            "BEGIN;",
            "12345678",
            "SELECT 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
            "UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 3;",
            "select 'caf\u{e9}' /* \u{1F600} */ from t8",
            "abcdefg7",
            "abcdefgh7",
            "abcdefghabcdefghabcdefgh",
        ];
        for text in texts {
            let p = text
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(text.len());
            let place = place(text.as_bytes());
            for tail in ["", "0", "9; delete from t", "42 and x = 'y'"] {
                let other = format!("{}{tail}", &text[..p]);
                assert_eq!(
                    place,
                    super::place(other.as_bytes()),
                    "{text:?} / {other:?}"
                );
            }
            if p > 0 {
                let shorter = &text[..p - 1];
                assert_ne!(place.1, super::place(shorter.as_bytes()).1, "{text:?}");
            }
        }
    }

    #[test]
    fn variants_with_the_same_bytes_before_their_first_digit_are_both_kept() {
        let classifier = Classifier::new(&[], 10_000, 0);
        let insert = |delta: &str| {
            format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                 VALUES (1, 2, 3, {delta}, CURRENT_TIMESTAMP);"
            )
        };
        let (up, down) = (insert("5"), insert("-5"));
        assert_eq!(place(up.as_bytes()), place(down.as_bytes()));
        for text in [&up, &down] {
            remember(classifier.id(), &shape_of(&classifier, text));
        }
        let standard = Some(Quoting::Standard);
        for text in [insert("77"), insert("-77")] {
            let cur = recalled(&classifier, standard, &text).expect("recalled");
            assert_eq!(cur.text, text);
        }
    }

    #[test]
    fn anything_else_is_a_miss() {
        let classifier = Classifier::new(&[], 10_000, 0);
        let prev = "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;";
        remember(classifier.id(), &shape_of(&classifier, prev));
        let standard = Some(Quoting::Standard);
        // Other words, a sign, a non-integer, the other string mode.
        for other in [
            "SELECT bbalance FROM pgbench_accounts WHERE aid = 4711;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = -4711;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 47.11;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711; DELETE FROM t",
        ] {
            assert!(recalled(&classifier, standard, other).is_none(), "{other}");
        }
        assert!(recalled(&classifier, Some(Quoting::Backslash), prev).is_none());
        assert!(recalled(&classifier, None, prev).is_none());
        // Another classifier (other settings) decides for itself.
        let another = Classifier::new(&["f".to_string()], 10_000, 0);
        assert!(recalled(&another, standard, prev).is_none());
        assert!(recalled(&classifier, standard, prev).is_some());
    }

    #[test]
    fn statements_whose_values_matter_are_not_kept() {
        let classifier = Classifier::new(&[], 10_000, 0);
        let set = "SET statement_timeout = 5000";
        remember(classifier.id(), &shape_of(&classifier, set));
        assert!(recalled(&classifier, Some(Quoting::Standard), set).is_none());
        let long = format!("SELECT 1 FROM t WHERE note = '{}'", "x".repeat(MAX_TEXT));
        remember(classifier.id(), &shape_of(&classifier, &long));
        assert!(recalled(&classifier, Some(Quoting::Standard), &long).is_none());
    }
}
