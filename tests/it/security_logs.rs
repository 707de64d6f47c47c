//! Nothing a client sends reaches a log line unescaped or uncapped, no
//! password is ever logged, and a config error on a line that holds a
//! secret does not print that line (`check`, reload).

use std::path::Path;
use std::time::Duration;

use crate::harness::{self, APP};
use crate::observe_support::{Captured, capture};
use crate::wire::{self, Msg, PROTOCOL_3_0, Raw};

/// Longest log line a client can cause (names are capped well below).
const MAX_LINE: usize = 1500;

/// Every captured line is a real event line (it starts with the
/// timestamp), none is longer than [`MAX_LINE`], none holds `secret`.
fn assert_clean(log: &Captured, secrets: &[&str]) {
    let lines = log.lines();
    assert!(!lines.is_empty(), "nothing was logged");
    for line in &lines {
        assert!(
            line.starts_with(|c: char| c.is_ascii_digit()),
            "a forged or broken log line: {line:?}\nall: {lines:#?}"
        );
        assert!(
            line.len() <= MAX_LINE,
            "a log line of {} bytes: {}…",
            line.len(),
            &line[..200]
        );
        for s in secrets {
            assert!(
                !line.to_lowercase().contains(&s.to_lowercase()),
                "{s:?} was logged: {line}"
            );
        }
    }
}

#[tokio::test]
async fn a_password_sent_as_the_sasl_mechanism_is_never_logged_or_echoed() {
    let (log, _guard) = capture(false);
    let db = harness::fresh_db("sec_sasl_mech");
    let proxy = harness::proxy("").await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&wire::startup(
        PROTOCOL_3_0,
        &[("user", APP.name), ("database", &db)],
    ))
    .await;
    match raw.next().await {
        Msg::Frame(b'R', body) => assert_eq!(body[..4], 10i32.to_be_bytes()),
        other => panic!("expected a SASL request, got {other:?}"),
    }
    // A client that answers with its password where the mechanism goes,
    // with a forged log line after it.
    let mut body =
        b"hunter2-TOPSECRET\nINFO pgsidecar: config reloaded path=/etc/evil.toml".to_vec();
    body.push(0);
    body.extend_from_slice(&(-1i32).to_be_bytes());
    raw.send(&wire::message(b'p', &body)).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(!e.message.contains("TOPSECRET"), "echoed: {e:?}");
    harness::eventually(
        "the refusal to be logged",
        Duration::from_secs(10),
        || async { (!log.matching("client authentication failed").is_empty()).then_some(()) },
    )
    .await;
    assert_clean(&log, &["TOPSECRET", "evil.toml"]);
}

/// Logs in through `proxy` with a wrong password; the error's SQLSTATE.
async fn failed_login(proxy: &pgsidecar::proxy::Proxy, user: &str, db: &str, app: &str) -> String {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user(user)
        .dbname(db)
        .application_name(app)
        .password("not-the-password");
    let err = config
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password is refused");
    err.as_db_error()
        .map(|e| e.code().code().to_string())
        .unwrap_or_else(|| panic!("no server error: {err}"))
}

