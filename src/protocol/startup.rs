//! The first packets of a connection, which carry no tag byte: SSLRequest,
//! GSSENCRequest, CancelRequest and StartupMessage. Parsed with hard limits,
//! because they arrive before the client has proven anything.

use super::{ClientEncoding, SqlState, WireError};

/// Postgres refuses startup packets over this size (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A parsed untagged packet.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: Vec<u8> },
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and the client's parameters.
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the packet at the start of `buf`. `Ok(None)` means more bytes are
/// needed; `Ok(Some((packet, len)))` gives the packet and how many bytes it
/// used. The length is checked before anything is buffered, so a packet
/// that claims gigabytes is refused at once.
pub fn parse(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    if looks_like_http(buf) {
        return Err(WireError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "this is a PostgreSQL port (pgsidecar), not an HTTP server",
        )
        .with_hint("metrics and health endpoints are served on [http].listen"));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(WireError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("invalid startup packet length {len} (must be 8 to {MAX_STARTUP_LEN} bytes)"),
        ));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let code = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..len];
    let packet = match code {
        SSL_REQUEST if len == 8 => StartupPacket::SslRequest,
        GSSENC_REQUEST if len == 8 => StartupPacket::GssEncRequest,
        CANCEL_REQUEST if len >= 16 => StartupPacket::Cancel {
            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret: body[4..].to_vec(),
        },
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {
            return Err(WireError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                format!("malformed negotiation packet of {len} bytes"),
            ));
        }
        version => StartupPacket::Startup(parse_startup(version, body)?),
    };
    Ok(Some((packet, len)))
}

fn parse_startup(version: u32, body: &[u8]) -> Result<StartupMessage, WireError> {
    let major = (version >> 16) as u16;
    let minor = (version & 0xffff) as u16;
    if major != 3 {
        return Err(WireError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!(
                "unsupported frontend protocol {major}.{minor}: pgsidecar supports protocol 3.0"
            ),
        ));
    }
    let malformed = |what: &str| {
        WireError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("invalid startup packet: {what}"),
        )
    };
    let mut raw = Vec::new();
    let mut rest = body;
    loop {
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| malformed("missing terminator"))?;
        if end == 0 {
            break;
        }
        let key = &rest[..end];
        rest = &rest[end + 1..];
        let vend = rest.iter().position(|b| *b == 0).ok_or_else(|| {
            let key = String::from_utf8_lossy(key);
            malformed(&format!(
                "parameter \"{}\" has no value",
                key.escape_debug()
            ))
        })?;
        raw.push((key, &rest[..vend]));
        rest = &rest[vend + 1..];
    }
    // Values are the client's bytes, not necessarily UTF-8: read them in
    // the encoding the same packet names, if any.
    let encoding = raw
        .iter()
        .find(|(k, _)| *k == b"client_encoding")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(ClientEncoding::from_name)
        .unwrap_or_default();
    let params = raw
        .into_iter()
        .map(|(key, value)| {
            let key = encoding.decode(key).text.into_owned();
            let value = if key == "application_name" && std::str::from_utf8(value).is_err() {
                // What Postgres 15 makes of it (pg_clean_ascii).
                value
                    .iter()
                    .map(|&b| {
                        if (32..127).contains(&b) {
                            char::from(b)
                        } else {
                            '?'
                        }
                    })
                    .collect()
            } else {
                encoding.decode(value).text.into_owned()
            };
            (key, value)
        })
        .collect();
    Ok(StartupMessage {
        major,
        minor,
        params,
    })
}

fn looks_like_http(buf: &[u8]) -> bool {
    const METHODS: [&[u8]; 6] = [b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE"];
    METHODS.iter().any(|m| buf.starts_with(m))
}

/// Encodes a StartupMessage for protocol 3.0 (used when logging into servers).
pub fn encode_startup(out: &mut bytes::BytesMut, params: &[(&str, &str)]) {
    use bytes::BufMut;
    let len: usize = 8
        + params
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
        + 1;
    out.put_u32(len as u32);
    out.put_u32(196_608);
    for (k, v) in params {
        out.put_slice(k.as_bytes());
        out.put_u8(0);
        out.put_slice(v.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
}

/// Encodes a CancelRequest for a server's backend key.
pub fn encode_cancel(pid: i32, secret: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + secret.len());
    v.extend_from_slice(&((12 + secret.len()) as u32).to_be_bytes());
    v.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    v.extend_from_slice(&pid.to_be_bytes());
    v.extend_from_slice(secret);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn ssl_and_gss_requests() {
        let p = packet(SSL_REQUEST, b"");
        assert_eq!(parse(&p).unwrap(), Some((StartupPacket::SslRequest, 8)));
        let p = packet(GSSENC_REQUEST, b"");
        assert_eq!(parse(&p).unwrap(), Some((StartupPacket::GssEncRequest, 8)));
        assert_eq!(parse(&p[..6]).unwrap(), None);
    }

    #[test]
    fn startup_with_params() {
        let mut b = bytes::BytesMut::new();
        encode_startup(&mut b, &[("user", "app"), ("database", "db")]);
        let (p, n) = parse(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        let StartupPacket::Startup(s) = p else {
            panic!()
        };
        assert_eq!((s.major, s.minor), (3, 0));
        assert_eq!(s.param("user"), Some("app"));
        assert_eq!(s.param("database"), Some("db"));
    }

    #[test]
    fn values_are_read_in_the_encoding_the_packet_names() {
        let body = b"user\0app\0client_encoding\0LATIN1\0options\0-c my.v=caf\xe9\0\
                     application_name\0caf\xe9\0\0";
        let StartupPacket::Startup(s) = parse(&packet(196_608, body)).unwrap().unwrap().0 else {
            panic!()
        };
        assert_eq!(s.param("options"), Some("-c my.v=café"));
        // As Postgres 15 stores a non-UTF-8 application_name.
        assert_eq!(s.param("application_name"), Some("caf?"));
        // No encoding named: UTF-8, invalid bytes replaced, not refused.
        let StartupPacket::Startup(s) = parse(&packet(196_608, b"user\0caf\xe9\0\0"))
            .unwrap()
            .unwrap()
            .0
        else {
            panic!()
        };
        assert_eq!(s.param("user"), Some("caf\u{FFFD}"));
    }

    #[test]
    fn cancel_round_trip() {
        let c = encode_cancel(42, &7i32.to_be_bytes());
        let (p, _) = parse(&c).unwrap().unwrap();
        assert_eq!(
            p,
            StartupPacket::Cancel {
                pid: 42,
                secret: 7i32.to_be_bytes().to_vec()
            }
        );
    }

    #[test]
    fn bad_packets_are_refused() {
        // protocol 2.0
        let e = parse(&packet(0x0002_0000, b"user\0x\0\0")).unwrap_err();
        assert_eq!(e.code, SqlState::FEATURE_NOT_SUPPORTED);
        // 2 GiB claim
        let e = parse(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).unwrap_err();
        assert_eq!(e.code, SqlState::PROTOCOL_VIOLATION);
        // HTTP
        let e = parse(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert!(e.message.contains("HTTP"));
        // unterminated parameter list
        let e = parse(&packet(196_608, b"user\0app")).unwrap_err();
        assert_eq!(e.code, SqlState::PROTOCOL_VIOLATION);
        // every prefix of garbage parses or fails without panicking
        let junk: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        for n in 0..junk.len() {
            let _ = parse(&junk[..n]);
        }
    }
}
