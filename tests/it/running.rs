//! `pgsidecar run` as a child process, for what only a process shows:
//! signals (SIGHUP reload, SIGTERM/SIGINT shutdown), its log, its exit, and
//! two processes sharing a port.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// A running `pgsidecar run`; killed if still running when dropped.
pub struct Running {
    child: Child,
    pub port: u16,
    pub http_port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

/// A config file from [`config_text`] in a directory of its own, removed
/// when dropped (keep it while the proxy may reload it).
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
}

impl ConfigFile {
    /// Writes `config_text(listen, extra)` to a fresh `pgsidecar.toml`.
    pub fn new(listen: Option<u16>, extra: &str) -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgsidecar.toml");
        std::fs::write(&path, config_text(listen, extra)).unwrap();
        ConfigFile { _dir: dir, path }
    }
}

/// Starts `pgsidecar run --config path` and waits until it listens.
pub async fn start(path: &Path) -> Running {
    start_full(path, "info", None).await
}

/// [`start`] with `PGSIDECAR_LOG = filter`.
pub async fn start_logging(path: &Path, filter: &str) -> Running {
    start_full(path, filter, None).await
}

/// [`start`] with the open-file limit (RLIMIT_NOFILE) set to `nofile`.
pub async fn start_with_fd_limit(path: &Path, nofile: Option<u64>) -> Running {
    start_full(path, "info", nofile).await
}

async fn start_full(path: &Path, filter: &str, nofile: Option<u64>) -> Running {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
    if let Some(n) = nofile {
        // SAFETY: only setrlimit (async-signal-safe) runs in the child
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PGSIDECAR_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .args(["run", "--config"])
        .arg(path)
        .env("NO_COLOR", "1")
        .env("PGSIDECAR_LOG", filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning pgsidecar run");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (found_tx, found_rx) = tokio::sync::oneshot::channel();
    let mut found_tx = Some(found_tx);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let sink = log.clone();
    // Reads the whole log (so the child never blocks on a full pipe) and
    // reports the addresses from the "listening" line.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("pgsidecar listening")
                && let (Some(port), Some(http)) =
                    (port_after(&line, "addr="), port_after(&line, "http="))
                && let Some(tx) = found_tx.take()
            {
                let _ = tx.send((port, http));
            }
            sink.lock().unwrap().push(line);
        }
    });
    let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = errors.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let (port, http_port) = tokio::time::timeout(Duration::from_secs(30), found_rx)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "pgsidecar run did not log its address: {:?}",
                log.lock().unwrap()
            )
        })
        .unwrap_or_else(|_| panic!("pgsidecar run exited: {:?}", log.lock().unwrap()));
    Running {
        child,
        port,
        http_port,
        log,
    }
}

fn port_after(line: &str, key: &str) -> Option<u16> {
    let at = line.find(key)? + key.len();
    let addr: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    addr.rsplit_once(':')?.1.parse().ok()
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("still running") as i32;
        // SAFETY: signalling the child this test spawned and still owns.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), in bytes.
    pub fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
            * 1024
    }

    /// Log lines so far (stdout and stderr).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing every one of `needles`.
    pub async fn wait_for_log(&self, needles: &[&str]) -> String {
        crate::harness::eventually(
            &format!("a log line with {needles:?}"),
            Duration::from_secs(30),
            || async {
                self.log()
                    .into_iter()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
            },
        )
        .await
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "pgsidecar run still running after {limit:?}: {:?}",
                self.log()
            ),
        }
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// GET `path` from the HTTP listener; the body.
    pub async fn http_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port))
            .await
            .unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    }
}

/// A config file for `pgsidecar run` against the shared cluster: free
/// ports unless `listen` is given, the test roles, and `extra` TOML.
pub fn config_text(listen: Option<u16>, extra: &str) -> String {
    let cluster = crate::harness::cluster();
    let mut users = String::new();
    for role in crate::harness::PROXY_ROLES {
        users.push_str(&format!(
            "[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
            role.name,
            role.password.unwrap_or_default()
        ));
    }
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{}\"\n{extra_proxy}\
         [http]\nlisten = \"127.0.0.1:0\"\n{extra_http}\
         [cluster]\nprimary = \"{}\"\n{users}{rest}",
        listen.unwrap_or(0),
        cluster.primary().addr(),
        extra_proxy = section(extra, "proxy"),
        extra_http = section(extra, "http"),
        rest = without_section(&without_section(extra, "proxy"), "http"),
    )
}

/// The body of `[name]` in `toml` (the lines up to the next header).
fn section(toml: &str, name: &str) -> String {
    let header = format!("[{name}]");
    let mut out = String::new();
    let mut inside = false;
    for line in toml.lines() {
        if line.trim_start().starts_with('[') {
            inside = line.trim() == header;
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `toml` without its `[name]` section.
fn without_section(toml: &str, name: &str) -> String {
    let header = format!("[{name}]");
    let mut out = String::new();
    let mut inside = false;
    for line in toml.lines() {
        if line.trim_start().starts_with('[') {
            inside = line.trim() == header;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
