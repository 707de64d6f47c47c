//! TLS: clients (psql with sslmode=require and verify-full) through a proxy
//! with a certificate, plaintext refused under tls_mode = "require", bytes
//! smuggled after an SSLRequest refused, and the proxy's own connections to
//! a Postgres with ssl=on under server_tls = "verify-full".

use std::path::{Path, PathBuf};

use pgsidecar::config::Config;
use pgsidecar::proxy::Proxy;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::harness::{self, APP};
use crate::private;
use crate::wire::{self, PROTOCOL_3_0, Raw, SSL_REQUEST};

/// A CA and a server certificate it signed (for localhost and 127.0.0.1),
/// as PEM files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn new_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: OpenSSL looks issuers up by name, and two test
    // CAs of the same name would fail as a bad signature, not as unknown.
    static CAS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("pgsidecar test CA {n}"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        dir,
    }
}

fn tls_proxy_config(pki: &Pki, extra: &str) -> Config {
    harness::proxy_config(&format!(
        "[proxy]\ntls_cert = {:?}\ntls_key = {:?}\n{extra}",
        pki.cert.display().to_string(),
        pki.key.display().to_string()
    ))
}

/// psql through `proxy` with `ssl` settings (key=value pairs); returns
/// (exit ok, stdout, stderr).
async fn psql_ssl(proxy: &Proxy, host: &str, db: &str, ssl: &str, sql: &str) -> (bool, String) {
    let conninfo = format!(
        "host={host} port={} user={} dbname={db} {ssl}",
        proxy.addr.port(),
        APP.name
    );
    let out = harness::pg_tool("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &conninfo,
            "-c",
            "\\conninfo",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", APP.password.unwrap())
        // cargo test puts the build's own library directories there; they
        // upset OpenSSL's certificate checks in psql ("EVP lib").
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .await
        .expect("running psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn psql_connects_with_sslmode_require_and_verify_full() {
    let pki = new_pki();
    let proxy = Proxy::start(tls_proxy_config(&pki, "")).await.unwrap();
    let db = harness::fresh_db("tls_psql");

    let (ok, out) = psql_ssl(
        &proxy,
        "127.0.0.1",
        &db,
        "sslmode=require",
        "SELECT 'over tls'",
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("SSL connection"), "psql reports TLS: {out}");
    assert!(out.contains("over tls"), "{out}");

    let verify = format!("sslmode=verify-full sslrootcert={}", pki.ca.display());
    let (ok, out) = psql_ssl(&proxy, "localhost", &db, &verify, "SELECT 'verified'").await;
    assert!(ok, "{out}");
    assert!(
        out.contains("SSL connection") && out.contains("verified"),
        "{out}"
    );

    // "allow" (the default with a certificate) still lets plaintext in.
    let (ok, out) = psql_ssl(
        &proxy,
        "127.0.0.1",
        &db,
        "sslmode=disable",
        "SELECT 'plain'",
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        !out.contains("SSL connection") && out.contains("plain"),
        "{out}"
    );

    // A CA that did not sign the proxy's certificate: psql refuses it.
    let other = new_pki();
    let wrong = format!("sslmode=verify-full sslrootcert={}", other.ca.display());
    let (ok, out) = psql_ssl(&proxy, "localhost", &db, &wrong, "SELECT 1").await;
    assert!(!ok, "a certificate from another CA was accepted: {out}");
    assert!(out.contains("certificate verify failed"), "{out}");
    drop(pki.dir);
}

#[tokio::test]
async fn tls_mode_require_refuses_plaintext_clients() {
    let pki = new_pki();
    let proxy = Proxy::start(tls_proxy_config(&pki, "tls_mode = \"require\"\n"))
        .await
        .unwrap();
    let db = harness::fresh_db("tls_require");

    let (ok, out) = psql_ssl(&proxy, "127.0.0.1", &db, "sslmode=disable", "SELECT 1").await;
    assert!(!ok, "plaintext was let in: {out}");
    assert!(out.contains("pgsidecar requires SSL"), "{out}");

    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&wire::startup(
        PROTOCOL_3_0,
        &[("user", "app"), ("database", &db)],
    ))
    .await;
    let e = raw.fatal().await;
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("28000", "pgsidecar requires SSL")
    );

    let (ok, out) = psql_ssl(&proxy, "127.0.0.1", &db, "sslmode=require", "SELECT 'ok'").await;
    assert!(ok && out.contains("SSL connection"), "{out}");
}

