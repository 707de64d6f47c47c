//! Taking and giving back servers: the pools of each node for this client,
//! acquiring a server for a routed request (falling back to the primary if
//! a replica cannot be reached), bringing it up to date with the client's
//! session (parameters, a deferred BEGIN), and leaving it clean.

use std::sync::Arc;
use std::time::Duration;

use super::clock::{BatchClock, Tick};
use super::expect::{Audience, Expectations, Request, Token};
use super::hold_state::HoldState;
use super::limits::Limits;
use super::params::UTF8_FIRST;
use super::registry::ClientActivity;
use super::route::{self, Unit};
use super::session::{Phase, SessionCtx};
use super::state::ClientState;
use super::tx_status::TxStatus;
use crate::cluster::{ClusterView, NodeId, ReplicaLease, Role};
use crate::config::{Config, ConfigHandle, NodeAddr, PoolMode};
use crate::observe::ErrorKind;
use crate::protocol::frame::{self, fe};
use crate::protocol::{SqlState, WireError};
use crate::routing::policy::Target;
use crate::server::{CheckoutError, Lease, PoolKey, ServerPool, send_cancel};

/// Time allowed for the proxy's own clean-up statements (ROLLBACK,
/// DISCARD ALL) before the server connection is closed instead.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A server connection held by the session. Small (its connection is
/// boxed in the pool), so the session keeps it in place: taking and
/// giving back a server allocates nothing and copies a few words.
pub struct Held {
    /// The server, and its pool (`Lease::split_with_pool`): the session borrows the
    /// pool from the lease, which holds it anyway, instead of a second
    /// reference (a count up and down per transaction).
    pub lease: Lease,
    /// Counts this read against the replica's load until released.
    _replica: Option<ReplicaLease>,
}

/// What a hold records while the client uses its server: what the server
/// still owes and the hold's own state. The session keeps one from hold to
/// hold, emptied at each release and reset at each acquisition in place,
/// so that its lists keep their capacity and nothing of it moves.
pub struct Books {
    pub expect: Expectations,
    pub hold: HoldState,
}

impl Default for Books {
    fn default() -> Self {
        Books {
            expect: Expectations::default(),
            hold: HoldState::new(0, Role::Primary),
        }
    }
}

/// This client's pool for each node, looked up once (again after a reload
/// replaced pools or nodes), and the configuration it was looked up in.
pub struct NodePools {
    by_node: Vec<Option<Arc<ServerPool>>>,
    generation: u64,
    view: Option<Arc<ClusterView>>,
    /// Why a cache: a request reads the configuration three times (limits,
    /// routing, the relay's timers); arc-swap's `load` costs a few dozen
    /// instructions each, the cache one atomic load to see that nothing
    /// changed (a reload is seen at the next request all the same).
    config: arc_swap::Cache<ConfigHandle, Arc<Config>>,
    /// The `[proxy]` limits of the configuration last loaded, with that
    /// configuration's address (compared, never followed): why kept,
    /// rather than made from the configuration on each request (twice: for
    /// the idle limit, then the relay's timers), see [`limits`](Self::limits).
    /// Boxed (made once per client): inline, its 56 bytes grew every
    /// client's task.
    limits: Box<(usize, Limits)>,
}

impl NodePools {
    pub fn new(config: &ConfigHandle) -> Self {
        NodePools {
            by_node: Vec::new(),
            generation: 0,
            view: None,
            config: arc_swap::Cache::new(config.clone()),
            limits: Box::new((0, Limits::default())),
        }
    }

    /// The limits of the current configuration, made again only when a
    /// reload replaced it. Why: `Limits::from_config` tests three durations
    /// for zero, and was run twice per request (~60 instructions per `-S`
    /// transaction); the check that the configuration is the same is a
    /// comparison of two addresses. (The configuration is kept alive by
    /// the cache while its address is kept here, so a new one cannot take
    /// the same address unseen.)
    #[inline]
    pub fn limits(&mut self) -> &Limits {
        let config = self.config.load();
        let at = Arc::as_ptr(config) as usize;
        let (of, limits) = &mut *self.limits;
        if at != *of {
            *limits = Limits::from_config(&config.proxy);
            *of = at;
        }
        limits
    }

