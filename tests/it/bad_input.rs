//! Bad input from clients — unknown users and databases, old protocol
//! versions, HTTP, garbage, absurd lengths, oversized messages, SSL
//! negotiation abuse, unknown message types, a login that never finishes —
//! is answered with a clear error (or a clean close), and other clients of
//! the same proxy carry on.

use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::harness::{self, APP, TestRole};
use crate::wire::{self, Msg, PROTOCOL_3_0, Raw, SSL_REQUEST};

/// A proxy that lets `app` in without a password (so raw clients can log
/// in), a database, and a client already connected through the proxy.
async fn setup(extra_toml: &str) -> (pgsidecar::proxy::Proxy, String, Client) {
    let db = harness::fresh_db("bad_input");
    let proxy = harness::proxy(&format!("[auth]\nclient_auth = \"trust\"\n{extra_toml}")).await;
    let bystander = harness::connect_proxy(&proxy, APP, &db)
        .await
        .expect("bystander connects through the proxy");
    still_works(&bystander).await;
    (proxy, db, bystander)
}

/// The other client's session is unaffected.
async fn still_works(bystander: &Client) {
    let answer = harness::scalar(bystander, "SELECT 40 + 2")
        .await
        .expect("the other client's query still works");
    assert_eq!(answer.as_deref(), Some("42"));
}

#[tokio::test]
async fn an_unknown_user_gets_28000() {
    let (proxy, db, bystander) = setup("").await;
    let nobody = TestRole {
        name: "nobody",
        password: Some("whatever"),
        ..APP
    };
    let err = harness::connect_proxy(&proxy, nobody, &db)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
    let text = harness::error_text(&err);
    assert!(text.contains("\"nobody\""), "{text}");
    still_works(&bystander).await;
}

#[tokio::test]
async fn an_unknown_database_gets_the_servers_3d000() {
    let (proxy, _db, bystander) = setup("").await;
    let err = harness::connect_proxy(&proxy, APP, "no_such_database")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err}");
    let text = harness::error_text(&err);
    assert!(
        text.contains("database \"no_such_database\" does not exist"),
        "{text}"
    );
    still_works(&bystander).await;
}

#[tokio::test]
async fn protocol_version_2_gets_0a000() {
    let (proxy, db, bystander) = setup("").await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&wire::startup(
        0x0002_0000,
        &[("user", "app"), ("database", &db)],
    ))
    .await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "0A000", "{e:?}");
    assert!(e.message.contains("protocol"), "{e:?}");
    still_works(&bystander).await;
}

#[tokio::test]
async fn an_http_request_is_told_this_is_not_http() {
    let (proxy, _db, bystander) = setup("").await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(e.message.contains("not an HTTP server"), "{e:?}");
    still_works(&bystander).await;
}

#[tokio::test]
async fn random_bytes_get_an_error_or_a_clean_close() {
    let (proxy, _db, bystander) = setup("").await;
    // Deterministic "random" blobs (xorshift), so a failure can be replayed.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in [3usize, 8, 64, 1000, 20_000] {
        let blob: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut raw = Raw::connect(proxy.addr).await;
        // The proxy may close before reading everything: ignore write errors.
        let _ = raw.writer().write_all(&blob).await;
        // Hang up our side, as a confused client would; the proxy must end
        // the connection rather than wait for more.
        let _ = raw.writer().shutdown().await;
        let mut answers = Vec::new();
        loop {
            match raw.next().await {
                Msg::Closed => break,
                Msg::Frame(tag, body) => answers.push((tag, body)),
            }
        }
        assert!(
            answers.iter().all(|(tag, _)| *tag == b'E'),
            "{len} random bytes: only an ErrorResponse may come back, got {answers:?}"
        );
        still_works(&bystander).await;
    }
}

