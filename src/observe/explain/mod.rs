//! The EXPLAIN sampler: slow (or sampled) queries are queued without
//! waiting, and one worker task explains them on connections of its own
//! to the node that ran them, keeping the plan for `/queries` and logging
//! a summary. Never EXPLAIN ANALYZE: nothing the sampler sends executes a
//! client's statement.
//!
//! # Which EXPLAIN
//! - No `$n` parameters (a simple query with literals, whose original
//!   text the caller passes for this only — it is never logged or kept):
//!   `EXPLAIN (FORMAT JSON) <text>`, the plan for those literals.
//! - Parameters, PostgreSQL 16+: `EXPLAIN (GENERIC_PLAN, FORMAT JSON)`.
//! - Parameters, older servers: `PREPARE` + `EXPLAIN (FORMAT JSON)
//!   EXECUTE` with the captured parameter values as literals, then
//!   `DEALLOCATE`. Without captured values, `SET LOCAL plan_cache_mode =
//!   force_generic_plan` and `EXECUTE` with NULLs: the generic plan, which
//!   does not depend on the values, so the NULLs do not distort it.
//!
//! The plan kept for `/queries` has its literal values replaced by `?`
//! (see `scrub`), like the normalised text.
//!
//! Each runs inside `BEGIN` (`BEGIN READ ONLY` for reads) … `ROLLBACK`
//! with `SET LOCAL statement_timeout = observability.explain_timeout`.
//! The client's text only ever travels in the extended protocol, which
//! refuses more than one statement, and the sampler also skips text in
//! which its own lexer finds a second statement.

mod conn;
mod run;
mod scrub;
mod statement;
mod summary;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

pub(crate) use conn::{Conns, Target};
pub(crate) use run::Explained;
pub(crate) use run::explain;
pub(crate) use scrub::scrub_plan;
pub use summary::{PlanError, PlanSummary, SeqScan};

/// Requests waiting at most; more are dropped (and counted).
pub(crate) const QUEUE_CAPACITY: usize = 64;

/// One plan to take.
#[derive(Debug)]
pub(crate) struct ExplainRequest {
    pub(crate) fingerprint: u64,
    pub(crate) normalized: Arc<str>,
    /// The statement as the client sent it (literals included).
    pub(crate) sql: String,
    /// Captured parameter values (text format), if the caller had them.
    pub(crate) params: Option<Vec<Option<String>>>,
    pub(crate) is_write: bool,
    pub(crate) target: Target,
}

/// Why a plan was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no usable login for `{user}`: its password (and the monitor user's) is a stored hash")]
    NoLogin { user: String },
    #[error("cannot connect to {node} as {user}: {source}")]
    Connect {
        node: String,
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("no answer within {after:?}")]
    Timeout { after: Duration },
    #[error("the server did not report server_version_num")]
    NoVersion,
    #[error("the statement text holds more than one statement")]
    MultipleStatements,
    #[error("EXPLAIN returned no plan")]
    NoPlan,
    #[error("the connection closed")]
    Closed,
    /// The server refused; the message has quoted values and numbers
    /// replaced by `?` (it may quote a literal of the statement).
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    #[error("{0}")]
    Client(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl From<tokio_postgres::Error> for ExplainError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => ExplainError::Server {
                code: db.code().code().to_string(),
                message: scrub::scrub_message(db.message()),
            },
            None => ExplainError::Client(e),
        }
    }
}

/// The queue between the query path and the worker.
pub(crate) struct Queue {
    tx: mpsc::Sender<ExplainRequest>,
    rx: Mutex<Option<mpsc::Receiver<ExplainRequest>>>,
}

impl Queue {
    pub(crate) fn new() -> Queue {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        Queue {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Queues without waiting; false if the queue is full.
    pub(crate) fn offer(&self, request: ExplainRequest) -> bool {
        self.tx.try_send(request).is_ok()
    }

    /// The receiving end, for the one worker (`None` after the first call).
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<ExplainRequest>> {
        crate::sync::lock(&self.rx).take()
    }
}
