//! What the sampler must know about a statement's text before it dares to
//! EXPLAIN it: is it one statement, can EXPLAIN take it, how many `$n`
//! parameters it has. A small lexer that skips strings, quoted
//! identifiers, comments and dollar quotes; and literal quoting for
//! captured parameter values.

/// Statements EXPLAIN accepts (by first keyword).
const EXPLAINABLE: [&str; 8] = [
    "select", "with", "insert", "update", "delete", "values", "table", "merge",
];

/// The facts [`scan`] finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Highest `$n` outside literals and comments (0 = none).
    pub(crate) params: usize,
    /// More than one statement (something follows a `;`).
    pub(crate) multiple: bool,
    /// The first keyword, lower-cased, is one EXPLAIN takes.
    pub(crate) explainable: bool,
}

/// Scans `sql`. Never fails: unterminated literals just end the text.
pub(crate) fn scan(sql: &str) -> Scan {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut params = 0usize;
    let mut first_word: Option<&str> = None;
    let mut after_semicolon = false;
    let mut multiple = false;
    while i < b.len() {
        let c = b[i];
        let start = i;
        i = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => skip_block_comment(b, i),
            c if c.is_ascii_whitespace() => i + 1,
            _ => {
                if after_semicolon && c != b';' {
                    multiple = true;
                }
                match c {
                    b'\'' => skip_quoted(b, i, b'\'', escapes_backslash(b, i)),
                    b'"' => skip_quoted(b, i, b'"', false),
                    b';' => {
                        after_semicolon = true;
                        i + 1
                    }
                    b'$' => {
                        let (next, param) = dollar(b, i);
                        params = params.max(param);
                        next
                    }
                    c if is_ident_start(c) => {
                        let end = ident_end(b, i);
                        if first_word.is_none() {
                            first_word = sql.get(start..end);
                        }
                        end
                    }
                    _ => i + 1,
                }
            }
        };
    }
    Scan {
        params,
        multiple,
        explainable: first_word
            .is_some_and(|w| EXPLAINABLE.iter().any(|k| k.eq_ignore_ascii_case(w))),
    }
}

/// `value` as an SQL string literal: quotes doubled, and with `E'...'`
/// and doubled backslashes if it has any (correct whatever
/// `standard_conforming_strings` is).
pub(crate) fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for ch in value.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn skip_line(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p + 1)
}

/// Block comments nest in PostgreSQL.
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// `E'...'` (an `e` right before the quote that does not end a longer
/// identifier) treats backslash as an escape.
fn escapes_backslash(b: &[u8], quote: usize) -> bool {
    quote >= 1
        && b[quote - 1].eq_ignore_ascii_case(&b'e')
        && (quote < 2 || !is_ident_char(b[quote - 2]))
}

/// Skips a quoted literal or identifier starting at `i`; a doubled quote
/// stands for itself.
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            c if c == quote => {
                if b.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// At a `$`: a parameter `$n` (returns its number), a dollar-quoted string
/// `$tag$...$tag$` (skipped), or a lone `$`.
fn dollar(b: &[u8], i: usize) -> (usize, usize) {
    let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 {
        let end = i + 1 + digits;
        let n = std::str::from_utf8(&b[i + 1..end])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0);
        return (end, n);
    }
    let tag_len = b[i + 1..]
        .iter()
        .take_while(|&&c| is_ident_char(c) && c != b'$')
        .count();
    let close = i + 1 + tag_len;
    if b.get(close) != Some(&b'$') {
        return (i + 1, 0);
    }
    let tag = &b[i..=close];
    let body = close + 1;
    let end = b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len());
    (end, 0)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn ident_end(b: &[u8], i: usize) -> usize {
    i + b[i..].iter().take_while(|&&c| is_ident_char(c)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parameters_outside_literals_and_comments() {
        let s = scan("select * from t where a = $1 and b = $12");
        assert_eq!((s.params, s.multiple, s.explainable), (12, false, true));
        let s = scan("select '$3', \"x$4\", $$ $5 $$, $tag$ $6 ; $tag$ -- $7\n /* $8 /* $9 */ */");
        assert_eq!((s.params, s.multiple), (0, false));
        assert_eq!(scan("select E'\\' $2' , $1").params, 1);
        assert_eq!(scan("select a$1 from t").params, 0);
    }

    #[test]
    fn finds_a_second_statement() {
        assert!(!scan("select 1;").multiple);
        assert!(!scan("select 1 ; -- done\n ;").multiple);
        assert!(scan("select 1; select pg_terminate_backend(1)").multiple);
        assert!(!scan("select ';'").multiple);
    }

    #[test]
    fn only_plannable_statements_are_explainable() {
        for sql in [
            "SELECT 1",
            "/* c */ (select 1)",
            "with x as (select 1) select * from x",
            "insert into t values (1)",
            "update t set a = 1",
            "delete from t",
            "TABLE t",
        ] {
            assert!(scan(sql).explainable, "{sql}");
        }
        for sql in [
            "commit",
            "begin",
            "set x = 1",
            "create table t (a int)",
            "explain select 1",
            "",
        ] {
            assert!(!scan(sql).explainable, "{sql}");
        }
    }

    #[test]
    fn literals_are_quoted_safely() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
        assert_eq!(quote_literal(""), "''");
    }
}
