//! The monitor: one tokio task per node, each with its own connection,
//! checking its node every `routing.lag_check_interval` and recording the
//! outcome in the [`ClusterView`]. Tasks are independent and every await is
//! bounded, so a node that hangs (e.g. SIGSTOPped) delays nobody else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{JoinHandle, JoinSet};

use super::NodeId;
use super::error::CheckError;
use super::probe::{MonitorLogin, NodeConn};
use super::record::StateFileError;
use super::view::ClusterView;
use crate::config::{Config, ConfigHandle};

/// A check gets at least this long to answer (see [`Timing`]).
pub const MIN_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait between reconnect attempts, so a node that comes back is
/// noticed within about a second.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// The per-round timings, read from the config each round so that a reload
/// takes effect at the next check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timing {
    /// `routing.lag_check_interval`.
    pub interval: Duration,
    /// `cluster.connect_timeout`: TCP connect plus login.
    pub connect_timeout: Duration,
    /// The check query's limit: `max(1 s, 2 × interval)`. A node that cannot
    /// answer a trivial SELECT within a second is unfit for reads anyway,
    /// and a second keeps a hung node's ban prompt; slow intervals get
    /// proportionally more patience.
    pub check_timeout: Duration,
}

impl Timing {
    pub(crate) fn from_config(config: &Config) -> Self {
        let interval = config.routing.lag_check_interval;
        Timing {
            interval,
            connect_timeout: config.cluster.connect_timeout,
            check_timeout: MIN_CHECK_TIMEOUT.max(interval.saturating_mul(2)),
        }
    }

    /// How long a node stays healthy without a new successful check: two
    /// full rounds, so only a monitor that stopped running trips it.
    pub(crate) fn stale_after(self) -> Duration {
        (self.interval + self.check_timeout).saturating_mul(2)
    }
}

impl ClusterView {
    /// Starts the monitor: one task per node, running until the returned
    /// handle is aborted (which stops every node task and closes their
    /// connections). Each task holds one connection to its node, as
    /// `cluster.monitor_user` on `cluster.monitor_database`: these count as
    /// the proxy's own connections (one per node, besides the pools) against
    /// the server's `max_connections`. Interval, timeouts and login are
    /// re-read from `config` every round, so a reload applies at the next
    /// check (a changed login reconnects).
    pub fn spawn_monitor(self: &Arc<Self>, config: ConfigHandle) -> JoinHandle<()> {
        let view = self.clone();
        tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            let mut ids = HashMap::new();
            for id in 0..view.node_count() {
                let task = tasks.spawn(watch_node(view.clone(), config.clone(), id));
                ids.insert(task.id(), id);
            }
            // Node tasks only end by panicking (a bug): say so and restart.
            while let Some(ended) = tasks.join_next_with_id().await {
                let (task, why) = match ended {
                    Ok((task, ())) => (task, "returned".to_string()),
                    Err(e) => (e.id(), e.to_string()),
                };
                let Some(id) = ids.remove(&task) else {
                    continue;
                };
                tracing::error!(node = %view.addr(id), why, "monitor task ended; restarting it");
                tokio::time::sleep(MAX_RECONNECT_BACKOFF).await;
                let task = tasks.spawn(watch_node(view.clone(), config.clone(), id));
                ids.insert(task.id(), id);
            }
        })
    }
}

/// Checks node `id` forever.
async fn watch_node(view: Arc<ClusterView>, config: ConfigHandle, id: NodeId) {
    let addr = view.addr(id).clone();
    let mut conn: Option<NodeConn> = None;
    let mut backoff = Duration::ZERO;
    loop {
        let (timing, login) = {
            let config = config.load();
            (
                Timing::from_config(&config),
                MonitorLogin::from_config(&config),
            )
        };
        view.set_stale_after(timing.stale_after());
        if conn.as_ref().is_some_and(|c| c.login() != &login) {
            tracing::info!(node = %addr, user = %login.user, "monitor login changed; reconnecting");
            conn = None;
        }
        let round = Instant::now();
        let wait = match check(&view, id, conn.take(), &login, timing).await {
            Ok(open) => {
                conn = Some(open);
                backoff = Duration::ZERO;
                timing.interval.saturating_sub(round.elapsed())
            }
            Err(e) => {
                view.record_failure(id, e.report());
                backoff = next_backoff(backoff, timing.interval);
                backoff
            }
        };
        write_pending_record(&view).await;
        // The primary's task samples sooner when someone waits for a
        // sample taken after now (`ClusterView::lsn_after_soon`).
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = view.sample_wanted.notified(), if view.primary() == Some(id) => {}
        }
    }
}

/// Writes the state file when a new primary waits to be recorded (once
/// per round at most per failure, so a file that cannot be written is
/// retried every check interval).
async fn write_pending_record(view: &ClusterView) {
    while let Some((path, record)) = view.take_pending_record() {
        let (file, written) = (path.clone(), record.clone());
        let result = tokio::task::spawn_blocking(move || super::record::store(&file, &written))
            .await
            .unwrap_or_else(|e| {
                Err(StateFileError::Write {
                    path,
                    error: std::io::Error::other(e.to_string()),
                })
            });
        let failed = result.is_err();
        view.record_written(record, result);
        if failed {
            return;
        }
    }
}

/// One round: (re)connect if needed, run the check, record it. Returns the
/// connection for the next round; on error it is dropped (closed).
async fn check(
    view: &ClusterView,
    id: NodeId,
    conn: Option<NodeConn>,
    login: &MonitorLogin,
    timing: Timing,
) -> Result<NodeConn, CheckError> {
    let mut conn = match conn {
        Some(conn) => conn,
        None => {
            let addr = view.addr(id);
            NodeConn::open(addr, login, timing.connect_timeout, timing.check_timeout).await?
        }
    };
    // Taken before the query is sent: a sample never claims to be later
    // than it was, which read-your-writes floors depend on.
    let sent = Instant::now();
    let probe = conn.probe(timing.check_timeout).await?;
    view.record_success(id, sent, Instant::now(), probe);
    Ok(conn)
}

/// Waits between failed attempts: one interval, doubling, at most
/// [`MAX_RECONNECT_BACKOFF`].
fn next_backoff(previous: Duration, interval: Duration) -> Duration {
    let next = if previous.is_zero() {
        interval
    } else {
        previous.saturating_mul(2)
    };
    next.min(MAX_RECONNECT_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_the_interval_and_caps_at_a_second() {
        let interval = Duration::from_millis(100);
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..6 {
            b = next_backoff(b, interval);
            seen.push(b.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            next_backoff(Duration::ZERO, Duration::from_secs(5)),
            MAX_RECONNECT_BACKOFF
        );
    }

    #[test]
    fn check_timeout_is_a_second_or_two_intervals() {
        let text = "[cluster]\nprimary = \"h:1\"\n";
        let path = std::path::Path::new("t.toml");
        let config = Config::from_toml(text, path).unwrap();
        let t = Timing::from_config(&config);
        assert_eq!(t.check_timeout, Duration::from_secs(1));
        assert_eq!(t.stale_after(), Duration::from_millis(2200));
        let slow = format!("{text}[routing]\nlag_check_interval = \"2s\"\n");
        let t = Timing::from_config(&Config::from_toml(&slow, path).unwrap());
        assert_eq!(t.check_timeout, Duration::from_secs(4));
    }
}