#[tokio::test]
async fn names_from_the_startup_packet_are_escaped_and_capped_in_log_lines() {
    let (log, _guard) = capture(false);
    let proxy = harness::proxy("").await;
    let forged = "\nINFO pgsidecar: config reloaded path=/etc/evil.toml\n";
    let long = "x".repeat(2500);
    let db = format!("db{forged}{long}");
    let app = format!("app\u{1b}[31m{forged}{long}");
    // A known user with a wrong password, and a user nobody configured.
    assert_eq!(failed_login(&proxy, APP.name, &db, &app).await, "28P01");
    let stranger = format!("nobody{forged}{}", "y".repeat(2500));
    assert_eq!(failed_login(&proxy, &stranger, &db, &app).await, "28P01");
    let lines = harness::eventually(
        "both refusals to be logged",
        Duration::from_secs(10),
        || async {
            let lines = log.matching("client authentication failed");
            (lines.len() >= 2).then_some(lines)
        },
    )
    .await;
    assert!(lines.iter().any(|l| l.contains("nobody\\n")), "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("db\\n")), "{lines:#?}");
    assert_clean(&log, &["not-the-password", "\u{1b}"]);
}

#[tokio::test]
async fn slow_query_lines_escape_what_the_client_wrote() {
    let (log, _guard) = capture(false);
    let db = harness::fresh_db("sec_slow_escape");
    let proxy =
        harness::proxy("[observability]\nslow_query_threshold = \"50ms\"\nexplain = \"off\"\n")
            .await;
    let mut config: tokio_postgres::Config = harness::proxy_conn_string(&proxy, APP, &db)
        .parse()
        .unwrap();
    config.application_name(format!("app\nINFO forged {}", "z".repeat(3000)));
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .simple_query("select pg_sleep(0.1) as \"col\nINFO pgsidecar: config reloaded\"")
        .await
        .unwrap();
    let line = harness::eventually("the slow-query line", Duration::from_secs(10), || async {
        log.matching("slow query").into_iter().next()
    })
    .await;
    assert!(line.contains("col\\n"), "{line}");
    assert_clean(&log, &[]);
}

const SECRET: &str = "s3cr3t-Hunter2";

/// Files with a mistake on (or near) a line that holds a password.
fn secret_mistakes() -> Vec<(&'static str, String)> {
    let head = "[cluster]\nprimary = \"db:5432\"\n\n[[users]]\nname = \"app\"\n";
    vec![
        (
            "unterminated string",
            format!("{head}password = \"{SECRET}\n"),
        ),
        ("bare word", format!("{head}password = {SECRET}\n")),
        (
            "not a string",
            format!("{head}password = 31415926{SECRET}\n"),
        ),
        (
            "a number",
            format!("{head}password = 3141592653\n").replace("3141592653", "98765432"),
        ),
        ("misspelled key", format!("{head}pasword = \"{SECRET}\"\n")),
        (
            "unterminated multi-line string",
            format!("{head}password = \"\"\"\n{SECRET}\n"),
        ),
        (
            "two password sources (a check after parsing)",
            format!("{head}password = \"{SECRET}\"\npassword_env = \"X\"\n"),
        ),
        (
            "secret in a table",
            format!("{head}password = {{ value = \"{SECRET}\" }}\n"),
        ),
    ]
}

#[test]
fn config_errors_do_not_print_a_line_that_holds_a_password() {
    for (what, text) in secret_mistakes() {
        let error = pgsidecar::config::Config::from_toml(&text, Path::new("p.toml"))
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"))
            .to_string();
        for secret in [SECRET, "98765432"] {
            assert!(!error.contains(secret), "{what}: printed: {error}");
        }
        assert!(error.contains("p.toml:"), "{what}: no file/line: {error}");
    }
}

#[test]
fn check_does_not_print_a_password_line_with_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let (_, text) = &secret_mistakes()[0];
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("PGSIDECAR_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert!(stderr.contains("pgsidecar.toml:6:"), "{stderr}");
    assert!(stderr.contains("password"), "names the key: {stderr}");
}

#[tokio::test]
async fn a_reload_does_not_log_a_password_line_with_a_syntax_error() {
    let (log, _guard) = capture(false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let proxy = harness::proxy("").await;
    let _ = proxy.shared.config_path.set(path.clone());
    let text = harness::proxy_config_text("").replace(
        "password = \"app-secret\"",
        &format!("password = \"{SECRET}"),
    );
    assert!(text.contains(SECRET));
    std::fs::write(&path, text).unwrap();
    let error = proxy.shared.reload_from_file().unwrap_err().to_string();
    assert!(!error.contains(SECRET), "{error}");
    let lines = log.matching("config reload refused");
    assert_eq!(lines.len(), 1, "{:#?}", log.lines());
    assert_clean(&log, &[SECRET]);
}
