//! The stale-plan retry: an extended-query batch that started outside a
//! transaction is recorded from its first Bind or Describe of a proxy
//! statement to its Sync; if the server answers "cached plan must not
//! change result type", the statement is prepared again and the batch
//! replayed, and the client sees only the replay's answers.

use bytes::{Bytes, BytesMut};

use super::{FlowEnv, SessionFlow};
use crate::client::expect::{Audience, Request, Token};
use crate::client::prepared;
use crate::client::relay::{Outbox, ServerStep};
use crate::client::tx_status::TxStatus;
use crate::protocol::ProtocolError;
use crate::protocol::frame::{self, be, fe};
use std::sync::Arc;

use crate::client::prepared::Statement;

/// Where the recording of a batch stands.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recording {
    #[default]
    Off,
    /// From the batch's first Bind/Describe of a proxy statement on.
    On,
    /// Up to and including the batch's Sync.
    Synced,
}

/// An extended-query batch that started outside a transaction, kept from
/// its first Bind or Describe of a proxy statement to its Sync: if the
/// server answers that message with "cached plan must not change result
/// type", the proxy prepares the statement again and replays these frames.
#[derive(Default)]
pub(in crate::client) struct Retry {
    pub(super) state: Recording,
    /// The client's frames, as it sent them.
    pub(in crate::client) frames: BytesMut,
    pub(super) statement: Option<Arc<Statement>>,
    /// A Describe comes before any Execute: the client learns the new row
    /// shape from the replay, rather than decoding rows by the old one.
    pub(super) described: bool,
    pub(super) executed: bool,
    /// The ParameterDescription answering the recorded Describe, held back.
    pub(super) parameters: Option<Bytes>,
    /// ... or already sent to the client: no retry then.
    pub(super) parameters_sent: bool,
}

/// A recorded batch larger than this is not kept for the next hold.
const KEPT_FRAMES: usize = 4096;

impl Retry {
    /// Drops the recorded batch, keeping a small buffer's capacity.
    pub(in crate::client) fn empty(&mut self) {
        self.statement = None;
        self.parameters = None;
        if self.frames.capacity() > KEPT_FRAMES {
            self.frames = BytesMut::new();
        }
        self.frames.clear();
    }

    /// Ready for a new hold, in place: what `Retry::default()` is, keeping
    /// the frames' buffer. Why not `*self = Retry::default()`: that drops
    /// every field of the old one (an `Arc`, a `Bytes` and the buffer,
    /// each checked) and writes a new one, ~50 instructions per
    /// transaction; after [`empty`](Self::empty) the options are `None`
    /// already, and a flag costs a store.
    #[inline]
    pub(in crate::client) fn restart(&mut self) {
        let Retry {
            state,
            frames,
            statement,
            described,
            executed,
            parameters,
            parameters_sent,
        } = self;
        *state = Recording::Off;
        frames.clear();
        if statement.is_some() {
            *statement = None;
        }
        *described = false;
        *executed = false;
        if parameters.is_some() {
            *parameters = None;
        }
        *parameters_sent = false;
    }
}

/// ParameterDescription, the first answer to a Describe of a statement.
const PARAMETER_DESCRIPTION: u8 = b't';

/// Most bytes of a batch kept for a retry.
const RETRY_MAX: usize = 64 * 1024;