    /// The current configuration. Inlined: asked on every request, and
    /// the call cost as much as the cache's check.
    #[inline]
    pub fn config(&mut self) -> &Arc<Config> {
        self.config.load()
    }

    /// The cluster view this client routes with: the one it last looked
    /// up, until the proxy's generation changes.
    ///
    /// Why cached: every request asked for the view twice (the idle
    /// client's primary pool, then routing), and each load of the shared
    /// `ArcSwap` costs dozens of instructions; the generation is one
    /// atomic load. A reload that replaces the view bumps the generation
    /// right after storing it, so the next request sees it (one already
    /// taken may use the old view, as one taken a moment earlier would).
    #[inline]
    pub fn cluster(&mut self, ctx: &SessionCtx) -> &Arc<ClusterView> {
        let generation = ctx.shared.generation();
        if generation != self.generation || self.view.is_none() {
            self.look_up_cluster(ctx, generation);
        }
        self.view.as_ref().expect("the view was just looked up")
    }

    #[cold]
    #[inline(never)]
    fn look_up_cluster(&mut self, ctx: &SessionCtx, generation: u64) {
        self.by_node.clear();
        self.generation = generation;
        self.view = Some(ctx.shared.cluster().clone());
    }

    /// The pool of `node` as numbered by `cluster`.
    pub fn get(
        &mut self,
        ctx: &SessionCtx,
        cluster: &Arc<ClusterView>,
        node: NodeId,
    ) -> &Arc<ServerPool> {
        let generation = ctx.shared.generation();
        let same_view = self.view.as_ref().is_some_and(|v| Arc::ptr_eq(v, cluster));
        if generation != self.generation || !same_view {
            self.by_node.clear();
            self.generation = generation;
            self.view = Some(cluster.clone());
        }
        pool_of(&mut self.by_node, ctx, cluster, node)
    }

    /// The pool of the current primary, for what an idle client's frames
    /// can be answered from (statements already prepared there). Borrowed,
    /// like the cluster view it is looked up in: every request asks, and
    /// cloning either would bump a reference count that every client
    /// shares. While no node may take writes (the monitor is settling, or
    /// recording a new primary) it is the configured primary's pool: a
    /// request that needs a server waits for a primary in [`acquire`].
    pub fn primary(&mut self, ctx: &SessionCtx) -> Result<&Arc<ServerPool>, WireError> {
        self.cluster(ctx);
        let NodePools { by_node, view, .. } = self;
        let cluster = view.as_ref().expect("the view was just looked up");
        let node = cluster.primary().unwrap_or(0);
        Ok(pool_of(by_node, ctx, cluster, node))
    }
}

/// `node`'s pool in a client's list for `cluster`, looked up the first
/// time.
#[inline]
fn pool_of<'a>(
    by_node: &'a mut Vec<Option<Arc<ServerPool>>>,
    ctx: &SessionCtx,
    cluster: &ClusterView,
    node: NodeId,
) -> &'a Arc<ServerPool> {
    if matches!(by_node.get(node), Some(Some(_))) {
        return by_node[node].as_ref().expect("just seen");
    }
    look_up_pool(by_node, ctx, cluster, node)
}

#[cold]
#[inline(never)]
fn look_up_pool<'a>(
    by_node: &'a mut Vec<Option<Arc<ServerPool>>>,
    ctx: &SessionCtx,
    cluster: &ClusterView,
    node: NodeId,
) -> &'a Arc<ServerPool> {
    if by_node.len() <= node {
        by_node.resize(node + 1, None);
    }
    by_node[node].get_or_insert_with(|| {
        let config = ctx.shared.config.load();
        let key = PoolKey {
            database: ctx.database.clone(),
            user: ctx.user.name.clone(),
            node: cluster.addr(node).clone(),
        };
        ctx.shared
            .pools
            .get(&key, &config, || ctx.user.server_secret())
    })
}

fn primary_node(cluster: &ClusterView, primary: Option<NodeId>) -> Result<NodeId, Refused> {
    primary.ok_or_else(|| {
        Refused::no_node(WireError::error(
            SqlState::CONNECTION_FAILURE,
            format!("no primary is available: {}", cluster.no_primary_reason()),
        ))
    })
}

