//! One node's coordinator: keeps the member's session on the node, and
//! each round looks at the fleet, decides how many slots to hold
//! ([`policy`](super::policy)), and carries that out in an order that never
//! lets the fleet's connections exceed the budget:
//!
//! - take a slot in Postgres first, raise the gate's limit after;
//! - lower the limit first, close connections, and give a slot back only
//!   when it backs no connection *and* the backends of the connections
//!   closed lately have left `pg_stat_activity`;
//! - take only slots that every look of the last [`GRACE`] saw free, so
//!   the connections of a member that just died (whose slots Postgres
//!   freed as its session ended) have time to end too;
//! - the moment the session is lost, the limit drops to 0: idle
//!   connections close at once, busy ones when their client gives them
//!   back, and none opens until slots are held again.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::identity::Identity;
use super::policy::{self, Inputs};
use super::session::{Dial, Login, Look, Session, SessionError};
use super::view::{FleetView, MemberRow};
use super::writes::{Link, Writes};
use crate::cluster::{ClusterView, WalGeometry};
use crate::config::{Config, ConfigHandle, NodeAddr};
use crate::server::NodeGate;

/// A slot must have been seen free this long before it is taken.
pub const GRACE: Duration = Duration::from_millis(100);
/// How far back an idle member looks for capacity it did not use.
const UNUSED_WINDOW: Duration = Duration::from_secs(1);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a round reads from the config.
struct Settings {
    budget: u32,
    floor: u32,
    interval: Duration,
    login: Login,
    connect_timeout: Duration,
    /// Every statement's limit.
    timeout: Duration,
}

impl Settings {
    fn from_config(config: &Config, node: &NodeAddr, floor: u32, interval: Duration) -> Settings {
        let (floor, interval) = match &config.fleet {
            Some(f) => (f.floor, f.interval),
            // `[fleet]` removed by a reload: it still applies until restart.
            None => (floor, interval),
        };
        let user = (config.cluster.monitor_user.clone())
            .or_else(|| config.users.first().map(|u| u.name.clone()))
            .unwrap_or_else(|| "postgres".into());
        let password = (config.user(&user))
            .and_then(|u| u.password.as_ref())
            .map(|p| p.expose().to_string());
        Settings {
            budget: config.node_budget(node),
            floor,
            interval,
            login: Login {
                user,
                database: config.cluster.monitor_database.clone(),
                password,
            },
            connect_timeout: config.cluster.connect_timeout,
            timeout: Duration::from_secs(2).max(interval.saturating_mul(2)),
        }
    }
}

/// The member's state on a node while its session is up.
struct Up {
    session: Session,
    login: Login,
    /// Slots held (as the last look and own actions say).
    held: BTreeSet<u32>,
    want_published: bool,
    published_open: Option<u32>,
    /// Free slots and since when they have been seen free.
    free_since: HashMap<u32, Instant>,
    /// The gate's `waited` at the last round.
    last_waited: u64,
    /// (when, unused capacity) samples.
    unused: VecDeque<(Instant, u32)>,
    /// The connection listening for the fleet's writes (the node is the
    /// primary), beside the session.
    listener: Option<Session>,
}

pub(super) struct Coordinator {
    pub node: NodeAddr,
    pub gate: Arc<NodeGate>,
    pub identity: Identity,
    pub config: ConfigHandle,
    pub view: Arc<FleetView>,
    /// `[fleet] floor` and `interval` at start (used if a reload drops
    /// `[fleet]`).
    pub floor: u32,
    pub interval: Duration,
    /// The fleet's writes: heard on, and announced through, the session of
    /// the node that is the primary.
    pub writes: Arc<Writes>,
    pub cluster: Arc<ClusterView>,
}

/// Drops the gate to 0 however the coordinator ends (also when aborted,
/// possibly while the runtime shuts down, so only the limit: connections
/// close when next given back, or when a new coordinator starts).
struct ZeroOnDrop(Arc<NodeGate>);

impl Drop for ZeroOnDrop {
    fn drop(&mut self) {
        self.0.set_limit(0);
    }
}

/// The member holds nothing on the node now.
fn lose(gate: &NodeGate) {
    gate.set_limit(0);
    gate.shed_idle(u32::MAX);
}

