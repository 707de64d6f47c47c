//! Messages a client without a server can be answered for on the spot:
//! Sync and Flush with nothing outstanding, Terminate, and Parse/Close of a
//! named statement this pool has already prepared successfully. Answering
//! these locally saves a checkout, and keeps clients that prepare
//! synchronously while other statements are in flight (pgbench -M prepared
//! with several clients per thread) from waiting on a server that only they
//! could free.

use bytes::BytesMut;

use super::prepared::{self, ClientStatements, StatementRegistry};
use crate::protocol::ProtocolError;
use crate::protocol::backend;
use crate::protocol::frame::fe;
use crate::server::ServerPool;

/// What to do with a frame received while no server is held.
pub enum Idle {
    /// Answered (reply appended to `out`); the frame is consumed.
    Answered,
    /// The client said goodbye.
    Terminate,
    /// Needs a server.
    NeedServer,
}

pub fn answer(
    tag: u8,
    frame: &[u8],
    statements: &mut ClientStatements,
    registry: &StatementRegistry,
    pool: &ServerPool,
    out: &mut BytesMut,
) -> Result<Idle, ProtocolError> {
    match tag {
        fe::TERMINATE => Ok(Idle::Terminate),
        fe::SYNC => {
            backend::ready_for_query(out, b'I');
            Ok(Idle::Answered)
        }
        fe::FLUSH => Ok(Idle::Answered),
        fe::PARSE => {
            let msg = prepared::parse_parse(frame)?;
            if msg.name.is_empty() || !pool.statement_ok(registry.peek(msg.after_name)) {
                return Ok(Idle::NeedServer);
            }
            statements.define(registry, &msg);
            out.extend_from_slice(b"1\0\0\0\x04");
            Ok(Idle::Answered)
        }
        fe::CLOSE => {
            let (kind, name) = prepared::target(frame)?;
            if kind == b'S' && !name.is_empty() && statements.forget(name).is_some() {
                out.extend_from_slice(b"3\0\0\0\x04");
                return Ok(Idle::Answered);
            }
            Ok(Idle::NeedServer)
        }
        _ => Ok(Idle::NeedServer),
    }
}