/// Why no server was taken for a request: the error the client gets, and
/// the `errors_total` kind it is counted as (decided where the error is
/// made, not guessed back from its SQLSTATE).
#[derive(Debug)]
pub struct Refused {
    pub kind: ErrorKind,
    pub error: WireError,
}

impl Taken {
    /// Held in `phase`: the node, its role, the wait and when it ended.
    fn hold(self, phase: &mut Phase) -> (NodeId, Role, Duration, Tick) {
        let Taken {
            node,
            got: (lease, waited, ready),
            replica,
        } = self;
        let role = if replica.is_some() {
            Role::Replica
        } else {
            Role::Primary
        };
        *phase = Phase::Holding(Held {
            lease,
            _replica: replica,
        });
        (node, role, waited, ready)
    }
}

/// A checkout of `node` that gave no server: a replica's read goes to the
/// primary instead, a write follows the primary that replaced `node`, and
/// a failure of the primary's own pool is the client's error. Boxed by
/// the caller: rare, and kept out of every acquisition's state.
async fn elsewhere(
    ctx: &SessionCtx,
    pools: &mut NodePools,
    cluster: &Arc<ClusterView>,
    node: NodeId,
    replica: Option<ReplicaLease>,
    at: Tick,
    got: Result<Option<Got>, CheckoutError>,
) -> Result<Taken, Refused> {
    match got {
        Ok(Some(got)) => Ok(Taken { node, got, replica }),
        Err(e) => match replica {
            Some(replica) => to_primary(ctx, pools, cluster, replica, Lost::Checkout(e)).await,
            None => Err(e.into()),
        },
        Ok(None) => match replica {
            Some(replica) => {
                let why = Lost::given_up(cluster, node);
                to_primary(ctx, pools, cluster, replica, why).await
            }
            None => {
                followed(cluster, node);
                checkout_primary(ctx, pools, cluster, at, 1).await
            }
        },
    }
}

impl Refused {
    pub fn no_node(error: WireError) -> Refused {
        Refused {
            kind: ErrorKind::NoNode,
            error,
        }
    }
}

impl From<CheckoutError> for Refused {
    fn from(e: CheckoutError) -> Refused {
        let kind = match e {
            CheckoutError::Timeout { .. } | CheckoutError::FleetBudget { .. } => {
                ErrorKind::CheckoutTimeout
            }
            CheckoutError::Unreachable { .. } | CheckoutError::Server(_) => ErrorKind::NoNode,
        };
        Refused {
            kind,
            error: e.to_wire(),
        }
    }
}

/// A server taken, how long the request waited for it, and when it was
/// ready (the request's own reading if it did not wait): see
/// [`ServerPool::checkout_unless`].
type Got = (Lease, Duration, Tick);

/// Why a queued checkout ended without a server.
enum Lost {
    Checkout(CheckoutError),
    /// The monitor found the node down (a replica) or no longer the
    /// primary, while the request was still queued for it.
    GivenUp {
        node: NodeAddr,
    },
}

impl Lost {
    /// The monitor says `node` is no longer fit for the role it was
    /// asked for.
    fn given_up(cluster: &ClusterView, node: NodeId) -> Lost {
        Lost::GivenUp {
            node: cluster.addr(node).clone(),
        }
    }
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Checkout(e) => e.fmt(f),
            Lost::GivenUp { node } => write!(f, "{node} is down or changed role"),
        }
    }
}

/// What a checkout of `node`'s pool that gives up as soon as the monitor
/// says the node is no longer fit for its role (rather than retrying a
/// refused connection for the whole checkout_timeout) came to. The
/// question is asked only when the checkout has to wait, and again when
/// the cluster moves (the proxy wakes every waiting checkout then:
/// `Shared::start_monitor`).
fn given_up(
    cluster: &ClusterView,
    node: NodeId,
    got: Result<Option<Got>, CheckoutError>,
) -> Result<Got, Lost> {
    match got {
        Ok(Some(got)) => Ok(got),
        Ok(None) => Err(Lost::given_up(cluster, node)),
        Err(e) => Err(Lost::Checkout(e)),
    }
}

/// Most primary changes one queued write follows before it fails: a
/// failover is one change, and a cluster flapping faster than that is
/// better reported than chased.
const MAX_PRIMARY_MOVES: usize = 3;

