//! What members say to each other about writes: the payloads of the
//! notifications on the fleet's channel (pure: encoding and decoding).
//!
//! A payload is a JSON object, `{"t":["public.w","w"]}` (the tables a batch
//! of committed transactions wrote, as the classifier names them) or
//! `{"all":true}` (every table: more names than a few notifications hold).
//! Postgres takes payloads shorter than 8000 bytes; a batch with more names
//! is split over several notifications of one statement, and over
//! [`MAX_PAYLOADS`] of them it is announced as "every table" instead.

use std::collections::BTreeSet;
use std::sync::Arc;

/// Bytes of one payload, with room to spare below Postgres' 8000.
pub const MAX_PAYLOAD: usize = 7900;
/// More payloads than this for one batch: "every table" instead.
pub const MAX_PAYLOADS: usize = 8;
/// A name longer than this is not sent (no table has one: Postgres cuts
/// identifiers at 63 bytes, so a qualified name is at most 127): the batch
/// says "every table" instead.
const MAX_NAME: usize = 256;

/// What one notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Tables(Vec<Arc<str>>),
    All,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Wire<'a> {
    #[serde(default, skip_serializing_if = "Vec::is_empty", borrow)]
    t: Vec<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
}

/// The payloads announcing writes to `tables` (`all`: to every table).
pub fn encode(tables: &BTreeSet<Arc<str>>, all: bool) -> Vec<String> {
    let everything = || vec![r#"{"all":true}"#.to_string()];
    if all || tables.iter().any(|t| t.len() > MAX_NAME) {
        return everything();
    }
    let mut out = Vec::new();
    let mut batch: Vec<&str> = Vec::new();
    let mut size = 0;
    for t in tables {
        // A name's JSON text is at most 6 bytes per byte (\u00XX), plus
        // quotes and a comma.
        let cost = serde_json::to_string(&**t).map_or(usize::MAX / 2, |s| ascii(s).len()) + 1;
        if size + cost > MAX_PAYLOAD - 16 && !batch.is_empty() {
            out.push(payload(&batch));
            batch.clear();
            size = 0;
            if out.len() == MAX_PAYLOADS {
                return everything();
            }
        }
        batch.push(t);
        size += cost;
    }
    if !batch.is_empty() {
        out.push(payload(&batch));
    }
    if out.len() > MAX_PAYLOADS {
        return everything();
    }
    out
}

fn payload(tables: &[&str]) -> String {
    let wire = Wire {
        t: tables
            .iter()
            .map(|t| std::borrow::Cow::Borrowed(*t))
            .collect(),
        all: false,
    };
    serde_json::to_string(&wire)
        .map(ascii)
        .unwrap_or_else(|_| r#"{"all":true}"#.to_string())
}

/// JSON text with every non-ASCII character escaped (`\uXXXX`), so that a
/// payload passes whatever the database's encoding.
fn ascii(json: String) -> String {
    if json.is_ascii() {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// What a payload says; a payload this version cannot read counts as
/// "every table" (a newer member said something: better safe).
pub fn decode(payload: &str) -> Heard {
    match serde_json::from_str::<Wire<'_>>(payload) {
        Ok(w) if !w.all && !w.t.is_empty() => {
            Heard::Tables(w.t.into_iter().map(|t| Arc::from(&*t)).collect())
        }
        _ => Heard::All,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn tables_go_and_come_back_whatever_their_names() {
        let names = set(&["public.w", "w", "Quoted \"name\"", "tab\tle", "ünï", "🐘'"]);
        let payloads = encode(&names, false);
        assert_eq!(payloads.len(), 1);
        assert!(payloads[0].is_ascii(), "{}", payloads[0]);
        let Heard::Tables(back) = decode(&payloads[0]) else {
            panic!("{payloads:?}")
        };
        assert_eq!(back.into_iter().collect::<BTreeSet<_>>(), names);
    }

    #[test]
    fn many_tables_are_split_and_too_many_are_everything() {
        let many: BTreeSet<Arc<str>> = (0..1000)
            .map(|i| Arc::from(format!("schema_{i:04}.table_number_{i:04}")))
            .collect();
        let payloads = encode(&many, false);
        assert!(payloads.len() > 1 && payloads.len() <= MAX_PAYLOADS);
        let mut back = BTreeSet::new();
        for p in &payloads {
            assert!(p.len() < MAX_PAYLOAD, "{}", p.len());
            match decode(p) {
                Heard::Tables(t) => back.extend(t),
                Heard::All => panic!("split, not everything"),
            }
        }
        assert_eq!(back, many);
        let lots: BTreeSet<Arc<str>> = (0..20_000)
            .map(|i| Arc::from(format!("schema_{i:05}.table_number_{i:05}")))
            .collect();
        assert_eq!(encode(&lots, false), vec![r#"{"all":true}"#.to_string()]);
        assert_eq!(decode(&encode(&lots, false)[0]), Heard::All);
    }

    #[test]
    fn anything_unreadable_means_every_table() {
        for p in [
            "",
            "not json",
            "{}",
            r#"{"t":[]}"#,
            r#"{"t":[1]}"#,
            r#"{"x":1}"#,
        ] {
            assert_eq!(decode(p), Heard::All, "{p:?}");
        }
        assert_eq!(encode(&set(&["a"]), true), vec![r#"{"all":true}"#]);
        let long = "x".repeat(MAX_NAME + 1);
        assert_eq!(encode(&set(&[&long]), false), vec![r#"{"all":true}"#]);
    }
}
