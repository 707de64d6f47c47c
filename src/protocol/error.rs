//! Errors the proxy reports on the wire: SQLSTATE codes, the ErrorResponse
//! builder, and the protocol-level failures that lead to them.

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::ErrorResponse;

/// The SQLSTATE codes the proxy itself sends (listed for users in
/// docs/errors.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const OUT_OF_MEMORY: SqlState = SqlState("53200");
    pub const READ_ONLY_TRANSACTION: SqlState = SqlState("25006");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState("57P05");
    pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState("25P03");
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
}

/// Severity of an error the proxy sends. FATAL means the proxy closes the
/// client connection right after sending it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error the proxy answers a client with, in words a user understands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}", code = code.0)]
pub struct WireError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl WireError {
    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        WireError {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        WireError {
            severity: Severity::Fatal,
            ..WireError::error(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the ErrorResponse frame.
    pub fn encode(&self, out: &mut BytesMut) {
        let sev = self.severity.as_str().to_string();
        let mut fields = vec![
            (b'S', sev.clone()),
            (b'V', sev),
            (b'C', self.code.0.to_string()),
            (b'M', field_text(&self.message)),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', field_text(d)));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', field_text(h)));
        }
        // Encoding into a BytesMut cannot fail for an ErrorResponse (its limit
        // is i32::MAX and the proxy's messages are short).
        let _ = ErrorResponse::new(fields).encode(out);
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(64 + self.message.len());
        self.encode(&mut b);
        b
    }

    /// The ErrorResponse for a client whose `client_encoding` is
    /// `encoding`: message, detail and hint in that encoding, as Postgres
    /// sends its own (the proxy's words may quote the client's statement).
    pub fn to_bytes_in(&self, encoding: super::ClientEncoding) -> BytesMut {
        let ascii = self.message.is_ascii()
            && self.detail.as_deref().is_none_or(str::is_ascii)
            && self.hint.as_deref().is_none_or(str::is_ascii);
        if encoding.is_utf8() || ascii {
            return self.to_bytes();
        }
        let sev = self.severity.as_str();
        let mut fields: Vec<(u8, std::borrow::Cow<'_, [u8]>)> = vec![
            (b'S', sev.as_bytes().into()),
            (b'V', sev.as_bytes().into()),
            (b'C', self.code.0.as_bytes().into()),
        ];
        let texts = [
            (b'M', Some(&self.message)),
            (b'D', self.detail.as_ref()),
            (b'H', self.hint.as_ref()),
        ];
        for (tag, text) in texts {
            if let Some(text) = text {
                let bytes = encoding.encode(&field_text(text)).into_owned();
                fields.push((tag, bytes.into()));
            }
        }
        let len = 4 + 1 + fields.iter().map(|(_, v)| 2 + v.len()).sum::<usize>();
        let mut b = BytesMut::with_capacity(1 + len);
        b.extend_from_slice(b"E");
        b.extend_from_slice(&(len as i32).to_be_bytes());
        for (tag, value) in &fields {
            b.extend_from_slice(&[*tag]);
            b.extend_from_slice(value);
            b.extend_from_slice(b"\0");
        }
        b.extend_from_slice(b"\0");
        b
    }
}

/// Text for an ErrorResponse field: a NUL (from something a client sent)
/// would end the field early and leave the rest of the frame unreadable.
fn field_text(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "\\x00")
    } else {
        text.to_string()
    }
}

/// A peer broke the framing rules. Each variant becomes an 08P01 error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message '{}' declares an impossible length {len}", Tag(*tag))]
    BadLength { tag: u8, len: usize },
    /// `limit` names the limit: a config key or what the limit is for.
    #[error("message of {len} bytes exceeds the limit of {max} bytes ({limit})")]
    TooLarge {
        len: usize,
        max: usize,
        limit: &'static str,
    },
    #[error("a string in the message is not terminated")]
    MissingTerminator,
    #[error("a string in the message is not valid UTF-8")]
    NotUtf8,
    #[error("message '{}' is malformed: {what}", Tag(*tag))]
    Malformed { tag: u8, what: &'static str },
    #[error("unexpected message '{}' {when}", Tag(*tag))]
    Unexpected { tag: u8, when: &'static str },
}

impl ProtocolError {
    /// Names `proxy.max_message_size` as the limit.
    pub const MAX_MESSAGE_SIZE: &'static str = "proxy.max_message_size";
    /// The fixed limit before login (Postgres's MAX_STARTUP_PACKET_LENGTH).
    pub const BEFORE_LOGIN: &'static str = "the fixed limit for messages before login";
}

/// A message type byte as a person reads it: the letter, or `\xNN` for a
/// byte that is not a printable character (a NUL written raw would end the
/// ErrorResponse field that names it).
pub struct Tag(pub u8);

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "{}", char::from(self.0))
        } else {
            write!(f, "\\x{:02x}", self.0)
        }
    }
}

