//! Tests of the SCRAM module: published vectors, Postgres-made verifiers, full exchanges, hostile input.

mod exchange;
mod malformed;
mod vectors;

use super::{ScramClient, ScramError, ScramServer, ScramVerifier, Secret};

/// Cheap iteration count for tests that are not about key derivation.
const FAST_ITERATIONS: u32 = 16;

fn fast_verifier(password: &str) -> ScramVerifier {
    ScramVerifier::with_salt(password, b"0123456789abcdef", FAST_ITERATIONS).unwrap()
}

/// Runs a whole exchange between our client and our server; returns the server
/// (for `client_key`) on success, or the first error from either side.
fn run(secret: Secret, verifier: &ScramVerifier) -> Result<ScramServer, ScramError> {
    let mut client = ScramClient::new(secret);
    let mut server = ScramServer::new(verifier);
    let server_first = server.client_first(&client.client_first())?;
    let client_final = client.server_first(&server_first)?;
    let server_final = server.client_final(&client_final)?;
    client.server_final(&server_final)?;
    Ok(server)
}
