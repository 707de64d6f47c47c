//! Whole client ↔ server exchanges: success, wrong password, protocol violations, pass-through.

use super::super::{MAX_ITERATIONS, ScramMessage, crypto};
use super::*;

/// Drives a server through client-first with `first` (a hand-written message),
/// then sends it a client-final built from `edit(c=…,r=…)` with a correct proof
/// for exactly that text, so only the edited attributes can make it fail.
fn server_with(first: &str, edit: impl Fn(String) -> String) -> Result<Vec<u8>, ScramError> {
    let verifier = fast_verifier("pw");
    let mut server = ScramServer::new(&verifier);
    let server_first = String::from_utf8(server.client_first(first.as_bytes())?).unwrap();
    let nonce = server_first
        .split(',')
        .next()
        .unwrap()
        .strip_prefix("r=")
        .unwrap();
    let binding = crypto::b64_encode(&first.as_bytes()[..3]);
    // Recompute a correct proof for this exact message, as an honest client would.
    let without_proof = edit(format!("c={binding},r={nonce}"));
    let bare = first.get(3..).unwrap();
    let salted = crypto::salted_password(b"pw", &verifier.salt, FAST_ITERATIONS);
    let (client_key, _) = crypto::client_and_server_key(&salted);
    let auth: [&[u8]; 5] = [
        bare.as_bytes(),
        b",",
        server_first.as_bytes(),
        b",",
        without_proof.as_bytes(),
    ];
    let signature = crypto::hmac(&verifier.stored_key, &auth);
    let proof = crypto::xor(&client_key, &signature);
    let client_final = format!("{without_proof},p={}", crypto::b64_encode(&proof));
    server.client_final(client_final.as_bytes())
}

#[test]
fn right_password_is_accepted() {
    let verifier = fast_verifier("correct horse");
    let server = run(Secret::password("correct horse"), &verifier).unwrap();
    assert!(server.is_done());
    assert!(server.client_key().is_some());
}

#[test]
fn wrong_password_is_invalid_proof() {
    let verifier = fast_verifier("correct horse");
    let mut client = ScramClient::new(Secret::password("wrong horse"));
    let mut server = ScramServer::new(&verifier);
    let server_first = server.client_first(&client.client_first()).unwrap();
    let client_final = client.server_first(&server_first).unwrap();
    let err = server.client_final(&client_final).unwrap_err();
    assert_eq!(err, ScramError::InvalidProof);
    assert_eq!(err.sqlstate(), "28P01");
    assert_eq!(server.client_key(), None);
    // The exchange is over: a retry is refused, not re-evaluated.
    assert!(matches!(
        server.client_final(&client_final),
        Err(ScramError::OutOfOrder { .. })
    ));
}

#[test]
fn y_flag_is_accepted_and_bound() {
    assert!(server_with("y,,n=,r=abc", |m| m).is_ok());
    assert!(server_with("n,,n=someone,r=abc,x=ext", |m| format!("{m},z=ext")).is_ok());
    // c= must echo the header actually sent.
    assert_eq!(
        server_with("y,,n=,r=abc", |m| m.replace("c=eSws", "c=biws")),
        Err(ScramError::ChannelBindingMismatch)
    );
    assert_eq!(
        server_with("n,,n=,r=abc", |m| m.replace("c=biws", "c=eSws")),
        Err(ScramError::ChannelBindingMismatch)
    );
}

#[test]
fn tampered_nonce_is_rejected() {
    let err = server_with("n,,n=,r=abc", |m| m.replace(",r=abc", ",r=abd")).unwrap_err();
    assert_eq!(
        err,
        ScramError::NonceMismatch {
            message: ScramMessage::ClientFinal
        }
    );
    let err = server_with("n,,n=,r=abc", |m| format!("{m}x")).unwrap_err();
    assert_eq!(
        err,
        ScramError::NonceMismatch {
            message: ScramMessage::ClientFinal
        }
    );

    // Client side: the server must extend our nonce.
    for server_first in ["r=other,s=c2FsdA==,i=4096", "r={n},s=c2FsdA==,i=4096"] {
        let mut client = ScramClient::new(Secret::password("pw"));
        let first = String::from_utf8(client.client_first()).unwrap();
        let nonce = first.rsplit_once("r=").unwrap().1;
        let msg = server_first.replace("{n}", nonce);
        assert_eq!(
            client.server_first(msg.as_bytes()),
            Err(ScramError::NonceMismatch {
                message: ScramMessage::ServerFirst
            })
        );
    }
}

