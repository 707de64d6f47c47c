//! The TOML schema: one struct per section, every field with its default.
//! Field names are the config keys users rely on: each one is documented,
//! with its default, in `conf/pgsidecar.toml` (see docs/architecture.md,
//! "How to add a config key").

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::types::{
    Budget, ClientAuth, ClientTlsMode, ExplainMode, FileMode, LogFormat, NodeAddr, PoolMode,
    PoolSize, ReadYourWrites, Secret, ServerTlsMode,
};

/// The whole file. Sections other than `[cluster]` may be omitted.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub http: HttpConfig,
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub observability: ObservabilityConfig,
    #[serde(default)]
    pub budgets: BudgetsConfig,
    /// Absent: this instance acts alone (`[pool] size` / `sidecars`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// The TCP address clients connect to; `None` (`listen = ""`): no TCP
    /// listener, clients use the Unix socket only.
    #[serde(with = "super::types::optional_listen")]
    pub listen: Option<SocketAddr>,
    /// Directory of the Unix-domain socket `.s.PGSQL.<port>`, the file
    /// libpq looks for with `host=<dir>`. `None` (or `""`): no Unix socket.
    /// Read at start only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_dir: Option<PathBuf>,
    /// The `<port>` in the socket's name; default: the port of `listen`
    /// (the bound one when that is 0). Needed when `listen = ""`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_port: Option<u16>,
    /// Permission bits of the socket file. 0777 by default, as Postgres
    /// and PgBouncer: connecting still takes a password.
    pub unix_socket_mode: FileMode,
    pub pool_mode: PoolMode,
    pub max_client_conn: u32,
    /// Threads that run client sessions, read at start only. 1 (the
    /// default): a single-threaded runtime, as PgBouncer runs, which hands
    /// connections between sessions without cross-thread wake-ups: a
    /// sidecar's CPU is taken from the application it serves, and one
    /// thread spent 0.78-0.85x the CPU per transaction of one per core
    /// (docs/benchmarks.md). 0: one runtime worker per core, for a proxy
    /// whose one thread is saturated. N: N workers.
    pub worker_threads: u32,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Time a new client has to finish startup and authentication.
    #[serde(with = "humantime_serde")]
    pub client_login_timeout: Duration,
    /// Largest protocol message (bytes) the proxy accepts from a client.
    pub max_message_size: u32,
    /// Bytes all clients' large messages (over 1 MiB, each counted twice:
    /// read and copied for the server) may hold at once.
    pub max_message_memory: u64,
    /// A client idle outside a transaction this long is disconnected
    /// (57P05). Zero: never.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// A client idle inside a transaction this long is disconnected (25P03)
    /// and its server rolled back and returned to the pool. Zero: never.
    #[serde(with = "humantime_serde")]
    pub idle_transaction_timeout: Duration,
    /// A query running longer is cancelled on the server (57014). Zero: never.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// PEM certificate chain offered to clients that ask for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Unset: "allow" when a certificate is configured, else "disable";
    /// see [`ProxyConfig::tls_mode`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<ClientTlsMode>,
}

impl ProxyConfig {
    /// The client TLS mode in force: the configured one, else "allow" with
    /// a certificate and "disable" without.
    pub fn tls_mode(&self) -> ClientTlsMode {
        self.tls_mode.unwrap_or(if self.tls_cert.is_some() {
            ClientTlsMode::Allow
        } else {
            ClientTlsMode::Disable
        })
    }

