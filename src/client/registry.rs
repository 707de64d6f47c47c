//! Every live client: the cancel key the proxy issued it, who it is, what
//! it is doing and the server it holds right now. CancelRequests are
//! matched here, and the admin console lists clients from here.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::SystemTime;

use rand::RngExt;
use subtle::ConstantTimeEq;

use crate::server::send_cancel;

/// Who a client is (fixed at login).
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub addr: ClientAddr,
    pub connected_at: SystemTime,
}

/// Where a client connected from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAddr {
    Tcp(SocketAddr),
    /// The Unix socket `.s.PGSQL.<port>` (its peer has no address).
    Unix {
        port: u16,
    },
}

impl ClientAddr {
    /// SHOW CLIENTS' `addr` and `port`: the peer's IP and port, or `unix`
    /// and the socket's port, as PgBouncer shows them.
    pub fn host_and_port(&self) -> (String, u16) {
        match self {
            ClientAddr::Tcp(a) => (a.ip().to_string(), a.port()),
            ClientAddr::Unix { port } => ("unix".to_string(), *port),
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddr::Tcp(a) => a.fmt(f),
            ClientAddr::Unix { port } => write!(f, "unix:{port}"),
        }
    }
}

/// What a client is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientActivity {
    /// Logged in, holding no server.
    Idle = 0,
    /// Waiting for a server connection.
    Waiting = 1,
    /// Holding a server.
    Active = 2,
}

impl ClientActivity {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientActivity::Idle => "idle",
            ClientActivity::Waiting => "waiting",
            ClientActivity::Active => "active",
        }
    }
}

/// The server a client holds: its connection's own link, shared.
pub use crate::server::ServerLink;

/// The bit of [`ClientSlot`]'s state saying that the client holds its
/// server (the rest counts cancels in flight).
const HELD: u32 = 1 << 31;

/// One client's entry.
pub struct ClientSlot {
    pub pid: i32,
    pub secret: i32,
    pub info: ClientInfo,
    activity: AtomicU8,
    pinned: AtomicBool,
    /// The server the client holds while [`HELD`] is set in `state`; the
    /// last one it held otherwise (kept, so that letting go of it touches
    /// neither this lock nor the link's reference count).
    server: Mutex<Option<Arc<ServerLink>>>,
    /// [`HELD`], and the number of cancels forwarded to the client's
    /// server and not yet dealt with by it: while there are any, the
    /// server goes to no one else (a late cancel would stop the next
    /// client's query). One word, so that letting go of the server and
    /// learning whether cancels are on their way is one atomic operation.
    state: AtomicU32,
    /// The registry's, shared by every slot: a slot's own would cost each
    /// idle client its size, for something that rarely happens.
    cancels_done: Arc<tokio::sync::Notify>,
}

/// A cancel on its way to the server a client holds; counted in its slot
/// until dropped.
pub struct CancelInFlight(Arc<ClientSlot>);

impl Drop for CancelInFlight {
    fn drop(&mut self) {
        if self.0.state.fetch_sub(1, Ordering::AcqRel) & !HELD == 1 {
            self.0.cancels_done.notify_waiters();
        }
    }
}

impl ClientSlot {
    /// Records the server the client now holds. The link is the
    /// connection's own (made at login); the slot keeps the last one after
    /// the client let go of it, so this swaps pointers only when the server
    /// changed (the one let go of is dropped after the lock).
    pub fn set_server(&self, link: &Arc<ServerLink>) {
        let _old = {
            let mut server = self.server.lock();
            match &*server {
                Some(held) if Arc::ptr_eq(held, link) => None,
                _ => server.replace(link.clone()),
            }
        };
        self.state.fetch_or(HELD, Ordering::Release);
        self.set_activity(ClientActivity::Active);
    }

    /// The client no longer holds its server: no cancel can reach it
    /// through the client from now on. True while cancels already on
    /// their way have not arrived: the server then goes back to the pool
    /// only once [`cancels_settled`](Self::cancels_settled) says so.
    ///
    /// Why one atomic operation and no lock: it ran on every transaction,
    /// and the lock (and the link's reference count going down) cost more
    /// than the rest of it. Claims for a cancel are made under the lock
    /// and only while [`HELD`] is set, so none is counted once it is
    /// cleared here, and any counted before shows in the returned count.
    #[inline]
    pub fn unset_server(&self) -> bool {
        let before = self.state.fetch_and(!HELD, Ordering::AcqRel);
        self.set_activity(ClientActivity::Idle);
        before & !HELD > 0
    }

    pub fn server(&self) -> Option<Arc<ServerLink>> {
        let server = self.server.lock();
        if self.state.load(Ordering::Acquire) & HELD == 0 {
            return None;
        }
        server.clone()
    }

    /// Counts a cancel about to go to the client's server (query_timeout's
    /// own), until the returned guard is dropped.
    pub fn begin_cancel(self: &Arc<Self>) -> CancelInFlight {
        self.state.fetch_add(1, Ordering::AcqRel);
        CancelInFlight(self.clone())
    }

