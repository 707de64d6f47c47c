//! Cost of `Observer::record` on the query path: what every statement
//! pays for metrics, its digest (and, with `observability.enabled =
//! false`, for the metrics alone). A fast read that is neither slow nor
//! sampled, the case of nearly every statement. Target: ≤ 1 µs, i.e. a
//! few percent of the proxy's ~20 µs of CPU per pgbench -S transaction.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pgsidecar::cluster::{NodeStatus, Role};
use pgsidecar::config::{Config, NodeAddr};
use pgsidecar::observe::{ClientCounts, Observer, PoolSnapshot, QueryEvent, Sources};

struct NoSources;

impl Sources for NoSources {
    fn nodes(&self) -> Vec<NodeStatus> {
        Vec::new()
    }
    fn primary_ready(&self) -> bool {
        true
    }
    fn pools(&self) -> Vec<PoolSnapshot> {
        Vec::new()
    }
    fn clients(&self) -> ClientCounts {
        ClientCounts::default()
    }
    fn pinned(&self) -> u64 {
        0
    }
}

fn observer(enabled: bool) -> Arc<Observer> {
    let text =
        format!("[cluster]\nprimary = \"127.0.0.1:5432\"\n[observability]\nenabled = {enabled}\n");
    let config = Config::from_toml(&text, Path::new("<bench>")).expect("valid config");
    Observer::new(pgsidecar::config::handle(config), Arc::new(NoSources))
}

fn record(c: &mut Criterion) {
    let normalized: Arc<str> = "select abalance from pgbench_accounts where aid = $1".into();
    let node: NodeAddr = "127.0.0.1:5432".parse().expect("address");
    for (name, enabled) in [("record/enabled", true), ("record/disabled", false)] {
        let observer = observer(enabled);
        // 100 fingerprints, as a small application has.
        let mut fingerprint = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                fingerprint = (fingerprint + 1) % 100;
                observer.record(black_box(&QueryEvent {
                    fingerprint: fingerprint.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    normalized: &normalized,
                    sql: "select abalance from pgbench_accounts where aid = 42",
                    params: None,
                    is_write: false,
                    role: Role::Primary,
                    node: 0,
                    node_addr: &node,
                    duration: Duration::from_micros(180),
                    rows: 1,
                    error: None,
                    user: "app",
                    database: "bench",
                    application_name: "pgbench",
                }))
            })
        });
    }
}

criterion_group!(benches, record);
criterion_main!(benches);
