//! Statements from sessions with `standard_conforming_strings = off`, made
//! readable by sqlparser (which reads `'…'` the standard way): every plain
//! string becomes the `E'…'` string with the same body, which means the
//! same to Postgres in that mode. Only used on a cache miss, and only for
//! text that has a backslash (without one, both modes read it alike).

use std::borrow::Cow;

use super::lexer::{Lexer, Quoting, TokenKind};

/// `text` as a standard-mode reader must see it to find what a server in
/// `quoting` mode finds.
pub(crate) fn for_parser(text: &str, quoting: Quoting) -> Cow<'_, str> {
    if quoting == Quoting::Standard || !text.contains('\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut copied = 0;
    for tok in Lexer::with_quoting(text, quoting) {
        if tok.kind != TokenKind::String {
            continue;
        }
        let body = match text.as_bytes().get(tok.start..tok.start + 2) {
            Some([b'\'', _]) => tok.start,
            Some([b'n' | b'N', b'\'']) => tok.start + 1,
            _ => continue,
        };
        out.push_str(&text[copied..tok.start]);
        out.push('E');
        out.push_str(&text[body..tok.end]);
        copied = tok.end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_strings_become_e_strings_only_in_backslash_mode() {
        let sql = r"SELECT N'x\'y', E'\\', $$\$$, '\' , ' ; DELETE FROM t; --'";
        assert_eq!(for_parser(sql, Quoting::Standard), sql);
        assert_eq!(
            for_parser(sql, Quoting::Backslash),
            r"SELECT E'x\'y', E'\\', $$\$$, E'\' , ' ; DELETE FROM t; --'"
        );
        assert_eq!(for_parser("select 'a'", Quoting::Backslash), "select 'a'");
    }
}
