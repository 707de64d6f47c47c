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
use crate::routing::{Classified, Classifier, Quoting};
use crate::server::statement_name;

use super::strings;

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
/// Identical bytes are the identical statement only when read the same
/// way. A server reads a Parse in the `client_encoding` of the client that
/// sent it, so `caf\xe9` is `café` from a LATIN1 client and invalid from a
/// UTF-8 one; and it lexes strings in the session's
/// `standard_conforming_strings` mode, so `'\'` is a whole literal in one
/// mode and an unterminated one in the other. Statements are kept apart by
/// [`Space`]: everything UTF-8-readable in standard mode (nearly every
/// statement) shares one map; the rest are in maps of their own.
#[derive(Default)]
pub struct StatementRegistry {
    inner: Mutex<RegistryInner>,
}

/// Statements by Parse body (everything after the statement name).
type ByBody = HashMap<Box<[u8]>, Weak<Statement>>;

#[derive(Default)]
struct RegistryInner {
    /// Statements of the shared space ([`Space::SHARED`]).
    by_body: ByBody,
    /// The others, by space (few: one per encoding and string mode in use).
    by_space: Vec<(Space, ByBody)>,
    next_id: u64,
    /// Size after the last sweep of dead entries.
    swept_at: usize,
}

/// How a Parse body's bytes are read, as far as it matters to what they
/// mean: the same bytes in two spaces may be two different statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Space {
    /// `None` for bytes that mean what they mean in UTF-8 (from UTF-8 and
    /// SQL_ASCII clients, and ASCII text from anyone); else the client's
    /// encoding.
    encoding: Option<ClientEncoding>,
    /// How its strings were lexed: `Some(Standard)` also for text both
    /// modes read alike (no backslash); `None` for text read while the mode
    /// was not known for sure (classified "unsure").
    strings: Option<Quoting>,
}

impl Space {
    /// UTF-8-readable text read in standard mode: nearly every statement.
    const SHARED: Space = Space {
        encoding: None,
        strings: Some(Quoting::Standard),
    };
}

/// The space of a Parse query from a client sending `encoding` whose
/// strings are read in mode `reading` (`None`: unsure). The common case (a
/// UTF-8 client in standard mode) reads no byte of the query.
fn space(encoding: ClientEncoding, reading: Option<Quoting>, query: &[u8]) -> Space {
    let strings = match reading {
        Some(Quoting::Standard) => Some(Quoting::Standard),
        // Without a backslash byte the decoded text has none either (every
        // decoder maps U+005C only from 0x5C): both modes read it alike.
        _ if !query.contains(&b'\\') => Some(Quoting::Standard),
        other => other,
    };
    Space {
        encoding: (!encoding.is_utf8() && !query.is_ascii()).then_some(encoding),
        strings,
    }
}

impl RegistryInner {
    fn map(&self, space: Space) -> Option<&ByBody> {
        if space == Space::SHARED {
            return Some(&self.by_body);
        }
        self.by_space
            .iter()
            .find(|(k, _)| *k == space)
            .map(|(_, m)| m)
    }

    fn map_mut(&mut self, space: Space) -> &mut ByBody {
        if space == Space::SHARED {
            return &mut self.by_body;
        }
        let i = match self.by_space.iter().position(|(k, _)| *k == space) {
            Some(i) => i,
            None => {
                self.by_space.push((space, HashMap::new()));
                self.by_space.len() - 1
            }
        };
        &mut self.by_space[i].1
    }

    fn len(&self) -> usize {
        self.by_body.len() + self.by_space.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    fn sweep(&mut self) {
        self.by_body.retain(|_, w| w.strong_count() > 0);
        for (_, m) in &mut self.by_space {
            m.retain(|_, w| w.strong_count() > 0);
        }
        self.by_space.retain(|(_, m)| !m.is_empty());
        self.swept_at = self.len();
    }
}

impl StatementRegistry {
    /// The existing statement for a Parse message from a client sending
    /// `encoding` and reading strings in mode `reading`, if any.
    pub fn get(
        &self,
        encoding: ClientEncoding,
        reading: Option<Quoting>,
        msg: &ParseMsg<'_>,
    ) -> Option<Arc<Statement>> {
        let space = space(encoding, reading, msg.query);
        let inner = crate::sync::lock(&self.inner);
        inner
            .map(space)?
            .get(msg.after_name)
            .and_then(Weak::upgrade)
    }

