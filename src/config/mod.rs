//! Configuration: the TOML schema, loading with precise errors, the pool-size
//! formula, and the shared handle through which running code reads the
//! current config (swapped atomically on reload).

mod env;
mod load;
mod locate;
mod redact;
mod schema;
mod sources;
mod types;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use env::{EnvError, Environment};
pub use load::ConfigError;
pub use locate::Location;
pub use schema::{
    AdminConfig, AuthConfig, BudgetsConfig, ClusterConfig, Config, DEFAULT_STATE_FILE, FleetConfig,
    HttpConfig, ObservabilityConfig, PoolConfig, ProxyConfig, RoutingConfig, StateFile, UserConfig,
};
pub use sources::{Source, Sources};
pub use types::{
    Budget, ClientAuth, ClientTlsMode, ExplainMode, FileMode, LogFormat, NodeAddr, PoolMode,
    PoolSize, ReadYourWrites, Secret, ServerTlsMode,
};

/// The running config. Readers call `load()` once per unit of work (a
/// transaction, a connection) and keep that snapshot; reload swaps it.
pub type ConfigHandle = Arc<ArcSwap<Config>>;

/// Wraps a loaded config in a handle.
pub fn handle(config: Config) -> ConfigHandle {
    Arc::new(ArcSwap::from_pointee(config))
}

#[cfg(test)]
mod env_tests;
#[cfg(test)]
mod tests;
