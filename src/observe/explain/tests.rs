//! Plan summaries from real PostgreSQL 15 `EXPLAIN (FORMAT JSON)` output
//! (captured into `testdata/`), and the sampler's queue bound.

use serde_json::Value;

use super::*;

fn plan(name: &str) -> Value {
    let text = match name {
        "join" => include_str!("testdata/join_plan.json"),
        _ => include_str!("testdata/parallel_plan.json"),
    };
    serde_json::from_str(text).expect("testdata is JSON")
}

#[test]
fn summary_names_top_node_cost_and_every_seq_scan() {
    let s = PlanSummary::from_json(&plan("join")).unwrap();
    assert_eq!(s.top_node, "Nested Loop");
    assert!((s.total_cost - 3131.20).abs() < 1e-9);
    let scans: Vec<(&str, f64)> = s
        .seq_scans
        .iter()
        .map(|x| (x.relation.as_str(), x.rows))
        .collect();
    // Depth first, InitPlans and SubPlans included; index scans are not.
    assert_eq!(scans, [("big", 1.0), ("small", 100.0), ("small", 33.0)]);
    assert_eq!(
        s.to_string(),
        "Nested Loop, cost 3131.20; seq scans: big (≈1 rows), small (≈100 rows), small (≈33 rows)"
    );
}

#[test]
fn summary_marks_parallel_scans() {
    let s = PlanSummary::from_json(&plan("parallel")).unwrap();
    assert_eq!(s.top_node, "Aggregate");
    assert_eq!(s.seq_scans.len(), 1);
    assert!(s.seq_scans[0].parallel);
    assert!(s.to_string().contains("parallel big (≈8207 rows)"), "{s}");
}

#[test]
fn summary_of_something_else_is_an_error_not_a_panic() {
    for bad in [
        serde_json::json!([]),
        serde_json::json!({"Plan": 3}),
        serde_json::json!("text"),
        serde_json::json!([{"Planning": {}}]),
    ] {
        let err = PlanSummary::from_json(&bad).unwrap_err();
        assert!(err.to_string().contains("no \"Plan\""), "{err}");
    }
    // A minimal plan without the optional keys still summarises.
    let s = PlanSummary::from_json(&serde_json::json!({"Plan": {}})).unwrap();
    assert_eq!((s.top_node.as_str(), s.total_cost), ("?", 0.0));
    assert_eq!(s.to_string(), "?, cost 0.00; no seq scans");
}

#[test]
fn a_full_queue_refuses_without_waiting() {
    let queue = Queue::new();
    let request = |i: u64| ExplainRequest {
        fingerprint: i,
        normalized: "select $1".into(),
        sql: "select 1".into(),
        params: None,
        is_write: false,
        target: Target {
            node: "127.0.0.1:5432".parse().unwrap(),
            database: "db".into(),
            user: "app".into(),
        },
    };
    let accepted = (0..QUEUE_CAPACITY as u64 + 10)
        .filter(|i| queue.offer(request(*i)))
        .count();
    assert_eq!(accepted, QUEUE_CAPACITY);
    assert!(queue.take_receiver().is_some());
    assert!(queue.take_receiver().is_none(), "one worker only");
}

#[test]
fn login_prefers_the_queries_user_and_skips_hashes() {
    let config = crate::config::Config::from_toml(
        "[cluster]\nprimary = \"h:1\"\n\
         [[users]]\nname = \"mon\"\npassword = \"plain\"\n\
         [[users]]\nname = \"app\"\npassword = \"app-pw\"\n\
         [[users]]\nname = \"hashed\"\npassword = \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    assert_eq!(
        conn::login(&config, "app"),
        Some(("app".into(), Some("app-pw".into())))
    );
    // A stored hash cannot log in: the monitor user (first entry) does.
    assert_eq!(
        conn::login(&config, "hashed"),
        Some(("mon".into(), Some("plain".into())))
    );
    assert_eq!(
        conn::login(&config, "stranger"),
        Some(("mon".into(), Some("plain".into())))
    );
}
