//! The `pgsidecar` binary: `check` validates a config (naming the key and
//! line of a mistake, masking passwords, printing the pool size), the
//! example config documents every key with its default, and `run` serves
//! clients until interrupted.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::{self, APP};

/// The binary with no `PGSIDECAR_*` variables from the caller's environment
/// (they would override the configs under test).
fn pgsidecar() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PGSIDECAR_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn check(path: &Path) -> Output {
    pgsidecar()
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("running pgsidecar check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const GOOD: &str = r#"[proxy]
listen = "127.0.0.1:7432"

[cluster]
primary = "db.internal:5432"

[[users]]
name = "app"
password = "hunter2-do-not-print"

[pool]
db_cores = 3
effective_spindle_count = 2
"#;

#[test]
fn check_names_a_misspelled_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let bad = GOOD.replace("db_cores = 3", "db_coers = 3");
    std::fs::write(&path, &bad).unwrap();
    let line = bad.lines().position(|l| l.starts_with("db_coers")).unwrap() + 1;

    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("db_coers"), "{err}");
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "names file and line {line}: {err}"
    );
    assert!(out.stdout.is_empty(), "nothing printed on stdout: {out:?}");
}

#[test]
fn check_refuses_a_bad_value_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(
        &path,
        GOOD.replace("[pool]\n", "[pool]\ncheckout_timeout = \"soon\"\n"),
    )
    .unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("checkout_timeout"), "{out:?}");
}

/// With `[fleet]`, `check` prints each node's budget: replicas count
/// `replica_db_cores`; a zero there is refused with its file and line.
#[test]
fn check_prints_the_primarys_and_the_replicas_fleet_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let fleet = GOOD
        .replace(
            "primary = \"db.internal:5432\"\n",
            "primary = \"db.internal:5432\"\nreplicas = [\"r1.internal:5432\"]\n",
        )
        .replace("db_cores = 3\n", "db_cores = 3\nreplica_db_cores = 1\n")
        + "[fleet]\nname = \"api\"\n";
    std::fs::write(&path, &fleet).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed = text(&out.stdout);
    // 3 * 2 + 2 on the primary, 1 * 2 + 2 on the replica.
    assert!(
        printed.contains(
            "budget per node for the whole fleet: primary 8, each replica 4; largest pool: 8"
        ),
        "{printed}"
    );
    assert!(printed.contains("replica_db_cores = 1"), "{printed}");

    let bad = fleet.replace("replica_db_cores = 1", "replica_db_cores = 0");
    std::fs::write(&path, &bad).unwrap();
    let line = bad
        .lines()
        .position(|l| l.starts_with("replica_db_cores"))
        .unwrap()
        + 1;
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("pool.replica_db_cores")
            && err.contains("must be greater than zero")
            && err.contains(&format!("{}:{line}", path.display())),
        "{err}"
    );
}

#[test]
fn check_names_a_missing_file() {
    let out = check(Path::new("/nonexistent/pgsidecar.toml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/pgsidecar.toml"),
        "{out:?}"
    );
}

#[test]
fn check_prints_the_effective_config_masked_and_the_pool_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(&path, GOOD).unwrap();

    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed = text(&out.stdout);
    assert!(!printed.contains("hunter2"), "password printed:\n{printed}");
    assert!(printed.contains("password = \"********\""), "{printed}");
    // 3 cores * 2 + 2 spindles
    assert!(
        printed.contains("# computed pool size per (database, user, node): 8"),
        "{printed}"
    );
    // The effective config is TOML with the defaults filled in.
    let effective: toml::Table = printed.parse().expect("check prints TOML");
    assert_eq!(
        effective["proxy"]["listen"].as_str(),
        Some("127.0.0.1:7432")
    );
    assert_eq!(
        effective["proxy"]["pool_mode"].as_str(),
        Some("transaction")
    );
    assert_eq!(effective["pool"]["checkout_timeout"].as_str(), Some("5s"));

    // PGSIDECAR_CONFIG stands in for --config.
    let out = pgsidecar()
        .arg("check")
        .env("PGSIDECAR_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), printed);
}

