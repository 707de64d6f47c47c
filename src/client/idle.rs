//! Requests a client without a server is answered for on the spot: Sync and
//! Flush with nothing outstanding, Terminate, `SET pgsidecar.route` (and
//! `.min_lsn`), `SHOW` of the proxy's own parameters, a lone BEGIN and the
//! SET TRANSACTIONs after it (deferred until the transaction's first
//! statement says where it runs) and the COMMIT/ROLLBACK of such an empty
//! transaction, DEALLOCATE
//! and Close of the client's own statements, and Parse of a statement this
//! pool already prepared successfully. Answering these locally saves a
//! checkout, and keeps clients that prepare synchronously while other
//! statements are in flight (pgbench -M prepared with several clients per
//! thread) from waiting on a server that only they could free.

use bytes::{Bytes, BytesMut};

use super::expect::{CommandTag, Synthetic};
use super::local;
use super::prepared;
use super::route_setting;
use super::state::{ClassMemo, ClientState};
use super::tx_modes;
use super::tx_status::TxStatus;
use crate::config::PoolMode;
use crate::protocol::frame::fe;
use crate::protocol::{ClientEncoding, ProtocolError, WireError};
use crate::proxy::Shared;
use crate::routing::policy::ClientRouting;
use crate::routing::{Classified, Classifier, Reason, TxEffect};
use crate::server::ServerPool;

/// What to do with a frame received while no server is held.
pub enum Idle {
    /// Answered (reply appended to `out`); the frame is consumed.
    Answered,
    /// The client said goodbye.
    Terminate,
    /// Needs a server. (A Query's classification, made here, is carried
    /// on in `ClientState::carried` to routing and the relay.)
    NeedServer,
    /// Answered once this resolves (the frame is consumed; what `out`
    /// holds goes first).
    Later(super::relay::Later),
}

pub fn answer(
    tag: u8,
    frame: &[u8],
    client: &mut ClientState,
    shared: &Shared,
    pool: &ServerPool,
    mode: PoolMode,
    out: &mut BytesMut,
) -> Result<Idle, WireError> {
    let status = TxStatus::of_deferred_begin(client.deferred_begin.is_some());
    if client.skip_to_sync {
        if tag == fe::SYNC {
            client.skip_to_sync = false;
            status.put_ready(out);
        }
        return Ok(Idle::Answered);
    }
    match tag {
        fe::TERMINATE => Ok(Idle::Terminate),
        fe::SYNC => {
            status.put_ready(out);
            Ok(Idle::Answered)
        }
        fe::FLUSH => Ok(Idle::Answered),
        fe::PARSE => {
            let msg = prepared::parse_parse(frame)?;
            // The unnamed statement always goes to a server: checked before
            // the shared registry's lock and its lookup of the query.
            if msg.name.is_empty() {
                return Ok(Idle::NeedServer);
            }
            let reading = client.memo.reading();
            let known = shared
                .statements
                .get(client.params.encoding(), reading, &msg);
            if !pool.statement_ok(known.map(|s| s.id)) {
                return Ok(Idle::NeedServer);
            }
            local::define(&msg, client, &shared.statements, &shared.classifier);
            out.extend_from_slice(&Synthetic::ParseComplete.bytes(status));
            Ok(Idle::Answered)
        }
        fe::CLOSE => {
            if local::close(frame, client)? {
                out.extend_from_slice(&Synthetic::CloseComplete.bytes(status));
                return Ok(Idle::Answered);
            }
            Ok(Idle::NeedServer)
        }
        fe::QUERY => query(frame, client, shared, mode, status, out),
        _ => Ok(Idle::NeedServer),
    }
}

