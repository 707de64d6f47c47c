//! Framing of regular protocol messages (`tag`, `int32 length`, body) and
//! the message tags the proxy inspects. Bytes are never copied here: helpers
//! look at a buffer and say where frames end.

use super::ProtocolError;

/// Frontend (client → server) message tags the proxy looks at.
pub mod fe {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const PASSWORD: u8 = b'p';
}

/// Backend (server → client) message tags the proxy looks at.
pub mod be {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// Header of a regular message: tag byte plus a length that counts itself.
pub const HEADER_LEN: usize = 5;

/// The header of the frame at the start of `buf`, if five bytes are there:
/// `(tag, total frame length including the tag byte)`.
///
/// A length below 4 cannot be produced by a real peer, so it is refused here
/// rather than letting a caller loop on a zero-sized frame.
#[inline]
pub fn header(buf: &[u8]) -> Result<Option<(u8, usize)>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 || len > i32::MAX as usize {
        return Err(ProtocolError::BadLength { tag: buf[0], len });
    }
    Ok(Some((buf[0], len + 1)))
}

/// The frame at the start of `buf` if it is complete.
#[inline]
pub fn complete(buf: &[u8]) -> Result<Option<(u8, &[u8])>, ProtocolError> {
    match header(buf)? {
        Some((tag, total)) if buf.len() >= total => Ok(Some((tag, &buf[..total]))),
        _ => Ok(None),
    }
}

/// Body of a complete frame (after tag and length).
#[inline]
pub fn body(frame: &[u8]) -> &[u8] {
    frame.get(HEADER_LEN..).unwrap_or(&[])
}

/// Reads a NUL-terminated string from the front of `buf`, returning its
/// bytes and the rest. Text a client sends (query text, statement and
/// portal names) is in the client's encoding, not necessarily UTF-8: it is
/// kept as bytes, and read through [`ClientEncoding::decode`] where the
/// proxy needs to understand it.
///
/// The terminator is found with `memchr` (SIMD, many bytes at a time): a
/// byte-by-byte loop cost about 6 instructions per byte of statement text,
/// and a statement's text is scanned this way up to three times per
/// request (idle path, routing, relay). An empty string (the unnamed
/// statement and portal, in most extended-protocol messages) is answered
/// before the call.
///
/// [`ClientEncoding::decode`]: super::ClientEncoding::decode
#[inline]
pub fn cstr_bytes(buf: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    if let Some((0, rest)) = buf.split_first() {
        return Ok((&[], rest));
    }
    let end = memchr::memchr(0, buf).ok_or(ProtocolError::MissingTerminator)?;
    Ok((&buf[..end], &buf[end + 1..]))
}

/// Like [`cstr_bytes`], for strings the protocol defines as ASCII or
/// UTF-8 (a SASL mechanism name, fields the proxy's own server connections
/// send): invalid UTF-8 is refused.
pub fn cstr(buf: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let (bytes, rest) = cstr_bytes(buf)?;
    let s = std::str::from_utf8(bytes).map_err(|_| ProtocolError::NotUtf8)?;
    Ok((s, rest))
}

/// The SQL text of a complete Query ('Q') frame, in the client's encoding.
#[inline]
pub fn query_bytes(frame: &[u8]) -> Result<&[u8], ProtocolError> {
    cstr_bytes(body(frame)).map(|(s, _)| s)
}

/// The transaction status byte of a complete ReadyForQuery ('Z') frame.
#[inline]
pub fn ready_status(frame: &[u8]) -> u8 {
    frame.get(HEADER_LEN).copied().unwrap_or(b'I')
}

/// Appends a frame with the given tag and body.
pub fn put_frame(out: &mut bytes::BytesMut, tag: u8, body: &[u8]) {
    use bytes::BufMut;
    out.reserve(HEADER_LEN + body.len());
    out.put_u8(tag);
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(body);
}

/// Appends a simple Query frame.
pub fn put_query(out: &mut bytes::BytesMut, sql: &str) {
    use bytes::BufMut;
    out.reserve(HEADER_LEN + sql.len() + 1);
    out.put_u8(fe::QUERY);
    out.put_u32((sql.len() + 5) as u32);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes_and_a_sane_length() {
        assert_eq!(header(b"Q\0\0").unwrap(), None);
        assert_eq!(header(b"Q\0\0\0\x09").unwrap(), Some((b'Q', 10)));
        assert!(header(b"Q\0\0\0\x03").is_err());
        assert!(header(b"Q\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn query_round_trip() {
        let mut b = bytes::BytesMut::new();
        put_query(&mut b, "select 1");
        let (tag, frame) = complete(&b).unwrap().unwrap();
        assert_eq!(tag, b'Q');
        assert_eq!(query_bytes(frame).unwrap(), b"select 1");
        assert!(complete(&b[..b.len() - 1]).unwrap().is_none());
    }

    #[test]
    fn cstr_bytes_finds_the_first_nul_at_any_length() {
        // Empty (the unnamed statement), short, and longer than a vector.
        assert_eq!(cstr_bytes(b"\0\0x").unwrap(), (&b""[..], &b"\0x"[..]));
        for len in [1, 15, 16, 31, 32, 33, 64, 100] {
            let mut buf = vec![b'a'; len];
            buf.extend_from_slice(b"\0b\0");
            let (s, rest) = cstr_bytes(&buf).unwrap();
            assert_eq!((s.len(), rest), (len, &b"b\0"[..]), "{len}");
            assert!(cstr_bytes(&buf[..len]).is_err(), "{len}");
        }
        assert!(cstr_bytes(b"").is_err());
    }

    #[test]
    fn cstr_rejects_unterminated_and_non_utf8() {
        assert!(cstr(b"abc").is_err());
        assert!(cstr(b"\xff\0").is_err());
        assert_eq!(cstr(b"ab\0cd").unwrap(), ("ab", &b"cd"[..]));
        // Bytes in a client's encoding are kept as they are.
        assert_eq!(
            cstr_bytes(b"caf\xe9\0x").unwrap(),
            (&b"caf\xe9"[..], &b"x"[..])
        );
    }
}
