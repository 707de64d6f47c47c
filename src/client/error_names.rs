//! Server errors that name one of the proxy's shared statements
//! (`prepared statement "pgsidecar_12" requires 1`), rewritten to name the
//! client's own statement: the client never heard of the shared name.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::frame;

/// How the server quotes a statement name in its messages, up to the id.
const QUOTED_PREFIX: &[u8] = b"\"pgsidecar_";

/// Whether an ErrorResponse may name a shared statement (a cheap test
/// before [`rewrite`]).
pub fn mentions_shared(frame: &[u8]) -> bool {
    frame
        .windows(QUOTED_PREFIX.len())
        .any(|w| w == QUOTED_PREFIX)
}

/// The ErrorResponse `frame` with every quoted `"pgsidecar_<id>"` that
/// `client_name` knows replaced by `"<client name>"`; `None` if nothing was
/// replaced.
pub fn rewrite<'a>(frame: &[u8], client_name: impl Fn(u64) -> Option<&'a [u8]>) -> Option<Bytes> {
    let body = frame::body(frame);
    let mut out = BytesMut::with_capacity(frame.len() + 64);
    out.put_u8(frame[0]);
    out.put_u32(0); // length, filled in below
    let mut replaced = false;
    let mut rest = body;
    // Fields: a type byte and a NUL-terminated value; a lone NUL ends them.
    while let Some((&kind, tail)) = rest.split_first() {
        out.put_u8(kind);
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        replaced |= put_renamed(&mut out, &tail[..end], &client_name);
        out.put_u8(0);
        rest = &tail[end + 1..];
    }
    if !replaced {
        return None;
    }
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out.freeze())
}

/// Appends `value` with known shared names replaced; true if any was.
fn put_renamed<'a>(
    out: &mut BytesMut,
    value: &[u8],
    client_name: &impl Fn(u64) -> Option<&'a [u8]>,
) -> bool {
    let mut replaced = false;
    let mut at = 0;
    while let Some(found) = find(&value[at..], QUOTED_PREFIX) {
        let start = at + found;
        let digits_at = start + QUOTED_PREFIX.len();
        let digits = value[digits_at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let close = digits_at + digits;
        let id = std::str::from_utf8(&value[digits_at..close])
            .ok()
            .and_then(|d| d.parse::<u64>().ok());
        let name = match (id, value.get(close)) {
            (Some(id), Some(b'"')) => client_name(id),
            _ => None,
        };
        match name {
            Some(name) => {
                out.put_slice(&value[at..start]);
                out.put_u8(b'"');
                out.put_slice(name);
                out.put_u8(b'"');
                at = close + 1;
                replaced = true;
            }
            None => {
                out.put_slice(&value[at..digits_at]);
                at = digits_at;
            }
        }
    }
    out.put_slice(&value[at..]);
    replaced
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{SqlState, WireError};

    fn error(message: &str) -> BytesMut {
        WireError::error(SqlState::PROTOCOL_VIOLATION, message).to_bytes()
    }

    #[test]
    fn shared_names_become_the_clients() {
        let frame = error(
            "bind message supplies 0 parameters, but prepared statement \"pgsidecar_12\" requires 1",
        );
        assert!(mentions_shared(&frame));
        let names = |id| (id == 12).then_some(&b"my \"stmt\""[..]);
        let out = rewrite(&frame, names).unwrap();
        let (_, code, message) = crate::protocol::error::parse_error_fields(&out);
        assert_eq!(code, Some("08P01"));
        assert_eq!(
            message,
            Some(
                "bind message supplies 0 parameters, but prepared statement \"my \"stmt\"\" requires 1"
            )
        );
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
    }

    #[test]
    fn other_text_is_left_alone() {
        let names = |id| (id == 12).then_some(&b"mine"[..]);
        for text in [
            "prepared statement \"pgsidecar_13\" does not exist",
            "relation \"pgsidecar_12x\" does not exist",
            "value pgsidecar_12 is odd",
            "\"pgsidecar_",
        ] {
            assert!(rewrite(&error(text), names).is_none(), "{text}");
        }
        let two = error("\"pgsidecar_12\" and \"pgsidecar_12\"");
        let out = rewrite(&two, names).unwrap();
        let (_, _, message) = crate::protocol::error::parse_error_fields(&out);
        assert_eq!(message, Some("\"mine\" and \"mine\""));
    }
}
