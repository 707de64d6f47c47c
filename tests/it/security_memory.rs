//! Memory a client can make the proxy hold is bounded: query statistics
//! in bytes (text per fingerprint and in all), and large messages by a
//! budget across all clients, with the memory given back afterwards.
//! Measured on a `pgsidecar run` process (/proc/PID/status).

use std::time::Duration;

use crate::harness::{self, APP};
use crate::running;
use crate::wire::{self, Raw};

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
    let conf = running::ConfigFile::new(
        None,
        "[observability]\nexplain = \"off\"\nmax_query_text = 16384\nmax_query_memory = 4194304\n",
    );
    let proxy = running::start(&conf.path).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_share_a_budget_and_their_memory_is_given_back() {
    let db = harness::fresh_db("sec_big_messages");
    let conf = running::ConfigFile::new(
        None,
        "[proxy]\nmax_message_size = 33554432\nmax_message_memory = 67108864\n\
             [pool]\ncheckout_timeout = \"60s\"\n[observability]\nexplain = \"off\"\n",
    );
    let proxy = running::start(&conf.path).await;
    let warm = client(proxy.port, &db).await;
    warm.simple_query("select 1").await.unwrap();
    let before = proxy.memory("VmRSS");

    // Eight clients send a 20 MB query each, all at once.
    let size = 20_000_000;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            let port = proxy.port;
            tokio::spawn(async move {
                let c = client(port, &db).await;
                let sql = format!("select length('{}')", "x".repeat(size));
                c.simple_query(&sql).await.map(|_| ()).map_err(|e| {
                    let db = e
                        .as_db_error()
                        .unwrap_or_else(|| panic!("an ErrorResponse, not {e:?}"));
                    (db.code().code().to_string(), db.message().to_string())
                })
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err((code, message)) => {
                assert_eq!(code, "53200", "{message}");
                assert!(message.contains("proxy.max_message_memory"), "{message}");
            }
        }
    }
    let peak = proxy.memory("VmHWM");
    eprintln!(
        "{ok} of 8 large queries ran; RSS {} MiB, peak {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(ok >= 1, "no large query got through");
    assert!(
        peak < before + 160 * MIB,
        "peak RSS {} MiB (from {} MiB)",
        peak / MIB,
        before / MIB
    );
    let settled = harness::eventually(
        "memory to be given back",
        Duration::from_secs(10),
        || async {
            let now = proxy.memory("VmRSS");
            (now < before + 32 * MIB).then_some(now)
        },
    )
    .await;
    eprintln!("RSS afterwards {} MiB", settled / MIB);
    // The budget is free again: one more large query runs.
    let c = client(proxy.port, &db).await;
    c.simple_query(&format!("select length('{}')", "y".repeat(size)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_message_over_the_budget_is_refused_at_its_header() {
    let db = harness::fresh_db("sec_budget_header");
    let proxy = harness::proxy(
        "[auth]\nclient_auth = \"trust\"\n\
         [proxy]\nmax_message_size = 134217728\nmax_message_memory = 16777216\n",
    )
    .await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, APP.name, &db).await;
    // A Query that says it is 20 MiB long; its body never comes.
    let mut header = vec![b'Q'];
    header.extend_from_slice(&(20u32 * 1024 * 1024).to_be_bytes());
    header.extend_from_slice(b"select ");
    raw.send(&header).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "53200", "{e:?}");
    assert!(e.message.contains("proxy.max_message_memory"), "{e:?}");
    // Below the budget the same proxy takes it.
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, APP.name, &db).await;
    raw.send(&wire::query(&format!(
        "select length('{}')",
        "z".repeat(4 << 20)
    )))
    .await;
    let (_, seen) = raw.until_ready().await;
    assert!(seen.iter().any(|(t, _)| *t == b'D'), "{seen:?}");
}
