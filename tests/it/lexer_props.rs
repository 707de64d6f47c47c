//! Properties of the lexer and classifier, checked on generated input
//! (proptest): a fingerprint does not depend on literal values, and a
//! comment never changes where a statement goes — only a hint does.

use pgsidecar::routing::{Classifier, Hint};
use proptest::prelude::*;

/// Statements with literal slots: `{n}` an integer, `{s}` a string body,
/// `{f}` a decimal.
const TEMPLATES: [&str; 8] = [
    "SELECT * FROM accounts WHERE id = {n}",
    "SELECT name FROM users WHERE email = '{s}' AND age > {n}",
    "UPDATE accounts SET balance = balance + {f} WHERE id = {n}",
    "INSERT INTO log (id, msg) VALUES ({n}, '{s}')",
    "DELETE FROM sessions WHERE token = '{s}'",
    "SELECT count(*) FROM t WHERE a IN ({n}, {n}) AND b = {f}",
    "WITH x AS (SELECT {n} AS v) SELECT v FROM x",
    "SELECT * FROM orders WHERE id = {n} FOR UPDATE",
];

/// Statements without literals containing spaces, to put comments into.
const STATEMENTS: [&str; 10] = [
    "SELECT * FROM accounts WHERE id = 1",
    "SELECT a , b FROM t JOIN u ON t.id = u.id",
    "UPDATE accounts SET balance = 0 WHERE id = 7",
    "INSERT INTO t VALUES ( 1 , 2 )",
    "DELETE FROM t WHERE id = 3",
    "SELECT nextval ( 'seq' )",
    "SELECT * FROM t FOR UPDATE",
    "WITH d AS ( DELETE FROM t RETURNING * ) SELECT * FROM d",
    "BEGIN",
    "SELECT pg_advisory_lock ( 1 )",
];

fn fill(template: &str, n: u32, s: &str, f: (u32, u32)) -> String {
    template
        .replace("{n}", &n.to_string())
        .replace("{s}", &s.replace('\'', "''"))
        .replace("{f}", &format!("{}.{}", f.0, f.1))
}

fn fresh() -> Classifier {
    // No cache: each answer comes from the text itself.
    Classifier::new(&[], 256 * 1024, 0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fingerprints_ignore_literal_values(
        t in 0..TEMPLATES.len(),
        a in (any::<u32>(), "[^\\x00]{0,20}", (any::<u32>(), any::<u32>())),
        b in (any::<u32>(), "[^\\x00]{0,20}", (any::<u32>(), any::<u32>())),
    ) {
        let one = fill(TEMPLATES[t], a.0, &a.1, a.2);
        let two = fill(TEMPLATES[t], b.0, &b.1, b.2);
        prop_assert_eq!(Classifier::fingerprint(&one).0, Classifier::fingerprint(&two).0,
            "{} vs {}", one, two);
        prop_assert_eq!(fresh().classify(&one).info.route, fresh().classify(&two).info.route);
    }

    #[test]
    fn comments_never_change_the_route(
        s in 0..STATEMENTS.len(),
        at in any::<prop::sample::Index>(),
        text in "[a-zA-Z0-9 ,.;:'\"()=-]{0,30}",
        block in any::<bool>(),
    ) {
        let statement = STATEMENTS[s];
        let gaps: Vec<usize> = statement.match_indices(' ').map(|(i, _)| i).collect();
        prop_assume!(!gaps.is_empty());
        let gap = gaps[at.index(gaps.len())];
        let comment = if block {
            format!(" /*{text}*/ ")
        } else {
            format!(" --{text}\n")
        };
        let commented = format!("{}{}{}", &statement[..gap], comment, &statement[gap + 1..]);
        let plain = fresh().classify(statement);
        let with = fresh().classify(&commented);
        prop_assert_eq!(plain.info.route, with.info.route, "{}", commented);
        prop_assert_eq!(with.hint, None);
        // A leading comment that is not a hint changes nothing either.
        let leading = format!("/*{text}*/ {statement}");
        prop_assert_eq!(fresh().classify(&leading).info.route, plain.info.route);
    }
}

/// The exception: a hint comment says where a statement goes.
#[test]
fn a_hint_comment_is_recognised() {
    let c = fresh().classify("/* pgsidecar:replica */ SELECT 1");
    assert_eq!(c.hint, Some(Hint::Replica));
    let c = fresh().classify("/* pgsidecar:primary */ SELECT 1");
    assert_eq!(c.hint, Some(Hint::Primary));
}

/// SQL-ish text made of the pieces the lexer treats specially next to
/// numbers (`.`, `..`, `e`, `e+`, `_`, `$`, quotes, comments) and digits.
fn sqlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(" ".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("e".to_string()),
        Just("e+".to_string()),
        Just("_".to_string()),
        Just("$".to_string()),
        Just("'".to_string()),
        Just("/*".to_string()),
        Just("*/".to_string()),
        Just("--".to_string()),
        Just("\n".to_string()),
        Just(";".to_string()),
        Just("x".to_string()),
        Just("select".to_string()),
        Just("/* pgsidecar:primary */".to_string()),
        "[0-9]{1,4}",
        "[a-z=(),]{1,3}",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The client's memo reuses a classification for a text that
    /// `template::same_shape` accepts: that must never be wrong.
    #[test]
    fn a_text_of_the_same_shape_has_the_same_fingerprint(
        prev in sqlish(),
        edits in proptest::collection::vec((any::<u16>(), "[0-9]{0,3}|[0-9a-z.e+]{1,2}"), 0..4),
    ) {
        let mut numbers = Vec::new();
        let class = fresh().classify_noting_numbers(&prev, &mut numbers);
        // Replace the text of some of the literals (in reverse, so the
        // earlier ranges stay valid), with digits or anything.
        let mut text = prev.clone();
        for (pick, with) in &edits {
            if numbers.is_empty() {
                break;
            }
            let r = &numbers[*pick as usize % numbers.len()];
            if text.len() == prev.len() {
                text.replace_range(r.clone(), with);
            }
        }
        let mut out = Vec::new();
        if pgsidecar::routing::template::same_shape(&prev, &numbers, text.as_bytes(), &mut out) {
            let (fp, hint) = Classifier::fingerprint(&text);
            prop_assert_eq!(fp, class.info.fingerprint, "{:?} vs {:?}", prev, text);
            prop_assert_eq!(hint, class.hint, "{:?} vs {:?}", prev, text);
            let mut again = Vec::new();
            fresh().classify_noting_numbers(&text, &mut again);
            prop_assert_eq!(out, again, "{:?} vs {:?}", prev, text);
        }
    }

    /// And it accepts what it is for: every all-digit literal replaced by
    /// other digits.
    #[test]
    fn other_digits_in_all_digit_literals_are_the_same_shape(
        prev in sqlish(),
        digits in proptest::collection::vec("[0-9]{1,6}", 8),
    ) {
        let mut numbers = Vec::new();
        fresh().classify_noting_numbers(&prev, &mut numbers);
        let mut text = String::new();
        let mut at = 0;
        for (k, r) in numbers.iter().enumerate() {
            text.push_str(&prev[at..r.start]);
            let literal = &prev[r.clone()];
            if literal.bytes().all(|b| b.is_ascii_digit()) {
                text.push_str(&digits[k % digits.len()]);
            } else {
                text.push_str(literal);
            }
            at = r.end;
        }
        text.push_str(&prev[at..]);
        let mut out = Vec::new();
        prop_assert!(
            pgsidecar::routing::template::same_shape(&prev, &numbers, text.as_bytes(), &mut out),
            "{:?} vs {:?}", prev, text
        );
    }
}
