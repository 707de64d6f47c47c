//! The `/queries` report: the top fingerprints by a chosen order, as
//! JSON, with times in milliseconds and the last sampled plan.
//! `?order=total|mean|p95|calls` (default `total`), `&limit=N` (default
//! 20, 1 to 10000).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::observe::digest::DigestSnapshot;

/// Default and largest `limit`.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 10_000;

/// What `/queries` sorts by (largest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QueryOrder {
    /// Total time spent.
    #[default]
    Total,
    Mean,
    P95,
    Calls,
}

impl FromStr for QueryOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "total" => Ok(QueryOrder::Total),
            "mean" => Ok(QueryOrder::Mean),
            "p95" => Ok(QueryOrder::P95),
            "calls" => Ok(QueryOrder::Calls),
            other => Err(format!(
                "order must be total, mean, p95 or calls, got `{other}`"
            )),
        }
    }
}

impl fmt::Display for QueryOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryOrder::Total => "total",
            QueryOrder::Mean => "mean",
            QueryOrder::P95 => "p95",
            QueryOrder::Calls => "calls",
        })
    }
}

/// Parsed `/queries` parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueriesParams {
    pub(crate) order: QueryOrder,
    pub(crate) limit: usize,
}

/// Parses a URL query string; the error is a message for a 400 answer.
pub(crate) fn parse_params(query: Option<&str>) -> Result<QueriesParams, String> {
    let mut params = QueriesParams {
        order: QueryOrder::default(),
        limit: DEFAULT_LIMIT,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "order" => params.order = value.parse()?,
            "limit" => {
                params.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!("limit must be a number from 1 to {MAX_LIMIT}, got `{value}`")
                    })?
            }
            other => return Err(format!("unknown parameter `{other}` (use order, limit)")),
        }
    }
    Ok(params)
}

/// Sorts `digests` by `params.order` (ties: more calls first, then by
/// fingerprint, so the answer is stable) and renders the top `limit`.
pub(crate) fn report(mut digests: Vec<DigestSnapshot>, params: QueriesParams) -> Value {
    let kept = digests.len();
    let key = |d: &DigestSnapshot| -> (Duration, u64) {
        match params.order {
            QueryOrder::Total => (d.total, d.calls),
            QueryOrder::Mean => (d.mean, d.calls),
            QueryOrder::P95 => (d.p95, d.calls),
            QueryOrder::Calls => (Duration::ZERO, d.calls),
        }
    };
    digests.sort_by(|a, b| key(b).cmp(&key(a)).then(a.fingerprint.cmp(&b.fingerprint)));
    digests.truncate(params.limit);
    json!({
        "order": params.order.to_string(),
        "fingerprints_kept": kept,
        "queries": digests.iter().map(entry).collect::<Vec<_>>(),
    })
}

fn entry(d: &DigestSnapshot) -> Value {
    let plan = d.plan.as_ref().map(|p| {
        json!({
            "summary": p.summary.to_string(),
            "top_node": p.summary.top_node,
            "total_cost": p.summary.total_cost,
            "seq_scans": p.summary.seq_scans,
            "generic": p.generic,
            "node": p.node,
            "at": humantime::format_rfc3339_seconds(p.at).to_string(),
            "at_unix": p.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "json": p.plan,
        })
    });
    json!({
        "fingerprint": format!("{:016x}", d.fingerprint),
        "query": &*d.query,
        "calls": d.calls,
        "errors": d.errors,
        "rows": d.rows,
        "total_ms": ms(d.total),
        "mean_ms": ms(d.mean),
        "min_ms": ms(d.min),
        "max_ms": ms(d.max),
        "p50_ms": ms(d.p50),
        "p95_ms": ms(d.p95),
        "p99_ms": ms(d.p99),
        "routes": { "primary": d.primary, "replica": d.replica },
        "plan": plan,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn digest(fp: u64, calls: u64, total_ms: u64, p95_ms: u64) -> DigestSnapshot {
        let ms = Duration::from_millis;
        DigestSnapshot {
            fingerprint: fp,
            query: Arc::from(format!("select {fp}")),
            calls,
            errors: 0,
            rows: calls,
            total: ms(total_ms),
            min: ms(1),
            max: ms(p95_ms),
            mean: ms(total_ms) / calls as u32,
            p50: ms(1),
            p95: ms(p95_ms),
            p99: ms(p95_ms),
            primary: calls,
            replica: 0,
            plan: None,
        }
    }

    fn order(query: &str) -> Vec<String> {
        let digests = vec![
            digest(1, 1000, 2000, 5),  // many cheap calls: calls, total
            digest(2, 2, 1800, 1500),  // few slow calls: mean, p95
            digest(3, 10, 1000, 2000), // spiky: p95
        ];
        let report = report(digests, parse_params(Some(query)).unwrap());
        report["queries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["fingerprint"].as_str().unwrap()[15..].to_string())
            .collect()
    }

    #[test]
    fn orders_and_limits() {
        assert_eq!(order(""), ["1", "2", "3"]);
        assert_eq!(order("order=total"), ["1", "2", "3"]);
        assert_eq!(order("order=mean"), ["2", "3", "1"]);
        assert_eq!(order("order=p95"), ["3", "2", "1"]);
        assert_eq!(order("order=calls&limit=2"), ["1", "3"]);
        assert_eq!(order("limit=1&order=mean"), ["2"]);
    }

    #[test]
    fn report_fields() {
        let r = report(vec![digest(0xab, 4, 100, 40)], parse_params(None).unwrap());
        let q = &r["queries"][0];
        assert_eq!(q["fingerprint"], "00000000000000ab");
        assert_eq!(q["query"], "select 171");
        assert_eq!(q["calls"], 4);
        assert_eq!(q["mean_ms"], 25.0);
        assert_eq!(q["p95_ms"], 40.0);
        assert_eq!(q["routes"]["primary"], 4);
        assert!(q["plan"].is_null());
        assert_eq!(r["fingerprints_kept"], 1);
    }

    #[test]
    fn bad_parameters_are_explained() {
        for (query, needle) in [
            ("order=slowest", "order must be"),
            ("limit=0", "limit must be"),
            ("limit=ten", "limit must be"),
            ("limit=100000", "limit must be"),
            ("sort=total", "unknown parameter `sort`"),
        ] {
            let err = parse_params(Some(query)).unwrap_err();
            assert!(err.contains(needle), "{query}: {err}");
        }
    }
}
