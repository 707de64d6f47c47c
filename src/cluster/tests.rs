//! The view driven the way the monitor drives it (check outcomes in,
//! routing answers out), without a database.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::update::Probe;
use super::*;
use crate::config::Config;

const MAX_LAG: Duration = Duration::from_millis(500);
/// The system identifier the helpers' nodes report.
const SYSTEM: u64 = 7_300_000_000_000_000_001;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A view of a primary and two replicas, and an instant after its epoch.
fn view() -> (Arc<ClusterView>, Instant) {
    let text = "[cluster]\nprimary = \"p:5432\"\nreplicas = [\"r1:5432\", \"r2:5432\"]\nstate_file = \"\"\n";
    let config = Config::from_toml(text, Path::new("t.toml")).unwrap();
    let view = ClusterView::new(&config);
    (view, Instant::now())
}

fn primary(lsn: u64, timeline: u32) -> Probe {
    Probe {
        in_recovery: false,
        lsn: Some(Lsn(lsn)),
        timeline: Some(timeline),
        system: Some(SYSTEM),
    }
}

fn replica(lsn: u64) -> Probe {
    Probe {
        in_recovery: true,
        lsn: Some(Lsn(lsn)),
        timeline: None,
        system: Some(SYSTEM),
    }
}

/// Records a check of `id` sent at `at` and answered 1 ms later.
fn check(view: &ClusterView, id: NodeId, at: Instant, probe: Probe) {
    view.record_success(id, at, at + ms(1), probe);
}

#[test]
fn before_any_check_the_configured_primary_leads_and_nothing_is_routable() {
    let (view, t0) = view();
    assert_eq!(view.node_count(), 3);
    assert_eq!(view.primary(), Some(0));
    assert_eq!(view.addr(2).to_string(), "r2:5432");
    assert!(!view.primary_ready());
    assert!(!view.is_healthy(1) && !view.is_healthy(99));
    let err = view.choose_replica(None, MAX_LAG).unwrap_err();
    assert_eq!(err, NoReplica::AllUnhealthy);
    assert_eq!(view.lsn_after(t0), None);
    assert_eq!(view.latest_primary_lsn(), None);
    let status = view.status();
    assert_eq!(status[0].role, Role::Primary);
    assert_eq!(status[1].role, Role::Replica);
    assert!(status.iter().all(|s| !s.healthy && s.lag_seconds.is_none()));
}

#[test]
fn a_replica_is_unproven_until_the_primary_has_been_sampled() {
    let (view, t0) = view();
    check(&view, 1, t0, replica(100));
    let err = view.choose_replica_at(t0, None, MAX_LAG).unwrap_err();
    assert_eq!(err, NoReplica::AllLagging);
    check(&view, 0, t0 + ms(10), primary(100, 1));
    assert!(view.primary_ready());
    let lease = view.choose_replica_at(t0 + ms(20), None, MAX_LAG).unwrap();
    assert_eq!(lease.id, 1);
}

#[test]
fn an_idle_primary_and_a_caught_up_replica_mean_zero_lag() {
    let (view, t0) = view();
    check(&view, 0, t0, primary(100, 1));
    check(&view, 1, t0 + ms(5), replica(100));
    // An hour later the primary has written nothing.
    let later = t0 + Duration::from_secs(3600);
    check(&view, 0, later, primary(100, 1));
    check(&view, 1, later, replica(100));
    let status = view.status_at(later);
    assert_eq!(status[1].lag_seconds, Some(0.0));
    assert_eq!(status[1].lag_bytes, Some(0));
    assert_eq!(status[1].replay_lsn, Some(Lsn(100)));
    assert_eq!(status[0].timeline_id, Some(1));
    assert_eq!(status[0].replay_lsn, None);
    assert!(view.choose_replica_at(later, None, Duration::ZERO).is_ok());
}

#[test]
fn a_lagging_replica_is_refused_and_returns_when_it_catches_up() {
    let (view, t0) = view();
    for (i, lsn) in [10, 20, 30, 40].into_iter().enumerate() {
        check(&view, 0, t0 + ms(100 * i as u64), primary(lsn, 1));
    }
    check(&view, 1, t0 + ms(310), replica(20));
    let now = t0 + ms(1100);
    let status = view.status_at(now);
    // Missing WAL written after the +100 ms sample: at most 1 s old.
    assert_eq!(status[1].lag_seconds, Some(1.0));
    assert_eq!(status[1].lag_bytes, Some(20));
    let err = view.choose_replica_at(now, None, MAX_LAG).unwrap_err();
    assert_eq!(err, NoReplica::AllLagging);
    assert!(
        view.choose_replica_at(now, None, Duration::from_secs(1))
            .is_ok()
    );
    check(&view, 1, t0 + ms(1200), replica(40));
    assert!(view.choose_replica_at(now, None, MAX_LAG).is_ok());
}