/// Takes a server of the primary, waiting up to `checkout_timeout` for
/// one to be chosen; follows the primary if it changes while the request
/// is queued.
///
/// `moves`: how often the primary already changed while this request
/// waited.
async fn checkout_primary(
    ctx: &SessionCtx,
    pools: &mut NodePools,
    cluster: &Arc<ClusterView>,
    at: Tick,
    mut moves: usize,
) -> Result<Taken, Refused> {
    loop {
        let node = match cluster.primary() {
            Some(node) => node,
            None => {
                let limit = ctx.shared.config.load().pool.checkout_timeout;
                // Boxed: rare (no primary), and its timer would otherwise
                // grow every acquisition's state.
                primary_node(cluster, Box::pin(cluster.wait_for_primary(limit)).await)?
            }
        };
        let got = pools
            .get(ctx, cluster, node)
            .checkout_unless(|now| cluster.gives_up_at(node, Role::Primary, now), at)
            .await;
        match given_up(cluster, node, got) {
            Ok(got) => {
                return Ok(Taken {
                    node,
                    got,
                    replica: None,
                });
            }
            Err(Lost::Checkout(e)) => return Err(e.into()),
            Err(lost @ Lost::GivenUp { .. }) if moves >= MAX_PRIMARY_MOVES => {
                return Err(Refused::no_node(WireError::error(
                    SqlState::CONNECTION_FAILURE,
                    format!("the primary changed {moves} times while this request waited: {lost}"),
                )));
            }
            Err(Lost::GivenUp { .. }) => {
                moves += 1;
                followed(cluster, node);
            }
        }
    }
}

fn followed(cluster: &ClusterView, node: NodeId) {
    tracing::info!(old = %cluster.addr(node), "primary changed while a request waited for it; following");
}

/// Routes `unit` and takes a server for it, written straight into
/// `phase` (left idle if the request is refused).
///
/// Why one async fn (not a wrapper mapping the error of an inner one):
/// the request's future is polled at least twice when it queues for a
/// server (when it starts waiting and when it is handed one), and each
/// layer of future costs its own poll and its own drop on every
/// transaction (~100 instructions per `-S` transaction).
pub async fn acquire(
    ctx: &SessionCtx,
    client: &mut ClientState,
    pools: &mut NodePools,
    unit: &Unit,
    books: &mut Books,
    phase: &mut Phase,
) -> Result<(), WireError> {
    ctx.cancel.slot.set_activity(ClientActivity::Waiting);
    // The admin console's PAUSE holds new work here until RESUME.
    if ctx.shared.paused.is_on() {
        Box::pin(ctx.shared.paused.resumed()).await;
    }
    // One view of the cluster for the decision and the pool it picks.
    let cluster = pools.cluster(ctx).clone();
    // The request's one clock reading before its answer: routing, the
    // checkout's wait and the first statement's start share it (clock.rs).
    let at = Tick::now();
    let (target, transaction, reason) = {
        let config = pools.config();
        let routed = match route::decide(unit, client, &ctx.shared, config, &cluster, at) {
            Ok(routed) => routed,
            Err(refused) => return Err(refused_now(ctx, refused)),
        };
        if routed.decision.read_your_writes {
            ctx.shared.observer.metrics().read_your_writes();
        }
        (
            routed.decision.target,
            routed.transaction,
            routed.decision.reason,
        )
    };
    // The common path awaits one small checkout in this function's own
    // state (not boxed: see `session::serve`); the rare ones are boxed.
    // The server goes straight from the checkout's answer into the
    // session's phase: not through a `Taken`, a `Held` and a `Result` on
    // the way, each of which moved the 56-byte lease.
    let (node, role, waited, ready) = match first_node(&cluster, target) {
        Some((node, replica)) => {
            let role = if replica.is_some() {
                Role::Replica
            } else {
                Role::Primary
            };
            // `pools` was brought up to `cluster` just above, with no
            // await since: its list is that view's (no second check).
            let got = pool_of(&mut pools.by_node, ctx, &cluster, node)
                .checkout_unless(|now| cluster.gives_up_at(node, role, now), at)
                .await;
            match got {
                Ok(Some((lease, waited, ready))) => {
                    *phase = Phase::Holding(Held {
                        lease,
                        _replica: replica,
                    });
                    (node, role, waited, ready)
                }
                other => {
                    let taken = Box::pin(elsewhere(ctx, pools, &cluster, node, replica, at, other));
                    match taken.await {
                        Ok(taken) => taken.hold(phase),
                        Err(refused) => return Err(not_acquired(ctx, reason, refused)),
                    }
                }
            }
        }
        // No primary yet: wait for one.
        None => match Box::pin(checkout_primary(ctx, pools, &cluster, at, 0)).await {
            Ok(taken) => taken.hold(phase),
            Err(refused) => return Err(not_acquired(ctx, reason, refused)),
        },
    };
    // The routing decision is counted with the wait, under one lock.
    ctx.shared.observer.metrics().acquired(reason, waited);
    let Phase::Holding(held) = phase else {
        unreachable!("just set")
    };
    if !held.lease.state.params.fits(&client.params) {
        // Boxed: rare, and its state (another checkout) would otherwise
        // grow every acquisition's.
        let Held { lease, _replica } = phase.release();
        let pool = lease.pool().clone();
        match Box::pin(refit(lease, &pool, client)).await {
            Ok(lease) => *phase = Phase::Holding(Held { lease, _replica }),
            Err(e) => return Err(refused_now(ctx, e.into())),
        }
    }
    let Phase::Holding(held) = phase else {
        unreachable!("just set")
    };
    books.expect.reset();
    books.hold.reset(node, role);
    if role == Role::Replica && !transaction {
        // A single read: later requests are routed on their own.
        books.hold.budget = Some(unit.len);
        books.hold.budget_until_sync = !unit.ends_with_ready;
    }
    // A server handed over by another session was ready when its wait ended.
    books.hold.clock = BatchClock::starting_at(ready);
    bring_up_to_date(held, &mut books.expect, client);
    Ok(())
}

