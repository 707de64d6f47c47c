//! SCRAM-SHA-256 password authentication (RFC 5802/7677 as Postgres uses it): verifiers, server and client state machines.
//!
//! Pure functions over message bodies, no I/O: the caller moves the bytes in
//! and out of AuthenticationSASL* / SASLInitialResponse / SASLResponse messages.
//!
//! - [`ScramVerifier`]: the stored secret (pg_authid format), derived once per config load.
//! - [`ScramServer`]: the proxy checking a client; after success it exposes the
//!   client's ClientKey for SCRAM pass-through.
//! - [`ScramClient`]: the proxy logging into Postgres with a password or with
//!   pass-through keys ([`Secret`]).
//!
//! Only `SCRAM-SHA-256` is implemented; channel binding (`-PLUS`) is not, so the
//! proxy must advertise just [`MECHANISM`].

mod client;
mod crypto;
mod error;
mod parse;
mod server;
mod verifier;

#[cfg(test)]
mod tests;

pub use client::{MAX_ITERATIONS, ScramClient, Secret};
pub use error::{ScramError, ScramMessage};
pub use server::ScramServer;
pub use verifier::ScramVerifier;

/// The SASL mechanism name to advertise in AuthenticationSASL and expect in SASLInitialResponse.
pub const MECHANISM: &str = "SCRAM-SHA-256";
