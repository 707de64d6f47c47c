//! The session's per-message logic while it holds a server: prepared
//! statement names rewritten to proxy-wide ones (and prepared on demand),
//! statements' effects on the session tracked, requests and responses
//! matched through [`Expectations`], and the decision to release the server.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::effects::{self, Effect, Observed, Pending};
use super::error_names;
use super::expect::{
    Audience, CommandTag, Disposition, Event, Expectations, Request, Synthetic, Token,
};
use super::params::ParamChange;
use super::prepared::{self, Statement};
use super::readback;
use super::registry::ClientInfo;
use super::relay::{ClientStep, Flow, Outbox, ServerStep};
use super::route_setting;
use super::state::ClientState;
use super::tx_status::TxStatus;
use crate::cluster::{NodeId, Role};
use crate::config::PoolMode;
use crate::observe::QueryEvent;
use crate::protocol::frame::{self, be, fe};
use crate::protocol::{ProtocolError, WireError};
use crate::proxy::Shared;
use crate::routing::{Classified, Route, SessionChange, StatementInfo, Unpin};
use crate::server::{ServerPool, ServerState, statement_name};

/// Per-hold bookkeeping that the relay's stretches share.
pub struct HoldState {
    /// The client's unnamed statement exists on this server.
    pub unnamed_here: bool,
    /// Effects waiting for their requests to complete.
    pub pending: Pending,
    /// The statement of the last Bind, whose effects its Execute carries.
    bound: Option<Arc<Statement>>,
    bound_unnamed: Option<Classified>,
    /// This transaction wrote (for read-your-writes), and which tables.
    wrote: bool,
    tables_written: Vec<Arc<str>>,
    /// The fleet's announcement of the write that just committed: the
    /// client's ReadyForQuery waits for it.
    announced: Option<super::fleet_announce::Announced>,
    /// The last COMMIT or ROLLBACK tag seen was COMMIT (a transaction
    /// block that ends otherwise rolled back, taking its SETs with it).
    /// Other tags leave it: in `COMMIT; SET x = 1` the block committed.
    last_was_commit: bool,
    /// RESET/DISCARD ran here: the server's settings no longer mirror the
    /// client's (the server resets to its own defaults).
    pub params_diverged: bool,
    /// Replica reads: client bytes still routed to this server; later
    /// requests wait for the next routing decision.
    pub budget: Option<usize>,
    /// The budgeted read ended with Flush: the rest of its batch, up to
    /// the client's Sync, must run here too (the server would otherwise
    /// wait for that Sync forever).
    pub budget_until_sync: bool,
    /// The node this server belongs to, for metrics.
    pub node: NodeId,
    pub role: Role,
    /// `query_timeout` cancelled the running query: its 57014 error is
    /// reworded to name the limit, until the next ReadyForQuery.
    query_timed_out: Option<std::time::Duration>,
    /// The current batch, kept for a retry after a stale plan.
    retry: Retry,
    /// An Execute was sent since the last Sync.
    executed: bool,
    /// The server reported a stale plan ("cached plan must not change
    /// result type") that the proxy did not repair, or skipped the Close of
    /// an evicted statement: its statements are no longer what the proxy
    /// thinks, so it is closed instead of going back to the pool.
    pub stale_server: bool,
}

/// Where the recording of a batch stands.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Recording {
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
struct Retry {
    state: Recording,
    /// The client's frames, as it sent them.
    frames: BytesMut,
    statement: Option<Arc<Statement>>,
    /// A Describe comes before any Execute: the client learns the new row
    /// shape from the replay, rather than decoding rows by the old one.
    described: bool,
    executed: bool,
    /// The ParameterDescription answering the recorded Describe, held back.
    parameters: Option<Bytes>,
    /// ... or already sent to the client: no retry then.
    parameters_sent: bool,
}

/// One stretch of relaying on one server.
pub struct SessionFlow<'a> {
    pub expect: &'a mut Expectations,
    pub client: &'a mut ClientState,
    pub hold: &'a mut HoldState,
    pub server: &'a mut ServerState,
    pub pool: &'a ServerPool,
    pub shared: &'a Shared,
    pub mode: PoolMode,
    /// Who the client is, for the slow-query log.
    pub who: &'a ClientInfo,
}

