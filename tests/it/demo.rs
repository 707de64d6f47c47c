//! `pgsidecar demo` as a user runs it: the built binary starts its own
//! primary and replica, prints a `psql` line that works when pasted, shows
//! a live summary, and on Ctrl-C (SIGINT) exits 0 leaving no server and no
//! files behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pgsidecar::demo::PgBinaries;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Held by each test that starts a demo: one demo cluster at a time, so
/// these tests add one cluster's start-up load to the suite, not four.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts `pgsidecar demo` with `args`, stdout piped, stderr drained.
fn spawn_demo(args: &[&str]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
    cmd.arg("demo")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().expect("starting pgsidecar demo")
}

/// Reads stdout until a line containing `needle`; returns that line.
async fn line_with(lines: &mut Lines<BufReader<ChildStdout>>, needle: &str) -> String {
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("reading demo output") {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("pgsidecar demo exited without printing {needle:?}");
    });
    found
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} line within 2 minutes"))
}

/// Runs the pasted `PGPASSWORD=… psql …` line with `extra` arguments.
async fn run_pasted(line: &str, extra: &[&str]) -> std::process::Output {
    let mut words = line.split_whitespace();
    let password = words
        .next()
        .and_then(|w| w.strip_prefix("PGPASSWORD="))
        .unwrap_or_else(|| panic!("the line starts with PGPASSWORD=: {line}"));
    let program = words.next().expect("a program after PGPASSWORD");
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGPASSWORD", password)
        .env("LC_ALL", "C")
        .args(words)
        .args(extra)
        .stdin(Stdio::null());
    cmd.output().await.expect("running the pasted psql line")
}

/// Processes whose working directory is under `root` (a postmaster and its
/// children run in their data directory).
fn processes_under(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(root)
        {
            found.push(format!("{:?} in {}", entry.file_name(), cwd.display()));
        }
    }
    found
}

/// No process is left running in the removed cluster directory. A server
/// child may still be exiting right after its postmaster on a loaded
/// machine: one that stays 30 s is a leak.
async fn assert_no_processes_under(root: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_under(root);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes left in {}: {left:?}",
            root.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn demo_prints_a_working_psql_line_and_cleans_up_on_ctrl_c() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut child = spawn_demo(&["--port", "0", "--http-port", "0", "--interval", "1"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let data_line = line_with(&mut lines, "data directory: ").await;
    let root = PathBuf::from(data_line.split("data directory: ").nth(1).unwrap().trim());
    assert!(root.is_dir(), "{data_line}");
    let connect = line_with(&mut lines, "connect with: ").await;
    let pasted = connect
        .split("connect with: ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();

    // The pasted line works: the demo rows come back through pgsidecar.
    let out = run_pasted(
        &pasted,
        &["-X", "-At", "-c", "SELECT name FROM products ORDER BY id"],
    )
    .await;
    assert!(out.status.success(), "{pasted}: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "espresso\ncappuccino\nflat white\ncroissant\nbanana bread\n"
    );
    // A write goes through too.
    let out = run_pasted(
        &pasted,
        &["-X", "-c", "INSERT INTO products VALUES (6, 'tea', 1.90)"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");

    // The live summary names both nodes.
    let header = line_with(&mut lines, "clients connected: ").await;
    assert!(header.starts_with("-- "), "{header}");
    let primary = line_with(&mut lines, "primary ").await;
    assert!(primary.contains("transactions"), "{primary}");
    let replica = line_with(&mut lines, "replica ").await;
    assert!(replica.contains("lag"), "{replica}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let pid = child.id().expect("the demo is running") as i32;
    // SAFETY: sending SIGINT to the child we spawned and still own.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo exits within a minute of SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!root.exists(), "{} was not removed", root.display());
    assert_no_processes_under(&root).await;
}

#[tokio::test]
async fn demo_offers_the_admin_console_with_a_line_to_paste() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut child = spawn_demo(&["--port", "0", "--http-port", "0"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let data_line = line_with(&mut lines, "data directory: ").await;
    let root = PathBuf::from(data_line.split("data directory: ").nth(1).unwrap().trim());
    let connect = line_with(&mut lines, "connect with: ").await;
    let pasted = connect.split("connect with: ").nth(1).unwrap().trim();
    let admin = line_with(&mut lines, "admin console: ").await;
    let console = admin.split("admin console: ").nth(1).unwrap().trim();
    assert!(console.contains("-d pgsidecar"), "{admin}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // One query through the demo line, so its pool exists.
    let out = run_pasted(
        pasted,
        &["-X", "-At", "-c", "SELECT count(*) FROM products"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    // The console answers the printed line: nodes, and the demo's pools.
    let out = run_pasted(console, &["-X", "-At", "-F", "|", "-c", "SHOW NODES"]).await;
    assert!(out.status.success(), "{console}: {out:?}");
    let nodes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(nodes.lines().count(), 2, "primary and replica: {nodes}");
    assert!(
        nodes.contains("|primary|") && nodes.contains("|replica|"),
        "{nodes}"
    );
    let out = run_pasted(console, &["-X", "-At", "-F", "|", "-c", "SHOW POOLS"]).await;
    assert!(out.status.success(), "{out:?}");
    let pools = String::from_utf8_lossy(&out.stdout);
    assert!(
        pools.lines().any(|l| l.starts_with("demo|demo|")),
        "the demo database's pool: {pools}"
    );

    let pid = child.id().expect("the demo is running") as i32;
    // SAFETY: sending SIGINT to the child we spawned and still own.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo exits within a minute of SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!root.exists());
    assert_no_processes_under(&root).await;
}

#[tokio::test]
async fn demo_stops_by_itself_after_duration() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut child = spawn_demo(&["--port", "0", "--http-port", "0", "--duration", "1"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let data_line = line_with(&mut lines, "data directory: ").await;
    let root = PathBuf::from(data_line.split("data directory: ").nth(1).unwrap().trim());
    line_with(&mut lines, "--duration is over").await;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo exits after --duration")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!root.exists());
    assert_no_processes_under(&root).await;
}

#[tokio::test]
async fn demo_cleans_up_on_sigterm() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut child = spawn_demo(&["--port", "0", "--http-port", "0"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let data_line = line_with(&mut lines, "data directory: ").await;
    let root = PathBuf::from(data_line.split("data directory: ").nth(1).unwrap().trim());
    line_with(&mut lines, "connect with: ").await;
    let pid = child.id().expect("the demo is running") as i32;
    // SAFETY: sending SIGTERM to the child we spawned and still own.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    line_with(&mut lines, "got SIGTERM").await;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!root.exists());
    assert_no_processes_under(&root).await;
}

#[test]
fn demo_without_binaries_says_where_it_looked_and_how_to_install() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["demo", "--pg-bindir", "/nonexistent/pg/bin"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/pg/bin"), "{err}");
    assert!(err.contains("apt-get install -y postgresql"), "{err}");
    // The search itself (PATH, pg_config, /usr/lib/postgresql) finds the
    // binaries the other tests use.
    assert!(PgBinaries::locate().is_ok());
}
