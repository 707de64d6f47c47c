//! A one-pass SQL tokenizer following PostgreSQL's lexical rules closely
//! enough to find statement boundaries, literals and comments. It never
//! allocates and never panics: every input, however broken, yields tokens.
//!
//! It deliberately does not validate: an unterminated string or comment just
//! runs to the end of the text (the server will reject it; we only need a
//! stable fingerprint and a safe route).

/// What a token is; its text is `&sql[start..end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Unquoted identifier or keyword (case-insensitive).
    Word,
    /// `"..."` or `U&"..."`, case preserved.
    QuotedIdent,
    /// Any string literal: `'..'`, `E'..'`, `B'..'`, `X'..'`, `N'..'`,
    /// `U&'..'` and dollar-quoted `$tag$..$tag$`.
    String,
    /// Numeric literal.
    Number,
    /// Positional parameter `$1`.
    Param,
    /// Operator such as `=`, `<>`, `->>`, `||`.
    Operator,
    /// One of `( ) [ ] , . :` or `::`.
    Punct,
    /// Statement separator `;`.
    Semicolon,
    /// `-- ...` comment (without the newline).
    LineComment,
    /// `/* ... */` comment, nested as PostgreSQL nests them.
    BlockComment,
    /// Any other byte (e.g. `\`, `{`): kept so it still shapes the
    /// fingerprint.
    Other,
}

impl TokenKind {
    /// Literal values, normalised to `$n` placeholders.
    pub fn is_literal(self) -> bool {
        matches!(self, Self::String | Self::Number | Self::Param)
    }

    /// Comments never reach the fingerprint.
    pub fn is_comment(self) -> bool {
        matches!(self, Self::LineComment | Self::BlockComment)
    }
}

/// How a session's server reads `'…'` strings: with
/// `standard_conforming_strings = on` (the default since PostgreSQL 9.1) a
/// backslash is an ordinary character; with `off` it escapes the next
/// character, as it always does in `E'…'`. Text lexed the wrong way finds
/// literals where there are none (and leaks literal values into the
/// normalised text) or misses statements hidden in what looks like one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Quoting {
    /// `standard_conforming_strings = on`.
    #[default]
    Standard,
    /// `standard_conforming_strings = off`: backslash escapes in `'…'`
    /// (and `N'…'`).
    Backslash,
}

impl Quoting {
    /// The mode a `standard_conforming_strings` value means, if it is one
    /// (the boolean spellings Postgres accepts).
    pub fn from_setting(value: &str) -> Option<Quoting> {
        let v = value.trim().trim_matches('\'').to_ascii_lowercase();
        match v.as_str() {
            "on" | "true" | "yes" | "1" | "t" | "y" => Some(Quoting::Standard),
            "off" | "false" | "no" | "0" | "f" | "n" => Some(Quoting::Backslash),
            _ => None,
        }
    }
}

/// One token as a byte range of the input. The range always lies on UTF-8
/// character boundaries because it starts and ends at ASCII bytes or at the
/// end of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// The token's text; empty (never a panic) if the range were invalid.
    pub fn text<'a>(&self, sql: &'a str) -> &'a str {
        sql.get(self.start..self.end).unwrap_or("")
    }
}

