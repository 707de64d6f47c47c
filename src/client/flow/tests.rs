//! The flow driven without Postgres: client frames in, the bytes it sends
//! the server and the client checked, server answers made up.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};

use super::{FlowEnv, SessionFlow};
use crate::client::expect::Expectations;
use crate::client::fleet_announce::Announced;
use crate::client::hold_state::HoldState;
use crate::client::params::{ClientParams, ServerParamsState};
use crate::client::prepared::StatementRegistry;
use crate::client::proxy_show;
use crate::client::registry::{ClientAddr, ClientInfo};
use crate::client::relay::{ClientStep, Flow, Outbox, ServerStep};
use crate::client::state::ClientState;
use crate::client::tx_status::TxStatus;
use crate::cluster::Role;
use crate::config::{NodeAddr, PoolMode};
use crate::observe::QueryEvent;
use crate::protocol::frame::{self, be, fe};
use crate::routing::policy::ClientRouting;
use crate::routing::{Classified, Classifier, ProxyParam, RouteSetting};
use crate::server::{PreparedOnServer, ServerState};

/// The proxy's parts, as a test sees them.
struct TestEnv {
    classifier: Classifier,
    statements: StatementRegistry,
    node: NodeAddr,
    /// Finished statements: normalised text, rows, SQLSTATE.
    recorded: RefCell<Vec<(String, u64, Option<String>)>>,
    transactions: Cell<u32>,
    prepared_ok: RefCell<Vec<u64>>,
}

impl TestEnv {
    fn new() -> TestEnv {
        TestEnv {
            classifier: Classifier::new(&[], 10_000, 0),
            statements: StatementRegistry::default(),
            node: NodeAddr {
                host: "primary".into(),
                port: 5432,
            },
            recorded: RefCell::default(),
            transactions: Cell::new(0),
            prepared_ok: RefCell::default(),
        }
    }
}

impl FlowEnv for TestEnv {
    fn classifier(&self) -> &Classifier {
        &self.classifier
    }
    fn statements(&self) -> &StatementRegistry {
        &self.statements
    }
    fn wants_sql(&self) -> bool {
        false
    }
    fn record(&self, event: &QueryEvent<'_>) {
        self.recorded.borrow_mut().push((
            event.normalized.to_string(),
            event.rows,
            event.error.map(str::to_string),
        ));
    }
    fn transaction(&self) {
        self.transactions.set(self.transactions.get() + 1);
    }
    fn committed(&self, _: &[Arc<str>], _: Instant, _: &mut ClientRouting) -> Option<Announced> {
        None
    }
    fn show(&self, _: ProxyParam, _: &ClientState, _: TxStatus) -> proxy_show::Answer {
        unreachable!("no SHOW in these tests")
    }
    fn show_stand_in(&self, _: &Classified, _: &ClientState, _: Role) -> Option<String> {
        None
    }
    fn statement_ok(&self, id: u64) {
        self.prepared_ok.borrow_mut().push(id);
    }
    fn node_addr(&self) -> &NodeAddr {
        &self.node
    }
    fn server_user(&self) -> &str {
        "app"
    }
}

/// Everything a flow borrows, owned by the test.
struct Parts {
    env: TestEnv,
    expect: Expectations,
    client: ClientState,
    hold: HoldState,
    server: ServerState,
    who: ClientInfo,
}

impl Parts {
    fn new() -> Parts {
        Parts {
            env: TestEnv::new(),
            expect: Expectations::default(),
            client: ClientState::new(ClientParams::default()),
            hold: HoldState::new(0, Role::Primary),
            server: ServerState {
                prepared: PreparedOnServer::new(16),
                params: ServerParamsState::default(),
            },
            who: ClientInfo {
                user: "app".into(),
                database: "db".into(),
                application_name: String::new(),
                addr: ClientAddr::Unix { port: 5432 },
                connected_at: SystemTime::now(),
            },
        }
    }

