//! Turns the token stream into the normalised statement text (or just its
//! hash), finds the routing hint and the statement boundaries — all in the
//! same single pass over the tokens.
//!
//! Normal form: comments dropped; literals and parameters become `$1, $2, …`
//! numbered in order of appearance (so `a = $2 AND b = 5` and
//! `a = 1 AND b = $1` share a shape: routing never depends on which literal
//! is where); unquoted words lower-cased; one space between tokens except
//! around `( ) [ ] , . ::` and before `;`; empty statements dropped.

use super::fingerprint::{Fingerprint, FpHasher};
use super::lexer::{Lexer, Quoting, Token, TokenKind};
use super::types::Hint;
use std::ops::Range;

/// Receives the normalised text piece by piece.
pub(crate) trait Sink {
    fn push(&mut self, s: &str);
    fn push_lower(&mut self, s: &str);
    /// A numeric literal at this byte range of the input (its text has
    /// already become a placeholder).
    #[inline]
    fn number(&mut self, _at: Range<usize>) {}
}

/// Hash only: the allocation-free path used on every statement.
pub(crate) struct HashSink(pub FpHasher);

impl Sink for HashSink {
    #[inline]
    fn push(&mut self, s: &str) {
        self.0.bytes(s.as_bytes());
    }
    #[inline]
    fn push_lower(&mut self, s: &str) {
        self.0.lower(s.as_bytes());
    }
}

/// Hash plus where the numeric literals are (see [`super::template`]).
struct NotingSink<'a> {
    hash: FpHasher,
    numbers: &'a mut Vec<Range<usize>>,
}

impl Sink for NotingSink<'_> {
    #[inline]
    fn push(&mut self, s: &str) {
        self.hash.bytes(s.as_bytes());
    }
    #[inline]
    fn push_lower(&mut self, s: &str) {
        self.hash.lower(s.as_bytes());
    }
    #[inline]
    fn number(&mut self, at: Range<usize>) {
        self.numbers.push(at);
    }
}

/// Hash plus the text, used on a cache miss. The text stops growing at
/// `cap` bytes (cut inside a token if need be, and marked with `…`) so a
/// huge statement does not pin a huge string in the cache; the hash always
/// covers everything.
pub(crate) struct TextSink {
    pub hash: FpHasher,
    pub text: String,
    cap: usize,
    truncated: bool,
}

impl TextSink {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            hash: FpHasher::new(),
            text: String::new(),
            cap,
            truncated: false,
        }
    }

    /// Appends what still fits of `s` (lower-cased if `lower`); the
    /// text that does not fit is cut and `…` ends the text for good.
    fn append(&mut self, s: &str, lower: bool) {
        if self.truncated {
            return;
        }
        let room = self.cap.saturating_sub(self.text.len());
        let mut end = s.len().min(room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        if lower {
            self.text
                .extend(s[..end].chars().map(|c| c.to_ascii_lowercase()));
        } else {
            self.text.push_str(&s[..end]);
        }
        if end < s.len() {
            self.truncated = true;
            self.text.push('…');
        }
    }
}

impl Sink for TextSink {
    fn push(&mut self, s: &str) {
        self.hash.bytes(s.as_bytes());
        self.append(s, false);
    }
    fn push_lower(&mut self, s: &str) {
        self.hash.lower(s.as_bytes());
        self.append(s, true);
    }
}

/// What one pass found besides the normalised text.
pub(crate) struct Scan {
    pub hint: Option<Hint>,
    /// A string, quoted identifier or comment was never closed.
    pub unterminated: bool,
    /// Deepest nesting of `(` and `[` seen (unbalanced closers ignored).
    pub max_depth: usize,
}

/// Hash-only scan: fingerprint and hint, no allocation.
pub(crate) fn fingerprint(sql: &str, quoting: Quoting) -> (Fingerprint, Option<Hint>) {
    let mut sink = HashSink(FpHasher::new());
    let scan = run(sql, quoting, &mut sink, |_| {});
    (sink.0.finish(), scan.hint)
}

/// Like [`fingerprint`], also listing the byte ranges of the numeric
/// literals in `numbers` (cleared first).
pub(crate) fn fingerprint_noting_numbers(
    sql: &str,
    quoting: Quoting,
    numbers: &mut Vec<Range<usize>>,
) -> (Fingerprint, Option<Hint>) {
    numbers.clear();
    let mut sink = NotingSink {
        hash: FpHasher::new(),
        numbers,
    };
    let scan = run(sql, quoting, &mut sink, |_| {});
    (sink.hash.finish(), scan.hint)
}

/// Full scan on a cache miss: normalised text (capped at `cap` bytes) and
/// the byte range of each non-empty statement (without its `;`).
pub(crate) fn normalize(sql: &str, quoting: Quoting, cap: usize) -> Normalized {
    let mut sink = TextSink::new(cap);
    let mut spans = Vec::new();
    let scan = run(sql, quoting, &mut sink, |r| spans.push(r));
    Normalized {
        fingerprint: sink.hash.finish(),
        text: sink.text,
        spans,
        unterminated: scan.unterminated,
        max_depth: scan.max_depth,
    }
}

/// The result of [`normalize`].
pub(crate) struct Normalized {
    pub fingerprint: Fingerprint,
    pub text: String,
    /// Byte range of each non-empty statement, without its `;`.
    pub spans: Vec<Range<usize>>,
    pub unterminated: bool,
    pub max_depth: usize,
}