/// Iterator over the tokens of one SQL text (all its statements).
pub struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    /// Backslash escapes in plain `'…'` strings too.
    backslash_strings: bool,
    /// Set when a string, quoted identifier or comment ran into the end of
    /// the input. Such text is never valid SQL, and it must not share a
    /// fingerprint with the valid statement it resembles.
    pub unterminated: bool,
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a str) -> Self {
        Self::with_quoting(sql, Quoting::Standard)
    }

    /// A lexer reading strings as a server in `quoting` mode does.
    pub fn with_quoting(sql: &'a str, quoting: Quoting) -> Self {
        Self {
            src: sql.as_bytes(),
            pos: 0,
            backslash_strings: quoting == Quoting::Backslash,
            unterminated: false,
        }
    }

    fn peek(&self, ahead: usize) -> u8 {
        self.src.get(self.pos + ahead).copied().unwrap_or(0)
    }

    /// Skips a `'...'` body starting at the opening quote; `backslash`
    /// enables E-string escapes. Stops after the closing quote or at the end.
    fn quoted(&mut self, quote: u8, backslash: bool) {
        self.pos += 1;
        while self.pos < self.src.len() {
            let b = self.src[self.pos];
            if backslash && b == b'\\' {
                self.pos += 2;
            } else if b == quote {
                if self.peek(1) == quote {
                    self.pos += 2;
                } else {
                    self.pos += 1;
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
        self.pos = self.src.len();
        self.unterminated = true;
    }

    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while self.pos < self.src.len() {
            if self.peek(0) == b'/' && self.peek(1) == b'*' {
                depth += 1;
                self.pos += 2;
            } else if self.peek(0) == b'*' && self.peek(1) == b'/' {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
        self.pos = self.src.len();
        self.unterminated = true;
    }

    fn line_comment(&mut self) {
        while self.pos < self.src.len() && self.src[self.pos] != b'\n' {
            self.pos += 1;
        }
    }

    fn word(&mut self) {
        self.skip_while(is_ident_continue);
    }

    /// Advances past bytes matching `class` (a tight loop: no bounds checks
    /// beyond the slice iterator's).
    #[inline]
    fn skip_while(&mut self, class: fn(u8) -> bool) {
        let rest = self.src.get(self.pos..).unwrap_or(&[]);
        self.pos += rest.iter().position(|&b| !class(b)).unwrap_or(rest.len());
    }

    fn number(&mut self) {
        let src = self.src;
        let at = |i: usize| src.get(i).copied().unwrap_or(0);
        // Integer part (also 0x.., 0o.., 0b.. and 1_000): digits and letters.
        while at(self.pos).is_ascii_alphanumeric() || at(self.pos) == b'_' {
            let b = at(self.pos);
            if (b == b'e' || b == b'E') && matches!(at(self.pos + 1), b'+' | b'-') {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
        }
        // Fraction: `1.5`, `1.`, but not the `..` of a range.
        if at(self.pos) == b'.' && at(self.pos + 1) != b'.' {
            self.pos += 1;
            while at(self.pos).is_ascii_alphanumeric() || at(self.pos) == b'_' {
                if matches!(at(self.pos), b'e' | b'E') && matches!(at(self.pos + 1), b'+' | b'-') {
                    self.pos += 1;
                }
                self.pos += 1;
            }
        }
        self.pos = self.pos.min(src.len());
    }

    /// At a `$`: a parameter `$1`, a dollar-quoted string, or a lone `$`.
    fn dollar(&mut self) -> TokenKind {
        let start = self.pos;
        if self.peek(1).is_ascii_digit() {
            self.pos += 1;
            while self.peek(0).is_ascii_digit() {
                self.pos += 1;
            }
            return TokenKind::Param;
        }
        // Opening delimiter `$tag$` (tag may be empty, cannot start with a digit).
        let mut end = start + 1;
        while end < self.src.len() && is_ident_continue(self.src[end]) && self.src[end] != b'$' {
            end += 1;
        }
        if self.src.get(end) != Some(&b'$') {
            self.pos += 1;
            return TokenKind::Other;
        }
        let delim = &self.src[start..=end];
        self.pos = end + 1;
        match find(&self.src[self.pos..], delim) {
            Some(i) => self.pos += i + delim.len(),
            None => {
                self.pos = self.src.len();
                self.unterminated = true;
            }
        }
        TokenKind::String
    }

    fn operator(&mut self) {
        let start = self.pos;
        while self.pos < self.src.len() && is_op_char(self.src[self.pos]) {
            let (b, next) = (self.src[self.pos], self.peek(1));
            // A comment start ends the operator (unless it is the first char).
            if self.pos > start && ((b == b'-' && next == b'-') || (b == b'/' && next == b'*')) {
                break;
            }
            self.pos += 1;
        }
        // PostgreSQL: a multi-char operator cannot end in + or - unless it
        // contains one of ~ ! @ # % ^ & | ` ?  (so `=-1` is `=` then `-1`).
        let op = &self.src[start..self.pos];
        if op.len() > 1 && !op.iter().any(|b| b"~!@#%^&|`?".contains(b)) {
            while self.pos > start + 1 && matches!(self.src[self.pos - 1], b'+' | b'-') {
                self.pos -= 1;
            }
        }
    }

    fn next_kind(&mut self) -> TokenKind {
        let b = self.peek(0);
        let next = self.peek(1);
        match b {
            b'-' if next == b'-' => {
                self.line_comment();
                TokenKind::LineComment
            }
            b'/' if next == b'*' => {
                self.block_comment();
                TokenKind::BlockComment
            }
            b'\'' => {
                self.quoted(b'\'', self.backslash_strings);
                TokenKind::String
            }
            b'"' => {
                self.quoted(b'"', false);
                TokenKind::QuotedIdent
            }
            b'$' => self.dollar(),
            b'0'..=b'9' => {
                self.number();
                TokenKind::Number
            }
            b'.' if next.is_ascii_digit() => {
                self.number();
                TokenKind::Number
            }
            b'e' | b'E' if next == b'\'' => {
                self.pos += 1;
                self.quoted(b'\'', true);
                TokenKind::String
            }
            b'n' | b'N' if next == b'\'' => {
                self.pos += 1;
                self.quoted(b'\'', self.backslash_strings);
                TokenKind::String
            }
            b'b' | b'B' | b'x' | b'X' if next == b'\'' => {
                self.pos += 1;
                self.quoted(b'\'', false);
                TokenKind::String
            }
            b'u' | b'U' if next == b'&' && matches!(self.peek(2), b'\'' | b'"') => {
                let quote = self.peek(2);
                self.pos += 2;
                self.quoted(quote, false);
                if quote == b'"' {
                    TokenKind::QuotedIdent
                } else {
                    TokenKind::String
                }
            }
            _ if is_ident_start(b) => {
                self.word();
                TokenKind::Word
            }
            b';' => {
                self.pos += 1;
                TokenKind::Semicolon
            }
            b':' if next == b':' => {
                self.pos += 2;
                TokenKind::Punct
            }
            b'(' | b')' | b'[' | b']' | b',' | b'.' | b':' => {
                self.pos += 1;
                TokenKind::Punct
            }
            _ if is_op_char(b) => {
                self.operator();
                TokenKind::Operator
            }
            _ => {
                self.pos += 1;
                TokenKind::Other
            }
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        self.skip_while(is_space);
        if self.pos >= self.src.len() {
            return None;
        }
        let start = self.pos;
        let kind = self.next_kind();
        // Every branch advances; clamp in case an escape skipped past the end.
        self.pos = self.pos.clamp(start + 1, self.src.len());
        Some(Token {
            kind,
            start,
            end: self.pos,
        })
    }
}

const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT_CONTINUE: u8 = 4;
const OPERATOR: u8 = 8;

/// Byte classes in one table lookup: the lexer's inner loops run on every
/// byte of every statement, so they must not chain comparisons.
static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut class = 0;
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            class |= SPACE;
        }
        // Letters, `_` and any non-ASCII byte (PostgreSQL accepts those in
        // identifiers; keeping whole UTF-8 sequences together also keeps
        // token boundaries on character boundaries).
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            class |= IDENT_START | IDENT_CONTINUE;
        }
        if b.is_ascii_digit() || b == b'$' {
            class |= IDENT_CONTINUE;
        }
        if matches!(
            b,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'#'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
        ) {
            class |= OPERATOR;
        }
        table[i] = class;
        i += 1;
    }
    table
}

#[inline]
fn is_space(b: u8) -> bool {
    CLASSES[b as usize] & SPACE != 0
}

#[inline]
fn is_ident_start(b: u8) -> bool {
    CLASSES[b as usize] & IDENT_START != 0
}

#[inline]
fn is_ident_continue(b: u8) -> bool {
    CLASSES[b as usize] & IDENT_CONTINUE != 0
}

#[inline]
fn is_op_char(b: u8) -> bool {
    CLASSES[b as usize] & OPERATOR != 0
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}
