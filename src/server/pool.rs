//! Server connection pools: one bb8 pool per (database, user, node), the
//! registry that creates them on first use, and checkout (through the
//! pool's [`Handoff`] queue) with the errors a client understands.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bb8::{ErrorSink, ManageConnection, QueueStrategy};

use super::budget::{BudgetPermit, IdleConnections, NodeGate, Seat};
use super::connection::{ServerConn, ServerParams};
use super::error::{CheckoutError, ServerError};
use super::handoff::{Handoff, Lease, NotTaken, Queued, Source, Started};
use super::login::{self, LoginParams, ServerSecret};
use crate::client::clock::Tick;
use crate::config::{Config, NodeAddr};
use crate::tls::ServerTls;

/// Identifies a pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
    pub node: NodeAddr,
}

/// The last failure to open a connection, kept so that a client waiting in
/// vain is told why instead of only "timed out".
type LastError = Arc<Mutex<Option<(Instant, String)>>>;

/// An open server connection, as the admin console lists it.
#[derive(Clone, Debug)]
pub struct ServerEntry {
    pub id: u64,
    pub backend_pid: i32,
    pub opened_at: std::time::SystemTime,
}

type ServerList = Arc<Mutex<HashMap<u64, ServerEntry>>>;

/// Removes a connection from its pool's list when it closes, and gives
/// back its fleet budget permit (if the pool has a budget gate).
pub struct Registration {
    list: std::sync::Weak<Mutex<HashMap<u64, ServerEntry>>>,
    id: u64,
    _permit: Option<BudgetPermit>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(list) = self.list.upgrade() {
            lock(&list).remove(&self.id);
        }
    }
}

/// A connection idle in its pool for this long is checked before use.
/// Short: under load a connection goes straight from one client to the
/// next (no check, no system call), while one that sat idle long enough
/// for an operator or a restart to kill it is checked.
const CHECK_AFTER_IDLE: Duration = Duration::from_millis(10);
/// After a pool closes a broken connection, checkouts check every
/// connection for this long (2 s, in nanoseconds).
const TROUBLE_WINDOW_NANOS: u64 = 2_000_000_000;

/// When a pool last closed a broken connection (a tick's nanoseconds, 0 =
/// never).
#[derive(Debug)]
struct Trouble {
    last: AtomicU64,
}

impl Trouble {
    fn new() -> Self {
        Trouble {
            last: AtomicU64::new(0),
        }
    }

    fn note(&self) {
        let nanos = Tick::now().as_nanos();
        self.last.store(nanos.max(1), Ordering::Relaxed);
    }

    /// `now`: the caller's clock reading (once trouble was noted, this
    /// is asked on every checkout).
    fn recent(&self, now: Tick) -> bool {
        match self.last.load(Ordering::Relaxed) {
            0 => false,
            at => now.as_nanos().saturating_sub(at) < TROUBLE_WINDOW_NANOS,
        }
    }
}

/// bb8's view of how to make and check server connections.
pub struct ServerManager {
    login: LoginParams,
    addr: Arc<str>,
    last_error: LastError,
    servers: ServerList,
    trouble: Arc<Trouble>,
    /// With a fleet: this pool's seat at the node's budget gate, and how
    /// long a connection attempt waits for a permit (`checkout_timeout`).
    /// Set once the pool exists (the seat refers back to it).
    gate: GateSlot,
}

/// A pool's seat at its node's budget gate, shared by the pool and its
/// manager; set right after the pool is created.
pub(super) type GateSlot = Arc<std::sync::OnceLock<(Seat, Duration)>>;

impl ManageConnection for ServerManager {
    /// Boxed: a lease moves between the pool, a session and its relay on
    /// every transaction, and a pointer moves cheaper than the connection.
    type Connection = Box<ServerConn>;
    type Error = ServerError;

