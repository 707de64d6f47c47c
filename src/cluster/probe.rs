//! The monitor's connection to one node and its check: one prepared SELECT
//! per tick that returns role, WAL position and WAL timeline in a single
//! round trip, every await bounded by a timeout.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Connection, NoTls, Row, Socket, Statement};

use super::error::CheckError;
use super::lsn::{Lsn, WalGeometry};
use super::update::Probe;
use crate::config::{Config, NodeAddr};

/// The check. A replica reports its replay position; a primary its insert
/// position (which includes every committed transaction, even with
/// `synchronous_commit = off`, as read-your-writes needs) and the timeline
/// of the WAL it writes, taken from the WAL file name because
/// `pg_control_checkpoint()` still shows the old timeline after a promotion
/// until the next checkpoint. `pg_walfile_name` refuses to run during
/// recovery; CASE keeps replicas from calling it.
const CHECK_SQL: &str = "SELECT r, \
     CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END, \
     CASE WHEN r THEN NULL ELSE pg_walfile_name(pg_current_wal_insert_lsn()) END \
     FROM pg_is_in_recovery() AS r";

/// Read once per connection; see [`WalGeometry`].
const GEOMETRY_SQL: &str = "SELECT current_setting('wal_block_size')::int8, \
     pg_size_bytes(current_setting('wal_segment_size'))";

/// The cluster's identity: the same on a primary and every node cloned
/// from it, so the state file's record is only applied to its own cluster.
/// Read once per connection; a node that refuses it is still monitored.
const SYSTEM_SQL: &str = "SELECT system_identifier FROM pg_control_system()";

/// `application_name` of the monitor's sessions, to spot them in
/// `pg_stat_activity`.
const APPLICATION_NAME: &str = "pgsidecar-monitor";

/// Who the monitor logs in as and where (`cluster.monitor_user`,
/// `cluster.monitor_database`). A change on reload reconnects.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct MonitorLogin {
    pub user: String,
    pub database: String,
    password: Option<String>,
}

impl MonitorLogin {
    /// `cluster.monitor_user`, else the first `[[users]]` entry, else
    /// `postgres`; with that user's configured password, if any.
    pub(crate) fn from_config(config: &Config) -> Self {
        let user = (config.cluster.monitor_user.clone())
            .or_else(|| config.users.first().map(|u| u.name.clone()))
            .unwrap_or_else(|| "postgres".into());
        let password = (config.user(&user))
            .and_then(|u| u.password.as_ref())
            .map(|p| p.expose().to_string());
        MonitorLogin {
            user,
            database: config.cluster.monitor_database.clone(),
            password,
        }
    }
}

impl MonitorLogin {
    /// How to log in as this user on `addr`, into `database` (the
    /// monitor's own, or another the proxy reads the catalog of).
    pub(crate) fn pg_config(
        &self,
        addr: &NodeAddr,
        database: &str,
        application_name: &str,
        connect_timeout: Duration,
    ) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&addr.host)
            .port(addr.port)
            .user(&self.user)
            .dbname(database)
            .application_name(application_name)
            .connect_timeout(connect_timeout);
        if let Some(pw) = &self.password {
            pg.password(pw);
        }
        pg
    }
}

type NodeConnection = Connection<Socket, NoTlsStream>;

/// An open monitor session. The connection future is polled only while a
/// query is in flight (nothing arrives unasked in between), so no
/// background task exists that could outlive the monitor.
pub(crate) struct NodeConn {
    addr: NodeAddr,
    login: MonitorLogin,
    client: Client,
    connection: Pin<Box<NodeConnection>>,
    check: Statement,
    geometry: WalGeometry,
    system: Option<u64>,
}

impl NodeConn {
    /// Connects and logs in within `connect_timeout`, then prepares the
    /// check and reads the WAL geometry within `check_timeout`.
    pub(crate) async fn open(
        addr: &NodeAddr,
        login: &MonitorLogin,
        connect_timeout: Duration,
        check_timeout: Duration,
    ) -> Result<NodeConn, CheckError> {
        let pg = login.pg_config(addr, &login.database, APPLICATION_NAME, connect_timeout);
        let (client, connection) = tokio::time::timeout(connect_timeout, pg.connect(NoTls))
            .await
            .map_err(|_| CheckError::ConnectTimeout {
                addr: addr.clone(),
                after: connect_timeout,
            })?
            .map_err(|source| CheckError::Connect {
                addr: addr.clone(),
                user: login.user.clone(),
                source,
            })?;
        let mut connection = Box::pin(connection);
        let (check, row, system) = bounded(addr, check_timeout, &mut connection, async {
            let check = client.prepare(CHECK_SQL).await?;
            let row = client.query_one(GEOMETRY_SQL, &[]).await?;
            let system = client.query_one(SYSTEM_SQL, &[]).await;
            Ok((check, row, system))
        })
        .await?;
        let system = match system.and_then(|r| r.try_get::<_, i64>(0)) {
            // A bigint holding an unsigned 64-bit number.
            Ok(id) => Some(id as u64),
            Err(error) => {
                tracing::warn!(node = %addr, %error, "cannot read the system identifier; the state file's record is applied without it");
                None
            }
        };
        let geometry = (row.try_get::<_, i64>(0).ok())
            .zip(row.try_get::<_, i64>(1).ok())
            .and_then(|(block, segment)| WalGeometry::new(block, segment))
            .ok_or_else(|| bad(addr, "wal_block_size / wal_segment_size out of range"))?;
        Ok(NodeConn {
            addr: addr.clone(),
            login: login.clone(),
            client,
            connection,
            check,
            geometry,
            system,
        })
    }

