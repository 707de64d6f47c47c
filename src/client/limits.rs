//! The per-client time limits of `[proxy]`: `client_idle_timeout`,
//! `idle_transaction_timeout` and `query_timeout`, the timers the relay
//! runs for them while a server is held, and the errors a client gets.
//!
//! A limit is read from the running config at the start of each stretch
//! of work, so a reload applies to the next transaction.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

use super::registry::{ClientSlot, ServerLink};
use crate::config::ProxyConfig;
use crate::protocol::{SqlState, WireError};
use crate::server::send_cancel;
use std::sync::Arc;

/// Time a server gets to answer a cancel sent for `query_timeout` before
/// the proxy gives up on it (a node that stopped answering).
const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// The limits in force (None = off).
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub client_idle: Option<Duration>,
    pub idle_transaction: Option<Duration>,
    pub query: Option<Duration>,
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Limits {
    pub fn from_config(proxy: &ProxyConfig) -> Self {
        Limits {
            client_idle: nonzero(proxy.client_idle_timeout),
            idle_transaction: nonzero(proxy.idle_transaction_timeout),
            query: nonzero(proxy.query_timeout),
        }
    }

    /// Whether any limit is set.
    #[inline]
    pub fn any(&self) -> bool {
        self.client_idle.is_some() || self.idle_transaction.is_some() || self.query.is_some()
    }

    /// How long a client without outstanding requests may stay silent;
    /// `in_transaction` picks the limit. Inlined: asked once per request,
    /// and most clients have no limit.
    #[inline]
    pub fn idle(&self, in_transaction: bool) -> Option<IdleLimit> {
        let limit = if in_transaction {
            self.idle_transaction?
        } else {
            self.client_idle?
        };
        Some(IdleLimit {
            limit,
            in_transaction,
        })
    }
}

/// An idle limit in force, and which one: its error is written only when
/// it goes off. (It was written each time the limit was looked up, once
/// per request and on every wake-up of a quiet relay: a formatted
/// message, allocated and dropped unused, for every client with a limit.)
#[derive(Clone, Copy, Debug)]
pub struct IdleLimit {
    pub limit: Duration,
    in_transaction: bool,
}

impl IdleLimit {
    /// The error the client gets when the limit passes.
    pub fn error(self) -> WireError {
        if self.in_transaction {
            idle_in_transaction_error(self.limit)
        } else {
            idle_session_error(self.limit)
        }
    }
}

fn idle_session_error(limit: Duration) -> WireError {
    WireError::fatal(
        SqlState::IDLE_SESSION_TIMEOUT,
        format!(
            "terminating connection: idle for longer than proxy.client_idle_timeout ({})",
            humantime::format_duration(limit)
        ),
    )
}

fn idle_in_transaction_error(limit: Duration) -> WireError {
    WireError::fatal(
        SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
        format!(
            "terminating connection: idle in a transaction for longer than proxy.idle_transaction_timeout ({})",
            humantime::format_duration(limit)
        ),
    )
    .with_detail("the transaction was rolled back")
}

/// What the server's own 57014 is replaced with after a query_timeout.
pub fn query_timeout_error(limit: Duration) -> WireError {
    WireError::error(
        SqlState::QUERY_CANCELED,
        format!(
            "canceling statement due to proxy.query_timeout ({})",
            humantime::format_duration(limit)
        ),
    )
}

/// The server did not even answer the cancel: the connection is given up.
pub fn query_unanswered_error(limit: Duration) -> WireError {
    WireError::fatal(
        SqlState::QUERY_CANCELED,
        format!(
            "canceling statement due to proxy.query_timeout ({}); the server did not respond to the cancel request",
            humantime::format_duration(limit)
        ),
    )
    .with_detail("the server connection was closed; the transaction, if any, was not committed")
}