    async fn connect(&self) -> Result<Box<ServerConn>, ServerError> {
        let mut permit = match self.gate.get() {
            None => None,
            Some((seat, wait)) => {
                Some(
                    seat.acquire(*wait)
                        .await
                        .map_err(|e| ServerError::NoBudget {
                            addr: self.addr.to_string(),
                            waited: e.waited,
                            share: e.limit,
                        })?,
                )
            }
        };
        let mut conn = login::connect(&self.login, self.addr.clone()).await?;
        if let Some(permit) = &mut permit {
            permit.set_backend_pid(conn.params.backend_pid);
        }
        *lock(&self.last_error) = None;
        lock(&self.servers).insert(
            conn.id,
            ServerEntry {
                id: conn.id,
                backend_pid: conn.params.backend_pid,
                opened_at: std::time::SystemTime::now(),
            },
        );
        conn.registration = Some(Registration {
            list: Arc::downgrade(&self.servers),
            id: conn.id,
            _permit: permit,
        });
        Ok(Box::new(conn))
    }

    /// Unused: checkout checks connections itself, and only when needed
    /// (test_on_check_out is off).
    async fn is_valid(&self, _conn: &mut Box<ServerConn>) -> Result<(), ServerError> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut Box<ServerConn>) -> bool {
        if conn.has_failed() {
            self.trouble.note();
        }
        // Over the fleet budget (the share shrank), or another pool of the
        // node needs the room: close it rather than keep it.
        conn.is_broken()
            || self
                .gate
                .get()
                .is_some_and(|(seat, _)| seat.should_give_back())
    }
}

/// Records connect failures for [`CheckoutError::Unreachable`].
#[derive(Debug, Clone)]
struct RecordError(LastError);

