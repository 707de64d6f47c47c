//! What the caller asks of a local cluster (replicas, roles, settings) and
//! how that becomes `postgresql.conf`, `pg_hba.conf` and role SQL.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::binaries::PgBinaries;
use super::error::{ClusterError, Result};

/// The superuser created by `initdb -U`; the cluster itself connects as it.
pub const SUPERUSER: &str = "postgres";

/// Settings the cluster manages per node; callers may not override them.
const MANAGED: [&str; 5] = [
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "cluster_name",
    "hba_file",
];

/// How a role proves who it is, i.e. the `pg_hba.conf` method for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password asked.
    Trust,
    /// Cleartext password (`password`).
    Password,
    /// MD5 challenge; the role's password is stored as an MD5 hash.
    Md5,
    /// SCRAM-SHA-256.
    ScramSha256,
}

impl AuthMethod {
    /// The `pg_hba.conf` keyword.
    pub fn hba_keyword(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }
}

/// A login role to create on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSpec {
    /// Role name: letters, digits, `_` and `-`.
    pub name: String,
    /// Password; required unless `auth` is [`AuthMethod::Trust`].
    pub password: Option<String>,
    /// How it authenticates.
    pub auth: AuthMethod,
    /// Whether it is a superuser.
    pub superuser: bool,
}

impl RoleSpec {
    /// A non-superuser role logging in with `password` by `auth`.
    pub fn new(name: &str, password: &str, auth: AuthMethod) -> Self {
        RoleSpec {
            name: name.into(),
            password: Some(password.into()),
            auth,
            superuser: false,
        }
    }

    /// A role that needs no password.
    pub fn trust(name: &str) -> Self {
        RoleSpec {
            name: name.into(),
            password: None,
            auth: AuthMethod::Trust,
            superuser: false,
        }
    }

    /// Makes the role a superuser.
    pub fn superuser(mut self) -> Self {
        self.superuser = true;
        self
    }
}

/// Per-replica options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaOptions {
    /// `recovery_min_apply_delay`: how far replay trails the primary, to make
    /// replication lag real in tests. Zero means none.
    pub apply_delay: Duration,
}

/// Everything [`LocalCluster::start`](super::LocalCluster::start) needs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// One entry per streaming replica (may be empty).
    pub replicas: Vec<ReplicaOptions>,
    /// Login roles to create besides `postgres`.
    pub roles: Vec<RoleSpec>,
    /// Extra `postgresql.conf` settings (name, value), applied to every node.
    pub settings: Vec<(String, String)>,
    /// Limit for each wait: server start, streaming, replay, promotion.
    pub timeout: Duration,
    /// Where the cluster's temp dir goes; default `std::env::temp_dir()`.
    pub base_dir: Option<PathBuf>,
    /// Binaries to use; default [`PgBinaries::locate`].
    pub binaries: Option<PgBinaries>,
}

impl Default for ClusterOptions {
    /// A primary with one replica and no extra roles.
    fn default() -> Self {
        ClusterOptions {
            replicas: vec![ReplicaOptions::default()],
            roles: Vec::new(),
            settings: Vec::new(),
            timeout: Duration::from_secs(60),
            base_dir: None,
            binaries: None,
        }
    }
}

impl ClusterOptions {
    /// Sets `n` replicas without apply delay.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = vec![ReplicaOptions::default(); n];
        self
    }

    /// Adds a role.
    pub fn role(mut self, role: RoleSpec) -> Self {
        self.roles.push(role);
        self
    }

    /// Adds a `postgresql.conf` setting for every node.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Refuses options that could not produce a working cluster.
    pub(crate) fn validate(&self) -> Result<()> {
        for role in &self.roles {
            let bad = |reason| {
                Err(ClusterError::InvalidOptions {
                    reason,
                    value: role.name.clone(),
                })
            };
            if role.name.is_empty()
                || !role
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return bad("role names may use only letters, digits, `_` and `-`");
            }
            if role.auth != AuthMethod::Trust && role.password.is_none() {
                return bad("a role with a password auth method needs a password");
            }
            if role.name == SUPERUSER && (role.auth != AuthMethod::Trust || !role.superuser) {
                return bad(
                    "`postgres` is the cluster's own trusted superuser; define another role",
                );
            }
        }
        for (name, _) in &self.settings {
            let bad = |reason| {
                Err(ClusterError::InvalidOptions {
                    reason,
                    value: name.clone(),
                })
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return bad("setting names may use only letters, digits, `_` and `.`");
            }
            if MANAGED.contains(&name.as_str()) {
                return bad("this setting is managed by the cluster for each node");
            }
        }
        Ok(())
    }
}

