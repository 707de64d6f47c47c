//! Why a monitor check of a node failed. Any failure bans the node from
//! routing at once; the rendered error becomes its `last_error`.

use std::error::Error as _;
use std::time::Duration;

use crate::config::NodeAddr;

/// A failed check of one node, naming the node and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot connect to {addr} as monitor user `{user}`")]
    Connect {
        addr: NodeAddr,
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("connecting to {addr} timed out after {}", humantime::format_duration(*.after))]
    ConnectTimeout { addr: NodeAddr, after: Duration },
    #[error("monitor query on {addr} failed")]
    Query {
        addr: NodeAddr,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("monitor query on {addr} got no answer within {}", humantime::format_duration(*.after))]
    QueryTimeout { addr: NodeAddr, after: Duration },
    #[error("the server closed the monitor connection to {addr}")]
    Closed { addr: NodeAddr },
    #[error("{addr} gave an answer the monitor cannot use: {what}")]
    BadAnswer { addr: NodeAddr, what: String },
}

impl CheckError {
    /// The error with its whole cause chain on one line (tokio-postgres
    /// keeps the server's message in the source, not in `Display`).
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_node_and_the_step() {
        let addr: NodeAddr = "db1:5432".parse().unwrap();
        let err = CheckError::QueryTimeout {
            addr: addr.clone(),
            after: Duration::from_secs(1),
        };
        assert_eq!(
            err.report(),
            "monitor query on db1:5432 got no answer within 1s"
        );
        let err = CheckError::BadAnswer {
            addr,
            what: "no row".into(),
        };
        assert!(err.report().contains("db1:5432"), "{}", err.report());
    }
}
