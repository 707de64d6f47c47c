//! Tests of the classifier: the routing table, fingerprints, the lexer's
//! robustness, and the reported transaction/session/table effects.

mod effects;
mod lexing;
mod table;

use super::{Classified, Classifier, MAX_NESTING, Route};

pub(super) fn classifier() -> Classifier {
    Classifier::new(
        &["app.safe_fn".to_string(), "Audit_Read".to_string()],
        64 * 1024,
        1000,
    )
}

pub(super) fn classify(sql: &str) -> Classified {
    classifier().classify(sql)
}

#[test]
fn routing_table() {
    assert!(
        table::CASES.len() >= 150,
        "only {} cases",
        table::CASES.len()
    );
    let c = classifier();
    let mut failures = Vec::new();
    for &(sql, route, reason) in table::CASES {
        // Twice: the second answer comes from the cache and must agree.
        for pass in ["miss", "hit"] {
            let got = c.classify(sql);
            let ok = got.info.route == route
                && (reason.is_empty() || got.info.reason.as_str() == reason);
            if !ok {
                failures.push(format!(
                    "{pass}: {sql:?}\n   want {route:?}/{reason}, got {:?}/{}",
                    got.info.route,
                    got.info.reason.as_str()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn configured_read_only_functions() {
    let c = classifier();
    assert_eq!(c.classify("select app.safe_fn(1)").info.route, Route::Read);
    assert_eq!(c.classify("select audit_read()").info.route, Route::Read);
    assert_eq!(c.classify("select safe_fn(1)").info.route, Route::Write);
    assert_eq!(
        c.classify("select other.safe_fn(1)").info.route,
        Route::Write
    );
    // Configuration cannot re-allow the denied functions.
    let c = Classifier::new(&["nextval".to_string()], 1024, 10);
    assert_eq!(c.classify("select nextval('s')").info.route, Route::Write);
}

#[test]
fn too_large_goes_to_primary_unparsed() {
    let c = Classifier::new(&[], 100, 10);
    let big = format!("select {} from t", "a, ".repeat(100) + "b");
    let got = c.classify(&big);
    assert_eq!(
        (got.info.route, got.info.reason.as_str()),
        (Route::Write, "too_large")
    );
    // Session pins are still seen lexically.
    let big = format!("create temp table x as select {}1", "1 + ".repeat(100));
    assert_eq!(
        c.classify(&big).info.pin,
        Some(super::PinReason::TempObject)
    );
    assert_eq!(c.classify("select 1").info.route, Route::Read);
}

/// Inputs shaped to exhaust a recursive parser. Each must be answered on
/// a test thread's 2 MiB stack (a debug build's sqlparser frames are the
/// worst case), and whatever is not parsed must go to the primary.
#[test]
fn deep_nesting_never_overflows_and_goes_to_the_primary() {
    let c = Classifier::new(&[], 64 * 1024, 0);
    let deep = |open: &str, mid: &str, close: &str, n: usize| {
        format!("{}{mid}{}", open.repeat(n), close.repeat(n))
    };
    let unparsed = [
        format!("select a from {}", deep("(", "t", ")", 65)),
        format!("select array{}", deep("[", "1", "]", 1_000)),
    ];
    for sql in &unparsed {
        let got = c.classify(sql).info;
        assert_eq!((got.route, got.reason.as_str()), (Route::Write, "too_deep"));
    }
    // Just under the cap: sqlparser itself gives up or answers; whichever,
    // nothing crashes and nothing it could not read goes to a replica.
    let nested = [
        format!("select a from {}", deep("(", "t", ")", MAX_NESTING)),
        format!(
            "select a from {}",
            deep("(select a, b from (", "t", ")x)", 30)
        ),
        format!("select {}", deep("(select ", "1", ")", 60)),
        format!("select {}", deep("case when a then ", "1", " end", 3_000)),
        format!("select {}true", "not ".repeat(10_000)),
        format!("select 1 where {}", vec!["a = 1"; 5_000].join(" and ")),
    ];
    for sql in &nested {
        let got = c.classify(sql).info;
        if got.route == Route::Read {
            assert_eq!(got.reason.as_str(), "read", "{}", &sql[..40]);
        }
    }
}

#[test]
fn reasons_have_stable_unique_labels() {
    let mut labels: Vec<&str> = super::Reason::ALL.iter().map(|r| r.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), super::Reason::ALL.len());
    assert!(
        labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    );
}

#[test]
fn cache_is_bounded_and_concurrent() {
    let c = std::sync::Arc::new(Classifier::new(&[], 1024, 128));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let sql = format!("select c{} from t{t} where a = {i}", i % 300);
                    assert_eq!(c.classify(&sql).info.route, Route::Read);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker panicked");
    }
    let n = c.cached_statements();
    assert!(n > 0 && n <= 128 + 64, "{n} cached");
}

#[test]
fn classifier_is_shareable_across_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Classifier>();
    shareable::<Classified>();
}

#[test]
fn cache_is_bounded_in_bytes_and_text_is_cut() {
    let c = Classifier::new(&[], 1024, 20_000);
    let padding = "a".repeat(70 * 1024);
    for i in 0..400 {
        let class = c.classify(&format!("select 1 as \"q{i}_{padding}\""));
        let text = &class.info.normalized;
        assert!(
            text.len() <= super::MAX_NORMALIZED_TEXT + 3,
            "{}",
            text.len()
        );
        assert!(text.starts_with(&format!("select $1 as \"q{i}_aaa")) && text.ends_with('…'));
    }
    let n = c.cached_statements();
    assert!(
        n * super::MAX_NORMALIZED_TEXT <= super::CACHE_TEXT_BUDGET,
        "{n} cached"
    );
}
