//! The EXPLAIN sampler against the shared cluster: a sequential scan of a
//! large unindexed table shows up in /queries, parameterised statements
//! get the plan for their values or the generic plan, a write is planned
//! but never executed, and text holding two statements is never sent.

use std::time::Duration;

use pgsidecar::cluster::Role;
use tokio_postgres::Client;

use crate::harness::{self, POSTGRES};
use crate::observe_support::{Event, get, observer, plan_of};

/// A superuser connection to `db` on the primary.
async fn owner(db: &str) -> Client {
    let primary = harness::cluster().primary();
    harness::connect(&primary.conn_string_as(POSTGRES.name, None, db))
        .await
        .expect("superuser connection")
}

/// Finds nodes of `node_type` in an `EXPLAIN (FORMAT JSON)` plan,
/// returning their relation names.
fn relations_of(plan: &serde_json::Value, node_type: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = plan
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("Plan"))
        .collect();
    while let Some(node) = stack.pop() {
        if node["Node Type"] == node_type {
            out.push(node["Relation Name"].as_str().unwrap_or("").to_string());
        }
        if let Some(children) = node["Plans"].as_array() {
            stack.extend(children);
        }
    }
    out
}

#[tokio::test]
async fn a_seq_scan_on_a_big_table_shows_in_queries() {
    let db = harness::big_table_db();
    let (observer, _) = observer("[observability]\nslow_query_threshold = \"100ms\"");
    let _background = observer.spawn_background();
    let server = observer.serve_http().await.unwrap();

    let ev = Event::read(
        &db,
        "select * from big where t = $1",
        "select * from big where t = 'x'",
        Duration::from_millis(900),
    );
    ev.record(&observer);
    plan_of(&observer, &ev).await;

    let (status, body) = get(server.addr, "/queries").await;
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let q = &report["queries"][0];
    assert_eq!(q["query"], "select * from big where t = $1");
    let plan = &q["plan"];
    assert_eq!(relations_of(&plan["json"], "Seq Scan"), ["big"], "{plan}");
    assert_eq!(plan["seq_scans"][0]["relation"], "big");
    assert!(plan["summary"].as_str().unwrap().contains("big"), "{plan}");
    assert_eq!(plan["generic"], false);
    assert!(plan["total_cost"].as_f64().unwrap() > 10_000.0, "{plan}");
    // The plan's filter shows no literal, like the normalised text.
    assert!(!body.contains("'x'"), "the literal is not kept: {body}");
    assert!(body.contains("(t = ?::text)"), "{body}");
}

#[tokio::test]
async fn parameterised_statements_get_the_value_plan_or_the_generic_plan() {
    let db = harness::fresh_db("observe_params");
    owner(&db)
        .await
        .batch_execute(
            "create table items (id int primary key, v text); \
             insert into items select g, g::text from generate_series(1, 10000) g; \
             analyze items; grant select on items to app",
        )
        .await
        .unwrap();
    let (observer, _) = observer("[observability]\nslow_query_threshold = \"1ms\"");
    let _background = observer.spawn_background();
    let sql = "select v from items where id = $1";

    let mut with_value = Event::read(&db, sql, sql, Duration::from_millis(50));
    with_value.params = Some(vec![Some("42".into())]);
    with_value.record(&observer);
    let plan = plan_of(&observer, &with_value).await;
    assert!(!plan.generic);
    assert_eq!(
        relations_of(&plan.plan, "Index Scan"),
        ["items"],
        "{:?}",
        plan.plan
    );

    // Same statement, other fingerprint, no captured values: generic plan.
    let mut generic = Event::read(
        &db,
        &format!("{sql} /* g */"),
        sql,
        Duration::from_millis(50),
    );
    generic.role = Role::Primary;
    generic.record(&observer);
    let plan = plan_of(&observer, &generic).await;
    assert!(plan.generic);
    assert!(plan.plan.to_string().contains("items"), "{:?}", plan.plan);

    // At most one plan per fingerprint per explain_min_interval.
    with_value.record(&observer);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = observer.render_metrics();
    assert!(
        metrics.contains("pgsidecar_explain_samples_total 2\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_write_is_planned_never_executed_and_two_statements_are_refused() {
    let db = harness::fresh_db("observe_write");
    let su = owner(&db).await;
    su.batch_execute("create table w (id int); grant select, insert, delete on w to app")
        .await
        .unwrap();
    let (observer, _) = observer("[observability]\nslow_query_threshold = \"1ms\"");
    let _background = observer.spawn_background();

    let mut insert = Event::read(
        &db,
        "insert into w values ($1)",
        "insert into w values (1)",
        Duration::from_millis(20),
    );
    insert.is_write = true;
    insert.record(&observer);
    let plan = plan_of(&observer, &insert).await;
    assert_eq!(plan.summary.top_node, "ModifyTable");

    let mut two = Event::read(
        &db,
        "select $1; insert into w values ($2)",
        "select 1; insert into w values (2)",
        Duration::from_millis(20),
    );
    two.is_write = true;
    two.record(&observer);
    harness::eventually(
        "the refusal to be counted",
        Duration::from_secs(5),
        || async {
            observer
                .render_metrics()
                .contains("pgsidecar_errors_total{kind=\"explain\"} 1\n")
                .then_some(())
        },
    )
    .await;
    assert!(observer.digest(two.fingerprint()).unwrap().plan.is_none());

    let rows = harness::scalar(&su, "select count(*) from w")
        .await
        .unwrap();
    assert_eq!(rows.as_deref(), Some("0"), "nothing was executed");
}

#[tokio::test]
async fn plans_are_taken_on_the_replica_that_ran_the_query() {
    let cluster = harness::cluster();
    let db = harness::fresh_db("observe_replica");
    owner(&db)
        .await
        .batch_execute("create table r (id int); grant select on r to app")
        .await
        .unwrap();
    let replica = cluster.replica(0);
    cluster.wait_for_replay(replica).unwrap();
    let (observer, _) = observer("[observability]\nslow_query_threshold = \"1ms\"");
    let _background = observer.spawn_background();

    let mut ev = Event::read(
        &db,
        "select * from r",
        "select * from r",
        Duration::from_millis(20),
    );
    ev.role = Role::Replica;
    ev.node = 1;
    ev.node_addr = replica.addr().parse().unwrap();
    ev.record(&observer);
    let plan = plan_of(&observer, &ev).await;
    assert_eq!(plan.node, replica.addr());
    assert_eq!(plan.summary.seq_scans[0].relation, "r");
}

#[tokio::test]
async fn a_failed_explain_logs_no_values() {
    let db = harness::fresh_db("observe_fail");
    owner(&db)
        .await
        .batch_execute("create table f (id int); grant select on f to app")
        .await
        .unwrap();
    let (observer, _) = observer("[observability]\nslow_query_threshold = \"1ms\"");
    let (log, _guard) = crate::observe_support::capture(false);
    let _background = observer.spawn_background();
    let sql = "select * from f where id = $1";
    let mut ev = Event::read(&db, sql, sql, Duration::from_millis(20));
    ev.params = Some(vec![Some("not-a-number-7731".into())]);
    ev.record(&observer);
    let failed = harness::eventually("the failure line", Duration::from_secs(30), || {
        let lines = log.matching("EXPLAIN failed");
        async move { lines.into_iter().next() }
    })
    .await;
    assert!(failed.contains("22P02"), "{failed}");
    assert!(failed.contains("invalid input syntax"), "{failed}");
    for line in log.lines() {
        assert!(!line.contains("not-a-number"), "a value leaked: {line}");
        assert!(!line.contains("7731"), "a value leaked: {line}");
    }
}