#[test]
fn the_example_config_sets_every_key_to_its_default() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/pgsidecar.toml");
    let out = pgsidecar()
        .args(["check", "--config"])
        .arg(&example)
        .env("PGSIDECAR_APP_PASSWORD", "from-the-environment")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let from_example: toml::Table = text(&out.stdout).parse().unwrap();

    // The same cluster and user with nothing else set: pure defaults.
    let dir = tempfile::tempdir().unwrap();
    let minimal = dir.path().join("minimal.toml");
    std::fs::write(
        &minimal,
        "[cluster]\nprimary = \"127.0.0.1:5432\"\n\
         [[users]]\nname = \"app\"\npassword_env = \"PGSIDECAR_APP_PASSWORD\"\n",
    )
    .unwrap();
    let out = pgsidecar()
        .args(["check", "--config"])
        .arg(&minimal)
        .env("PGSIDECAR_APP_PASSWORD", "from-the-environment")
        .output()
        .unwrap();
    let defaults: toml::Table = text(&out.stdout).parse().unwrap();
    assert_eq!(
        from_example, defaults,
        "conf/pgsidecar.toml must show the defaults"
    );

    // Every key of every section is written out in the example; the
    // [[users]] entry shows one password source and documents the others.
    let example_text = std::fs::read_to_string(&example).unwrap();
    for (section, value) in &defaults {
        if section == "users" {
            continue;
        }
        let table = value
            .as_table()
            .unwrap_or_else(|| panic!("[{section}] is a table"));
        let header = format!("[{section}]");
        let start = example_text
            .find(&format!("\n{header}\n"))
            .unwrap_or_else(|| panic!("{header} is missing from the example"));
        let body = &example_text[start + header.len() + 2..];
        let body = &body[..body.find("\n[").unwrap_or(body.len())];
        for key in table.keys() {
            assert!(
                body.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "{header} {key} is not set in conf/pgsidecar.toml"
            );
        }
    }
    for documented in [
        "[[users]]\nname = ",
        "password = ",
        "password_env = ",
        "password_file = ",
    ] {
        assert!(example_text.contains(documented), "{documented}");
    }
}

#[test]
fn version_and_help() {
    let out = pgsidecar().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("pgsidecar {}", env!("CARGO_PKG_VERSION"))
    );
    let out = pgsidecar().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for command in ["run", "check"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{help}"
        );
    }
}

