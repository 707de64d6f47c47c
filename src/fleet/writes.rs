//! Read-your-writes across the fleet: each member announces the tables its
//! clients' transactions wrote, once they have committed, with a NOTIFY on
//! the fleet's channel of the primary; every member LISTENs there and
//! records what the others announce in its own write log, as if its own
//! clients had written it (so a read of those tables waits for a replica
//! that has replayed past the first primary sample taken after the
//! announcement was heard — which covers the commit, since the
//! announcement was sent after it).
//!
//! # Closing the window
//! A client that has committed through member A may read through member B
//! before B has heard of it. A holds the client's ReadyForQuery until its
//! announcement has committed (and Postgres has signalled every listener:
//! it does so during the commit), so the client cannot even know its
//! write succeeded before B's listening backend has been told. What
//! remains is how long that backend takes to pass the notification on and
//! B to record it, against how long the client takes to send its next
//! request to B: measured in docs/fleet.md.
//!
//! While B cannot hear the fleet (its session on the primary is down, or
//! not yet up) it counts every table as written just now: its reads go to
//! the primary. Once it listens again it counts every table as written at
//! that moment, since announcements made meanwhile are lost.
//!
//! # Cost
//! Announcements are batched: while one is being sent, the writes that
//! commit meanwhile wait for the next, which covers them all in one
//! statement (`synchronous_commit = off` on the session: a notification
//! needs no WAL flush to be delivered). The statement also reads the
//! primary's WAL insert position, which is at or past every commit it
//! announces: the position `SHOW pgsidecar.last_write_lsn` reports.

use crate::sync::lock;
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};
use tokio_postgres::{Client, Notification, SimpleQueryMessage};

use super::announce::{self, Heard};
use crate::cluster::{Lsn, WalGeometry};
use crate::config::{ConfigHandle, ReadYourWrites};
use crate::routing::policy::{WriteLog, horizon};

/// How long a client's ReadyForQuery waits for the announcement of its
/// write, at most (the member's session on the primary being down, it is
/// released without: counted in `fleet_publish_failures_total`).
pub const PUBLISH_LIMIT: Duration = Duration::from_secs(2);
/// Announcement statements sent at once on the session at most: a write
/// that commits while they run waits for the next one only if all are
/// taken (then it shares the next with every write queued meanwhile).
const IN_FLIGHT: usize = 4;
/// Positions of this many recent announcements are kept for
/// `SHOW pgsidecar.last_write_lsn`; older writes use the monitor's samples.
const RECENT: usize = 1024;

/// The member's coordinator session on the primary, which announces, while
/// its listening connection there is up (attached and detached together).
pub(super) struct Link {
    pub client: Arc<Client>,
    /// The announcing backend's pid: notifications from it are this
    /// member's own.
    pub pid: i32,
    pub geometry: WalGeometry,
}

#[derive(Default)]
struct Batch {
    tables: BTreeSet<Arc<str>>,
    /// The last transaction in it.
    last: u64,
    /// Transactions in it.
    count: u64,
}

/// A batch on its way.
struct Sending {
    last: u64,
    count: u64,
    task: tokio::task::JoinHandle<Result<Lsn, String>>,
}

/// The batch being filled, and the last ticket given.
#[derive(Default)]
struct Queue {
    batch: Batch,
    ticket: u64,
}

/// Counts for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteCounts {
    /// Write transactions this member announced.
    pub published: u64,
    /// Announcements heard from other members.
    pub received: u64,
    /// Write transactions whose announcement failed (released without).
    pub failures: u64,
    /// Whether this member hears the fleet now.
    pub listening: bool,
}

/// The fleet's writes as this member sends and hears them.
pub struct Writes {
    channel: String,
    log: Arc<WriteLog>,
    config: ConfigHandle,
    queue: Mutex<Queue>,
    wake: Notify,
    /// The last transaction whose announcement is over (sent or failed).
    done: watch::Sender<u64>,
    /// (last transaction of a batch, position announced), newest last.
    recent: Mutex<VecDeque<(u64, Lsn)>>,
    link: ArcSwapOption<Link>,
    linked: Notify,
    published: AtomicU64,
    received: AtomicU64,
    failures: AtomicU64,
}

