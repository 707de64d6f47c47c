//! The HTTP endpoints cannot take the proxy's file descriptors from its
//! clients: requests whose headers do not arrive in time are closed, the
//! HTTP side holds at most `[http] max_connections` sockets and refuses new
//! ones when the process nears its open-file limit, so clients still log
//! in and /readyz still answers while hundreds of half-open sockets wait.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{self, APP};
use crate::running;

/// The status of `GET /readyz`, or `None` if the connection was refused
/// or closed without an answer.
async fn readyz(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_http_sockets_leave_clients_and_readyz_working() {
    flood_then_login_and_readyz(16).await;
}

/// With a cap above the open-file limit, the descriptor reserve is what
/// keeps clients logging in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_side_leaves_descriptors_to_clients_whatever_its_cap() {
    flood_then_login_and_readyz(10_000).await;
}

/// A proxy limited to 256 open files with `[http] max_connections =
/// max_http` gets 600 half-open requests; a client must still log in and
/// /readyz answer.
async fn flood_then_login_and_readyz(max_http: u32) {
    let db = harness::fresh_db("sec_http_slowloris");
    let conf = running::ConfigFile::new(
        None,
        &format!("[http]\nheader_timeout = \"1s\"\nmax_connections = {max_http}\n"),
    );
    let proxy = running::start_with_fd_limit(&conf.path, Some(256)).await;
    harness::eventually("a primary to be ready", Duration::from_secs(20), || async {
        (readyz(proxy.http_port).await == Some(200)).then_some(())
    })
    .await;

    // 600 requests that never finish their headers (more sockets than the
    // proxy may open).
    // (A connection the kernel's accept queue has no room for is given up.)
    let mut idle = Vec::new();
    for _ in 0..600 {
        let connect = TcpStream::connect(("127.0.0.1", proxy.http_port));
        if let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
            idle.push(s);
        }
    }
    eprintln!("{} half-open HTTP requests", idle.len());

    let login = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user={} password={} dbname={db}",
                proxy.port,
                APP.name,
                APP.password.unwrap()
            ),
            tokio_postgres::NoTls,
        ),
    )
    .await;
    let (client, conn) = match login {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("login refused: {e}; log: {:#?}", proxy.log()),
        Err(_) => panic!("login did not complete; log tail: {:#?}", tail(&proxy)),
    };
    tokio::spawn(conn);
    assert_eq!(
        harness::scalar(&client, "select 42")
            .await
            .unwrap()
            .as_deref(),
        Some("42")
    );
    harness::eventually("/readyz to answer", Duration::from_secs(20), || async {
        (readyz(proxy.http_port).await == Some(200)).then_some(())
    })
    .await;
    assert!(
        !proxy
            .log()
            .iter()
            .any(|l| l.contains("Too many open files")),
        "{:#?}",
        tail(&proxy)
    );
    drop(idle);
}

fn tail(proxy: &running::Running) -> Vec<String> {
    let log = proxy.log();
    log[log.len().saturating_sub(20)..].to_vec()
}