    /// The statement for a Parse body (everything after the client's name:
    /// query, parameter count and types), read in `encoding` with strings
    /// in mode `reading` (`None`: not known for sure).
    fn get_or_insert(
        &self,
        classifier: &Classifier,
        encoding: ClientEncoding,
        reading: Option<Quoting>,
        msg: &ParseMsg<'_>,
    ) -> Arc<Statement> {
        if let Some(s) = self.get(encoding, reading, msg) {
            return s;
        }
        let after_name = msg.after_name;
        let space = space(encoding, reading, msg.query);
        // Classify outside the lock: a miss can take tens of microseconds.
        let view = encoding.decode(msg.query);
        let class = strings::classify(classifier, &view.text, reading);
        let class = if view.exact {
            class
        } else {
            class.unreadable(encoding)
        };
        let mut inner = crate::sync::lock(&self.inner);
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
    /// How the kept unnamed Parse was read, when it is the client's own
    /// frame (not a stand-in): the `client_encoding` its text was read in
    /// and its query's length in bytes. See
    /// [`last_unnamed_query`](Self::last_unnamed_query).
    unnamed_read: Option<(ClientEncoding, usize)>,
}

impl ClientStatements {
    /// Records a named Parse from a client sending `encoding`, whose
    /// server reads strings in mode `reading` (`None`: not known for sure),
    /// and returns the shared statement.
    pub fn define(
        &mut self,
        registry: &StatementRegistry,
        classifier: &Classifier,
        encoding: ClientEncoding,
        reading: Option<Quoting>,
        msg: &ParseMsg<'_>,
    ) -> Arc<Statement> {
        let s = registry.get_or_insert(classifier, encoding, reading, msg);
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
        self.unnamed_read = None;
    }

    /// Records the client's unnamed Parse and its classification. The
    /// frame and text are copied (the client's buffer is reused for the
    /// next request), unless they are those of the last unnamed Parse: a
    /// client re-parsing the same query each time (`pgbench -M extended`,
    /// drivers' unprepared queries) keeps its copies instead of allocating
    /// two per transaction. The text is compared too, as the same bytes
    /// read in another `client_encoding` are another text.
    ///
    /// Updated in place: taking the entry out and putting a new one back
    /// moved it twice per Parse.
    ///
    /// `read`: the encoding `query` was read in from `frame` and the
    /// length of its bytes there, when `frame` is the client's own Parse
    /// of the unnamed statement (`None` for a stand-in).
    pub fn set_unnamed(
        &mut self,
        frame: &[u8],
        query: &str,
        class: Classified,
        read: Option<(ClientEncoding, usize)>,
    ) {
        self.unnamed_read = read;
        match &mut self.unnamed {
            Some((f, c, q)) => {
                if **f != *frame {
                    *f = Bytes::copy_from_slice(frame);
                }
                if **q != *query {
                    *q = query.into();
                }
                *c = class;
            }
            None => self.unnamed = Some((Bytes::copy_from_slice(frame), class, query.into())),
        }
    }

    /// The query bytes of `frame` when it is the client's last unnamed
    /// Parse again, byte for byte, and (for the relay, which reuses its
    /// text) read in the same `encoding`.
    ///
    /// Why: a client re-parsing one statement (`pgbench -M extended`,
    /// drivers' unprepared queries) sends the same Parse every request,
    /// and its query's end was searched for twice (routing, relay: ~70
    /// instructions each) and its text compared three times. One
    /// comparison of the frame with the kept copy (which `set_unnamed`
    /// made anyway) tells where the query is.
    #[inline]
    pub fn last_unnamed_query<'f>(
        &self,
        frame: &'f [u8],
        encoding: ClientEncoding,
    ) -> Option<&'f [u8]> {
        let (read_in, len) = self.unnamed_read?;
        let (kept, _, _) = self.unnamed.as_ref()?;
        if read_in != encoding || **kept != *frame {
            return None;
        }
        // An empty name (one NUL), then the query: as `parse_parse` found
        // them in the same bytes.
        let at = frame::HEADER_LEN + 1;
        frame.get(at..at + len)
    }

