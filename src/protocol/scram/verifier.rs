//! The stored SCRAM-SHA-256 secret: derivation from a password and the pg_authid text form.

use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;

use super::crypto::{self, Key};
use super::error::{ScramError, ScramMessage};
use super::parse::parse_u32;

const PREFIX: &str = "SCRAM-SHA-256$";

/// What a server needs to check a SCRAM-SHA-256 login, without the password:
/// `StoredKey = H(ClientKey)` verifies proofs, `ServerKey` signs the answer.
///
/// Text form (as Postgres stores it in `pg_authid.rolpassword`, and as accepted
/// in the config): `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
/// `Display`/`to_string()` produce it, [`ScramVerifier::parse`] / `FromStr` read it.
///
/// `Debug` hides the keys: together they let anyone impersonate the server.
/// Equality compares the keys in constant time.
#[derive(Clone)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Key,
    pub server_key: Key,
}

impl ScramVerifier {
    /// Iteration count Postgres uses by default (`scram_iterations`).
    pub const DEFAULT_ITERATIONS: u32 = 4096;
    /// Salt length Postgres uses by default.
    pub const DEFAULT_SALT_LEN: usize = 16;

    /// Derives a verifier from a plaintext password with a fresh random 16-byte
    /// salt and 4096 iterations, like Postgres's `password_encryption = scram-sha-256`.
    ///
    /// This runs PBKDF2 on purpose (a few milliseconds of CPU): compute it once
    /// when the config is loaded and cache it, never per connection. Caching
    /// also keeps the salt stable, which clients expect between logins. The
    /// password is SASLprep-normalised as Postgres does.
    pub fn from_password(password: impl AsRef<[u8]>) -> Self {
        let salt = crypto::random_bytes::<{ Self::DEFAULT_SALT_LEN }>();
        Self::derive(password.as_ref(), &salt, Self::DEFAULT_ITERATIONS)
    }

    /// Like [`ScramVerifier::from_password`] with a given salt and iteration
    /// count; used to reproduce a verifier computed elsewhere (e.g. by Postgres).
    pub fn with_salt(
        password: impl AsRef<[u8]>,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, ScramError> {
        if iterations == 0 {
            return Err(invalid("iteration count must be positive"));
        }
        if salt.is_empty() {
            return Err(invalid("salt must not be empty"));
        }
        Ok(Self::derive(password.as_ref(), salt, iterations))
    }

    /// A verifier no password matches (its keys are random), for a user
    /// that does not exist: the salt is derived from `user` and a secret
    /// `key`, so it stays the same from one attempt to the next, as for a
    /// real user — Postgres's "mock authentication". Costs no PBKDF2.
    pub fn mock(user: &str, key: &[u8]) -> Self {
        let salt = crypto::hmac(key, &[b"mock salt", user.as_bytes()]);
        Self {
            iterations: Self::DEFAULT_ITERATIONS,
            salt: salt[..Self::DEFAULT_SALT_LEN].to_vec(),
            stored_key: crypto::random_bytes(),
            server_key: crypto::random_bytes(),
        }
    }

    fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = crypto::salted_password(password, salt, iterations);
        let (client_key, server_key) = crypto::client_and_server_key(&salted);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: crypto::sha256(&client_key),
            server_key,
        }
    }

    /// Parses `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
    ///
    /// Fails for anything else, so a caller can tell a verifier from a plaintext
    /// or md5 password the way Postgres does (try SCRAM, then md5, else plaintext).
    pub fn parse(text: &str) -> Result<Self, ScramError> {
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| invalid("does not start with SCRAM-SHA-256$"))?;
        let (iter_salt, keys) = rest
            .split_once('$')
            .ok_or_else(|| invalid("missing '$' between salt and keys"))?;
        let (iterations, salt) = iter_salt
            .split_once(':')
            .ok_or_else(|| invalid("missing ':' between iteration count and salt"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or_else(|| invalid("missing ':' between StoredKey and ServerKey"))?;

        let iterations = parse_u32(iterations)
            .filter(|&i| i > 0)
            .ok_or_else(|| invalid("iteration count is not a positive integer"))?;
        let salt = crypto::b64_decode(salt)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("salt is not non-empty base64"))?;
        let stored_key = crypto::b64_decode_key(stored_key)
            .ok_or_else(|| invalid("StoredKey is not base64 of 32 bytes"))?;
        let server_key = crypto::b64_decode_key(server_key)
            .ok_or_else(|| invalid("ServerKey is not base64 of 32 bytes"))?;
        Ok(Self {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }
}

fn invalid(reason: &str) -> ScramError {
    ScramError::malformed(ScramMessage::Verifier, reason)
}

impl FromStr for ScramVerifier {
    type Err = ScramError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            crypto::b64_encode(&self.salt),
            crypto::b64_encode(&self.stored_key),
            crypto::b64_encode(&self.server_key),
        )
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &crypto::b64_encode(&self.salt))
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl PartialEq for ScramVerifier {
    fn eq(&self, other: &Self) -> bool {
        let keys =
            self.stored_key.ct_eq(&other.stored_key) & self.server_key.ct_eq(&other.server_key);
        self.iterations == other.iterations && self.salt == other.salt && bool::from(keys)
    }
}

impl Eq for ScramVerifier {}