fn query(
    frame: &[u8],
    client: &mut ClientState,
    shared: &Shared,
    mode: PoolMode,
    status: TxStatus,
    out: &mut BytesMut,
) -> Result<Idle, WireError> {
    let encoding = client.params.encoding();
    let c = classify(frame, &mut client.memo, encoding, &shared.classifier)?;
    if c.info.statement_count != 1 {
        client.carried.push(frame.len(), c.clone());
        return Ok(Idle::NeedServer);
    }
    // Only a statement about the proxy's own settings is a SHOW or SET the
    // proxy answers, and only one that releases something a DEALLOCATE:
    // one comparison each spares every other query the calls (the callees
    // check it too; marking them #[inline] instead measured ~70
    // instructions per -S transaction worse).
    if c.info.reason == Reason::ProxySetting {
        if let Some(param) = super::proxy_show::lone_show(c) {
            return Ok(
                match super::proxy_show::answer(param, client, shared, status) {
                    super::proxy_show::Answer::Now(reply) => {
                        out.extend_from_slice(&reply);
                        Idle::Answered
                    }
                    super::proxy_show::Answer::Later(later) => Idle::Later(later),
                },
            );
        }
        if let Some(change) = route_setting::lone_change(c) {
            let encoding = client.params.encoding();
            local::proxy_setting(change, &mut client.routing, status).put(out, status, encoding);
            return Ok(Idle::Answered);
        }
    }
    if deferred_transaction(
        c,
        frame,
        &mut client.deferred_begin,
        &mut client.routing,
        mode,
        out,
    ) {
        return Ok(Idle::Answered);
    }
    let encoding = client.params.encoding();
    if c.info.unpin.is_some()
        && let Some(answer) = local::deallocate(c, &mut client.statements, encoding)
    {
        answer.put(out, status, encoding);
        return Ok(Idle::Answered);
    }
    client.carried.push(frame.len(), c.clone());
    Ok(Idle::NeedServer)
}

/// The classification of a Query that arrives while no server is held:
/// the one its unit carries to routing and the relay.
pub fn classify<'c>(
    frame: &[u8],
    memo: &'c mut ClassMemo,
    encoding: ClientEncoding,
    classifier: &Classifier,
) -> Result<&'c Classified, ProtocolError> {
    memo.classify_query(classifier, encoding, frame)
}

/// A BEGIN deferred until the transaction's first statement says where
/// it runs, the SET TRANSACTIONs after it, and the COMMIT or ROLLBACK of
/// such a transaction with nothing in it: answered here (true).
fn deferred_transaction(
    c: &Classified,
    frame: &[u8],
    deferred_begin: &mut Option<Bytes>,
    routing: &mut ClientRouting,
    mode: PoolMode,
    out: &mut BytesMut,
) -> bool {
    match &c.info.tx {
        // READ WRITE runs on the primary whatever follows: routed now, so
        // that a replica asked for refuses it at once.
        TxEffect::Begin { read_only, .. }
            if *read_only != Some(false)
                && mode == PoolMode::Transaction
                && deferred_begin.is_none() =>
        {
            *deferred_begin = Some(Bytes::copy_from_slice(frame));
            CommandTag::Begin.put(out, TxStatus::InTransaction);
            true
        }
        // Its modes join the BEGIN's: the transaction's first real
        // statement decides where it runs, knowing them all.
        tx if tx_modes::deferrable_set_transaction(*tx) && deferred_begin.is_some() => {
            let deferred = deferred_begin.as_ref().expect("checked");
            *deferred_begin = Some(tx_modes::append(deferred, frame));
            CommandTag::Set.put(out, TxStatus::InTransaction);
            true
        }
        TxEffect::Commit | TxEffect::Rollback if deferred_begin.is_some() => {
            // Nothing ran in it: nothing to commit or roll back anywhere
            // but the proxy's own setting.
            *deferred_begin = None;
            routing.end_transaction(c.info.tx == TxEffect::Commit);
            let tag = if c.info.tx == TxEffect::Commit {
                CommandTag::Commit
            } else {
                CommandTag::Rollback
            };
            tag.put(out, TxStatus::Idle);
            true
        }
        _ => false,
    }
}

/// Refuses message types a client may not send after login, as Postgres
/// does, without bothering a server with them. Checked as soon as the type
/// byte arrives: a startup-phase packet sent again (SSLRequest,
/// StartupMessage) has no type byte, so its length's first byte (0) would
/// otherwise be read as one and the rest of its length as a message length
/// to wait for.
#[inline]
pub fn check_frontend_tag(tag: u8) -> Result<(), WireError> {
    if FRONTEND_TAGS[tag as usize] {
        return Ok(());
    }
    refuse_frontend_tag(tag)
}

