//! The session's per-message logic while it holds a server: prepared
//! statement names rewritten to proxy-wide ones (and prepared on demand),
//! every request and response matched through [`Expectations`], and the
//! decision to release the server.

use bytes::{Bytes, BytesMut};

use super::expect::{Audience, Event, Expectations, Request, Synthetic};
use super::prepared::{self, ClientStatements, Statement, StatementRegistry};
use super::relay::{ClientStep, Flow, Outbox, ServerStep};
use crate::protocol::frame::{self, be, fe};
use crate::protocol::{ProtocolError, WireError};
use crate::server::{ServerPool, ServerState, statement_name};

/// One stretch of relaying on one server.
pub struct SessionFlow<'a> {
    pub expect: &'a mut Expectations,
    pub statements: &'a mut ClientStatements,
    pub registry: &'a StatementRegistry,
    pub server: &'a mut ServerState,
    pub pool: &'a ServerPool,
    /// The client's unnamed statement was parsed on this server during the
    /// current hold (unnamed statements do not outlive a server change).
    pub unnamed_here: &'a mut bool,
    /// Transaction mode: give the server back at the first idle point.
    pub release_when_idle: bool,
}

impl SessionFlow<'_> {
    fn send(&mut self, out: &mut BytesMut, frame: &[u8], request: Option<Request>, token: u64) {
        out.extend_from_slice(frame);
        self.expect.sent(frame[0], request, Audience::Client, token);
    }

    fn reply(&mut self, reply: Synthetic, to_client: &mut Outbox) {
        if self.expect.reply(reply) {
            to_client.push(Bytes::from_static(reply.bytes()));
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
            self.expect
                .sent(fe::CLOSE, Some(Request::Close), Audience::Proxy, 0);
        }
        out.extend_from_slice(&s.parse);
        let audience = if for_client {
            Audience::Client
        } else {
            Audience::Proxy
        };
        self.expect
            .sent(fe::PARSE, Some(Request::Parse), audience, s.id);
        true
    }

    fn ensure_unnamed(&mut self, out: &mut BytesMut) {
        if !*self.unnamed_here
            && let Some(parse) = self.statements.unnamed().cloned()
        {
            out.extend_from_slice(&parse);
            self.expect
                .sent(fe::PARSE, Some(Request::Parse), Audience::Proxy, 0);
            *self.unnamed_here = true;
        }
    }

    fn on_parse(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<(), ProtocolError> {
        let msg = prepared::parse_parse(frame)?;
        if msg.name.is_empty() {
            self.statements.set_unnamed(frame);
            *self.unnamed_here = true;
            self.send(out, frame, Some(Request::Parse), 0);
            return Ok(());
        }
        let s = self.statements.define(self.registry, &msg);
        if !self.ensure_prepared(&s, out, true) {
            // Already on this server: answer for it.
            self.expect.sent(fe::PARSE, None, Audience::Client, 0);
            self.reply(Synthetic::ParseComplete, to_client);
        }
        Ok(())
    }

    fn on_bind(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<(), ProtocolError> {
        let (name, at, len) = prepared::bind_statement(frame)?;
        if name.is_empty() {
            self.ensure_unnamed(out);
            self.send(out, frame, Some(Request::Bind), 0);
        } else if let Some(s) = self.statements.get(name).cloned() {
            self.ensure_prepared(&s, out, false);
            prepared::put_renamed(out, frame, at, len, &s.name);
            self.expect
                .sent(fe::BIND, Some(Request::Bind), Audience::Client, s.id);
        } else {
            // Not one of ours: an SQL-level PREPAREd name, or an error the
            // server will report in its own words.
            self.send(out, frame, Some(Request::Bind), 0);
        }
        Ok(())
    }

    fn on_describe(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<(), ProtocolError> {
        let (kind, name) = prepared::target(frame)?;
        let request = Request::of_frontend(fe::DESCRIBE, kind);
        if kind == b'S' {
            if name.is_empty() {
                self.ensure_unnamed(out);
            } else if let Some(s) = self.statements.get(name).cloned() {
                self.ensure_prepared(&s, out, false);
                prepared::put_target(out, fe::DESCRIBE, b'S', &s.name);
                self.expect.sent(fe::DESCRIBE, request, Audience::Client, 0);
                return Ok(());
            }
        }
        self.send(out, frame, request, 0);
        Ok(())
    }

    fn on_close(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<(), ProtocolError> {
        let (kind, name) = prepared::target(frame)?;
        if kind == b'S' && !name.is_empty() && self.statements.forget(name).is_some() {
            // The server-side statement stays for other clients.
            self.expect.sent(fe::CLOSE, None, Audience::Client, 0);
            self.reply(Synthetic::CloseComplete, to_client);
            return Ok(());
        }
        self.send(out, frame, Some(Request::Close), 0);
        Ok(())
    }
}

impl Flow for SessionFlow<'_> {
    fn client_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<ClientStep, WireError> {
        check_frontend_tag(tag)?;
        tracing::trace!(tag = %char::from(tag), "client frame");
        match tag {
            fe::TERMINATE => return Ok(ClientStep::Terminate),
            fe::PARSE => self.on_parse(frame, to_server, to_client)?,
            fe::BIND => self.on_bind(frame, to_server)?,
            fe::DESCRIBE => self.on_describe(frame, to_server)?,
            fe::CLOSE => self.on_close(frame, to_server, to_client)?,
            _ => self.send(to_server, frame, Request::of_frontend(tag, 0), 0),
        }
        Ok(ClientStep::Continue)
    }

    fn inspects(&self, tag: u8) -> bool {
        // Rows and COPY data stream through, unless they answer a statement
        // of the proxy's own.
        !matches!(tag, b'D' | b'd') || self.expect.head_is_proxy()
    }

    fn server_frame(&mut self, tag: u8, frame: &[u8], then: &mut Outbox) -> ServerStep {
        let status = if tag == be::READY_FOR_QUERY {
            frame::ready_status(frame)
        } else {
            0
        };
        let matched = self.expect.received(tag, status);
        for event in &matched.events {
            match event {
                Event::Failed {
                    request: Request::Parse,
                    token,
                } => self.server.prepared.remove(*token),
                Event::Done {
                    request: Request::Parse,
                    token,
                } => self.pool.mark_statement_ok(*token),
                _ => {}
            }
        }
        for reply in &matched.replies {
            then.push(Bytes::from_static(reply.bytes()));
        }
        let forward = matched.disposition != Some(super::expect::Disposition::Drop);
        tracing::trace!(tag = %char::from(tag), forward, replies = matched.replies.len(), ready = matched.ready, "server frame");
        if matched.ready && self.release_when_idle && self.expect.is_reusable() {
            ServerStep::Release(forward)
        } else if forward {
            ServerStep::Forward
        } else {
            ServerStep::Drop
        }
    }
}

/// Refuses message types a client may not send after login, as Postgres
/// does, without bothering a server with them.
pub fn check_frontend_tag(tag: u8) -> Result<(), WireError> {
    match tag {
        fe::QUERY
        | fe::PARSE
        | fe::BIND
        | fe::DESCRIBE
        | fe::EXECUTE
        | fe::CLOSE
        | fe::SYNC
        | fe::FLUSH
        | fe::FUNCTION_CALL
        | fe::TERMINATE
        | fe::COPY_DATA
        | fe::COPY_DONE
        | fe::COPY_FAIL => Ok(()),
        other => Err(ProtocolError::Unexpected {
            tag: other,
            when: "after login",
        }
        .into()),
    }
}
