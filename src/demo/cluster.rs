//! `LocalCluster`: a throwaway PostgreSQL primary with streaming replicas,
//! built from the installed binaries in a temp dir, for the integration
//! tests and `pgsidecar demo`.
//!
//! It is synchronous on purpose: it only drives `initdb`, `pg_ctl`,
//! `pg_basebackup` and `psql`, and a caller inside a tokio runtime can
//! use it from `spawn_blocking` or before the runtime starts.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::binaries::PgBinaries;
use super::error::{ClusterError, Result};
use super::lifecycle;
use super::node::{Env, Node};
use super::options::{self, ClusterOptions, ReplicaOptions, RoleSpec, SUPERUSER};
use super::poll::poll_until;
use super::runner::{RunAs, run};

/// How often a node's start is retried on a new port when its port was
/// taken between choosing it and the server binding it.
const PORT_ATTEMPTS: usize = 3;

/// A running primary and its streaming replicas. Dropping it stops every
/// server and removes its files; so does process exit for one kept in a
/// `static` (see the `lifecycle` module).
#[derive(Debug)]
pub struct LocalCluster {
    env: Arc<Env>,
    /// `nodes[0]` started as the primary, `nodes[i]` as replica `i - 1`.
    nodes: Vec<Node>,
    /// Index of the current primary; changes on [`promote`](Self::promote).
    primary: Mutex<usize>,
    databases_created: AtomicUsize,
}

impl LocalCluster {
    /// Creates and starts the cluster: `initdb`, configuration, primary
    /// start, roles, then each replica by `pg_basebackup -R`, each waited
    /// for until it streams.
    pub fn start(options: ClusterOptions) -> Result<Self> {
        options.validate()?;
        let bins = match options.binaries.clone() {
            Some(bins) => bins,
            None => PgBinaries::locate()?,
        };
        let run_as = RunAs::detect()?;
        let base = options.base_dir.clone().unwrap_or_else(std::env::temp_dir);
        let root = lifecycle::create_root(&base, run_as)?;
        let env = Arc::new(Env {
            bins,
            run_as,
            root,
            timeout: options.timeout,
        });
        // Built before anything can fail, so Drop cleans up a partial start.
        let mut cluster = LocalCluster {
            env,
            nodes: Vec::new(),
            primary: Mutex::new(0),
            databases_created: AtomicUsize::new(0),
        };
        cluster.start_primary(&options)?;
        cluster.create_roles(&options.roles)?;
        for (i, replica) in options.replicas.iter().enumerate() {
            cluster.start_replica(i + 1, replica)?;
        }
        Ok(cluster)
    }

    /// The binaries in use (bin directory, version).
    pub fn binaries(&self) -> &PgBinaries {
        &self.env.bins
    }

    /// Major version of the servers, e.g. 15.
    pub fn major_version(&self) -> u32 {
        self.env.bins.major()
    }

    /// The temp dir holding data dirs, logs and sockets.
    pub fn root_dir(&self) -> &Path {
        &self.env.root
    }

    /// All nodes, the first-started primary first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The current primary.
    pub fn primary(&self) -> &Node {
        &self.nodes[*crate::sync::lock(&self.primary)]
    }

    /// The `i`-th node started as a replica (stable across promotions).
    ///
    /// # Panics
    /// If the cluster was started with fewer than `i + 1` replicas.
    pub fn replica(&self, i: usize) -> &Node {
        self.nodes
            .get(i + 1)
            .unwrap_or_else(|| panic!("the cluster has no replica {i}"))
    }

    /// Every node but the current primary.
    pub fn replicas(&self) -> Vec<&Node> {
        let primary = self.primary().name();
        self.nodes.iter().filter(|n| n.name() != primary).collect()
    }

    /// Promotes `replica` and waits until it accepts writes. Other replicas
    /// keep following the old primary.
    pub fn promote(&self, replica: &Node) -> Result<()> {
        if !replica.is_in_recovery()? {
            return Err(ClusterError::NotAReplica {
                node: replica.name().to_string(),
            });
        }
        replica.request_promotion()?;
        poll_until(
            || format!("{} to leave recovery after promotion", replica.name()),
            self.env.timeout,
            || Ok((!replica.is_in_recovery()?).then_some(())),
        )?;
        let index = self.nodes.iter().position(|n| n.name() == replica.name());
        *crate::sync::lock(&self.primary) = index.expect("node belongs to this cluster");
        Ok(())
    }

    /// Waits until `replica` has replayed everything the primary had
    /// written when this was called. With an apply delay this takes at
    /// least that delay.
    pub fn wait_for_replay(&self, replica: &Node) -> Result<()> {
        let primary = self.primary();
        if replica.name() == primary.name() {
            return Err(ClusterError::NotAReplica {
                node: replica.name().to_string(),
            });
        }
        let target = primary.psql("SELECT pg_current_wal_lsn()")?;
        let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
        poll_until(
            || {
                format!(
                    "{} to replay up to {target} of {}",
                    replica.name(),
                    primary.name()
                )
            },
            self.env.timeout,
            || Ok(replica.bool_query(&caught_up)?.then_some(())),
        )
    }

