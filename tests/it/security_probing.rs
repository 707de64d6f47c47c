//! A stranger cannot tell configured user names from others: an unknown
//! user goes through the same SCRAM exchange as a known one and fails
//! with the same error as a wrong password. And the limit on messages
//! before login is reported as what it is.

use crate::harness::{self, APP, TestRole};
use crate::wire::{self, ErrorFields, Msg, PROTOCOL_3_0, Raw};

/// A SCRAM proof of 32 zero bytes: well-formed, and wrong.
const WRONG_PROOF: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// What a client sees of one SCRAM attempt with a wrong password: the
/// mechanisms offered, the server-first message's salt and iteration
/// count, and the final error.
#[derive(Debug)]
struct Attempt {
    mechanisms: String,
    salt: String,
    iterations: String,
    error: ErrorFields,
}

async fn attempt(proxy: &pgsidecar::proxy::Proxy, user: &str, db: &str) -> Attempt {
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&wire::startup(
        PROTOCOL_3_0,
        &[("user", user), ("database", db)],
    ))
    .await;
    let mechanisms = match raw.next().await {
        Msg::Frame(b'R', body) if body[..4] == 10i32.to_be_bytes() => {
            String::from_utf8_lossy(&body[4..]).into_owned()
        }
        other => panic!("{user}: expected a SASL request, got {other:?}"),
    };
    let nonce = "rOprNGfwEbeRWgbNEkqO";
    let first = format!("n,,n=,r={nonce}");
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first.as_bytes());
    raw.send(&wire::message(b'p', &body)).await;
    let server_first = match raw.next().await {
        Msg::Frame(b'R', body) if body[..4] == 11i32.to_be_bytes() => {
            String::from_utf8_lossy(&body[4..]).into_owned()
        }
        other => panic!("{user}: expected SASLContinue, got {other:?}"),
    };
    let field = |k: &str| {
        server_first
            .split(',')
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {server_first}"))
            .to_string()
    };
    let server_nonce = field("r=");
    assert!(server_nonce.starts_with(nonce), "{server_first}");
    let last = format!("c=biws,r={server_nonce},p={WRONG_PROOF}");
    raw.send(&wire::message(b'p', last.as_bytes())).await;
    Attempt {
        mechanisms,
        salt: field("s="),
        iterations: field("i="),
        error: raw.fatal().await,
    }
}

#[tokio::test]
async fn an_unknown_user_fails_scram_exactly_like_a_wrong_password() {
    let db = harness::fresh_db("sec_probe");
    let proxy = harness::proxy("").await;
    let known = attempt(&proxy, APP.name, &db).await;
    let unknown = attempt(&proxy, "nobody_probe", &db).await;
    let again = attempt(&proxy, "nobody_probe", &db).await;
    let other = attempt(&proxy, "nobody_else", &db).await;
    assert_eq!(known.mechanisms, unknown.mechanisms);
    assert_eq!(known.iterations, unknown.iterations);
    assert_eq!(
        known.salt.len(),
        unknown.salt.len(),
        "{known:?} {unknown:?}"
    );
    // A salt that changed between attempts would give the stranger away.
    assert_eq!(unknown.salt, again.salt);
    assert_ne!(unknown.salt, other.salt);
    for (a, name) in [(&known, APP.name), (&unknown, "nobody_probe")] {
        assert_eq!(
            (a.error.severity.as_str(), a.error.code.as_str()),
            ("FATAL", "28P01")
        );
        assert_eq!(
            a.error.message,
            format!("password authentication failed for user \"{name}\"")
        );
    }

    // The same through a driver.
    let nobody = TestRole {
        name: "nobody",
        password: Some("whatever"),
        ..APP
    };
    let err = harness::connect_proxy(&proxy, nobody, &db)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("28P01"),
        "{err}"
    );
    // Asking for the console does not tell admins from others either.
    let wrong = TestRole {
        password: Some("wrong"),
        ..APP
    };
    let err = harness::connect_proxy(&proxy, wrong, pgsidecar::admin::DATABASE)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("28P01"),
        "{err}"
    );
}

#[tokio::test]
async fn the_limit_on_messages_before_login_is_named_as_such() {
    let db = harness::fresh_db("sec_prelogin_limit");
    let proxy = harness::proxy("").await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&wire::startup(
        PROTOCOL_3_0,
        &[("user", APP.name), ("database", &db)],
    ))
    .await;
    assert!(matches!(raw.next().await, Msg::Frame(b'R', _)));
    // A SASLInitialResponse claiming 20,000 bytes.
    let mut header = vec![b'p'];
    header.extend_from_slice(&20_000u32.to_be_bytes());
    raw.send(&header).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(!e.message.contains("max_message_size"), "{e:?}");
    assert!(e.message.contains("10000"), "{e:?}");
    assert!(e.message.contains("before"), "says which limit: {e:?}");
}
