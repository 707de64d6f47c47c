//! Memory a client can make the proxy hold is bounded: query statistics
//! in bytes (text per fingerprint and in all), and large messages by a
//! budget across all clients, with the memory given back afterwards.
//! Measured on a `pgsidecar run` process (/proc/PID/status).

use crate::harness::{self, APP};
use crate::running;

const MIB: u64 = 1024 * 1024;

async fn client(port: u16, db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={port} user={} password={} dbname={db}",
            APP.name,
            APP.password.unwrap()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_statistics_stay_bounded_in_bytes() {
    let db = harness::fresh_db("sec_digest_bytes");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(
        &path,
        running::config_text(
            None,
            "[observability]\nexplain = \"off\"\nmax_query_text = 16384\nmax_query_memory = 4194304\n",
        ),
    )
    .unwrap();
    let proxy = running::start(&path).await;
    let c = client(proxy.port, &db).await;
    for _ in 0..20 {
        c.simple_query("select 1").await.unwrap();
    }
    let before = proxy.memory("VmRSS");
    // 300 statements of 256 KiB, each its own fingerprint (the quoted
    // name is part of the shape; Postgres truncates it to 63 bytes).
    let padding = "a".repeat(256 * 1024);
    for i in 0..300 {
        c.simple_query(&format!("select 1 as \"q{i}_{padding}\""))
            .await
            .unwrap();
    }
    let after = proxy.memory("VmRSS");
    let report = proxy.http_get("/queries?limit=10000").await;
    eprintln!(
        "RSS {} MiB -> {} MiB, /queries {} bytes",
        before / MIB,
        after / MIB,
        report.len()
    );
    assert!(
        report.len() < 6 * MIB as usize,
        "/queries answered {} bytes",
        report.len()
    );
    assert!(
        after < before + 48 * MIB,
        "RSS grew from {} MiB to {} MiB",
        before / MIB,
        after / MIB
    );
    // Texts are cut at 16 KiB.
    let body = &report[report.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let queries = json["queries"].as_array().unwrap();
    eprintln!("{} fingerprints kept", queries.len());
    // 300 texts of 16 KiB do not fit in 4 MiB: the oldest were forgotten.
    assert!((10..300).contains(&queries.len()), "{}", queries.len());
    for q in queries {
        let text = q["query"].as_str().unwrap();
        if text.starts_with("select $1 as \"q") {
            assert!(text.len() <= 16384 && text.ends_with('…'), "{}", text.len());
        }
    }
}
