//! packaging/grafana/pgsidecar-dashboard.json: valid JSON, every metric it
//! queries exists, and it has the panels operators look for.

use std::path::Path;

use pgsidecar::observe::METRIC_NAMES;

fn dashboard() -> serde_json::Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/pgsidecar-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard exists");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = d["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
        out.push(p);
    }
    out
}

/// `pgsidecar_*` names in a PromQL expression, with histogram suffixes
/// mapped back to their family.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("pgsidecar_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..len];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| METRIC_NAMES.contains(base))
            })
            .unwrap_or(name);
        names.push(family.to_string());
        rest = &tail[len..];
    }
    names
}

#[test]
fn every_queried_metric_exists() {
    let d = dashboard();
    let mut queried = 0;
    for panel in panels(&d) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or("");
            for name in metrics_in(expr) {
                assert!(
                    METRIC_NAMES.contains(&name.as_str()),
                    "panel {:?} queries unknown metric {name}",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10, "the dashboard queries metrics ({queried})");
}

#[test]
fn it_has_the_panels_operators_need() {
    let d = dashboard();
    let titles: Vec<String> = panels(&d)
        .iter()
        .filter_map(|p| p["title"].as_str())
        .map(str::to_lowercase)
        .collect();
    for wanted in [
        "pool usage",
        "pool wait",
        "p50",
        "replica lag",
        "routing",
        "slow queries",
        "errors",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel about {wanted}: {titles:?}"
        );
    }
    let exprs = panels(&d)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n");
    for q in ["0.5", "0.95", "0.99"] {
        assert!(
            exprs.contains(&format!("histogram_quantile({q}, ")),
            "no p{q} query"
        );
    }
    assert!(exprs.contains("by (le, role)"), "percentiles by role");
}
