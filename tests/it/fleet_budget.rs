//! One connection budget per node, shared by every member of a fleet:
//! several `pgsidecar run` processes (`[fleet] name = "t"`, `[pool] budget
//! = 8`) in front of one private primary, loaded with pgbench, while a
//! superuser session counts the fleet's server connections in
//! `pg_stat_activity` every 20 ms. Figures are printed for the README
//! (`cargo test --test it fleet_budget -- --nocapture`).

use std::time::{Duration, Instant};

use crate::fleet_support::{
    Bench, Member, ONE_AT_A_TIME, Sampler, cluster, settled, start_settled, total_share,
};
use crate::harness;

const BUDGET: u32 = 8;

/// 4 members, two databases each (so every member has two pools), 200
/// pgbench clients in all: never more than 8 server connections, no
/// failed transaction. Without the fleet, each pool of each member would
/// open its own connections (`sidecars = 4` gives 2 per pool: 16 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_members_never_exceed_the_budget_under_200_pgbench_clients() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = cluster(&["fleet_a", "fleet_b"]).await;
    let members = start_settled(&cluster, 4, BUDGET).await;
    let sampler = Sampler::start(&cluster);
    let mut benches = Vec::new();
    for m in &members {
        for db in ["fleet_a", "fleet_b"] {
            benches.push(Bench::start(m.port(), db, 25, 8));
        }
    }
    let mut processed = 0;
    for b in benches {
        let report = b.finish().await;
        report.assert_clean();
        processed += report.processed.unwrap_or(0);
    }
    let seen = sampler.stop().await;
    println!(
        "fleet_budget: 4 members, 8 pgbench x 25 clients: {processed} transactions, \
         0 failed; server connections sampled every 20 ms: max {} of budget {BUDGET} \
         ({} samples)",
        seen.max, seen.samples
    );
    assert!(seen.samples > 100, "{seen:?}");
    assert!(
        seen.max > 0,
        "the sampler saw the fleet's connections: {seen:?}"
    );
    assert!(seen.max <= i64::from(BUDGET), "{seen:?}");
}

