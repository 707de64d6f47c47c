//! Digest statistics, percentiles, the LRU bound and concurrent recording.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn sample<'a>(fp: u64, text: &'a Arc<str>, role: Role, ms: u64) -> Sample<'a> {
    Sample {
        fingerprint: fp,
        normalized: text,
        role,
        duration: Duration::from_millis(ms),
        rows: 2,
        error: ms.is_multiple_of(10),
    }
}

fn close(actual: Duration, expected_ms: u64) -> bool {
    let e = expected_ms as f64;
    (actual.as_secs_f64() * 1000.0 - e).abs() <= e * 0.01 + 0.001
}

#[test]
fn statistics_and_percentiles() {
    let d = Digests::new(100);
    let text: Arc<str> = "select * from t where id = $1".into();
    for ms in 1..=100 {
        let role = if ms <= 30 {
            Role::Primary
        } else {
            Role::Replica
        };
        d.record(&sample(7, &text, role, ms), None);
    }
    let s = d.get(7).unwrap();
    assert_eq!(&*s.query, &*text);
    assert_eq!((s.calls, s.errors, s.rows), (100, 10, 200));
    assert_eq!((s.primary, s.replica), (30, 70));
    assert_eq!(s.total, Duration::from_millis(5050));
    assert_eq!(s.mean, Duration::from_micros(50_500));
    assert_eq!(
        (s.min, s.max),
        (Duration::from_millis(1), Duration::from_millis(100))
    );
    assert!(close(s.p50, 50), "{:?}", s.p50);
    assert!(close(s.p95, 95), "{:?}", s.p95);
    assert!(close(s.p99, 99), "{:?}", s.p99);
    assert!(d.get(8).is_none());
}

#[test]
fn the_table_is_bounded_and_keeps_what_is_used() {
    let d = Digests::new(64);
    let text: Arc<str> = "q".into();
    let hot = 0xdead_beef_u64;
    for fp in 0..5_000u64 {
        d.record(
            &sample(
                fp.wrapping_mul(0x1234_5678_9abc_def1),
                &text,
                Role::Primary,
                1,
            ),
            None,
        );
        d.record(&sample(hot, &text, Role::Primary, 1), None);
        assert!(d.len() <= 64);
    }
    assert_eq!(d.len(), 64);
    assert_eq!(d.get(hot).unwrap().calls, 5_000);
    // Shrinking on reload evicts down to the new bound.
    d.resize(16);
    assert!(d.len() <= 16, "{}", d.len());
    assert!(d.get(hot).is_some());
}

#[test]
fn a_tiny_bound_still_holds() {
    let d = Digests::new(3);
    let text: Arc<str> = "q".into();
    for fp in 0..100 {
        d.record(&sample(fp, &text, Role::Primary, 1), None);
    }
    assert!(d.len() <= 3 && d.len() >= 1, "{}", d.len());
}

#[test]
fn explain_is_claimed_once_per_interval() {
    let d = Digests::new(10);
    let text: Arc<str> = "q".into();
    let t0 = Instant::now();
    let minute = Duration::from_secs(60);
    let s = sample(1, &text, Role::Replica, 500);
    assert!(d.record(&s, Some((minute, t0))));
    assert!(!d.record(&s, Some((minute, t0 + Duration::from_secs(59)))));
    assert!(!d.record(&s, None));
    assert!(d.record(&s, Some((minute, t0 + minute))));
    // A claim given back (queue full) can be taken again at once.
    d.unclaim_explain(1);
    assert!(d.record(&s, Some((minute, t0 + minute))));
    // Claimed and unclaimed queries are counted alike (the unclaimed in
    // this thread's slot until the table is read).
    assert_eq!(d.get(1).unwrap().calls, 5);
}

/// More fingerprints than a thread's slot tallies, one of them hot: every
/// query is counted once, in its own fingerprint, whether it went through
/// the slot or straight to the table, and reads see all of them.
#[test]
fn a_threads_pending_tallies_are_exact_when_read() {
    let d = Digests::new(1000);
    let text: Arc<str> = "q".into();
    for round in 1..=3u64 {
        for fp in 0..40u64 {
            d.record(&sample(fp, &text, Role::Replica, 1), None);
            d.record(&sample(1_000, &text, Role::Primary, 2), None);
        }
        assert_eq!(d.get(1_000).unwrap().calls, 40 * round);
        for fp in 0..40u64 {
            let s = d.get(fp).unwrap();
            assert_eq!((s.calls, s.replica, s.rows), (round, round, 2 * round));
        }
        assert_eq!(d.get(1_000).unwrap().primary, 40 * round);
        let mut window = latency_histogram();
        d.take_window(&mut window);
        assert_eq!(window.len(), 80, "round {round}");
    }
    assert_eq!(d.len(), 41);
    let s = d.get(1_000).unwrap();
    assert_eq!(
        (s.min, s.max, s.total),
        (
            Duration::from_millis(2),
            Duration::from_millis(2),
            Duration::from_millis(240)
        )
    );
}

