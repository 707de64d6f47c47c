//! Named prepared statements in transaction mode. A client's statement
//! names map to proxy-wide statements, one per distinct (query text,
//! parameter types), named `pgsidecar_<id>` on every server. The frames the
//! proxy needs (its own Parse, a client's Bind with the name replaced) are
//! built here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::frame::{self, fe};
use crate::protocol::{ClientEncoding, ProtocolError};
use crate::routing::{Classified, Classifier};
use crate::server::statement_name;

/// A statement as the proxy prepares it on servers.
pub struct Statement {
    pub id: u64,
    pub name: Box<str>,
    /// The query text (for EXPLAIN).
    pub query: Arc<str>,
    /// A complete Parse frame that prepares it under `name`.
    pub parse: Bytes,
    /// Classified once, at Parse.
    pub class: Classified,
}

/// Every statement in use by any client, so that identical statements from
/// different clients share one server-side statement. Holds weak references:
/// a statement lives as long as a client or server uses it.
///
/// Identical bytes are the identical statement only in one encoding: a
/// server reads a Parse in the `client_encoding` of the client that sent
/// it, so `caf\xe9` is `café` from a LATIN1 client and invalid from a UTF-8
/// one. Statements with non-ASCII text from clients that do not send UTF-8
/// are kept apart, by encoding.
#[derive(Default)]
pub struct StatementRegistry {
    inner: Mutex<RegistryInner>,
}

/// Statements by Parse body (everything after the statement name).
type ByBody = HashMap<Box<[u8]>, Weak<Statement>>;

#[derive(Default)]
struct RegistryInner {
    /// Statements whose bytes mean what they mean in UTF-8.
    by_body: ByBody,
    /// The others, by the encoding their clients send.
    by_encoding: Vec<(ClientEncoding, ByBody)>,
    next_id: u64,
    /// Size after the last sweep of dead entries.
    swept_at: usize,
}

/// Where a Parse body's statement is kept: `None` for the shared UTF-8
/// space (UTF-8 and SQL_ASCII clients, and ASCII text from anyone).
fn space(encoding: ClientEncoding, query: &[u8]) -> Option<ClientEncoding> {
    (!encoding.is_utf8() && !query.is_ascii()).then_some(encoding)
}

impl RegistryInner {
    fn map(&self, space: Option<ClientEncoding>) -> Option<&ByBody> {
        match space {
            None => Some(&self.by_body),
            Some(e) => self
                .by_encoding
                .iter()
                .find(|(k, _)| *k == e)
                .map(|(_, m)| m),
        }
    }

    fn map_mut(&mut self, space: Option<ClientEncoding>) -> &mut ByBody {
        let Some(e) = space else {
            return &mut self.by_body;
        };
        let i = match self.by_encoding.iter().position(|(k, _)| *k == e) {
            Some(i) => i,
            None => {
                self.by_encoding.push((e, HashMap::new()));
                self.by_encoding.len() - 1
            }
        };
        &mut self.by_encoding[i].1
    }

    fn len(&self) -> usize {
        self.by_body.len() + self.by_encoding.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    fn sweep(&mut self) {
        self.by_body.retain(|_, w| w.strong_count() > 0);
        for (_, m) in &mut self.by_encoding {
            m.retain(|_, w| w.strong_count() > 0);
        }
        self.by_encoding.retain(|(_, m)| !m.is_empty());
        self.swept_at = self.len();
    }
}

impl StatementRegistry {
    /// The existing statement for a Parse message from a client sending
    /// `encoding`, if any.
    pub fn get(&self, encoding: ClientEncoding, msg: &ParseMsg<'_>) -> Option<Arc<Statement>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .map(space(encoding, msg.query))?
            .get(msg.after_name)
            .and_then(Weak::upgrade)
    }

