//! Errors of the SCRAM exchange, precise enough to log and to pick the SQLSTATE sent to a client.

use std::fmt;

/// Which SCRAM message (or stored secret) an error is about, so logs say where an
/// exchange went wrong without dumping the message itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramMessage {
    /// `gs2-header client-first-message-bare`, sent by the client.
    ClientFirst,
    /// `r=…,s=…,i=…`, sent by the server.
    ServerFirst,
    /// `c=…,r=…,p=…`, sent by the client.
    ClientFinal,
    /// `v=…` or `e=…`, sent by the server.
    ServerFinal,
    /// A stored verifier `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    Verifier,
}

impl fmt::Display for ScramMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClientFirst => "client-first-message",
            Self::ServerFirst => "server-first-message",
            Self::ClientFinal => "client-final-message",
            Self::ServerFinal => "server-final-message",
            Self::Verifier => "SCRAM verifier",
        })
    }
}

/// Everything that can go wrong in a SCRAM-SHA-256 exchange.
///
/// Wrong credentials ([`ScramError::InvalidProof`], [`ScramError::InvalidServerSignature`])
/// are kept apart from protocol errors because the proxy answers them differently:
/// a wrong password is an ordinary, expected event (SQLSTATE 28P01), a malformed
/// message is a broken or hostile peer (08P01). See [`ScramError::sqlstate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow the RFC 5802 grammar.
    #[error("malformed SCRAM {message}: {reason}")]
    Malformed {
        message: ScramMessage,
        reason: String,
    },
    /// The client asked for channel binding (`p=<cb-name>`), which needs
    /// SCRAM-SHA-256-PLUS; the proxy never offers that mechanism.
    #[error(
        "client requested SCRAM channel binding type {cb_name:?}, but SCRAM-SHA-256-PLUS is not offered"
    )]
    ChannelBindingUnsupported { cb_name: String },
    /// `c=` in client-final-message is not the gs2 header of client-first-message.
    #[error("SCRAM channel binding check failed: c= does not match the gs2 header")]
    ChannelBindingMismatch,
    /// The client sent an authorization identity (`a=`), which Postgres does not support.
    #[error("SCRAM authorization identity (a=) is not supported")]
    AuthzidUnsupported,
    /// The nonce does not continue the exchange: server-first must extend the
    /// client's nonce, client-final must repeat the combined nonce exactly.
    #[error("SCRAM nonce mismatch in {message}")]
    NonceMismatch { message: ScramMessage },
    /// The client's proof does not match the stored key: wrong password.
    #[error("password authentication failed: SCRAM client proof is invalid")]
    InvalidProof,
    /// The server's signature does not match: it does not know the credentials,
    /// i.e. we are not talking to the server we think we are.
    #[error("SCRAM server signature is invalid: the server does not know the credentials")]
    InvalidServerSignature,
    /// The server ended the exchange with `e=<reason>` in server-final-message.
    #[error("SCRAM server reported an error: {0}")]
    ServerError(String),
    /// The server asked for an iteration count we refuse to compute.
    #[error("SCRAM iteration count {iterations} is outside 1..={max}")]
    IterationCount { iterations: u32, max: u32 },
    /// Pass-through keys were used against a server whose salt or iteration
    /// count differs from the verifier they were recovered with, so they cannot
    /// produce a valid proof.
    #[error(
        "SCRAM pass-through keys do not fit this server: its salt/iteration count differ from the proxy's verifier"
    )]
    PassThroughMismatch,
    /// A method was called out of sequence (e.g. client-final before client-first,
    /// or again after the exchange failed).
    #[error("unexpected SCRAM {message}: exchange is {state}")]
    OutOfOrder {
        message: ScramMessage,
        state: &'static str,
    },
}

impl ScramError {
    pub(super) fn malformed(message: ScramMessage, reason: impl Into<String>) -> Self {
        Self::Malformed {
            message,
            reason: reason.into(),
        }
    }

    /// The SQLSTATE Postgres would report to a client for this failure of the
    /// server side: 28P01 (invalid_password) for a wrong proof, 0A000
    /// (feature_not_supported) for an authzid, 08P01 (protocol_violation) for the rest.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::InvalidProof => "28P01",
            Self::AuthzidUnsupported => "0A000",
            _ => "08P01",
        }
    }
}
