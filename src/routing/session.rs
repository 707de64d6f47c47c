//! Literal-dependent session effects (SET, RESET, `set_config(...)`,
//! `SET pgsidecar.route`), read from each statement's own tokens every time
//! — never from the cache, since statements that differ only in these
//! values share a fingerprint.

use std::borrow::Cow;

use super::lexer::{Lexer, Quoting, Token, TokenKind};
use super::types::{ProxyParam, RouteSetting, SessionChange};
use crate::cluster::Lsn;

/// All session changes in `sql` (every statement), in order, less those a
/// ROLLBACK later in the same string undoes. Strings are read as a server
/// in `quoting` mode reads them; SET values are kept in a form that means
/// the same in either mode (they are re-applied on other servers).
pub(crate) fn extract(sql: &str, quoting: Quoting) -> Vec<SessionChange> {
    let mut out = Vec::new();
    let mut blocks = Blocks::default();
    let mut stmt: Vec<Token> = Vec::new();
    let src = Src { sql, quoting };
    for tok in Lexer::with_quoting(sql, quoting).filter(|t| !t.kind.is_comment()) {
        if tok.kind == TokenKind::Semicolon {
            statement(src, &stmt, &mut out, &mut blocks);
            stmt.clear();
        } else {
            stmt.push(tok);
        }
    }
    statement(src, &stmt, &mut out, &mut blocks);
    out
}

/// The text being read and how its strings are read.
#[derive(Clone, Copy)]
struct Src<'a> {
    sql: &'a str,
    quoting: Quoting,
}

/// Transaction control within one string, as positions in its list of
/// changes. The string's first statements run in the transaction block
/// open before it, or in the implicit block of a multi-statement string; a
/// BEGIN later in it makes that block explicit without committing what
/// came before. So a ROLLBACK undoes everything since the string's start
/// or its last COMMIT, and ROLLBACK TO a savepoint made in the string
/// undoes what followed that savepoint.
#[derive(Default)]
struct Blocks {
    /// Where the changes of the current transaction block begin.
    start: usize,
    savepoints: Vec<(String, usize)>,
}

impl Blocks {
    /// Applies a transaction-control statement to `out`; false if `toks`
    /// is not one.
    fn control(&mut self, sql: &str, toks: &[Token], out: &mut Vec<SessionChange>) -> bool {
        let w = |i: usize, s: &str| is_word(toks.get(i), sql, s);
        let first = toks.first().map(|t| t.text(sql).to_ascii_lowercase());
        // `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name`, `RELEASE
        // [SAVEPOINT] name`: the name after the optional words.
        let name_after = |mut i: usize, skip: &[&str]| {
            while skip.iter().any(|s| w(i, s)) {
                i += 1;
            }
            toks.get(i).map(|t| name_text(t.text(sql)))
        };
        match first.as_deref() {
            Some("commit" | "end") if !w(1, "prepared") => {
                self.start = out.len();
                self.savepoints.clear();
            }
            Some("rollback" | "abort") if !w(1, "prepared") => {
                let to = if w(1, "to") {
                    Some(2)
                } else if (w(1, "work") || w(1, "transaction")) && w(2, "to") {
                    Some(3)
                } else {
                    None
                };
                let target = to.and_then(|i| name_after(i, &["savepoint"]));
                match target {
                    Some(name) => {
                        // Kept: a savepoint survives being rolled back to.
                        match self.savepoints.iter().rposition(|(n, _)| *n == name) {
                            Some(i) => {
                                out.truncate(self.savepoints[i].1);
                                self.savepoints.truncate(i + 1);
                            }
                            None => {
                                // Made before this string: what came since is
                                // undone, and so is what is pending from before.
                                out.truncate(self.start);
                                self.savepoints.clear();
                                out.push(SessionChange::RollbackToSavepoint(name));
                            }
                        }
                    }
                    None => {
                        out.truncate(self.start);
                        self.savepoints.clear();
                    }
                }
            }
            Some("savepoint") => {
                if let Some(name) = name_after(1, &[]) {
                    out.push(SessionChange::Savepoint(name.clone()));
                    self.savepoints.push((name, out.len()));
                }
            }
            Some("release") => {
                if let Some(name) = name_after(1, &["savepoint"]) {
                    if let Some(i) = self.savepoints.iter().rposition(|(n, _)| *n == name) {
                        self.savepoints.truncate(i);
                    }
                    out.push(SessionChange::ReleaseSavepoint(name));
                }
            }
            _ => return false,
        }
        true
    }
}

