//! Removing literal values from a plan before it is kept: EXPLAIN prints
//! conditions with the query's constants (`Filter: (t = 'x'::text)`,
//! `Index Cond: (id = 42)`), and a plan taken with captured parameters
//! holds their values. `/queries` must show no more than the normalised
//! text does, so every string in the plan except plain names (node types,
//! relations, aliases, indexes…) has its quoted literals and numbers
//! replaced by `?`. Parameter references (`$1`) and identifiers stay.

use serde_json::Value;

/// Keys whose values are names or keywords, never expressions.
const NAMES: [&str; 16] = [
    "Node Type",
    "Parent Relationship",
    "Subplan Name",
    "Relation Name",
    "Schema",
    "Alias",
    "Index Name",
    "CTE Name",
    "Function Name",
    "Join Type",
    "Strategy",
    "Partial Mode",
    "Scan Direction",
    "Operation",
    "Command",
    "Conflict Resolution",
];

/// Scrubs every expression string in an `EXPLAIN (FORMAT JSON)` value.
pub(crate) fn scrub_plan(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if !(v.is_string() && NAMES.contains(&key.as_str())) {
                    scrub_plan(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_plan),
        Value::String(s) => {
            let scrubbed = scrub_expression(s);
            *s = scrubbed;
        }
        _ => {}
    }
}

/// `(t = 'x'::text) AND (n > 4.5)` → `(t = ?::text) AND (n > ?)`.
pub(crate) fn scrub_expression(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = i.checked_sub(1).map(|p| chars[p]);
        if c == '\'' {
            let escapes = out.ends_with(['E', 'e'])
                && !out[..out.len() - 1].ends_with(|p: char| p.is_alphanumeric() || p == '_');
            if escapes {
                out.pop();
            }
            i = skip_string(&chars, i, escapes);
            out.push('?');
        } else if c == '"' {
            let end = skip_quoted_ident(&chars, i);
            out.extend(&chars[i..end]);
            i = end;
        } else if c.is_ascii_digit()
            && !prev.is_some_and(|p| p.is_alphanumeric() || "_$.".contains(p))
        {
            i = skip_number(&chars, i);
            out.push('?');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// A server message (which may quote a value: `invalid input syntax
/// for type integer: "abc"`) with double-quoted parts, literals and
/// numbers replaced by `?`.
pub(crate) fn scrub_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    out.push_str(parts.next().unwrap_or(""));
    for (i, part) in parts.enumerate() {
        out.push('"');
        // Odd parts are inside quotes.
        out.push_str(if i % 2 == 0 { "?" } else { part });
    }
    scrub_expression(&out)
}

fn skip_string(chars: &[char], start: usize, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if backslash => i += 2,
            '\'' if chars.get(i + 1) == Some(&'\'') => i += 2,
            '\'' => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

fn skip_quoted_ident(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '"' {
            if chars.get(i + 1) == Some(&'"') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

fn skip_number(chars: &[char], start: usize) -> usize {
    let mut i = start;
    let digits = |i: &mut usize| {
        while chars.get(*i).is_some_and(char::is_ascii_digit) {
            *i += 1;
        }
    };
    digits(&mut i);
    if chars.get(i) == Some(&'.') {
        i += 1;
        digits(&mut i);
    }
    if chars.get(i).is_some_and(|c| *c == 'e' || *c == 'E') {
        let mut j = i + 1;
        if chars.get(j).is_some_and(|c| *c == '+' || *c == '-') {
            j += 1;
        }
        if chars.get(j).is_some_and(char::is_ascii_digit) {
            i = j;
            digits(&mut i);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_go_names_and_parameters_stay() {
        let cases = [
            ("(t = 'x'::text)", "(t = ?::text)"),
            ("(t = 'it''s'::text)", "(t = ?::text)"),
            ("(t = E'a\\'b'::text)", "(t = ?::text)"),
            (
                "((id = 42) AND (score > 4.5e-3))",
                "((id = ?) AND (score > ?))",
            ),
            ("(id = $1)", "(id = $1)"),
            ("(t1.c2 = t2.c2)", "(t1.c2 = t2.c2)"),
            ("(\"Weird 1\" = 'a')", "(\"Weird 1\" = ?)"),
            ("generate_series(1, 10)", "generate_series(?, ?)"),
        ];
        for (input, expected) in cases {
            assert_eq!(scrub_expression(input), expected, "{input}");
        }
    }

    #[test]
    fn server_messages_lose_their_values() {
        assert_eq!(
            scrub_message("invalid input syntax for type integer: \"abc\""),
            "invalid input syntax for type integer: \"?\""
        );
        assert_eq!(
            scrub_message("value 99999999999 is out of range for type integer"),
            "value ? is out of range for type integer"
        );
        assert_eq!(
            scrub_message("relation \"nope\" does not exist"),
            "relation \"?\" does not exist"
        );
    }

    #[test]
    fn a_real_plan_keeps_its_structure() {
        let mut plan: Value =
            serde_json::from_str(include_str!("testdata/join_plan.json")).unwrap();
        scrub_plan(&mut plan);
        let text = plan.to_string();
        assert!(!text.contains("'x'"), "{text}");
        assert!(text.contains("(t = ?::text)"), "{text}");
        assert!(text.contains("\"InitPlan 2 (returns $1)\""), "{text}");
        assert!(text.contains("\"small_pkey\""), "{text}");
        // Numbers that are plan data, not text, are untouched.
        assert_eq!(plan[0]["Plan"]["Total Cost"], 3131.2);
    }
}