impl ErrorSink<ServerError> for RecordError {
    fn sink(&self, error: ServerError) {
        // Waiting for budget is not a server failure: the client is told
        // it timed out (53300), not that the node is unreachable.
        if !matches!(
            error,
            ServerError::Closed { .. } | ServerError::NoBudget { .. }
        ) {
            tracing::warn!(error = %crate::logsafe::message(&error.to_string()), "server connection failed");
            *lock(&self.0) = Some((Instant::now(), error.to_string()));
        }
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<ServerError>> {
        Box::new(self.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One pool of connections to one node for one (database, user).
pub struct ServerPool {
    pub key: PoolKey,
    pub size: u32,
    pool: bb8::Pool<ServerManager>,
    /// Who waits for a connection, and the hand-off of released ones.
    pub(super) hand: Handoff,
    checkout_timeout: Duration,
    params: ArcSwapOption<ServerParams>,
    first_connect: tokio::sync::Mutex<()>,
    last_error: LastError,
    /// Statements that have been prepared successfully on a server of this
    /// pool, so a client's Parse of one can be acknowledged before it is
    /// needed on a server.
    good_statements: RwLock<HashSet<u64>>,
    servers: ServerList,
    trouble: Arc<Trouble>,
    gate: GateSlot,
}

impl ServerPool {
    fn new(
        key: PoolKey,
        config: &Config,
        secret: ServerSecret,
        tls: ServerTls,
        budgeted: bool,
    ) -> Self {
        let last_error = LastError::default();
        let gate = GateSlot::default();
        let servers = ServerList::default();
        let trouble = Arc::new(Trouble::new());
        let manager = ServerManager {
            trouble: trouble.clone(),
            servers: servers.clone(),
            login: LoginParams {
                host: key.node.host.clone(),
                port: key.node.port,
                user: key.user.clone(),
                database: key.database.clone(),
                secret,
                connect_timeout: config.cluster.connect_timeout,
                prepared_capacity: config.pool.prepared_statements_cache as usize,
                max_lifetime: config.pool.max_lifetime,
                tls,
            },
            addr: key.node.to_string().into(),
            last_error: last_error.clone(),
            gate: gate.clone(),
        };
        let size = config.pool_max_on(&key.node, budgeted);
        let pool = bb8::Pool::builder()
            .max_size(size)
            .min_idle(None)
            .connection_timeout(config.pool.checkout_timeout)
            .idle_timeout(Some(config.pool.idle_timeout))
            .max_lifetime(Some(config.pool.max_lifetime))
            .reaper_rate(Duration::from_secs(1).min(config.pool.idle_timeout))
            .queue_strategy(QueueStrategy::Lifo)
            .test_on_check_out(false)
            .error_sink(Box::new(RecordError(last_error.clone())))
            .build_unchecked(manager);
        let hand = Handoff::new(
            pool.clone(),
            size,
            config.pool.checkout_timeout,
            gate.clone(),
        );
        ServerPool {
            key,
            size,
            pool,
            hand,
            checkout_timeout: config.pool.checkout_timeout,
            params: ArcSwapOption::empty(),
            first_connect: tokio::sync::Mutex::new(()),
            last_error,
            good_statements: RwLock::default(),
            servers,
            trouble,
            gate,
        }
    }

    /// The server's login parameters (server_version, encoding, …) for new
    /// clients. The first call opens a connection itself so that a login
    /// failure (unknown database, bad server password) reaches the client
    /// at once with the server's own error, instead of as a timeout.
    pub async fn server_params(&self) -> Result<Arc<ServerParams>, ServerError> {
        if let Some(p) = self.params.load_full() {
            return Ok(p);
        }
        let _only_one = self.first_connect.lock().await;
        if let Some(p) = self.params.load_full() {
            return Ok(p);
        }
        let conn = self.pool.dedicated_connection().await?;
        let params = conn.params.clone();
        self.params.store(Some(params.clone()));
        // A full pool (other clients got there first) just closes this one.
        let _ = self.pool.add(conn);
        Ok(params)
    }

    /// Takes a connection, waiting up to `checkout_timeout` behind the
    /// clients already waiting; returns it with how long it waited (zero
    /// when it did not). One that turns out dead on the check is closed and
    /// another taken.
    pub async fn checkout(self: &Arc<Self>) -> Result<(Lease, Duration, Tick), CheckoutError> {
        match self.checkout_unless(|_| false, Tick::now()).await {
            Ok(Some(got)) => Ok(got),
            Ok(None) => unreachable!("never given up"),
            Err(e) => Err(e),
        }
    }

    /// [`checkout`](Self::checkout), or `None` once `give_up` says so: it
    /// is asked when the checkout starts waiting and whenever
    /// [`Pools::waiters`]' `wake` is called while it waits. `at`: when the
    /// request was taken (the session's clock reading for it, shared
    /// with routing; the wait is counted from there). Gives the lease, how
    /// long it waited, and when the connection was ready (`at` itself if
    /// it did not wait), which the session's clock starts from.
    pub fn checkout_unless<G: Fn(Tick) -> bool + Unpin>(
        self: &Arc<Self>,
        give_up: G,
        at: Tick,
    ) -> CheckoutUnless<'_, G> {
        CheckoutUnless {
            pool: self,
            give_up,
            at,
            ready: at,
            queued: None,
        }
    }

    /// Whether a connection just taken may be used, checked if it needs
    /// to be; one that turned out dead is marked broken (closed when the
    /// caller drops it) so that another is taken.
    ///
    /// Inlined, and the lease borrowed rather than moved in and out: a
    /// checkout (every transaction) asks, and the answer is nearly always
    /// "a connection handed over, in a pool without trouble": two loads.
    #[inline]
    fn usable(&self, lease: &mut Lease, source: Source, now: Tick) -> bool {
        // One handed over was in use a moment ago: only checked while
        // the pool is losing connections.
        let check = match source {
            Source::Handed => self.trouble.recent(now),
            Source::Pool => lease.needs_check(CHECK_AFTER_IDLE, self.trouble.recent(now), now),
        };
        !check || Self::checked_alive(lease)
    }

    /// [`usable`](Self::usable)'s check: a system call, rare.
    #[cold]
    #[inline(never)]
    fn checked_alive(lease: &mut Lease) -> bool {
        let alive = lease.check_idle();
        if !alive {
            lease.mark_broken();
        }
        alive
    }

    /// Why no connection came within `checkout_timeout`: the node's last
    /// connect error if recent, else the fleet budget or a busy pool.
    fn timed_out(&self) -> CheckoutError {
        let recent = lock(&self.last_error)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.checkout_timeout * 2)
            .map(|(_, e)| e.clone());
        match recent {
            Some(last_error) => CheckoutError::Unreachable {
                node: self.key.node.to_string(),
                last_error,
            },
            None => match self.gate.get() {
                Some((seat, _)) => CheckoutError::FleetBudget {
                    node: self.key.node.to_string(),
                    waited: self.checkout_timeout,
                    share: seat.gate().state().limit,
                },
                None => CheckoutError::Timeout {
                    node: self.key.node.to_string(),
                    waited: self.checkout_timeout,
                    size: self.size,
                },
            },
        }
    }

    /// Whether statement `id` was prepared successfully in this pool.
    pub fn statement_ok(&self, id: Option<u64>) -> bool {
        id.is_some_and(|id| {
            self.good_statements
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
        })
    }

    /// Records that statement `id` was prepared successfully.
    pub fn mark_statement_ok(&self, id: u64) {
        if !self.statement_ok(Some(id)) {
            self.good_statements
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
        }
    }

    /// Every open connection of this pool.
    pub fn servers(&self) -> Vec<ServerEntry> {
        lock(&self.servers).values().cloned().collect()
    }

    /// (open connections, idle connections).
    pub fn state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }

    fn never_connected(&self) -> bool {
        self.params.load().is_none()
    }
}

impl IdleConnections for ServerPool {
    fn idle(&self) -> u32 {
        self.pool.state().idle_connections
    }