impl Coordinator {
    pub async fn run(self) {
        let _zero = ZeroOnDrop(self.gate.clone());
        lose(&self.gate);
        let mut up: Option<Up> = None;
        let mut backoff = Duration::ZERO;
        let mut failing = false;
        loop {
            let s =
                Settings::from_config(&self.config.load(), &self.node, self.floor, self.interval);
            if up.as_ref().is_some_and(|u| u.login != s.login) {
                tracing::info!(node = %self.node, "fleet login changed; reconnecting");
                self.drop_session(&mut up);
                lose(&self.gate);
            }
            let result = match up.as_mut() {
                Some(u) => self.round(u, &s).await,
                None => match self.connect(&s).await {
                    Ok(u) => {
                        if failing {
                            tracing::info!(node = %self.node, "fleet coordinator connected");
                        }
                        failing = false;
                        up = Some(u);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            let wait = match result {
                Ok(wait) => {
                    backoff = Duration::ZERO;
                    wait
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(node = %self.node, %error,
                            "fleet coordinator lost its session: this member's share of the node is 0 until it reconnects");
                    }
                    failing = true;
                    self.drop_session(&mut up);
                    lose(&self.gate);
                    self.view
                        .disconnected(&self.node, s.budget, self.gate.state());
                    backoff = (backoff.saturating_mul(2))
                        .max(s.interval.min(MAX_BACKOFF))
                        .min(MAX_BACKOFF);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let Some(u) = up.as_mut() else { continue };
            let listener_closed = async {
                match u.listener.as_mut() {
                    Some(l) => {
                        let _ = (&mut l.closed).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let lost = tokio::select! {
                _ = &mut u.session.closed => true,
                () = listener_closed => {
                    tracing::warn!(node = %self.node, "fleet listener connection ended; opening another");
                    self.drop_listener(u);
                    false
                }
                _ = wait_or_wanted(&self.gate, wait, s.interval) => false,
            };
            if lost {
                tracing::warn!(node = %self.node,
                    "fleet coordinator session ended: this member's share of the node is 0 until it reconnects");
                failing = true;
                self.drop_session(&mut up);
                lose(&self.gate);
                self.view
                    .disconnected(&self.node, s.budget, self.gate.state());
            }
        }
    }

    /// The session is gone: if it listened, the member is deaf now.
    fn drop_session(&self, up: &mut Option<Up>) {
        if let Some(u) = up.take()
            && u.listener.is_some()
        {
            self.writes.detach(u.session.pid);
        }
    }

    /// The listening connection is gone: deaf until the next round opens
    /// another.
    fn drop_listener(&self, u: &mut Up) {
        if u.listener.take().is_some() {
            self.writes.detach(u.session.pid);
        }
    }

    /// Listens for the fleet's writes while the node is the primary, on a
    /// connection of its own (announcing this member's writes through the
    /// session). A listener that cannot be opened, or a LISTEN the node
    /// refuses (it is in recovery after all), is tried again next round:
    /// deaf meanwhile, this member sends its reads to the primary.
    async fn follow_primary(&self, u: &mut Up, s: &Settings) {
        let primary =
            (self.cluster.primary()).is_some_and(|id| *self.cluster.addr(id) == self.node);
        if primary && u.listener.is_none() {
            match self.open_listener(s).await {
                Ok((listener, geometry)) => {
                    u.listener = Some(listener);
                    self.writes.attach(Link {
                        client: u.session.client.clone(),
                        pid: u.session.pid,
                        geometry,
                    });
                }
                Err(e) => {
                    tracing::debug!(node = %self.node, error = %e, "cannot listen for the fleet's writes; trying again next round");
                }
            }
        } else if !primary && u.listener.is_some() {
            self.drop_listener(u);
        }
    }

    fn dial<'a>(&'a self, s: &'a Settings) -> Dial<'a> {
        Dial {
            addr: &self.node,
            login: &s.login,
            identity: &self.identity,
            connect_timeout: s.connect_timeout,
            timeout: s.timeout,
            writes: &self.writes,
        }
    }

    async fn open_listener(&self, s: &Settings) -> Result<(Session, WalGeometry), SessionError> {
        let listener = Session::open_listener(&self.dial(s)).await?;
        let geometry = listener.listen(self.writes.channel()).await?;
        Ok((listener, geometry))
    }

    async fn connect(&self, s: &Settings) -> Result<Up, SessionError> {
        let session = Session::open(&self.dial(s)).await?;
        Ok(Up {
            session,
            login: s.login.clone(),
            held: BTreeSet::new(),
            want_published: false,
            published_open: Some(0),
            free_since: HashMap::new(),
            last_waited: self.gate.state().waited,
            unused: VecDeque::new(),
            listener: None,
        })
    }

    /// One round; returns how long to wait before the next.
    async fn round(&self, u: &mut Up, s: &Settings) -> Result<Duration, SessionError> {
        self.follow_primary(u, s).await;
        let look = u.session.look(s.budget).await?;
        let now = Instant::now();
        u.free_since.retain(|slot, _| look.free.contains(slot));
        for slot in &look.free {
            u.free_since.entry(*slot).or_insert(now);
        }
        let aged: BTreeSet<u32> = (u.free_since.iter())
            .filter(|(_, since)| now.duration_since(**since) >= GRACE)
            .map(|(slot, _)| *slot)
            .collect();
        let me = u.session.pid;
        if let Some(seen) = look.members.iter().find(|m| m.pid == me) {
            u.held = seen.slots.clone();
        }

        let gate = self.gate.state();
        let demand = gate.waiting > 0 || gate.waited > u.last_waited;
        u.last_waited = gate.waited;
        if gate.debt == 0 {
            u.unused
                .push_back((now, gate.limit.saturating_sub(gate.open) + gate.idle));
        }
        while u
            .unused
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > UNUSED_WINDOW)
        {
            u.unused.pop_front();
        }
        let unused = u.unused.iter().map(|(_, n)| *n).min().unwrap_or(0);
        let decision = policy::decide(&Inputs {
            budget: s.budget,
            floor: s.floor,
            me,
            members: &look.members,
            held: &u.held,
            demand,
            unused,
        });
        if decision.want != u.want_published {
            u.session.set_want(decision.want).await?;
            u.want_published = decision.want;
        }

        let in_range = |held: &BTreeSet<u32>| held.range(..s.budget).count() as u32;
        if decision.goal > in_range(&u.held) {
            let wanted = decision.goal - in_range(&u.held);
            let candidates = policy::to_take(&aged, &u.held, s.budget, wanted);
            if !candidates.is_empty() {
                let got = u.session.take(&candidates).await?;
                u.held.extend(got);
            }
        }
        self.gate.set_limit(decision.goal.min(in_range(&u.held)));
        let state = self.gate.state();
        if state.debt > 0 {
            self.gate.shed_idle(state.debt);
        }
        let state = self.gate.state();
        let spare = (u.held.len() as u32).saturating_sub(state.backed());
        if spare > 0 && u.session.alive(&self.gate.recently_closed()).await? == 0 {
            let slots = policy::to_give_back(&u.held, spare);
            u.session.give_back(&slots).await?;
            for slot in slots {
                u.held.remove(&slot);
            }
        }
        if u.published_open != Some(state.open) {
            u.session
                .publish(&self.identity.application_name(state.open))
                .await?;
            u.published_open = Some(state.open);
        }
        self.record(&look, u, s, self.gate.state());

        // Free slots wanted but not yet old enough: look again soon.
        let young = decision.goal > in_range(&u.held) && u.free_since.len() > aged.len();
        Ok(if young {
            GRACE.min(s.interval)
        } else {
            s.interval
        })
    }

    fn record(&self, look: &Look, u: &Up, s: &Settings, gate: crate::server::GateState) {
        let now = SystemTime::now();
        let rows = (look.members.iter())
            .map(|m| {
                let name = look
                    .names
                    .iter()
                    .find(|(pid, _)| *pid == m.pid)
                    .map(|(_, n)| n.as_str())
                    .unwrap_or("");
                let (instance, open) = self
                    .identity
                    .parse(name)
                    .map(|(i, o)| (i.to_string(), o))
                    .unwrap_or_else(|| (format!("<{}>", name.escape_debug()), None));
                let is_self = m.pid == u.session.pid;
                MemberRow {
                    instance,
                    pid: m.pid,
                    is_self,
                    share: if is_self {
                        u.held.len() as u32
                    } else {
                        m.slots.len() as u32
                    },
                    open: if is_self { Some(gate.open) } else { open },
                    wanting: if is_self { u.want_published } else { m.wanting },
                    present: true,
                    last_seen: now,
                }
            })
            .collect();
        self.view.record(&self.node, s.budget, gate, rows);
    }
}

/// Sleeps `wait`, or less when a connection attempt starts waiting for
/// budget (but not sooner than [`GRACE`] or the interval, whichever is
/// shorter, after the last round).
async fn wait_or_wanted(gate: &NodeGate, wait: Duration, interval: Duration) {
    let start = Instant::now();
    let min_gap = GRACE.min(interval).min(wait);
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = gate.wanted() => {
            let since = start.elapsed();
            if since < min_gap {
                tokio::time::sleep(min_gap - since).await;
            }
        }
    }
}