impl<E: FlowEnv> SessionFlow<'_, E> {
    /// A server frame the retry may take: the ParameterDescription of a
    /// recorded Describe (held back until the plan is known good, so a
    /// retry does not send it twice), or the stale-plan error it retries
    /// from. `Some(step)` when the frame is the retry's.
    #[inline]
    pub(super) fn retry_sees(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
    ) -> Option<ServerStep> {
        if tag == PARAMETER_DESCRIPTION && self.expect.head_token() == Some(Token::RetryFrom) {
            // A Describe of a statement the batch may be retried from: the
            // server sends this before it checks the plan.
            if self.hold.retry.state == Recording::Synced {
                self.hold.retry.parameters = Some(Bytes::copy_from_slice(frame));
                return Some(ServerStep::Drop);
            }
            self.hold.retry.parameters_sent = true;
        }
        if tag == be::ERROR_RESPONSE && is_stale_plan(frame) {
            if self.retry(to_server) {
                return Some(ServerStep::Drop);
            }
            self.hold.stale_server = true;
        }
        None
    }

    /// Keeps the frames of a batch that a stale plan could make the proxy
    /// retry: one outside a transaction, from its first Bind or Describe of
    /// a proxy statement (with no Execute before it) to its Sync. Returns
    /// true if this frame starts the recording.
    pub(super) fn record(&mut self, tag: u8, frame: &[u8]) -> Result<bool, ProtocolError> {
        let executed_before = self.hold.executed;
        match tag {
            fe::SYNC | fe::QUERY | fe::FUNCTION_CALL => self.hold.executed = false,
            fe::EXECUTE => self.hold.executed = true,
            _ => {}
        }
        let retry = &mut self.hold.retry;
        match retry.state {
            Recording::On
                if retry.frames.len() + frame.len() > RETRY_MAX
                    || matches!(tag, fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL) =>
            {
                // Too much to keep (COPY data, a long pipeline): no retry,
                // and none from later in this batch either.
                retry.state = Recording::Off;
                retry.statement = None;
                self.hold.executed = tag != fe::SYNC;
                return Ok(false);
            }
            Recording::On => {
                retry.frames.extend_from_slice(frame);
                match tag {
                    fe::DESCRIBE if !retry.executed => retry.described = true,
                    fe::EXECUTE => retry.executed = true,
                    fe::SYNC => retry.state = Recording::Synced,
                    _ => {}
                }
                return Ok(false);
            }
            // Something follows the Sync: a replay would come after it.
            Recording::Synced => {
                retry.state = Recording::Off;
                retry.statement = None;
            }
            Recording::Off => {}
        }
        if !matches!(tag, fe::BIND | fe::DESCRIBE)
            || executed_before
            || !self.expect.status().is_idle()
            || self.client.statements.is_empty()
        {
            // Nothing to record from (a malformed Bind or Describe is
            // refused by its dispatch, which reads it again).
            return Ok(false);
        }
        let name = match tag {
            fe::BIND => prepared::bind_statement(frame)?.0,
            fe::DESCRIBE => match prepared::target(frame)? {
                (b'S', name) => name,
                _ => return Ok(false),
            },
            _ => return Ok(false),
        };
        if name.is_empty() || !self.expect.settled_but(Token::ParamSync) {
            return Ok(false);
        }
        let Some(statement) = self.client.statements.get(name).cloned() else {
            return Ok(false);
        };
        let retry = &mut self.hold.retry;
        retry.frames.clear();
        retry.frames.extend_from_slice(frame);
        retry.statement = Some(statement);
        retry.described = tag == fe::DESCRIBE;
        retry.executed = false;
        retry.parameters = None;
        retry.parameters_sent = false;
        retry.state = Recording::On;
        Ok(true)
    }

    /// The server said the recorded batch's statement has a stale plan:
    /// when the whole batch is recorded, nothing came after it and the
    /// client will be told the new row shape, close and prepare the
    /// statement again and replay the batch. The error and the batch's
    /// ReadyForQuery are dropped. Returns false if it cannot retry.
    pub(super) fn retry(&mut self, to_server: &mut BytesMut) -> bool {
        let retry = &mut self.hold.retry;
        if retry.state != Recording::Synced || !retry.described || retry.parameters_sent {
            return false;
        }
        let Some(skipped) = self.expect.take_over_batch(Token::RetryFrom) else {
            return false;
        };
        retry.state = Recording::Off;
        retry.parameters = None;
        let statement = retry.statement.take().expect("recorded with its statement");
        let frames = std::mem::take(&mut retry.frames);
        for event in &skipped {
            self.on_event(event, TxStatus::Idle);
        }
        tracing::debug!(statement = %statement.name, "stale plan: preparing again and retrying");
        prepared::put_target(to_server, fe::CLOSE, b'S', &statement.name);
        self.expect.sent(
            fe::CLOSE,
            Some(Request::Close),
            Audience::Proxy,
            Token::None,
        );
        to_server.extend_from_slice(&statement.parse);
        self.expect.sent(
            fe::PARSE,
            Some(Request::Parse),
            Audience::Proxy,
            Token::Statement(statement.id),
        );
        // Replies the proxy makes for replayed frames queue behind the
        // server's answers, so nothing goes to the client directly.
        let mut to_client = Outbox::default();
        // Replayed frames are classified afresh (the list is empty by now:
        // the request's frames were all sent before any answer came).
        self.client.carried.clear();
        let mut rest = &frames[..];
        while let Ok(Some((tag, f))) = frame::complete(rest) {
            rest = &rest[f.len()..];
            if self
                .dispatch(tag, f, to_server, &mut to_client, Token::None)
                .is_err()
            {
                break;
            }
        }
        self.hold.retry.frames = frames;
        true
    }
}

/// An ErrorResponse saying a prepared statement's plan is stale: "cached
/// plan must not change result type" (SQLSTATE 0A000, raised by the
/// server's RevalidateCachedQuery; the message itself may be translated).
fn is_stale_plan(frame: &[u8]) -> bool {
    let mut code = None;
    let mut routine = None;
    let mut rest = frame::body(frame);
    while let Some((&field, tail)) = rest.split_first() {
        let Ok((value, tail)) = frame::cstr_bytes(tail) else {
            break;
        };
        match field {
            0 => break,
            b'C' => code = Some(value),
            b'R' => routine = Some(value),
            _ => {}
        }
        rest = tail;
    }
    code == Some(b"0A000") && routine == Some(b"RevalidateCachedQuery")
}