impl HoldState {
    pub fn new(node: NodeId, role: Role) -> Self {
        HoldState {
            unnamed_here: false,
            pending: Pending::default(),
            bound: None,
            bound_unnamed: None,
            wrote: false,
            tables_written: Vec::new(),
            announced: None,
            last_was_commit: false,
            params_diverged: false,
            budget: None,
            budget_until_sync: false,
            node,
            role,
            retry: Retry::default(),
            executed: false,
            stale_server: false,
            query_timed_out: None,
        }
    }
}

/// A recorded batch larger than this is not kept for the next hold.
const KEPT_FRAMES: usize = 4096;

impl HoldState {
    /// Drops what this hold recorded, keeping the lists' capacity.
    pub fn empty(&mut self) {
        self.pending.clear();
        self.tables_written.clear();
        self.bound = None;
        self.bound_unnamed = None;
        self.retry.statement = None;
        self.retry.parameters = None;
        if self.retry.frames.capacity() > KEPT_FRAMES {
            self.retry.frames = BytesMut::new();
        }
        self.retry.frames.clear();
    }

    /// A fresh state for a new hold, in this one's (emptied) lists.
    pub fn recycle(self, node: NodeId, role: Role) -> Self {
        let mut fresh = HoldState::new(node, role);
        fresh.pending = self.pending;
        fresh.tables_written = self.tables_written;
        fresh.retry.frames = self.retry.frames;
        fresh
    }
}

