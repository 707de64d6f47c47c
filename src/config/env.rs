//! Environment overrides: `PGSIDECAR_<SECTION>_<KEY>` variables for the keys
//! that differ between deployments of the same file (addresses, pool size,
//! routing switches), applied on top of the parsed file before it is
//! deserialised, each validated on its own so that a bad value is reported
//! with the variable that holds it.
//!
//! Containers and systemd units set these instead of templating the TOML.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::types::{NodeAddr, PoolSize};
use super::{ClientAuth, LogFormat, PoolMode, ReadYourWrites};

/// Every override variable starts with this.
pub const PREFIX: &str = "PGSIDECAR_";

/// Variables with the prefix that are not overrides (`--config` and the log
/// filter), so they are never mistaken for a misspelled override.
const NOT_OVERRIDES: [&str; 2] = ["PGSIDECAR_CONFIG", "PGSIDECAR_LOG"];

/// Sections whose prefix (`PGSIDECAR_PROXY_`, …) is reserved: an unknown
/// variable under one of them is refused, because it is most likely a typo
/// that would otherwise be silently ignored.
const SECTIONS: [&str; 9] = [
    "proxy",
    "http",
    "cluster",
    "auth",
    "pool",
    "routing",
    "admin",
    "observability",
    "fleet",
];

/// One overridable key and how its variable's text becomes a TOML value.
pub(super) struct Override {
    pub(super) section: &'static str,
    pub(super) key: &'static str,
    parse: fn(&str) -> Result<toml::Value, String>,
}

impl Override {
    /// `PGSIDECAR_<SECTION>_<KEY>`.
    pub(super) fn var(&self) -> String {
        format!("{PREFIX}{}_{}", self.section, self.key).to_ascii_uppercase()
    }
}

const fn o(
    section: &'static str,
    key: &'static str,
    parse: fn(&str) -> Result<toml::Value, String>,
) -> Override {
    Override {
        section,
        key,
        parse,
    }
}

/// The overridable keys. Passwords are not among them: `[[users]]` already
/// has `password_env`.
pub(super) const OVERRIDES: [Override; 22] = [
    o("proxy", "listen", listen_or_none),
    o("proxy", "pool_mode", typed::<PoolMode>),
    o("proxy", "max_client_conn", positive_int),
    o("proxy", "worker_threads", whole_number),
    o("http", "listen", socket_addr),
    o("cluster", "primary", node),
    o("cluster", "replicas", node_list),
    o("cluster", "state_file", text),
    o("auth", "client_auth", typed::<ClientAuth>),
    o("pool", "size", pool_size),
    o("pool", "db_cores", positive_int),
    o("pool", "replica_db_cores", positive_int),
    o("pool", "sidecars", positive_int),
    o("pool", "budget", pool_size),
    o("pool", "checkout_timeout", duration),
    o("routing", "read_write_split", boolean),
    o("routing", "read_your_writes", typed::<ReadYourWrites>),
    o("routing", "max_replica_lag", duration),
    o("observability", "log_format", typed::<LogFormat>),
    o("observability", "slow_query_threshold", duration),
    o("fleet", "name", text),
    o("fleet", "instance", text),
];

/// Why the environment was refused. Each variant names the variable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable {var}=\"{value}\": {message}")]
    Invalid {
        var: String,
        value: String,
        message: String,
    },
    #[error(
        "environment variable {var} is not a pgsidecar setting (a typo?); \
         the overridable settings are: {known}"
    )]
    Unknown { var: String, known: String },
    #[error("environment variable {var} is not valid UTF-8")]
    NotUnicode { var: String },
    #[error("the config with {vars} applied is invalid: {message}")]
    Combined { vars: String, message: String },
}

/// The `PGSIDECAR_*` variables, read once. Loading takes this instead of
/// reading the process environment itself, so tests can pass their own.
#[derive(Clone, Debug, Default)]
pub struct Environment(BTreeMap<String, String>);

impl Environment {
    /// The process's `PGSIDECAR_*` variables.
    pub fn from_process() -> Result<Self, EnvError> {
        let mut vars = BTreeMap::new();
        for (key, value) in std::env::vars_os() {
            let Some(key) = key.to_str().filter(|k| k.starts_with(PREFIX)) else {
                continue;
            };
            let value = value.into_string().map_err(|_| EnvError::NotUnicode {
                var: key.to_string(),
            })?;
            vars.insert(key.to_string(), value);
        }
        Ok(Environment(vars))
    }

