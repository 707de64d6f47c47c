//! Named prepared statements in transaction mode. A client's statement
//! names map to proxy-wide statements, one per distinct (query text,
//! parameter types), named `pgsidecar_<id>` on every server. The frames the
//! proxy needs (its own Parse, a client's Bind with the name replaced) are
//! built here.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::ProtocolError;
use crate::protocol::frame::{self, fe};
use crate::routing::{Classified, Classifier, Quoting};
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
#[derive(Default)]
pub struct StatementRegistry {
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    by_body: HashMap<Box<[u8]>, Weak<Statement>>,
    next_id: u64,
    /// Size after the last sweep of dead entries.
    swept_at: usize,
}

impl StatementRegistry {
    /// The existing statement for a Parse body, if any.
    pub fn get(&self, after_name: &[u8]) -> Option<Arc<Statement>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_body.get(after_name).and_then(Weak::upgrade)
    }

    /// The statement for a Parse body (everything after the client's name:
    /// query, parameter count and types).
    /// `reading`: how the client's server reads strings (`None`: not
    /// known for sure). A text with a backslash means something else in
    /// each mode, so it is a different statement in each.
    fn get_or_insert(
        &self,
        classifier: &Classifier,
        query: &str,
        after_name: &[u8],
        reading: Option<Quoting>,
    ) -> Arc<Statement> {
        let key = match reading {
            Some(Quoting::Standard) => Cow::Borrowed(after_name),
            _ if !query.contains('\\') => Cow::Borrowed(after_name),
            // No query starts with 0xFF (not UTF-8): no clash with a body.
            Some(Quoting::Backslash) => Cow::Owned([&[0xFF, 1], after_name].concat()),
            None => Cow::Owned([&[0xFF, 2], after_name].concat()),
        };
        if let Some(s) = self.get(&key) {
            return s;
        }
        // Classify outside the lock: a miss can take tens of microseconds.
        let class = match reading {
            Some(quoting) => classifier.classify_in(query, quoting),
            None => classifier.classify_unsure(query),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = inner.by_body.get(&*key).and_then(Weak::upgrade) {
            return s;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let name = statement_name(id);
        // A lone `SET pgsidecar.route` is prepared as its stand-in.
        let stand_in = super::route_setting::stand_in(&class).map(|q| {
            let mut body = q.into_bytes();
            body.push(0);
            body.extend_from_slice(after_name.get(query.len() + 1..).unwrap_or_default());
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
            query: query.into(),
            parse: parse.freeze(),
            class,
        });
        inner
            .by_body
            .insert((*key).into(), Arc::downgrade(&statement));
        if inner.by_body.len() > 2 * inner.swept_at.max(1024) {
            inner.by_body.retain(|_, w| w.strong_count() > 0);
            inner.swept_at = inner.by_body.len();
        }
        statement
    }
}

/// A parsed client Parse message.
pub struct ParseMsg<'a> {
    pub name: &'a str,
    pub query: &'a str,
    /// The bytes after the name: query, parameter count, parameter types.
    pub after_name: &'a [u8],
}

pub fn parse_parse(frame: &[u8]) -> Result<ParseMsg<'_>, ProtocolError> {
    let (name, after_name) = frame::cstr(frame::body(frame))?;
    let (query, _) = frame::cstr(after_name)?;
    Ok(ParseMsg {
        name,
        query,
        after_name,
    })
}

/// The statement name a Bind refers to, and where the name sits in the body.
pub fn bind_statement(frame: &[u8]) -> Result<(&str, usize, usize), ProtocolError> {
    let body = frame::body(frame);
    let (_portal, rest) = frame::cstr(body)?;
    let start = body.len() - rest.len();
    let (stmt, _) = frame::cstr(rest)?;
    Ok((stmt, frame::HEADER_LEN + start, stmt.len()))
}

/// The (kind, name) of a Describe or Close message.
pub fn target(frame: &[u8]) -> Result<(u8, &str), ProtocolError> {
    let body = frame::body(frame);
    let (&kind, rest) = body.split_first().ok_or(ProtocolError::Malformed {
        tag: frame.first().copied().unwrap_or(0),
        what: "missing target kind",
    })?;
    let (name, _) = frame::cstr(rest)?;
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

/// One client's prepared statements.
#[derive(Default)]
pub struct ClientStatements {
    named: HashMap<Box<str>, Arc<Statement>>,
    /// The client's last unnamed Parse, re-sent if a later Bind of the
    /// unnamed statement lands on a server that never saw it.
    unnamed: Option<(Bytes, Classified, Arc<str>)>,
}

impl ClientStatements {
    /// Records a named Parse and returns the shared statement.
    pub fn define(
        &mut self,
        registry: &StatementRegistry,
        classifier: &Classifier,
        msg: &ParseMsg<'_>,
        reading: Option<Quoting>,
    ) -> Arc<Statement> {
        let s = registry.get_or_insert(classifier, msg.query, msg.after_name, reading);
        self.named.insert(msg.name.into(), s.clone());
        s
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.named.get(name)
    }

    /// Forgets a name (Close or DEALLOCATE); true if it was known.
    pub fn forget(&mut self, name: &str) -> Option<Arc<Statement>> {
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
        let mut body = Vec::new();
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(query.as_bytes());
        body.push(0);
        body.extend_from_slice(&0u16.to_be_bytes());
        let mut f = BytesMut::new();
        frame::put_frame(&mut f, fe::PARSE, &body);
        f
    }

    #[test]
    fn identical_statements_share_one_server_name() {
        let reg = StatementRegistry::default();
        let c = Classifier::new(&[], 10_000, 100);
        let mut a = ClientStatements::default();
        let mut b = ClientStatements::default();
        let fa = parse_frame("s1", "select 1");
        let fb = parse_frame("other", "select 1");
        let sa = a.define(
            &reg,
            &c,
            &parse_parse(&fa).unwrap(),
            Some(Quoting::Standard),
        );
        let sb = b.define(
            &reg,
            &c,
            &parse_parse(&fb).unwrap(),
            Some(Quoting::Standard),
        );
        assert_eq!(sa.id, sb.id);
        let fc = parse_frame("s2", "select 2");
        assert_ne!(
            a.define(
                &reg,
                &c,
                &parse_parse(&fc).unwrap(),
                Some(Quoting::Standard)
            )
            .id,
            sa.id
        );
        // The proxy's Parse carries the proxy name and the same query.
        let p = parse_parse(&sa.parse).unwrap();
        assert_eq!(p.name, &*sa.name);
        assert_eq!(p.query, "select 1");
    }

    #[test]
    fn bind_is_renamed() {
        let mut body = Vec::new();
        body.extend_from_slice(b"portal\0s1\0");
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut f = BytesMut::new();
        frame::put_frame(&mut f, fe::BIND, &body);
        let (stmt, at, len) = bind_statement(&f).unwrap();
        assert_eq!(stmt, "s1");
        let mut out = BytesMut::new();
        put_renamed(&mut out, &f, at, len, "pgsidecar_9");
        let (stmt, _, _) = bind_statement(&out).unwrap();
        assert_eq!(stmt, "pgsidecar_9");
        assert_eq!(frame::complete(&out).unwrap().unwrap().1.len(), out.len());
    }
}