/// A value as a single-quoted SQL / config literal.
pub(crate) fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Lines appended to the primary's `postgresql.conf` (replicas copy them).
/// Speed over durability: it is a throwaway cluster.
pub(crate) fn postgresql_conf(opts: &ClusterOptions, major: u32) -> String {
    let senders = (opts.replicas.len() * 2 + 4).max(10);
    let keep = if major >= 13 {
        "wal_keep_size = '256MB'"
    } else {
        "wal_keep_segments = 16"
    };
    let mut conf = format!(
        "\n# --- pgsidecar local cluster ---\n\
         listen_addresses = '127.0.0.1'\n\
         max_connections = 300\n\
         shared_buffers = '32MB'\n\
         fsync = off\n\
         wal_level = replica\n\
         max_wal_senders = {senders}\n\
         max_replication_slots = {senders}\n\
         {keep}\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         wal_receiver_status_interval = '1s'\n\
         log_min_duration_statement = -1\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n"
    );
    for (name, value) in &opts.settings {
        let _ = writeln!(conf, "{name} = {}", quote(value));
    }
    // Last, so per-node values (port, name, apply delay) always win.
    conf.push_str("include_if_exists = 'node.conf'\n");
    conf
}

/// The per-node `node.conf`.
pub(crate) fn node_conf(name: &str, port: u16, socket_dir: &str, apply_delay: Duration) -> String {
    format!(
        "port = {port}\n\
         cluster_name = {}\n\
         unix_socket_directories = {}\n\
         recovery_min_apply_delay = '{}ms'\n",
        quote(name),
        quote(socket_dir),
        apply_delay.as_millis()
    )
}

/// `pg_hba.conf`: `postgres` is trusted (the cluster and replication use
/// it), each role gets its own method, everyone else needs SCRAM.
pub(crate) fn pg_hba_conf(roles: &[RoleSpec]) -> String {
    let mut hba = String::from("# generated by pgsidecar's local cluster; first match wins\n");
    let mut line = |db: &str, user: &str, method: &str| {
        let _ = writeln!(hba, "local {db:<12} {user:<20} {method}");
        let _ = writeln!(hba, "host  {db:<12} {user:<20} 127.0.0.1/32 {method}");
        let _ = writeln!(hba, "host  {db:<12} {user:<20} ::1/128 {method}");
    };
    line("all", SUPERUSER, "trust");
    line("replication", SUPERUSER, "trust");
    for role in roles.iter().filter(|r| r.name != SUPERUSER) {
        line(
            "all",
            &format!("\"{}\"", role.name),
            role.auth.hba_keyword(),
        );
    }
    line("all", "all", "scram-sha-256");
    hba
}

/// SQL statements creating `role`, each to run with its own `-c` in one
/// session (the `SET` decides how the password is stored, so `md5` roles
/// really get an MD5 hash).
pub(crate) fn role_sql(role: &RoleSpec) -> Vec<String> {
    let encryption = if role.auth == AuthMethod::Md5 {
        "md5"
    } else {
        "scram-sha-256"
    };
    let verb = if role.name == SUPERUSER {
        "ALTER"
    } else {
        "CREATE"
    };
    let mut stmt = format!("{verb} ROLE \"{}\" LOGIN", role.name);
    if role.superuser {
        stmt.push_str(" SUPERUSER");
    }
    if let Some(pw) = &role.password {
        let _ = write!(stmt, " PASSWORD {}", quote(pw));
    }
    vec![format!("SET password_encryption = '{encryption}'"), stmt]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_roles_store_md5_hashes() {
        let sql = role_sql(&RoleSpec::new("md5user", "it's", AuthMethod::Md5));
        assert_eq!(sql[0], "SET password_encryption = 'md5'");
        assert_eq!(sql[1], "CREATE ROLE \"md5user\" LOGIN PASSWORD 'it''s'");
    }

    #[test]
    fn hba_lists_roles_before_the_scram_catch_all() {
        let hba = pg_hba_conf(&[RoleSpec::new("pwuser", "x", AuthMethod::Password)]);
        let role = hba.find("\"pwuser\"").unwrap();
        let catch_all = hba
            .find("all                  127.0.0.1/32 scram-sha-256")
            .unwrap();
        assert!(role < catch_all, "{hba}");
        assert!(
            hba.contains("replication  postgres             127.0.0.1/32 trust"),
            "{hba}"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let opts = ClusterOptions::default().role(RoleSpec {
            password: None,
            ..RoleSpec::new("a", "", AuthMethod::Md5)
        });
        assert!(
            opts.validate()
                .unwrap_err()
                .to_string()
                .contains("needs a password")
        );
        let opts = ClusterOptions::default().setting("port", "1");
        assert!(
            opts.validate()
                .unwrap_err()
                .to_string()
                .contains("managed by the cluster")
        );
        let opts = ClusterOptions::default().role(RoleSpec::new("bob; drop", "x", AuthMethod::Md5));
        assert!(opts.validate().is_err());
    }
}