    /// Takes an idle connection out and retires it. Polled once, without
    /// waiting: with no idle connection left (another client took it in
    /// the meantime) it gives up.
    fn close_one_idle(&self) -> bool {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let mut get = std::pin::pin!(self.pool.get());
        match get.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(mut conn)) => {
                conn.retire();
                true
            }
            _ => false,
        }
    }
}

/// A checkout under way ([`ServerPool::checkout_unless`]).
///
/// Why a struct polled by hand rather than an async fn: a session keeps
/// it in its own state while it waits (nothing boxed per transaction), so
/// it holds only what waiting needs; nested async fns kept their
/// arguments at every level, several times this size.
pub struct CheckoutUnless<'a, G> {
    pool: &'a Arc<ServerPool>,
    give_up: G,
    at: Tick,
    /// When the last connection taken was handed over (`at` until one
    /// waited): more than one is taken when one turns out dead. Why a
    /// time rather than the wait so far: what is asked of it (the next
    /// wait's start, the check's clock, the session's first batch) is a
    /// time.
    ready: Tick,
    queued: Option<Queued<'a>>,
}

impl<G: Fn(Tick) -> bool + Unpin> std::future::Future for CheckoutUnless<'_, G> {
    type Output = Result<Option<(Lease, Duration, Tick)>, CheckoutError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            let taken = match &mut this.queued {
                // Queued, it is registered to be woken: nothing more to
                // ask until then.
                None => match this
                    .pool
                    .hand
                    .start(this.pool, this.ready, cx, &this.give_up)
                {
                    Started::Now(lease, source) => Ok((lease, source, None)),
                    Started::Queued(queued) => {
                        this.queued = Some(queued);
                        return Poll::Pending;
                    }
                    Started::GivenUp => Err(NotTaken::GivenUp),
                },
                Some(queued) => match queued.poll_taken(cx, &this.give_up) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(taken) => {
                        this.queued = None;
                        taken
                    }
                },
            };
            let (mut lease, source, handed) = match taken {
                Ok(got) => got,
                Err(NotTaken::GivenUp) => return Poll::Ready(Ok(None)),
                Err(NotTaken::WaitedInVain) => return Poll::Ready(Err(this.pool.timed_out())),
            };
            // Handed over by a session whose clock was read before this
            // wait started, it counts as no wait (as a saturating
            // subtraction of the two would).
            if let Some(handed) = handed {
                this.ready = this.ready.max(handed);
            }
            if this.pool.usable(&mut lease, source, this.ready) {
                let waited = this.ready.saturating_duration_since(this.at);
                return Poll::Ready(Ok(Some((lease, waited, this.ready))));
            }
        }
    }
}

