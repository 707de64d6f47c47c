//! Why `pgsidecar demo` could not run, each variant saying what to do.

use std::io;

use crate::config::ConfigError;
use crate::demo::ClusterError;
use crate::proxy::StartError;

/// A failure of the demo command. The cluster's own errors (binaries not
/// found, a server that did not start) keep their wording: they already
/// name the places looked in and how to install PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot install the Ctrl-C / SIGTERM handlers: {0}")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the cluster setup task died: {0}")]
    Setup(#[from] tokio::task::JoinError),
    #[error("the demo's own config was refused (a bug in the demo): {0}")]
    Config(#[from] ConfigError),
    #[error("{source} (choose another port with --port, or --port 0 for any free one)")]
    Proxy {
        #[source]
        source: StartError,
    },
    #[error("cannot find a free port for the HTTP endpoints on 127.0.0.1: {0}")]
    HttpPort(#[source] io::Error),
}