/// The single pass. `on_statement` gets each non-empty statement's range.
pub(crate) fn run(
    sql: &str,
    quoting: Quoting,
    sink: &mut impl Sink,
    mut on_statement: impl FnMut(Range<usize>),
) -> Scan {
    let mut hint = None;
    let mut placeholders = 0u32;
    let mut prev: Option<Token> = None; // previous emitted token in this text
    let mut stmt: Option<Range<usize>> = None; // current statement's extent
    let mut pending_semicolon = false;
    let mut seen_token = false;
    let (mut depth, mut max_depth) = (0usize, 0usize);
    let mut lexer = Lexer::with_quoting(sql, quoting);
    for tok in lexer.by_ref() {
        match tok.kind {
            TokenKind::LineComment | TokenKind::BlockComment => {
                if !seen_token && tok.kind == TokenKind::BlockComment {
                    // Primary wins over a token, a token over replica, if a
                    // client sends several.
                    match (parse_hint(tok.text(sql)), hint) {
                        (Some(Hint::Primary), _) => hint = Some(Hint::Primary),
                        (Some(Hint::MinLsn(l)), None | Some(Hint::Replica)) => {
                            hint = Some(Hint::MinLsn(l))
                        }
                        (Some(Hint::Replica), None) => hint = Some(Hint::Replica),
                        _ => {}
                    }
                }
                continue;
            }
            TokenKind::Semicolon => {
                if let Some(r) = stmt.take() {
                    on_statement(r);
                    pending_semicolon = true;
                }
                continue;
            }
            TokenKind::Punct => match sql.as_bytes().get(tok.start) {
                Some(b'(' | b'[') => {
                    depth += 1;
                    max_depth = max_depth.max(depth);
                }
                Some(b')' | b']') => depth = depth.saturating_sub(1),
                _ => {}
            },
            _ => {}
        }
        seen_token = true;
        if pending_semicolon {
            sink.push(";");
            pending_semicolon = false;
        }
        if let Some(p) = prev
            && wants_space(sql.as_bytes(), p, tok)
        {
            sink.push(" ");
        }
        emit(sql, tok, sink, &mut placeholders);
        stmt = Some(match stmt {
            Some(r) => r.start..tok.end,
            None => tok.start..tok.end,
        });
        prev = Some(tok);
    }
    if let Some(r) = stmt.take() {
        on_statement(r);
    }
    if lexer.unterminated {
        sink.push(" <unterminated>");
    }
    Scan {
        hint,
        unterminated: lexer.unterminated,
        max_depth,
    }
}

fn emit(sql: &str, tok: Token, sink: &mut impl Sink, placeholders: &mut u32) {
    let text = tok.text(sql);
    match tok.kind {
        TokenKind::Word => sink.push_lower(text),
        k if k.is_literal() => {
            if k == TokenKind::Number {
                sink.number(tok.start..tok.end);
            }
            *placeholders = placeholders.saturating_add(1);
            sink.push("$");
            let mut buf = [0u8; 10];
            sink.push(format_u32(*placeholders, &mut buf));
        }
        _ => sink.push(text),
    }
}

/// Decimal digits of `n` in `buf`, without allocating.
fn format_u32(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

fn wants_space(src: &[u8], prev: Token, cur: Token) -> bool {
    let p = src.get(prev.start).copied().unwrap_or(0);
    let c = src.get(cur.start).copied().unwrap_or(0);
    // Punct tokens are `( ) [ ] , . :` or `::`: the first byte says which.
    let tight_after = prev.kind == TokenKind::Punct && matches!(p, b'(' | b'[' | b'.' | b':');
    let tight_before =
        cur.kind == TokenKind::Punct && matches!(c, b')' | b']' | b',' | b'.' | b':' | b'[');
    // `count(*)`: no space between a function name and its parenthesis,
    // but `as (`, `in (`, `values (` keep theirs.
    let call = cur.kind == TokenKind::Punct
        && c == b'('
        && match prev.kind {
            TokenKind::QuotedIdent => true,
            TokenKind::Word => !is_clause_keyword(src.get(prev.start..prev.end).unwrap_or(&[])),
            _ => false,
        };
    !(tight_after || tight_before || call)
}

/// Keywords that are followed by a parenthesised list or subquery rather
/// than called like functions (only affects the normalised text's looks).
fn is_clause_keyword(word: &[u8]) -> bool {
    const KEYWORDS: &[&[u8]] = &[
        b"all",
        b"and",
        b"any",
        b"as",
        b"by",
        b"else",
        b"except",
        b"exists",
        b"filter",
        b"from",
        b"in",
        b"intersect",
        b"into",
        b"join",
        b"lateral",
        b"not",
        b"on",
        b"or",
        b"over",
        b"returning",
        b"select",
        b"set",
        b"some",
        b"table",
        b"then",
        b"union",
        b"using",
        b"values",
        b"when",
        b"where",
        b"with",
        b"within",
    ];
    word.len() <= 9 && KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// Recognises `/* pgsidecar:primary */`, `/* pgsidecar:replica */` and
/// `/* pgsidecar:min_lsn=0/16B3748 */`, case-insensitive, with any
/// whitespace around the words, the colon and the `=`. A `min_lsn` that is
/// not an LSN is no hint (like any other comment).
pub(crate) fn parse_hint(comment: &str) -> Option<Hint> {
    let body = comment.strip_prefix("/*")?.strip_suffix("*/")?.trim();
    let rest = strip_prefix_ci(body, "pgsidecar")?.trim_start();
    let value = rest.strip_prefix(':')?.trim();
    if value.eq_ignore_ascii_case("primary") {
        Some(Hint::Primary)
    } else if value.eq_ignore_ascii_case("replica") {
        Some(Hint::Replica)
    } else {
        let lsn = strip_prefix_ci(value, "min_lsn")?.trim_start();
        let lsn = lsn.strip_prefix('=')?.trim();
        lsn.parse().ok().map(Hint::MinLsn)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}
