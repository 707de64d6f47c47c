//! One PostgreSQL server of a local cluster: where its files are, how to
//! reach it, and the single-node operations (psql, start, stop, restart,
//! apply delay). Operations spanning nodes live on `LocalCluster`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::binaries::PgBinaries;
use super::error::{ClusterError, Result};
use super::lifecycle::running_postmaster;
use super::options::{SUPERUSER, node_conf};
use super::poll::poll_until;
use super::runner::{RunAs, client_command, run};

/// What all nodes of one cluster share.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) bins: PgBinaries,
    pub(crate) run_as: RunAs,
    /// The cluster's temp dir; also the unix socket directory.
    pub(crate) root: PathBuf,
    pub(crate) timeout: Duration,
}

/// A server of the cluster. Its identity (name, port, directories) never
/// changes; whether it is a primary or a replica can (see
/// [`LocalCluster::promote`](super::LocalCluster::promote)).
#[derive(Debug)]
pub struct Node {
    name: String,
    port: u16,
    data_dir: PathBuf,
    log_file: PathBuf,
    env: Arc<Env>,
}

impl Node {
    /// A node `name` with its data dir and log under the cluster root.
    pub(crate) fn new(env: Arc<Env>, name: &str, port: u16) -> Self {
        let data_dir = env.root.join(name);
        let log_file = env.root.join(format!("{name}.log"));
        Node {
            name: name.to_string(),
            port,
            data_dir,
            log_file,
            env,
        }
    }

    /// The same node on another port (when the first one was taken).
    pub(crate) fn with_port(self, port: u16) -> Self {
        Node { port, ..self }
    }

    /// `node0` for the first primary, `node1`… for replicas. Also its
    /// `cluster_name`, i.e. its `application_name` in `pg_stat_replication`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, the form pgsidecar's `[cluster]` config takes.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (stderr of the postmaster).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// libpq / tokio-postgres connection string for `postgres` on the
    /// `postgres` database.
    pub fn conn_string(&self) -> String {
        self.conn_string_as(SUPERUSER, None, "postgres")
    }

    /// Connection string for `user` (with `password`, if any) on `dbname`.
    pub fn conn_string_as(&self, user: &str, password: Option<&str>, dbname: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname}",
            self.port
        );
        if let Some(pw) = password {
            s.push_str(&format!(
                " password='{}'",
                pw.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
        s
    }

    /// Runs `sql` with the real `psql -XAtq` as `postgres` on the `postgres`
    /// database; returns its output without the final newline.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_in("postgres", &[sql])
    }

    /// Runs each statement with its own `-c`, in one session, on `dbname`
    /// (separate `-c`s so statements like `CREATE DATABASE` or
    /// `ALTER SYSTEM`, which refuse transaction blocks, can follow a `SET`).
    pub fn psql_in(&self, dbname: &str, statements: &[&str]) -> Result<String> {
        let mut cmd = client_command(self.env.bins.psql());
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-U", SUPERUSER, "-d", dbname]);
        for s in statements {
            cmd.arg("-c").arg(s);
        }
        let out = run(&mut cmd)?;
        Ok(out.strip_suffix('\n').unwrap_or(&out).to_string())
    }

    /// The postmaster's pid (to SIGSTOP/SIGCONT it, for example).
    pub fn pid(&self) -> Result<u32> {
        let pid_file = self.data_dir.join("postmaster.pid");
        let text =
            fs::read_to_string(&pid_file).map_err(|e| ClusterError::io("read", &pid_file, e))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| {
                ClusterError::io(
                    "parse",
                    &pid_file,
                    std::io::Error::other("first line is not a pid"),
                )
            })
    }

    /// Whether its postmaster is running.
    pub fn is_running(&self) -> bool {
        running_postmaster(&self.data_dir).is_some()
    }

    /// `pg_is_in_recovery()`: true for a replica.
    pub fn is_in_recovery(&self) -> Result<bool> {
        self.bool_query("SELECT pg_is_in_recovery()")
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<()> {
        let mut cmd = self.pg_ctl("start");
        cmd.arg("-l").arg(&self.log_file);
        // pg_ctl itself only says "see the log": show the log instead.
        run(&mut cmd).map_err(|e| match e {
            ClusterError::CommandFailed { .. } => self.start_failed(),
            other => other,
        })?;
        Ok(())
    }

    /// Fast shutdown (clients disconnected, clean checkpoint), waited for.
    pub fn stop(&self) -> Result<()> {
        run(self.pg_ctl("stop").args(["-m", "fast"]))?;
        Ok(())
    }

    /// Stops (fast) and starts again.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    /// Asks this replica to become a primary (`pg_ctl promote -w`).
    pub(crate) fn request_promotion(&self) -> Result<()> {
        run(&mut self.pg_ctl("promote"))?;
        Ok(())
    }

    /// Sets `recovery_min_apply_delay` on this replica (ALTER SYSTEM + reload)
    /// and waits until new sessions see it.
    pub fn set_apply_delay(&self, delay: Duration) -> Result<()> {
        if !self.is_in_recovery()? {
            return Err(ClusterError::NotAReplica {
                node: self.name.clone(),
            });
        }
        let ms = delay.as_millis().to_string();
        let alter = format!("ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'");
        self.psql_in("postgres", &[&alter, "SELECT pg_reload_conf()"])?;
        let show = "SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'";
        poll_until(
            || format!("{} to apply recovery_min_apply_delay = {ms}ms", self.name),
            self.env.timeout,
            || Ok((self.psql(show)? == ms).then_some(())),
        )
    }

    /// The last `lines` lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Writes this node's `node.conf` (port, name, sockets, apply delay),
    /// which `postgresql.conf` includes last.
    pub(crate) fn write_node_conf(&self, apply_delay: Duration) -> Result<()> {
        let path = self.data_dir.join("node.conf");
        let socket_dir = self.env.root.to_string_lossy();
        fs::write(
            &path,
            node_conf(&self.name, self.port, &socket_dir, apply_delay),
        )
        .map_err(|e| ClusterError::io("write", &path, e))?;
        self.env.run_as.give(&path)
    }

    /// True when the last start failed because the port was taken.
    pub(crate) fn port_was_taken(&self) -> bool {
        let tail = self.log_tail(20);
        tail.contains("could not bind") || tail.contains("Address already in use")
    }

    pub(crate) fn start_failed(&self) -> ClusterError {
        ClusterError::StartFailed {
            node: self.name.clone(),
            log: self.log_file.clone(),
            tail: self.log_tail(20),
        }
    }

    pub(crate) fn bool_query(&self, sql: &str) -> Result<bool> {
        match self.psql(sql)?.as_str() {
            "t" => Ok(true),
            "f" => Ok(false),
            other => Err(ClusterError::UnexpectedAnswer {
                node: self.name.clone(),
                sql: sql.to_string(),
                answer: other.to_string(),
            }),
        }
    }

    fn pg_ctl(&self, action: &str) -> std::process::Command {
        let mut cmd = self
            .env
            .run_as
            .server_command(&self.env.bins.tool("pg_ctl"));
        let secs = self.env.timeout.as_secs().max(1).to_string();
        cmd.args([action, "-w", "-s", "-t", &secs, "-D"])
            .arg(&self.data_dir)
            .current_dir(&self.env.root);
        cmd
    }
}
