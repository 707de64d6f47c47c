//! Query cancellation. Each client gets a BackendKeyData issued by the proxy;
//! the registry maps it to the server connection currently running that
//! client's query, so a CancelRequest reaches exactly that backend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rand::RngExt;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;

use crate::protocol::startup::encode_cancel;

/// Where a cancel for a client must go right now.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub server: SocketAddr,
    pub pid: i32,
    pub secret: Vec<u8>,
}

/// One client's cancel key and its current target.
pub struct CancelSlot {
    pub pid: i32,
    pub secret: i32,
    target: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    /// Points cancels at the server the client now holds (or at nothing).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    fn target(&self) -> Option<CancelTarget> {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

const SHARDS: usize = 16;

/// All live clients' cancel keys, sharded so that connect and disconnect
/// storms do not serialise on one lock.
pub struct CancelRegistry {
    shards: Vec<Mutex<HashMap<i32, Arc<CancelSlot>>>>,
}

impl Default for CancelRegistry {
    fn default() -> Self {
        CancelRegistry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl CancelRegistry {
    fn shard(&self, pid: i32) -> std::sync::MutexGuard<'_, HashMap<i32, Arc<CancelSlot>>> {
        self.shards[(pid as u32 as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a fresh, unused key for a new client.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let mut rng = rand::rng();
        loop {
            let pid = rng.random_range(1..i32::MAX);
            let mut shard = self.shard(pid);
            if shard.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                pid,
                secret: rng.random(),
                target: Mutex::new(None),
            });
            shard.insert(pid, slot.clone());
            return CancelHandle {
                slot,
                registry: self.clone(),
            };
        }
    }

    /// Handles a CancelRequest: if the key matches a client that is running
    /// a query, forwards a cancel to that query's server. Unknown keys are
    /// ignored silently, as Postgres does.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) -> bool {
        let slot = self.shard(pid).get(&pid).cloned();
        let Some(slot) = slot else { return false };
        if !bool::from(slot.secret.to_be_bytes().ct_eq(secret)) {
            return false;
        }
        let Some(target) = slot.target() else {
            return false;
        };
        match send_cancel(&target).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, server = %target.server, "could not forward cancel request");
                false
            }
        }
    }
}

/// Sends a CancelRequest to a server.
pub async fn send_cancel(target: &CancelTarget) -> std::io::Result<()> {
    let mut s = tokio::net::TcpStream::connect(target.server).await?;
    s.write_all(&encode_cancel(target.pid, &target.secret))
        .await?;
    s.shutdown().await
}

/// A client's registration; removed from the registry when dropped.
pub struct CancelHandle {
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.shard(self.slot.pid).remove(&self.slot.pid);
    }
}
