//! Tokenising SCRAM messages (`name=value,name=value,…`) without trusting their shape.
//!
//! Every attribute value the protocol defines (base64, nonces, escaped saslnames,
//! digits) excludes `,`, so splitting on `,` is exact. All helpers return
//! [`ScramError::Malformed`] instead of panicking on short or odd input.

use super::error::{ScramError, ScramMessage};

/// The message as text; SCRAM messages are UTF-8 by definition.
pub fn text(msg: &[u8], message: ScramMessage) -> Result<&str, ScramError> {
    std::str::from_utf8(msg).map_err(|_| ScramError::malformed(message, "not valid UTF-8"))
}

/// Splits a message into its comma-separated fields, in order.
pub struct Fields<'a> {
    inner: std::str::Split<'a, char>,
    message: ScramMessage,
}

impl<'a> Fields<'a> {
    pub fn new(text: &'a str, message: ScramMessage) -> Self {
        Self {
            inner: text.split(','),
            message,
        }
    }

    /// The next field, which must be attribute `name`; returns its value.
    pub fn expect(&mut self, name: char) -> Result<&'a str, ScramError> {
        let field = self.inner.next().ok_or_else(|| {
            ScramError::malformed(self.message, format!("missing attribute {name}="))
        })?;
        attr_value(field, name).ok_or_else(|| {
            ScramError::malformed(
                self.message,
                format!("expected attribute {name}=, found {:?}", truncate(field)),
            )
        })
    }

    /// The remaining fields, which must be extension attributes (`x=…`); we
    /// accept and ignore them as RFC 5802 allows and Postgres does.
    pub fn extensions(self) -> Result<(), ScramError> {
        let message = self.message;
        for field in self.inner {
            let mut chars = field.chars();
            let is_attr = matches!(
                (chars.next(), chars.next()),
                (Some(c), Some('=')) if c.is_ascii_alphabetic()
            );
            if !is_attr {
                return Err(ScramError::malformed(
                    message,
                    format!("invalid extension attribute {:?}", truncate(field)),
                ));
            }
        }
        Ok(())
    }
}

/// `Some(value)` if `field` is `name=value`.
pub fn attr_value(field: &str, name: char) -> Option<&str> {
    field.strip_prefix(name)?.strip_prefix('=')
}

/// RFC 5802 `printable`: 0x21–0x7E except `,`; a nonce must be non-empty.
pub fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A bounded prefix of peer-supplied text, so errors never carry whole messages.
pub fn truncate(field: &str) -> &str {
    const MAX: usize = 32;
    match field.char_indices().nth(MAX) {
        Some((end, _)) => field.get(..end).unwrap_or(field),
        None => field,
    }
}

/// Strict decimal for counts: digits only (no sign, no blanks), fits in u32.
pub fn parse_u32(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
