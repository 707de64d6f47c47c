//! Authentication on both sides of the proxy: clients log in with each
//! `[auth] client_auth` method (a wrong password gets 28P01), and the proxy
//! logs into Postgres with whatever the server asks of each role (MD5,
//! cleartext, SCRAM), from plaintext passwords or stored hashes.

use tokio_postgres::error::SqlState;

use crate::harness::{self, APP, MD5_USER, POSTGRES, PROXY_ROLES, PW_USER, TestRole};
use crate::wire::{self, Msg, PROTOCOL_3_0, Raw};

/// The authentication request code the proxy opens with for `role`.
async fn first_auth_request(proxy: &pgsidecar::proxy::Proxy, role: TestRole, db: &str) -> i32 {
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&wire::startup(
        PROTOCOL_3_0,
        &[("user", role.name), ("database", db)],
    ))
    .await;
    match raw.next().await {
        Msg::Frame(b'R', body) => i32::from_be_bytes(body[..4].try_into().unwrap()),
        other => panic!("expected an authentication request, got {other:?}"),
    }
}

async fn current_user(proxy: &pgsidecar::proxy::Proxy, role: TestRole, db: &str) -> String {
    let client = harness::connect_proxy(proxy, role, db)
        .await
        .unwrap_or_else(|e| panic!("{} via proxy: {}", role.name, harness::error_text(&e)));
    harness::scalar(&client, "SELECT current_user")
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn each_client_auth_method_checks_passwords() {
    let db = harness::fresh_db("client_auth");
    // (client_auth, the request code a client sees first)
    for (method, code) in [("password", 3), ("md5", 5), ("scram-sha-256", 10)] {
        let proxy = harness::proxy(&format!("[auth]\nclient_auth = \"{method}\"\n")).await;
        let bystander = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        for role in PROXY_ROLES {
            assert_eq!(
                first_auth_request(&proxy, role, &db).await,
                code,
                "{method}: request sent to {}",
                role.name
            );
            let wrong = TestRole {
                password: Some("not-the-password"),
                ..role
            };
            let err = harness::connect_proxy(&proxy, wrong, &db)
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                Some(&SqlState::INVALID_PASSWORD),
                "{method}, {}: {}",
                role.name,
                harness::error_text(&err)
            );
            assert!(
                harness::error_text(&err).contains(&format!(
                    "password authentication failed for user \"{}\"",
                    role.name
                )),
                "{}",
                harness::error_text(&err)
            );
            assert_eq!(current_user(&proxy, role, &db).await, role.name, "{method}");
            let answer = harness::scalar(&bystander, "SELECT 'still here'").await;
            assert_eq!(answer.unwrap().as_deref(), Some("still here"), "{method}");
        }
    }
}

#[tokio::test]
async fn trust_asks_no_password() {
    let db = harness::fresh_db("client_trust");
    let proxy = harness::proxy("[auth]\nclient_auth = \"trust\"\n").await;
    for role in PROXY_ROLES {
        assert_eq!(
            first_auth_request(&proxy, role, &db).await,
            0,
            "AuthenticationOk"
        );
        let anything = TestRole {
            password: Some("anything"),
            ..role
        };
        assert_eq!(current_user(&proxy, anything, &db).await, role.name);
    }
}

/// The shared cluster checks md5user by MD5, pwuser by cleartext, app by
/// SCRAM and trusts postgres (see
/// `cluster_smoke::each_role_logs_in_with_its_method`).
#[tokio::test]
async fn the_proxy_logs_into_postgres_with_each_server_method() {
    let db = harness::fresh_db("server_auth");
    let postgres = TestRole {
        password: Some("only-the-proxy-asks-for-this"),
        ..POSTGRES
    };
    let mut users = String::new();
    for role in [MD5_USER, PW_USER, APP, postgres] {
        users.push_str(&format!(
            "[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
            role.name,
            role.password.unwrap()
        ));
    }
    let proxy = harness::proxy(&users).await;
    for role in [MD5_USER, PW_USER, APP, postgres] {
        assert_eq!(current_user(&proxy, role, &db).await, role.name);
    }
}

#[tokio::test]
async fn the_proxy_can_hold_stored_hashes_instead_of_passwords() {
    let db = harness::fresh_db("stored_hashes");
    let su = harness::superuser().await;
    let stored = |role: &'static str| {
        let su = &su;
        async move {
            harness::scalar(
                su,
                &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"),
            )
            .await
            .unwrap()
            .unwrap()
        }
    };
    let scram = stored(APP.name).await;
    let md5 = stored(MD5_USER.name).await;
    assert!(scram.starts_with("SCRAM-SHA-256$"), "{scram}");
    assert!(md5.starts_with("md5"), "{md5}");
    let proxy = harness::proxy(&format!(
        "[[users]]\nname = \"app\"\npassword = \"{scram}\"\n\
         [[users]]\nname = \"md5user\"\npassword = \"{md5}\"\n"
    ))
    .await;
    // app: SCRAM with the client, then SCRAM with the server using the keys
    // learned from the client's proof. md5user: MD5 both ways.
    for role in [APP, MD5_USER] {
        assert_eq!(current_user(&proxy, role, &db).await, role.name);
        let wrong = TestRole {
            password: Some("not-the-password"),
            ..role
        };
        let err = harness::connect_proxy(&proxy, wrong, &db)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{}",
            role.name
        );
    }
}

#[tokio::test]
async fn a_stale_server_password_in_the_config_gets_the_servers_28p01() {
    let db = harness::fresh_db("stale_password");
    let proxy = harness::proxy(
        "[auth]\nclient_auth = \"trust\"\n\
         [[users]]\nname = \"pwuser\"\npassword = \"old-password\"\n\
         [[users]]\nname = \"app\"\npassword = \"app-secret\"\n",
    )
    .await;
    let err = harness::connect_proxy(&proxy, PW_USER, &db)
        .await
        .unwrap_err();
    let text = harness::error_text(&err);
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{text}");
    assert!(
        text.contains("password authentication failed for user \"pwuser\""),
        "{text}"
    );
    // Other users of the proxy are not affected.
    assert_eq!(current_user(&proxy, APP, &db).await, "app");
}

#[tokio::test]
async fn a_server_asking_for_a_password_the_proxy_lacks_is_explained() {
    let db = harness::fresh_db("missing_plaintext");
    let su = harness::superuser().await;
    let md5 = harness::scalar(
        &su,
        "SELECT 'md5' || md5('pw-secret' || 'pwuser')", // what an MD5 hash of pwuser's password looks like
    )
    .await
    .unwrap()
    .unwrap();
    // pwuser's server wants cleartext; a hash cannot answer that.
    let proxy = harness::proxy(&format!(
        "[[users]]\nname = \"pwuser\"\npassword = \"{md5}\"\n"
    ))
    .await;
    let err = harness::connect_proxy(&proxy, PW_USER, &db)
        .await
        .unwrap_err();
    let text = harness::error_text(&err);
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{text}");
    assert!(
        text.contains("asked user \"pwuser\" for a password")
            && text.contains("pgsidecar does not have a plaintext password for it"),
        "{text}"
    );
}
