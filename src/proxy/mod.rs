//! Wires the parts together: the state shared by all client tasks, and
//! starting and stopping a proxy (used by `run`, `demo` and the tests).

mod reload;
mod sources;
mod start_only;

pub use reload::ReloadError;
pub use start_only::StartOnly;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::buffer_budget::BufferBudget;
use crate::client::credentials::Credentials;
use crate::client::prepared::StatementRegistry;
use crate::client::registry::ClientRegistry;
use crate::cluster::ClusterView;
use crate::config::{Config, ConfigHandle};
use crate::observe::{HttpHandle, ObserveError, Observer};
use crate::routing::Classifier;
use crate::routing::policy::WriteLog;
use crate::server::Pools;

/// Statements longer than this are not parsed: they go to the primary.
pub const MAX_PARSED_QUERY: usize = 256 * 1024;
/// Statement shapes the classifier remembers.
pub const CLASSIFIER_CACHE: usize = 20_000;

/// State every client task reads. Small on purpose: each part has one owner
/// module, and config is reached through the swappable handle.
pub struct Shared {
    pub config: ConfigHandle,
    pub credentials: ArcSwap<Credentials>,
    pub pools: Pools,
    /// Live clients: cancel keys, activity, held servers.
    pub clients: Arc<ClientRegistry>,
    /// Prepared statements shared by all clients.
    pub statements: StatementRegistry,
    /// Roles, health and replication lag of the nodes; replaced when a
    /// reload changes the node list.
    cluster: ArcSwap<ClusterView>,
    monitor: Mutex<Option<JoinHandle<()>>>,
    /// With `[fleet]` (at start): this member's coordinators and what they
    /// see. Joining or leaving a fleet takes a restart.
    pub fleet: Option<crate::fleet::Fleet>,
    /// Bumped when pools or the node list are replaced, so sessions drop
    /// the pools they looked up.
    generation: AtomicU64,
    /// The file `run` loaded, for SIGHUP and the console's RELOAD.
    pub config_path: OnceLock<PathBuf>,
    /// Keys read only at start, which a reload keeps (set once bound).
    pub start_only: OnceLock<StartOnly>,
    /// Cancelled when the proxy starts shutting down.
    pub shutdown: CancellationToken,
    /// Cancelled when `shutdown_timeout` has passed: sessions still holding
    /// a server end now (their transaction is rolled back).
    pub force_close: CancellationToken,
    /// Every client task, so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Metrics, digests, slow-query log, plans.
    pub observer: Arc<Observer>,
    pub classifier: Classifier,
    /// Recent writes, for read-your-writes (the fleet's too).
    pub write_log: Arc<WriteLog>,
    /// The admin console's PAUSE: new work waits while it is on.
    pub paused: Pause,
    /// Connected sockets, logged in or not (for max_client_conn).
    pub connected: AtomicUsize,
    /// `proxy.max_message_memory`: what large client messages may hold.
    pub message_memory: Arc<BufferBudget>,
    /// Client-facing TLS (certificate and mode); replaced on reload.
    pub client_tls: ArcSwap<crate::tls::ClientTls>,
}

/// The admin console's PAUSE switch. Every transaction checks it, so the
/// check is a plain load: subscribing to the channel each time would bump
/// shared reference counts from every worker thread.
pub struct Pause {
    on: std::sync::atomic::AtomicBool,
    changes: tokio::sync::watch::Sender<bool>,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            on: std::sync::atomic::AtomicBool::new(false),
            changes: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Pause {
    pub fn set(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::SeqCst);
        self.changes.send_replace(on);
    }

    /// The admin console's PAUSE is on: new work waits for
    /// [`resumed`](Self::resumed).
    pub fn is_on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns once the proxy is not paused.
    pub async fn resumed(&self) {
        if self.on.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = self.changes.subscribe().wait_for(|on| !*on).await;
        }
    }
}

impl Shared {
    /// The current view of the cluster.
    pub fn cluster(&self) -> arc_swap::Guard<Arc<ClusterView>> {
        self.cluster.load()
    }

