//! Reads, every [`REFRESH`], from the primary's catalog of each database
//! clients use, the foreign keys whose ON DELETE / ON UPDATE action writes
//! the referencing table and the partition and inheritance tree, and hands
//! them to the write log ([`Related`](crate::routing::related::Related)). One
//! connection per database, as the monitor's user, kept open; none while
//! no client uses a database.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use super::MonitorLogin;
use crate::config::{ConfigHandle, NodeAddr};
use crate::routing::related::{Edge, Relation};

/// How often the catalog is read: a foreign key or partition created less
/// than this long ago may not be covered yet.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Databases read at most (the first ones by name), so that a client
/// trying many database names cannot make the proxy open many connections.
const MAX_DATABASES: usize = 32;
/// `application_name` of these sessions, to spot them in `pg_stat_activity`.
const APPLICATION_NAME: &str = "pgsidecar-catalog";

/// Kind, then (schema, name) of the table written and of the table the
/// write reaches: `c` a referenced table and one whose foreign key acts on
/// it (cascade, set null, set default), `i` a parent and a partition or
/// inheritance child (indexes, which also have partitions, left out).
const EDGES_SQL: &str = "\
    WITH e (kind, a, b) AS ( \
      SELECT 'c', confrelid, conrelid FROM pg_catalog.pg_constraint \
       WHERE contype = 'f' \
         AND (confdeltype IN ('c', 'n', 'd') OR confupdtype IN ('c', 'n', 'd')) \
      UNION ALL \
      SELECT 'i', inhparent, inhrelid FROM pg_catalog.pg_inherits) \
    SELECT e.kind, na.nspname::text, ca.relname::text, nb.nspname::text, cb.relname::text \
      FROM e \
      JOIN pg_catalog.pg_class ca ON ca.oid = e.a \
      JOIN pg_catalog.pg_namespace na ON na.oid = ca.relnamespace \
      JOIN pg_catalog.pg_class cb ON cb.oid = e.b \
      JOIN pg_catalog.pg_namespace nb ON nb.oid = cb.relnamespace \
     WHERE ca.relkind IN ('r', 'p', 'f') AND cb.relkind IN ('r', 'p', 'f')";

/// Asks the running proxy for something.
pub type Ask<T> = Box<dyn Fn() -> T + Send + Sync>;
/// Hands every database's edges to the write log.
pub type Publish = Box<dyn Fn(&[Edge]) + Send + Sync>;

/// What the reader needs from the running proxy.
pub struct CatalogSources {
    pub config: ConfigHandle,
    /// The current primary, if any.
    pub primary: Ask<Option<NodeAddr>>,
    /// The databases clients use now.
    pub databases: Ask<Vec<String>>,
    /// Receives every database's edges whenever they changed.
    pub publish: Publish,
}

/// Starts the reader; it runs until the handle is aborted.
pub fn spawn(sources: CatalogSources) -> JoinHandle<()> {
    tokio::spawn(run(sources))
}

/// An open connection to one database of one node.
struct Conn {
    addr: NodeAddr,
    user: String,
    client: Client,
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

async fn run(sources: CatalogSources) {
    let mut conns: HashMap<String, Conn> = HashMap::new();
    let mut edges: HashMap<String, Vec<Edge>> = HashMap::new();
    let mut errors: HashMap<String, String> = HashMap::new();
    let mut published: Option<BTreeSet<EdgeKey>> = None;
    loop {
        let primary = (sources.primary)();
        let mut databases = (sources.databases)();
        databases.sort();
        databases.dedup();
        databases.truncate(MAX_DATABASES);
        // Dropping a client closes its connection.
        conns.retain(|db, c| databases.contains(db) && Some(&c.addr) == primary.as_ref());
        edges.retain(|db, _| databases.contains(db));
        if let Some(addr) = &primary {
            let config = sources.config.load_full();
            let login = MonitorLogin::from_config(&config);
            let timeout = config.cluster.connect_timeout;
            for db in &databases {
                match read(&mut conns, addr, &login, db, timeout).await {
                    Ok(found) => {
                        errors.remove(db);
                        edges.insert(db.clone(), found);
                    }
                    Err(e) => {
                        conns.remove(db);
                        let text = report(&e);
                        if errors.get(db) != Some(&text) {
                            tracing::warn!(node = %addr, database = &*crate::logsafe::name(db), user = %login.user, error = %crate::logsafe::message(&text),
                                "cannot read foreign keys and partitions: read-your-writes covers only the tables a write names");
                            errors.insert(db.clone(), text);
                        }
                    }
                }
            }
        }
        let all: Vec<Edge> = edges.values().flatten().cloned().collect();
        let key: BTreeSet<EdgeKey> = all.iter().map(EdgeKey::of).collect();
        if published.as_ref() != Some(&key) {
            (sources.publish)(&all);
            published = Some(key);
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// The edges of `db` on `addr`, over a connection opened if needed.
async fn read(
    conns: &mut HashMap<String, Conn>,
    addr: &NodeAddr,
    login: &MonitorLogin,
    db: &str,
    timeout: Duration,
) -> Result<Vec<Edge>, ReadError> {
    if conns
        .get(db)
        .is_some_and(|c| c.client.is_closed() || c.user != login.user)
    {
        conns.remove(db);
    }
    if !conns.contains_key(db) {
        let pg = login.pg_config(addr, db, APPLICATION_NAME, timeout);
        let (client, connection) = tokio::time::timeout(timeout, pg.connect(NoTls))
            .await
            .map_err(|_| ReadError::Timeout(timeout))??;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "catalog connection ended");
            }
        });
        let user = login.user.clone();
        let addr = addr.clone();
        conns.insert(db.to_string(), Conn { addr, user, client });
    }
    let Some(conn) = conns.get(db) else {
        return Ok(Vec::new());
    };
    let rows = tokio::time::timeout(timeout, conn.client.query(EDGES_SQL, &[]))
        .await
        .map_err(|_| ReadError::Timeout(timeout))??;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.try_get(0)?;
        let a = Relation {
            schema: row.try_get(1)?,
            name: row.try_get(2)?,
        };
        let b = Relation {
            schema: row.try_get(3)?,
            name: row.try_get(4)?,
        };
        out.push(match kind.as_str() {
            "c" => Edge::Cascade {
                referenced: a,
                referencing: b,
            },
            _ => Edge::Inherits {
                child: b,
                parent: a,
            },
        });
    }
    Ok(out)
}

fn report(e: &ReadError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An edge in a comparable form, to publish only what changed.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct EdgeKey(bool, Relation, Relation);

impl EdgeKey {
    fn of(e: &Edge) -> EdgeKey {
        match e {
            Edge::Cascade {
                referenced,
                referencing,
            } => EdgeKey(true, referenced.clone(), referencing.clone()),
            Edge::Inherits { child, parent } => EdgeKey(false, child.clone(), parent.clone()),
        }
    }
}