    /// Creates database `name` on the primary and waits until the replicas
    /// connected to it have replayed it, so it exists everywhere on return.
    pub fn create_database(&self, name: &str) -> Result<()> {
        let primary = self.primary();
        primary.psql(&format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        ))?;
        let connected = primary.psql("SELECT application_name FROM pg_stat_replication")?;
        for replica in self.replicas() {
            if connected.lines().any(|app| app == replica.name()) {
                self.wait_for_replay(replica)?;
            }
        }
        Ok(())
    }

    /// Creates a database named `<prefix>_<n>`, unique in this cluster, as
    /// [`create_database`](Self::create_database) does; returns its name.
    pub fn fresh_database(&self, prefix: &str) -> Result<String> {
        let n = self.databases_created.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}_{n}");
        self.create_database(&name)?;
        Ok(name)
    }

    fn start_primary(&mut self, opts: &ClusterOptions) -> Result<()> {
        let node = Node::new(self.env.clone(), "node0", free_port()?);
        let mut initdb = self
            .env
            .run_as
            .server_command(&self.env.bins.tool("initdb"));
        initdb.arg("-D").arg(node.data_dir());
        initdb.args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(initdb.current_dir(&self.env.root))?;
        append(
            &node.data_dir().join("postgresql.conf"),
            &options::postgresql_conf(opts, self.major_version()),
        )?;
        let hba = node.data_dir().join("pg_hba.conf");
        std::fs::write(&hba, options::pg_hba_conf(&opts.roles))
            .map_err(|e| ClusterError::io("write", &hba, e))?;
        let node = start_on_free_port(node, Duration::ZERO)?;
        self.nodes.push(node);
        Ok(())
    }

    fn create_roles(&self, roles: &[RoleSpec]) -> Result<()> {
        let primary = self.primary();
        for role in roles {
            let sql = options::role_sql(role);
            primary.psql_in(
                "postgres",
                &sql.iter().map(String::as_str).collect::<Vec<_>>(),
            )?;
        }
        // Since PG 15 only the owner may create in `public`. Test roles need
        // to make tables in the databases the tests create; on a throwaway
        // cluster convenience beats least privilege. template1 is the
        // template of every new database.
        for db in ["template1", "postgres"] {
            primary.psql_in(db, &["GRANT ALL ON SCHEMA public TO PUBLIC"])?;
        }
        Ok(())
    }

    fn start_replica(&mut self, index: usize, opts: &ReplicaOptions) -> Result<()> {
        let node = Node::new(self.env.clone(), &format!("node{index}"), free_port()?);
        let primary_port = self.primary().port().to_string();
        let mut backup = self
            .env
            .run_as
            .server_command(&self.env.bins.tool("pg_basebackup"));
        backup.arg("-D").arg(node.data_dir());
        backup.args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port,
            "-U",
            SUPERUSER,
            "-w",
        ]);
        backup.args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run(backup.current_dir(&self.env.root))?;
        let node = start_on_free_port(node, opts.apply_delay)?;
        self.wait_streaming(&node)?;
        self.nodes.push(node);
        Ok(())
    }

    /// Polls until the primary lists `replica` as streaming and the replica
    /// reports it is in recovery.
    fn wait_streaming(&self, replica: &Node) -> Result<()> {
        let primary = self.primary();
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{}' AND state = 'streaming'",
            replica.name()
        );
        poll_until(
            || {
                format!(
                    "{} to stream from {} (see {})",
                    replica.name(),
                    primary.name(),
                    replica.log_file().display()
                )
            },
            self.env.timeout,
            || Ok((primary.psql(&sql)? == "1" && replica.is_in_recovery()?).then_some(())),
        )
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        lifecycle::destroy(&self.env.root);
    }
}

/// Writes `node.conf` and starts `node`, moving it to a new port if its port
/// was taken in the meantime. Returns the node as started.
fn start_on_free_port(mut node: Node, apply_delay: Duration) -> Result<Node> {
    for attempt in 1..=PORT_ATTEMPTS {
        node.write_node_conf(apply_delay)?;
        match node.start() {
            Ok(()) => return Ok(node),
            Err(_) if attempt < PORT_ATTEMPTS && node.port_was_taken() => {
                node = node.with_port(free_port()?)
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// A port nobody listens on right now (the OS picks it for port 0).
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError::io("bind", "127.0.0.1:0", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| ClusterError::io("bind", "127.0.0.1:0", e))?
        .port();
    Ok(port)
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| ClusterError::io("open", path, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| ClusterError::io("append to", path, e))
}