/// A savepoint name as Postgres compares it: folded unless quoted.
fn name_text(text: &str) -> String {
    unquote(text, '"').unwrap_or_else(|| text.to_ascii_lowercase())
}

fn is_word(t: Option<&Token>, sql: &str, w: &str) -> bool {
    t.is_some_and(|t| t.kind == TokenKind::Word && t.text(sql).eq_ignore_ascii_case(w))
}

fn statement(src: Src<'_>, toks: &[Token], out: &mut Vec<SessionChange>, blocks: &mut Blocks) {
    let sql = src.sql;
    if blocks.control(sql, toks, out) {
        return;
    }
    if is_word(toks.first(), sql, "set") {
        set(src, &toks[1..], out);
    } else if is_word(toks.first(), sql, "reset") {
        reset(sql, &toks[1..], out);
    } else if is_word(toks.first(), sql, "show") {
        if let Some((name, n)) = param_name(sql, &toks[1..])
            && n + 1 == toks.len()
            && let Some(param) = ProxyParam::named(&name)
        {
            out.push(SessionChange::Show(param));
        }
        return;
    }
    set_config_calls(src, toks, out);
}

/// Source text of `toks`, comments dropped and whitespace collapsed: what
/// can be sent back as the value of `SET name TO …`, on a server in either
/// string mode (see [`portable`]).
fn joined(src: Src<'_>, toks: &[Token]) -> String {
    let mut s = String::new();
    for (i, t) in toks.iter().enumerate() {
        if i > 0 && toks[i - 1].end != t.start && t.kind != TokenKind::Punct {
            s.push(' ');
        }
        if t.kind == TokenKind::String {
            s.push_str(&portable(t.text(src.sql), src.quoting));
        } else {
            s.push_str(t.text(src.sql));
        }
    }
    s
}

/// A string literal's text, written so that it means the same whatever
/// `standard_conforming_strings` the server that reads it has: a plain
/// `'…'` read with backslash escapes is the `E'…'` of the same body; one
/// read without them that holds a backslash becomes `E'…'` with its
/// backslashes doubled. Other literals already mean the same in both.
pub(crate) fn portable(text: &str, quoting: Quoting) -> Cow<'_, str> {
    let body = match text.as_bytes() {
        [b'\'', ..] => text,
        [b'n' | b'N', b'\'', ..] => &text[1..],
        _ => return Cow::Borrowed(text),
    };
    match quoting {
        Quoting::Backslash => Cow::Owned(format!("E{body}")),
        Quoting::Standard if body.contains('\\') => {
            Cow::Owned(format!("E{}", body.replace('\\', "\\\\")))
        }
        Quoting::Standard => Cow::Borrowed(text),
    }
}

/// A (possibly dotted) parameter name and how many tokens it took.
fn param_name(sql: &str, toks: &[Token]) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut i = 0;
    loop {
        let t = toks.get(i)?;
        match t.kind {
            TokenKind::Word => name.push_str(&t.text(sql).to_ascii_lowercase()),
            TokenKind::QuotedIdent => name.push_str(&unquote(t.text(sql), '"')?),
            _ => return None,
        }
        i += 1;
        if toks.get(i).is_some_and(|t| t.text(sql) == ".") {
            name.push('.');
            i += 1;
        } else {
            return Some((name, i));
        }
    }
}