    /// The Unix socket's path, `<unix_socket_dir>/.s.PGSQL.<port>`, with
    /// the port of the TCP listener actually bound (`tcp_port`, for
    /// `listen` with port 0) unless `unix_socket_port` names one.
    pub fn unix_socket_path(&self, tcp_port: Option<u16>) -> Option<PathBuf> {
        let dir = self.unix_socket_dir.as_ref()?;
        let port = self.unix_socket_port.or(tcp_port)?;
        Some(dir.join(format!(".s.PGSQL.{port}")))
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: Some("127.0.0.1:6432".parse().expect("static address")),
            unix_socket_dir: None,
            unix_socket_port: None,
            unix_socket_mode: FileMode(0o777),
            pool_mode: PoolMode::Transaction,
            max_client_conn: 10_000,
            worker_threads: 1,
            shutdown_timeout: Duration::from_secs(30),
            client_login_timeout: Duration::from_secs(15),
            max_message_size: 64 * 1024 * 1024,
            max_message_memory: 256 * 1024 * 1024,
            client_idle_timeout: Duration::ZERO,
            idle_transaction_timeout: Duration::ZERO,
            query_timeout: Duration::ZERO,
            tls_cert: None,
            tls_key: None,
            tls_mode: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// A connection whose request headers have not all arrived this long
    /// after it opened (or after its previous response) is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// HTTP connections open at once; more are answered 503 and closed.
    pub max_connections: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9930".parse().expect("static address"),
            header_timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub primary: NodeAddr,
    #[serde(default)]
    pub replicas: Vec<NodeAddr>,
    /// Time allowed to open and log in a server connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Role the cluster monitor logs in as on every node (it checks role,
    /// WAL position and replay lag each `routing.lag_check_interval`).
    /// Must be one of `[[users]]`, whose password it uses; default: the
    /// first `[[users]]` entry (`postgres` if there is none). The monitor
    /// holds one connection per node, on top of the pools: count them
    /// among the proxy's own connections when sizing `max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_user: Option<String>,
    /// Database the monitor's connections open (any database works; the
    /// checks read only cluster-wide state).
    #[serde(default = "default_monitor_database")]
    pub monitor_database: String,
    /// TLS towards Postgres: "disable" | "prefer" | "require" | "verify-full".
    #[serde(default)]
    pub server_tls: ServerTlsMode,
    /// PEM CA certificates that server certificates must chain to
    /// (required by "verify-full"; with "require", checked if given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls_ca_file: Option<PathBuf>,
    /// Where the monitor records the primary it sends writes to and its
    /// WAL timeline, so that after a restart (or a reload that changes
    /// the nodes) a node still claiming the primary role on an older
    /// timeline gets no writes. Unset: [`DEFAULT_STATE_FILE`] if usable;
    /// "": keep no record (see [`StateFile`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
}

/// Where systemd's `StateDirectory=pgsidecar` and the container image put
/// pgsidecar's state; Kubernetes users mount a volume there.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/pgsidecar/cluster.state";

/// `cluster.state_file`, interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFile<'a> {
    /// Set to "": no record, and before its first checks the configured
    /// primary is trusted (a restart while a newer primary is unreachable
    /// may write to an old one).
    Off,
    /// Set to a path: it must be writable, or pgsidecar does not start.
    Set(&'a Path),
    /// Not set: [`DEFAULT_STATE_FILE`] if its directory is writable;
    /// otherwise no record is kept and, after every start, writes wait
    /// until every configured node has answered.
    Default(&'static Path),
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_monitor_database() -> String {
    "postgres".into()
}

impl ClusterConfig {
    /// `state_file`, interpreted.
    pub fn state_file(&self) -> StateFile<'_> {
        match &self.state_file {
            Some(p) if p.as_os_str().is_empty() => StateFile::Off,
            Some(p) => StateFile::Set(p),
            None => StateFile::Default(Path::new(DEFAULT_STATE_FILE)),
        }
    }

    /// Checks the monitor keys against the `[[users]]` list. Errors are
    /// `(key, message)` like the loader's other cross-field checks.
    pub(super) fn validate_monitor(&self, users: &[UserConfig]) -> Result<(), (String, String)> {
        if let Some(user) = &self.monitor_user
            && !users.iter().any(|u| &u.name == user)
        {
            return Err((
                "cluster.monitor_user".into(),
                format!("`{user}` is not defined in [[users]]"),
            ));
        }
        if self.monitor_database.is_empty() {
            return Err((
                "cluster.monitor_database".into(),
                "must not be empty".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub client_auth: ClientAuth,
}

/// One `[[users]]` entry. At most one password source may be given; the
/// loader resolves it into `password`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub size: PoolSize,
    pub db_cores: u32,
    /// Cores of each replica (nodes of `[cluster] replicas`), for `budget =
    /// "auto"`; absent: `db_cores`. Replicas are often smaller or larger
    /// machines than the primary, and a budget sized for one would starve
    /// or overload the other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_db_cores: Option<u32>,
    pub effective_spindle_count: u32,
    pub sidecars: u32,
    /// With `[fleet]`: server connections per node for the whole fleet.
    pub budget: Budget,
    #[serde(with = "humantime_serde")]
    pub checkout_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Prepared statements kept per server connection (LRU).
    pub prepared_statements_cache: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: PoolSize::Auto,
            db_cores: 4,
            replica_db_cores: None,
            effective_spindle_count: 1,
            sidecars: 1,
            budget: Budget::Auto,
            checkout_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            prepared_statements_cache: 500,
        }
    }
}

impl PoolConfig {
    /// Server connections per (database, user, node) pool: the fixed size, or
    /// `db_cores * 2 + effective_spindle_count` shared among `sidecars`,
    /// never less than one.
    pub fn effective_size(&self) -> u32 {
        match self.size {
            PoolSize::Fixed(n) => n.max(1),
            PoolSize::Auto => {
                let total = self
                    .db_cores
                    .saturating_mul(2)
                    .saturating_add(self.effective_spindle_count);
                (total / self.sidecars.max(1)).max(1)
            }
        }
    }

    /// `[pool] budget` on the primary as a number: the fixed value, or the
    /// whole `db_cores * 2 + effective_spindle_count` (not divided: the
    /// fleet shares it), never less than one.
    pub fn primary_budget(&self) -> u32 {
        self.budget_with(self.db_cores)
    }

    /// `[pool] budget` on a replica: as [`primary_budget`](Self::primary_budget)
    /// with `replica_db_cores` (when set) in the formula.
    pub fn replica_budget(&self) -> u32 {
        self.budget_with(self.replica_db_cores.unwrap_or(self.db_cores))
    }

    fn budget_with(&self, cores: u32) -> u32 {
        match self.budget {
            Budget::Fixed(n) => n.max(1),
            Budget::Auto => cores
                .saturating_mul(2)
                .saturating_add(self.effective_spindle_count)
                .max(1),
        }
    }

    /// Largest size of one (database, user, node) pool: with a fleet, a
    /// pool may use the member's whole share of a node (capped by a fixed
    /// `size`), so the larger of the primary's and the replicas' budgets
    /// (the node's gate holds a pool to that node's own share); alone,
    /// [`effective_size`](Self::effective_size).
    pub fn pool_max(&self, fleet: bool) -> u32 {
        let budget = self.primary_budget().max(self.replica_budget());
        match (fleet, self.size) {
            (false, _) => self.effective_size(),
            (true, PoolSize::Fixed(n)) => n.clamp(1, budget),
            (true, PoolSize::Auto) => budget,
        }
    }
}

/// `[fleet]`: sidecars with the same `name` find each other through the
/// primary (and each replica) and share `[pool] budget` there. See the
/// `fleet` module for how.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Shared by every member: letters, digits, `.`, `_`, `-`, at most
    /// [`FleetConfig::MAX_NAME`] characters (it is part of an
    /// `application_name`, which Postgres cuts at 63 bytes).
    pub name: String,
    /// This member's name in `SHOW FLEET` and `pg_stat_activity`; default
    /// `<hostname>-<pid>` (the pod name in Kubernetes). Cut to fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// How often each member looks at the fleet on each node and moves
    /// budget slots. Each look is one query (reading `pg_locks`).
    #[serde(default = "default_fleet_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Slots an idle member keeps per node (capped by the budget), so its
    /// first clients need not wait for another member to give one back.
    #[serde(default = "default_fleet_floor")]
    pub floor: u32,
}

fn default_fleet_interval() -> Duration {
    Duration::from_millis(500)
}

fn default_fleet_floor() -> u32 {
    1
}

impl FleetConfig {
    pub const MAX_NAME: usize = 24;
    /// Shortest and longest `interval`.
    pub const INTERVAL_RANGE: (Duration, Duration) =
        (Duration::from_millis(10), Duration::from_secs(60));

    /// Checks name, instance and interval. Errors are `(key, message)`.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let word = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if self.name.is_empty() || self.name.len() > Self::MAX_NAME || !word(&self.name) {
            return Err((
                "fleet.name".into(),
                format!(
                    "must be 1 to {} letters, digits, '.', '_' or '-', got \"{}\"",
                    Self::MAX_NAME,
                    self.name.escape_debug()
                ),
            ));
        }
        if let Some(instance) = &self.instance
            && (instance.is_empty() || instance.len() > 63 || !word(instance))
        {
            return Err((
                "fleet.instance".into(),
                format!(
                    "must be 1 to 63 letters, digits, '.', '_' or '-', got \"{}\"",
                    instance.escape_debug()
                ),
            ));
        }
        let (min, max) = Self::INTERVAL_RANGE;
        if !(min..=max).contains(&self.interval) {
            return Err((
                "fleet.interval".into(),
                format!(
                    "must be between 10ms and 60s, got {}",
                    humantime::format_duration(self.interval)
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub read_write_split: bool,
    pub read_your_writes: ReadYourWrites,
    #[serde(with = "humantime_serde")]
    pub read_your_writes_window: Duration,
    #[serde(with = "humantime_serde")]
    pub max_replica_lag: Duration,
    #[serde(with = "humantime_serde")]
    pub lag_check_interval: Duration,
    pub fallback_to_primary: bool,
    /// Functions (beyond the built-in allow-list) that are safe on a replica.
    pub read_only_functions: Vec<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            read_your_writes: ReadYourWrites::Lsn,
            read_your_writes_window: Duration::from_secs(1),
            max_replica_lag: Duration::from_secs(1),
            lag_check_interval: Duration::from_millis(100),
            fallback_to_primary: true,
            read_only_functions: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub users: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// Per-query observability: digests (`/queries`), the slow-query
    /// log, EXPLAIN samples and the p95 budget. Off, only the counters
    /// and histograms of `/metrics` are kept.
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub slow_query_threshold: Duration,
    /// Slow-query log lines per second at most; the rest are counted and
    /// summarised every 10 s. 0 = no limit.
    pub slow_query_log_rate: u32,
    pub explain: ExplainMode,
    pub explain_sample_rate: f64,
    #[serde(with = "humantime_serde")]
    pub explain_min_interval: Duration,
    /// `statement_timeout` of the sampler's EXPLAIN statements.
    #[serde(with = "humantime_serde")]
    pub explain_timeout: Duration,
    /// Query fingerprints kept for `/queries` (least recently seen evicted).
    pub max_fingerprints: u32,
    /// Bytes of normalised text kept per fingerprint and printed in a
    /// slow-query line; longer text is cut (and ends with `…`).
    pub max_query_text: u32,
    /// Bytes all kept fingerprints' texts and plans may take together; the
    /// least recently seen are forgotten first to stay under it.
    pub max_query_memory: u64,
    pub log_format: LogFormat,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            enabled: true,
            slow_query_threshold: Duration::from_millis(200),
            slow_query_log_rate: 10,
            explain: ExplainMode::Slow,
            explain_sample_rate: 0.0,
            explain_min_interval: Duration::from_secs(300),
            explain_timeout: Duration::from_secs(2),
            max_fingerprints: 5000,
            max_query_text: 8192,
            max_query_memory: 16 * 1024 * 1024,
            log_format: LogFormat::Text,
        }
    }
}

/// `[budgets]`: service levels the proxy watches. An absent key is no
/// budget. Crossing one logs a warning once, recovering logs once more,
/// and `pgsidecar_budget_exceeded{budget}` follows it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// p95 of all query durations over the last `window`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub p95_query_time: Option<Duration>,
    /// Busiest pool's busy connections / pool size (0.0 to 1.0].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_usage: Option<f64>,
    /// How far back `p95_query_time` looks (whole seconds, at least 1s).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        BudgetsConfig {
            p95_query_time: None,
            pool_usage: None,
            window: Duration::from_secs(30),
        }
    }
}