#[tokio::test]
async fn run_serves_clients_until_interrupted() {
    let db = harness::fresh_db("cli_run");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [cluster]\nprimary = \"{}\"\n\
             [[users]]\nname = \"app\"\npassword = \"{}\"\n",
            harness::cluster().primary().addr(),
            APP.password.unwrap()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["run", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The log says where it listens (port 0 was asked for).
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("pgsidecar listening")
                && let Some(at) = line.find("addr=127.0.0.1:")
            {
                let digits: String = line[at + 15..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                return digits.parse::<u16>().unwrap();
            }
        }
        panic!("pgsidecar run exited without saying where it listens");
    })
    .await
    .expect("pgsidecar run logged its address");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let out = harness::psql(port, APP, &db, &["-At", "-c", "select 'via run'"]).await;
    assert_eq!(text(&out.stdout), "via run\n", "{out:?}");

    let pid = child.id().expect("running") as i32;
    // SAFETY: sending SIGINT to the child we spawned and still own.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("pgsidecar run exits on SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn check_applies_environment_overrides_and_says_where_values_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(&path, GOOD).unwrap();
    let out = pgsidecar()
        .args(["check", "--config"])
        .arg(&path)
        .env("PGSIDECAR_PROXY_LISTEN", "0.0.0.0:6432")
        .env(
            "PGSIDECAR_CLUSTER_REPLICAS",
            "replica-a:5432,replica-b:5432",
        )
        .env("PGSIDECAR_POOL_SIZE", "4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed = text(&out.stdout);
    assert!(
        printed.contains("listen = \"0.0.0.0:6432\"  # env PGSIDECAR_PROXY_LISTEN"),
        "{printed}"
    );
    assert!(
        printed.contains("primary = \"db.internal:5432\"  # file"),
        "{printed}"
    );
    assert!(
        printed.contains("pool_mode = \"transaction\"  # default"),
        "{printed}"
    );
    assert!(
        printed.contains("# computed pool size per (database, user, node): 4"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
    let effective: toml::Table = printed.parse().expect("still TOML");
    assert_eq!(
        effective["cluster"]["replicas"].as_array().map(Vec::len),
        Some(2)
    );

    // A bad value is refused naming the variable, and nothing is printed.
    let out = pgsidecar()
        .args(["check", "--config"])
        .arg(&path)
        .env("PGSIDECAR_ROUTING_MAX_REPLICA_LAG", "soonish")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("PGSIDECAR_ROUTING_MAX_REPLICA_LAG"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// Runs a command line as shown in the docs (`VAR=value … pgsidecar args…`)
/// in `dir`, with the binary under test standing in for `pgsidecar`.
fn run_as_shown(line: &str, dir: &Path) -> Output {
    let mut words = line.split_whitespace().peekable();
    let mut cmd = pgsidecar();
    while let Some((var, value)) = words.peek().and_then(|w| w.split_once('=')) {
        cmd.env(var, value);
        words.next();
    }
    let program = words.next().expect("a program");
    assert!(
        program.ends_with("pgsidecar"),
        "the line runs pgsidecar: {line}"
    );
    cmd.args(words)
        .current_dir(dir)
        .output()
        .expect("running the shown command")
}

#[test]
fn the_check_command_in_the_example_configs_header_works_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(repo.join("conf/pgsidecar.toml")).unwrap();
    let shown = example
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find(|l| l.contains("pgsidecar check"))
        .expect("the header shows a check command")
        .trim_start_matches('#')
        .trim();
    let out = run_as_shown(shown, repo);
    assert_eq!(out.status.code(), Some(0), "`{shown}`: {out:?}");
    // So does every line of the docs that checks the example.
    for page in ["README.md", "docs/configuration.md"] {
        let text = std::fs::read_to_string(repo.join(page)).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("pgsidecar check --config conf/pgsidecar.toml"))
            .collect();
        assert!(!lines.is_empty(), "{page} shows how to check the example");
        for shown in lines {
            let out = run_as_shown(shown, repo);
            assert_eq!(out.status.code(), Some(0), "{page}: `{shown}`: {out:?}");
        }
    }
}

#[test]
fn the_readmes_quick_start_check_works_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let toml_block = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README shows a minimal config");
    let shown = readme
        .lines()
        .find(|l| l.contains("pgsidecar check --config pgsidecar.toml"))
        .expect("README shows how to check it");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pgsidecar.toml"), toml_block).unwrap();
    let out = run_as_shown(shown, dir.path());
    assert_eq!(out.status.code(), Some(0), "`{shown}`: {out:?}");
}

/// `path:line:` of the first line of `text` starting with `prefix`.
fn place(path: &Path, text: &str, prefix: &str) -> String {
    let line = text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1;
    format!("{}:{line}:", path.display())
}

#[test]
fn check_names_the_line_of_a_value_refused_after_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let cases = [
        (
            GOOD.replace("[pool]\n", "[pool]\nsidecars = 0\n"),
            "sidecars = 0",
            "pool.sidecars",
        ),
        (
            format!("{GOOD}\n[observability]\nexplain_sample_rate = 1.5\n"),
            "explain_sample_rate",
            "observability.explain_sample_rate",
        ),
        (
            GOOD.replace(
                "password = \"hunter2-do-not-print\"",
                "password_env = \"PGSIDECAR_TEST_UNSET_PASSWORD\"",
            ),
            "password_env",
            "users[0].password_env",
        ),
        (
            GOOD.replace(
                "primary = \"db.internal:5432\"",
                "primary = \"db.internal:5432\"\nreplicas = [\"r1:5432\", \"r1:5432\"]",
            ),
            "replicas",
            "cluster.replicas[1]",
        ),
    ];
    for (body, line_prefix, key) in cases {
        std::fs::write(&path, &body).unwrap();
        let out = check(&path);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(key), "names {key}: {err}");
        let at = place(&path, &body, line_prefix);
        assert!(err.contains(&at), "names {at}: {err}");
    }
    // The same for a limit under [proxy].
    let body = GOOD.replace(
        "listen = \"127.0.0.1:7432\"\n",
        "listen = \"127.0.0.1:7432\"\nmax_message_size = 10\n",
    );
    std::fs::write(&path, &body).unwrap();
    let err = text(&check(&path).stderr);
    assert!(
        err.contains(&place(&path, &body, "max_message_size")) && err.contains("at least 1024"),
        "{err}"
    );
}