fn set(src: Src<'_>, toks: &[Token], out: &mut Vec<SessionChange>) {
    let sql = src.sql;
    let mut toks = toks;
    let mut local = false;
    if is_word(toks.first(), sql, "local") {
        local = true;
        toks = &toks[1..];
    } else if is_word(toks.first(), sql, "session") && !is_word(toks.get(1), sql, "characteristics")
    {
        toks = &toks[1..];
    }
    let w = |i: usize, s: &str| is_word(toks.get(i), sql, s);
    // Special forms: (tokens consumed, parameter name).
    let special = if w(0, "transaction") {
        return; // a transaction effect, reported in StatementInfo::tx
    } else if w(0, "characteristics") || w(0, "session") {
        out.push(SessionChange::Untracked {
            name: Some("session_characteristics".into()),
        });
        return;
    } else if w(0, "time") && w(1, "zone") {
        Some((2, "timezone"))
    } else if w(0, "authorization") {
        Some((1, "session_authorization"))
    } else if w(0, "role") {
        Some((1, "role"))
    } else if w(0, "names") {
        Some((1, "client_encoding"))
    } else if w(0, "schema") {
        Some((1, "search_path"))
    } else {
        None
    };
    let (name, value) = match special {
        Some((n, name)) => (name.to_string(), &toks[n.min(toks.len())..]),
        None => {
            let Some((name, n)) = param_name(sql, toks) else {
                out.push(SessionChange::Untracked { name: None });
                return;
            };
            let rest = &toks[n..];
            match rest.first() {
                Some(t) if t.text(sql) == "=" || is_word(Some(t), sql, "to") => (name, &rest[1..]),
                _ => {
                    out.push(SessionChange::Untracked { name: Some(name) });
                    return;
                }
            }
        }
    };
    let is_default = value.len() == 1
        && (is_word(value.first(), sql, "default")
            || (name == "timezone" && is_word(value.first(), sql, "local")));
    if name == "pgsidecar.route" {
        out.push(route_change(src, value, is_default, local));
    } else if name == "pgsidecar.min_lsn" {
        out.push(min_lsn_change(src, value, is_default, local));
    } else if is_default || value.is_empty() {
        out.push(SessionChange::Reset { name, local });
    } else {
        let value = joined(src, value);
        out.push(SessionChange::Set { name, value, local });
    }
}

fn route_change(src: Src<'_>, value: &[Token], is_default: bool, local: bool) -> SessionChange {
    let raw = joined(src, value);
    let text = match value {
        [t] if t.kind == TokenKind::String => string_value(src, t).unwrap_or_default(),
        [t] => t.text(src.sql).to_string(),
        _ => raw.clone(),
    };
    let setting = match text.to_ascii_lowercase().as_str() {
        _ if is_default => Some(RouteSetting::Auto),
        "primary" => Some(RouteSetting::Primary),
        "replica" => Some(RouteSetting::Replica),
        "auto" => Some(RouteSetting::Auto),
        _ => None,
    };
    SessionChange::Route {
        setting,
        value: raw,
        local,
    }
}

/// `SET pgsidecar.min_lsn`: an LSN as Postgres prints it, quoted or not
/// (`0/16B3748` lexes as several tokens, hence the joined text); DEFAULT,
/// or an empty string, for none.
fn min_lsn_change(src: Src<'_>, value: &[Token], is_default: bool, local: bool) -> SessionChange {
    let raw = joined(src, value);
    let text = match value {
        [t] if t.kind == TokenKind::String => string_value(src, t).unwrap_or_default(),
        _ => value.iter().map(|t| t.text(src.sql)).collect(),
    };
    let lsn = if is_default || text.trim().is_empty() {
        Some(Lsn::default())
    } else {
        text.trim().parse().ok()
    };
    SessionChange::MinLsn {
        lsn,
        value: raw,
        local,
    }
}

