//! Client frames while a server is held: prepared statement names
//! rewritten to proxy-wide ones (and prepared on demand), the proxy's own
//! answers (its setting, SHOW, DEALLOCATE and Close of the client's
//! statements), and each request noted in [`Expectations`] with its token.
//!
//! [`Expectations`]: crate::client::expect::Expectations

use bytes::BytesMut;

use super::{FlowEnv, SessionFlow};
use crate::client::effects::SqlText;
use crate::client::expect::{Audience, Request, Synthetic, Token};
use crate::client::local::{self, Local};
use crate::client::prepared::{self, Statement};
use crate::client::relay::Outbox;
use crate::client::route_setting;
use crate::client::tx_status::TxStatus;
use crate::protocol::frame::{self, fe};
use crate::protocol::{ProtocolError, WireError};
use crate::routing::Reason;
use crate::server::statement_name;

impl<E: FlowEnv> SessionFlow<'_, E> {
    /// Sends the client an answer of the proxy's own to a simple Query:
    /// a command's in line with what the server still owes, a refusal at
    /// once (the session is quiet when the proxy refuses).
    pub(super) fn answer_locally(&mut self, answer: Local, to_client: &mut Outbox) {
        match answer {
            Local::Command(tag) => self.reply(Synthetic::Command(tag), to_client),
            refused @ Local::Refused(_) => {
                let mut reply = BytesMut::new();
                let encoding = self.client.params.encoding();
                refused.put(&mut reply, self.expect.status(), encoding);
                to_client.push(reply.freeze());
            }
        }
    }

    /// Sends one client frame on (renamed, prepared first, or answered by
    /// the proxy). `token` marks a Bind/Describe a retry may start from.
    pub(super) fn dispatch(
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

    /// Makes sure `s` is prepared on this server, injecting its Parse (and
    /// a Close for whatever the LRU evicts) if not. `for_client` says whose
    /// Parse this is: the client's own (its ParseComplete is forwarded) or
    /// one the proxy adds before a Bind/Describe (its answer is dropped).
    pub(super) fn ensure_prepared(
        &mut self,
        s: &Statement,
        out: &mut BytesMut,
        for_client: bool,
    ) -> bool {
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

    #[inline]
    pub(super) fn ensure_unnamed(&mut self, out: &mut BytesMut) {
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

    pub(super) fn on_query(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<(), WireError> {
        let c = match self.client.carried.take(frame.len()) {
            // Classified when it arrived (idle path, routing).
            Some(c) => c,
            None => self.client.memo.classify(
                self.env.classifier(),
                self.client.params.encoding(),
                frame::query_bytes(frame)?,
            ),
        };
        // Only a statement about the proxy's own settings is answered or
        // stood in for here, and only a DEALLOCATE is the proxy's to
        // answer: one comparison each spares every other query the calls.
        let proxy_setting = c.info.reason == Reason::ProxySetting;
        if proxy_setting
            && let Some(param) = crate::client::proxy_show::lone_show(&c)
            && self.expect.is_quiet()
            && self.expect.status() != TxStatus::Failed
        {
            let answer = self.env.show(param, self.client, self.expect.status());
            to_client.push_later(crate::client::proxy_show::later(answer));
            return Ok(());
        }
        let stand_in = match proxy_setting
            .then(|| route_setting::lone_change(&c))
            .flatten()
        {
            // The proxy's own setting, with the session at a known state:
            // answered here, never forwarded.
            Some(change) if self.expect.is_quiet() && self.expect.status() != TxStatus::Failed => {
                let answer =
                    local::proxy_setting(change, &mut self.client.routing, self.expect.status());
                self.answer_locally(answer, to_client);
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
        let encoding = self.client.params.encoding();
        if c.info.unpin.is_some()
            && let Some(answer) = local::deallocate(&c, &mut self.client.statements, encoding)
        {
            // A protocol-level statement of this client: the server's
            // copy is shared with others and stays.
            self.answer_locally(answer, to_client);
            return Ok(());
        }
        let sql = self.sql_for_observer(self.client.memo.query_bytes(frame)?, &c.info);
        let effect = self.effects_of(&c.info, &c.session, sql);
        let token = self.hold.pending.add(effect);
        let frame = stand_in.as_deref().unwrap_or(frame);
        self.send(out, frame, Some(Request::Query), token);
        Ok(())
    }

    pub(super) fn on_parse(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<(), ProtocolError> {
        let encoding = self.client.params.encoding();
        // The client's last unnamed Parse again (`last_unnamed_query`): its
        // query found without searching for its end, its text the kept one.
        let again = self.client.statements.last_unnamed_query(frame, encoding);
        let msg = match again {
            Some(query) => prepared::ParseMsg {
                name: &[],
                query,
                after_name: frame.get(frame::HEADER_LEN + 1..).unwrap_or_default(),
            },
            None => prepared::parse_parse(frame)?,
        };
        if msg.name.is_empty() {
            let class = match self.client.carried.take(frame.len()) {
                Some(c) => c,
                None => self
                    .client
                    .memo
                    .classify(self.env.classifier(), encoding, msg.query),
            };
            // Only a statement about the proxy's own settings has a
            // stand-in: one comparison spares the rest the two lookups.
            let stand_in = if class.info.reason == Reason::ProxySetting {
                route_setting::stand_in(&class)
                    .or_else(|| self.env.show_stand_in(&class, self.client, self.hold.role))
                    .map(|q| route_setting::with_query(frame, &q))
                    .transpose()?
            } else {
                None
            };
            if again.is_some() && stand_in.is_none() {
                self.client.statements.reclassify_unnamed(class);
            } else {
                let read = stand_in.is_none().then_some((encoding, msg.query.len()));
                let frame = stand_in.as_deref().unwrap_or(frame);
                let text = self.client.memo.text_of(encoding, msg.query);
                self.client
                    .statements
                    .set_unnamed(frame, &text, class, read);
            }
            let frame = stand_in.as_deref().unwrap_or(frame);
            self.hold.unnamed_here = true;
            self.send(out, frame, Some(Request::Parse), Token::None);
            return Ok(());
        }
        let s = local::define(
            &msg,
            self.client,
            self.env.statements(),
            self.env.classifier(),
        );
        if !self.ensure_prepared(&s, out, true) {
            // Already on this server: answer for it.
            self.expect
                .sent(fe::PARSE, None, Audience::Client, Token::None);
            self.reply(Synthetic::ParseComplete, to_client);
        }
        Ok(())
    }

    pub(super) fn on_bind(
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

    /// The bound statement is lent out of the hold while its effects are
    /// noted (and put back: a portal may be executed again), instead of
    /// cloning its classification for every Execute.
    pub(super) fn on_execute(&mut self, frame: &[u8], out: &mut BytesMut) {
        let token = if let Some(s) = self.hold.bound.take() {
            let effect = self.effects_of(
                &s.class.info,
                &s.class.session,
                SqlText::Shared(s.query.clone()),
            );
            self.hold.bound = Some(s);
            self.hold.pending.add(effect)
        } else if let Some(c) = self.hold.bound_unnamed.take() {
            let token = match self.client.statements.unnamed_query() {
                Some(q) => {
                    let sql = SqlText::Shared(q.clone());
                    let effect = self.effects_of(&c.info, &c.session, sql);
                    self.hold.pending.add(effect)
                }
                None => Token::None,
            };
            self.hold.bound_unnamed = Some(c);
            token
        } else {
            Token::None
        };
        self.send(out, frame, Some(Request::Execute), token);
    }

    pub(super) fn on_describe(
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

    pub(super) fn on_close(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<(), ProtocolError> {
        if local::close(frame, self.client)? {
            // The server-side statement stays for other clients.
            self.expect
                .sent(fe::CLOSE, None, Audience::Client, Token::None);
            self.reply(Synthetic::CloseComplete, to_client);
            return Ok(());
        }
        self.send(out, frame, Some(Request::Close), Token::None);
        Ok(())
    }
}
