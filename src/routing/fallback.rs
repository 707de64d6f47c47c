//! Lexical classification for statements sqlparser cannot parse (or that
//! are too large to parse): always the primary, but transaction control,
//! session pins and releases are still recognised from the leading words,
//! because losing a `CREATE TEMP TABLE` or a `LISTEN` under transaction
//! pooling breaks the client even when the route is right.

use super::classify::StmtClass;
use super::lexer::{Lexer, Token, TokenKind};
use super::types::{PinReason, Reason, Route, TxEffect, Unpin};
use std::sync::Arc;

/// PostgreSQL commands sqlparser does not (fully) know. They are not
/// reported as `parse_error`, which would suggest broken SQL to an operator.
#[rustfmt::skip]
const UTILITY_WORDS: &[&str] = &[
    "do", "checkpoint", "vacuum", "analyze", "analyse", "cluster", "reindex", "load", "refresh",
    "lock", "notify", "call", "execute", "fetch", "move", "close", "declare",
];

#[rustfmt::skip]
const DDL_WORDS: &[&str] = &[
    "create", "alter", "drop", "grant", "revoke", "comment", "security", "reassign", "import",
];

/// Classifies one statement's text from its tokens alone.
pub(crate) fn classify(text: &str) -> StmtClass {
    let tokens: Vec<Token> = Lexer::new(text).filter(|t| !t.kind.is_comment()).collect();
    let word = |i: usize| -> String {
        match tokens.get(i) {
            Some(t) if t.kind == TokenKind::Word => t.text(text).to_ascii_lowercase(),
            _ => String::new(),
        }
    };
    let has_words = |seq: &[&str]| {
        tokens.windows(seq.len()).any(|w| {
            w.iter()
                .zip(seq)
                .all(|(t, s)| t.kind == TokenKind::Word && t.text(text).eq_ignore_ascii_case(s))
        })
    };
    let read_only = || {
        if has_words(&["read", "only"]) {
            Some(true)
        } else if has_words(&["read", "write"]) {
            Some(false)
        } else {
            None
        }
    };
    let serializable = || {
        if has_words(&["serializable"]) {
            Some(true)
        } else if has_words(&["isolation", "level"]) {
            Some(false)
        } else {
            None
        }
    };
    let (w0, w1) = (word(0), word(1));
    let mut class = StmtClass::new(Route::Write, Reason::ParseError);
    match w0.as_str() {
        "begin" | "start" => tx(
            &mut class,
            TxEffect::Begin {
                read_only: read_only(),
                serializable: serializable(),
            },
        ),
        "commit" | "end" => tx(&mut class, TxEffect::Commit),
        "rollback" | "abort" if has_words(&["to"]) => tx(&mut class, TxEffect::RollbackToSavepoint),
        "rollback" | "abort" => tx(&mut class, TxEffect::Rollback),
        "savepoint" => tx(&mut class, TxEffect::Savepoint),
        "release" => tx(&mut class, TxEffect::ReleaseSavepoint),
        "set" if w1 == "transaction" => tx(
            &mut class,
            TxEffect::SetTransaction {
                read_only: read_only(),
                serializable: serializable(),
            },
        ),
        "set" | "reset" => {
            class.reason = if has_words(&["pgsidecar"]) {
                Reason::ProxySetting
            } else {
                Reason::SessionState
            };
            class.session = true;
        }
        "listen" => {
            class.reason = Reason::SessionState;
            class.pin = Some(PinReason::Listen);
        }
        "unlisten" => {
            class.reason = Reason::SessionState;
            if tokens.get(1).is_some_and(|t| t.text(text) == "*") {
                class.unpin = Some(Unpin::UnlistenAll);
            }
        }
        "discard" => {
            class.reason = Reason::SessionState;
            if w1 == "all" {
                class.unpin = Some(Unpin::DiscardAll);
            }
        }
        "deallocate" => {
            class.reason = Reason::SessionState;
            let name = if w1 == "prepare" { 2 } else { 1 };
            class.unpin = match tokens.get(name) {
                Some(t) if t.text(text).eq_ignore_ascii_case("all") => Some(Unpin::DeallocateAll),
                Some(t) => Some(Unpin::Deallocate(Arc::from(folded(t, text)))),
                None => None,
            };
        }
        "prepare" if w1 == "transaction" => class.reason = Reason::TransactionControl,
        "prepare" => {
            class.reason = Reason::SessionState;
            class.pin = Some(PinReason::SqlPrepare);
        }
        "create" if has_words(&["temp"]) || has_words(&["temporary"]) => {
            class.reason = Reason::Ddl;
            class.pin = Some(PinReason::TempObject);
        }
        "declare" if has_words(&["with", "hold"]) => {
            class.reason = Reason::Utility;
            class.pin = Some(PinReason::HoldCursor);
        }
        w if UTILITY_WORDS.contains(&w) => class.reason = Reason::Utility,
        w if DDL_WORDS.contains(&w) => class.reason = Reason::Ddl,
        "select" | "with" | "table" | "values" | "explain"
            if has_words(&["for", "no", "key", "update"])
                || has_words(&["for", "key", "share"]) =>
        {
            class.reason = Reason::LockingClause;
        }
        _ => {}
    }
    scan_calls(&tokens, text, &mut class);
    // Text the parser could not read may run anything: only statements
    // recognised above as changing nothing but what they spell out are not
    // opaque.
    class.opaque = !matches!(
        class.reason,
        Reason::TransactionControl | Reason::SessionState | Reason::ProxySetting
    );
    class
}

fn tx(class: &mut StmtClass, effect: TxEffect) {
    class.reason = Reason::TransactionControl;
    class.tx = effect;
}

fn folded(t: &Token, text: &str) -> String {
    let s = t.text(text);
    match t.kind {
        TokenKind::QuotedIdent => s.trim_matches('"').replace("\"\"", "\""),
        _ => s.to_ascii_lowercase(),
    }
}

/// Advisory locks and set_config calls anywhere in the statement.
fn scan_calls(tokens: &[Token], text: &str, class: &mut StmtClass) {
    for pair in tokens.windows(2) {
        if pair[0].kind != TokenKind::Word || pair[1].text(text) != "(" {
            continue;
        }
        let name = pair[0].text(text).to_ascii_lowercase();
        if name == "set_config" {
            class.session = true;
        } else if name == "pg_advisory_unlock_all" {
            class.unpin = Some(Unpin::AdvisoryUnlockAll);
        } else if (name.starts_with("pg_advisory_lock") || name.starts_with("pg_try_advisory_lock"))
            && !name.contains("_xact_")
        {
            class.pin = class.pin.or(Some(PinReason::AdvisoryLock));
        }
    }
}