#[test]
fn read_your_writes_floor_follows_the_samples() {
    let (view, t0) = view();
    check(&view, 0, t0 + ms(100), primary(10, 1));
    check(&view, 0, t0 + ms(200), primary(20, 1));
    check(&view, 1, t0 + ms(210), replica(10));
    let commit = t0 + ms(150);
    assert_eq!(view.lsn_after(commit), Some(Lsn(20)));
    assert_eq!(
        view.lsn_after(t0 + ms(50)),
        Some(Lsn(10)),
        "from the timeline"
    );
    assert_eq!(
        view.lsn_after(t0 + ms(200)),
        None,
        "no sample sent after yet"
    );
    let now = t0 + ms(220);
    let floor = view.lsn_after(commit);
    let err = view.choose_replica_at(now, floor, MAX_LAG).unwrap_err();
    assert_eq!(err, NoReplica::BehindReadYourWritesFloor);
    check(&view, 1, t0 + ms(230), replica(20));
    assert_eq!(view.choose_replica_at(now, floor, MAX_LAG).unwrap().id, 1);
    assert_eq!(view.latest_primary_lsn(), Some(Lsn(20)));
}

#[test]
fn reads_spread_by_outstanding_leases() {
    let (view, t0) = view();
    check(&view, 0, t0, primary(10, 1));
    check(&view, 1, t0, replica(10));
    check(&view, 2, t0, replica(10));
    let a = view.choose_replica_at(t0, None, MAX_LAG).unwrap();
    let b = view.choose_replica_at(t0, None, MAX_LAG).unwrap();
    assert_ne!(a.id, b.id, "the second read goes to the idle replica");
    let c = view.choose_replica_at(t0, None, MAX_LAG).unwrap();
    assert_eq!(view.status_at(t0)[c.id].outstanding, 2);
    drop((a, b, c));
    assert!(view.status_at(t0).iter().all(|s| s.outstanding == 0));
}