    fn flow(&mut self) -> SessionFlow<'_, TestEnv> {
        SessionFlow {
            expect: &mut self.expect,
            client: &mut self.client,
            hold: &mut self.hold,
            server: &mut self.server,
            env: &self.env,
            mode: PoolMode::Transaction,
            who: &self.who,
        }
    }

    /// Client frames through the flow: what reaches the server, and the
    /// client's replies made by the proxy.
    fn client(&mut self, frames: &[Bytes]) -> (BytesMut, Vec<Bytes>) {
        let mut to_server = BytesMut::new();
        let mut to_client = Outbox::default();
        let mut flow = self.flow();
        for f in frames {
            let step = flow
                .client_frame(f[0], f, &mut to_server, &mut to_client)
                .expect("a valid frame");
            assert!(matches!(step, ClientStep::Continue));
        }
        let replies = to_client.drain().into_iter().map(Option::unwrap).collect();
        (to_server, replies)
    }

    /// A server frame through the flow: its step, what the flow sends the
    /// server in answer, and what it adds for the client.
    fn server(&mut self, f: &Bytes) -> (ServerStep, BytesMut, Vec<Bytes>) {
        let mut to_server = BytesMut::new();
        let mut then = Outbox::default();
        let step = self.flow().server_frame(f[0], f, &mut to_server, &mut then);
        let then = then.drain().into_iter().map(Option::unwrap).collect();
        (step, to_server, then)
    }
}

fn msg(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    frame::put_frame(&mut out, tag, body);
    out.freeze()
}

fn query(sql: &str) -> Bytes {
    let mut out = BytesMut::new();
    frame::put_query(&mut out, sql);
    out.freeze()
}

fn parse(name: &str, sql: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b.put_u16(0);
    msg(fe::PARSE, &b)
}

fn describe_statement(name: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'S');
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    msg(fe::DESCRIBE, &b)
}

fn bind(name: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_u16(0);
    b.put_u16(0);
    b.put_u16(0);
    msg(fe::BIND, &b)
}

fn execute() -> Bytes {
    msg(fe::EXECUTE, b"\0\0\0\0\0")
}

fn sync() -> Bytes {
    msg(fe::SYNC, b"")
}

fn ready(status: TxStatus) -> Bytes {
    let mut out = BytesMut::new();
    status.put_ready(&mut out);
    out.freeze()
}

fn command_complete(tag: &str) -> Bytes {
    let mut b = tag.as_bytes().to_vec();
    b.push(0);
    msg(be::COMMAND_COMPLETE, &b)
}

fn error(code: &str, message: &str, routine: &str) -> Bytes {
    let mut b = Vec::new();
    for (field, value) in [
        (b'S', "ERROR"),
        (b'C', code),
        (b'M', message),
        (b'R', routine),
    ] {
        b.push(field);
        b.extend_from_slice(value.as_bytes());
        b.push(0);
    }
    b.push(0);
    msg(be::ERROR_RESPONSE, &b)
}

/// The type bytes of the frames in `buf`.
fn tags(buf: &[u8]) -> Vec<char> {
    let mut rest = buf;
    let mut tags = Vec::new();
    while let Ok(Some((tag, f))) = frame::complete(rest) {
        tags.push(char::from(tag));
        rest = &rest[f.len()..];
    }
    assert!(rest.is_empty(), "a partial frame");
    tags
}

fn is_forward(step: &ServerStep) -> bool {
    matches!(step, ServerStep::Forward)
}

fn is_drop(step: &ServerStep) -> bool {
    matches!(step, ServerStep::Drop)
}

/// A named statement prepared on this server by a first batch.
fn prepared(parts: &mut Parts, name: &str, sql: &str) {
    let (to_server, _) = parts.client(&[parse(name, sql), sync()]);
    assert_eq!(tags(&to_server), ['P', 'S']);
    assert!(is_forward(&parts.server(&msg(be::PARSE_COMPLETE, b"")).0));
    assert!(matches!(
        parts.server(&ready(TxStatus::Idle)).0,
        ServerStep::Release(true)
    ));
}