    /// Changes when pools or the node list are replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn start_monitor(&self) {
        let cluster = self.cluster.load();
        if let Some(fleet) = &self.fleet {
            let nodes = (0..cluster.node_count())
                .filter_map(|id| {
                    let addr = cluster.addr(id).clone();
                    self.pools.gate(&addr).map(|gate| (addr, gate))
                })
                .collect();
            fleet.start(self.config.clone(), nodes, cluster.clone());
        }
        // Checkouts queued for a node give up when it goes down or stops
        // being the primary: one subscription wakes them all to look,
        // rather than one per waiting checkout. It ends with the view.
        let mut moves = cluster.moves();
        let waiters = self.pools.waiters();
        tokio::spawn(async move {
            while moves.changed().await.is_ok() {
                waiters.wake();
            }
        });
        let handle = cluster.spawn_monitor(self.config.clone());
        let old = crate::sync::lock(&self.monitor).replace(handle);
        if let Some(old) = old {
            old.abort();
        }
    }

    fn stop_monitor(&self) {
        if let Some(fleet) = &self.fleet {
            fleet.stop();
        }
        if let Some(h) = crate::sync::lock(&self.monitor).take() {
            h.abort();
        }
    }
}

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    UnixSocket(#[from] crate::client::unix_socket::UnixSocketError),
    #[error(transparent)]
    Http(ObserveError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// `cluster.state_file` cannot be read or written.
    #[error(
        "invalid `cluster.state_file`: {0}; point it at a writable file, or set it to \"\" to keep no record"
    )]
    StateFile(#[from] crate::cluster::StateFileError),
}

/// A running proxy. Dropping it stops accepting clients.
pub struct Proxy {
    /// The TCP address clients connect to. With `listen = ""` there is no
    /// TCP listener and this is the unspecified address with port 0.
    pub addr: SocketAddr,
    /// The Unix socket (`<unix_socket_dir>/.s.PGSQL.<port>`), if any.
    pub unix_socket: Option<PathBuf>,
    /// Where /metrics, /healthz, /readyz and /queries are served.
    pub http_addr: SocketAddr,
    pub shared: Arc<Shared>,
    /// The accept loops, TCP and Unix socket.
    accept: Vec<JoinHandle<()>>,
    background: JoinHandle<()>,
    catalog: JoinHandle<()>,
    http: Option<HttpHandle>,
}

impl Proxy {
    /// Binds `[proxy].listen` (port 0 picks a free port) and the Unix
    /// socket, if configured, and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let listen = config.proxy.listen;
        let unix_port = config.proxy.unix_socket_port;
        let unix_mode = config.proxy.unix_socket_mode;
        if let crate::config::StateFile::Set(path) = config.cluster.state_file() {
            crate::cluster::check_state_file(path)?;
        }
        let client_tls = crate::tls::build_client_tls(&config.proxy)?;
        let server_tls = crate::tls::build_server_tls(&config.cluster)?;
        let credentials = Credentials::build(&config);
        let handle = crate::config::handle(config.clone());
        let write_log = Arc::new(WriteLog::default());
        let fleet = (config.fleet.as_ref())
            .map(|f| crate::fleet::Fleet::new(f, write_log.clone(), handle.clone()));
        let shared = Arc::new_cyclic(|weak| Shared {
            observer: Observer::new(
                handle.clone(),
                Arc::new(sources::ProxySources {
                    shared: weak.clone(),
                }),
            ),
            credentials: ArcSwap::from_pointee(credentials),
            pools: match config.fleet {
                Some(_) => Pools::with_budget(server_tls),
                None => Pools::new(server_tls),
            },
            fleet,
            clients: Arc::new(ClientRegistry::default()),
            statements: StatementRegistry::default(),
            cluster: ArcSwap::new(ClusterView::new(&config)),
            monitor: Mutex::new(None),
            generation: AtomicU64::new(0),
            config_path: OnceLock::new(),
            start_only: OnceLock::new(),
            shutdown: CancellationToken::new(),
            force_close: CancellationToken::new(),
            sessions: TaskTracker::new(),
            classifier: Classifier::new(
                &config.routing.read_only_functions,
                MAX_PARSED_QUERY,
                CLASSIFIER_CACHE,
            ),
            write_log,
            paused: Pause::default(),
            connected: AtomicUsize::new(0),
            message_memory: BufferBudget::new(config.proxy.max_message_memory),
            client_tls: ArcSwap::from_pointee(client_tls),
            config: handle,
        });
        let tcp = match listen {
            Some(listen) => {
                let error = |source| StartError::Listen {
                    addr: listen,
                    source,
                };
                let listener = crate::client::bind(listen).map_err(error)?;
                let addr = listener.local_addr().map_err(error)?;
                Some((listener, addr))
            }
            None => None,
        };
        let addr = tcp.as_ref().map_or(
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
            |(_, addr)| *addr,
        );
        let unix = match shared
            .config
            .load()
            .proxy
            .unix_socket_path(tcp.as_ref().map(|(_, a)| a.port()))
        {
            Some(path) => {
                let port = unix_port.unwrap_or(addr.port());
                Some(crate::client::unix_socket::bind(&path, port, unix_mode).await?)
            }
            None => None,
        };
        let unix_socket = unix.as_ref().map(|u| u.file.path().to_path_buf());
        let http = shared
            .observer
            .serve_http()
            .await
            .map_err(StartError::Http)?;
        // From now on the config shows the addresses really listened on.
        let start_only = StartOnly::new(&config, tcp.as_ref().map(|(_, a)| *a), http.addr);
        let mut in_force = config;
        start_only.in_force(&mut in_force);
        shared.config.store(Arc::new(in_force));
        let _ = shared.start_only.set(start_only);
        let background = shared.observer.spawn_background();
        let mut accept = Vec::new();
        if let Some((listener, _)) = tcp {
            accept.push(tokio::spawn(crate::client::accept_loop(
                listener,
                shared.clone(),
            )));
        }
        if let Some(unix) = unix {
            accept.push(tokio::spawn(crate::client::accept_loop(
                unix,
                shared.clone(),
            )));
        }
        shared.start_monitor();
        let catalog = spawn_catalog(&shared);
        tracing::info!(
            addr = %listen.map_or("none".to_string(), |_| addr.to_string()),
            unix = %unix_socket.as_deref().map_or("none".into(), |p| p.display().to_string()),
            http = %http.addr,
            "pgsidecar listening"
        );
        Ok(Proxy {
            addr,
            unix_socket,
            http_addr: http.addr,
            shared,
            accept,
            background,
            catalog,
            http: Some(http),
        })
    }
}