#[test]
fn a_failed_check_bans_at_once_and_a_success_restores() {
    let (view, t0) = view();
    check(&view, 0, t0, primary(10, 1));
    check(&view, 1, t0, replica(10));
    view.record_failure(1, "monitor query on r1:5432 got no answer within 1s".into());
    assert!(!view.is_healthy(1));
    let status = view.status_at(t0);
    assert!(
        status[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("no answer")
    );
    let err = view.choose_replica_at(t0, None, MAX_LAG).unwrap_err();
    assert_eq!(err, NoReplica::AllUnhealthy);
    check(&view, 1, t0 + ms(100), replica(10));
    assert!(view.is_healthy(1));
    assert_eq!(view.status_at(t0)[1].last_error, None);
}

#[test]
fn a_node_whose_checks_stopped_goes_stale() {
    let (view, t0) = view();
    check(&view, 0, t0, primary(10, 1));
    check(&view, 1, t0, replica(10));
    view.set_stale_after(ms(300));
    assert!(view.choose_replica_at(t0 + ms(200), None, MAX_LAG).is_ok());
    let err = view
        .choose_replica_at(t0 + ms(400), None, MAX_LAG)
        .unwrap_err();
    assert_eq!(err, NoReplica::AllUnhealthy);
    // A waiting checkout's question: healthy up to stale_after after the
    // answer (received 1 ms after t0), inclusive.
    assert!(view.is_healthy_at(1, t0 + ms(301)));
    assert!(!view.is_healthy_at(1, t0 + ms(302)));
    // A request asks at a tick, converted exactly to the same time.
    let tick = |at| crate::client::clock::Tick::of(at);
    assert!(!view.gives_up_at(1, Role::Replica, tick(t0 + ms(301))));
    assert!(view.gives_up_at(1, Role::Replica, tick(t0 + ms(302))));
    assert!(!view.is_healthy_at(7, t0), "an unknown node is not healthy");
    // The same questions at a reading already in the view's time.
    let (healthy, stale) = (
        view.nanos_since_epoch(t0 + ms(301)),
        view.nanos_since_epoch(t0 + ms(302)),
    );
    assert!(view.is_healthy_on(1, healthy) && !view.is_healthy_on(1, stale));
    assert_eq!(view.nanos_at(tick(t0 + ms(301))), healthy);
    assert!(view.choose_replica_on(healthy, None, MAX_LAG).is_ok());
    assert!(view.choose_replica_on(stale, None, MAX_LAG).is_err());
}

#[test]
fn a_promoted_replica_takes_over_and_the_old_primary_is_refused() {
    let (view, t0) = view();
    let mut changes = view.changes();
    check(&view, 0, t0, primary(100, 1));
    check(&view, 1, t0, replica(100));
    assert!(!changes.has_changed().unwrap());
    view.record_failure(0, "cannot connect to p:5432".into());
    check(&view, 1, t0 + ms(100), primary(120, 2));
    assert_eq!(view.primary(), Some(1));
    assert!(changes.has_changed().unwrap());
    assert_eq!(*changes.borrow_and_update(), 1);
    // The timeline restarted with the new primary's samples.
    assert_eq!(view.latest_primary_lsn(), Some(Lsn(120)));
    assert_eq!(view.lsn_after(t0 + ms(50)), Some(Lsn(120)));
    // The old primary comes back, still a primary on timeline 1.
    check(&view, 0, t0 + ms(200), primary(110, 1));
    assert_eq!(view.primary(), Some(1), "never two primaries");
    assert!(!view.is_healthy(0));
    let error = view.status_at(t0)[0].last_error.clone().unwrap();
    assert!(
        error.contains("older than timeline 2") && error.contains("r1:5432"),
        "{error}"
    );
    // No replica is left but r2, unchecked.
    let err = view.choose_replica_at(t0, None, MAX_LAG).unwrap_err();
    assert_eq!(err, NoReplica::AllUnhealthy);
    // Rewound into a replica of the new primary: refused no more.
    check(&view, 0, t0 + ms(300), replica(120));
    assert!(view.is_healthy(0));
    assert_eq!(view.status_at(t0)[0].role, Role::Replica);
    assert!(changes.has_changed().unwrap());
}

#[test]
fn on_equal_timelines_the_configured_primary_keeps_the_role() {
    let (view, t0) = view();
    check(&view, 0, t0, primary(100, 3));
    check(&view, 2, t0, primary(100, 3));
    assert_eq!(view.primary(), Some(0));
    assert!(view.is_healthy(0));
    assert!(!view.is_healthy(2));
    assert_eq!(view.status_at(t0)[2].role, Role::Primary);
}

#[test]
fn no_claimant_means_no_primary() {
    let (view, t0) = view();
    let changes = view.changes();
    check(&view, 0, t0, replica(100));
    assert_eq!(view.primary(), None);
    assert!(!view.primary_ready());
    assert!(changes.has_changed().unwrap());
}

/// Whether `f` is still pending after one poll.
async fn still_pending(f: &mut std::pin::Pin<Box<impl std::future::Future<Output = ()>>>) -> bool {
    tokio::select! {
        biased;
        () = f.as_mut() => false,
        () = std::future::ready(()) => true,
    }
}

#[tokio::test]
async fn queued_requests_give_up_a_node_once_it_is_down_or_replaced() {
    let (view, t0) = view();
    check(&view, 0, t0, primary(100, 1));
    check(&view, 1, t0, replica(100));
    let mut replica_gone = Box::pin(view.given_up(1, Role::Replica));
    let mut primary_gone = Box::pin(view.given_up(0, Role::Primary));
    assert!(still_pending(&mut replica_gone).await);
    assert!(still_pending(&mut primary_gone).await);
    view.record_failure(1, "connection refused".into());
    replica_gone.await;
    // A primary that is merely down is still waited for…
    view.record_failure(0, "connection refused".into());
    assert!(still_pending(&mut primary_gone).await);
    // …until another node takes the role.
    check(&view, 2, t0 + ms(10), primary(120, 2));
    primary_gone.await;
    assert_eq!(view.wait_for_primary(ms(1)).await, Some(2));
}

/// A view like [`view`] keeping its record in `state` (`""`: none).
fn view_with_state(state: &std::path::Path) -> Arc<ClusterView> {
    let text = format!(
        "[cluster]\nprimary = \"p:5432\"\nreplicas = [\"r1:5432\", \"r2:5432\"]\nstate_file = \"{}\"\n",
        state.display()
    );
    ClusterView::new(&Config::from_toml(&text, Path::new("t.toml")).unwrap())
}

/// Writes what the monitor tasks would write, as they would (a failure
/// waits for the next round).
fn write_pending(view: &ClusterView) {
    while let Some((path, record)) = view.take_pending_record() {
        let result = super::record::store(&path, &record);
        let failed = result.is_err();
        view.record_written(record, result);
        if failed {
            return;
        }
    }
}

#[test]
fn without_a_record_writes_wait_for_every_node_then_the_primary_is_recorded_first() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster.state");
    let t0 = Instant::now();
    let view = view_with_state(&state);
    assert_eq!(view.primary(), None, "nobody before any check");
    check(&view, 0, t0, primary(100, 1));
    check(&view, 1, t0, replica(100));
    assert_eq!(view.primary(), None, "r2 has not answered");
    let why = view.no_primary_reason();
    assert!(
        why.contains("holds no record") && why.contains("r2:5432"),
        "{why}"
    );
    check(&view, 2, t0, replica(100));
    assert_eq!(view.primary(), None, "published only once recorded");
    assert!(view.no_primary_reason().contains("being recorded"));
    write_pending(&view);
    assert_eq!(view.primary(), Some(0));
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        text.contains("timeline = 1") && text.contains("p:5432"),
        "{text}"
    );
    assert!(text.contains(&SYSTEM.to_string()), "{text}");
}

