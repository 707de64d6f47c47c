//! Value types used by the configuration schema: node addresses, pool size,
//! secrets and the string-valued enums, each parsed during deserialisation so
//! that a bad value is reported with the line it sits on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `host:port` of a Postgres node. Kept as host + port (not a resolved
/// `SocketAddr`) so DNS names work and are re-resolved on each connect.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl FromStr for NodeAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{s}` has an empty host"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{s}` has an invalid port"))?;
        Ok(NodeAddr {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for NodeAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[pool] size`: a fixed number of server connections per pool, or "auto"
/// for the `db_cores * 2 + effective_spindle_count` formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PoolSize {
    #[default]
    Auto,
    Fixed(u32),
}

impl<'de> Deserialize<'de> for PoolSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if (1..=100_000).contains(&n) => Ok(PoolSize::Fixed(n as u32)),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "pool size must be between 1 and 100000, got {n}"
            ))),
            Raw::Str(s) if s == "auto" => Ok(PoolSize::Auto),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "pool size must be an integer or \"auto\", got \"{s}\""
            ))),
        }
    }
}

impl Serialize for PoolSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PoolSize::Auto => s.serialize_str("auto"),
            PoolSize::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

impl fmt::Display for PoolSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolSize::Auto => f.write_str("\"auto\""),
            PoolSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Permission bits of a file pgsidecar creates (`[proxy] unix_socket_mode`),
/// written as an octal string such as `"0777"` or `"0770"`. Integers are
/// refused: `777` in TOML is decimal (0o1411), and a mode silently taken
/// from the wrong base could open a socket to everyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|m| !digits.is_empty() && *m <= 0o777)
            .map(FileMode)
            .ok_or_else(|| {
                format!("`{s}` is not a file mode: write octal permission bits, e.g. \"0777\" or \"0770\"")
            })
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "file mode {n} must be an octal string, e.g. \"0777\" or \"0770\" \
                 (a TOML integer is decimal or ambiguous)"
            ))),
        }
    }
}

/// `[proxy] listen`: a TCP address, or `""` for none (clients then reach
/// the proxy on its Unix socket only, as Postgres's `listen_addresses = ''`).
pub mod optional_listen {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{s}` is not an address like 127.0.0.1:6432 (IP:port), nor \"\" for no TCP listener"
            ))
        })
    }
}

/// `[pool] budget`: server connections to one node for a whole fleet (all
/// pools of all members), or "auto" for `db_cores * 2 +
/// effective_spindle_count`. Used only with `[fleet]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Budget {
    #[default]
    Auto,
    Fixed(u32),
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Same spellings and range as a pool size.
        Ok(
            match PoolSize::deserialize(d).map_err(|e| {
                serde::de::Error::custom(e.to_string().replace("pool size", "budget"))
            })? {
                PoolSize::Auto => Budget::Auto,
                PoolSize::Fixed(n) => Budget::Fixed(n),
            },
        )
    }
}

impl Serialize for Budget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Budget::Auto => s.serialize_str("auto"),
            Budget::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Auto => f.write_str("\"auto\""),
            Budget::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// A secret string whose `Debug`/`Display` never shows the value, so it cannot
/// leak into logs or `check` output by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Serialised masked: the only place a config is serialised is `check`.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"********\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// Declares a string-valued config enum with its accepted spellings.
macro_rules! config_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? } default $def:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant,)+
        }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl Default for $name { fn default() -> Self { $name::$def } }
    };
}

config_enum!(
    /// When a client gives its server connection back to the pool.
    PoolMode { Transaction => "transaction", Session => "session" } default Transaction
);
config_enum!(
    /// How clients prove who they are to the proxy.
    ClientAuth { Trust => "trust", Password => "password", Md5 => "md5", ScramSha256 => "scram-sha-256" }
    default ScramSha256
);
config_enum!(
    /// How reads after a write are kept from seeing stale data.
    ReadYourWrites { Lsn => "lsn", Window => "window", Off => "off" } default Lsn
);
config_enum!(
    /// Which queries get their plans sampled.
    ExplainMode { Off => "off", Slow => "slow", Sample => "sample" } default Slow
);
config_enum!(
    /// Whether clients may, or must, use TLS (`[proxy] tls_mode`).
    ClientTlsMode { Disable => "disable", Allow => "allow", Require => "require" } default Disable
);
config_enum!(
    /// How the proxy encrypts its connections to Postgres, with libpq's
    /// sslmode meanings (`[cluster] server_tls`).
    ServerTlsMode { Disable => "disable", Prefer => "prefer", Require => "require", VerifyFull => "verify-full" }
    default Prefer
);
config_enum!(
    /// Log line format.
    LogFormat { Text => "text", Json => "json" } default Text
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addr_parses_host_port_and_ipv6() {
        let a: NodeAddr = "db.example:5432".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("db.example", 5432));
        let b: NodeAddr = "[::1]:6000".parse().unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 6000));
        assert_eq!(b.to_string(), "[::1]:6000");
        assert!("nohost".parse::<NodeAddr>().is_err());
        assert!("h:0".parse::<NodeAddr>().is_err());
        assert!(":5432".parse::<NodeAddr>().is_err());
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }
}