    /// Exactly these variables (for tests and embedding).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Environment(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

/// An override that was applied: `section.key` set from `var`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Applied {
    pub(super) section: &'static str,
    pub(super) key: &'static str,
    pub(super) var: String,
}

/// Sets every override present in `env` on `table` (the parsed file) and
/// returns what was set. Refuses unknown variables under a section prefix,
/// except those the file names as a `password_env`.
pub(super) fn apply(table: &mut toml::Table, env: &Environment) -> Result<Vec<Applied>, EnvError> {
    let password_vars = password_env_vars(table);
    let mut applied = Vec::new();
    let mut known = HashSet::new();
    for over in &OVERRIDES {
        let var = over.var();
        known.insert(var.clone());
        let Some(value) = env.0.get(&var) else {
            continue;
        };
        let parsed = (over.parse)(value.trim()).map_err(|message| EnvError::Invalid {
            var: var.clone(),
            value: value.clone(),
            message,
        })?;
        let section = table
            .entry(over.section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        // A section that is not a table is the file's error; deserialising
        // reports it with its line.
        if let toml::Value::Table(section) = section {
            section.insert(over.key.to_string(), parsed);
        }
        applied.push(Applied {
            section: over.section,
            key: over.key,
            var,
        });
    }
    for var in env.0.keys() {
        let rest = &var[PREFIX.len()..];
        let reserved = SECTIONS
            .iter()
            .any(|s| rest.starts_with(&format!("{}_", s.to_ascii_uppercase())));
        if reserved
            && !known.contains(var)
            && !password_vars.contains(var)
            && !NOT_OVERRIDES.contains(&var.as_str())
        {
            return Err(EnvError::Unknown {
                var: var.clone(),
                known: OVERRIDES
                    .iter()
                    .map(Override::var)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(applied)
}

/// `password_env` names used by the file's `[[users]]`.
fn password_env_vars(table: &toml::Table) -> HashSet<String> {
    let Some(toml::Value::Array(users)) = table.get("users") else {
        return HashSet::new();
    };
    users
        .iter()
        .filter_map(|u| u.get("password_env")?.as_str().map(str::to_string))
        .collect()
}

// ---- parsers: variable text to the TOML value the file would hold ----------

fn socket_addr(s: &str) -> Result<toml::Value, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| "not an address like 0.0.0.0:6432 (IP:port)".to_string())?;
    Ok(toml::Value::String(s.into()))
}

/// `[proxy] listen`: an address, or empty for no TCP listener.
fn listen_or_none(s: &str) -> Result<toml::Value, String> {
    if s.is_empty() {
        return Ok(toml::Value::String(String::new()));
    }
    socket_addr(s)
}

fn node(s: &str) -> Result<toml::Value, String> {
    s.parse::<NodeAddr>()?;
    Ok(toml::Value::String(s.into()))
}

/// Comma-separated `host:port` list; empty means no replicas.
fn node_list(s: &str) -> Result<toml::Value, String> {
    let mut nodes = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        nodes.push(node(part)?);
    }
    Ok(toml::Value::Array(nodes))
}

fn positive_int(s: &str) -> Result<toml::Value, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(toml::Value::Integer(n.into())),
        _ => Err("must be a whole number greater than zero".into()),
    }
}

fn whole_number(s: &str) -> Result<toml::Value, String> {
    match s.parse::<u32>() {
        Ok(n) => Ok(toml::Value::Integer(n.into())),
        _ => Err("must be a whole number".into()),
    }
}

fn boolean(s: &str) -> Result<toml::Value, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
        "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
        _ => Err("must be true or false".into()),
    }
}

/// Any text (a path; "" is meaningful where the key says so).
fn text(s: &str) -> Result<toml::Value, String> {
    Ok(toml::Value::String(s.into()))
}

fn duration(s: &str) -> Result<toml::Value, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("not a duration like \"250ms\", \"5s\" or \"1m\" ({e})"))?;
    Ok(toml::Value::String(s.into()))
}

fn pool_size(s: &str) -> Result<toml::Value, String> {
    let value = match s.parse::<i64>() {
        Ok(n) => toml::Value::Integer(n),
        Err(_) => toml::Value::String(s.into()),
    };
    PoolSize::deserialize(value.clone()).map_err(|e| e.message().to_string())?;
    Ok(value)
}

/// A string-valued enum, checked by the schema type itself so the accepted
/// spellings are listed in the error exactly as for the file.
fn typed<T: DeserializeOwned>(s: &str) -> Result<toml::Value, String> {
    let value = toml::Value::String(s.into());
    T::deserialize(value.clone()).map_err(|e| e.message().to_string())?;
    Ok(value)
}
