//! Helpers for the observability tests: a standalone `Observer` with a
//! stub `Sources` (optionally backed by a real `ClusterView`), a minimal
//! HTTP GET, a captured tracing log, and owned query events.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgsidecar::cluster::{ClusterView, NodeStatus, Role};
use pgsidecar::config::NodeAddr;
use pgsidecar::observe::{ClientCounts, Observer, PoolSnapshot, QueryEvent, Sources};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{self, APP};

/// Sources for a standalone observer: ready when told, or when the
/// attached cluster view has a reachable primary.
#[derive(Default)]
pub struct StubSources {
    pub ready: AtomicBool,
    pub view: Mutex<Option<Arc<ClusterView>>>,
    pub pools: Mutex<Vec<PoolSnapshot>>,
}

impl StubSources {
    fn view(&self) -> Option<Arc<ClusterView>> {
        self.view.lock().unwrap().clone()
    }
}

impl Sources for StubSources {
    fn nodes(&self) -> Vec<NodeStatus> {
        self.view().map(|v| v.status()).unwrap_or_default()
    }
    fn primary_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) || self.view().is_some_and(|v| v.primary_ready())
    }
    fn pools(&self) -> Vec<PoolSnapshot> {
        self.pools.lock().unwrap().clone()
    }
    fn clients(&self) -> ClientCounts {
        ClientCounts::default()
    }
    fn pinned(&self) -> u64 {
        0
    }
}

/// An observer for the test proxy config merged with `extra_toml` (see
/// `harness::proxy_config`): the shared primary, `[http]` on a free port.
pub fn observer(extra_toml: &str) -> (Arc<Observer>, Arc<StubSources>) {
    let config = pgsidecar::config::handle(harness::proxy_config(extra_toml));
    let sources = Arc::new(StubSources::default());
    (Observer::new(config, sources.clone()), sources)
}

/// `GET path` (or another method); returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    Ok((status, body.to_string()))
}

/// `GET path`, panicking on I/O errors.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Log lines written while the guard of [`capture`] is alive (on this
/// thread, which in a `#[tokio::test]` also runs every spawned task).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Lines containing `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Captures INFO and above as text, or as JSON lines (what
/// `log_format = "json"` gives).
pub fn capture(json: bool) -> (Captured, tracing::subscriber::DefaultGuard) {
    crate::harness::init_tracing();
    let captured = Captured::default();
    let writer = captured.clone();
    let builder = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO);
    let guard = if json {
        tracing::subscriber::set_default(builder.json().finish())
    } else {
        tracing::subscriber::set_default(builder.finish())
    };
    (captured, guard)
}

/// An owned [`QueryEvent`].
#[derive(Clone, Debug)]
pub struct Event {
    pub normalized: Arc<str>,
    pub sql: String,
    pub params: Option<Vec<Option<String>>>,
    pub is_write: bool,
    pub role: Role,
    pub node: usize,
    pub node_addr: NodeAddr,
    pub duration: Duration,
    pub database: String,
}

impl Event {
    /// A read by `app` on the shared primary (node 0) in `db`.
    pub fn read(db: &str, normalized: &str, sql: &str, duration: Duration) -> Event {
        Event {
            normalized: normalized.into(),
            sql: sql.into(),
            params: None,
            is_write: false,
            role: Role::Primary,
            node: 0,
            node_addr: harness::cluster().primary().addr().parse().unwrap(),
            duration,
            database: db.into(),
        }
    }

    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.normalized.hash(&mut h);
        h.finish()
    }

    pub fn record(&self, observer: &Observer) {
        observer.record(&QueryEvent {
            fingerprint: self.fingerprint(),
            normalized: &self.normalized,
            sql: &self.sql,
            params: self.params.as_deref(),
            is_write: self.is_write,
            role: self.role,
            node: self.node,
            node_addr: &self.node_addr,
            duration: self.duration,
            rows: 1,
            error: None,
            user: APP.name,
            database: &self.database,
            application_name: "observe-test",
        });
    }
}

/// Waits (up to 5 s) until the observer holds a plan for `ev`.
pub async fn plan_of(observer: &Observer, ev: &Event) -> Arc<pgsidecar::observe::PlanSample> {
    harness::eventually("a sampled plan", Duration::from_secs(30), || async {
        observer.digest(ev.fingerprint()).and_then(|d| d.plan)
    })
    .await
}