#[test]
fn after_a_restart_the_recorded_primary_leads_and_an_older_timeline_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster.state");
    let t0 = Instant::now();
    // r1 was promoted (timeline 2) and recorded before the restart.
    let before = view_with_state(&state);
    for id in 0..3 {
        check(&before, id, t0, replica(100));
    }
    check(&before, 1, t0, primary(120, 2));
    write_pending(&before);
    assert_eq!(before.primary(), Some(1));
    drop(before);

    let view = view_with_state(&state);
    assert_eq!(view.primary(), Some(1), "restored from the state file");
    // The old primary answers as a primary on timeline 1; r1 is down.
    check(&view, 0, t0, primary(110, 1));
    view.record_failure(1, "connection refused".into());
    assert_eq!(view.primary(), Some(1), "never the old timeline");
    assert!(!view.is_healthy(0));
    let error = view.status_at(t0)[0].last_error.clone().unwrap();
    assert!(
        error.contains("timeline 1, older than timeline 2"),
        "{error}"
    );
    assert!(error.contains(&state.display().to_string()), "{error}");
    // r1 comes back demoted: still nobody on timeline 1 gets writes.
    check(&view, 1, t0, replica(120));
    assert_eq!(view.primary(), None);
    assert!(view.no_primary_reason().contains("older than timeline 2"));
    // A promotion to a newer timeline is taken (once recorded).
    check(&view, 2, t0, primary(130, 3));
    write_pending(&view);
    assert_eq!(view.primary(), Some(2));
}

#[test]
fn a_record_of_another_cluster_is_dropped_once_every_node_answered() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster.state");
    let other = super::record::PrimaryRecord {
        system: Some(1),
        timeline: 9,
        primary: "elsewhere:5432".parse().unwrap(),
    };
    super::record::store(&state, &other).unwrap();
    let t0 = Instant::now();
    let view = view_with_state(&state);
    check(&view, 0, t0, primary(100, 1));
    assert_eq!(view.primary(), None);
    let error = view.status_at(t0)[0].last_error.clone().unwrap();
    assert!(error.contains("another cluster"), "{error}");
    check(&view, 1, t0, replica(100));
    check(&view, 2, t0, replica(100));
    write_pending(&view);
    assert_eq!(view.primary(), Some(0));
}

#[test]
fn without_a_state_file_the_newest_timeline_seen_still_counts() {
    let (view, t0) = view();
    check(&view, 0, t0, primary(100, 1));
    check(&view, 1, t0, primary(120, 2));
    assert_eq!(view.primary(), Some(1));
    // The promoted node is demoted again; the old primary stays refused.
    check(&view, 1, t0, replica(120));
    assert_eq!(view.primary(), None);
    assert!(!view.is_healthy(0));
}

#[test]
fn a_state_file_that_cannot_be_written_holds_writes_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster.state");
    let t0 = Instant::now();
    let view = view_with_state(&state);
    drop(dir);
    for id in 0..3 {
        check(&view, id, t0, replica(100));
    }
    check(&view, 0, t0, primary(100, 1));
    write_pending(&view);
    assert_eq!(view.primary(), None);
    let why = view.no_primary_reason();
    assert!(
        why.contains("could not be recorded") && why.contains("state_file"),
        "{why}"
    );
}
