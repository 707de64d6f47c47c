//! The cluster monitor against real nodes: lag of an idle and of a delayed
//! replica, health through a hang, a stop and a restart, promotion, and
//! read-your-writes floors. Each test owns a private `LocalCluster` (the
//! shared one must not be stopped or delayed) and aborts its monitor before
//! the cluster is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgsidecar::cluster::{ClusterView, Lsn, NoReplica, NodeStatus, Role};
use pgsidecar::config::{self, Config, ConfigHandle};
use pgsidecar::demo::{ClusterOptions, LocalCluster, Node, RoleSpec};
use tokio::task::{JoinHandle, block_in_place};
use tokio_postgres::types::PgLsn;

use crate::harness::{self, APP};

pub mod frozen;
use frozen::Frozen;

const MAX_LAG: Duration = Duration::from_millis(500);
/// Generous bound for things that should happen within a few check rounds.
const SOON: Duration = Duration::from_secs(10);

/// A private cluster with the monitor running against it. Fields drop in
/// order: the monitor stops before the cluster goes away.
struct Fixture {
    _monitor: AbortOnDrop,
    view: Arc<ClusterView>,
    config: ConfigHandle,
    cluster: LocalCluster,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a primary and one replica with the `app` role, and a monitor
/// logging in as `app` with its password.
async fn fixture() -> Fixture {
    let options = ClusterOptions::default().replicas(1).role(RoleSpec::new(
        APP.name,
        APP.password.unwrap_or_default(),
        APP.auth,
    ));
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(options))
        .await
        .expect("cluster start task")
        .unwrap_or_else(|e| panic!("private cluster did not start: {e}"));
    let config = config::handle(monitor_config(&cluster, APP.password.unwrap_or_default()));
    let view = ClusterView::new(&config.load());
    let monitor = AbortOnDrop(view.spawn_monitor(config.clone()));
    Fixture {
        _monitor: monitor,
        view,
        config,
        cluster,
    }
}

/// Config for `cluster` whose monitor logs in as `app` with `password`.
fn monitor_config(cluster: &LocalCluster, password: &str) -> Config {
    let text = format!(
        "[cluster]\nprimary = \"{}\"\nreplicas = [\"{}\"]\nconnect_timeout = \"2s\"\nstate_file = \"\"\n\
         monitor_user = \"{}\"\n[[users]]\nname = \"{}\"\npassword = \"{password}\"\n",
        cluster.nodes()[0].addr(),
        cluster.nodes()[1].addr(),
        APP.name,
        APP.name,
    );
    Config::from_toml(&text, std::path::Path::new("cluster_monitor.toml"))
        .unwrap_or_else(|e| panic!("test config: {e}"))
}

impl Fixture {
    fn status(&self, id: usize) -> NodeStatus {
        self.view.status()[id].clone()
    }