    pub(crate) fn login(&self) -> &MonitorLogin {
        &self.login
    }

    /// Runs the check (one round trip) within `timeout`.
    pub(crate) async fn probe(&mut self, timeout: Duration) -> Result<Probe, CheckError> {
        let (client, check) = (&self.client, &self.check);
        let row = bounded(&self.addr, timeout, &mut self.connection, async {
            client.query_one(check, &[]).await
        })
        .await?;
        let mut probe = parse(&self.addr, self.geometry, &row)?;
        probe.system = self.system;
        Ok(probe)
    }
}

/// Awaits `query` within `timeout` while driving `connection`; a
/// connection that ends first is reported as closed or failed.
async fn bounded<T>(
    addr: &NodeAddr,
    timeout: Duration,
    connection: &mut Pin<Box<NodeConnection>>,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, CheckError> {
    let work = async {
        tokio::select! {
            result = query => result.map_err(|source| CheckError::Query { addr: addr.clone(), source }),
            ended = connection => Err(match ended {
                Ok(()) => CheckError::Closed { addr: addr.clone() },
                Err(source) => CheckError::Query { addr: addr.clone(), source },
            }),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| CheckError::QueryTimeout {
            addr: addr.clone(),
            after: timeout,
        })?
}

/// Turns the check's row into a [`Probe`], refusing what cannot be true
/// (a primary without a position, a malformed WAL file name).
fn parse(addr: &NodeAddr, geometry: WalGeometry, row: &Row) -> Result<Probe, CheckError> {
    let in_recovery: bool = row
        .try_get(0)
        .map_err(|e| bad(addr, &format!("pg_is_in_recovery(): {e}")))?;
    let lsn: Option<PgLsn> = row
        .try_get(1)
        .map_err(|e| bad(addr, &format!("WAL position: {e}")))?;
    let walfile: Option<String> = row
        .try_get(2)
        .map_err(|e| bad(addr, &format!("WAL file name: {e}")))?;
    if in_recovery {
        return Ok(Probe {
            in_recovery,
            lsn: lsn.map(Lsn::from),
            timeline: None,
            system: None,
        });
    }
    let lsn = lsn.ok_or_else(|| bad(addr, "a primary reported no WAL insert position"))?;
    let timeline = walfile
        .as_deref()
        .and_then(timeline_of_walfile)
        .ok_or_else(|| bad(addr, &format!("unexpected WAL file name {walfile:?}")))?;
    Ok(Probe {
        in_recovery,
        lsn: Some(geometry.record_end(Lsn::from(lsn))),
        timeline: Some(timeline),
        system: None,
    })
}

/// The timeline ID: the first 8 hex digits of a 24-digit WAL file name.
fn timeline_of_walfile(name: &str) -> Option<u32> {
    let valid = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
    valid
        .then(|| u32::from_str_radix(name.get(..8)?, 16).ok())
        .flatten()
        .filter(|t| *t > 0)
}

fn bad(addr: &NodeAddr, what: &str) -> CheckError {
    CheckError::BadAnswer {
        addr: addr.clone(),
        what: what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_comes_from_the_wal_file_name() {
        assert_eq!(timeline_of_walfile("000000010000000000000003"), Some(1));
        assert_eq!(timeline_of_walfile("0000002A00000001000000FF"), Some(42));
        for bad in [
            "",
            "00000001",
            "00000000000000000000000X",
            "000000000000000000000003",
        ] {
            assert_eq!(timeline_of_walfile(bad), None, "{bad}");
        }
    }

    #[test]
    fn login_defaults_to_the_first_user_and_its_password() {
        let text = "[cluster]\nprimary = \"h:1\"\n[[users]]\nname = \"app\"\npassword = \"pw\"\n\
                    [[users]]\nname = \"ops\"\npassword = \"ops-pw\"\n";
        let path = std::path::Path::new("t.toml");
        let config = Config::from_toml(text, path).unwrap();
        let login = MonitorLogin::from_config(&config);
        assert_eq!(
            (login.user.as_str(), login.database.as_str()),
            ("app", "postgres")
        );
        assert_eq!(login.password.as_deref(), Some("pw"));
        let text = text.replace(
            "primary = \"h:1\"",
            "primary = \"h:1\"\nmonitor_user = \"ops\"",
        );
        let login = MonitorLogin::from_config(&Config::from_toml(&text, path).unwrap());
        assert_eq!(login.user, "ops");
        assert_eq!(login.password.as_deref(), Some("ops-pw"));
        let bare = Config::from_toml("[cluster]\nprimary = \"h:1\"\n", path).unwrap();
        let login = MonitorLogin::from_config(&bare);
        assert_eq!((login.user.as_str(), login.password), ("postgres", None));
    }
}
