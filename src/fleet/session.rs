//! A member's coordinator session on one node: the connection (with TCP
//! keepalives on both ends, so a vanished host or node is noticed in
//! seconds), and every statement the coordinator sends on it. Each
//! statement is one round trip, bounded by a timeout.
//!
//! The session is a plain login of `cluster.monitor_user` on
//! `cluster.monitor_database`: advisory locks, `pg_locks`,
//! `pg_stat_activity` and `set_config` need no grant.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::identity::{Identity, PRESENCE, WANT};
use super::policy::Seen;
use super::writes::Writes;
use crate::cluster::WalGeometry;
use crate::config::NodeAddr;

/// Server-side keepalives (idle, interval in seconds, count): Postgres
/// ends the session — and so frees the member's slots — at most
/// 3 + 3 × 1 = 6 s after the member's host stopped answering.
pub const SERVER_KEEPALIVE: (u32, u32, u32) = (3, 1, 3);
/// The same on this side, so a node that vanished is noticed as fast.
const CLIENT_KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(3), Duration::from_secs(1), 3);
/// Unacknowledged data older than this closes the connection.
const USER_TIMEOUT: Duration = Duration::from_secs(6);

/// Who logs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub database: String,
    pub password: Option<String>,
}

/// Why a statement or the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("fleet coordinator could not connect to {addr}: {source}")]
    Connect {
        addr: NodeAddr,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("fleet coordinator on {addr}: {source}")]
    Query {
        addr: NodeAddr,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("fleet coordinator on {addr}: no answer within {after:?}")]
    Timeout { addr: NodeAddr, after: Duration },
}

/// What one look at the node shows.
#[derive(Clone, Debug, Default)]
pub struct Look {
    /// Every present member (holding the presence lock), this one included.
    pub members: Vec<Seen>,
    /// (pid, application_name) of the members.
    pub names: Vec<(i32, String)>,
    /// Slots below `budget` that nobody holds.
    pub free: BTreeSet<u32>,
}

/// Where and as whom a member's connections to a node log in.
pub struct Dial<'a> {
    pub addr: &'a NodeAddr,
    pub login: &'a Login,
    pub identity: &'a Identity,
    pub connect_timeout: Duration,
    /// Bound on each statement.
    pub timeout: Duration,
    /// Where the notifications the connection gets go.
    pub writes: &'a Arc<Writes>,
}

/// An open coordinator session.
pub struct Session {
    addr: NodeAddr,
    /// Shared with the announcer of the fleet's writes while this session
    /// listens on the primary.
    pub client: Arc<Client>,
    /// This session's backend pid.
    pub pid: i32,
    key: i32,
    timeout: Duration,
    /// Fires when the connection ends.
    pub closed: oneshot::Receiver<()>,
}

impl Session {
    /// Connects, takes the presence lock and tunes the session.
    pub async fn open(dial: &Dial<'_>) -> Result<Session, SessionError> {
        let identity = dial.identity;
        let session = Session::connect(dial, &identity.application_name(0)).await?;
        let present = session
            .bounded(async {
                let row = session
                    .client
                    .query_one(
                        "SELECT pg_try_advisory_lock_shared($1, $2)",
                        &[&identity.key, &PRESENCE],
                    )
                    .await?;
                Ok(row.get::<_, bool>(0))
            })
            .await?;
        // A shared lock is only refused while someone holds it
        // exclusively, which no member does.
        debug_assert!(present);
        Ok(session)
    }

    /// A second connection that only LISTENs on the fleet's channel, so
    /// that it is always idle: Postgres passes a notification on to a
    /// listening session only between its statements, and the
    /// coordinator session's rounds would hold the fleet's writes back.
    /// It takes no presence lock: it is not a member. The notifications
    /// it gets go to `writes`.
    pub async fn open_listener(dial: &Dial<'_>) -> Result<Session, SessionError> {
        Session::connect(dial, &dial.identity.listener_name()).await
    }

