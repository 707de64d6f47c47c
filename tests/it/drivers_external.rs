//! The Python and JavaScript driver suites (`tests/drivers/`) run against a
//! pgsidecar started here: transaction mode, `[pool] size = 2` (fewer
//! servers than the suites' clients), in front of a fresh database of the
//! shared cluster. Each suite is a child process that gets the proxy's
//! connection string in `PGSIDECAR_DSN`; its failures fail the test, with
//! the suite's output. `.ci/run` installs the drivers (a venv with pinned
//! requirements, `npm ci`); without them the test says so and passes, unless
//! `PGSIDECAR_REQUIRE_DRIVERS` is set (CI sets it), when it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{self, APP};

/// Longest a suite may run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// Passes with a message when the suite's tools are not installed, or
/// panics if CI asked for the driver suites.
pub(crate) fn missing(what: &str, install: &str) {
    let message = format!("{what} is not installed ({install}); driver suite skipped");
    if std::env::var_os("PGSIDECAR_REQUIRE_DRIVERS").is_some() {
        panic!("{message}, but PGSIDECAR_REQUIRE_DRIVERS is set");
    }
    eprintln!("SKIPPED: {message}");
}

/// Starts the proxy and a fresh database and runs `program args` in `cwd`
/// with the connection strings in its environment.
async fn run_suite(prefix: &str, program: &Path, args: &[&str], cwd: &Path) {
    let db = harness::fresh_db(prefix);
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let dsn = format!(
        "postgresql://{}:{}@127.0.0.1:{}/{db}",
        APP.name,
        APP.password.unwrap(),
        proxy.addr.port()
    );
    let direct = format!(
        "postgresql://postgres@127.0.0.1:{}/{db}",
        harness::cluster().primary().port()
    );
    let mut cmd = tokio::process::Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .current_dir(cwd)
        .env("PGSIDECAR_DSN", &dsn)
        .env("PGSIDECAR_DIRECT_DSN", &direct)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SUITE_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program:?} {args:?} ran longer than {SUITE_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("could not run {program:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program:?} {args:?} failed ({}) through the proxy:\n{text}",
        out.status
    );
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drivers_psycopg_and_asyncpg() {
    let dir = drivers_dir().join("python");
    let python = dir.join(".venv/bin/python");
    if !python.exists() {
        return missing(
            "tests/drivers/python/.venv",
            "python3 -m venv tests/drivers/python/.venv && \
             tests/drivers/python/.venv/bin/pip install -r tests/drivers/python/requirements.txt",
        );
    }
    run_suite(
        "drivers_python",
        &python,
        &["-m", "pytest", "-q", "-rfEs", "."],
        &dir,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_drivers_pg_and_postgres_js() {
    let dir = drivers_dir().join("js");
    if !dir.join("node_modules/pg").exists() || !dir.join("node_modules/postgres").exists() {
        return missing(
            "tests/drivers/js/node_modules",
            "cd tests/drivers/js && npm ci",
        );
    }
    // One file at a time, each with a proxy of its own: the DDL tests
    // count the servers of the pool of 2.
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".test.js"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.js in {dir:?}");
    for file in files {
        run_suite("drivers_js", Path::new("node"), &["--test", &file], &dir).await;
    }
}
