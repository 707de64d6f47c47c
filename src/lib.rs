//! pgsidecar: a Postgres connection proxy that runs next to each application
//! server, pools backend connections, routes reads to fresh replicas and
//! shows what it does.
//!
//! # Layout
//! - [`config`]: TOML schema, loading, validation, reloadable handle.
//! - [`protocol`]: wire framing, startup negotiation, auth exchanges, errors.
//! - [`server`]: backend connections and their pools.
//! - [`tls`]: rustls acceptor and connector, plain-or-TLS streams.
//! - [`client`]: listener and the per-client session.
//! - [`routing`]: statement classification and routing policy.
//! - [`cluster`]: node roles, health, replication lag.
//! - [`fleet`]: sidecars sharing one connection budget per node.
//! - [`observe`]: metrics, slow-query log, plans, query digests, HTTP.
//! - [`admin`]: the `pgsidecar` admin console.
//! - [`logsafe`]: outside text escaped and capped for log lines.
//! - [`demo`]: a throwaway local primary + replica (used by `demo` and tests).
//! - [`proxy`]: wires the parts together and runs them.
//! - [`sync`]: taking a lock whose holder panicked.

pub mod admin;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod logsafe;
pub mod observe;
pub mod protocol;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod sync;
pub mod tls;
