//! `[budgets] p95_query_time` on a running proxy: slow queries through it
//! raise `pgsidecar_budget_exceeded{budget="p95_query_time"}` with exactly
//! one warning, and fast queries for one window bring it back with one
//! recovery line. A 2 s window (`[budgets] window`) keeps this short.

use std::time::Duration;

use pgsidecar::proxy::Proxy;

use crate::harness::{self, APP};
use crate::observe_e2e_support::scrape;
use crate::observe_support::capture;

async fn exceeded(proxy: &Proxy) -> f64 {
    scrape(proxy)
        .await
        .value("pgsidecar_budget_exceeded", &[("budget", "p95_query_time")])
}

#[tokio::test]
async fn slow_queries_cross_the_p95_budget_once_and_recover_once() {
    let db = harness::fresh_db("obs_e2e_budget");
    let (log, _guard) = capture(false);
    let proxy = harness::proxy(
        "[observability]\nexplain = \"off\"\nslow_query_threshold = \"1h\"\n\
         [budgets]\np95_query_time = \"50ms\"\nwindow = \"2s\"",
    )
    .await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    assert_eq!(exceeded(&proxy).await, 0.0);

    // 100 ms queries until the once-a-second check sees the p95 over 50 ms.
    harness::eventually(
        "the budget to be exceeded",
        Duration::from_secs(10),
        || async {
            harness::scalar(&client, "select pg_sleep(0.1)")
                .await
                .unwrap();
            (exceeded(&proxy).await == 1.0).then_some(())
        },
    )
    .await;
    let value = scrape(&proxy)
        .await
        .value("pgsidecar_budget_value", &[("budget", "p95_query_time")]);
    assert!(value >= 0.1, "p95 {value}s");
    // Fast queries until the slow seconds have left the window.
    harness::eventually("the budget to recover", Duration::from_secs(10), || async {
        harness::scalar(&client, "select 1").await.unwrap();
        (exceeded(&proxy).await == 0.0).then_some(())
    })
    .await;

    let crossed = log.matching("budget exceeded: p95_query_time");
    assert_eq!(crossed.len(), 1, "{:#?}", log.lines());
    assert!(crossed[0].contains("WARN"), "{}", crossed[0]);
    assert!(crossed[0].contains("(budget 50.0ms)"), "{}", crossed[0]);
    let recovered = log.matching("budget recovered: p95_query_time");
    assert_eq!(recovered.len(), 1, "{:#?}", log.lines());
    assert_eq!(log.matching("budget ").len(), 2, "{:#?}", log.lines());
}