/// No server for the request: counted with its routing reason, and the
/// client idle again.
#[cold]
#[inline(never)]
fn not_acquired(ctx: &SessionCtx, reason: &'static str, refused: Refused) -> WireError {
    ctx.shared.observer.metrics().routing(reason);
    refused_now(ctx, refused)
}

/// A request refused: the client is idle again, and the error counted.
#[cold]
#[inline(never)]
fn refused_now(ctx: &SessionCtx, refused: Refused) -> WireError {
    ctx.cancel.slot.set_activity(ClientActivity::Idle);
    ctx.shared.observer.metrics().error(refused.kind);
    refused.error
}

/// A server just taken for a request, not yet brought up to date.
struct Taken {
    node: NodeId,
    /// The server, how long it was waited for, and when it was ready.
    got: Got,
    /// Counts a replica read against the replica's load.
    replica: Option<ReplicaLease>,
}

/// The node `target` names, with the replica's lease; `None` for the
/// primary while there is none.
fn first_node(cluster: &ClusterView, target: Target) -> Option<(NodeId, Option<ReplicaLease>)> {
    match target {
        Target::Replica(lease) => Some((lease.id, Some(lease))),
        Target::Primary => cluster.primary().map(|node| (node, None)),
    }
}

/// A replica read whose replica could not serve it, sent to the primary
/// instead (nothing was sent yet). Not async itself, so that the reason
/// and the replica are let go of before the wait: only the boxed checkout
/// (rare, and kept out of every acquisition's state) is awaited.
fn to_primary<'a>(
    ctx: &'a SessionCtx,
    pools: &'a mut NodePools,
    cluster: &'a Arc<ClusterView>,
    replica: ReplicaLease,
    why: Lost,
) -> std::pin::Pin<Box<impl std::future::Future<Output = Result<Taken, Refused>> + 'a>> {
    tracing::warn!(reason = %why, "replica unavailable, reading from the primary");
    drop(replica);
    // The replica's wait is over: the primary's starts now.
    Box::pin(checkout_primary(ctx, pools, cluster, Tick::now(), 0))
}

