//! Server frames while a server is held: each response matched to its
//! request through [`Expectations`], the events that come of it (a
//! statement done or failed, a ReadyForQuery), errors reworded for the
//! client, the proxy's own bytes queued in order, and the decision to
//! release the server.
//!
//! [`Expectations`]: crate::client::expect::Expectations

use bytes::{Bytes, BytesMut};

use super::{FlowEnv, SessionFlow};
use crate::client::effects::Changes;
use crate::client::error_names;
use crate::client::expect::{Audience, Disposition, Event, Matched, Request, Token};
use crate::client::fleet_announce;
use crate::client::params::ParamChange;
use crate::client::readback;
use crate::client::relay::{Outbox, ServerStep};
use crate::client::route_setting;
use crate::client::tx_status::TxStatus;
use crate::protocol::frame::{self, be, fe};
use crate::routing::Unpin;

impl<E: FlowEnv> SessionFlow<'_, E> {
    /// Matches a response to its request and acts on what completed:
    /// statements' events, the end of a transaction at ReadyForQuery, the
    /// string mode a ParameterStatus sets. Returns the match and whether
    /// the frame goes to the client.
    #[inline]
    pub(super) fn match_response(
        &mut self,
        tag: u8,
        frame: &[u8],
        before: TxStatus,
        status: TxStatus,
    ) -> (Matched, bool) {
        if tag == b'D' && self.expect.head_token() == Some(Token::Readback) {
            self.client.readback.row(frame);
        }
        let matched = self.expect.received(tag, status);
        for event in &matched.events {
            self.on_event(event, status);
        }
        let forward = matched.disposition != Some(Disposition::Drop);
        if matched.ready {
            self.on_ready(before, status, forward);
        }
        if matches!(tag, be::PARAMETER_STATUS | be::READY_FOR_QUERY) {
            // standard_conforming_strings: how the next statements are read.
            let quiet = self.expect.is_quiet();
            self.client.memo.server_frame(tag, frame, quiet);
        }
        (matched, forward)
    }

    /// An error the client should read otherwise: the one `query_timeout`
    /// caused names the limit, one naming a shared statement names the
    /// client's. Clears `forward` when the original is replaced.
    #[inline]
    pub(super) fn reword(&self, tag: u8, frame: &[u8], forward: &mut bool) -> Option<Bytes> {
        if tag != be::ERROR_RESPONSE || !*forward {
            return None;
        }
        if let Some(limit) = self.hold.query_timed_out
            && crate::protocol::error::parse_error_fields(frame).1 == Some("57014")
        {
            *forward = false;
            return Some(
                crate::client::limits::query_timeout_error(limit)
                    .to_bytes()
                    .freeze(),
            );
        }
        if error_names::mentions_shared(frame) {
            // It names a shared statement: name the client's instead.
            let statements = &self.client.statements;
            let renamed = error_names::rewrite(frame, |id| statements.client_name(id));
            *forward &= renamed.is_none();
            return renamed;
        }
        None
    }

    /// Queues what goes to the client after (or instead of) this frame, in
    /// order: a ParameterDescription the retry held back, a ReadyForQuery
    /// that waits for the fleet to hear of a committed write, a reworded
    /// error, the proxy's made-up replies. Returns whether the frame
    /// itself is still forwarded in place.
    #[inline]
    pub(super) fn queue_after(
        &mut self,
        frame: &[u8],
        mut forward: bool,
        held: Option<Bytes>,
        reworded: Option<Bytes>,
        matched: &Matched,
        then: &mut Outbox,
    ) -> bool {
        // A committed write's ReadyForQuery waits for the fleet to hear of it.
        let announced = self.hold.announced.take().filter(|_| forward);
        if let Some(parameters) = held {
            // The ParameterDescription held back goes first.
            then.push(parameters);
            if forward && announced.is_none() {
                then.push(Bytes::copy_from_slice(frame));
                forward = false;
            }
        }
        if let Some(announced) = announced {
            then.push_later(fleet_announce::ready_after(announced, frame));
            forward = false;
        }
        if let Some(error) = reworded {
            then.push(error);
        }
        for reply in &matched.replies {
            then.push(reply.bytes(self.expect.status()));
        }
        forward
    }

    /// At a ReadyForQuery that lets the server go: first reads back what
    /// opaque code did, if it ran, then releases.
    #[inline]
    pub(super) fn release_or_go_on(
        &mut self,
        ready: bool,
        forward: bool,
        to_server: &mut BytesMut,
    ) -> ServerStep {
        if ready && self.client.readback.is_due() && self.may_release() {
            // Not yet: first read back what the opaque code did.
            self.client.readback.start();
            frame::put_query(to_server, &readback::query(&self.client.params));
            self.expect.sent(
                fe::QUERY,
                Some(Request::Query),
                Audience::Proxy,
                Token::Readback,
            );
        }
        if ready && self.may_release() {
            ServerStep::Release(forward)
        } else if forward {
            ServerStep::Forward
        } else {
            ServerStep::Drop
        }
    }

    pub(super) fn on_event(&mut self, event: &Event, status: TxStatus) {
        match *event {
            Event::Failed {
                request: Request::Parse,
                token: Token::Statement(id),
            } => self.server.prepared.remove(id),
            Event::Done {
                request: Request::Parse,
                token: Token::Statement(id),
            } => self.env.statement_ok(id),
            // The Close of a statement the LRU evicted was skipped after an
            // error: the server still has it, unknown to the proxy.
            Event::Failed {
                request: Request::Close,
                ..
            } => self.hold.stale_server = true,
            Event::Done {
                request: Request::Close,
                ..
            } => {}
            Event::Failed {
                request: Request::Query,
                token: Token::ParamSync,
            } => self.server.params.mark_unknown(),
            Event::Failed {
                request: Request::Query,
                token: Token::Readback,
            } => self.client.readback.fail(),
            Event::Done {
                request: Request::Query,
                token: Token::Readback,
            } => self.adopt_readback(),
            Event::Done { token, .. } => {
                if let Some(effect) = self.hold.pending.take(token) {
                    if let Some(o) = effect.observed {
                        self.observe(o);
                    }
                    if let Some(changes) = effect.changes {
                        self.apply(*changes, status);
                    }
                }
            }
            Event::Failed { token, .. } => {
                if let Some(o) = self.hold.pending.take(token).and_then(|e| e.observed) {
                    self.observe(o);
                }
            }
        }
    }

    /// A ReadyForQuery: transaction boundaries and read-your-writes.
    /// `for_client`: it answers the client's request, not a statement of
    /// the proxy's own (a parameter sync), which is no transaction of theirs.
    pub(super) fn on_ready(&mut self, before: TxStatus, status: TxStatus, for_client: bool) {
        self.hold.query_timed_out = None;
        if status.is_idle() && for_client {
            self.env.transaction();
        }
        if !before.is_idle() && status.is_idle() {
            let committed = std::mem::take(&mut self.hold.last_was_commit);
            self.client.params.end_transaction(committed);
            self.client.routing.end_transaction(committed);
        }
        // Only the client's own ReadyForQuery: one answering the proxy's
        // parameter sync at the start of a hold can come before the
        // client's write has even run.
        if status.is_idle() && self.hold.wrote && for_client {
            // As an `Instant`: the write times are kept as such.
            let now = self.hold.clock.now().instant();
            self.client.routing.wrote(now);
            self.hold.announced =
                self.env
                    .committed(&self.hold.tables_written, now, &mut self.client.routing);
            self.hold.wrote = false;
            self.hold.tables_written.clear();
        }
    }

    /// A request that changes the session completed successfully.
    pub(super) fn apply(&mut self, effect: Changes, status: TxStatus) {
        let in_transaction = status.in_transaction();
        for change in effect.params {
            if matches!(change, ParamChange::Reset(_) | ParamChange::ResetAll) {
                self.hold.params_diverged = true;
            }
            self.client.params.apply(change, in_transaction);
        }
        if let Some(setting) = effect.route {
            self.client
                .routing
                .set(route_setting::session_value(setting), in_transaction);
        }
        if let Some(lsn) = effect.min_lsn {
            self.client.routing.set_min_lsn(lsn, in_transaction);
        }
        if let Some(unpin) = effect.unpin {
            self.client.pins.release(&unpin);
            match unpin {
                Unpin::DiscardAll => {
                    // Everything the session set goes, the proxy's own
                    // settings too.
                    self.client.routing.discard();
                    self.client.statements.forget_all();
                    self.client.params.apply(ParamChange::ResetAll, false);
                    self.server.prepared.clear();
                    self.hold.params_diverged = true;
                }
                Unpin::DeallocateAll => {
                    self.client.statements.forget_all();
                    self.server.prepared.clear();
                }
                _ => {}
            }
        }
    }

    /// The readback completed: the client adopts the session it found,
    /// which is also the server's (what the client sent meanwhile runs in
    /// it). Custom settings the readback cannot list may linger on the
    /// server: its settings count as unknown, so the next sync starts with
    /// a reset.
    pub(super) fn adopt_readback(&mut self) {
        self.server.params.mark_unknown();
        self.hold.params_diverged = true;
        let Some(found) = self.client.readback.finish(self.env.server_user()) else {
            // Its state is unknown: closed at release, not reused.
            tracing::warn!("reading the session back failed: the server connection will be closed");
            self.hold.stale_server = true;
            return;
        };
        let mut settings = found.settings;
        // Not read back (see readback::query): kept as they are.
        for (name, value) in self.client.params.current() {
            if !name.is_ascii() {
                settings.insert(name.clone(), value.clone());
            }
        }
        self.client.params.adopt(settings);
        for pin in found.pins {
            self.client.pins.add(pin);
        }
    }
}
