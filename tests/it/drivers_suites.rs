//! Two drivers' own test suites, unmodified (`tests/suites/`: psycopg 3.3.4's
//! `tests/`, node-postgres pg@8.23.0's integration tests), run through a
//! pgsidecar started here the way an application would use it: transaction
//! mode, reads routed to the shared replica, in front of a fresh database,
//! as the superuser `postgres` (the suites create extensions and roles).
//!
//! Deselected, each with its reason, from the lists in
//! `tests/suites/deselect/`: the tests no transaction pooler can pass
//! (`*.no-pooler.txt`), those that fail on a direct connection to the test
//! cluster too (`*.direct-fails.txt`), and, until their fixes land, those
//! that fail because of known pgsidecar bugs (`*.awaiting-fixes.txt`;
//! `PGSIDECAR_SUITES_AWAITING=run` runs them). Anything else that fails
//! fails the test, with the suite's output. pytest-timeout and a per-file
//! limit turn a hang into a failure.
//!
//! `.ci/run` installs the suites' dependencies (`tests/suites/.venv`,
//! `npm ci` in `tests/suites`); without them the tests say so and pass,
//! unless `PGSIDECAR_REQUIRE_DRIVERS` is set. The `*_direct` tests (ignored:
//! `cargo test --test it drivers_suites -- --ignored`) run the same
//! selection against the primary, to check `*.direct-fails.txt`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::drivers_external::missing;
use crate::harness;

/// Longest a whole suite may run (each test or file has a shorter limit).
const SUITE_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The `postgres` role's password at the proxy (the server trusts it).
const PASSWORD: &str = "suites-secret";

fn suites_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/suites")
}

/// Where a suite connects.
struct Target {
    port: u16,
    password: Option<&'static str>,
    db: String,
}

/// The deselect lists for `suite` (`psycopg`, `node-postgres`).
fn lists(suite: &str, through_proxy: bool) -> Vec<PathBuf> {
    let mut kinds = vec!["direct-fails"];
    if through_proxy {
        kinds.push("no-pooler");
        if std::env::var("PGSIDECAR_SUITES_AWAITING").as_deref() != Ok("run") {
            kinds.push("awaiting-fixes");
        }
    }
    kinds
        .into_iter()
        .map(|kind| suites_dir().join(format!("deselect/{suite}.{kind}.txt")))
        .collect()
}

/// Runs `program args` in `cwd` with `env` (and no other `PG*` variables),
/// panics with its output if it fails or outlives [`SUITE_TIMEOUT`].
async fn run(what: &str, program: &Path, args: &[String], cwd: &Path, env: &[(&str, String)]) {
    let mut cmd = tokio::process::Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("PG") || key_text.starts_with("PSYCOPG") {
            cmd.env_remove(&key);
        }
    }
    cmd.args(args)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(SUITE_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} ran longer than {SUITE_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("could not run {program:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    // The counts: the end of the suite's report.
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    eprintln!(
        "{what} passed in {:?}:\n{}",
        started.elapsed(),
        tail.join("\n")
    );
}

/// A proxy for the suites: transaction mode, reads routed to the shared
/// replica, `postgres` as its only user.
async fn suite_proxy() -> pgsidecar::proxy::Proxy {
    let config = format!(
        "{}[proxy]\npool_mode = \"transaction\"\n\
         [[users]]\nname = \"postgres\"\npassword = \"{PASSWORD}\"\n",
        harness::shared_replica_toml()
    );
    harness::proxy(&config).await
}

// ---- psycopg -------------------------------------------------------------

async fn psycopg(target: Target, through_proxy: bool) {
    let dir = suites_dir();
    let python = dir.join(".venv/bin/python");
    if !python.exists() {
        return missing(
            "tests/suites/.venv",
            "python3 -m venv tests/suites/.venv && \
             tests/suites/.venv/bin/pip install -r tests/suites/requirements.txt",
        );
    }
    let cache = tempfile::tempdir().unwrap();
    let mut dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        target.port, target.db
    );
    if let Some(pw) = target.password {
        dsn.push_str(&format!(" password={pw}"));
    }
    let mut args: Vec<String> = [
        "-m",
        "pytest",
        "tests",
        "-q",
        "-rfE",
        "-p",
        "pgsidecar_deselect",
        "-p",
        "no:randomly",
        // By psycopg's own markers: `slow` tests wait on purpose (sleeps,
        // timeouts; tests/README.rst's quick run leaves them out), `mypy`
        // ones type-check, `flakey` ones "may fail unpredictably" (pipeline
        // tests where "the server might get in pipeline aborted").
        "-m",
        "not slow and not mypy and not flakey",
        "--timeout",
        "60",
        // A hang in libpq's wait ignores the signal method: stop the run.
        "--timeout-method",
        "thread",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A fresh cache: conftest.py refuses to run after a run that died.
    args.push("-o".into());
    args.push(format!("cache_dir={}", cache.path().display()));
    args.push("--test-dsn".into());
    args.push(dsn);
    for list in lists("psycopg", through_proxy) {
        args.push("--deselect-list".into());
        args.push(list.display().to_string());
    }
    let what = if through_proxy {
        "psycopg's suite through pgsidecar"
    } else {
        "psycopg's suite on a direct connection"
    };
    let env = [
        ("PYTHONPATH", dir.display().to_string()),
        ("PYTHONDONTWRITEBYTECODE", "1".to_string()),
    ];
    run(what, &python, &args, &dir.join("psycopg"), &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_suite_through_pgsidecar() {
    let db = harness::fresh_db("suite_psycopg");
    let proxy = suite_proxy().await;
    let target = Target {
        port: proxy.addr.port(),
        password: Some(PASSWORD),
        db,
    };
    psycopg(target, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "checks psycopg.direct-fails.txt: run with --ignored"]
async fn psycopg_suite_direct() {
    let target = Target {
        port: harness::cluster().primary().port(),
        password: None,
        db: harness::fresh_db("suite_psycopg_direct"),
    };
    psycopg(target, false).await;
}

// ---- node-postgres -------------------------------------------------------

async fn node_postgres(target: Target, through_proxy: bool) {
    let dir = suites_dir();
    if !dir.join("node_modules/pg-protocol").exists() {
        return missing("tests/suites/node_modules", "cd tests/suites && npm ci");
    }
    let mut args = vec!["run-node-postgres.js".to_string()];
    for list in lists("node-postgres", through_proxy) {
        args.push("--deselect-list".into());
        args.push(list.display().to_string());
    }
    let mut env = vec![
        ("PGHOST", "127.0.0.1".to_string()),
        ("PGPORT", target.port.to_string()),
        ("PGUSER", "postgres".to_string()),
        ("PGDATABASE", target.db),
    ];
    if let Some(pw) = target.password {
        env.push(("PGPASSWORD", pw.to_string()));
    }
    let what = if through_proxy {
        "node-postgres's suite through pgsidecar"
    } else {
        "node-postgres's suite on a direct connection"
    };
    run(what, Path::new("node"), &args, &dir, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_suite_through_pgsidecar() {
    let db = harness::fresh_db("suite_node");
    let proxy = suite_proxy().await;
    let target = Target {
        port: proxy.addr.port(),
        password: Some(PASSWORD),
        db,
    };
    node_postgres(target, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "checks node-postgres.direct-fails.txt: run with --ignored"]
async fn node_postgres_suite_direct() {
    let target = Target {
        port: harness::cluster().primary().port(),
        password: None,
        db: harness::fresh_db("suite_node_direct"),
    };
    node_postgres(target, false).await;
}
