//! Reading a config file: TOML parsing with line-accurate errors,
//! environment overrides (see `env`), password sources (`password`,
//! `password_env`, `password_file`) and the cross-field checks serde cannot
//! express.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::env::{self, EnvError, Environment};
use super::locate::Location;
use super::redact;
use super::schema::Config;
use super::sources::Sources;
use super::types::{ClientAuth, Secret};

/// More session threads than this is a typo, not a tuning choice.
const MAX_WORKER_THREADS: u32 = 1024;
/// Longest Unix socket path Linux binds: `sun_path` is 108 bytes with the
/// terminating NUL.
const MAX_UNIX_SOCKET_PATH: usize = 107;

/// Why a config file was refused. Every variant names the file and the key
/// (or line) so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}{}", At(.path, Some(.location)), Excerpt(Some(.location)))]
    Parse {
        path: PathBuf,
        location: Location,
        message: String,
    },
    /// A value the checks after parsing refused (or a file it names that
    /// cannot be used); `location` is where the file sets `key`, if it does.
    #[error(
        "{}: invalid `{key}`: {message}{}",
        At(.path, .location.as_ref()),
        Excerpt(.location.as_ref())
    )]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
        location: Option<Location>,
    },
    /// Neither the file nor `PGSIDECAR_CLUSTER_PRIMARY` names the primary,
    /// the one key without a default.
    #[error(
        "{}: `[cluster] primary` is required (the primary's host:port, or \
         PGSIDECAR_CLUSTER_PRIMARY in the environment), e.g.\n    \
         [cluster]\n    primary = \"127.0.0.1:5432\"",
        At(.path, .location.as_ref())
    )]
    MissingPrimary {
        path: PathBuf,
        /// The file's `[cluster]` table, when it has one.
        location: Option<Location>,
    },
    #[error(transparent)]
    Env(#[from] EnvError),
}

impl ConfigError {
    /// A problem with the value of `key` found after loading (a certificate
    /// file that cannot be read): names the file, and the key's line if the
    /// file sets it.
    pub fn invalid_key(path: &Path, key: &str, message: impl Into<String>) -> ConfigError {
        let location = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| Location::of_key(&text, key));
        ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
            location,
        }
    }
}

/// `path`, or `path:line:column` when the place is known.
struct At<'a>(&'a Path, Option<&'a Location>);

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(l) => write!(f, "{}:{}:{}", self.0.display(), l.line, l.column),
            None => write!(f, "{}", self.0.display()),
        }
    }
}

/// The offending line under the message, when the place is known.
struct Excerpt<'a>(Option<&'a Location>);

