//! Routing a request that starts a unit of work: find the unit in the
//! client's buffer (a simple Query, or extended-protocol messages up to
//! Sync or Flush), classify it, and ask the routing policy where it runs.

use std::borrow::Cow;
use std::sync::Arc;

use super::carried::Carried;
use super::prepared::{self, ClientStatements};
use super::state::{ClassMemo, ClientState};
use super::tx_modes::{self, Modes};
use crate::cluster::ClusterView;
use crate::config::Config;
use crate::observe::ErrorKind;
use crate::protocol::frame::{self, fe};
use crate::protocol::{ClientEncoding, ProtocolError, SqlState, WireError};
use crate::proxy::Shared;
use crate::routing::policy::{self, Decision, Refusal};
use crate::routing::{Classifier, Hint, Route, StatementInfo, TxEffect};

/// A unit of work found at the start of the client's buffer.
pub struct Unit {
    /// Bytes of the buffer that make up the unit.
    pub len: usize,
    pub infos: Infos,
    pub hint: Option<Hint>,
    /// It ends with Query, Sync or FunctionCall (not Flush): the client
    /// gets a ReadyForQuery at its end.
    pub ends_with_ready: bool,
    /// Something in the unit cannot be classified (a FunctionCall, a Bind
    /// of a statement the proxy does not know): it needs the primary.
    unknown: Option<&'static str>,
}

/// The classifications of a unit's statements. Most units are one
/// statement: it is kept inline, so finding a unit allocates nothing.
///
/// Routing asks only whether every statement reads, the first one that
/// writes (else the first), the first's transaction effect and the tables
/// read: none changes when a classification is listed twice. So one
/// equal to the last listed (the same `Arc`: a Bind of the statement just
/// parsed, as in every unprepared extended query, or Binds of one named
/// statement in a row) is listed once, and such a unit stays inline.
pub enum Infos {
    One([Arc<StatementInfo>; 1]),
    Many(Vec<Arc<StatementInfo>>),
}

impl Default for Infos {
    fn default() -> Self {
        Infos::Many(Vec::new())
    }
}

impl Infos {
    /// Lists `info` unless it is the last listed; cloned only then.
    /// Why by reference: a Bind of the statement just parsed (every
    /// unprepared extended query) lists nothing, and a clone taken and
    /// dropped again was two atomic operations on a count every client
    /// running that statement shares.
    #[inline]
    fn push_ref(&mut self, info: &Arc<StatementInfo>) {
        if self.as_slice().last().is_some_and(|l| Arc::ptr_eq(l, info)) {
            return;
        }
        self.push(info.clone());
    }

    /// Lists again the statement listed at `i` (unless it is the last
    /// listed, as [`push_ref`](Self::push_ref)).
    #[inline]
    fn push_listed(&mut self, i: usize) {
        let slice = self.as_slice();
        let (Some(info), Some(last)) = (slice.get(i), slice.last()) else {
            return;
        };
        if Arc::ptr_eq(info, last) {
            return;
        }
        let info = info.clone();
        self.push(info);
    }

    /// Changed in place; only the step from one to two moves the list
    /// (it ran for every Parse and Bind when the list was taken out and
    /// put back each time). Callers have checked that `info` is not the
    /// last listed.
    fn push(&mut self, info: Arc<StatementInfo>) {
        match self {
            Infos::Many(v) if v.is_empty() => *self = Infos::One([info]),
            Infos::Many(v) => v.push(info),
            Infos::One(_) => {
                if let Infos::One([first]) = std::mem::take(self) {
                    *self = Infos::Many(vec![first, info]);
                }
            }
        }
    }