    /// Polls `cond` every 20 ms until it holds; panics with the view's
    /// status after `limit`.
    async fn eventually(&self, what: &str, limit: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; status: {:#?}",
                self.view.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until primary and replica have answered checks.
    async fn ready(&self) {
        self.eventually("primary and replica checked", SOON, |f| {
            f.view.primary_ready() && f.view.is_healthy(1)
        })
        .await;
    }

    async fn client(&self, node: &Node) -> tokio_postgres::Client {
        harness::connect(&node.conn_string())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", node.name()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_primary_and_a_caught_up_replica_have_zero_lag() {
    let f = fixture().await;
    f.ready().await;
    block_in_place(|| f.cluster.wait_for_replay(f.cluster.replica(0))).unwrap();
    f.eventually("replica at zero lag and eligible", SOON, |f| {
        let s = f.status(1);
        s.lag_seconds == Some(0.0)
            && s.lag_bytes == Some(0)
            && f.view.choose_replica(None, MAX_LAG).is_ok()
    })
    .await;
    let primary = f.status(0);
    assert_eq!(
        (primary.role, primary.timeline_id),
        (Role::Primary, Some(1))
    );
    assert_eq!(f.view.primary(), Some(0));
    assert_eq!(f.view.choose_replica(None, MAX_LAG).unwrap().id, 1);
    assert!(f.view.latest_primary_lsn().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_replica_lags_is_refused_and_comes_back() {
    let f = fixture().await;
    f.ready().await;
    let primary = f.client(f.cluster.primary()).await;
    primary
        .batch_execute("CREATE TABLE ticks (at timestamptz)")
        .await
        .unwrap();
    block_in_place(|| f.cluster.replica(0).set_apply_delay(Duration::from_secs(2))).unwrap();
    let writer = AbortOnDrop(tokio::spawn(async move {
        loop {
            if let Err(e) = primary
                .batch_execute("INSERT INTO ticks VALUES (now())")
                .await
            {
                panic!("write load failed: {e}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }));
    f.eventually("replica over a second behind and refused", SOON, |f| {
        f.status(1).lag_seconds.is_some_and(|s| s > 1.0)
            && f.view.choose_replica(None, MAX_LAG).err() == Some(NoReplica::AllLagging)
    })
    .await;
    assert!(f.status(1).lag_bytes.is_some_and(|b| b > 0));
    block_in_place(|| f.cluster.replica(0).set_apply_delay(Duration::ZERO)).unwrap();
    f.eventually("replica eligible again", Duration::from_secs(2), |f| {
        f.view.choose_replica(None, MAX_LAG).is_ok()
    })
    .await;
    drop(writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_stopped_replica_is_banned_until_it_answers_again() {
    let f = fixture().await;
    f.ready().await;
    f.eventually("replica eligible", SOON, |f| {
        f.view.choose_replica(None, MAX_LAG).is_ok()
    })
    .await;

    // Frozen: every process of the node stopped. The primary's checks
    // must go on meanwhile.
    {
        let _frozen = Frozen::new(f.cluster.replica(0));
        f.eventually("hung replica banned", SOON, |f| {
            f.view.choose_replica(None, MAX_LAG).err() == Some(NoReplica::AllUnhealthy)
        })
        .await;
        assert!(f.status(1).last_error.is_some());
        let t = Instant::now();
        f.eventually("primary still sampled", SOON, |f| {
            f.view.lsn_after(t).is_some() && f.view.primary_ready()
        })
        .await;
    }
    f.eventually("thawed replica eligible", SOON, |f| {
        f.view.choose_replica(None, MAX_LAG).is_ok()
    })
    .await;

    block_in_place(|| f.cluster.replica(0).stop()).unwrap();
    f.eventually("stopped replica banned", SOON, |f| {
        f.view.choose_replica(None, MAX_LAG).err() == Some(NoReplica::AllUnhealthy)
    })
    .await;
    let error = f.status(1).last_error.unwrap_or_default();
    assert!(error.contains(&f.cluster.replica(0).addr()), "{error}");
    block_in_place(|| f.cluster.replica(0).start()).unwrap();
    f.eventually("restarted replica healthy and eligible", SOON, |f| {
        f.view.is_healthy(1) && f.view.choose_replica(None, MAX_LAG).is_ok()
    })
    .await;
    assert_eq!(f.status(1).last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_becomes_the_primary() {
    let f = fixture().await;
    f.ready().await;
    let mut changes = f.view.changes();
    let before = *changes.borrow_and_update();
    block_in_place(|| {
        f.cluster.primary().stop()?;
        f.cluster.promote(f.cluster.replica(0))
    })
    .unwrap();
    f.eventually(
        "promoted node is the primary",
        Duration::from_secs(2),
        |f| f.view.primary() == Some(1),
    )
    .await;
    assert!(changes.has_changed().unwrap(), "changes() fired");
    assert!(*changes.borrow_and_update() > before);
    f.eventually("new primary sampled", SOON, |f| {
        f.view.primary_ready() && f.view.latest_primary_lsn().is_some()
    })
    .await;
    let promoted = f.status(1);
    assert_eq!(promoted.role, Role::Primary);
    assert!(promoted.timeline_id.is_some_and(|t| t >= 2), "{promoted:?}");
    assert!(!f.view.is_healthy(0), "the old primary is down");
    assert_eq!(
        f.view.choose_replica(None, MAX_LAG).err(),
        Some(NoReplica::NoneConfigured)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_after_a_commit_covers_it_and_makes_it_visible_on_the_replica() {
    let f = fixture().await;
    f.ready().await;
    let primary = f.client(f.cluster.primary()).await;
    primary
        .batch_execute("CREATE TABLE notes (v text)")
        .await
        .unwrap();
    primary
        .batch_execute("INSERT INTO notes VALUES ('mine')")
        .await
        .unwrap();
    let written: PgLsn = primary
        .query_one("SELECT pg_current_wal_lsn()", &[])
        .await
        .unwrap()
        .get(0);
    let committed_at = Instant::now();

    let mut floor = None;
    f.eventually("a primary sample after the commit", SOON, |f| {
        floor = f.view.lsn_after(committed_at);
        floor.is_some()
    })
    .await;
    let floor = floor.unwrap_or_default();
    assert!(
        floor >= Lsn::from(written),
        "floor {floor} is below the write at {written}"
    );

    // A replica chosen with that floor has the row.
    f.eventually("replica replayed past the floor", SOON, |f| {
        f.view.choose_replica(Some(floor), MAX_LAG).is_ok()
    })
    .await;
    let replica = f.client(f.cluster.replica(0)).await;
    let rows = replica.query("SELECT v FROM notes", &[]).await.unwrap();
    assert_eq!(
        rows.len(),
        1,
        "the replica chosen for the floor sees the write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_monitor_login_applies_at_the_next_check() {
    let f = fixture().await;
    f.ready().await;
    f.config
        .store(Arc::new(monitor_config(&f.cluster, "not-the-password")));
    f.eventually("nodes unhealthy with the wrong password", SOON, |f| {
        !f.view.primary_ready() && !f.view.is_healthy(1)
    })
    .await;
    let error = f.status(0).last_error.unwrap_or_default();
    assert!(
        error.contains("`app`") && error.contains("password authentication failed"),
        "{error}"
    );
    let good = APP.password.unwrap_or_default();
    f.config.store(Arc::new(monitor_config(&f.cluster, good)));
    f.ready().await;
}
