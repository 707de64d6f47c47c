//! Fixtures for the fleet tests: a private primary with a role for the
//! fleet's server connections (`fleet_app`, used by nothing else, so its
//! backends in `pg_stat_activity` are exactly the fleet's server
//! connections) and a non-superuser role without grants for the members'
//! monitor and coordinator sessions (`fleet_mon`); `pgsidecar run`
//! members, each with its own config and ports; a sampler that counts the
//! fleet's server connections every 20 ms; pgbench runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgsidecar::demo::{AuthMethod, ClusterOptions, LocalCluster, RoleSpec};
use tokio::task::JoinHandle;

use crate::harness;
use crate::running::{self, Running};

pub const APP_ROLE: &str = "fleet_app";
pub const APP_PASSWORD: &str = "fleet-app-pw";
pub const MON_ROLE: &str = "fleet_mon";
pub const MON_PASSWORD: &str = "fleet-mon-pw";

/// Fleet tests start several processes and pgbench with hundreds of
/// clients: one at a time, so they do not starve each other.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A primary (no replica) with the two roles and `dbs` databases owned by
/// `fleet_app`, each initialised by `pgbench -i`.
pub async fn cluster(dbs: &[&str]) -> LocalCluster {
    cluster_with_replicas(dbs, 0).await
}

/// [`cluster`] with `replicas` streaming replicas.
pub async fn cluster_with_replicas(dbs: &[&str], replicas: usize) -> LocalCluster {
    let options = ClusterOptions::default()
        .replicas(replicas)
        .role(RoleSpec::new(
            APP_ROLE,
            APP_PASSWORD,
            AuthMethod::ScramSha256,
        ))
        .role(RoleSpec::new(
            MON_ROLE,
            MON_PASSWORD,
            AuthMethod::ScramSha256,
        ))
        .setting("max_connections", "200");
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(options))
        .await
        .expect("cluster start task")
        .unwrap_or_else(|e| panic!("the fleet test cluster did not start: {e}"));
    for db in dbs {
        cluster
            .primary()
            .psql(&format!("CREATE DATABASE {db} OWNER {APP_ROLE}"))
            .expect("create database");
        let out = pgbench_cmd(cluster.primary().port(), db, &["-i", "-q"])
            .output()
            .await
            .expect("pgbench -i");
        assert!(out.status.success(), "pgbench -i: {out:?}");
    }
    cluster
}

/// A `pgsidecar run` member of fleet `t` in front of `cluster`'s primary,
/// with `[pool] budget = budget` and `extra` TOML appended.
pub struct Member {
    pub name: String,
    pub process: Running,
    _dir: tempfile::TempDir,
}

impl Member {
    pub async fn start(cluster: &LocalCluster, name: &str, budget: u32) -> Member {
        Member::start_with(cluster, name, budget, "30s").await
    }

    /// [`start`](Self::start) with `[pool] checkout_timeout`.
    pub async fn start_with(
        cluster: &LocalCluster,
        name: &str,
        budget: u32,
        checkout_timeout: &str,
    ) -> Member {
        let extra =
            format!("[pool]\nbudget = {budget}\ncheckout_timeout = \"{checkout_timeout}\"\n");
        Member::start_in(cluster, name, Some("t"), &extra).await
    }

    /// A member of fleet `fleet` (`None`: a sidecar in no fleet) in front of
    /// every node of `cluster` (its replicas too), with the `[pool]` and
    /// `[routing]` sections given in `extra`.
    pub async fn start_in(
        cluster: &LocalCluster,
        name: &str,
        fleet: Option<&str>,
        extra: &str,
    ) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("pgsidecar.toml");
        let replicas: Vec<String> = cluster
            .replicas()
            .iter()
            .map(|n| format!("\"{}\"", n.addr()))
            .collect();
        let fleet = fleet
            .map(|f| {
                format!("[fleet]\nname = \"{f}\"\ninstance = \"{name}\"\ninterval = \"100ms\"\n")
            })
            .unwrap_or_default();
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [cluster]\nprimary = \"{primary}\"\nreplicas = [{replicas}]\n\
             monitor_user = \"{MON_ROLE}\"\n\
             [[users]]\nname = \"{APP_ROLE}\"\npassword = \"{APP_PASSWORD}\"\n\
             [[users]]\nname = \"{MON_ROLE}\"\npassword = \"{MON_PASSWORD}\"\n\
             [admin]\nusers = [\"{MON_ROLE}\"]\n\
             {extra}{fleet}\
             [observability]\nexplain = \"off\"\n",
            primary = cluster.primary().addr(),
            replicas = replicas.join(", "),
        );
        std::fs::write(&path, text).unwrap();
        // The fleet's writes logged with wall-clock times (fleet_ryw).
        let process = running::start_logging(&path, "info,pgsidecar::fleet::writes=debug").await;
        Member {
            name: name.to_string(),
            process,
            _dir: dir,
        }
    }

    /// A tokio-postgres client through this member as `fleet_app`.
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        harness::connect(&format!(
            "host=127.0.0.1 port={} user={APP_ROLE} password={APP_PASSWORD} dbname={db}",
            self.port()
        ))
        .await
        .expect("connecting through a member")
    }

    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// `pgsidecar_pool_share` for `node`, from `/metrics`.
    pub async fn share(&self, node: &str) -> Option<u32> {
        gauge(
            &self.process.http_get("/metrics").await,
            "pgsidecar_pool_share",
            node,
        )
    }

    /// Kills the process with SIGKILL (no shutdown of any kind).
    pub fn kill(&mut self) {
        self.process.signal(libc::SIGKILL);
    }
}