#[test]
fn check_names_the_config_file_and_key_of_an_unreadable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let body = GOOD.replace(
        "listen = \"127.0.0.1:7432\"\n",
        "listen = \"127.0.0.1:7432\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
    );
    std::fs::write(&path, &body).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    assert!(err.contains("proxy.tls_cert"), "{err}");
    let at = place(&path, &body, "tls_cert");
    assert!(
        err.contains(&at),
        "names the config file and line {at}: {err}"
    );
}

#[test]
fn check_says_why_a_missing_file_cannot_be_read_once() {
    let out = check(Path::new("/nonexistent/pgsidecar.toml"));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn check_of_a_file_without_a_primary_names_cluster_primary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    for body in ["", "[proxy]\nlisten = \"127.0.0.1:7432\"\n", "[cluster]\n"] {
        std::fs::write(&path, body).unwrap();
        let out = check(&path);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("[cluster] primary") && err.contains(&path.display().to_string()),
            "{body:?}: {err}"
        );
        assert!(!err.contains("missing field"), "{body:?}: {err}");
    }
}

/// Where `pgsidecar run`'s log goes in [`log_until_listening`].
enum LogTo {
    /// A pipe, as to a file, journald or a log collector.
    Pipe,
    /// A pseudo-terminal, as to someone watching it.
    Terminal,
}

/// Starts `pgsidecar run` (no server needed: it listens before it reaches
/// one) with its log sent to `to`, and returns the log up to the line
/// saying where it listens.
fn log_until_listening(to: LogTo, no_color: Option<&str>) -> String {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\nprimary = \"127.0.0.1:1\"\n\
         [[users]]\nname = \"app\"\npassword = \"x\"\n",
    )
    .unwrap();
    let mut cmd = pgsidecar();
    cmd.args(["run", "--config"])
        .arg(&path)
        .env_remove("NO_COLOR");
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let mut reader: Box<dyn Read + Send> = match to {
        LogTo::Pipe => {
            cmd.stdout(Stdio::piped());
            Box::new(std::io::empty())
        }
        LogTo::Terminal => {
            let (mut leader, mut follower) = (0, 0);
            // SAFETY: openpty writes two descriptors it opened into the
            // integers given; null name, termios and winsize are allowed.
            let rc = unsafe {
                libc::openpty(
                    &mut leader,
                    &mut follower,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
            // SAFETY: both descriptors were just opened and are owned here.
            let (leader, follower) =
                unsafe { (OwnedFd::from_raw_fd(leader), OwnedFd::from_raw_fd(follower)) };
            cmd.stdout(Stdio::from(follower));
            Box::new(std::fs::File::from(leader))
        }
    };
    cmd.stderr(Stdio::null());
    let mut child = cmd.spawn().expect("starting pgsidecar run");
    if let Some(stdout) = child.stdout.take() {
        reader = Box::new(stdout);
    }
    // The command holds the follower end; drop it so the leader sees the
    // end of output when the child exits.
    drop(cmd);
    let (chunks, arrived) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || chunks.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let found = loop {
        match arrived.recv_timeout(Duration::from_secs(30)) {
            Ok(chunk) => {
                log.extend(chunk);
                if text(&log).contains("pgsidecar listening") {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no `pgsidecar listening` line: {}", text(&log));
    text(&log)
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    const ESC: char = '\u{1b}';
    let piped = log_until_listening(LogTo::Pipe, None);
    assert!(
        !piped.contains(ESC),
        "escape codes in a log written to a pipe: {piped:?}"
    );
    let terminal = log_until_listening(LogTo::Terminal, None);
    assert!(
        terminal.contains(ESC),
        "a terminal gets colours: {terminal:?}"
    );
    let no_color = log_until_listening(LogTo::Terminal, Some("1"));
    assert!(
        !no_color.contains(ESC),
        "NO_COLOR is honoured: {no_color:?}"
    );
}