/// A relay timer that went off.
pub enum Fired {
    /// The client was silent too long with nothing outstanding.
    Idle(WireError),
    /// `query_timeout` passed: a cancel was sent to the server.
    QueryCancelled(Duration),
    /// The server did not answer within the grace period after the cancel.
    QueryUnanswered(Duration),
}

/// The timers of one relay.
///
/// Why the timers are boxed apart, made only once one is armed: a relay is
/// made and dropped per transaction, and the two timers and the flag made
/// it 16 bytes larger in every client's task (which the client's limits,
/// now kept from one request to the next, need); a relay that arms no timer
/// (no limit, or one that never had to wait) allocates nothing.
pub struct RelayTimers {
    limits: Limits,
    /// Where query_timeout's cancel goes, and the slot that counts it in
    /// flight (the server is not given up before it has arrived).
    cancel: Option<(Arc<ServerLink>, Arc<ClientSlot>)>,
    armed: Option<Box<Armed>>,
}

/// The timers a relay armed.
#[derive(Default)]
struct Armed {
    idle: Option<Pin<Box<Sleep>>>,
    query: Option<Pin<Box<Sleep>>>,
    cancelled: bool,
}

impl RelayTimers {
    #[inline]
    pub fn new(limits: Limits, cancel: Option<(Arc<ServerLink>, Arc<ClientSlot>)>) -> Self {
        RelayTimers {
            limits,
            cancel,
            armed: None,
        }
    }

    /// The client sent something: its idle time starts over.
    #[inline]
    pub fn client_activity(&mut self) {
        if let Some(armed) = &mut self.armed {
            armed.idle = None;
        }
    }

    /// Checks the timers, registering `cx` for the next one to go off.
    /// `quiet` is the transaction status when nothing is outstanding on
    /// the server, `None` while requests are in flight.
    ///
    /// Inlined up to its first test: a relay asks once a transaction, and
    /// for a client without limits the call cost ~30 instructions to
    /// find nothing to do.
    #[inline]
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        quiet: Option<super::tx_status::TxStatus>,
    ) -> Option<Fired> {
        // Without a limit (most clients) no timer is ever armed.
        if !self.limits.any() {
            return None;
        }
        self.poll_limits(cx, quiet)
    }

    #[inline(never)]
    fn poll_limits(
        &mut self,
        cx: &mut Context<'_>,
        quiet: Option<super::tx_status::TxStatus>,
    ) -> Option<Fired> {
        match quiet {
            Some(status) => {
                if let Some(armed) = &mut self.armed {
                    armed.query = None;
                    armed.cancelled = false;
                }
                let Some(idle) = self.limits.idle(status.in_transaction()) else {
                    if let Some(armed) = &mut self.armed {
                        armed.idle = None;
                    }
                    return None;
                };
                let armed = self.armed.get_or_insert_with(Box::default);
                let sleep = armed
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle.limit)));
                sleep
                    .as_mut()
                    .poll(cx)
                    .is_ready()
                    .then(|| Fired::Idle(idle.error()))
            }
            None => {
                if let Some(armed) = &mut self.armed {
                    armed.idle = None;
                }
                let limit = self.limits.query?;
                let armed = self.armed.get_or_insert_with(Box::default);
                let sleep = armed
                    .query
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return None;
                }
                if armed.cancelled {
                    return Some(Fired::QueryUnanswered(limit));
                }
                armed.cancelled = true;
                if let Some((link, slot)) = &self.cancel {
                    let (link, in_flight) = (link.clone(), slot.begin_cancel());
                    tokio::spawn(async move {
                        let _in_flight = in_flight;
                        if let Err(error) = send_cancel(&link.cancel).await {
                            tracing::warn!(%error, "query_timeout: cancel request failed");
                        }
                    });
                }
                let mut grace = Box::pin(tokio::time::sleep(CANCEL_GRACE));
                let _ = grace.as_mut().poll(cx);
                armed.query = Some(grace);
                Some(Fired::QueryCancelled(limit))
            }
        }
    }
}