    /// The server the client holds, with its cancel counted: under the
    /// lock [`set_server`](Self::set_server) takes, so that once the
    /// server is unset no new cancel can be counted for it.
    fn claim_for_cancel(self: &Arc<Self>) -> Option<(Arc<ServerLink>, CancelInFlight)> {
        let server = self.server.lock();
        // Counted only while the server is held: once `unset_server`
        // cleared the bit, the count cannot grow.
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & HELD != 0).then_some(s + 1)
            })
            .ok()?;
        let in_flight = CancelInFlight(self.clone());
        let link = server.clone().expect("a held server has a link");
        Some((link, in_flight))
    }

    /// Whether cancels are still on their way to the server the client
    /// held ([`cancels_settled`](Self::cancels_settled) waits for them).
    #[inline]
    pub fn cancels_in_flight(&self) -> bool {
        self.state.load(Ordering::Acquire) & !HELD > 0
    }

    /// Returns once every cancel forwarded to the client's server has been
    /// dealt with by that server (see [`send_cancel`]). Call after
    /// `set_server(None)`, before the server goes back to the pool.
    pub async fn cancels_settled(&self) {
        loop {
            let notified = self.cancels_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.cancels_in_flight() {
                return;
            }
            notified.await;
        }
    }

    pub fn set_activity(&self, a: ClientActivity) {
        self.activity.store(a as u8, Ordering::Relaxed);
    }

    /// The client holds session state that ties it to its server.
    pub fn set_pinned(&self, pinned: bool) {
        self.pinned.store(pinned, Ordering::Relaxed);
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    pub fn activity(&self) -> ClientActivity {
        match self.activity.load(Ordering::Relaxed) {
            1 => ClientActivity::Waiting,
            2 => ClientActivity::Active,
            _ => ClientActivity::Idle,
        }
    }
}

const SHARDS: usize = 16;

/// All live clients, sharded so that connect and disconnect storms do not
/// serialise on one lock.
pub struct ClientRegistry {
    shards: Vec<Mutex<HashMap<i32, Arc<ClientSlot>>>>,
    /// Woken whenever a client's last cancel in flight has arrived.
    cancels_done: Arc<tokio::sync::Notify>,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        ClientRegistry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            cancels_done: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

impl ClientRegistry {
    fn shard(&self, pid: i32) -> MutexGuard<'_, HashMap<i32, Arc<ClientSlot>>> {
        self.shards[(pid as u32 as usize) % SHARDS].lock()
    }

    /// Registers a client that just logged in, with a fresh cancel key.
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> ClientHandle {
        let mut rng = rand::rng();
        loop {
            let pid = rng.random_range(1..i32::MAX);
            let mut shard = self.shard(pid);
            if shard.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(ClientSlot {
                pid,
                secret: rng.random(),
                info,
                activity: AtomicU8::new(ClientActivity::Idle as u8),
                pinned: AtomicBool::new(false),
                server: Mutex::new(None),
                state: AtomicU32::new(0),
                cancels_done: self.cancels_done.clone(),
            });
            shard.insert(pid, slot.clone());
            return ClientHandle {
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
        let Some((link, _in_flight)) = slot.claim_for_cancel() else {
            return false;
        };
        match send_cancel(&link.cancel).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, server = %link.cancel.server, "could not forward cancel request");
                false
            }
        }
    }

    /// Every live client (for the admin console and metrics).
    pub fn all(&self) -> Vec<Arc<ClientSlot>> {
        self.shards
            .iter()
            .flat_map(|s| s.lock().values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

/// A client's registration; removed from the registry when dropped.
pub struct ClientHandle {
    pub slot: Arc<ClientSlot>,
    registry: Arc<ClientRegistry>,
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.registry.shard(self.slot.pid).remove(&self.slot.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::CancelTarget;
    use std::time::Duration;

    fn client(registry: &Arc<ClientRegistry>) -> ClientHandle {
        registry.register(ClientInfo {
            user: "u".into(),
            database: "d".into(),
            application_name: String::new(),
            addr: ClientAddr::Unix { port: 5432 },
            connected_at: SystemTime::now(),
        })
    }

    fn link() -> Arc<ServerLink> {
        Arc::new(ServerLink {
            cancel: CancelTarget {
                server: "127.0.0.1:1".parse().unwrap(),
                pid: 7,
                secret: Arc::from(&[1u8, 2, 3, 4][..]),
            },
            node: Arc::from("127.0.0.1:1"),
            server_id: 1,
        })
    }

    #[tokio::test]
    async fn a_server_is_given_up_only_once_its_cancels_have_arrived() {
        let registry = Arc::new(ClientRegistry::default());
        let handle = client(&registry);
        let slot = handle.slot.clone();
        slot.set_server(&link());
        let (_, in_flight) = slot.claim_for_cancel().expect("a held server");
        assert!(slot.unset_server(), "a cancel is in flight");
        assert!(
            slot.claim_for_cancel().is_none(),
            "no new cancel once the server is unset"
        );
        assert!(slot.server().is_none(), "no server shown once unset");
        assert!(slot.cancels_in_flight());
        let waiting = tokio::spawn({
            let slot = slot.clone();
            async move { slot.cancels_settled().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "settled while a cancel is in flight"
        );
        drop(in_flight);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("settled once the cancel arrived")
            .unwrap();
        assert!(!slot.cancels_in_flight());
        let again = link();
        slot.set_server(&again);
        assert!(Arc::ptr_eq(&slot.server().expect("held"), &again));
        assert!(!slot.unset_server(), "nothing in flight");
    }
}