impl std::fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(l) if !l.line_text.trim().is_empty() => write!(f, "\n    {}", l.line_text),
            _ => Ok(()),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file, with the process's
    /// `PGSIDECAR_<SECTION>_<KEY>` overrides applied.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Ok(Config::load_with_sources(path)?.0)
    }

    /// [`load`](Self::load), also telling where each value came from.
    pub fn load_with_sources(path: &Path) -> Result<(Config, Sources), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_with_env(&text, path, &Environment::from_process()?)
    }

    /// Parses and validates config text, without environment overrides;
    /// `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Ok(Config::from_toml_with_env(text, path, &Environment::default())?.0)
    }

    /// Parses config text, applies the overrides in `env`, then validates.
    /// Errors in the file keep their line; errors in a variable name it.
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: &Environment,
    ) -> Result<(Config, Sources), ConfigError> {
        let parse_error = |e: toml::de::Error| {
            let offset = e.span().map_or(0, |s| s.start);
            ConfigError::Parse {
                path: path.to_path_buf(),
                location: Location::of_offset(text, offset),
                // Without serde's quotation of a secret line's value.
                message: redact::message(text, offset, e.message().trim()),
            }
        };
        let file: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let mut merged = file.clone();
        let applied = env::apply(&mut merged, env)?;
        // serde would say "missing field `cluster`": say which key is
        // missing and what it wants instead.
        let missing_primary = |e: &toml::de::Error| {
            (e.message().starts_with("missing field") && !has_primary(&merged)).then(|| {
                ConfigError::MissingPrimary {
                    path: path.to_path_buf(),
                    location: Location::of_key(text, "cluster"),
                }
            })
        };
        let mut config: Config = if applied.is_empty() {
            // Straight from the text, so every error carries its line.
            toml::from_str(text)
                .map_err(|e| missing_primary(&e).unwrap_or_else(|| parse_error(e)))?
        } else {
            merged.clone().try_into().map_err(|e: toml::de::Error| {
                if let Some(missing) = missing_primary(&e) {
                    return missing;
                }
                // The file's own mistakes still get their line; what is
                // left is how the overrides combine with it.
                match toml::from_str::<Config>(text) {
                    Err(file_error) if file_error.span().is_some() => parse_error(file_error),
                    _ => ConfigError::Env(EnvError::Combined {
                        vars: applied
                            .iter()
                            .map(|a| a.var.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        message: e.message().trim().to_string(),
                    }),
                }
            })?
        };
        let sources = Sources::new(file, applied);
        config
            .resolve_and_validate()
            .map_err(|(key, mut message)| {
                // A value from the environment is not on any line of the file.
                let location = match sources.var_for(&key) {
                    Some(var) => {
                        message.push_str(&format!(" (set by environment variable {var})"));
                        None
                    }
                    None => Location::of_key(text, &key),
                };
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key,
                    message,
                    location,
                }
            })?;
        Ok((config, sources))
    }

    /// Resolves password sources and checks rules that span fields.
    /// Errors are `(key, message)`.
    fn resolve_and_validate(&mut self) -> Result<(), (String, String)> {
        let mut names = HashSet::new();
        for (i, user) in self.users.iter_mut().enumerate() {
            let key = |k: &str| format!("users[{i}].{k}");
            if user.name.is_empty() {
                return Err((key("name"), "must not be empty".into()));
            }
            if !names.insert(user.name.clone()) {
                return Err((key("name"), format!("user `{}` is listed twice", user.name)));
            }
            let sources = [
                user.password.is_some(),
                user.password_env.is_some(),
                user.password_file.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                return Err((
                    key("password"),
                    "give only one of password, password_env, password_file".into(),
                ));
            }
            if let Some(var) = &user.password_env {
                let value = std::env::var(var).map_err(|_| {
                    (
                        key("password_env"),
                        format!("environment variable `{var}` is not set"),
                    )
                })?;
                user.password = Some(Secret::new(value));
            }
            if let Some(file) = &user.password_file {
                let value = std::fs::read_to_string(file).map_err(|e| {
                    (
                        key("password_file"),
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                user.password = Some(Secret::new(value.trim_end_matches(['\r', '\n'])));
            }
            if user.password.is_none() && self.auth.client_auth != ClientAuth::Trust {
                return Err((
                    key("password"),
                    format!(
                        "user `{}` needs a password (client_auth is {})",
                        user.name, self.auth.client_auth
                    ),
                ));
            }
        }
        for (i, admin) in self.admin.users.iter().enumerate() {
            if !names.contains(admin) {
                return Err((
                    format!("admin.users[{i}]"),
                    format!("`{admin}` is not defined in [[users]]"),
                ));
            }
        }
        self.cluster.validate_monitor(&self.users)?;
        if let Some(fleet) = &self.fleet {
            fleet.validate()?;
        }
        for (i, replica) in self.cluster.replicas.iter().enumerate() {
            if *replica == self.cluster.primary {
                return Err((
                    format!("cluster.replicas[{i}]"),
                    format!("{replica} is also the primary"),
                ));
            }
            if self.cluster.replicas[..i].contains(replica) {
                return Err((
                    format!("cluster.replicas[{i}]"),
                    format!("{replica} is listed twice"),
                ));
            }
        }
        let positive = [
            ("proxy.max_client_conn", self.proxy.max_client_conn as u64),
            ("http.max_connections", self.http.max_connections as u64),
            (
                "http.header_timeout",
                self.http.header_timeout.as_millis() as u64,
            ),
            (
                "proxy.max_message_size",
                u64::from(self.proxy.max_message_size >= 1024),
            ),
            ("pool.db_cores", self.pool.db_cores as u64),
            (
                "pool.replica_db_cores",
                self.pool.replica_db_cores.map_or(1, u64::from),
            ),
            (
                "pool.prepared_statements_cache",
                self.pool.prepared_statements_cache as u64,
            ),
            ("pool.sidecars", self.pool.sidecars as u64),
            (
                "pool.checkout_timeout",
                self.pool.checkout_timeout.as_millis() as u64,
            ),
            (
                "cluster.connect_timeout",
                self.cluster.connect_timeout.as_millis() as u64,
            ),
            (
                "routing.lag_check_interval",
                self.routing.lag_check_interval.as_millis() as u64,
            ),
            (
                "observability.max_fingerprints",
                self.observability.max_fingerprints as u64,
            ),
            (
                "observability.explain_timeout",
                self.observability.explain_timeout.as_millis() as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                let what = if key == "proxy.max_message_size" {
                    "must be at least 1024 bytes"
                } else {
                    "must be greater than zero"
                };
                return Err((key.to_string(), what.into()));
            }
        }
        if self.proxy.worker_threads > MAX_WORKER_THREADS {
            return Err((
                "proxy.worker_threads".into(),
                format!(
                    "must be at most {MAX_WORKER_THREADS} (0 means one per core), got {}",
                    self.proxy.worker_threads
                ),
            ));
        }
        self.validate_tls()?;
        self.validate_listeners()?;
        let memory = self.proxy.max_message_memory;
        if memory < 2 * 1024 * 1024 {
            return Err((
                "proxy.max_message_memory".into(),
                format!("must be at least 2097152 bytes (2 MiB), got {memory}"),
            ));
        }
        let text = self.observability.max_query_text;
        let most = crate::observe::MAX_QUERY_TEXT_CAP as u32;
        if !(64..=most).contains(&text) {
            return Err((
                "observability.max_query_text".into(),
                format!("must be from 64 to {most} bytes, got {text}"),
            ));
        }
        let memory = self.observability.max_query_memory;
        if memory < 1024 * 1024 {
            return Err((
                "observability.max_query_memory".into(),
                format!("must be at least 1048576 bytes (1 MiB), got {memory}"),
            ));
        }
        let rate = self.observability.explain_sample_rate;
        if !(0.0..=1.0).contains(&rate) {
            return Err((
                "observability.explain_sample_rate".into(),
                format!("must be between 0.0 and 1.0, got {rate}"),
            ));
        }
        if let Some(usage) = self.budgets.pool_usage
            && !(usage > 0.0 && usage <= 1.0)
        {
            return Err((
                "budgets.pool_usage".into(),
                format!("must be above 0.0 and at most 1.0, got {usage}"),
            ));
        }
        let window = self.budgets.window;
        if window < std::time::Duration::from_secs(1) || window.subsec_nanos() != 0 {
            return Err((
                "budgets.window".into(),
                format!(
                    "must be whole seconds, at least 1s, got {}",
                    humantime::format_duration(window)
                ),
            ));
        }
        if self.budgets.p95_query_time == Some(std::time::Duration::ZERO) {
            return Err((
                "budgets.p95_query_time".into(),
                "must be greater than zero".into(),
            ));
        }
        Ok(())
    }

    /// The TCP address and the Unix socket: at least one, and a socket
    /// path libpq can use and the kernel can bind.
    fn validate_listeners(&mut self) -> Result<(), (String, String)> {
        let proxy = &mut self.proxy;
        if proxy
            .unix_socket_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            proxy.unix_socket_dir = None;
        }
        if proxy.unix_socket_port == Some(0) {
            return Err((
                "proxy.unix_socket_port".into(),
                "must be between 1 and 65535".into(),
            ));
        }
        let Some(dir) = &proxy.unix_socket_dir else {
            if proxy.listen.is_none() {
                return Err((
                    "proxy.listen".into(),
                    "is \"\" (no TCP listener) and proxy.unix_socket_dir is not set: \
                     no client could connect"
                        .into(),
                ));
            }
            return Ok(());
        };
        if !dir.is_absolute() {
            return Err((
                "proxy.unix_socket_dir".into(),
                format!(
                    "`{}` must be an absolute path (libpq takes a host starting with / \
                     as a socket directory)",
                    dir.display()
                ),
            ));
        }
        let tcp_port = proxy.listen.map(|a| a.port()).filter(|p| *p != 0);
        if proxy.unix_socket_port.is_none() && proxy.listen.is_none() {
            return Err((
                "proxy.unix_socket_port".into(),
                "is needed when listen = \"\": the socket is named .s.PGSQL.<port>, \
                 and there is no TCP port to take it from"
                    .into(),
            ));
        }
        // Port 0 binds a free port: allow for the longest one.
        let path = proxy
            .unix_socket_path(tcp_port.or(Some(65535)))
            .unwrap_or_default();
        let len = path.as_os_str().len();
        if len > MAX_UNIX_SOCKET_PATH {
            return Err((
                "proxy.unix_socket_dir".into(),
                format!(
                    "the socket path {} would be {len} bytes; Unix socket paths hold at \
                     most {MAX_UNIX_SOCKET_PATH}: choose a shorter directory",
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    /// TLS keys that only make sense together.
    fn validate_tls(&self) -> Result<(), (String, String)> {
        use super::types::{ClientTlsMode, ServerTlsMode};
        let proxy = &self.proxy;
        let mode = proxy.tls_mode();
        if mode != ClientTlsMode::Disable {
            for (key, value) in [("tls_cert", &proxy.tls_cert), ("tls_key", &proxy.tls_key)] {
                if value.is_none() {
                    return Err((
                        format!("proxy.{key}"),
                        format!("tls_mode = \"{mode}\" needs tls_cert and tls_key"),
                    ));
                }
            }
        }
        if proxy.tls_cert.is_some() != proxy.tls_key.is_some() {
            let missing = if proxy.tls_cert.is_none() {
                "proxy.tls_cert"
            } else {
                "proxy.tls_key"
            };
            return Err((
                missing.into(),
                "tls_cert and tls_key go together: set both or neither".into(),
            ));
        }
        if self.cluster.server_tls == ServerTlsMode::VerifyFull
            && self.cluster.server_tls_ca_file.is_none()
        {
            return Err((
                "cluster.server_tls_ca_file".into(),
                "server_tls = \"verify-full\" needs the CA certificate file to verify against"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `[pool] budget` on `node`: a node of `[cluster] replicas` gets the
    /// replicas' budget (`replica_db_cores`), any other the primary's. By
    /// the configured list, not the node's current role: the cores belong
    /// to the machine, which a promotion does not change.
    pub fn node_budget(&self, node: &super::NodeAddr) -> u32 {
        if self.cluster.replicas.contains(node) {
            self.pool.replica_budget()
        } else {
            self.pool.primary_budget()
        }
    }

    /// Largest size of one (database, user) pool on `node`: with a fleet,
    /// the member may use its whole share of that node, so the node's own
    /// budget (capped by a fixed `size`); alone, the pool size.
    pub fn pool_max_on(&self, node: &super::NodeAddr, fleet: bool) -> u32 {
        match (fleet, self.pool.size) {
            (false, _) => self.pool.effective_size(),
            (true, super::PoolSize::Fixed(n)) => n.clamp(1, self.node_budget(node)),
            (true, super::PoolSize::Auto) => self.node_budget(node),
        }
    }

    /// Looks a user up by name.
    pub fn user(&self, name: &str) -> Option<&super::schema::UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// The (merged) table names the primary.
fn has_primary(table: &toml::Table) -> bool {
    table
        .get("cluster")
        .and_then(toml::Value::as_table)
        .is_some_and(|cluster| cluster.contains_key("primary"))
}
