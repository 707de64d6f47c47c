//! The sampler's own connections: one per (node, database, user), kept in
//! a small LRU, opened with tokio-postgres. Never a pooled server
//! connection, so an EXPLAIN can neither delay a client nor leave state
//! on a server a client will get.

use std::num::NonZeroUsize;
use std::time::Duration;

use lru::LruCache;
use tokio_postgres::{Client, NoTls};

use super::ExplainError;
use crate::config::{Config, NodeAddr};
use crate::protocol::md5::is_md5_hash;
use crate::protocol::scram::ScramVerifier;

/// Connections kept open at most (least recently used closed first).
const MAX_CONNECTIONS: usize = 8;

/// `application_name` of the sampler's sessions, to spot them in
/// `pg_stat_activity`.
const APPLICATION_NAME: &str = "pgsidecar-explain";

/// Where a plan is taken: the node, database and role the query ran as
/// (so the plan sees the same search_path defaults and privileges).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub(crate) node: NodeAddr,
    pub(crate) database: String,
    pub(crate) user: String,
}

/// An open connection and its server's version (`server_version_num`).
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) version: u32,
}

/// The cache, owned by the sampler's worker task (no lock needed).
pub(crate) struct Conns {
    open: LruCache<Target, Conn>,
}

impl Conns {
    pub(crate) fn new() -> Conns {
        Conns {
            open: LruCache::new(NonZeroUsize::new(MAX_CONNECTIONS).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// The connection for `target`, opened (and logged in with the
    /// credentials [`login`] picks) if none is open.
    pub(crate) async fn get(
        &mut self,
        target: &Target,
        config: &Config,
    ) -> Result<&Conn, ExplainError> {
        if self.open.peek(target).is_some_and(|c| c.client.is_closed()) {
            self.open.pop(target);
        }
        if !self.open.contains(target) {
            let conn = connect(target, config).await?;
            // Dropping an evicted client closes its connection.
            self.open.push(target.clone(), conn);
        }
        self.open.get(target).ok_or(ExplainError::Closed)
    }

    /// Forgets a connection whose state is unknown (a timeout, a failed
    /// cleanup), closing it.
    pub(crate) fn discard(&mut self, target: &Target) {
        self.open.pop(target);
    }
}

/// Who the sampler logs in as: the query's own user if its configured
/// password is plaintext (or absent: trust); otherwise the cluster
/// monitor's user (`cluster.monitor_user`, else the first `[[users]]`
/// entry), since a stored MD5 hash or SCRAM verifier cannot log in
/// through tokio-postgres. `None` if neither has a usable password.
pub(crate) fn login(config: &Config, user: &str) -> Option<(String, Option<String>)> {
    let usable = |name: &str| -> Option<(String, Option<String>)> {
        let entry = config.user(name)?;
        match &entry.password {
            None => Some((name.to_string(), None)),
            Some(p) if is_plaintext(p.expose()) => {
                Some((name.to_string(), Some(p.expose().to_string())))
            }
            Some(_) => None,
        }
    };
    let monitor = config
        .cluster
        .monitor_user
        .as_deref()
        .or_else(|| config.users.first().map(|u| u.name.as_str()));
    usable(user).or_else(|| monitor.and_then(usable))
}

fn is_plaintext(password: &str) -> bool {
    !is_md5_hash(password) && ScramVerifier::parse(password).is_err()
}

async fn connect(target: &Target, config: &Config) -> Result<Conn, ExplainError> {
    let (user, password) = login(config, &target.user).ok_or_else(|| ExplainError::NoLogin {
        user: target.user.clone(),
    })?;
    let timeout = config.cluster.connect_timeout;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&target.node.host)
        .port(target.node.port)
        .user(&user)
        .dbname(&target.database)
        .application_name(APPLICATION_NAME)
        .connect_timeout(timeout);
    if let Some(pw) = &password {
        pg.password(pw);
    }
    let connected = tokio::time::timeout(timeout, pg.connect(NoTls)).await;
    let (client, connection) = connected
        .map_err(|_| ExplainError::Timeout { after: timeout })?
        .map_err(|source| ExplainError::Connect {
            node: target.node.to_string(),
            user: user.clone(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "explain connection ended");
        }
    });
    let version = server_version(&client, timeout).await?;
    Ok(Conn { client, version })
}

async fn server_version(client: &Client, timeout: Duration) -> Result<u32, ExplainError> {
    let rows = tokio::time::timeout(timeout, client.simple_query("SHOW server_version_num"))
        .await
        .map_err(|_| ExplainError::Timeout { after: timeout })??;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .and_then(|v| v.parse().ok())
        .ok_or(ExplainError::NoVersion)
}
