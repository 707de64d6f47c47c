//! A replica's own connection budget: `[pool] budget = "auto"` with
//! `replica_db_cores` smaller than `db_cores`, so the replica's budget
//! (2 * 2 + 0 = 4) is half the primary's (4 * 2 + 0 = 8). Three `pgsidecar
//! run` members in front of a private primary and one streaming replica
//! carry read-only pgbench load, which they send to the replica; a
//! superuser session on the replica counts the fleet's server connections
//! there every 20 ms. Figures printed with
//! `cargo test --test it fleet_replica_budget -- --nocapture`.

use std::time::Duration;

use crate::fleet_support::{
    Bench, Member, ONE_AT_A_TIME, Sampler, cluster_with_replicas, gauge, settled,
};
use crate::harness;

const PRIMARY_BUDGET: u32 = 8;
const REPLICA_BUDGET: u32 = 4;
const CONFIG: &str = "[pool]\nbudget = \"auto\"\ndb_cores = 4\nreplica_db_cores = 2\n\
                      effective_spindle_count = 0\ncheckout_timeout = \"30s\"\n\
                      [routing]\nmax_replica_lag = \"5s\"\n";

/// `pgsidecar_queries_total{role="replica",node="node"}` in a metrics text.
fn replica_queries(metrics: &str, node: &str) -> u64 {
    let node = format!("node=\"{node}\"");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("pgsidecar_queries_total{")
                && l.contains("role=\"replica\"")
                && l.contains(&node)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// 3 members, 60 pgbench `-S` clients: the replica never sees more than
/// its own budget (4) of the fleet's connections, though the primary's is
/// 8, and no query fails; `/metrics` shows each node's own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_fewer_cores_gets_its_own_smaller_budget_under_read_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = cluster_with_replicas(&["fleet_a"], 1).await;
    let (primary, replica) = (cluster.primary().addr(), cluster.replica(0).addr());
    // The replica has replayed `pgbench -i` (so it can serve the reads).
    let su_primary = harness::connect(&cluster.primary().conn_string())
        .await
        .expect("superuser on the primary");
    let su_replica = harness::connect(&cluster.replica(0).conn_string())
        .await
        .expect("superuser on the replica");
    let written: String = su_primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    harness::eventually(
        "the replica to replay the pgbench tables",
        Duration::from_secs(30),
        || async {
            let row = su_replica
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&written],
                )
                .await
                .ok()?;
            row.get::<_, bool>(0).then_some(())
        },
    )
    .await;

    let mut members = Vec::new();
    for i in 1..=3 {
        members.push(Member::start_in(&cluster, &format!("m{i}"), Some("t"), CONFIG).await);
    }
    let all: Vec<&Member> = members.iter().collect();
    settled(&all, &primary).await;
    settled(&all, &replica).await;

    let sampler = Sampler::start_on(cluster.replica(0).conn_string());
    let benches: Vec<Bench> = members
        .iter()
        .map(|m| Bench::start_with(m.port(), "fleet_a", 20, 8, &["-S"]))
        .collect();
    let mut processed = 0;
    let mut reports = Vec::new();
    for b in benches {
        let report = b.finish().await;
        processed += report.processed.unwrap_or(0);
        reports.push(report);
    }
    let seen = sampler.stop().await;
    let mut on_replica = 0;
    let mut budgets = Vec::new();
    let mut sizes = Vec::new();
    for m in &members {
        let metrics = m.process.http_get("/metrics").await;
        on_replica += replica_queries(&metrics, &replica);
        budgets.push((
            gauge(&metrics, "pgsidecar_pool_budget", &primary),
            gauge(&metrics, "pgsidecar_pool_budget", &replica),
        ));
        sizes.push((
            gauge(&metrics, "pgsidecar_pool_size", &primary),
            gauge(&metrics, "pgsidecar_pool_size", &replica),
        ));
    }
    println!(
        "fleet_replica_budget: 3 members, 3 pgbench -S x 20 clients: {processed} \
         transactions, {on_replica} statements on the replica; the fleet's connections \
         on the replica sampled every 20 ms: max {} of its budget {REPLICA_BUDGET} \
         (primary's {PRIMARY_BUDGET}; {} samples); budgets in /metrics \
         (primary, replica): {budgets:?}",
        seen.max, seen.samples
    );
    for report in &reports {
        report.assert_clean();
    }
    assert!(seen.samples > 100, "{seen:?}");
    assert!(
        seen.max > 0,
        "the sampler saw the fleet's connections on the replica: {seen:?}"
    );
    assert!(
        seen.max <= i64::from(REPLICA_BUDGET),
        "more of the fleet's connections on the replica than its budget: {seen:?}"
    );
    assert!(
        on_replica >= processed * 9 / 10,
        "the reads went to the replica: {on_replica} of {processed}"
    );
    for (m, b) in members.iter().zip(&budgets) {
        assert_eq!(
            *b,
            (Some(PRIMARY_BUDGET), Some(REPLICA_BUDGET)),
            "pgsidecar_pool_budget of {}",
            m.name
        );
    }
    // Each node's pools are sized by that node's budget.
    for size in &sizes {
        assert_eq!(
            *size,
            (Some(PRIMARY_BUDGET), Some(REPLICA_BUDGET)),
            "pgsidecar_pool_size"
        );
    }
}