#[test]
fn channel_binding_and_authzid_are_refused() {
    let mut server = ScramServer::new(&fast_verifier("pw"));
    let err = server
        .client_first(b"p=tls-server-end-point,,n=,r=abc")
        .unwrap_err();
    assert_eq!(
        err,
        ScramError::ChannelBindingUnsupported {
            cb_name: "tls-server-end-point".into()
        }
    );
    assert!(err.to_string().contains("tls-server-end-point"));
    let mut server = ScramServer::new(&fast_verifier("pw"));
    assert_eq!(
        server.client_first(b"n,a=admin,n=,r=abc"),
        Err(ScramError::AuthzidUnsupported)
    );
    let mut server = ScramServer::new(&fast_verifier("pw"));
    assert!(matches!(
        server.client_first(b"n,,m=ext,n=,r=abc"),
        Err(ScramError::Malformed {
            message: ScramMessage::ClientFirst,
            ..
        })
    ));
}

#[test]
fn calls_out_of_order_are_refused() {
    let mut server = ScramServer::new(&fast_verifier("pw"));
    assert!(matches!(
        server.client_final(b"c=biws,r=a,p=x"),
        Err(ScramError::OutOfOrder { .. })
    ));
    server.client_first(b"n,,n=,r=abc").unwrap();
    assert!(matches!(
        server.client_first(b"n,,n=,r=abc"),
        Err(ScramError::OutOfOrder { .. })
    ));

    let client = ScramClient::new(Secret::password("pw"));
    assert!(matches!(
        client.server_final(b"v=x"),
        Err(ScramError::OutOfOrder { .. })
    ));
}

#[test]
fn client_checks_iterations_and_server_final() {
    let first_for = |client: &ScramClient, iterations: u32| {
        let first = String::from_utf8(client.client_first()).unwrap();
        let nonce = first.rsplit_once("r=").unwrap().1.to_owned();
        format!("r={nonce}srv,s=c2FsdA==,i={iterations}")
    };
    for iterations in [0, MAX_ITERATIONS + 1, u32::MAX] {
        let mut client = ScramClient::new(Secret::password("pw"));
        let msg = first_for(&client, iterations);
        assert_eq!(
            client.server_first(msg.as_bytes()),
            Err(ScramError::IterationCount {
                iterations,
                max: MAX_ITERATIONS
            })
        );
    }

    let mut client = ScramClient::new(Secret::password("pw"));
    let msg = first_for(&client, 2);
    client.server_first(msg.as_bytes()).unwrap();
    assert_eq!(
        client.server_final(b"e=invalid-proof"),
        Err(ScramError::ServerError("invalid-proof".into()))
    );
    let forged = format!("v={}", crypto::b64_encode(&[0u8; 32]));
    assert_eq!(
        client.server_final(forged.as_bytes()),
        Err(ScramError::InvalidServerSignature)
    );
}

#[test]
fn server_with_other_verifier_is_detected_by_client() {
    // Same password, but the "server" signs with a different ServerKey.
    let mut verifier = fast_verifier("pw");
    verifier.server_key[0] ^= 1;
    assert_eq!(
        run(Secret::password("pw"), &verifier).err(),
        Some(ScramError::InvalidServerSignature)
    );
}

#[test]
fn pass_through_keys_log_in_with_same_verifier() {
    let verifier = ScramVerifier::from_password("app-password");
    // A client logs into the proxy...
    let proxy_side = run(Secret::password("app-password"), &verifier).unwrap();
    let client_key = proxy_side.client_key().unwrap();
    // ...and the proxy logs into "Postgres", which stores the same verifier.
    let secret = Secret::pass_through(&verifier, client_key);
    let backend = run(secret.clone(), &verifier).unwrap();
    assert_eq!(backend.client_key(), Some(client_key));
    // Keys are reusable across exchanges (fresh nonces each time).
    assert!(run(secret, &verifier).is_ok());
}

#[test]
fn pass_through_keys_fail_against_other_verifiers() {
    let verifier = fast_verifier("pw");
    let client_key = run(Secret::password("pw"), &verifier)
        .unwrap()
        .client_key()
        .unwrap();
    let secret = Secret::pass_through(&verifier, client_key);

    // Same password, different salt or iteration count: detected before any proof is sent.
    let other_salt = ScramVerifier::with_salt("pw", b"another salt", FAST_ITERATIONS).unwrap();
    assert_eq!(
        run(secret.clone(), &other_salt).err(),
        Some(ScramError::PassThroughMismatch)
    );
    let other_count = ScramVerifier::with_salt("pw", &verifier.salt, FAST_ITERATIONS + 1).unwrap();
    assert_eq!(
        run(secret.clone(), &other_count).err(),
        Some(ScramError::PassThroughMismatch)
    );

    // Same salt and count, different password: the server rejects the proof.
    let other_password = ScramVerifier::with_salt("pw2", &verifier.salt, FAST_ITERATIONS).unwrap();
    assert_eq!(
        run(secret, &other_password).err(),
        Some(ScramError::InvalidProof)
    );
}
