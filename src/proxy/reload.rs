//! Applying a new config to a running proxy (SIGHUP, the console's RELOAD)
//! without dropping connections: users and settings take effect at once,
//! pools are replaced when their settings or passwords change (sessions move
//! to the new pools at their next transaction; the old ones close as their
//! connections come back), and a changed node list gets a new cluster view
//! and monitor. An invalid file changes nothing.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::Shared;
use crate::client::credentials::Credentials;
use crate::cluster::ClusterView;
use crate::config::{Config, ConfigError};

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (the proxy was started without one)")]
    NoFile,
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl Shared {
    /// Re-reads the file `run` was started with and applies it. Returns
    /// a warning for each key the file changed that only a restart
    /// applies (those keep their running values).
    pub fn reload_from_file(&self) -> Result<Vec<String>, ReloadError> {
        let path = self.config_path.get().ok_or(ReloadError::NoFile)?;
        self.reload_from(path)
    }

    fn reload_from(&self, path: &Path) -> Result<Vec<String>, ReloadError> {
        let applied = Config::load(path)
            .map_err(ReloadError::from)
            .and_then(|config| self.apply(config))
            .map_err(|e| match e {
                // Named against the file and key that point at the file.
                ReloadError::Tls(tls) => {
                    ReloadError::Invalid(ConfigError::invalid_key(path, tls.key(), tls.problem()))
                }
                other => other,
            });
        match applied {
            Ok(kept) => {
                for warning in &kept {
                    tracing::warn!("{warning}");
                }
                tracing::info!(path = %path.display(), "config reloaded");
                Ok(kept)
            }
            Err(error) => {
                let shown = error.to_string();
                tracing::error!(
                    error = %crate::logsafe::message(&shown),
                    "config reload refused; the running config stays"
                );
                Err(error)
            }
        }
    }

    /// Applies a validated config, except the keys only a restart
    /// applies, which keep their running values; returns what it said
    /// about those. Certificate and CA files are read first: if one cannot
    /// be used, nothing changes.
    pub fn apply(&self, mut new: Config) -> Result<Vec<String>, ReloadError> {
        let client_tls = crate::tls::build_client_tls(&new.proxy)?;
        let server_tls = crate::tls::build_server_tls(&new.cluster)?;
        let kept = match self.start_only.get() {
            Some(start_only) => start_only.keep(&mut new),
            None => Vec::new(),
        };
        let old = self.config.load_full();
        // The view also holds the state file's record.
        let nodes_changed = new.cluster.primary != old.cluster.primary
            || new.cluster.replicas != old.cluster.replicas
            || new.cluster.state_file != old.cluster.state_file;
        let passwords_changed = new.users.len() != old.users.len()
            || new.users.iter().zip(&old.users).any(|(a, b)| {
                a.name != b.name
                    || a.password.as_ref().map(|p| p.expose())
                        != b.password.as_ref().map(|p| p.expose())
            });
        let pools_changed = !same_pool_settings(&new, &old) || passwords_changed;
        self.client_tls.store(std::sync::Arc::new(client_tls));
        self.message_memory.set_limit(new.proxy.max_message_memory);
        self.pools.set_server_tls(server_tls);
        self.credentials
            .store(std::sync::Arc::new(Credentials::build(&new)));
        if nodes_changed {
            self.cluster.store(ClusterView::new(&new));
        }
        self.config.store(std::sync::Arc::new(new));
        self.observer.config_changed();
        if nodes_changed {
            self.start_monitor();
        }
        if pools_changed || nodes_changed {
            self.pools.clear();
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(kept)
    }
}

/// Whether pools built from either config would be the same.
fn same_pool_settings(a: &Config, b: &Config) -> bool {
    let (p, q) = (&a.pool, &b.pool);
    p.effective_size() == q.effective_size()
        && p.primary_budget() == q.primary_budget()
        && p.replica_budget() == q.replica_budget()
        && p.checkout_timeout == q.checkout_timeout
        && p.idle_timeout == q.idle_timeout
        && p.max_lifetime == q.max_lifetime
        && p.prepared_statements_cache == q.prepared_statements_cache
        && a.cluster.connect_timeout == b.cluster.connect_timeout
        && a.cluster.server_tls == b.cluster.server_tls
        && a.cluster.server_tls_ca_file == b.cluster.server_tls_ca_file
}
