//! Failures of server connections and checkouts, with what a client is told.

use std::time::Duration;

use bytes::Bytes;

use crate::protocol::{SqlState, WireError};

/// Opening or using a connection to a Postgres node failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {timeout:?} connecting to server {addr}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("server {addr} refused the login: {message} ({code})")]
    Rejected {
        addr: String,
        code: String,
        message: String,
        /// The server's ErrorResponse, forwarded to the client unchanged.
        frame: Bytes,
    },
    #[error(
        "server {addr} asked for authentication method {method}, which pgsidecar does not support"
    )]
    UnsupportedAuth { addr: String, method: String },
    #[error(
        "server {addr} asked user \"{user}\" for a password, but pgsidecar does not have {what} for it"
    )]
    NoPassword {
        addr: String,
        user: String,
        what: &'static str,
    },
    #[error("SCRAM authentication with server {addr} failed: {reason}")]
    Scram { addr: String, reason: String },
    #[error("protocol error from server {addr}: {what}")]
    Protocol { addr: String, what: String },
    #[error("I/O error with server {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server {addr} closed the connection")]
    Closed { addr: String },
    #[error(
        "no slot of the fleet's connection budget for server {addr} within {waited:?} \
         (this member holds {share} now)"
    )]
    NoBudget {
        addr: String,
        waited: Duration,
        share: u32,
    },
    #[error("TLS with server {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: crate::tls::NegotiateError,
    },
}

impl ServerError {
    /// What the client sees: the server's own error when it sent one (so an
    /// unknown database is the server's 3D000), otherwise 08006.
    pub fn to_client(&self) -> ClientReport {
        match self {
            ServerError::Rejected { frame, .. } => ClientReport::Forward(frame.clone()),
            ServerError::NoBudget { .. } => ClientReport::Error(WireError::fatal(
                SqlState::TOO_MANY_CONNECTIONS,
                self.to_string(),
            )),
            other => ClientReport::Error(WireError::fatal(
                SqlState::CONNECTION_FAILURE,
                other.to_string(),
            )),
        }
    }
}

/// How a server failure is reported to a client.
pub enum ClientReport {
    /// The server's own ErrorResponse frame.
    Forward(Bytes),
    Error(WireError),
}

/// No server connection could be handed to a client.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no server connection to {node} was free within {waited:?} (pool size {size})")]
    Timeout {
        node: String,
        waited: Duration,
        size: u32,
    },
    #[error(
        "no server connection to {node} was free within {waited:?}: this member's share \
         of the fleet's budget for the node is {share} connections, all in use"
    )]
    FleetBudget {
        node: String,
        waited: Duration,
        share: u32,
    },
    #[error("could not get a connection to server {node}: {last_error}")]
    Unreachable { node: String, last_error: String },
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl CheckoutError {
    pub fn to_wire(&self) -> WireError {
        match self {
            CheckoutError::Timeout { .. } => {
                WireError::error(SqlState::TOO_MANY_CONNECTIONS, self.to_string())
                    .with_hint("raise [pool] size or checkout_timeout, or shorten transactions")
            }
            CheckoutError::FleetBudget { .. } => {
                WireError::error(SqlState::TOO_MANY_CONNECTIONS, self.to_string()).with_hint(
                    "raise [pool] budget or checkout_timeout, shorten transactions, \
                     or see SHOW FLEET for the other members' shares",
                )
            }
            CheckoutError::Unreachable { .. } => {
                WireError::error(SqlState::CONNECTION_FAILURE, self.to_string())
            }
            CheckoutError::Server(e) => {
                WireError::error(SqlState::CONNECTION_FAILURE, e.to_string())
            }
        }
    }
}