impl SessionFlow<'_> {
    fn send(&mut self, out: &mut BytesMut, frame: &[u8], request: Option<Request>, token: Token) {
        out.extend_from_slice(frame);
        self.expect.sent(frame[0], request, Audience::Client, token);
    }

    fn reply(&mut self, reply: Synthetic, to_client: &mut Outbox) {
        if self.expect.reply(reply) {
            to_client.push(reply.bytes(self.expect.status()));
        }
    }

    /// Makes sure `s` is prepared on this server, injecting its Parse (and
    /// a Close for whatever the LRU evicts) if not. `for_client` says whose
    /// Parse this is: the client's own (its ParseComplete is forwarded) or
    /// one the proxy adds before a Bind/Describe (its answer is dropped).
    fn ensure_prepared(&mut self, s: &Statement, out: &mut BytesMut, for_client: bool) -> bool {
        if self.server.prepared.touch(s.id) {
            return false;
        }
        if let Some(evicted) = self.server.prepared.insert(s.id) {
            prepared::put_target(out, fe::CLOSE, b'S', &statement_name(evicted));
            self.expect.sent(
                fe::CLOSE,
                Some(Request::Close),
                Audience::Proxy,
                Token::Statement(evicted),
            );
        }
        out.extend_from_slice(&s.parse);
        let audience = if for_client {
            Audience::Client
        } else {
            Audience::Proxy
        };
        self.expect.sent(
            fe::PARSE,
            Some(Request::Parse),
            audience,
            Token::Statement(s.id),
        );
        true
    }

    fn ensure_unnamed(&mut self, out: &mut BytesMut) {
        if !self.hold.unnamed_here
            && let Some(parse) = self.client.statements.unnamed_parse().cloned()
        {
            out.extend_from_slice(&parse);
            self.expect.sent(
                fe::PARSE,
                Some(Request::Parse),
                Audience::Proxy,
                Token::None,
            );
            self.hold.unnamed_here = true;
        }
    }

    /// Notes what a statement about to run does: writes (for
    /// read-your-writes) and pins. Returns its effects for completion.
    fn effects_of(
        &mut self,
        info: &Arc<StatementInfo>,
        session: &[SessionChange],
        sql: Arc<str>,
    ) -> Effect {
        if info.route == Route::Write {
            self.hold.wrote = true;
            self.hold
                .tables_written
                .extend(info.tables_written.iter().cloned());
        }
        if let Some(pin) = info.pin {
            self.client.pins.add(pin);
        }
        if info.opaque {
            self.client.readback.opaque_ran();
        }
        let changes = match effects::param_changes(session) {
            Some(c) => c,
            None => {
                // A change the proxy cannot replay elsewhere: stay here.
                self.client.pins.add_untracked();
                Vec::new()
            }
        };
        Effect {
            changes,
            route: route_setting::after(session),
            min_lsn: route_setting::min_lsn_after(session),
            unpin: info.unpin.clone(),
            observed: Some(Observed {
                info: info.clone(),
                sql,
                start: Instant::now(),
                rows: 0,
                error: None,
            }),
        }
    }

    /// The text to hand the observer: the original only if EXPLAIN may use it.
    fn sql_for_observer(&self, raw: &[u8], info: &StatementInfo) -> Arc<str> {
        if self.shared.observer.wants_sql() {
            Arc::from(self.client.memo.text_of(self.client.params.encoding(), raw))
        } else {
            info.normalized.clone()
        }
    }

    fn on_query(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<(), WireError> {
        let c = self.client.memo.classify(
            &self.shared.classifier,
            self.client.params.encoding(),
            frame::query_bytes(frame)?,
        );
        if let Some(param) = super::proxy_show::lone_show(&c)
            && self.expect.is_quiet()
            && self.expect.status() != TxStatus::Failed
        {
            let answer =
                super::proxy_show::answer(param, self.client, self.shared, self.expect.status());
            to_client.push_later(super::proxy_show::later(answer));
            return Ok(());
        }
        let stand_in = match route_setting::lone_change(&c) {
            // The proxy's own setting, with the session at a known state:
            // answered here, never forwarded.
            Some(change) if self.expect.is_quiet() && self.expect.status() != TxStatus::Failed => {
                match change {
                    Ok(setting) => {
                        let in_transaction = self.expect.status().in_transaction();
                        self.client.routing.apply(setting, in_transaction);
                        self.reply(Synthetic::Command(CommandTag::Set), to_client);
                    }
                    Err(refusal) => {
                        // Refused, and the session carries on (a transaction
                        // block stays usable: the server saw nothing).
                        let mut reply = refusal.to_bytes();
                        self.expect.status().put_ready(&mut reply);
                        to_client.push(reply.freeze());
                    }
                }
                return Ok(());
            }
            // In a failed transaction (where Postgres refuses every
            // command with 25P02), or behind responses still due (a client
            // pipelining simple queries): the server answers, in line, by
            // running the stand-in; the setting changes if it completes.
            Some(_) => route_setting::stand_in(&c).map(|sql| {
                let mut f = BytesMut::new();
                frame::put_query(&mut f, &sql);
                f
            }),
            None => None,
        };
        if c.info.statement_count == 1
            && let Some(Unpin::Deallocate(name)) = &c.info.unpin
            && self.client.statements.forget(name.as_bytes()).is_some()
        {
            // A protocol-level statement of this client: the server's
            // copy is shared with others and stays.
            self.reply(Synthetic::Command(CommandTag::Deallocate), to_client);
            return Ok(());
        }
        let sql = self.sql_for_observer(frame::query_bytes(frame)?, &c.info);
        let effect = self.effects_of(&c.info, &c.session, sql);
        let token = self.hold.pending.add(effect);
        let frame = stand_in.as_deref().unwrap_or(frame);
        self.send(out, frame, Some(Request::Query), token);
        Ok(())
    }

    fn on_parse(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<(), ProtocolError> {
        let msg = prepared::parse_parse(frame)?;
        if msg.name.is_empty() {
            let class = self.client.memo.classify(
                &self.shared.classifier,
                self.client.params.encoding(),
                msg.query,
            );
            let stand_in = route_setting::stand_in(&class)
                .or_else(|| {
                    super::proxy_show::stand_in(&class, self.client, self.shared, self.hold.role)
                })
                .map(|q| route_setting::with_query(frame, &q))
                .transpose()?;
            let frame = stand_in.as_deref().unwrap_or(frame);
            let text = self
                .client
                .memo
                .text_of(self.client.params.encoding(), msg.query);
            self.client.statements.set_unnamed(frame, &text, class);
            self.hold.unnamed_here = true;
            self.send(out, frame, Some(Request::Parse), Token::None);
            return Ok(());
        }
        let s = self.client.statements.define(
            &self.shared.statements,
            &self.shared.classifier,
            self.client.params.encoding(),
            self.client.memo.reading(),
            &msg,
        );
        if !self.ensure_prepared(&s, out, true) {
            // Already on this server: answer for it.
            self.expect
                .sent(fe::PARSE, None, Audience::Client, Token::None);
            self.reply(Synthetic::ParseComplete, to_client);
        }
        Ok(())
    }

    fn on_bind(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        token: Token,
    ) -> Result<(), ProtocolError> {
        let (name, at, len) = prepared::bind_statement(frame)?;
        self.hold.bound = None;
        self.hold.bound_unnamed = None;
        if name.is_empty() {
            self.ensure_unnamed(out);
            self.hold.bound_unnamed = self.client.statements.unnamed_class().cloned();
            self.send(out, frame, Some(Request::Bind), Token::None);
        } else if let Some(s) = self.client.statements.get(name).cloned() {
            self.ensure_prepared(&s, out, false);
            prepared::put_renamed(out, frame, at, len, &s.name);
            self.expect
                .sent(fe::BIND, Some(Request::Bind), Audience::Client, token);
            self.hold.bound = Some(s);
        } else {
            // Not one of ours: an SQL-level PREPAREd name, or an error the
            // server will report in its own words.
            self.hold.wrote = true;
            self.send(out, frame, Some(Request::Bind), Token::None);
        }
        Ok(())
    }

    fn on_execute(&mut self, frame: &[u8], out: &mut BytesMut) {
        let bound = match (&self.hold.bound, &self.hold.bound_unnamed) {
            (Some(s), _) => Some((s.class.clone(), s.query.clone())),
            (None, Some(c)) => self
                .client
                .statements
                .unnamed_query()
                .map(|q| (c.clone(), q.clone())),
            _ => None,
        };
        let token = match bound {
            Some((c, sql)) => {
                let effect = self.effects_of(&c.info, &c.session, sql);
                self.hold.pending.add(effect)
            }
            None => Token::None,
        };
        self.send(out, frame, Some(Request::Execute), token);
    }

    fn on_describe(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        token: Token,
    ) -> Result<(), ProtocolError> {
        let (kind, name) = prepared::target(frame)?;
        let request = Request::of_frontend(fe::DESCRIBE, kind);
        if kind == b'S' {
            if name.is_empty() {
                self.ensure_unnamed(out);
            } else if let Some(s) = self.client.statements.get(name).cloned() {
                self.ensure_prepared(&s, out, false);
                prepared::put_target(out, fe::DESCRIBE, b'S', &s.name);
                self.expect
                    .sent(fe::DESCRIBE, request, Audience::Client, token);
                return Ok(());
            }
        }
        self.send(out, frame, request, Token::None);
        Ok(())
    }

    fn on_close(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<(), ProtocolError> {
        let (kind, name) = prepared::target(frame)?;
        if kind == b'S' && !name.is_empty() && self.client.statements.forget(name).is_some() {
            // The server-side statement stays for other clients.
            self.expect
                .sent(fe::CLOSE, None, Audience::Client, Token::None);
            self.reply(Synthetic::CloseComplete, to_client);
            return Ok(());
        }
        self.send(out, frame, Some(Request::Close), Token::None);
        Ok(())
    }

    /// Tells the observer about a finished statement.
    fn observe(&self, o: Observed) {
        self.shared.observer.record(&QueryEvent {
            fingerprint: o.info.fingerprint.low64(),
            normalized: &o.info.normalized,
            sql: &o.sql,
            params: None,
            is_write: o.info.route == Route::Write,
            role: self.hold.role,
            node: self.hold.node,
            node_addr: &self.pool.key.node,
            duration: o.start.elapsed(),
            rows: o.rows,
            error: o.error.as_deref(),
            user: &self.who.user,
            database: &self.who.database,
            application_name: &self.who.application_name,
        });
    }

    /// A request with effects completed successfully.
    fn apply(&mut self, effect: Effect, status: TxStatus) {
        let in_transaction = status.in_transaction();
        for change in effect.changes {
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
    fn adopt_readback(&mut self) {
        self.server.params.mark_unknown();
        self.hold.params_diverged = true;
        let Some(found) = self.client.readback.finish(&self.pool.key.user) else {
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

    fn on_event(&mut self, event: &Event, status: TxStatus) {
        match *event {
            Event::Failed {
                request: Request::Parse,
                token: Token::Statement(id),
            } => self.server.prepared.remove(id),
            Event::Done {
                request: Request::Parse,
                token: Token::Statement(id),
            } => self.pool.mark_statement_ok(id),
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
                if let Some(mut effect) = self.hold.pending.take(token) {
                    if let Some(o) = effect.observed.take() {
                        self.observe(o);
                    }
                    self.apply(effect, status);
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
    fn on_ready(&mut self, before: TxStatus, status: TxStatus, for_client: bool) {
        self.hold.query_timed_out = None;
        if status.is_idle() && for_client {
            self.shared.observer.metrics().transaction();
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
            let now = Instant::now();
            let config = self.shared.config.load();
            let horizon = crate::routing::policy::horizon(&config.routing);
            self.client.routing.wrote(now);
            self.shared
                .write_log
                .record(&self.hold.tables_written, now, now.checked_sub(horizon));
            self.hold.announced = super::fleet_announce::committed(
                self.shared,
                &mut self.client.routing,
                &self.hold.tables_written,
            );
            self.hold.wrote = false;
            self.hold.tables_written.clear();
        }
    }

    /// Sends one client frame on (renamed, prepared first, or answered by
    /// the proxy). `token` marks a Bind/Describe a retry may start from.
    fn dispatch(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut Outbox,
        token: Token,
    ) -> Result<(), WireError> {
        match tag {
            fe::QUERY => self.on_query(frame, to_server, to_client)?,
            fe::PARSE => self.on_parse(frame, to_server, to_client)?,
            fe::BIND => self.on_bind(frame, to_server, token)?,
            fe::EXECUTE => self.on_execute(frame, to_server),
            fe::DESCRIBE => self.on_describe(frame, to_server, token)?,
            fe::CLOSE => self.on_close(frame, to_server, to_client)?,
            fe::FUNCTION_CALL => {
                // A function by OID: anything at all.
                self.hold.wrote = true;
                self.client.readback.opaque_ran();
                self.send(to_server, frame, Some(Request::FunctionCall), Token::None);
            }
            _ => self.send(to_server, frame, Request::of_frontend(tag, 0), Token::None),
        }
        Ok(())
    }

    /// Keeps the frames of a batch that a stale plan could make the proxy
    /// retry: one outside a transaction, from its first Bind or Describe of
    /// a proxy statement (with no Execute before it) to its Sync. Returns
    /// true if this frame starts the recording.
    fn record(&mut self, tag: u8, frame: &[u8]) -> Result<bool, ProtocolError> {
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
        let name = match tag {
            fe::BIND => prepared::bind_statement(frame)?.0,
            fe::DESCRIBE => match prepared::target(frame)? {
                (b'S', name) => name,
                _ => return Ok(false),
            },
            _ => return Ok(false),
        };
        if name.is_empty()
            || executed_before
            || !self.expect.status().is_idle()
            || !self.expect.settled_but(Token::ParamSync)
        {
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
    fn retry(&mut self, to_server: &mut BytesMut) -> bool {
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

    fn may_release(&self) -> bool {
        self.mode == PoolMode::Transaction
            && !self.client.pins.is_pinned()
            && self.client.deferred_begin.is_none()
            && self.expect.is_reusable()
    }
}

/// The row count at the end of a CommandComplete tag ("SELECT 5",
/// "INSERT 0 1", "UPDATE 3"); 0 for tags without one.
fn rows_of(tag: &[u8]) -> u64 {
    let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
    let digits = tag.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits == tag.len() {
        return 0;
    }
    std::str::from_utf8(&tag[tag.len() - digits..])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// ParameterDescription, the first answer to a Describe of a statement.
const PARAMETER_DESCRIPTION: u8 = b't';

/// Most bytes of a batch kept for a retry.
const RETRY_MAX: usize = 64 * 1024;

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

impl Flow for SessionFlow<'_> {
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
                return Ok(ClientStep::Hold);
            } else if self.hold.budget_until_sync {
                self.hold.budget_until_sync = tag != fe::SYNC;
            } else {
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

    fn query_timed_out(&mut self, limit: std::time::Duration) {
        tracing::info!(
            limit = %humantime::format_duration(limit),
            "query_timeout: cancelling the running query"
        );
        self.hold.query_timed_out = Some(limit);
    }

    fn inspects(&self, tag: u8) -> bool {
        // Rows and COPY data stream through, unless they answer a statement
        // of the proxy's own.
        !matches!(tag, b'D' | b'd') || self.expect.head_is_proxy()
    }

    fn server_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
        then: &mut Outbox,
    ) -> ServerStep {
        if tag == PARAMETER_DESCRIPTION && self.expect.head_token() == Some(Token::RetryFrom) {
            // A Describe of a statement the batch may be retried from: the
            // server sends this before it checks the plan. Held back until
            // the plan is known good, so a retry does not send it twice.
            if self.hold.retry.state == Recording::Synced {
                self.hold.retry.parameters = Some(Bytes::copy_from_slice(frame));
                return ServerStep::Drop;
            }
            self.hold.retry.parameters_sent = true;
        }
        if tag == be::ERROR_RESPONSE && is_stale_plan(frame) {
            if self.retry(to_server) {
                return ServerStep::Drop;
            }
            self.hold.stale_server = true;
        }
        let held = self.hold.retry.parameters.take();
        let before = self.expect.status();
        let status = if tag == be::READY_FOR_QUERY {
            TxStatus::of_ready(frame)
        } else {
            before
        };
        match tag {
            be::COMMAND_COMPLETE => {
                let tag_text = frame::body(frame);
                if tag_text.starts_with(b"COMMIT\0") {
                    self.hold.last_was_commit = true;
                    // Committed, even if `COMMIT AND CHAIN` goes on in a
                    // new block that may roll back.
                    self.client.params.end_transaction(true);
                    self.client.routing.end_transaction(true);
                } else if tag_text.starts_with(b"ROLLBACK\0") {
                    self.hold.last_was_commit = false;
                }
                let token = self.expect.head_statement_token();
                if let Some(o) = self
                    .hold
                    .pending
                    .get_mut(token)
                    .and_then(|e| e.observed.as_mut())
                {
                    o.rows += rows_of(tag_text);
                }
            }
            be::ERROR_RESPONSE => {
                let token = self.expect.head_statement_token();
                if let Some(o) = self
                    .hold
                    .pending
                    .get_mut(token)
                    .and_then(|e| e.observed.as_mut())
                {
                    let (_, code, _) = crate::protocol::error::parse_error_fields(frame);
                    o.error = Some(code.unwrap_or("XX000").into());
                }
            }
            _ => {}
        }
        if tag == b'D' && self.expect.head_token() == Some(Token::Readback) {
            self.client.readback.row(frame);
        }
        let matched = self.expect.received(tag, status);
        for event in &matched.events {
            self.on_event(event, status);
        }
        let mut forward = matched.disposition != Some(Disposition::Drop);
        if matched.ready {
            self.on_ready(before, status, forward);
        }
        if matches!(tag, be::PARAMETER_STATUS | be::READY_FOR_QUERY) {
            // standard_conforming_strings: how the next statements are read.
            let quiet = self.expect.is_quiet();
            self.client.memo.server_frame(tag, frame, quiet);
        }
        // `query_timeout` cancelled this query: its error names the limit.
        let reworded = if forward
            && tag == be::ERROR_RESPONSE
            && let Some(limit) = self.hold.query_timed_out
            && crate::protocol::error::parse_error_fields(frame).1 == Some("57014")
        {
            forward = false;
            Some(
                super::limits::query_timeout_error(limit)
                    .to_bytes()
                    .freeze(),
            )
        } else if tag == be::ERROR_RESPONSE && forward && error_names::mentions_shared(frame) {
            // It names a shared statement: name the client's instead.
            let statements = &self.client.statements;
            let renamed = error_names::rewrite(frame, |id| statements.client_name(id));
            forward &= renamed.is_none();
            renamed
        } else {
            None
        };
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
            then.push_later(super::fleet_announce::ready_after(announced, frame));
            forward = false;
        }
        if let Some(error) = reworded {
            then.push(error);
        }
        for reply in &matched.replies {
            then.push(reply.bytes(self.expect.status()));
        }
        if matched.ready && self.client.readback.is_due() && self.may_release() {
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
        if matched.ready && self.may_release() {
            ServerStep::Release(forward)
        } else if forward {
            ServerStep::Forward
        } else {
            ServerStep::Drop
        }
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