impl From<ProtocolError> for WireError {
    fn from(e: ProtocolError) -> Self {
        WireError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("invalid protocol: {e}"),
        )
    }
}

/// Reads the SQLSTATE and message out of an ErrorResponse/NoticeResponse
/// frame from a server (for logs and decisions, not forwarding). A field
/// that is not UTF-8 (the message, in a client's encoding such as LATIN1)
/// reads as `None`; the fields after it are still read.
pub fn parse_error_fields(frame: &[u8]) -> (Option<&str>, Option<&str>, Option<&str>) {
    let mut code = None;
    let mut message = None;
    let mut severity = None;
    let mut rest = super::frame::body(frame);
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Ok((value, tail)) = super::frame::cstr_bytes(tail) else {
            break;
        };
        let value = std::str::from_utf8(value).ok();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            b'V' => severity = value,
            _ => {}
        }
        rest = tail;
    }
    (severity, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips_through_the_field_parser() {
        let e = WireError::fatal(SqlState::TOO_MANY_CONNECTIONS, "too many clients")
            .with_detail("max_client_conn is 1");
        let b = e.to_bytes();
        assert_eq!(b[0], b'E');
        let (sev, code, msg) = parse_error_fields(&b);
        assert_eq!(sev, Some("FATAL"));
        assert_eq!(code, Some("53300"));
        assert_eq!(msg, Some("too many clients"));
        // A LATIN1 message: unreadable, and the code after it still read.
        let frame = b"E\0\0\0\x1fVERROR\0Mcaf\xe9 broke\0C22021\0\0";
        assert_eq!(
            parse_error_fields(frame),
            (Some("ERROR"), Some("22021"), None)
        );
    }

    #[test]
    fn a_client_reads_the_proxys_words_in_its_encoding() {
        use crate::protocol::ClientEncoding;
        let e = WireError::error(SqlState::INVALID_PARAMETER_VALUE, "invalid value: \"répl\"")
            .with_hint("use 'auto'");
        // UTF-8 clients and ASCII text: the same frame as ever.
        assert_eq!(e.to_bytes_in(ClientEncoding::Utf8), e.to_bytes());
        let plain = WireError::error(SqlState::SYNTAX_ERROR, "plain");
        assert_eq!(plain.to_bytes_in(ClientEncoding::Latin1), plain.to_bytes());
        // LATIN1: é is one byte, and the frame is well formed.
        let b = e.to_bytes_in(ClientEncoding::Latin1);
        assert_eq!(
            b.as_ref(),
            &b"E\0\0\0\x3dSERROR\0VERROR\0C22023\0Minvalid value: \"r\xe9pl\"\0Huse 'auto'\0\0"[..]
        );
        assert_eq!(
            u32::from_be_bytes(b[1..5].try_into().unwrap()) as usize,
            b.len() - 1
        );
        let (sev, code, _) = parse_error_fields(&b);
        assert_eq!((sev, code), (Some("ERROR"), Some("22023")));
    }

    #[test]
    fn unprintable_bytes_never_reach_a_field_raw() {
        let e: WireError = ProtocolError::Unexpected {
            tag: 0,
            when: "after login",
        }
        .into();
        assert_eq!(
            e.message,
            "invalid protocol: unexpected message '\\x00' after login"
        );
        let b = WireError::error(SqlState::SYNTAX_ERROR, "a\0b").to_bytes();
        let (_, _, msg) = parse_error_fields(&b);
        assert_eq!(msg, Some("a\\x00b"));
        assert_eq!(Tag(b'Q').to_string(), "Q");
        assert_eq!(Tag(0xff).to_string(), "\\xff");
    }
}