    pub fn as_slice(&self) -> &[Arc<StatementInfo>] {
        match self {
            Infos::One(one) => one,
            Infos::Many(v) => v,
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Arc<StatementInfo>> {
        self.as_slice().iter()
    }

    pub fn first(&self) -> Option<&Arc<StatementInfo>> {
        self.as_slice().first()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl Unit {
    fn route(&self) -> Route {
        if self.unknown.is_none()
            && !self.infos.is_empty()
            && self.infos.iter().all(|i| i.route == Route::Read)
        {
            Route::Read
        } else {
            Route::Write
        }
    }

    /// The reason label of the statement that decided the route.
    fn reason(&self) -> &'static str {
        if let Some(reason) = self.unknown {
            return reason;
        }
        self.infos
            .iter()
            .find(|i| i.route == Route::Write)
            .or(self.infos.first())
            .map_or("write", |i| i.reason.as_str())
    }

    fn first_tx(&self) -> TxEffect {
        self.infos.first().map_or(TxEffect::None, |i| i.tx)
    }
}

/// Where the unit at the start of `cbuf` ends; `None` if it is not
/// complete yet. Reads frame headers only: nothing is classified until the
/// whole unit is there.
fn unit_len(cbuf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let mut at = 0;
    while let Some((tag, total)) = frame::header(&cbuf[at..])? {
        if cbuf.len() - at < total {
            return Ok(None);
        }
        at += total;
        if matches!(tag, fe::QUERY | fe::SYNC | fe::FLUSH | fe::FUNCTION_CALL) {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// Refuses a malformed Parse or Bind in a unit still incomplete at once,
/// as when units were classified frame by frame (the client would wait
/// otherwise for an answer to a request the proxy cannot read).
fn check_partial(cbuf: &[u8]) -> Result<(), ProtocolError> {
    let mut at = 0;
    while let Some((tag, f)) = frame::complete(&cbuf[at..])? {
        at += f.len();
        match tag {
            fe::PARSE => {
                prepared::parse_parse(f)?;
            }
            fe::BIND => {
                prepared::bind_statement(f)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Finds the unit at the start of `cbuf`; `None` if it is not complete yet.
/// Its text is in the client's `encoding`. Each statement is classified
/// once on its way to the server: a Query at the start of the unit was by
/// the idle path, which left its classification in `carried`; the unit's
/// other statements are classified here, and those the relay needs (a
/// Query's, an unnamed Parse's) are left in `carried` for it, in order.
pub fn find_unit(
    cbuf: &[u8],
    statements: &ClientStatements,
    memo: &mut ClassMemo,
    carried: &mut Carried,
    classifier: &Classifier,
    encoding: ClientEncoding,
) -> Result<Option<Unit>, ProtocolError> {
    let Some(len) = unit_len(cbuf)? else {
        check_partial(cbuf)?;
        return Ok(None);
    };
    // A unit that starts with a Query is that Query (a Query ends a
    // unit): nearly every simple-protocol request. Made whole here, before
    // the walk below builds an empty unit (and drops it again), ~40
    // instructions per such request.
    if cbuf.first() == Some(&fe::QUERY) {
        let f = &cbuf[..len];
        let c = match carried.take(len) {
            Some(c) => c,
            None => memo.classify(classifier, encoding, frame::query_bytes(f)?),
        };
        let unit = Unit {
            len,
            infos: Infos::One([c.info.clone()]),
            hint: c.hint,
            ends_with_ready: true,
            unknown: None,
        };
        carried.push(len, c);
        return Ok(Some(unit));
    }
    let mut at = 0;
    let mut unit = Unit {
        len: 0,
        infos: Infos::default(),
        hint: None,
        ends_with_ready: true,
        unknown: None,
    };
    // Where the unnamed statement parsed within this unit, if any, is
    // listed in `unit.infos`: a Bind of it lists it again without a
    // reference count of its own.
    let mut unnamed: Option<usize> = None;
    for (tag, f) in checked_frames(&cbuf[..len]) {
        at += f.len();
        match tag {
            fe::QUERY => {
                // After other frames (a unit that starts with one is
                // found above): nothing was carried for it.
                let c = match carried.take(f.len()) {
                    Some(c) if at == f.len() => c,
                    _ => memo.classify(classifier, encoding, frame::query_bytes(f)?),
                };
                unit.hint = unit.hint.or(c.hint);
                unit.infos.push_ref(&c.info);
                carried.push(f.len(), c);
                unit.len = at;
                return Ok(Some(unit));
            }
            fe::PARSE => {
                // The client's last unnamed Parse again: its query is found
                // without searching for its end (`last_unnamed_query`).
                let (unnamed_parse, query) = match statements.last_unnamed_query(f, encoding) {
                    Some(query) => (true, query),
                    None => {
                        let msg = prepared::parse_parse(f)?;
                        (msg.name.is_empty(), msg.query)
                    }
                };
                // Borrowed from the memo: only the relay's copy (an unnamed
                // statement's) is cloned.
                let c = memo.classify_ref(classifier, encoding, query);
                unit.hint = unit.hint.or(c.hint);
                unit.infos.push_ref(&c.info);
                if unnamed_parse {
                    unnamed = Some(unit.infos.as_slice().len() - 1);
                    carried.push(f.len(), c.clone());
                }
            }
            fe::BIND => {
                let (name, _, _) = prepared::bind_statement(f)?;
                // A statement parsed in an earlier unit brings its hint.
                let found = match unnamed {
                    Some(i) if name.is_empty() => {
                        unit.infos.push_listed(i);
                        continue;
                    }
                    None if name.is_empty() => {
                        statements.unnamed_class().map(|c| (&c.info, c.hint))
                    }
                    _ => statements.get(name).map(|s| (&s.class.info, s.class.hint)),
                };
                match found {
                    Some((info, hint)) => {
                        unit.hint = unit.hint.or(hint);
                        unit.infos.push_ref(info);
                    }
                    // Not one of ours (SQL-level PREPARE): be safe.
                    None => unit.unknown = Some("unknown_statement"),
                }
            }
            fe::SYNC | fe::FLUSH | fe::FUNCTION_CALL => {
                if tag == fe::FUNCTION_CALL {
                    unit.unknown = Some("function_call");
                }
                unit.ends_with_ready = tag != fe::FLUSH;
                unit.len = at;
                return Ok(Some(unit));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The frames of a unit whose headers [`unit_len`] has checked, as
/// `(tag, whole frame)`.
///
/// Why not `frame::complete` again: it checks each header's length
/// against the protocol's bounds and the buffer a second time (~30
/// instructions a frame, five frames an extended-protocol query); here
/// only what slicing needs is looked at. A frame that does not fit ends
/// the walk, as `complete`'s `None` did (it cannot happen after
/// `unit_len`).
fn checked_frames(unit: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = unit;
    std::iter::from_fn(move || {
        let (&tag, after) = rest.split_first()?;
        let len: [u8; 4] = after.get(..4)?.try_into().ok()?;
        let (f, later) = rest.split_at_checked(u32::from_be_bytes(len) as usize + 1)?;
        rest = later;
        Some((tag, f))
    })
}

/// A routing decision for a unit.
pub struct Routed {
    pub decision: Decision,
    /// The unit starts or continues an explicit transaction: the server is
    /// held until it ends.
    pub transaction: bool,
}

/// The hint of a BEGIN the proxy deferred (`/* pgsidecar:replica */
/// BEGIN`): it applies to the transaction its unit starts.
fn deferred_begin_hint(client: &ClientState) -> Option<Hint> {
    let begin = client.deferred_begin.as_ref()?;
    let text = client
        .params
        .encoding()
        .decode(frame::query_bytes(begin).ok()?);
    Classifier::fingerprint(&text.text).1
}

/// Where the unit runs.
pub fn decide(
    unit: &Unit,
    client: &ClientState,
    shared: &Shared,
    config: &Config,
    cluster: &ClusterView,
    now: super::clock::Tick,
) -> Result<Routed, super::hold::Refused> {
    // The transaction the unit starts, if any, and the modes it asked for.
    let declared = match &client.deferred_begin {
        // Inside a transaction the client opened with a BEGIN the proxy
        // deferred: its modes, and those of the unit's SET TRANSACTION.
        Some(deferred) => {
            let begun = tx_modes::deferred(deferred, client.params.encoding(), &shared.classifier);
            Some(match Modes::of(unit.first_tx()) {
                Some(later) => begun.then(later),
                None => begun,
            })
        }
        None => match unit.first_tx() {
            tx @ TxEffect::Begin { .. } => Modes::of(tx),
            _ => None,
        },
    };
    let tx = declared.map(|d| d.read_only.unwrap_or(client.read_only_by_default()));
    // A hot standby runs no SERIALIZABLE transaction, read only or not;
    // with that session default, no statement at all.
    let serializable = match declared {
        Some(d) => d
            .serializable
            .unwrap_or_else(|| client.params.serializable_by_default()),
        None => client.params.serializable_by_default(),
    };
    let route = match tx {
        Some(true) => Route::Read,
        Some(false) => Route::Write,
        None => unit.route(),
    };
    let tables = tables_read(unit.infos.as_slice());
    let request = policy::Request {
        route,
        reason: if tx.is_some() {
            "transaction"
        } else {
            unit.reason()
        },
        hint: deferred_begin_hint(client).or(unit.hint),
        tables_read: &tables,
        read_only_transaction: tx == Some(true),
        undeclared_transaction: tx == Some(false)
            && declared.is_some_and(|d| d.read_only.is_none()),
        serializable,
        now,
    };
    policy::decide(
        &request,
        &client.routing,
        &shared.write_log,
        cluster,
        &config.routing,
    )
    .map(|decision| Routed {
        decision,
        transaction: tx.is_some(),
    })
    .map_err(|refusal| super::hold::Refused {
        // `routing`: the client's own hint or setting sent it where it
        // cannot run; `no_node`: no node could take it.
        kind: match refusal {
            Refusal::WriteOnReplica | Refusal::SerializableOnReplica => ErrorKind::Routing,
            Refusal::NoReplica(_) => ErrorKind::NoNode,
        },
        error: refusal_error(refusal),
    })
}

/// The tables a unit's statements read, for read-your-writes, which asks
/// only when any of them was last written: a table listed twice changes
/// nothing. Most units have one list (one statement, or statements that
/// read the same tables or none, as a BEGIN): it is used as is; only
/// statements reading different tables have theirs collected.
fn tables_read(infos: &[Arc<StatementInfo>]) -> Cow<'_, [Arc<str>]> {
    let mut lists = infos
        .iter()
        .map(|i| &*i.tables_read)
        .filter(|t| !t.is_empty());
    let first = lists.next().unwrap_or_default();
    if lists.all(|t| t == first) {
        return Cow::Borrowed(first);
    }
    Cow::Owned(
        infos
            .iter()
            .flat_map(|i| i.tables_read.iter().cloned())
            .collect(),
    )
}

/// What the client is told when the routing policy refuses its request.
fn refusal_error(refusal: Refusal) -> WireError {
    match refusal {
        Refusal::WriteOnReplica => WireError::error(
            SqlState::READ_ONLY_TRANSACTION,
            "this statement writes, but it was sent to a replica (pgsidecar:replica hint or pgsidecar.route = 'replica')",
        )
        .with_hint("remove the hint, or SET pgsidecar.route = 'auto'"),
        Refusal::SerializableOnReplica => WireError::error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "a SERIALIZABLE transaction cannot run on a replica (a hot standby), but it was sent to one (pgsidecar:replica hint or pgsidecar.route = 'replica')",
        )
        .with_hint("use ISOLATION LEVEL REPEATABLE READ for reads on a replica, or remove the hint"),
        Refusal::NoReplica(why) => WireError::error(
            SqlState::CONNECTION_FAILURE,
            format!(
                "no replica can serve this read: {why} ({}), and fallback_to_primary is off",
                why.as_str()
            ),
        )
        .with_hint("set routing.fallback_to_primary = true, or hint the read /* pgsidecar:primary */"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(c: &Classifier, sql: &str) -> Arc<StatementInfo> {
        c.classify(sql).info
    }

    fn names(tables: &[Arc<str>]) -> Vec<&str> {
        tables.iter().map(|t| &**t).collect()
    }

    #[test]
    fn a_statement_bound_after_its_parse_is_listed_once() {
        let c = Classifier::new(&[], 10_000, 100);
        let read = info(&c, "select * from a");
        // Parse then Bind of the same statement: inline, one entry.
        let mut infos = Infos::default();
        infos.push_ref(&read);
        infos.push_ref(&read);
        assert!(matches!(infos, Infos::One(_)));
        // Another statement, then the first again: all three listed, in
        // order (the first that writes gives the reason).
        let write = info(&c, "delete from b");
        infos.push_ref(&write);
        infos.push_ref(&read);
        let listed: Vec<_> = infos.iter().map(|i| i.route).collect();
        assert_eq!(listed, [Route::Read, Route::Write, Route::Read]);
    }

    fn frame_of(tag: u8, body: &[&[u8]]) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        frame::put_frame(&mut out, tag, &body.concat());
        out.to_vec()
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        frame_of(
            fe::PARSE,
            &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"],
        )
    }

    fn bind(name: &str) -> Vec<u8> {
        frame_of(fe::BIND, &[b"\0", name.as_bytes(), b"\0\0\0\0\0\0\0"])
    }

    #[test]
    fn a_bind_of_the_unnamed_statement_lists_it_again_after_another() {
        let c = Classifier::new(&[], 10_000, 100);
        let (statements, mut memo, mut carried) = Default::default();
        let describe = frame_of(fe::DESCRIBE, &[b"P\0"]);
        let execute = frame_of(fe::EXECUTE, &[b"\0\0\0\0\0"]);
        let sync = frame_of(fe::SYNC, &[]);
        let frames = [
            parse("", "/* pgsidecar:primary */ select * from a"),
            bind(""),
            describe,
            execute.clone(),
            parse("s", "delete from b"),
            bind(""),
            execute,
            sync,
        ];
        let buf = frames.concat();
        let find = |buf: &[u8], memo: &mut ClassMemo, carried: &mut Carried| {
            find_unit(buf, &statements, memo, carried, &c, ClientEncoding::Utf8)
        };
        // Incomplete: nothing yet.
        let partial = &buf[..buf.len() - 1];
        assert!(find(partial, &mut memo, &mut carried).unwrap().is_none());
        let unit = find(&buf, &mut memo, &mut carried).unwrap().expect("whole");
        assert_eq!(unit.len, buf.len());
        assert!(unit.ends_with_ready && unit.unknown.is_none());
        assert_eq!(unit.hint, Some(Hint::Primary));
        let listed: Vec<_> = unit.infos.iter().map(|i| i.route).collect();
        assert_eq!(listed, [Route::Read, Route::Write, Route::Read]);
        assert!(Arc::ptr_eq(
            &unit.infos.as_slice()[0],
            &unit.infos.as_slice()[2]
        ));
        // The unnamed Parse's classification waits for the relay; the
        // named one's does not.
        let first = carried.take(frames[0].len()).expect("carried");
        assert!(Arc::ptr_eq(&first.info, &unit.infos.as_slice()[0]));
        assert!(carried.take(frames[4].len()).is_none());
        // A Bind of a statement named nowhere: the primary, to be safe.
        let unknown = [bind("nowhere"), frame_of(fe::SYNC, &[])].concat();
        let unit = find(&unknown, &mut memo, &mut carried).unwrap().unwrap();
        assert_eq!(unit.reason(), "unknown_statement");
        assert_eq!(unit.route(), Route::Write);
    }

    #[test]
    fn a_units_tables_are_collected_only_when_they_differ() {
        let c = Classifier::new(&[], 10_000, 100);
        let a = info(&c, "select * from a");
        let begin = info(&c, "begin");
        let b = info(&c, "select * from b");
        let one = tables_read(std::slice::from_ref(&a));
        assert!(matches!(one, Cow::Borrowed(_)));
        assert_eq!(names(&one), ["a"]);
        // A BEGIN reads nothing; the same statement twice reads the same.
        let units = [begin.clone(), a.clone(), info(&c, "select * from a")];
        let same = tables_read(&units);
        assert!(matches!(same, Cow::Borrowed(_)));
        assert_eq!(names(&same), ["a"]);
        assert!(tables_read(std::slice::from_ref(&begin)).is_empty());
        assert!(tables_read(&[]).is_empty());
        // Different tables: all of them.
        let units = [a, begin, b];
        let both = tables_read(&units);
        assert_eq!(names(&both), ["a", "b"]);
    }
}
