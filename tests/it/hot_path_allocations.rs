//! Issue 20's "no allocation per transaction in the steady state": heap
//! allocations pgsidecar makes per read transaction once warmed up, counted
//! on the threads of a runtime of the proxy's own (the clients run on the
//! test's threads, which are not counted), for each protocol of
//! `pgbench -S`.

use std::time::Duration;

use pgsidecar::proxy::Proxy;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use crate::alloc_count::Allocations;
use crate::harness::{self, APP};

/// Clients at once: more than the pool has servers, so checkouts wait and a
/// released server is handed to a waiting session, as with `pgbench -S`.
const CLIENTS: usize = 8;
const POOL_SIZE: usize = 2;
/// Transactions per client before counting: statement caches, pool
/// connections, buffers and query digests reach their steady size.
const WARM_UP: usize = 200;
/// Counted rounds, and transactions per client in each.
const ROUNDS: usize = 7;
const PER_ROUND: usize = 100;
/// Most allocations per transaction allowed in the median round. A cost
/// paid per transaction, or every few, shows in every round; the proxy's
/// timers (the catalog read every 2 s, the observer's tick every second),
/// a few dozen allocations each, fall in some rounds only.
///
/// History: a simple or prepared read measured 3.1 before the relay
/// future and `Box<Held>` stopped being boxed, 1.14 after, 1.06-1.08 once
/// each thread kept eight spare chunk lists; an unnamed extended read 7.1,
/// then 5.11, then 1.13 (`prepared.rs` `set_unnamed` keeping the same
/// unnamed Parse's copies, `route.rs` `Infos::push` not adding a second
/// statement info). The last one per transaction was the boxed
/// acquisition future, now awaited inline (`server::CheckoutUnless`,
/// 2026-12-07): medians 0.00-0.07 since. What is left is about 0.1 at most
/// from a parked client buffer regrown after waking on another worker
/// thread (this test's runtime has two) and a relay's chunk list grown on
/// a thread whose spare another relay took, which grows with the
/// machine's load. The bound catches any new per-transaction allocation,
/// in every protocol (each would add 1), with room for that share.
const BOUND: f64 = 0.5;
/// Rows of `accounts`.
const ACCOUNTS: i32 = 1000;

/// Background work as quiet as the config allows: no replicas (their
/// eligibility needs a lag check every 100 ms), the primary checked every
/// 10 min, no query slow enough to be logged and EXPLAINed (those allocate,
/// by design, and a loaded machine must not make a `SELECT` one of them),
/// a checkout that waits as long as the machine needs.
fn config(proxy: &str) -> String {
    format!(
        "[proxy]\n{proxy}\
         [pool]\nsize = {POOL_SIZE}\ncheckout_timeout = \"60s\"\n\
         [routing]\nlag_check_interval = \"10m\"\n\
         [observability]\nslow_query_threshold = \"1h\"\n"
    )
}

/// Both idle limits set, far off: a client between requests waits on a
/// timer, which must not cost an allocation per request either.
const IDLE_LIMITS: &str = "client_idle_timeout = \"1h\"\nidle_transaction_timeout = \"1h\"\n";

/// A proxy on a runtime of its own (two workers, as on a 2-core machine)
/// whose threads count their allocations.
struct CountedProxy {
    proxy: Option<Proxy>,
    runtime: Option<Runtime>,
    allocations: Allocations,
}

impl CountedProxy {
    async fn start(extra_toml: &str) -> CountedProxy {
        let config = harness::proxy_config(extra_toml);
        let allocations = Allocations::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || allocations.count_this_thread())
            .build()
            .expect("building the proxy's runtime");
        let proxy = runtime
            .spawn(Proxy::start(config))
            .await
            .expect("the proxy's start task")
            .unwrap_or_else(|e| panic!("the test proxy did not start: {e}"));
        CountedProxy {
            proxy: Some(proxy),
            runtime: Some(runtime),
            allocations,
        }
    }

    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("started")
    }
}

