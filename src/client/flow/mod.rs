//! The session's per-message logic while it holds a server, by job:
//! client frames (`frontend`: names rewritten, statements prepared on
//! demand, the proxy's own answers), server frames (`backend`: responses
//! matched through [`Expectations`], events, release), the stale-plan
//! retry (`retry`) and query observation (`observe`). This file holds the
//! flow's parts and the [`Flow`] entry points the relay calls.

use bytes::BytesMut;

use super::expect::{Audience, Expectations, Request, Synthetic, Token};
use super::hold_state::HoldState;
use super::registry::ClientInfo;
use super::relay::{ClientStep, Flow, Outbox, ServerStep};
use super::state::ClientState;
use super::tx_status::TxStatus;
use crate::config::PoolMode;
use crate::protocol::WireError;
use crate::protocol::frame::{self, be, fe};
use crate::server::ServerState;

mod backend;
mod env;
mod frontend;
mod observe;
pub(super) mod retry;

pub use env::{FlowEnv, HeldEnv};

/// One stretch of relaying on one server.
pub struct SessionFlow<'a, E: FlowEnv = HeldEnv<'a>> {
    pub expect: &'a mut Expectations,
    pub client: &'a mut ClientState,
    pub hold: &'a mut HoldState,
    pub server: &'a mut ServerState,
    /// The proxy's parts the flow uses (shared state, the server's pool).
    pub env: &'a E,
    pub mode: PoolMode,
    /// Who the client is, for the slow-query log.
    pub who: &'a ClientInfo,
}

impl<E: FlowEnv> SessionFlow<'_, E> {
    /// Inlined: every client frame but the proxy's own answers goes
    /// through here (four of the five of an extended-protocol request),
    /// and the call cost more than its two steps.
    #[inline]
    fn send(&mut self, out: &mut BytesMut, frame: &[u8], request: Option<Request>, token: Token) {
        out.extend_from_slice(frame);
        self.expect.sent(frame[0], request, Audience::Client, token);
    }

    fn reply(&mut self, reply: Synthetic, to_client: &mut Outbox) {
        if self.expect.reply(reply) {
            to_client.push(reply.bytes(self.expect.status()));
        }
    }

    /// Nothing a retry holds back or the fleet waits for goes with the
    /// next frame.
    #[inline]
    fn nothing_held(&self) -> bool {
        self.hold.retry.parameters.is_none() && self.hold.announced.is_none()
    }

    /// The next frame answers the client's simple Query, with nothing held
    /// to go with it: such a frame other than ReadyForQuery or an error
    /// completes nothing.
    #[inline]
    fn plain_query_answer(&self) -> bool {
        self.expect.head_is_client_query() && self.nothing_held()
    }

    fn may_release(&self) -> bool {
        self.mode == PoolMode::Transaction
            && !self.client.pins.is_pinned()
            && self.client.deferred_begin.is_none()
            && self.expect.is_reusable()
    }
}

impl<E: FlowEnv> Flow for SessionFlow<'_, E> {
    fn client_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<ClientStep, WireError> {
        // The relay has checked the tag (check_frontend_tag).
        if let Some(budget) = self.hold.budget.as_mut() {
            if *budget >= frame.len() || tag == fe::TERMINATE {
                *budget = budget.saturating_sub(frame.len());
            } else if self.hold.budget_until_sync && matches!(tag, fe::QUERY | fe::FUNCTION_CALL) {
                // The client moved on without a Sync (asyncpg's prepare()
                // then BEGIN): the proxy ends the read's batch with a Sync
                // of its own, so that this server can be released and the
                // request routed on its own.
                self.hold.budget_until_sync = false;
                frame::put_frame(to_server, fe::SYNC, &[]);
                self.expect
                    .sent(fe::SYNC, Some(Request::Sync), Audience::Proxy, Token::None);
                self.client.carried.clear();
                return Ok(ClientStep::Hold);
            } else if self.hold.budget_until_sync {
                self.hold.budget_until_sync = tag != fe::SYNC;
            } else {
                // Routed on its own later (and classified then).
                self.client.carried.clear();
                return Ok(ClientStep::Hold);
            }
        }
        if tag == fe::TERMINATE {
            return Ok(ClientStep::Terminate);
        }
        let token = if self.record(tag, frame)? {
            Token::RetryFrom
        } else {
            Token::None
        };
        self.dispatch(tag, frame, to_server, to_client, token)?;
        Ok(ClientStep::Continue)
    }

    fn quiet_status(&self) -> Option<TxStatus> {
        self.expect.is_quiet().then(|| self.expect.status())
    }

    fn next_batch(&mut self) {
        self.hold.clock.next_batch();
    }

    fn query_timed_out(&mut self, limit: std::time::Duration) {
        tracing::info!(
            limit = %humantime::format_duration(limit),
            "query_timeout: cancelling the running query"
        );
        self.hold.query_timed_out = Some(limit);
    }

    #[inline]
    fn inspects(&self, tag: u8) -> bool {
        match tag {
            // Rows and COPY data stream through, unless they answer a
            // statement of the proxy's own.
            b'D' | b'd' => self.expect.head_is_proxy(),
            // So does a RowDescription answering the client's Query or
            // Execute: it completes nothing and says nothing the proxy
            // notes, unless a retry holds a ParameterDescription back (it
            // then goes after that).
            b'T' => !self.expect.head_takes_rows() || self.hold.retry.parameters.is_some(),
            _ => true,
        }
    }

    /// Inlined into the relay's scan, which calls it for every inspected
    /// frame (five per extended-protocol request): the common answers are
    /// settled here without a call, the rest in [`Self::other_frame`].
    #[inline]
    fn server_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
        then: &mut Outbox,
    ) -> ServerStep {
        if tag == be::COMMAND_COMPLETE && self.plain_query_answer() {
            // A simple Query's CommandComplete: its rows (and a COMMIT)
            // noted, nothing else to match, reword or add.
            self.note_outcome(tag, frame);
            return ServerStep::Forward;
        }
        if in_line(tag) && self.nothing_held() {
            // No retry or rewording concerns it, and it cannot release the
            // server: matched, and what the proxy made up goes after it.
            if tag == be::COMMAND_COMPLETE {
                self.note_outcome(tag, frame);
            }
            let status = self.expect.status();
            if let Some(done) = self.expect.completes_plain(tag) {
                // The client's request done, nothing made up after it.
                if let Some(event) = done {
                    self.on_event(&event, status);
                }
                return ServerStep::Forward;
            }
            return self.in_line_matched(tag, frame, status, then);
        }
        self.other_frame(tag, frame, to_server, then)
    }
}

