//! The untagged opening packets (SSLRequest, GSSENCRequest, CancelRequest,
//! StartupMessage): `parse` must never panic, and must consume no more
//! than it was given, for any bytes a stranger can send before logging in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsidecar::protocol::startup::{self, StartupPacket};

fuzz_target!(|data: &[u8]| {
    // Walk the buffer as the handshake does: packet after packet.
    let mut rest = data;
    while let Ok(Some((packet, used))) = startup::parse(rest) {
        assert!(used >= 8 && used <= rest.len());
        assert!(used <= startup::MAX_STARTUP_LEN);
        if let StartupPacket::Startup(s) = &packet {
            assert_eq!(s.major, 3);
        }
        rest = &rest[used..];
    }
});