#[test]
fn concurrent_recording_loses_nothing() {
    let d = Arc::new(Digests::new(1000));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                let text: Arc<str> = "q".into();
                for i in 0..10_000u64 {
                    d.record(&sample(i % 100, &text, Role::Primary, t + 1), None);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let calls: u64 = d.snapshots().iter().map(|s| s.calls).sum();
    assert_eq!(calls, 40_000);
    let mut window = latency_histogram();
    d.take_window(&mut window);
    assert_eq!(window.len(), 40_000);
    let mut again = latency_histogram();
    d.take_window(&mut again);
    assert!(again.is_empty(), "taking the window empties it");
}

#[test]
fn recent_window_forgets_old_seconds() {
    let mut w = RecentLatency::new();
    assert_eq!(w.quantile(0.95), None);
    let second = |ms| {
        let mut h = latency_histogram();
        for _ in 0..100 {
            entry::record_latency(&mut h, Duration::from_millis(ms));
        }
        h
    };
    w.push(second(300), 30);
    assert!(close(w.quantile(0.95).unwrap(), 300));
    for _ in 0..29 {
        w.push(second(2), 30);
    }
    // One slow second in thirty: over the top 1 %.
    assert!(close(w.quantile(0.99).unwrap(), 300), "still in the window");
    w.push(second(2), 30);
    assert!(close(w.quantile(0.99).unwrap(), 2));
    // A shorter window (a reload) drops the older seconds at once.
    w.push(second(300), 30);
    w.push(second(300), 30);
    w.push(second(2), 1);
    assert!(close(w.quantile(0.95).unwrap(), 2));
}

#[test]
fn a_histogram_of_fast_queries_stays_small() {
    let mut h = latency_histogram();
    for us in [50, 900, 20_000, 400_000] {
        entry::record_latency(&mut h, Duration::from_micros(us));
    }
    // counts are u32: well under 10 KB per fingerprint.
    assert!(h.distinct_values() * 4 < 10_000, "{}", h.distinct_values());
}

#[test]
fn text_and_plans_are_bounded_in_bytes() {
    let d = Digests::new(5000);
    // 100 bytes of text per fingerprint, 16 shards × 1000 bytes in all.
    d.set_byte_limits(100, 16_000);
    let long: Arc<str> = "é".repeat(5000).into();
    for fp in 0..2000u64 {
        let fp = fp.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        d.record(&sample(fp, &long, Role::Primary, 1), None);
        assert!(d.bytes() <= 16_000, "{}", d.bytes());
    }
    let kept = d.snapshots();
    assert!(kept.len() >= 100, "{}", kept.len());
    for s in &kept {
        assert!(
            s.query.len() <= 100 && s.query.ends_with('…'),
            "{}",
            s.query
        );
    }
    // A plan takes room from the others in its shard, never more.
    let fp = kept[0].fingerprint;
    let plan = |bytes| {
        Arc::new(PlanSample {
            summary: crate::observe::explain::PlanSummary {
                top_node: "Result".into(),
                total_cost: 0.0,
                seq_scans: Vec::new(),
            },
            plan: serde_json::Value::Null,
            at: std::time::SystemTime::now(),
            node: String::new(),
            generic: true,
            bytes,
        })
    };
    d.set_plan(fp, plan(800));
    assert!(d.get(fp).unwrap().plan.is_some());
    assert!(d.bytes() <= 16_000, "{}", d.bytes());
    d.set_plan(fp, plan(5_000));
    assert_eq!(
        d.get(fp).unwrap().plan.unwrap().bytes,
        800,
        "too big to keep"
    );
    // A smaller budget (a reload) forgets down to it.
    d.set_byte_limits(100, 1_600);
    assert!(d.bytes() <= 1_600, "{}", d.bytes());
}

#[test]
fn the_windows_running_sum_matches_merging_it_afresh() {
    let mut w = RecentLatency::new();
    let mut kept: std::collections::VecDeque<Histogram<u32>> = Default::default();
    // Seconds of varied latencies (some empty), and a window that shrinks
    // and grows again as a reload would make it.
    for i in 0..200u64 {
        let mut h = latency_histogram();
        for j in 0..(i % 7) * 13 {
            let micros = 1 + (i * 7919 + j * 104_729) % 5_000_000;
            entry::record_latency(&mut h, Duration::from_micros(micros));
        }
        let seconds = match i {
            0..=79 => 30,
            80..=119 => 5,
            _ => 60,
        };
        w.push(h.clone(), seconds);
        kept.push_back(h);
        while kept.len() > seconds {
            kept.pop_front();
        }
        let mut afresh = latency_histogram();
        for h in &kept {
            afresh.add(h).unwrap();
        }
        for q in [0.5, 0.95, 0.99, 1.0] {
            let expected = (!afresh.is_empty()).then(|| entry::quantile(&afresh, q));
            assert_eq!(w.quantile(q), expected, "second {i}, q {q}");
        }
    }
}
