//! Answers the proxy gives a client itself, whether it holds a server or
//! not: its own settings (`SET pgsidecar.route`, `.min_lsn`), `DEALLOCATE`
//! and Close of the client's own statements (the server's copy is shared
//! with other clients and stays), and a named Parse of a statement the
//! proxy already knows. The idle path (`idle.rs`) and the held path
//! (`flow/frontend.rs`) decide *when* they may answer (the held one only
//! at a known transaction status, or queued behind what the server still
//! owes); *what* the answer is and what it changes is decided here, once.

use std::sync::Arc;

use bytes::BytesMut;

use super::expect::CommandTag;
use super::prepared::{self, ClientStatements, ParseMsg, Statement, StatementRegistry};
use super::state::ClientState;
use super::tx_status::TxStatus;
use crate::protocol::{ClientEncoding, ProtocolError, WireError};
use crate::routing::policy::{ClientRouting, ProxyChange};
use crate::routing::{Classified, Classifier, Unpin};

/// A simple Query the proxy answered.
#[derive(Debug)]
pub enum Local {
    /// CommandComplete with this tag, then ReadyForQuery.
    Command(CommandTag),
    /// ErrorResponse, then ReadyForQuery: refused, and the session carries
    /// on (a transaction block stays usable: no server saw it).
    Refused(WireError),
}

impl Local {
    /// Appends the answer, ending with ReadyForQuery(`status`); an error's
    /// text in the client's `encoding` (it may quote what the client sent).
    pub fn put(self, out: &mut BytesMut, status: TxStatus, encoding: ClientEncoding) {
        match self {
            Local::Command(tag) => tag.put(out, status),
            Local::Refused(error) => {
                out.extend_from_slice(&error.to_bytes_in(encoding));
                status.put_ready(out);
            }
        }
    }
}

/// The proxy's own setting changed by a lone `SET` (see
/// `route_setting::lone_change`), in the transaction `status` says.
pub fn proxy_setting(
    change: Result<ProxyChange, WireError>,
    routing: &mut ClientRouting,
    status: TxStatus,
) -> Local {
    match change {
        Ok(setting) => {
            routing.apply(setting, status.in_transaction());
            Local::Command(CommandTag::Set)
        }
        Err(refusal) => Local::Refused(refusal),
    }
}

/// A lone `DEALLOCATE name` of a protocol-level statement of this client:
/// forgotten here, answered locally.
///
/// The name was read from the client's text: it is looked up in the
/// client's encoding, which the client's Parse named it in.
pub fn deallocate(
    c: &Classified,
    statements: &mut ClientStatements,
    encoding: ClientEncoding,
) -> Option<Local> {
    if c.info.statement_count == 1
        && let Some(Unpin::Deallocate(name)) = &c.info.unpin
        && statements.forget(&encoding.encode(name)).is_some()
    {
        return Some(Local::Command(CommandTag::Deallocate));
    }
    None
}

/// A Close of one of the client's named statements: forgotten here, and
/// true if the proxy answers it (CloseComplete) without a server.
pub fn close(frame: &[u8], client: &mut ClientState) -> Result<bool, ProtocolError> {
    let (kind, name) = prepared::target(frame)?;
    Ok(kind == b'S' && !name.is_empty() && client.statements.forget(name).is_some())
}

/// Defines a named statement of the client's Parse under its proxy-wide
/// statement (shared by every client that prepares the same text).
pub fn define(
    msg: &ParseMsg<'_>,
    client: &mut ClientState,
    registry: &StatementRegistry,
    classifier: &Classifier,
) -> Arc<Statement> {
    client.statements.define(
        registry,
        classifier,
        client.params.encoding(),
        client.memo.reading(),
        msg,
    )
}