impl<E: FlowEnv> SessionFlow<'_, E> {
    /// An answer in the middle of a request's exchange that
    /// `completes_plain` left: matched, with what the proxy made up after
    /// it.
    #[inline(never)]
    fn in_line_matched(
        &mut self,
        tag: u8,
        frame: &[u8],
        status: TxStatus,
        then: &mut Outbox,
    ) -> ServerStep {
        let (matched, forward) = self.match_response(tag, frame, status, status);
        for reply in &matched.replies {
            then.push(reply.bytes(self.expect.status()));
        }
        if forward {
            ServerStep::Forward
        } else {
            ServerStep::Drop
        }
    }

    /// Every server frame but the common answers of `server_frame`: a
    /// ReadyForQuery, an error, a retry's, one with something held back.
    #[inline(never)]
    fn other_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
        then: &mut Outbox,
    ) -> ServerStep {
        if tag == be::READY_FOR_QUERY && self.nothing_held() {
            // The end of the client's request, nearly always with nothing
            // to match past it, drop or reword: what the general path
            // below does for it, without building a `Matched`.
            let before = self.expect.status();
            let status = TxStatus::of_ready(frame);
            if let Some(done) = self.expect.completes_ready(status) {
                if let Some(event) = done {
                    self.on_event(&event, status);
                }
                self.on_ready(before, status, true);
                let quiet = self.expect.is_quiet();
                self.client.memo.server_frame(tag, frame, quiet);
                // A committed write's ReadyForQuery waits for the fleet to
                // hear of it (as in `queue_after`).
                let forward = match self.hold.announced.take() {
                    Some(announced) => {
                        then.push_later(crate::client::fleet_announce::ready_after(
                            announced, frame,
                        ));
                        false
                    }
                    None => true,
                };
                return self.release_or_go_on(true, forward, to_server);
            }
        }
        if let Some(step) = self.retry_sees(tag, frame, to_server) {
            return step;
        }
        let held = self.hold.retry.parameters.take();
        let before = self.expect.status();
        let status = if tag == be::READY_FOR_QUERY {
            TxStatus::of_ready(frame)
        } else {
            before
        };
        if matches!(tag, be::COMMAND_COMPLETE | be::ERROR_RESPONSE) {
            // Only these say anything about the statement's outcome.
            self.note_outcome(tag, frame);
        }
        let (matched, mut forward) = self.match_response(tag, frame, before, status);
        let reworded = self.reword(tag, frame, &mut forward);
        let forward = self.queue_after(frame, forward, held, reworded, &matched, then);
        self.release_or_go_on(matched.ready, forward, to_server)
    }
}

/// Answers in the middle of a request's exchange: no retry takes them (a
/// ParameterDescription or an error may be a retry's), none is reworded
/// (an error), none ends a transaction or sets the string mode
/// (ReadyForQuery, ParameterStatus), none is a row a readback reads.
#[inline]
fn in_line(tag: u8) -> bool {
    matches!(
        tag,
        be::PARSE_COMPLETE
            | be::BIND_COMPLETE
            | be::CLOSE_COMPLETE
            | be::COMMAND_COMPLETE
            | b'T'
            | b'n'
            | b'I'
            | b's'
    )
}

#[cfg(test)]
mod tests;