impl Writes {
    /// `key`: the fleet's lock key, which names its channel.
    pub fn new(key: i32, log: Arc<WriteLog>, config: ConfigHandle) -> Writes {
        let writes = Writes {
            channel: format!("pgsidecar_fleet_{:08x}", key as u32),
            log,
            config,
            queue: Mutex::default(),
            wake: Notify::new(),
            done: watch::Sender::new(0),
            recent: Mutex::default(),
            link: ArcSwapOption::empty(),
            linked: Notify::new(),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        };
        // Until it listens, this member cannot know what others write.
        writes.log.set_deaf();
        writes
    }

    /// The channel, a plain identifier.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    fn enabled(&self) -> bool {
        self.config.load().routing.read_your_writes != ReadYourWrites::Off
    }

    /// A client transaction that wrote `tables` has committed: queues its
    /// announcement. Returns its ticket (for [`wait`](Self::wait) and
    /// [`lsn_of`](Self::lsn_of)), or `None` when nothing is announced
    /// (no table known, or read-your-writes is off).
    pub fn publish(&self, tables: &[Arc<str>]) -> Option<u64> {
        if tables.is_empty() || !self.enabled() {
            return None;
        }
        let mut queue = lock(&self.queue);
        queue.ticket += 1;
        let ticket = queue.ticket;
        queue.batch.tables.extend(tables.iter().cloned());
        queue.batch.last = ticket;
        queue.batch.count += 1;
        drop(queue);
        self.wake.notify_one();
        Some(ticket)
    }

    /// Resolves once the announcement of `ticket` is over: committed (so
    /// every listener has been signalled), failed, or [`PUBLISH_LIMIT`]
    /// passed.
    pub fn wait(&self, ticket: u64) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut done = self.done.subscribe();
        async move {
            let _ = tokio::time::timeout(PUBLISH_LIMIT, done.wait_for(|d| *d >= ticket)).await;
        }
    }

    /// A WAL position at or past the commit of `ticket`'s transaction: the
    /// position of the first announcement sent since, which is its own or
    /// a later one (later ones ran after it committed, too). `None` while
    /// none is known.
    pub fn lsn_of(&self, ticket: u64) -> Option<Lsn> {
        lock(&self.recent)
            .iter()
            .find(|(last, _)| *last >= ticket)
            .map(|(_, lsn)| *lsn)
    }

    pub fn counts(&self) -> WriteCounts {
        WriteCounts {
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            listening: self.link.load().is_some(),
        }
    }

    /// The member's session on the primary listens now: announcements
    /// made before are lost, so every table counts as written now.
    pub(super) fn attach(&self, link: Link) {
        self.link.store(Some(Arc::new(link)));
        self.log.mark_all(Instant::now());
        self.linked.notify_waiters();
        tracing::info!(channel = %self.channel, "fleet member listening for the fleet's writes");
    }

    /// The session that listened is gone (or the node is no longer the
    /// primary): deaf until another listens.
    pub(super) fn detach(&self, pid: i32) {
        let ours = self.link.load().as_ref().is_some_and(|l| l.pid == pid);
        if ours {
            self.link.store(None);
            self.log.set_deaf();
            tracing::warn!(channel = %self.channel,
                "fleet member cannot hear the fleet's writes: its reads go to the primary until it listens again");
        }
    }

    /// No session listens any more (the coordinators stopped).
    pub(super) fn detach_all(&self) {
        if let Some(link) = self.link.load_full() {
            self.detach(link.pid);
        }
    }

    /// A notification on the listening connection (this member's own
    /// announcements come back too: they are skipped).
    pub(super) fn heard(&self, n: &Notification) {
        let own = self.link.load().as_ref().map(|l| l.pid);
        if n.channel() != self.channel || Some(n.process_id()) == own {
            return;
        }
        let now = Instant::now();
        match announce::decode(n.payload()) {
            Heard::Tables(tables) => {
                let forget_before = now.checked_sub(horizon(&self.config.load().routing));
                self.log.record_heard(&tables, now, forget_before);
            }
            Heard::All => self.log.mark_all(now),
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            at_us = wall_us(),
            from = n.process_id(),
            "fleet write heard"
        );
    }

    /// Sends the queued announcements until aborted: a batch as soon as
    /// there is one, up to [`IN_FLIGHT`] statements at once (pipelined on
    /// the session), each taking every write queued since the last; a
    /// batch is over for its writers only when every batch before it is.
    pub(super) async fn run(self: Arc<Self>) {
        let mut in_flight: VecDeque<Sending> = VecDeque::new();
        loop {
            let notified = self.wake.notified();
            while in_flight.len() < IN_FLIGHT {
                let batch = std::mem::take(&mut lock(&self.queue).batch);
                if batch.count == 0 {
                    break;
                }
                let writes = self.clone();
                in_flight.push_back(Sending {
                    last: batch.last,
                    count: batch.count,
                    task: tokio::spawn(async move { writes.send(&batch.tables).await }),
                });
            }
            let room = in_flight.len() < IN_FLIGHT;
            let Some(front) = in_flight.front_mut() else {
                notified.await;
                continue;
            };
            let result = tokio::select! {
                r = &mut front.task => r.unwrap_or_else(|e| Err(e.to_string())),
                _ = notified, if room => continue,
            };
            let Sending { last, count, .. } = in_flight.pop_front().expect("the front");
            self.finish(last, count, result);
        }
    }

    /// A batch is over: its writers' ReadyForQuery may go.
    fn finish(&self, last: u64, count: u64, result: Result<Lsn, String>) {
        match result {
            Ok(lsn) => {
                let mut recent = lock(&self.recent);
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back((last, lsn));
                drop(recent);
                self.published.fetch_add(count, Ordering::Relaxed);
                // Wall-clock time, to compare with other members' "heard"
                // lines (docs/fleet.md measures the window so).
                tracing::debug!(at_us = wall_us(), transactions = count, %lsn,
                    "fleet writes announced");
            }
            Err(error) => {
                self.failures.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(%error, transactions = count,
                    "fleet write announcement failed: other members' reads of these tables may reach a replica that lacks them");
            }
        }
        self.done.send_if_modified(|d| {
            let moved = last > *d;
            *d = (*d).max(last);
            moved
        });
    }

    /// One statement announcing writes to `tables`; the primary's WAL
    /// insert position as it ran (past every commit announced).
    async fn send(&self, tables: &BTreeSet<Arc<str>>) -> Result<Lsn, String> {
        let link = self
            .current_link()
            .await
            .ok_or("no session on the primary")?;
        let payloads = announce::encode(tables, false);
        let sql = statement(&self.channel, &payloads);
        let messages = tokio::time::timeout(PUBLISH_LIMIT, link.client.simple_query(&sql))
            .await
            .map_err(|_| format!("no answer within {PUBLISH_LIMIT:?}"))?
            .map_err(|e| e.to_string())?;
        let lsn = messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0)?.parse::<Lsn>().ok(),
                _ => None,
            })
            .ok_or("no WAL position in the answer")?;
        Ok(link.geometry.record_end(lsn))
    }

    /// The announcing session (linked while the member listens), waiting
    /// a little for one.
    async fn current_link(&self) -> Option<Arc<Link>> {
        let deadline = tokio::time::Instant::now() + PUBLISH_LIMIT / 2;
        loop {
            let linked = self.linked.notified();
            if let Some(link) = self.link.load_full() {
                return Some(link);
            }
            tokio::time::timeout_at(deadline, linked).await.ok()?;
        }
    }
}

/// `SELECT <insert position>, pg_notify(...)…` as one simple query: by the
/// simple protocol Postgres commits before it answers, so the answer means
/// the notifications are delivered to the listeners.
fn statement(channel: &str, payloads: &[String]) -> String {
    let mut sql = String::from("SELECT pg_current_wal_insert_lsn()::text");
    for p in payloads {
        sql.push_str(", pg_notify('");
        sql.push_str(channel);
        sql.push_str("', '");
        sql.push_str(&p.replace('\'', "''"));
        sql.push_str("')");
    }
    sql
}

/// Microseconds since the Unix epoch.
fn wall_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_quotes_payloads() {
        let sql = statement("c", &["{\"t\":[\"it's\"]}".to_string()]);
        assert_eq!(
            sql,
            "SELECT pg_current_wal_insert_lsn()::text, pg_notify('c', '{\"t\":[\"it''s\"]}')"
        );
    }
}
