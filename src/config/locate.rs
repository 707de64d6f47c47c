//! Where something sits in a config file's text: the line and column of a
//! byte offset, and of a key given by its dotted path. serde's errors carry
//! their span; the checks that run after parsing only know the key's path
//! (`pool.sidecars`, `users[0].password_env`), so the file is looked up
//! again to point at the line to fix.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// A 1-based line and column, with the text of that line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    pub line_text: String,
}

impl Location {
    /// The location of byte `offset` of `text`.
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |p| p + 1);
        let column = before[line_start..].chars().count() + 1;
        let line_text = text[line_start..].lines().next().unwrap_or("").to_string();
        // An error must not print a password (a bad line in [[users]]).
        let line_text = super::redact::line(text, offset, line_text);
        Location {
            line,
            column,
            line_text,
        }
    }

    /// Where the file sets `key` (a dotted path, `name[i]` for an array
    /// element): the key itself, or — when the file leaves it out — the
    /// nearest table or entry it belongs in. `None` if the file has none
    /// of it, or is not valid TOML.
    pub fn of_key(text: &str, key: &str) -> Option<Location> {
        key_span(text, key).map(|span| Location::of_offset(text, span.start))
    }
}

/// The byte span [`Location::of_key`] points at.
fn key_span(text: &str, key: &str) -> Option<Range<usize>> {
    let document = DeTable::parse(text).ok()?;
    let mut table: &DeTable = document.get_ref();
    let mut found = None;
    for segment in key.split('.') {
        let (name, index) = split_index(segment);
        let Some((name_span, mut value)) = table.get_key_value(name) else {
            return found;
        };
        found = Some(name_span.span());
        if let Some(index) = index {
            let DeValue::Array(items) = value.get_ref() else {
                return found;
            };
            let Some(item) = items.get(index) else {
                return found;
            };
            // An array of tables (`[[users]]`) has no span of its own
            // worth showing; its entry's header or first key is.
            if !matches!(item.get_ref(), DeValue::Table(_)) {
                found = Some(item.span());
            } else if let Some(first) = first_key_span(item.get_ref()) {
                found = Some(first);
            }
            value = item;
        }
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => return found,
        }
    }
    found
}

/// The span of the first key of a table (the earliest in the text).
fn first_key_span(value: &DeValue<'_>) -> Option<Range<usize>> {
    let DeValue::Table(table) = value else {
        return None;
    };
    table
        .iter()
        .map(|(k, _)| k.span())
        .min_by_key(|span| span.start)
}

/// `name[3]` → (`name`, Some(3)); `name` → (`name`, None).
fn split_index(segment: &str) -> (&str, Option<usize>) {
    match segment.strip_suffix(']').and_then(|s| s.split_once('[')) {
        Some((name, index)) => match index.parse() {
            Ok(i) => (name, Some(i)),
            Err(_) => (segment, None),
        },
        None => (segment, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# a comment
[proxy]
listen = "127.0.0.1:6432"
max_message_size = 10

[cluster]
primary = "db:5432"
replicas = ["r1:5432", "r1:5432"]

[[users]]
name = "app"
password = "x"

[[users]]
name = "other"
password_env = "UNSET"

[admin]
users = ["app", "nobody"]
"#;

    fn line_of(key: &str) -> Option<(usize, String)> {
        Location::of_key(FILE, key).map(|l| (l.line, l.line_text))
    }

    #[test]
    fn a_key_the_file_sets_is_found_on_its_line() {
        assert_eq!(
            line_of("proxy.max_message_size"),
            Some((4, "max_message_size = 10".into()))
        );
        assert_eq!(line_of("cluster.primary").unwrap().0, 7);
        assert_eq!(
            line_of("users[1].password_env"),
            Some((16, "password_env = \"UNSET\"".into()))
        );
    }

    #[test]
    fn array_elements_are_found_by_index() {
        let second = Location::of_key(FILE, "cluster.replicas[1]").unwrap();
        assert_eq!(second.line, 8);
        assert_eq!(second.column, 24, "points at the second element");
        assert_eq!(line_of("admin.users[1]").unwrap().0, 19);
    }

    #[test]
    fn a_key_left_out_points_at_where_it_belongs() {
        // [proxy] has no tls_key: its table is shown.
        assert_eq!(line_of("proxy.tls_key").unwrap().0, 2);
        // users[0] has no password_env: its entry is shown.
        assert_eq!(line_of("users[0].password_env").unwrap().0, 11);
        // Nothing of [pool] in the file.
        assert_eq!(line_of("pool.sidecars"), None);
        // Not TOML at all: no place to show.
        assert_eq!(Location::of_key("[proxy", "proxy.listen"), None);
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        let at = Location::of_offset(FILE, FILE.find("10").unwrap());
        assert_eq!((at.line, at.column), (4, 20));
        let end = Location::of_offset(FILE, usize::MAX);
        assert_eq!(end.line, FILE.lines().count() + 1);
    }
}