/// All pools, created on first use.
#[derive(Default)]
pub struct Pools {
    map: Arc<RwLock<HashMap<PoolKey, Arc<ServerPool>>>>,
    /// How new pools encrypt their connections (`[cluster] server_tls`).
    tls: RwLock<ServerTls>,
    /// With a fleet: one budget gate per node, shared by every pool of the
    /// node and kept across reloads. Decided at start.
    gates: Option<RwLock<HashMap<NodeAddr, Arc<NodeGate>>>>,
}

impl Pools {
    /// Pools of a proxy acting alone.
    pub fn new(tls: ServerTls) -> Self {
        Pools {
            map: Arc::default(),
            tls: RwLock::new(tls),
            gates: None,
        }
    }

    /// Pools of a fleet member: every connection needs a permit of its
    /// node's budget gate (see [`gate`](Self::gate)).
    pub fn with_budget(tls: ServerTls) -> Self {
        Pools {
            gates: Some(RwLock::default()),
            ..Pools::new(tls)
        }
    }

    /// The budget gate of `node` (created at limit 0), if this proxy is a
    /// fleet member.
    pub fn gate(&self, node: &NodeAddr) -> Option<Arc<NodeGate>> {
        let gates = self.gates.as_ref()?;
        if let Some(g) = gates.read().unwrap_or_else(|p| p.into_inner()).get(node) {
            return Some(g.clone());
        }
        let mut gates = gates.write().unwrap_or_else(|p| p.into_inner());
        Some(
            gates
                .entry(node.clone())
                .or_insert_with(|| NodeGate::new(node.clone()))
                .clone(),
        )
    }

    /// Replaces the TLS settings for pools created from now on (a reload
    /// that changes them also clears the pools).
    pub fn set_server_tls(&self, tls: ServerTls) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    /// The pool for `key`, created with `config` and the user's server
    /// secret if it does not exist.
    pub fn get(
        &self,
        key: &PoolKey,
        config: &Config,
        secret: impl FnOnce() -> ServerSecret,
    ) -> Arc<ServerPool> {
        if let Some(p) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return p.clone();
        }
        let gate = self.gate(&key.node);
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| {
                let tls = self.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
                let pool = Arc::new(ServerPool::new(
                    key.clone(),
                    config,
                    secret(),
                    tls,
                    gate.is_some(),
                ));
                if let Some(gate) = &gate {
                    let weak: std::sync::Weak<dyn IdleConnections> = Arc::downgrade(&pool) as _;
                    let seat = gate.seat(Some(weak));
                    let _ = pool.gate.set((seat, config.pool.checkout_timeout));
                }
                pool
            })
            .clone()
    }

    /// Drops a pool that never managed to connect (an unknown database, a
    /// wrong server password), so that bogus names cannot pile up pools.
    pub fn forget_if_unused(&self, key: &PoolKey) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.get(key).is_some_and(|p| p.never_connected()) {
            map.remove(key);
        }
    }

    /// Forgets every pool (after a reload changed how they are built);
    /// sessions still using one keep it until they let go.
    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// What wakes the checkouts waiting in any pool, present or future,
    /// to ask their `give_up` again (see [`ServerPool::checkout_unless`]).
    pub fn waiters(&self) -> Waiters {
        Waiters(self.map.clone())
    }

    /// A snapshot of every pool, for metrics and the admin console.
    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// The checkouts waiting in every pool (see [`Pools::waiters`]).
pub struct Waiters(Arc<RwLock<HashMap<PoolKey, Arc<ServerPool>>>>);

impl Waiters {
    /// Wakes them all to ask their `give_up` again.
    pub fn wake(&self) {
        for pool in self.0.read().unwrap_or_else(|p| p.into_inner()).values() {
            pool.hand.wake_waiters();
        }
    }
}