/// Under load, a member killed with SIGKILL: the others take its share
/// (its slots are freed when Postgres ends its coordinator session); a
/// fifth member then joins and gets a share. The budget holds throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_members_share_is_reused_and_a_fifth_member_gets_one() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = cluster(&["fleet_a"]).await;
    let node = cluster.primary().addr();
    let mut members = start_settled(&cluster, 4, BUDGET).await;
    let sampler = Sampler::start(&cluster);
    let benches: Vec<Bench> = members
        .iter()
        .map(|m| Bench::start(m.port(), "fleet_a", 25, 20))
        .collect();
    // Every member busy: each gets its part (2 of 8).
    harness::eventually(
        "an even split of the budget",
        Duration::from_secs(20),
        || async {
            for m in &members {
                if m.share(&node).await != Some(2) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    let mut victim = members.pop().unwrap();
    let killed_at = Instant::now();
    victim.kill();
    let survivors: Vec<&Member> = members.iter().collect();
    harness::eventually(
        "the survivors to take the killed member's share",
        Duration::from_secs(20),
        || async { (total_share(&survivors, &node).await == BUDGET).then_some(()) },
    )
    .await;
    let reused_after = killed_at.elapsed();

    let fifth = Member::start(&cluster, "m5", BUDGET).await;
    let fifth_bench = Bench::start(fifth.port(), "fleet_a", 25, 6);
    let joined_at = Instant::now();
    harness::eventually(
        "the fifth member to get a share",
        Duration::from_secs(20),
        || async { (fifth.share(&node).await.unwrap_or(0) >= 2).then_some(()) },
    )
    .await;
    let fifth_after = joined_at.elapsed();

    let mut iter = benches.into_iter();
    for b in iter.by_ref().take(3) {
        b.finish().await.assert_clean();
    }
    // The killed member's clients lost their connections: not asserted.
    let _ = iter.next().unwrap().finish().await;
    fifth_bench.finish().await.assert_clean();
    let seen = sampler.stop().await;
    println!(
        "fleet_budget: kill -9 of 1 of 4 busy members: its share reused after {:.2}s; \
         a fifth member got its part after {:.2}s; server connections max {} of {BUDGET} \
         ({} samples)",
        reused_after.as_secs_f64(),
        fifth_after.as_secs_f64(),
        seen.max,
        seen.samples
    );
    assert!(seen.samples > 100, "{seen:?}");
    assert!(seen.max <= i64::from(BUDGET), "{seen:?}");
}

/// One busy member and three idle ones: the busy one holds the budget less
/// the idle ones' floors (8 − 3 × 1), and `SHOW FLEET` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_member_holds_the_budget_less_the_idle_floors() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = cluster(&["fleet_a"]).await;
    let node = cluster.primary().addr();
    let members = start_settled(&cluster, 4, BUDGET).await;
    let sampler = Sampler::start(&cluster);
    let bench = Bench::start(members[0].port(), "fleet_a", 50, 8);
    harness::eventually(
        "the busy member to hold 5",
        Duration::from_secs(20),
        || async { (members[0].share(&node).await == Some(BUDGET - 3)).then_some(()) },
    )
    .await;
    for idle in &members[1..] {
        assert_eq!(idle.share(&node).await, Some(1), "{}", idle.name);
    }

    let console = harness::connect(&format!(
        "host=127.0.0.1 port={} user={} password={} dbname=pgsidecar",
        members[0].port(),
        crate::fleet_support::MON_ROLE,
        crate::fleet_support::MON_PASSWORD
    ))
    .await
    .expect("admin console");
    let rows: Vec<_> = console
        .simple_query("SHOW FLEET")
        .await
        .expect("SHOW FLEET")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    let present: Vec<_> = rows
        .iter()
        .filter(|r| r.get("present") == Some("true"))
        .collect();
    assert_eq!(present.len(), 4, "four members present");
    let me = present
        .iter()
        .find(|r| r.get("self") == Some("true"))
        .expect("a row for this member");
    assert_eq!(me.get("member"), Some("m1"));
    assert_eq!(me.get("share"), Some("5"));
    assert_eq!(me.get("budget"), Some("8"));
    for r in present.iter().filter(|r| r.get("self") == Some("false")) {
        assert_eq!(r.get("share"), Some("1"), "{:?}", r.get("member"));
        assert_eq!(r.get("open"), Some("0"), "idle: {:?}", r.get("member"));
    }

    bench.finish().await.assert_clean();
    let seen = sampler.stop().await;
    println!(
        "fleet_budget: 1 busy + 3 idle members: busy share {} of {BUDGET}; \
         server connections max {} ({} samples)",
        BUDGET - 3,
        seen.max,
        seen.samples
    );
    assert!(seen.max <= i64::from(BUDGET), "{seen:?}");
}

/// The primary restarted (fast shutdown) under load: every coordinator
/// session and server connection is cut; after the restart the members
/// take their slots again and a new load never goes over the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_after_the_primary_restarts_under_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = cluster(&["fleet_a"]).await;
    let node = cluster.primary().addr();
    let members = start_settled(&cluster, 4, BUDGET).await;
    let all: Vec<&Member> = members.iter().collect();
    let sampler = Sampler::start(&cluster);
    let before: Vec<Bench> = members
        .iter()
        .map(|m| Bench::start(m.port(), "fleet_a", 25, 6))
        .collect();
    harness::eventually(
        "the members to share the whole budget",
        Duration::from_secs(20),
        || async { (total_share(&all, &node).await == BUDGET).then_some(()) },
    )
    .await;
    tokio::task::block_in_place(|| cluster.primary().restart()).expect("restarting the primary");
    // Clients that were in a transaction at the restart fail: not asserted.
    for b in before {
        let _ = b.finish().await;
    }
    settled(&all, &node).await;
    let after: Vec<Bench> = members
        .iter()
        .map(|m| Bench::start(m.port(), "fleet_a", 25, 6))
        .collect();
    for b in after {
        b.finish().await.assert_clean();
    }
    let seen = sampler.stop().await;
    println!(
        "fleet_budget: primary restarted under load: server connections max {} of {BUDGET} \
         ({} samples, {} missed while it restarted)",
        seen.max, seen.samples, seen.missed
    );
    assert!(seen.samples > 100, "{seen:?}");
    assert!(seen.max <= i64::from(BUDGET), "{seen:?}");
}

/// A member whose whole share is in use tells the next client so, by
/// SQLSTATE 53300 and a message naming its share of the fleet's budget,
/// after `checkout_timeout`; the held transaction is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_out_of_budget_says_so() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = cluster(&[]).await;
    let node = cluster.primary().addr();
    let member = Member::start_with(&cluster, "m1", 1, "1s").await;
    settled(&[&member], &node).await;
    let holder = member.connect("postgres").await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let other = member.connect("postgres").await;
    let err = other.simple_query("SELECT 1").await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert!(
        db.message()
            .contains("share of the fleet's budget for the node is 1"),
        "{db:?}"
    );
    holder.batch_execute("SELECT 2; COMMIT").await.unwrap();
    other
        .simple_query("SELECT 1")
        .await
        .expect("served once the share is free");
}
