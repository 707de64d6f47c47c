//! When the demo stops: Ctrl-C (SIGINT), SIGTERM, or the end of
//! `--duration`.
//!
//! The handlers are installed before the cluster starts. Without them a
//! SIGINT kills the process outright — no destructor, no `atexit` — and the
//! servers would outlive it until the next cluster start swept them up.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

/// Why the demo is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    Signal(&'static str),
    TimeUp,
}

/// Waits for a stop request. Must be created inside the runtime.
pub(super) struct Stop {
    interrupt: Signal,
    terminate: Signal,
    deadline: Option<Instant>,
}

impl Stop {
    /// Installs the SIGINT and SIGTERM handlers; no deadline yet.
    pub(super) fn install() -> std::io::Result<Stop> {
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            deadline: None,
        })
    }

    /// Stops `after` from now, as well as on a signal.
    pub(super) fn stop_after(&mut self, after: Duration) {
        self.deadline = Some(Instant::now() + after);
    }

    /// Resolves at the first signal or at the deadline.
    pub(super) async fn wait(&mut self) -> Why {
        let deadline = self.deadline;
        tokio::select! {
            _ = self.interrupt.recv() => Why::Signal("SIGINT"),
            _ = self.terminate.recv() => Why::Signal("SIGTERM"),
            _ = sleep_until(deadline) => Why::TimeUp,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