#[test]
fn a_stale_plan_is_prepared_again_and_the_batch_replayed() {
    let mut parts = Parts::new();
    prepared(&mut parts, "s1", "select * from t");
    let batch = [describe_statement("s1"), bind("s1"), execute(), sync()];
    let (to_server, replies) = parts.client(&batch);
    assert_eq!(tags(&to_server), ['D', 'B', 'E', 'S']);
    assert!(replies.is_empty());

    // The Describe's ParameterDescription comes before the plan is
    // checked: held back.
    let (step, _, then) = parts.server(&msg(b't', b"\0\0"));
    assert!(is_drop(&step) && then.is_empty());
    let stale = error(
        "0A000",
        "cached plan must not change result type",
        "RevalidateCachedQuery",
    );
    let (step, retry, then) = parts.server(&stale);
    assert!(is_drop(&step), "the client never sees the stale plan");
    assert!(then.is_empty());
    // Closed, prepared again, and the recorded batch replayed.
    assert_eq!(tags(&retry), ['C', 'P', 'D', 'B', 'E', 'S']);
    assert_eq!(&retry[retry.len() - to_server.len()..], &to_server[..]);
    // The first batch's ReadyForQuery and the answers to the proxy's own
    // Close and Parse are dropped.
    for f in [
        ready(TxStatus::Idle),
        msg(be::CLOSE_COMPLETE, b""),
        msg(be::PARSE_COMPLETE, b""),
    ] {
        assert!(is_drop(&parts.server(&f).0), "{:?}", f);
    }
    // The replay answers the client: the ParameterDescription once.
    let (step, _, then) = parts.server(&msg(b't', b"\0\0"));
    assert!(is_forward(&step) && then.is_empty());
    for f in [
        msg(b'T', b"\0\0"),
        msg(be::BIND_COMPLETE, b""),
        command_complete("SELECT 0"),
    ] {
        assert!(is_forward(&parts.server(&f).0));
    }
    assert!(matches!(
        parts.server(&ready(TxStatus::Idle)).0,
        ServerStep::Release(true)
    ));
    assert!(!parts.hold.stale_server);
}

#[test]
fn a_stale_plan_inside_a_transaction_is_not_retried_and_the_server_is_closed() {
    let mut parts = Parts::new();
    prepared(&mut parts, "s1", "select * from t");
    let (to_server, _) = parts.client(&[query("begin")]);
    assert_eq!(tags(&to_server), ['Q']);
    parts.server(&command_complete("BEGIN"));
    parts.server(&ready(TxStatus::InTransaction));
    parts.client(&[describe_statement("s1"), bind("s1"), execute(), sync()]);
    assert!(is_forward(&parts.server(&msg(b't', b"\0\0")).0));
    let stale = error(
        "0A000",
        "cached plan must not change result type",
        "RevalidateCachedQuery",
    );
    let (step, retry, _) = parts.server(&stale);
    assert!(is_forward(&step), "the client gets the error");
    assert!(retry.is_empty());
    assert!(parts.hold.stale_server, "closed instead of pooled");
}

#[test]
fn the_proxy_answers_its_own_setting_and_deallocate_without_the_server() {
    let mut parts = Parts::new();
    let (to_server, replies) = parts.client(&[query("set pgsidecar.route = 'primary'")]);
    assert!(to_server.is_empty());
    assert_eq!(replies.len(), 1);
    assert_eq!(tags(&replies[0]), ['C', 'Z']);
    assert!(replies[0].ends_with(b"Z\0\0\0\x05I"));
    assert_eq!(parts.client.routing.route_shown(), RouteSetting::Primary);

    // A bad value is refused, and the session carries on.
    let (to_server, replies) = parts.client(&[query("set pgsidecar.route = 'nowhere'")]);
    assert!(to_server.is_empty());
    assert_eq!(tags(&replies[0]), ['E', 'Z']);

    prepared(&mut parts, "s1", "select 1");
    let (to_server, replies) = parts.client(&[query("deallocate s1")]);
    assert!(
        to_server.is_empty(),
        "the server's copy is shared and stays"
    );
    assert_eq!(tags(&replies[0]), ['C', 'Z']);
    assert!(parts.client.statements.get(b"s1").is_none());
    // Not this client's any more: the server is asked.
    let (to_server, _) = parts.client(&[query("deallocate s1")]);
    assert_eq!(tags(&to_server), ['Q']);
}

