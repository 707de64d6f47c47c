//! Client side of SCRAM-SHA-256: the proxy logging into Postgres, by password or pass-through keys.

use std::fmt;

use subtle::ConstantTimeEq;

use super::crypto::{self, Key};
use super::error::{ScramError, ScramMessage};
use super::parse::{self, Fields};
use super::verifier::ScramVerifier;

/// Highest iteration count the client agrees to compute.
///
/// The count comes from the server and drives PBKDF2, so an unbounded value
/// would let anything answering on the backend address burn our CPU. Postgres
/// defaults to 4096 and since version 16 `scram_iterations` can raise it; 1,000,000
/// (well under a second) leaves generous room for that.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// What the proxy proves knowledge of when logging into Postgres.
#[derive(Clone)]
pub enum Secret {
    /// The role's plaintext password (SASLprep-normalised as libpq does,
    /// falling back to the raw bytes when that fails).
    Password(Vec<u8>),
    /// SCRAM pass-through: ClientKey recovered by [`super::ScramServer::client_key`]
    /// from a client's proof, plus the ServerKey, salt and iteration count of
    /// the verifier the proxy checked it against.
    ///
    /// This only works if Postgres stores the *same* verifier for the role:
    /// ClientKey is bound to the salt and iteration count it was derived with.
    /// When the server announces a different salt or count the exchange fails
    /// early with [`ScramError::PassThroughMismatch`]; if only the keys differ,
    /// Postgres rejects the proof (and we would reject its signature).
    Keys {
        client_key: Key,
        server_key: Key,
        salt: Vec<u8>,
        iterations: u32,
    },
}

impl Secret {
    /// A plaintext password.
    pub fn password(password: impl AsRef<[u8]>) -> Self {
        Self::Password(password.as_ref().to_vec())
    }

    /// Pass-through keys: `client_key` from a successful [`super::ScramServer`]
    /// exchange and the `verifier` that exchange used.
    pub fn pass_through(verifier: &ScramVerifier, client_key: [u8; 32]) -> Self {
        Self::Keys {
            client_key,
            server_key: verifier.server_key,
            salt: verifier.salt.clone(),
            iterations: verifier.iterations,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Secret::Password(<redacted>)"),
            Self::Keys { iterations, .. } => f
                .debug_struct("Secret::Keys")
                .field("iterations", iterations)
                .finish_non_exhaustive(),
        }
    }
}

/// One SCRAM-SHA-256 login to Postgres:
///
/// 1. send [`ScramClient::client_first`] in SASLInitialResponse (mechanism `SCRAM-SHA-256`);
/// 2. AuthenticationSASLContinue data → [`ScramClient::server_first`] → send in SASLResponse;
/// 3. AuthenticationSASLFinal data → [`ScramClient::server_final`]; only then trust AuthenticationOk.
///
/// We send gs2 header `n,,` (no channel binding): the proxy does not implement
/// `tls-server-end-point`, so it must not claim support with `y`. The username
/// is left empty, as libpq does; Postgres uses the startup packet's.
pub struct ScramClient {
    secret: Secret,
    username: String,
    nonce: String,
    state: State,
}

enum State {
    Initial,
    FinalSent { server_signature: Key },
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::Initial => "waiting for server-first-message",
            Self::FinalSent { .. } => "waiting for server-final-message",
            Self::Failed => "already failed or finished",
        }
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("secret", &self.secret)
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts an exchange with a fresh 18-byte random nonce.
    pub fn new(secret: Secret) -> Self {
        Self::with_nonce(secret, "", crypto::new_nonce())
    }

    pub(super) fn with_nonce(secret: Secret, username: &str, nonce: String) -> Self {
        Self {
            secret,
            username: username.to_owned(),
            nonce,
            state: State::Initial,
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.username, self.nonce)
    }

    /// client-first-message: `n,,n=,r=<nonce>`.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    /// Handles server-first-message `r=…,s=…,i=…` and returns client-final-message.
    ///
    /// In password mode this runs PBKDF2 with the server's iteration count
    /// (bounded by [`MAX_ITERATIONS`]); in keys mode it is cheap.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        const M: ScramMessage = ScramMessage::ServerFirst;
        if !matches!(self.state, State::Initial) {
            return Err(ScramError::OutOfOrder {
                message: M,
                state: self.state.name(),
            });
        }
        self.state = State::Failed;

        let server_first = parse::text(msg, M)?;
        if server_first.starts_with("m=") {
            return Err(ScramError::malformed(
                M,
                "mandatory extension m= is not supported",
            ));
        }
        let mut fields = Fields::new(server_first, M);
        let nonce = fields.expect('r')?;
        let salt = fields.expect('s')?;
        let iterations = fields.expect('i')?;
        fields.extensions()?;

        // The server must extend our nonce with its own, non-empty, part.
        if !parse::is_valid_nonce(nonce)
            || nonce.len() <= self.nonce.len()
            || !nonce.starts_with(&self.nonce)
        {
            return Err(ScramError::NonceMismatch { message: M });
        }
        let salt = crypto::b64_decode(salt)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ScramError::malformed(M, "salt is not non-empty base64"))?;
        let iterations = parse::parse_u32(iterations)
            .ok_or_else(|| ScramError::malformed(M, "iteration count is not a number"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::IterationCount {
                iterations,
                max: MAX_ITERATIONS,
            });
        }

        let (client_key, server_key) = match &self.secret {
            Secret::Password(password) => {
                let salted = crypto::salted_password(password, &salt, iterations);
                crypto::client_and_server_key(&salted)
            }
            Secret::Keys {
                client_key,
                server_key,
                salt: key_salt,
                iterations: key_iterations,
            } => {
                if *key_salt != salt || *key_iterations != iterations {
                    return Err(ScramError::PassThroughMismatch);
                }
                (*client_key, *server_key)
            }
        };

        let without_proof = format!("c={},r={nonce}", crypto::b64_encode(b"n,,"));
        let client_first_bare = self.client_first_bare();
        let auth_message: [&[u8]; 5] = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let stored_key = crypto::sha256(&client_key);
        let client_signature = crypto::hmac(&stored_key, &auth_message);
        let proof = crypto::xor(&client_key, &client_signature);
        let server_signature = crypto::hmac(&server_key, &auth_message);

        self.state = State::FinalSent { server_signature };
        Ok(format!("{without_proof},p={}", crypto::b64_encode(&proof)).into_bytes())
    }

    /// Checks server-final-message `v=<ServerSignature>` in constant time: proof
    /// that the server holds the verifier, not just something accepting logins.
    pub fn server_final(&self, msg: &[u8]) -> Result<(), ScramError> {
        const M: ScramMessage = ScramMessage::ServerFinal;
        let State::FinalSent { server_signature } = &self.state else {
            return Err(ScramError::OutOfOrder {
                message: M,
                state: self.state.name(),
            });
        };
        let text = parse::text(msg, M)?;
        if let Some(reason) = text
            .split(',')
            .next()
            .and_then(|f| parse::attr_value(f, 'e'))
        {
            return Err(ScramError::ServerError(parse::truncate(reason).to_owned()));
        }
        let mut fields = Fields::new(text, M);
        let signature = fields.expect('v')?;
        fields.extensions()?;
        let signature = crypto::b64_decode_key(signature)
            .ok_or_else(|| ScramError::malformed(M, "signature is not base64 of 32 bytes"))?;
        if bool::from(signature.ct_eq(server_signature)) {
            Ok(())
        } else {
            Err(ScramError::InvalidServerSignature)
        }
    }
}
