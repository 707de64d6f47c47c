//! Text that came from outside (a client's names and statements, a
//! server's messages, a config file) made safe for a log line: control and
//! invisible characters escaped, so it cannot forge a line or drive a
//! terminal, and its length capped, so one client cannot write megabytes
//! of log. The text log format prints `%` fields as they are, so every
//! such field goes through [`Escaped`]; names are `&str` fields, which the
//! formats escape themselves, and only need [`name`]'s cap.

use std::borrow::Cow;
use std::fmt;

/// Longest name (user, database, application_name, statement name) shown,
/// in bytes. Postgres itself keeps 63 bytes of a name.
pub const NAME_CAP: usize = 128;

/// Longest error or server message shown, in bytes.
pub const MESSAGE_CAP: usize = 512;

/// `text` escaped and cut at `cap` bytes (on a character boundary) when
/// displayed; `{:?}` also quotes it, like a `&str` field.
#[derive(Clone, Copy)]
pub struct Escaped<'a> {
    text: &'a str,
    cap: usize,
}

/// A name from a client, capped at [`NAME_CAP`], for a `&str` field: the
/// text format quotes and escapes those itself (`user="a\nb"`), the JSON
/// format escapes them as JSON.
pub fn name(text: &str) -> Cow<'_, str> {
    if text.len() <= NAME_CAP {
        return Cow::Borrowed(text);
    }
    let mut end = NAME_CAP;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…({} bytes)", &text[..end], text.len()))
}

/// A message (an error's text), capped at [`MESSAGE_CAP`].
pub fn message(text: &str) -> Escaped<'_> {
    Escaped {
        text,
        cap: MESSAGE_CAP,
    }
}

/// Any text, capped at `cap` bytes.
pub fn text(text: &str, cap: usize) -> Escaped<'_> {
    Escaped { text, cap }
}

impl Escaped<'_> {
    fn write(&self, f: &mut fmt::Formatter<'_>, quoted: bool) -> fmt::Result {
        let mut end = self.text.len().min(self.cap);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        for c in self.text[..end].chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '"' if quoted => f.write_str("\\\"")?,
                c if c.is_control() || is_invisible(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        if end < self.text.len() {
            write!(f, "…({} bytes)", self.text.len())?;
        }
        Ok(())
    }
}

/// Characters that reorder or hide text on a terminal (bidirectional
/// overrides, zero-width characters, the byte-order mark).
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, false)
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        self.write(f, true)?;
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_length_capped() {
        let forged = "app\nINFO config reloaded\r\x1b[31m\u{202e}\\n";
        assert_eq!(
            message(forged).to_string(),
            "app\\nINFO config reloaded\\r\\u{1b}[31m\\u{202e}\\\\n"
        );
        assert_eq!(format!("{:?}", message("a\"b")), "\"a\\\"b\"");
        let long = "é".repeat(100);
        let shown = name(&long).to_string();
        assert!(shown.starts_with(&"é".repeat(64)), "{shown}");
        assert!(shown.ends_with("…(200 bytes)"), "{shown}");
        assert_eq!(text("abc", 10).to_string(), "abc");
    }
}