#[tokio::test]
async fn a_client_that_does_not_finish_logging_in_is_dropped_after_client_login_timeout() {
    // The bystander logs in first with the default deadline; a loaded
    // machine may take longer than 300 ms for that. Then the short one.
    let (proxy, db, bystander) = setup("").await;
    let mut config = (**proxy.shared.config.load()).clone();
    config.proxy.client_login_timeout = std::time::Duration::from_millis(300);
    proxy
        .shared
        .apply(config)
        .expect("a shorter login timeout applies");
    // Half a startup packet, then silence.
    let packet = wire::startup(PROTOCOL_3_0, &[("user", "app"), ("database", &db)]);
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&packet[..packet.len() / 2]).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "57P03", "{e:?}");
    assert!(
        e.message.contains("proxy.client_login_timeout") && e.message.contains("300ms"),
        "{e:?}"
    );
    still_works(&bystander).await;
}

#[tokio::test]
async fn a_startup_packet_claiming_2_gib_is_refused_at_once() {
    let (proxy, _db, bystander) = setup("").await;
    let mut raw = Raw::connect(proxy.addr).await;
    // Length 0x7fffffff, protocol 3.0, and nothing more: the answer must
    // come without the proxy waiting for (or buffering) the rest.
    raw.send(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(e.message.contains("startup packet length"), "{e:?}");
    still_works(&bystander).await;
}

#[tokio::test]
async fn a_message_claiming_2_gib_after_login_is_refused_at_once() {
    let (proxy, db, bystander) = setup("").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b's']).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(e.message.contains("max_message_size"), "{e:?}");
    still_works(&bystander).await;
}

#[tokio::test]
async fn a_message_over_max_message_size_gets_08p01_naming_the_limit() {
    let (proxy, db, bystander) = setup("[proxy]\nmax_message_size = 1048576\n").await;

    // Under the limit: fine.
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let half = format!("SELECT length('{}')", "x".repeat(512 * 1024));
    let length = harness::scalar(&client, &half).await.unwrap();
    assert_eq!(length, Some((512 * 1024).to_string()));

    // A 2 MiB query: refused with the limit named.
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    let big = wire::query(&format!("SELECT '{}'", "y".repeat(2 * 1024 * 1024)));
    let mut writer = raw.take_writer();
    // Write from a task: the proxy stops reading after the header, so the
    // write may never finish (or fail when the proxy closes).
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&big).await;
    });
    let e = raw.fatal().await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(
        e.message.contains("1048576") && e.message.contains("proxy.max_message_size"),
        "{e:?}"
    );
    write.await.unwrap();
    still_works(&bystander).await;
    still_works(&client).await;
}

#[tokio::test]
async fn bytes_sent_after_an_ssl_request_before_the_answer_are_refused() {
    let (proxy, db, bystander) = setup("").await;
    let mut raw = Raw::connect(proxy.addr).await;
    let mut both = wire::startup(SSL_REQUEST, &[]);
    both.extend(wire::startup(
        PROTOCOL_3_0,
        &[("user", "app"), ("database", &db)],
    ));
    raw.send(&both).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(e.message.contains("after an SSL"), "{e:?}");
    still_works(&bystander).await;
}

#[tokio::test]
async fn an_ssl_request_is_declined_and_a_normal_startup_then_works() {
    let (proxy, db, bystander) = setup("").await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&wire::startup(SSL_REQUEST, &[])).await;
    assert_eq!(raw.read_bytes(1).await, b"N", "no TLS configured: 'N'");
    raw.send(&wire::startup(
        PROTOCOL_3_0,
        &[("user", "app"), ("database", &db)],
    ))
    .await;
    let (status, _) = raw.until_ready().await;
    assert_eq!(status, b'I');
    raw.send(&wire::query("SELECT 'through'")).await;
    let (_, seen) = raw.until_ready().await;
    let row = seen.iter().find(|(t, _)| *t == b'D').expect("a DataRow");
    assert!(row.1.ends_with(b"through"), "{seen:?}");
    still_works(&bystander).await;
}

#[tokio::test]
async fn an_unknown_message_type_after_login_gets_08p01() {
    let (proxy, db, bystander) = setup("").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&wire::message(b'y', b"")).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(e.message.contains("unexpected message 'y'"), "{e:?}");
    still_works(&bystander).await;
}