#[test]
fn the_proxy_answers_a_parse_and_close_of_a_statement_the_server_has() {
    let mut parts = Parts::new();
    prepared(&mut parts, "s1", "select 1");
    // Another name for the same text: the server has it already.
    let (to_server, replies) = parts.client(&[parse("s2", "select 1"), sync()]);
    assert_eq!(tags(&to_server), ['S'], "no Parse reaches the server");
    assert_eq!(replies, [msg(be::PARSE_COMPLETE, b"")]);
    let (_, _, then) = parts.server(&ready(TxStatus::Idle));
    assert!(then.is_empty());
    let mut close = BytesMut::new();
    close.put_u8(b'S');
    close.put_slice(b"s2\0");
    let (to_server, replies) = parts.client(&[msg(fe::CLOSE, &close), sync()]);
    assert_eq!(tags(&to_server), ['S'], "no Close reaches the server");
    assert_eq!(replies, [msg(be::CLOSE_COMPLETE, b"")]);
    assert!(parts.client.statements.get(b"s2").is_none());
}

#[test]
fn a_deferred_begin_keeps_the_server_and_a_statement_is_observed() {
    let mut parts = Parts::new();
    parts.client.deferred_begin = Some(query("begin"));
    let (to_server, _) = parts.client(&[query("select * from t where id = 1")]);
    assert_eq!(tags(&to_server), ['Q']);
    assert!(is_forward(&parts.server(&msg(b'T', b"\0\0")).0));
    assert!(is_forward(&parts.server(&command_complete("SELECT 3")).0));
    // In the transaction the client opened: the server stays held.
    assert!(is_forward(&parts.server(&ready(TxStatus::InTransaction)).0));
    let recorded = parts.env.recorded.borrow().clone();
    assert_eq!(recorded.len(), 1);
    assert_eq!((recorded[0].1, recorded[0].2.as_deref()), (3, None));
    assert_eq!(parts.env.transactions.get(), 0);

    // Its end releases the server and counts the transaction.
    parts.client.deferred_begin = None;
    parts.client(&[query("commit")]);
    parts.server(&command_complete("COMMIT"));
    assert!(matches!(
        parts.server(&ready(TxStatus::Idle)).0,
        ServerStep::Release(true)
    ));
    assert_eq!(parts.env.transactions.get(), 1);
}

#[test]
fn a_failed_statement_is_observed_with_its_sqlstate() {
    let mut parts = Parts::new();
    parts.client(&[query("select * from missing")]);
    let (step, _, _) = parts.server(&error("42P01", "relation does not exist", "x"));
    assert!(is_forward(&step));
    parts.server(&ready(TxStatus::Idle));
    let recorded = parts.env.recorded.borrow().clone();
    assert_eq!(recorded[0].2.as_deref(), Some("42P01"));
}

#[test]
fn a_querys_row_description_streams_through_and_its_rows_are_still_counted() {
    let mut parts = Parts::new();
    parts.client(&[query("select * from t where id = 1")]);
    // Nothing to note in a Query's RowDescription: the relay streams it
    // like a row. Its CommandComplete and ReadyForQuery are seen.
    assert!(!parts.flow().inspects(b'T'));
    assert!(parts.flow().inspects(be::COMMAND_COMPLETE));
    assert!(parts.flow().inspects(be::READY_FOR_QUERY));
    let (step, _, then) = parts.server(&command_complete("SELECT 5"));
    assert!(is_forward(&step) && then.is_empty());
    assert!(matches!(
        parts.server(&ready(TxStatus::Idle)).0,
        ServerStep::Release(true)
    ));
    let recorded = parts.env.recorded.borrow().clone();
    assert_eq!((recorded[0].1, recorded[0].2.as_deref()), (5, None));
    assert_eq!(parts.env.transactions.get(), 1);

    // A Describe's RowDescription completes it, and goes after the
    // ParameterDescription a retry held back: seen.
    prepared(&mut parts, "s1", "select * from t");
    parts.client(&[describe_statement("s1"), sync()]);
    assert!(parts.flow().inspects(b'T'));
    assert!(is_drop(&parts.server(&msg(b't', b"\0\0")).0), "held back");
    assert!(parts.flow().inspects(b'T'));
    let (step, _, then) = parts.server(&msg(b'T', b"\0\0"));
    assert!(is_drop(&step));
    assert_eq!(then, [msg(b't', b"\0\0"), msg(b'T', b"\0\0")]);
    assert!(matches!(
        parts.server(&ready(TxStatus::Idle)).0,
        ServerStep::Release(true)
    ));
}