fn reset(sql: &str, toks: &[Token], out: &mut Vec<SessionChange>) {
    let w = |i: usize, s: &str| is_word(toks.get(i), sql, s);
    let name = if w(0, "all") && toks.len() == 1 {
        out.push(SessionChange::ResetAll);
        return;
    } else if w(0, "time") && w(1, "zone") {
        "timezone".to_string()
    } else if w(0, "session") && w(1, "authorization") {
        "session_authorization".to_string()
    } else if let Some((name, _)) = param_name(sql, toks) {
        name
    } else {
        out.push(SessionChange::Untracked { name: None });
        return;
    };
    if name == "pgsidecar.route" {
        out.push(SessionChange::Route {
            setting: Some(RouteSetting::Auto),
            value: "DEFAULT".into(),
            local: false,
        });
    } else if name == "pgsidecar.min_lsn" {
        out.push(SessionChange::MinLsn {
            lsn: Some(Lsn::default()),
            value: "DEFAULT".into(),
            local: false,
        });
    } else {
        out.push(SessionChange::Reset { name, local: false });
    }
}

/// `set_config('name', 'value', is_local)` anywhere in the statement.
fn set_config_calls(src: Src<'_>, toks: &[Token], out: &mut Vec<SessionChange>) {
    let sql = src.sql;
    for (i, t) in toks.iter().enumerate() {
        let qualified_ok =
            i < 2 || toks[i - 1].text(sql) != "." || is_word(toks.get(i - 2), sql, "pg_catalog");
        if !is_word(Some(t), sql, "set_config")
            || !qualified_ok
            || toks.get(i + 1).is_none_or(|p| p.text(sql) != "(")
        {
            continue;
        }
        out.push(set_config(src, &toks[i + 2..]));
    }
}

fn set_config(src: Src<'_>, toks: &[Token]) -> SessionChange {
    let sql = src.sql;
    // Exactly three single-token arguments, then `)`.
    let arg = |i: usize| toks.get(i * 2);
    let shape_ok = (0..2).all(|i| toks.get(i * 2 + 1).is_some_and(|t| t.text(sql) == ","))
        && toks.get(5).is_some_and(|t| t.text(sql) == ")");
    let name = arg(0)
        .and_then(|t| string_value(src, t))
        .map(|n| n.to_ascii_lowercase());
    let value = arg(1).and_then(|t| string_value(src, t));
    let local = arg(2).and_then(|t| bool_value(src, t));
    match (shape_ok, name, value, local) {
        (true, Some(name), Some(_), Some(local))
            if name == "pgsidecar.route" || name == "pgsidecar.min_lsn" =>
        {
            if local {
                // Transaction-local: no lasting effect the proxy could honour.
                SessionChange::Untracked { name: Some(name) }
            } else if name == "pgsidecar.route" {
                route_change(src, &toks[2..3], false, false)
            } else {
                min_lsn_change(src, &toks[2..3], false, false)
            }
        }
        (true, Some(name), Some(value), Some(local)) => {
            SessionChange::SetConfig { name, value, local }
        }
        (_, name, _, _) => SessionChange::Untracked { name },
    }
}

/// The value of a plain string literal (`'..'`, or `E'..'` — or `'..'`
/// read with backslash escapes — without backslashes); `None` for
/// anything else.
fn string_value(src: Src<'_>, t: &Token) -> Option<String> {
    if t.kind != TokenKind::String {
        return None;
    }
    let text = t.text(src.sql);
    let text = match text.strip_prefix(['e', 'E']) {
        Some(rest) if !rest.contains('\\') => rest,
        Some(_) => return None,
        None if src.quoting == Quoting::Backslash && text.contains('\\') => return None,
        None => text,
    };
    unquote(text, '\'')
}

fn bool_value(src: Src<'_>, t: &Token) -> Option<bool> {
    let text = match t.kind {
        TokenKind::Word => t.text(src.sql).to_ascii_lowercase(),
        TokenKind::String => string_value(src, t)?.to_ascii_lowercase(),
        _ => return None,
    };
    match text.as_str() {
        "true" | "t" | "on" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "off" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// Strips the quotes of `'..'` / `".."` and undoubles inner quotes.
fn unquote(text: &str, q: char) -> Option<String> {
    let inner = text.strip_prefix(q)?.strip_suffix(q)?;
    let doubled: String = [q, q].iter().collect();
    Some(inner.replace(&doubled, &q.to_string()))
}