/// The message types a client may send after login, by type byte (a table:
/// this runs for every message).
const FRONTEND_TAGS: [bool; 256] = {
    let mut table = [false; 256];
    let tags = [
        fe::QUERY,
        fe::PARSE,
        fe::BIND,
        fe::DESCRIBE,
        fe::EXECUTE,
        fe::CLOSE,
        fe::SYNC,
        fe::FLUSH,
        fe::FUNCTION_CALL,
        fe::TERMINATE,
        fe::COPY_DATA,
        fe::COPY_DONE,
        fe::COPY_FAIL,
    ];
    let mut i = 0;
    while i < tags.len() {
        table[tags[i] as usize] = true;
        i += 1;
    }
    table
};

#[cold]
fn refuse_frontend_tag(tag: u8) -> Result<(), WireError> {
    match tag {
        0 => Err(WireError::from(ProtocolError::Unexpected {
            tag: 0,
            when: "after login",
        })
        .with_hint(
            "a startup packet (StartupMessage, SSLRequest, GSSENCRequest) is only valid before login",
        )),
        other => Err(ProtocolError::Unexpected {
            tag: other,
            when: "after login",
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame;

    fn run(
        text: &str,
        deferred: &mut Option<Bytes>,
        routing: &mut ClientRouting,
        mode: PoolMode,
    ) -> Option<BytesMut> {
        let classifier = Classifier::new(&[], 10_000, 0);
        let mut memo = ClassMemo::default();
        let c = memo.classify(&classifier, ClientEncoding::Utf8, text.as_bytes());
        let mut frame = BytesMut::new();
        frame::put_query(&mut frame, text);
        let mut out = BytesMut::new();
        deferred_transaction(&c, &frame, deferred, routing, mode, &mut out).then_some(out)
    }

    fn answer(tag: CommandTag, status: TxStatus) -> BytesMut {
        let mut out = BytesMut::new();
        tag.put(&mut out, status);
        out
    }

    #[test]
    fn a_begin_is_deferred_with_its_set_transaction_until_a_statement_needs_a_server() {
        let mut deferred = None;
        let mut routing = ClientRouting::default();
        let mode = PoolMode::Transaction;
        let out = run("begin", &mut deferred, &mut routing, mode);
        assert_eq!(
            out,
            Some(answer(CommandTag::Begin, TxStatus::InTransaction))
        );
        assert!(deferred.is_some());
        // A second BEGIN goes to the server (which warns about it).
        assert_eq!(run("begin", &mut deferred, &mut routing, mode), None);
        let out = run(
            "set transaction isolation level repeatable read",
            &mut deferred,
            &mut routing,
            mode,
        );
        assert_eq!(out, Some(answer(CommandTag::Set, TxStatus::InTransaction)));
        let begun = deferred.clone().expect("still deferred");
        assert_eq!(crate::client::tx_modes::frames(&begun).count(), 2);
        // A statement is not the proxy's to answer.
        assert_eq!(run("select 1", &mut deferred, &mut routing, mode), None);
        let out = run("commit", &mut deferred, &mut routing, mode);
        assert_eq!(out, Some(answer(CommandTag::Commit, TxStatus::Idle)));
        assert_eq!(deferred, None);
    }

    #[test]
    fn a_begin_that_must_write_or_in_session_mode_is_not_deferred() {
        let mut deferred = None;
        let mut routing = ClientRouting::default();
        let out = run(
            "begin read write",
            &mut deferred,
            &mut routing,
            PoolMode::Transaction,
        );
        assert_eq!(out, None);
        assert_eq!(
            run("begin", &mut deferred, &mut routing, PoolMode::Session),
            None
        );
        assert_eq!(
            run(
                "rollback",
                &mut deferred,
                &mut routing,
                PoolMode::Transaction
            ),
            None,
            "nothing deferred to roll back"
        );
        assert_eq!(deferred, None);
    }

    #[test]
    fn only_the_message_types_of_a_logged_in_client_pass() {
        for tag in [fe::QUERY, fe::PARSE, fe::SYNC, fe::TERMINATE, fe::COPY_DATA] {
            assert!(check_frontend_tag(tag).is_ok());
        }
        for tag in [0, b'p', b'Z'] {
            assert!(check_frontend_tag(tag).is_err());
        }
    }
}
