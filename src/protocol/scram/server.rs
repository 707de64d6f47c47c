//! Server side of SCRAM-SHA-256: the proxy checking a client's password against a verifier.

use subtle::ConstantTimeEq;

use super::crypto::{self, Key};
use super::error::{ScramError, ScramMessage};
use super::parse::{self, Fields};
use super::verifier::ScramVerifier;

/// One SCRAM-SHA-256 login of one client, driven by the caller's message loop:
///
/// 1. client's SASLInitialResponse data → [`ScramServer::client_first`] → send as AuthenticationSASLContinue;
/// 2. client's SASLResponse data → [`ScramServer::client_final`] → send as AuthenticationSASLFinal,
///    then AuthenticationOk.
///
/// Any error ends the exchange (later calls return [`ScramError::OutOfOrder`]);
/// [`ScramError::InvalidProof`] means a wrong password (SQLSTATE 28P01).
///
/// Only `SCRAM-SHA-256` is supported, never `-PLUS`: the proxy must not advertise
/// channel binding. The username in client-first-message is ignored, as Postgres
/// does, because the role comes from the startup packet.
pub struct ScramServer {
    verifier: ScramVerifier,
    /// Server half of the nonce; fixed only by tests.
    server_nonce: String,
    state: State,
}

enum State {
    Initial,
    /// server-first-message sent; what client-final-message must be checked against.
    FirstSent {
        client_first_bare: String,
        server_first: String,
        /// `n,,` or `y,,`, which `c=` must echo.
        gs2_header: &'static str,
        nonce: String,
    },
    Done {
        client_key: Key,
    },
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::Initial => "waiting for client-first-message",
            Self::FirstSent { .. } => "waiting for client-final-message",
            Self::Done { .. } => "already complete",
            Self::Failed => "already failed",
        }
    }
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer")
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts an exchange for the role whose verifier is given (cloned: it is small).
    pub fn new(verifier: &ScramVerifier) -> Self {
        Self::with_server_nonce(verifier, crypto::new_nonce())
    }

    pub(super) fn with_server_nonce(verifier: &ScramVerifier, server_nonce: String) -> Self {
        Self {
            verifier: verifier.clone(),
            server_nonce,
            state: State::Initial,
        }
    }

    /// Handles client-first-message (`gs2-header client-first-message-bare`) and
    /// returns server-first-message `r=<nonce>,s=<salt>,i=<iterations>`.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            return Err(self.out_of_order(ScramMessage::ClientFirst));
        }
        self.state = State::Failed;
        let (gs2_header, bare, client_nonce) = parse_client_first(msg)?;

        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            crypto::b64_encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::FirstSent {
            client_first_bare: bare.to_owned(),
            server_first,
            gs2_header,
            nonce,
        };
        Ok(reply)
    }

    /// Handles client-final-message (`c=…,r=…[,ext],p=…`), verifies the proof in
    /// constant time and returns server-final-message `v=<ServerSignature>`.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::FirstSent { .. }) {
            return Err(self.out_of_order(ScramMessage::ClientFinal));
        }
        // From here on any error leaves the exchange failed.
        let State::FirstSent {
            client_first_bare,
            server_first,
            gs2_header,
            nonce,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(self.out_of_order(ScramMessage::ClientFinal));
        };
        let (without_proof, proof) = parse_client_final(msg, gs2_header, &nonce)?;

        let auth_message: [&[u8]; 5] = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = crypto::hmac(&self.verifier.stored_key, &auth_message);
        let client_key = crypto::xor(&proof, &client_signature);
        let stored_key = crypto::sha256(&client_key);
        if !bool::from(stored_key.ct_eq(&self.verifier.stored_key)) {
            return Err(ScramError::InvalidProof);
        }

        let server_signature = crypto::hmac(&self.verifier.server_key, &auth_message);
        self.state = State::Done { client_key };
        Ok(format!("v={}", crypto::b64_encode(&server_signature)).into_bytes())
    }

    /// The client's ClientKey (`ClientProof XOR HMAC(StoredKey, AuthMessage)`),
    /// available only after [`ScramServer::client_final`] succeeded.
    ///
    /// With it and the verifier's ServerKey the proxy can log into Postgres as
    /// the same role without knowing the password (SCRAM pass-through, as
    /// PgBouncer does), see [`super::Secret::pass_through`]. Treat it like a
    /// password: it authenticates as the user wherever this verifier is stored.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match &self.state {
            State::Done { client_key } => Some(*client_key),
            _ => None,
        }
    }

    /// Whether the exchange completed successfully.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done { .. })
    }

    fn out_of_order(&self, message: ScramMessage) -> ScramError {
        ScramError::OutOfOrder {
            message,
            state: self.state.name(),
        }
    }
}