/// The value of `name{node="node"}` in a metrics text.
pub fn gauge(metrics: &str, name: &str, node: &str) -> Option<u32> {
    let prefix = format!("{name}{{node=\"{node}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Starts members `m1`…`m{count}` with `budget` and waits until each
/// holds its floor on the primary.
pub async fn start_settled(cluster: &LocalCluster, count: usize, budget: u32) -> Vec<Member> {
    let mut members = Vec::new();
    for i in 1..=count {
        members.push(Member::start(cluster, &format!("m{i}"), budget).await);
    }
    settled(
        &members.iter().collect::<Vec<_>>(),
        &cluster.primary().addr(),
    )
    .await;
    members
}

/// Waits until every member holds at least its floor on `node`.
pub async fn settled(members: &[&Member], node: &str) {
    harness::eventually(
        "every member to hold its floor",
        Duration::from_secs(30),
        || async {
            for m in members {
                if m.share(node).await.unwrap_or(0) < 1 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// The sum of the members' shares on `node`.
pub async fn total_share(members: &[&Member], node: &str) -> u32 {
    let mut total = 0;
    for m in members {
        total += m.share(node).await.unwrap_or(0);
    }
    total
}

/// Counts the fleet's server connections (backends of `fleet_app`) every
/// 20 ms from a superuser session, until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Samples>,
}

/// What the sampler saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Samples {
    pub max: i64,
    pub samples: u64,
    /// Samples that could not be taken (the primary was restarting).
    pub missed: u64,
}

impl Sampler {
    pub fn start(cluster: &LocalCluster) -> Sampler {
        Sampler::start_on(cluster.primary().conn_string())
    }

    /// [`start`](Self::start) on the node of the superuser connection
    /// string `conn` (a replica's, to count the fleet's connections there).
    pub fn start_on(conn: String) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Samples::default();
            let mut client = None;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !flag.load(Ordering::SeqCst) {
                tick.tick().await;
                if client.is_none() {
                    client = harness::connect(&conn).await.ok();
                }
                let Some(c) = &client else {
                    seen.missed += 1;
                    continue;
                };
                let sql = format!(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE usename = '{APP_ROLE}' AND backend_type = 'client backend'"
                );
                match c.query_one(sql.as_str(), &[]).await {
                    Ok(row) => {
                        seen.max = seen.max.max(row.get::<_, i64>(0));
                        seen.samples += 1;
                    }
                    Err(_) => {
                        seen.missed += 1;
                        client = None;
                    }
                }
            }
            seen
        });
        Sampler { stop, task }
    }

    pub async fn stop(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("sampler task")
    }
}

/// pgbench from the installed Postgres binaries (not `harness::pg_tool`,
/// which would start the shared cluster these tests do not use).
fn pgbench_cmd(port: u16, db: &str, args: &[&str]) -> tokio::process::Command {
    static PGBENCH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let program = PGBENCH.get_or_init(|| {
        pgsidecar::demo::PgBinaries::locate()
            .map(|b| b.tool("pgbench"))
            .unwrap_or_else(|_| "pgbench".into())
    });
    let mut cmd = tokio::process::Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").stdin(std::process::Stdio::null());
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP_ROLE])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", APP_PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A pgbench run in the background.
pub struct Bench {
    child: tokio::process::Child,
    started: Instant,
    pub what: String,
}

/// What a finished pgbench run reported.
#[derive(Debug)]
pub struct BenchReport {
    pub success: bool,
    pub processed: Option<u64>,
    pub failed: Option<u64>,
    pub text: String,
}

impl Bench {
    /// `pgbench -n -c clients -T seconds` through `port` on `db`.
    pub fn start(port: u16, db: &str, clients: u32, seconds: u32) -> Bench {
        Bench::start_with(port, db, clients, seconds, &[])
    }

    /// [`start`](Self::start) with more pgbench options (`-S`: the
    /// built-in select-only script, reads a replica may serve).
    pub fn start_with(port: u16, db: &str, clients: u32, seconds: u32, more: &[&str]) -> Bench {
        let args = [
            "-n".to_string(),
            "-c".into(),
            clients.to_string(),
            "-j".into(),
            "2".into(),
            "-T".into(),
            seconds.to_string(),
        ];
        let args: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .chain(more.iter().copied())
            .collect();
        let child = pgbench_cmd(port, db, &args)
            .spawn()
            .expect("spawning pgbench");
        Bench {
            child,
            started: Instant::now(),
            what: format!(
                "pgbench -c {clients} -T {seconds} {} via port {port} on {db}",
                more.join(" ")
            ),
        }
    }

    pub async fn finish(self) -> BenchReport {
        let out = tokio::time::timeout(Duration::from_secs(120), self.child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{} still running after 2 min", self.what))
            .expect("pgbench output");
        let text = format!(
            "{}: {:.1}s\n{}{}",
            self.what,
            self.started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        BenchReport {
            success: out.status.success(),
            processed: number_after(&text, "number of transactions actually processed:"),
            failed: number_after(&text, "number of failed transactions:"),
            text,
        }
    }
}

impl BenchReport {
    /// Asserts it ran transactions and none failed.
    pub fn assert_clean(&self) {
        assert!(self.success, "pgbench failed:\n{}", self.text);
        assert!(self.processed.is_some_and(|n| n > 0), "{}", self.text);
        assert_eq!(self.failed.unwrap_or(0), 0, "{}", self.text);
        assert!(!self.text.contains("aborted"), "{}", self.text);
    }
}

fn number_after(text: &str, label: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(label))?;
    let digits: String = line[label.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
