//! A throwaway local PostgreSQL primary with streaming replicas, used by the
//! integration tests and by `pgsidecar demo` (the command itself is in
//! [`command`]).

mod binaries;
pub mod cluster;
pub mod command;
mod error;
mod lifecycle;
mod node;
mod options;
mod poll;
mod runner;

pub use binaries::PgBinaries;
pub use cluster::LocalCluster;
pub use error::{ClusterError, Lookup, Result};
pub use node::Node;
pub use options::{AuthMethod, ClusterOptions, ReplicaOptions, RoleSpec, SUPERUSER};
