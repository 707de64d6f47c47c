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
use crate::config::{Config, ConfigHandle};
use crate::server::Pools;

/// State every client task reads. Small on purpose: each part has one owner
/// module, and config is reached through the swappable handle.
pub struct Shared {
    pub config: ConfigHandle,
    pub credentials: ArcSwap<Credentials>,
    pub pools: Pools,
    pub cancels: Arc<CancelRegistry>,
    /// Prepared statements shared by all clients.
    pub statements: Arc<StatementRegistry>,
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
}

impl Proxy {
    /// Binds `[proxy].listen` (port 0 picks a free port) and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let listen = config.proxy.listen;
        let credentials = Credentials::build(&config);
        let shared = Arc::new(Shared {
            config: crate::config::handle(config),
            credentials: ArcSwap::from_pointee(credentials),
            pools: Pools::default(),
            cancels: Arc::new(CancelRegistry::default()),
            statements: Arc::new(StatementRegistry::default()),
            clients: AtomicUsize::new(0),
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
        tracing::info!(%addr, "pgsidecar listening");
        Ok(Proxy {
            addr,
            shared,
            accept,
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
