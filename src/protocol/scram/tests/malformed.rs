//! Hostile and broken input: every entry point must return an error, never panic.

use super::*;

/// Byte strings that are not SCRAM messages: empty, binary, near misses.
fn garbage() -> Vec<Vec<u8>> {
    let mut cases: Vec<Vec<u8>> = [
        &b""[..],
        b",",
        b",,,,",
        b"=",
        b"n",
        b"n,",
        b"n,,",
        b"n,,n=",
        b"n,,n=,r=",
        b"n,,n=,r=a b",
        b"n,,r=abc",
        b"y,,n=,r=,",
        b"x,,n=,r=abc",
        b"p=",
        b"n,,n=,r=abc,=",
        b"n,,n=,r=abc,1=x",
        b"c=biws,r=abc",
        b"c=biws,r=abc,p=",
        b"c=biws,p=AAAA",
        b"c=!!!!,r=abc,p=AAAA",
        b"r=,s=,i=",
        b"r=abc,s=c2FsdA==,i=",
        b"r=abc,s=c2FsdA==,i=abc",
        b"v=",
        b"v=AAAA",
        b"e=",
        b"\xff\xfe\xfd",
        b"n,,n=\xff,r=abc",
        b"\0\0\0\0",
    ]
    .iter()
    .map(|c| c.to_vec())
    .collect();
    for len in [1, 7, 64, 300] {
        for _ in 0..20 {
            let mut bytes = vec![0u8; len];
            rand::fill(&mut bytes[..]);
            // The same randomness as printable text looks more like a message.
            const ALPHABET: &[u8] = b"nyrpcsiv=,abc+/";
            let text = bytes
                .iter()
                .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()])
                .collect();
            cases.push(bytes);
            cases.push(text);
        }
    }
    cases
}

/// Every prefix and every single-byte change of `msg`.
fn mutations(msg: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..msg.len()).map(|n| msg[..n].to_vec()).collect();
    for i in 0..msg.len() {
        for replacement in [b',', b'=', b'A', 0xff, msg[i] ^ 1] {
            if msg[i] != replacement {
                let mut changed = msg.to_vec();
                changed[i] = replacement;
                out.push(changed);
            }
        }
    }
    out
}

#[test]
fn garbage_never_panics() {
    let verifier = fast_verifier("pw");
    for input in garbage() {
        let _ = ScramServer::new(&verifier).client_first(&input);
        let mut server = ScramServer::new(&verifier);
        server.client_first(b"n,,n=,r=abc").unwrap();
        assert!(server.client_final(&input).is_err());

        let mut client = ScramClient::new(Secret::password("pw"));
        assert!(client.server_first(&input).is_err());
    }
}

#[test]
fn damaged_client_final_is_always_rejected() {
    let verifier = fast_verifier("pw");
    let client_with = || ScramClient::with_nonce(Secret::password("pw"), "", "CLIENT".into());
    let server_with = || ScramServer::with_server_nonce(&verifier, "SERVER".into());
    let mut client = client_with();
    let mut server = server_with();
    let server_first = server.client_first(&client.client_first()).unwrap();
    let client_final = client.server_first(&server_first).unwrap();

    for damaged in mutations(&client_final) {
        let mut server = server_with();
        server.client_first(&client.client_first()).unwrap();
        assert!(
            server.client_final(&damaged).is_err(),
            "{}",
            String::from_utf8_lossy(&damaged)
        );
        assert_eq!(server.client_key(), None);
    }
    assert!(server.client_final(&client_final).is_ok());
}

#[test]
fn damaged_client_first_never_panics() {
    let verifier = fast_verifier("pw");
    let client = ScramClient::new(Secret::password("pw"));
    for damaged in mutations(&client.client_first()) {
        let _ = ScramServer::new(&verifier).client_first(&damaged);
    }
}

#[test]
fn damaged_server_messages_are_rejected_by_client() {
    let verifier = fast_verifier("pw");
    let client_with = || ScramClient::with_nonce(Secret::password("pw"), "", "CLIENT".into());
    let mut client = client_with();
    let mut server = ScramServer::new(&verifier);
    let server_first = server.client_first(&client.client_first()).unwrap();
    // A damaged server-first may still parse (e.g. a longer nonce); it must not panic.
    for damaged in mutations(&server_first) {
        let mut probe = client_with();
        let _ = probe.server_first(&damaged);
    }
    let client_final = client.server_first(&server_first).unwrap();
    let server_final = server.client_final(&client_final).unwrap();
    for damaged in mutations(&server_final) {
        assert!(
            client.server_final(&damaged).is_err(),
            "{}",
            String::from_utf8_lossy(&damaged)
        );
    }
    client.server_final(&server_final).unwrap();
}