/// Another server of `pool` for a client that `lease` does not fit: one
/// with a custom setting defined that this client never defined (Postgres
/// cannot undefine one, and the client would see '' where its own session
/// has NULL). Such servers are closed; after as many tries as the pool has
/// servers, one is used anyway.
async fn refit(
    mut lease: Lease,
    pool: &Arc<ServerPool>,
    client: &ClientState,
) -> Result<Lease, CheckoutError> {
    for _ in 0..=pool.size {
        if lease.state.params.fits(&client.params) {
            return Ok(lease);
        }
        tracing::debug!(server = %lease.addr, "closing a server with custom settings this client never set");
        lease.mark_broken();
        drop(lease);
        lease = pool.checkout().await?.0;
    }
    Ok(lease)
}

/// Queues, ahead of the client's request, what makes the server match the
/// client: its session parameters and a BEGIN the proxy acknowledged.
fn bring_up_to_date(held: &mut Held, expect: &mut Expectations, client: &mut ClientState) {
    client.readback.forget_running();
    let (io, state) = held.lease.split();
    if let Some(sync) = state.params.sync_sql(&client.params) {
        if sync.utf8_first {
            frame::put_query(io.wbuf, UTF8_FIRST);
            expect.sent(
                fe::QUERY,
                Some(Request::Query),
                Audience::Proxy,
                Token::ParamSync,
            );
        }
        frame::put_query(io.wbuf, &sync.sql);
        expect.sent(
            fe::QUERY,
            Some(Request::Query),
            Audience::Proxy,
            Token::ParamSync,
        );
        state.params.assume(&client.params);
    }
    if let Some(begin) = client.deferred_begin.take() {
        io.wbuf.extend_from_slice(&begin);
        // The BEGIN, and any SET TRANSACTION answered after it.
        for _ in super::tx_modes::frames(&begin) {
            expect.sent(
                fe::QUERY,
                Some(Request::Query),
                Audience::Proxy,
                Token::None,
            );
        }
    }
}

/// Gives a server back after the client's transaction ended.
pub fn release(mut held: Held, books: &mut Books, client: &ClientState) {
    remember_params(&mut held, &books.hold, client);
    // The clock was read for the batch that ended the hold, a moment ago.
    match books.hold.clock.last() {
        Some(at) => held.lease.give_back_at(at),
        None => drop(held),
    }
    books.hold.empty();
}

fn remember_params(held: &mut Held, hold: &HoldState, client: &ClientState) {
    if hold.stale_server {
        // It holds a statement with a stale plan the proxy did not repair.
        held.lease.mark_broken();
    }
    let state = &mut held.lease.state;
    if hold.params_diverged {
        state.params.mark_unknown();
    } else {
        state.params.assume(&client.params);
    }
}

/// Returns a server the client is leaving: reusable as is, after a
/// ROLLBACK (client left inside a transaction) and, in session mode, after
/// DISCARD ALL; anything else closes it, so no transaction or session state
/// reaches the next client.
pub async fn leave(mut held: Held, books: &mut Books, client: &ClientState, mode: PoolMode) {
    remember_params(&mut held, &books.hold, client);
    // Code the proxy could not see into may have left anything: cleaned
    // as thoroughly as a pinned session's.
    let opaque = client.readback.unread();
    let expect = &books.expect;
    let Held { mut lease, .. } = held;
    if !expect.is_quiet() {
        // A query is still running: cancel it and close the connection.
        // The connection's own link, made at login, says where it goes.
        let link = lease.link.clone();
        tokio::spawn(async move {
            let _ = send_cancel(&link.cancel).await;
        });
        lease.mark_broken();
        return;
    }
    let pinned = client.pins.is_pinned() || opaque;
    let script = match (expect.status(), mode == PoolMode::Session || pinned) {
        (TxStatus::Idle, false) => return,
        (TxStatus::Idle, true) => "DISCARD ALL",
        (_, false) => "ROLLBACK",
        (_, true) => "ROLLBACK; DISCARD ALL",
    };
    if script.contains("DISCARD") {
        // DISCARD ALL drops prepared statements, settings, locks, LISTENs
        // and temporary tables: the next client starts clean.
        lease.state.prepared.clear();
        lease.state.params.reset();
    }
    match tokio::time::timeout(CLEANUP_TIMEOUT, lease.run_internal(script)).await {
        Ok(Ok(status)) if TxStatus::from_byte(status).is_idle() => {}
        _ => lease.mark_broken(),
    }
}