#[test]
fn what_moves_per_transaction_stays_the_size_it_was() {
    // A held server moves into the session's phase and out at release:
    // 376 bytes when it carried its bookkeeping (HoldState 256 then), 80
    // since that stays in the session (hold::Books) and is reset in place.
    // HoldState (280 with its batch clock) is part of every client's idle
    // memory.
    assert!(std::mem::size_of::<crate::client::hold::Held>() <= 80);
    assert!(std::mem::size_of::<crate::server::Lease>() <= 56);
    assert!(std::mem::size_of::<HoldState>() <= 280);
}

/// The unit at the start of `buf`, as the idle path and routing hand it to
/// the relay (the idle path classifies a Query at its start).
fn unit_of(parts: &mut Parts, buf: &[u8]) -> Option<crate::client::route::Unit> {
    use crate::client::{idle, route};
    let encoding = parts.client.params.encoding();
    let classifier = &parts.env.classifier;
    let client = &mut parts.client;
    if let Ok(Some((fe::QUERY, f))) = frame::complete(buf) {
        let c = idle::classify(f, &mut client.memo, encoding, classifier).expect("a Query");
        client.carried.push(f.len(), c.clone());
    }
    let (statements, memo) = (&client.statements, &mut client.memo);
    route::find_unit(
        buf,
        statements,
        memo,
        &mut client.carried,
        classifier,
        encoding,
    )
    .expect("valid frames")
}

#[test]
fn a_query_is_classified_once_on_its_way_to_the_server() {
    let mut parts = Parts::new();
    let q = query("select * from t where id = 1");
    unit_of(&mut parts, &q).expect("a whole unit");
    assert_eq!(parts.client.memo.asked, 1, "the idle path classified it");
    let (to_server, _) = parts.client(&[q]);
    assert_eq!(tags(&to_server), ['Q']);
    assert_eq!(parts.client.memo.asked, 1, "routing and the relay did not");
    // A later request on the held server is classified where it arrives.
    parts.client(&[query("select 2")]);
    assert_eq!(parts.client.memo.asked, 2);
}

#[test]
fn an_extended_unit_is_classified_once_and_only_when_complete() {
    let mut parts = Parts::new();
    let frames = [
        parse("", "select * from t where id = $1"),
        bind(""),
        execute(),
        sync(),
    ];
    let buf: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    let without_sync = buf.len() - sync().len();
    assert!(unit_of(&mut parts, &buf[..without_sync]).is_none());
    assert_eq!(
        parts.client.memo.asked, 0,
        "nothing classified until the Sync"
    );
    unit_of(&mut parts, &buf).expect("a whole unit");
    assert_eq!(parts.client.memo.asked, 1);
    let (to_server, _) = parts.client(&frames);
    assert_eq!(tags(&to_server), ['P', 'B', 'E', 'S']);
    assert_eq!(
        parts.client.memo.asked, 1,
        "the relay used the carried class"
    );
}

#[test]
fn the_relay_acts_on_the_carried_classification() {
    // What routing decided about the frame is what the relay does with
    // it: a carried `SET pgsidecar.route` (made up for a frame of the
    // same length) is answered by the proxy, the frame never reaches
    // the server.
    let mut parts = Parts::new();
    let setting = "set pgsidecar.route = 'primary'";
    let other = "select 'abcdefghijklmnopqrstuv'";
    assert_eq!(setting.len(), other.len());
    let class = parts.env.classifier.classify(setting);
    parts.client.carried.push(query(other).len(), class);
    let (to_server, replies) = parts.client(&[query(other)]);
    assert!(to_server.is_empty(), "answered by the proxy");
    assert_eq!(replies.len(), 1);
    assert_eq!(parts.client.routing.route_shown(), RouteSetting::Primary);
}

#[test]
fn a_malformed_parse_is_refused_before_its_unit_is_complete() {
    // No Sync yet: the client must not wait for one to hear of it.
    let mut parts = Parts::new();
    let bad = msg(fe::PARSE, b"no terminator");
    let client = &mut parts.client;
    let found = crate::client::route::find_unit(
        &bad,
        &client.statements,
        &mut client.memo,
        &mut client.carried,
        &parts.env.classifier,
        client.params.encoding(),
    );
    assert!(found.is_err());
}
