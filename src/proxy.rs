//! Wires the parts together: the state shared by all client tasks, and
//! starting and stopping a proxy (used by `run`, `demo` and the tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client::cancel::CancelRegistry;
use crate::client::credentials::Credentials;
use crate::client::prepared::StatementRegistry;
use crate::cluster::ClusterView;
use crate::config::{Config, ConfigHandle};
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
    pub cancels: Arc<CancelRegistry>,
    /// Prepared statements shared by all clients.
    pub statements: StatementRegistry,
    /// Roles, health and replication lag of the nodes.
    pub cluster: Arc<ClusterView>,
    pub classifier: Classifier,
    /// Recent writes, for read-your-writes.
    pub write_log: WriteLog,
    /// Connected clients (for max_client_conn).
    pub clients: AtomicUsize,
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
}

/// A running proxy. Dropping it stops accepting clients.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    accept: JoinHandle<()>,
    monitor: JoinHandle<()>,
}

impl Proxy {
    /// Binds `[proxy].listen` (port 0 picks a free port) and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let listen = config.proxy.listen;
        let credentials = Credentials::build(&config);
        let shared = Arc::new(Shared {
            credentials: ArcSwap::from_pointee(credentials),
            pools: Pools::default(),
            cancels: Arc::new(CancelRegistry::default()),
            statements: StatementRegistry::default(),
            cluster: ClusterView::new(&config),
            classifier: Classifier::new(
                &config.routing.read_only_functions,
                MAX_PARSED_QUERY,
                CLASSIFIER_CACHE,
            ),
            write_log: WriteLog::default(),
            clients: AtomicUsize::new(0),
            config: crate::config::handle(config),
        });
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
        let accept = tokio::spawn(crate::client::accept_loop(listener, shared.clone()));
        let monitor = shared.cluster.spawn_monitor(shared.config.clone());
        tracing::info!(%addr, "pgsidecar listening");
        Ok(Proxy {
            addr,
            shared,
            accept,
            monitor,
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.monitor.abort();
    }
}
