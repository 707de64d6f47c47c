//! SCRAM-SHA-256 primitives (RFC 5802 §3): Hi, HMAC, H, XOR, SASLprep, base64, randomness.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Length of every SCRAM-SHA-256 key, signature and proof.
pub const KEY_LEN: usize = 32;

/// A SHA-256 sized key (ClientKey, StoredKey, ServerKey, SaltedPassword, …).
pub type Key = [u8; KEY_LEN];

/// `H(data)`.
pub fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

/// `HMAC(key, part1 ‖ part2 ‖ …)`; parts avoid building the AuthMessage twice.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    // HMAC is defined for keys of any length (long keys are hashed, short ones
    // padded), so this cannot fail; the Result is an artefact of the generic KeyInit API.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC-SHA-256 accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `Hi(Normalize(password), salt, i)`: PBKDF2-HMAC-SHA-256 with a single 32-byte block.
///
/// Deliberately slow (that is its purpose); `iterations` must be checked by the caller.
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(&normalize(password), salt, iterations, &mut out);
    out
}

/// ClientKey and ServerKey derived from a SaltedPassword.
pub fn client_and_server_key(salted: &Key) -> (Key, Key) {
    (
        hmac(salted, &[b"Client Key"]),
        hmac(salted, &[b"Server Key"]),
    )
}

/// Byte-wise XOR; turns ClientKey into ClientProof and back.
pub fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_LEN];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// SASLprep the password the way Postgres (backend and libpq) does.
///
/// Postgres passwords are arbitrary byte strings, not necessarily valid UTF-8 or
/// SASLprep-clean, so Postgres applies SASLprep when it can and otherwise uses
/// the raw bytes. We must do exactly the same or the derived keys would differ
/// from the verifier Postgres stored.
pub fn normalize(password: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(password) {
        Ok(text) => match stringprep::saslprep(text) {
            Ok(prepped) => prepped.into_owned().into_bytes(),
            Err(_) => password.to_vec(),
        },
        Err(_) => password.to_vec(),
    }
}

/// Standard, padded base64, as Postgres writes and expects it.
pub fn b64_encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Decode standard padded base64; `None` on any invalid input.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// Decode base64 that must hold exactly one 32-byte key.
pub fn b64_decode_key(text: &str) -> Option<Key> {
    b64_decode(text)?.try_into().ok()
}

/// Bytes from the thread-local CSPRNG (ChaCha, seeded from the OS).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::fill(&mut out[..]);
    out
}

/// Raw nonce length before base64; the same 18 bytes Postgres uses on both sides.
pub const RAW_NONCE_LEN: usize = 18;

/// A fresh printable nonce (base64 of [`RAW_NONCE_LEN`] random bytes, never contains `,`).
pub fn new_nonce() -> String {
    b64_encode(&random_bytes::<RAW_NONCE_LEN>())
}