impl Drop for CountedProxy {
    fn drop(&mut self) {
        drop(self.proxy.take());
        // Dropping a runtime would block, which a test's task may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How a client reads one account, as `pgbench -S` with `-M simple`,
/// `-M extended` and `-M prepared`.
#[derive(Clone, Copy, Debug)]
enum Protocol {
    /// A Query message with the key as a literal.
    Simple,
    /// Parse (unnamed), Bind, Describe, Execute, Sync each time.
    Extended,
    /// A named statement prepared once per client; then Bind, Execute, Sync.
    Prepared,
}

const READ: &str = "SELECT abalance FROM accounts WHERE aid = $1";

/// One read transaction of account `aid`; checks the balance read.
async fn read(client: &Client, prepared: &Statement, protocol: Protocol, aid: i32) {
    let balance = match protocol {
        Protocol::Simple => {
            let sql = format!("SELECT abalance FROM accounts WHERE aid = {aid}");
            harness::scalar(client, &sql)
                .await
                .map(|v| v.and_then(|v| v.parse::<i32>().ok()))
        }
        Protocol::Extended => client
            .query_typed(READ, &[(&aid, Type::INT4)])
            .await
            .map(|rows| rows.first().map(|r| r.get::<_, i32>(0))),
        Protocol::Prepared => client
            .query(prepared, &[&aid])
            .await
            .map(|rows| rows.first().map(|r| r.get::<_, i32>(0))),
    }
    .unwrap_or_else(|e| {
        panic!(
            "{protocol:?} read of account {aid}: {}",
            harness::error_text(&e)
        )
    });
    assert_eq!(
        balance,
        Some(aid * 10),
        "{protocol:?} read of account {aid}"
    );
}

/// Every client runs `per_client` reads, all clients at once.
async fn run(
    clients: Vec<(Client, Statement)>,
    protocol: Protocol,
    per_client: usize,
) -> Vec<(Client, Statement)> {
    let mut tasks = JoinSet::new();
    for (n, (client, prepared)) in clients.into_iter().enumerate() {
        tasks.spawn(async move {
            for i in 0..per_client {
                let aid = (n * per_client + i) as i32 % ACCOUNTS + 1;
                read(&client, &prepared, protocol, aid).await;
            }
            (client, prepared)
        });
    }
    tasks.join_all().await
}

/// Allocations the proxy made per transaction of `protocol` in each counted
/// round, once warmed up.
async fn per_transaction(prefix: &str, protocol: Protocol, proxy: &str) -> Vec<f64> {
    let (db, _direct) = harness::replicated_db(
        prefix,
        &format!(
            "CREATE TABLE accounts (aid int PRIMARY KEY, abalance int NOT NULL);\n\
             INSERT INTO accounts SELECT g, g * 10 FROM generate_series(1, {ACCOUNTS}) g;"
        ),
    )
    .await;
    let counted = CountedProxy::start(&config(proxy)).await;
    proxy_logged_in("pgsidecar-monitor", "postgres").await;
    let mut clients = Vec::new();
    let before = counted.allocations.so_far();
    for _ in 0..CLIENTS {
        let client = harness::connect_proxy(counted.proxy(), APP, &db)
            .await
            .unwrap_or_else(|e| {
                panic!("connecting through the proxy: {}", harness::error_text(&e))
            });
        clients.push(client);
    }
    // Not asserted: a login reads the config and builds a session (and
    // SCRAM's hashes); shown for the record.
    let logins = counted.allocations.so_far() - before;
    eprintln!(
        "{protocol:?}: {:.1} allocations per login (SCRAM) in the proxy",
        logins as f64 / CLIENTS as f64
    );
    let mut ready = Vec::new();
    for client in clients {
        let prepared = client.prepare(READ).await.expect("preparing the read");
        ready.push((client, prepared));
    }
    ready = run(ready, protocol, WARM_UP).await;
    proxy_logged_in("pgsidecar-catalog", &db).await;
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let before = counted.allocations.so_far();
        ready = run(ready, protocol, PER_ROUND).await;
        let made = counted.allocations.so_far() - before;
        rounds.push(made as f64 / (CLIENTS * PER_ROUND) as f64);
    }
    eprintln!("{prefix} ({protocol:?}): allocations per transaction in each round: {rounds:.3?}");
    rounds
}

/// Waits until the proxy's own session `application_name` is logged into
/// `db`: the cluster monitor's (at start) and the catalog reader's (within
/// 2 s of the first pool for `db`). A login allocates hundreds of times,
/// which is neither a client's login nor a transaction.
async fn proxy_logged_in(application_name: &str, db: &str) {
    let su = harness::superuser().await;
    let what = format!("{application_name} in {db}");
    harness::eventually(&what, Duration::from_secs(30), || {
        let su = &su;
        async move {
            let rows = su
                .query(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                    &[&db, &application_name],
                )
                .await
                .expect("reading pg_stat_activity");
            (!rows.is_empty()).then_some(())
        }
    })
    .await;
}

/// Asserts that a typical round allocated no more than [`BOUND`].
fn assert_none_per_transaction(protocol: Protocol, rounds: &[f64]) {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mean = rounds.iter().sum::<f64>() / rounds.len() as f64;
    assert!(
        median < BOUND,
        "pgsidecar made {median:.3} heap allocations per {protocol:?} read transaction \
         in the steady state (median of {ROUNDS} rounds of {CLIENTS} clients x {PER_ROUND} \
         on a pool of {POOL_SIZE}; mean {mean:.3}; each round: {rounds:.3?}); \
         expected fewer than {BOUND}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_query_read_allocates_nothing_per_transaction_in_the_proxy() {
    let rounds = per_transaction("alloc_simple", Protocol::Simple, "").await;
    assert_none_per_transaction(Protocol::Simple, &rounds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_query_read_allocates_nothing_per_transaction_in_the_proxy() {
    let rounds = per_transaction("alloc_extended", Protocol::Extended, "").await;
    assert_none_per_transaction(Protocol::Extended, &rounds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_read_allocates_nothing_per_transaction_in_the_proxy() {
    let rounds = per_transaction("alloc_prepared", Protocol::Prepared, "").await;
    assert_none_per_transaction(Protocol::Prepared, &rounds);
}

/// Before 2026-12-07 (helper-32) a boxed timer was made per request while
/// a limit was set: 1.06-1.09 allocations per simple read transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_idle_limits_set_a_simple_query_read_allocates_nothing_per_transaction() {
    let rounds = per_transaction("alloc_idle_limits", Protocol::Simple, IDLE_LIMITS).await;
    assert_none_per_transaction(Protocol::Simple, &rounds);
}