    /// The statement for a Parse body (everything after the client's name:
    /// query, parameter count and types).
    fn get_or_insert(
        &self,
        classifier: &Classifier,
        encoding: ClientEncoding,
        msg: &ParseMsg<'_>,
    ) -> Arc<Statement> {
        if let Some(s) = self.get(encoding, msg) {
            return s;
        }
        let after_name = msg.after_name;
        let space = space(encoding, msg.query);
        // Classify outside the lock: a miss can take tens of microseconds.
        let view = encoding.decode(msg.query);
        let class = classifier.classify(&view.text);
        let class = if view.exact {
            class
        } else {
            class.unreadable(encoding)
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = inner
            .map(space)
            .and_then(|m| m.get(after_name))
            .and_then(Weak::upgrade)
        {
            return s;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let name = statement_name(id);
        // A lone `SET pgsidecar.route` is prepared as its stand-in.
        let stand_in = super::route_setting::stand_in(&class).map(|q| {
            let mut body = q.into_bytes();
            body.push(0);
            body.extend_from_slice(after_name.get(msg.query.len() + 1..).unwrap_or_default());
            body
        });
        let body = stand_in.as_deref().unwrap_or(after_name);
        let mut parse = BytesMut::with_capacity(6 + name.len() + body.len());
        parse.put_u8(fe::PARSE);
        parse.put_u32((4 + name.len() + 1 + body.len()) as u32);
        parse.put_slice(name.as_bytes());
        parse.put_u8(0);
        parse.put_slice(body);
        let statement = Arc::new(Statement {
            id,
            name: name.into_boxed_str(),
            query: view.text.into(),
            parse: parse.freeze(),
            class,
        });
        inner
            .map_mut(space)
            .insert(after_name.into(), Arc::downgrade(&statement));
        if inner.len() > 2 * inner.swept_at.max(1024) {
            inner.sweep();
        }
        statement
    }
}

/// A parsed client Parse message. Its strings are the client's bytes, in
/// its encoding.
pub struct ParseMsg<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// The bytes after the name: query, parameter count, parameter types.
    pub after_name: &'a [u8],
}

pub fn parse_parse(frame: &[u8]) -> Result<ParseMsg<'_>, ProtocolError> {
    let (name, after_name) = frame::cstr_bytes(frame::body(frame))?;
    let (query, _) = frame::cstr_bytes(after_name)?;
    Ok(ParseMsg {
        name,
        query,
        after_name,
    })
}

/// The statement name a Bind refers to, and where the name sits in the body.
pub fn bind_statement(frame: &[u8]) -> Result<(&[u8], usize, usize), ProtocolError> {
    let body = frame::body(frame);
    let (_portal, rest) = frame::cstr_bytes(body)?;
    let start = body.len() - rest.len();
    let (stmt, _) = frame::cstr_bytes(rest)?;
    Ok((stmt, frame::HEADER_LEN + start, stmt.len()))
}

/// The (kind, name) of a Describe or Close message.
pub fn target(frame: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    let body = frame::body(frame);
    let (&kind, rest) = body.split_first().ok_or(ProtocolError::Malformed {
        tag: frame.first().copied().unwrap_or(0),
        what: "missing target kind",
    })?;
    let (name, _) = frame::cstr_bytes(rest)?;
    Ok((kind, name))
}

/// Appends `frame` with the name at `[at, at + len)` replaced by `name`.
pub fn put_renamed(out: &mut BytesMut, frame: &[u8], at: usize, len: usize, name: &str) {
    let new_len = frame.len() - len + name.len();
    out.reserve(new_len);
    out.put_u8(frame[0]);
    out.put_u32((new_len - 1) as u32);
    out.put_slice(&frame[frame::HEADER_LEN..at]);
    out.put_slice(name.as_bytes());
    out.put_slice(&frame[at + len..]);
}

/// Appends a Describe or Close for a statement name.
pub fn put_target(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    out.put_u8(tag);
    out.put_u32((4 + 1 + name.len() + 1) as u32);
    out.put_u8(kind);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

/// One client's prepared statements, by the names it gave them (bytes in
/// its encoding).
#[derive(Default)]
pub struct ClientStatements {
    named: HashMap<Box<[u8]>, Arc<Statement>>,
    /// The client's last unnamed Parse, re-sent if a later Bind of the
    /// unnamed statement lands on a server that never saw it.
    unnamed: Option<(Bytes, Classified, Arc<str>)>,
}

impl ClientStatements {
    /// Records a named Parse from a client sending `encoding` and returns
    /// the shared statement.
    pub fn define(
        &mut self,
        registry: &StatementRegistry,
        classifier: &Classifier,
        encoding: ClientEncoding,
        msg: &ParseMsg<'_>,
    ) -> Arc<Statement> {
        let s = registry.get_or_insert(classifier, encoding, msg);
        self.named.insert(msg.name.into(), s.clone());
        s
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.named.get(name)
    }

    /// Forgets a name (Close or DEALLOCATE); true if it was known.
    pub fn forget(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.named.remove(name)
    }

    pub fn forget_all(&mut self) {
        self.named.clear();
        self.unnamed = None;
    }

    /// Records the client's unnamed Parse and its classification.
    pub fn set_unnamed(&mut self, frame: &[u8], query: &str, class: Classified) {
        self.unnamed = Some((Bytes::copy_from_slice(frame), class, query.into()));
    }

    /// The query text of the last unnamed Parse.
    pub fn unnamed_query(&self) -> Option<&Arc<str>> {
        self.unnamed.as_ref().map(|(_, _, q)| q)
    }

    /// The last unnamed Parse frame.
    pub fn unnamed_parse(&self) -> Option<&Bytes> {
        self.unnamed.as_ref().map(|(f, _, _)| f)
    }

    /// The classification of the last unnamed Parse.
    pub fn unnamed_class(&self) -> Option<&Classified> {
        self.unnamed.as_ref().map(|(_, c, _)| c)
    }

    /// A name this client gave the shared statement `id` (for errors that
    /// name it; a scan, so not for the hot path).
    pub fn client_name(&self, id: u64) -> Option<&[u8]> {
        self.named
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(name, _)| &**name)
    }

    pub fn len(&self) -> usize {
        self.named.len()
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_frame(name: &str, query: &str) -> BytesMut {
        parse_frame_bytes(name.as_bytes(), query.as_bytes())
    }

    fn parse_frame_bytes(name: &[u8], query: &[u8]) -> BytesMut {
        let mut body = Vec::new();
        body.extend_from_slice(name);
        body.push(0);
        body.extend_from_slice(query);
        body.push(0);
        body.extend_from_slice(&0u16.to_be_bytes());
        let mut f = BytesMut::new();
        frame::put_frame(&mut f, fe::PARSE, &body);
        f
    }

    const UTF8: ClientEncoding = ClientEncoding::Utf8;

    #[test]
    fn identical_statements_share_one_server_name() {
        let reg = StatementRegistry::default();
        let c = Classifier::new(&[], 10_000, 100);
        let mut a = ClientStatements::default();
        let mut b = ClientStatements::default();
        let fa = parse_frame("s1", "select 1");
        let fb = parse_frame("other", "select 1");
        let sa = a.define(&reg, &c, UTF8, &parse_parse(&fa).unwrap());
        let sb = b.define(&reg, &c, UTF8, &parse_parse(&fb).unwrap());
        assert_eq!(sa.id, sb.id);
        let fc = parse_frame("s2", "select 2");
        assert_ne!(
            a.define(&reg, &c, UTF8, &parse_parse(&fc).unwrap()).id,
            sa.id
        );
        // The proxy's Parse carries the proxy name and the same query.
        let p = parse_parse(&sa.parse).unwrap();
        assert_eq!(p.name, sa.name.as_bytes());
        assert_eq!(p.query, b"select 1");
    }

    #[test]
    fn the_same_bytes_in_another_encoding_are_another_statement() {
        let reg = StatementRegistry::default();
        let c = Classifier::new(&[], 10_000, 100);
        let (mut a, mut b) = (ClientStatements::default(), ClientStatements::default());
        let latin1 = ClientEncoding::Latin1;
        let f = parse_frame_bytes(b"s1", b"select 'caf\xe9'");
        let sa = a.define(&reg, &c, latin1, &parse_parse(&f).unwrap());
        assert_eq!(&*sa.query, "select 'café'");
        assert_eq!(sa.class.info.route, crate::routing::Route::Read);
        let sb = b.define(&reg, &c, UTF8, &parse_parse(&f).unwrap());
        assert_ne!(sa.id, sb.id);
        assert_eq!(sb.class.info.reason, crate::routing::Reason::Encoding);
        assert!(Arc::ptr_eq(
            &reg.get(latin1, &parse_parse(&f).unwrap()).unwrap(),
            &sa
        ));
        // ASCII text means the same in every encoding: shared.
        let g = parse_frame("s2", "select 1");
        let ga = a.define(&reg, &c, latin1, &parse_parse(&g).unwrap());
        assert_eq!(
            b.define(&reg, &c, UTF8, &parse_parse(&g).unwrap()).id,
            ga.id
        );
        // Names are bytes too.
        assert!(a.get(b"s1").is_some() && a.forget(b"s1").is_some());
    }

    #[test]
    fn bind_is_renamed() {
        let mut body = Vec::new();
        body.extend_from_slice(b"portal\0s1\0");
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut f = BytesMut::new();
        frame::put_frame(&mut f, fe::BIND, &body);
        let (stmt, at, len) = bind_statement(&f).unwrap();
        assert_eq!(stmt, b"s1");
        let mut out = BytesMut::new();
        put_renamed(&mut out, &f, at, len, "pgsidecar_9");
        let (stmt, _, _) = bind_statement(&out).unwrap();
        assert_eq!(stmt, b"pgsidecar_9");
        assert_eq!(frame::complete(&out).unwrap().unwrap().1.len(), out.len());
    }
}