/// Starts reading the catalog of the databases clients use, for what their
/// writes reach beyond the tables named (read-your-writes).
fn spawn_catalog(shared: &Arc<Shared>) -> JoinHandle<()> {
    use crate::cluster::catalog::{self, CatalogSources};
    use crate::routing::related::Related;
    let weak = Arc::downgrade(shared);
    let (w1, w2) = (weak.clone(), weak.clone());
    catalog::spawn(CatalogSources {
        config: shared.config.clone(),
        primary: Box::new(move || {
            let shared = w1.upgrade()?;
            let cluster = shared.cluster();
            cluster.primary().map(|id| cluster.addr(id).clone())
        }),
        databases: Box::new(move || {
            let Some(shared) = w2.upgrade() else {
                return Vec::new();
            };
            let pools = shared.pools.all();
            pools.iter().map(|p| p.key.database.clone()).collect()
        }),
        publish: Box::new(move |edges| {
            if let Some(shared) = weak.upgrade() {
                let related = Related::build(edges);
                tracing::info!(
                    tables = related.len(),
                    "read-your-writes: foreign-key actions and partitions read from the catalog"
                );
                shared.write_log.set_related(related);
            }
        }),
    })
}

impl Proxy {
    /// Stops accepting clients, lets transactions in flight finish for up
    /// to `timeout`, then cancels what still runs and returns. Idle clients
    /// are told the proxy is shutting down (57P01) and disconnected.
    pub async fn shutdown(mut self, timeout: std::time::Duration) {
        let shared = self.shared.clone();
        shared.shutdown.cancel();
        // The loops return at once; the Unix socket file goes with them.
        for accept in std::mem::take(&mut self.accept) {
            let _ = accept.await;
        }
        shared.sessions.close();
        tracing::info!(clients = shared.sessions.len(), "shutting down");
        if tokio::time::timeout(timeout, shared.sessions.wait())
            .await
            .is_err()
        {
            let running: Vec<_> = shared
                .clients
                .all()
                .iter()
                .filter_map(|c| c.server())
                .collect();
            tracing::warn!(
                queries = running.len(),
                "shutdown_timeout reached: cancelling queries still running"
            );
            for link in running {
                let _ = crate::client::cancel::send_cancel(&link.cancel).await;
            }
            shared.force_close.cancel();
            // Time for the sessions to tell their clients and roll back.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), shared.sessions.wait())
                .await;
        }
        if let Some(http) = self.http.take() {
            http.stop().await;
        }
        drop(self);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for accept in &self.accept {
            accept.abort();
        }
        self.background.abort();
        self.catalog.abort();
        self.shared.stop_monitor();
    }
}