    /// The unnamed Parse is [`last_unnamed_query`](Self::last_unnamed_query)'s
    /// again: only its classification is replaced (`set_unnamed` would
    /// find its frame and text the same, after comparing both).
    #[inline]
    pub fn reclassify_unnamed(&mut self, class: Classified) {
        if let Some((_, c, _)) = &mut self.unnamed {
            *c = class;
        }
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
    const STD: Option<Quoting> = Some(Quoting::Standard);

    #[test]
    fn identical_statements_share_one_server_name() {
        let reg = StatementRegistry::default();
        let c = Classifier::new(&[], 10_000, 100);
        let mut a = ClientStatements::default();
        let mut b = ClientStatements::default();
        let fa = parse_frame("s1", "select 1");
        let fb = parse_frame("other", "select 1");
        let sa = a.define(&reg, &c, UTF8, STD, &parse_parse(&fa).unwrap());
        let sb = b.define(&reg, &c, UTF8, STD, &parse_parse(&fb).unwrap());
        assert_eq!(sa.id, sb.id);
        let fc = parse_frame("s2", "select 2");
        assert_ne!(
            a.define(&reg, &c, UTF8, STD, &parse_parse(&fc).unwrap()).id,
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
        let sa = a.define(&reg, &c, latin1, STD, &parse_parse(&f).unwrap());
        assert_eq!(&*sa.query, "select 'café'");
        assert_eq!(sa.class.info.route, crate::routing::Route::Read);
        let sb = b.define(&reg, &c, UTF8, STD, &parse_parse(&f).unwrap());
        assert_ne!(sa.id, sb.id);
        assert_eq!(sb.class.info.reason, crate::routing::Reason::Encoding);
        assert!(Arc::ptr_eq(
            &reg.get(latin1, STD, &parse_parse(&f).unwrap()).unwrap(),
            &sa
        ));
        // ASCII text means the same in every encoding: shared.
        let g = parse_frame("s2", "select 1");
        let ga = a.define(&reg, &c, latin1, STD, &parse_parse(&g).unwrap());
        assert_eq!(
            b.define(&reg, &c, UTF8, STD, &parse_parse(&g).unwrap()).id,
            ga.id
        );
        // Names are bytes too.
        assert!(a.get(b"s1").is_some() && a.forget(b"s1").is_some());
    }

    #[test]
    fn the_same_bytes_in_another_string_mode_are_another_statement() {
        use crate::routing::{Route, UNSURE_TEXT};
        let reg = StatementRegistry::default();
        let c = Classifier::new(&[], 10_000, 100);
        let mut a = ClientStatements::default();
        let bs = Some(Quoting::Backslash);
        let define = |a: &mut ClientStatements, e, q, query: &[u8]| {
            a.define(
                &reg,
                &c,
                e,
                q,
                &parse_parse(&parse_frame_bytes(b"s", query)).unwrap(),
            )
        };
        // One literal with backslash escapes, two (and a DELETE) without.
        let hidden = br"select '\' , ' ; delete from t; --'";
        let standard = define(&mut a, UTF8, STD, hidden);
        assert_eq!(standard.class.info.route, Route::Read);
        let backslash = define(&mut a, UTF8, bs, hidden);
        assert_ne!(backslash.id, standard.id);
        assert_eq!(backslash.class.info.route, Route::Write);
        assert_eq!(backslash.class.info.statement_count, 2);
        let unsure = define(&mut a, UTF8, None, hidden);
        assert!(unsure.id != standard.id && unsure.id != backslash.id);
        assert_eq!(&*unsure.class.info.normalized, UNSURE_TEXT);
        assert_eq!(unsure.class.info.route, Route::Write);
        // Each is found again in its own space only.
        let msg = parse_frame_bytes(b"s", hidden);
        let get = |q| reg.get(UTF8, q, &parse_parse(&msg).unwrap()).unwrap().id;
        assert_eq!(
            (get(STD), get(bs), get(None)),
            (standard.id, backslash.id, unsure.id)
        );
        // Without a backslash both modes read alike: shared.
        let plain = b"select 'x' from t";
        let p = define(&mut a, UTF8, STD, plain).id;
        assert_eq!(define(&mut a, UTF8, bs, plain).id, p);
        assert_eq!(define(&mut a, UTF8, None, plain).id, p);
        // Both apart at once: LATIN1 text read with backslash escapes.
        let latin1 = ClientEncoding::Latin1;
        let both = b"select 'caf\xe9\\' , ' ; delete from t; --'";
        let lb = define(&mut a, latin1, bs, both);
        assert_eq!(lb.class.info.route, Route::Write);
        assert_eq!(lb.class.info.statement_count, 2);
        let ls = define(&mut a, latin1, STD, both);
        assert_eq!(ls.class.info.route, Route::Read);
        let ub = define(&mut a, UTF8, bs, both);
        assert_eq!(ub.class.info.reason, crate::routing::Reason::Encoding);
        assert!(lb.id != ls.id && lb.id != ub.id && ls.id != ub.id);
    }

    #[test]
    fn the_same_unnamed_parse_keeps_its_copies() {
        let c = Classifier::new(&[], 10_000, 100);
        let mut a = ClientStatements::default();
        let f = parse_frame("", "select 1");
        a.set_unnamed(&f, "select 1", c.classify("select 1"), None);
        let (frame, query) = (
            a.unnamed_parse().unwrap().clone(),
            a.unnamed_query().unwrap().clone(),
        );
        // Again, same bytes: the copies made the first time stay.
        a.set_unnamed(&f, "select 1", c.classify("select 1"), None);
        assert_eq!(a.unnamed_parse().unwrap().as_ptr(), frame.as_ptr());
        assert!(Arc::ptr_eq(a.unnamed_query().unwrap(), &query));
        // The same bytes read as another text (another client_encoding):
        // the frame stays, the text is the new one.
        a.set_unnamed(&f, "select 2", c.classify("delete from t"), None);
        assert_eq!(a.unnamed_parse().unwrap().as_ptr(), frame.as_ptr());
        assert_eq!(&**a.unnamed_query().unwrap(), "select 2");
        // The classification is always the new one.
        assert_eq!(
            a.unnamed_class().unwrap().info.route,
            crate::routing::Route::Write
        );
        // Another Parse: both are replaced.
        let g = parse_frame("", "select 3");
        a.set_unnamed(&g, "select 3", c.classify("select 3"), None);
        assert_eq!(&a.unnamed_parse().unwrap()[..], &g[..]);
        assert_eq!(&**a.unnamed_query().unwrap(), "select 3");
    }

    #[test]
    fn the_last_unnamed_parse_is_found_again_only_as_it_was_read() {
        let c = Classifier::new(&[], 10_000, 100);
        let mut a = ClientStatements::default();
        let f = parse_frame("", "select 1");
        let latin1 = ClientEncoding::from_name("LATIN1").expect("LATIN1");
        // A stand-in (no reading given) is never found again.
        a.set_unnamed(&f, "select 1", c.classify("select 1"), None);
        assert_eq!(a.last_unnamed_query(&f, UTF8), None);
        a.set_unnamed(&f, "select 1", c.classify("select 1"), Some((UTF8, 8)));
        // The same bytes: the query is where `parse_parse` finds it.
        let again = parse_frame("", "select 1");
        let query = a.last_unnamed_query(&again, UTF8).expect("found again");
        assert_eq!(query, parse_parse(&again).unwrap().query);
        // Read in another encoding, other bytes, a named Parse: not found.
        assert_eq!(a.last_unnamed_query(&again, latin1), None);
        assert_eq!(
            a.last_unnamed_query(&parse_frame("", "select 2"), UTF8),
            None
        );
        assert_eq!(
            a.last_unnamed_query(&parse_frame("s", "select 1"), UTF8),
            None
        );
        // Only the classification changes.
        a.reclassify_unnamed(c.classify("delete from t"));
        assert_eq!(
            a.unnamed_class().unwrap().info.route,
            crate::routing::Route::Write
        );
        assert!(a.last_unnamed_query(&again, UTF8).is_some());
        a.forget_all();
        assert_eq!(a.last_unnamed_query(&again, UTF8), None);
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