/// Returns (gs2 header, client-first-message-bare, client nonce).
fn parse_client_first(msg: &[u8]) -> Result<(&'static str, &str, &str), ScramError> {
    const M: ScramMessage = ScramMessage::ClientFirst;
    let text = parse::text(msg, M)?;
    let mut parts = text.splitn(3, ',');
    let flag = parts.next().unwrap_or_default();
    let gs2_header = match flag {
        // Client does not support channel binding.
        "n" => "n,,",
        // Client supports it but thinks we do not: true, we never offer -PLUS,
        // so this is no downgrade and is accepted (as Postgres does without TLS).
        "y" => "y,,",
        _ => {
            return Err(match flag.strip_prefix("p=") {
                Some(cb_name) => ScramError::ChannelBindingUnsupported {
                    cb_name: parse::truncate(cb_name).to_owned(),
                },
                None => ScramError::malformed(M, "gs2 header must start with n, y or p="),
            });
        }
    };
    let authzid = parts
        .next()
        .ok_or_else(|| ScramError::malformed(M, "gs2 header is incomplete"))?;
    if !authzid.is_empty() {
        return Err(match parse::attr_value(authzid, 'a') {
            Some(_) => ScramError::AuthzidUnsupported,
            None => ScramError::malformed(M, "gs2 header has an invalid authzid"),
        });
    }
    let bare = parts
        .next()
        .ok_or_else(|| ScramError::malformed(M, "client-first-message-bare is missing"))?;

    let mut fields = Fields::new(bare, M);
    if bare.starts_with("m=") {
        return Err(ScramError::malformed(
            M,
            "mandatory extension m= is not supported",
        ));
    }
    // The username is ignored: Postgres takes the role from the startup packet.
    fields.expect('n')?;
    let nonce = fields.expect('r')?;
    if !parse::is_valid_nonce(nonce) {
        return Err(ScramError::malformed(M, "nonce is empty or not printable"));
    }
    fields.extensions()?;
    Ok((gs2_header, bare, nonce))
}

/// Returns (client-final-message-without-proof, ClientProof).
fn parse_client_final<'a>(
    msg: &'a [u8],
    gs2_header: &str,
    nonce: &str,
) -> Result<(&'a str, Key), ScramError> {
    const M: ScramMessage = ScramMessage::ClientFinal;
    let text = parse::text(msg, M)?;
    // The proof is the last attribute; base64 has no ',' so the last ",p=" is it.
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or_else(|| ScramError::malformed(M, "proof p= is missing"))?;
    if proof.contains(',') {
        return Err(ScramError::malformed(
            M,
            "proof p= must be the last attribute",
        ));
    }
    let proof = crypto::b64_decode_key(proof)
        .ok_or_else(|| ScramError::malformed(M, "proof is not base64 of 32 bytes"))?;

    let mut fields = Fields::new(without_proof, M);
    let binding = fields.expect('c')?;
    let binding = crypto::b64_decode(binding)
        .ok_or_else(|| ScramError::malformed(M, "channel binding c= is not base64"))?;
    if binding != gs2_header.as_bytes() {
        return Err(ScramError::ChannelBindingMismatch);
    }
    if fields.expect('r')? != nonce {
        return Err(ScramError::NonceMismatch { message: M });
    }
    fields.extensions()?;
    Ok((without_proof, proof))
}
