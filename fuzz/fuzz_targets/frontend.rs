//! The frontend messages the proxy decodes after login: framing
//! (`frame::header`/`complete`), Query text (read in several client
//! encodings), and the Parse, Bind,
//! Describe/Close decoders behind prepared-statement renaming. None may
//! panic; a renamed Bind must still be a well-formed frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgsidecar::client::prepared;
use pgsidecar::protocol::ClientEncoding::{EucTw, Johab, Latin1, Latin5, Sjis, Utf8};
use pgsidecar::protocol::frame::{self, fe};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((tag, total))) = frame::header(rest) {
        assert!(total >= 5);
        if rest.len() < total {
            let _ = frame::complete(rest);
            break;
        }
        let msg = &rest[..total];
        assert!(matches!(frame::complete(rest), Ok(Some((t, f))) if t == tag && f.len() == total));
        let _ = frame::body(msg);
        match tag {
            fe::QUERY => {
                if let Ok(text) = frame::query_bytes(msg) {
                    // Any bytes, in any client encoding: a view, no panic.
                    for encoding in [Utf8, Latin1, Latin5, Sjis, EucTw, Johab] {
                        let _ = encoding.decode(text);
                    }
                }
            }
            fe::PARSE => {
                if let Ok(p) = prepared::parse_parse(msg) {
                    assert!(p.query.len() < total);
                }
            }
            fe::BIND => {
                if let Ok((name, at, len)) = prepared::bind_statement(msg) {
                    assert!(at + len <= total);
                    let mut out = BytesMut::new();
                    prepared::put_renamed(&mut out, msg, at, len, "pgsidecar_s1");
                    let renamed = frame::complete(&out);
                    assert!(
                        matches!(renamed, Ok(Some((fe::BIND, f))) if f.len() == out.len()),
                        "renaming {name:?} broke the frame"
                    );
                }
            }
            fe::DESCRIBE | fe::CLOSE => {
                let _ = prepared::target(msg);
            }
            _ => {}
        }
        rest = &rest[total..];
    }
});