#[tokio::test]
async fn startup_bytes_sent_with_the_ssl_request_are_refused_when_tls_is_on() {
    let pki = new_pki();
    let proxy = Proxy::start(tls_proxy_config(&pki, "")).await.unwrap();
    let db = harness::fresh_db("tls_smuggle");
    // A man in the middle's trick: the plaintext StartupMessage rides in
    // the same packet as the SSLRequest, hoping to be read after the TLS
    // handshake as if it had been encrypted.
    let mut raw = Raw::connect(proxy.addr).await;
    let mut both = wire::startup(SSL_REQUEST, &[]);
    both.extend(wire::startup(
        PROTOCOL_3_0,
        &[("user", "app"), ("database", &db)],
    ));
    raw.send(&both).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(e.message.contains("unencrypted data after an SSL"), "{e:?}");
    raw.expect_closed().await;

    // Asked properly, the answer is 'S'.
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&wire::startup(SSL_REQUEST, &[])).await;
    assert_eq!(raw.read_bytes(1).await, b"S");
}

#[test]
fn tls_keys_are_validated_naming_the_key() {
    let refused = |text: &str| {
        Config::from_toml(
            &format!("[cluster]\nprimary = \"127.0.0.1:5432\"\n{text}"),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string()
    };
    let e = refused("[proxy]\ntls_mode = \"require\"\n");
    assert!(
        e.contains("proxy.tls_cert") && e.contains("needs tls_cert and tls_key"),
        "{e}"
    );
    let e = refused("[proxy]\ntls_cert = \"/x.pem\"\n");
    assert!(e.contains("proxy.tls_key"), "{e}");
    let e = refused("[proxy]\ntls_mode = \"sometimes\"\n");
    assert!(e.contains("tls_mode") || e.contains("sometimes"), "{e}");
    let e = refused("[cluster]\n");
    assert!(!e.is_empty());
    let e = Config::from_toml(
        "[cluster]\nprimary = \"127.0.0.1:5432\"\nserver_tls = \"verify-full\"\n",
        Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cluster.server_tls_ca_file"), "{e}");
}

#[tokio::test]
async fn a_missing_certificate_file_stops_the_proxy_from_starting() {
    let config = harness::proxy_config(
        "[proxy]\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
    );
    let e = Proxy::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("/nonexistent/cert.pem") && e.contains("proxy.tls_cert"),
        "{e}"
    );
}

/// The proxy logs into a Postgres with ssl=on over TLS, verifying its
/// certificate; a wrong CA or a server without TLS is refused.
#[tokio::test]
async fn server_connections_use_verified_tls() {
    let pki = new_pki();
    // The server runs as `postgres` and wants its key private to it.
    let server_dir = tempfile::tempdir().unwrap();
    let cert = server_dir.path().join("server.crt");
    let key = server_dir.path().join("server.key");
    std::fs::copy(&pki.cert, &cert).unwrap();
    std::fs::copy(&pki.key, &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(server_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for p in [server_dir.path(), &cert, &key] {
        private::give_to_postgres(p);
    }
    let cluster = private::cluster(
        0,
        &[
            ("ssl", "on"),
            ("ssl_cert_file", cert.to_str().unwrap()),
            ("ssl_key_file", key.to_str().unwrap()),
        ],
    )
    .await;
    let ca = format!("{:?}", pki.ca.display().to_string());

    let config = private::proxy_config(
        &cluster,
        false,
        &format!("[cluster]\nserver_tls = \"verify-full\"\nserver_tls_ca_file = {ca}\n"),
    );
    let proxy = Proxy::start(config).await.unwrap();
    let client = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .unwrap();
    let ssl = harness::scalar(
        &client,
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await
    .unwrap();
    assert_eq!(ssl.as_deref(), Some("true"), "the server connection is TLS");

    // Signed by another CA: no server connection, and the client is told.
    let other = new_pki();
    let config = private::proxy_config(
        &cluster,
        false,
        &format!(
            "[cluster]\nserver_tls = \"verify-full\"\nserver_tls_ca_file = {:?}\n",
            other.ca.display().to_string()
        ),
    );
    let proxy = Proxy::start(config).await.unwrap();
    let e = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .expect_err("an unverifiable server is refused");
    let text = harness::error_text(&e);
    assert!(text.contains("08006") && text.contains("TLS"), "{text}");

    // "require" against the shared cluster, which has no TLS.
    let proxy = harness::proxy("[cluster]\nserver_tls = \"require\"\n").await;
    let db = harness::fresh_db("tls_no_server_ssl");
    let e = harness::connect_proxy(&proxy, APP, &db)
        .await
        .expect_err("a server without TLS is refused under require");
    let text = harness::error_text(&e);
    assert!(text.contains("does not accept SSL"), "{text}");
}