    /// Logs in as `application_name`, with keepalives and timeouts on
    /// both ends; the messages the server sends unasked (notifications
    /// to `writes`) are read by a task of their own.
    async fn connect(dial: &Dial<'_>, application_name: &str) -> Result<Session, SessionError> {
        let (addr, login, identity) = (dial.addr, dial.login, dial.identity);
        let (connect_timeout, timeout) = (dial.connect_timeout, dial.timeout);
        let writes = dial.writes.clone();
        let (idle, interval, count) = SERVER_KEEPALIVE;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&addr.host)
            .port(addr.port)
            .user(&login.user)
            .dbname(&login.database)
            .application_name(application_name)
            .connect_timeout(connect_timeout)
            .keepalives(true)
            .keepalives_idle(CLIENT_KEEPALIVE.0)
            .keepalives_interval(CLIENT_KEEPALIVE.1)
            .keepalives_retries(CLIENT_KEEPALIVE.2)
            .tcp_user_timeout(USER_TIMEOUT)
            .options(format!(
                "-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} \
                 -c tcp_keepalives_count={count} -c tcp_user_timeout={} \
                 -c statement_timeout={} -c idle_in_transaction_session_timeout=0 \
                 -c synchronous_commit=off -c standard_conforming_strings=on",
                USER_TIMEOUT.as_millis(),
                timeout.as_millis(),
            ));
        if let Some(pw) = &login.password {
            pg.password(pw);
        }
        let connect_error = |source| SessionError::Connect {
            addr: addr.clone(),
            source,
        };
        let (client, mut connection) = tokio::time::timeout(connect_timeout, pg.connect(NoTls))
            .await
            .map_err(|_| SessionError::Timeout {
                addr: addr.clone(),
                after: connect_timeout,
            })?
            .map_err(connect_error)?;
        let (tx, closed) = oneshot::channel();
        let node = addr.clone();
        tokio::spawn(async move {
            // Messages the server sends unasked: notices, and the fleet's
            // writes once the session listens.
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => writes.heard(&n),
                    Some(Ok(AsyncMessage::Notice(n))) => {
                        tracing::debug!(node = %node, notice = %n.message(), "fleet session notice")
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(node = %node, %error, "fleet coordinator connection lost");
                        break;
                    }
                    None => break,
                }
            }
            let _ = tx.send(());
        });
        let mut session = Session {
            addr: addr.clone(),
            client: Arc::new(client),
            pid: 0,
            key: identity.key,
            timeout,
            closed,
        };
        let pid = session
            .bounded(async {
                let row = session
                    .client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await?;
                // A role-level idle_session_timeout (PG 14+) would end the
                // session, and with it the member's slots, every so often.
                session
                    .client
                    .batch_execute(
                        "SELECT set_config('idle_session_timeout', '0', false) \
                         WHERE current_setting('server_version_num')::int >= 140000",
                    )
                    .await?;
                Ok(row.get::<_, i32>(0))
            })
            .await?;
        session.pid = pid;
        Ok(session)
    }

    /// Every member of the fleet on this node, and the free slots.
    pub async fn look(&self, budget: u32) -> Result<Look, SessionError> {
        let rows = self
            .bounded(self.client.query(
                "SELECT l.pid, l.objid, l.mode = 'ExclusiveLock', coalesce(a.application_name, '') \
                 FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
                   AND l.classid = $1::int8::oid \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&i64::from(self.key)],
            ))
            .await?;
        let mut by_pid: std::collections::BTreeMap<i32, (Seen, bool, String)> = Default::default();
        for row in rows {
            let pid: i32 = row.get(0);
            let obj: u32 = row.get(1);
            let exclusive: bool = row.get(2);
            let name: String = row.get(3);
            let entry = by_pid.entry(pid).or_insert_with(|| {
                (
                    Seen {
                        pid,
                        slots: BTreeSet::new(),
                        wanting: false,
                    },
                    false,
                    name,
                )
            });
            match (obj as i32, exclusive) {
                (PRESENCE, false) => entry.1 = true,
                (WANT, false) => entry.0.wanting = true,
                (slot, true) if slot >= 0 => {
                    entry.0.slots.insert(slot as u32);
                }
                _ => {}
            }
        }
        let mut look = Look {
            free: (0..budget).collect(),
            ..Look::default()
        };
        // Slots held by a session without presence (one that is ending)
        // are not free either.
        for (seen, _, _) in by_pid.values() {
            for s in &seen.slots {
                look.free.remove(s);
            }
        }
        for (pid, (seen, present, name)) in by_pid {
            if present {
                look.members.push(seen);
                look.names.push((pid, name));
            }
        }
        Ok(look)
    }

    /// Tries to lock each of `slots`; returns those it got.
    pub async fn take(&self, slots: &[u32]) -> Result<Vec<u32>, SessionError> {
        let slots: Vec<i32> = slots.iter().map(|s| *s as i32).collect();
        let rows = self
            .bounded(self.client.query(
                "SELECT s FROM unnest($2::int4[]) s WHERE pg_try_advisory_lock($1, s)",
                &[&self.key, &slots],
            ))
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
    }

    /// Unlocks `slots`.
    pub async fn give_back(&self, slots: &[u32]) -> Result<(), SessionError> {
        let slots: Vec<i32> = slots.iter().map(|s| *s as i32).collect();
        self.bounded(self.client.query(
            "SELECT pg_advisory_unlock($1, s) FROM unnest($2::int4[]) s",
            &[&self.key, &slots],
        ))
        .await?;
        Ok(())
    }

    /// Takes or drops the "want" lock.
    pub async fn set_want(&self, want: bool) -> Result<(), SessionError> {
        let sql = if want {
            "SELECT pg_try_advisory_lock_shared($1, $2)"
        } else {
            "SELECT pg_advisory_unlock_shared($1, $2)"
        };
        self.bounded(self.client.query(sql, &[&self.key, &WANT]))
            .await?;
        Ok(())
    }

    /// How many of `pids` are still backends on the node.
    pub async fn alive(&self, pids: &[i32]) -> Result<i64, SessionError> {
        if pids.is_empty() {
            return Ok(0);
        }
        let row = self
            .bounded(self.client.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            ))
            .await?;
        Ok(row.get(0))
    }

    /// LISTENs on `channel` (the fleet's writes); returns the node's WAL
    /// geometry, for the positions announcements report.
    pub async fn listen(&self, channel: &str) -> Result<WalGeometry, SessionError> {
        let row = self
            .bounded(async {
                self.client
                    .batch_execute(&format!("LISTEN {channel}"))
                    .await?;
                self.client
                    .query_one(
                        "SELECT current_setting('wal_block_size')::int8, \
                         pg_size_bytes(current_setting('wal_segment_size'))",
                        &[],
                    )
                    .await
            })
            .await?;
        Ok(WalGeometry::new(row.get(0), row.get(1)).unwrap_or_default())
    }

    /// Publishes `application_name` (with the open connection count).
    pub async fn publish(&self, application_name: &str) -> Result<(), SessionError> {
        self.bounded(self.client.query(
            "SELECT set_config('application_name', $1, false)",
            &[&application_name],
        ))
        .await?;
        Ok(())
    }

    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, SessionError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map_err(|source| SessionError::Query {
                addr: self.addr.clone(),
                source,
            }),
            Err(_) => Err(SessionError::Timeout {
                addr: self.addr.clone(),
                after: self.timeout,
            }),
        }
    }
}
