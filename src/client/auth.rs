//! Client authentication exchanges, with the proxy in the server's role:
//! trust, cleartext password, MD5 and SCRAM-SHA-256.

use bytes::BytesMut;
use pgwire::messages::startup::Authentication;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::credentials::UserAuth;
use crate::config::ClientAuth;
use crate::protocol::backend;
use crate::protocol::frame::{self, fe};
use crate::protocol::md5;
use crate::protocol::scram::{self, ScramError, ScramServer};
use crate::protocol::startup::MAX_STARTUP_LEN;
use crate::protocol::{ProtocolError, SqlState, WireError};

/// Why a login did not succeed.
#[derive(Debug)]
pub enum AuthFailure {
    /// Tell the client this and close.
    Refused(WireError),
    /// The client hung up mid-exchange (psql does this to prompt for a password).
    Gone,
}

impl From<WireError> for AuthFailure {
    fn from(e: WireError) -> Self {
        AuthFailure::Refused(e)
    }
}

fn wrong_password(user: &str) -> AuthFailure {
    AuthFailure::Refused(WireError::fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

/// Runs the configured exchange. On success nothing has been written yet
/// beyond the exchange itself; the caller sends AuthenticationOk.
pub async fn authenticate<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    method: ClientAuth,
    user: &UserAuth,
) -> Result<(), AuthFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match method {
        ClientAuth::Trust => Ok(()),
        ClientAuth::Password => cleartext(stream, buf, user).await,
        ClientAuth::Md5 => match &user.md5 {
            Some(hash) => md5_exchange(stream, buf, user, hash).await,
            // Only a SCRAM verifier is stored: do what Postgres does and use SCRAM.
            None => scram_exchange(stream, buf, user).await,
        },
        ClientAuth::ScramSha256 => match (&user.verifier, &user.md5) {
            (Some(_), _) => scram_exchange(stream, buf, user).await,
            (None, Some(hash)) => md5_exchange(stream, buf, user, hash).await,
            (None, None) => Err(wrong_password(&user.name)),
        },
    }
}

async fn cleartext<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &UserAuth,
) -> Result<(), AuthFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(stream, Authentication::CleartextPassword).await?;
    let msg = read_password_message(stream, buf).await?;
    // The password's bytes as typed, in the client's encoding.
    let (given, _) = frame::cstr_bytes(frame::body(&msg)).map_err(WireError::from)?;
    if user.check_cleartext(given) {
        Ok(())
    } else {
        Err(wrong_password(&user.name))
    }
}

async fn md5_exchange<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &UserAuth,
    hash: &str,
) -> Result<(), AuthFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let salt: [u8; 4] = rand::random();
    send(stream, Authentication::MD5Password(salt.to_vec())).await?;
    let msg = read_password_message(stream, buf).await?;
    let body = frame::body(&msg);
    let response = body.strip_suffix(b"\0").unwrap_or(body);
    if md5::verify_md5_response(hash, salt, response) {
        Ok(())
    } else {
        Err(wrong_password(&user.name))
    }
}

async fn scram_exchange<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &UserAuth,
) -> Result<(), AuthFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(verifier) = &user.verifier else {
        return Err(wrong_password(&user.name));
    };
    let mut server = ScramServer::new(verifier);
    send(
        stream,
        Authentication::SASL(vec![scram::MECHANISM.to_string()]),
    )
    .await?;

    // SASLInitialResponse: mechanism, int32 length, client-first-message.
    let msg = read_password_message(stream, buf).await?;
    let (mechanism, rest) = frame::cstr(frame::body(&msg)).map_err(WireError::from)?;
    if mechanism != scram::MECHANISM {
        return Err(AuthFailure::Refused(WireError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            // Not echoed, as Postgres does not: a client that misread the
            // request may have sent its password here.
            "client selected an invalid SASL authentication mechanism",
        )));
    }
    let data = rest
        .get(4..)
        .ok_or_else(|| malformed("SASLInitialResponse"))?;
    let server_first = server
        .client_first(data)
        .map_err(|e| scram_failure(e, &user.name))?;
    send(stream, Authentication::SASLContinue(server_first.into())).await?;

    // SASLResponse: client-final-message.
    let msg = read_password_message(stream, buf).await?;
    let server_final = server
        .client_final(frame::body(&msg))
        .map_err(|e| scram_failure(e, &user.name))?;
    send(stream, Authentication::SASLFinal(server_final.into())).await?;
    if let Some(key) = server.client_key() {
        let _ = user.learned_client_key.set(key);
    }
    Ok(())
}

fn scram_failure(e: ScramError, user: &str) -> AuthFailure {
    match e {
        ScramError::InvalidProof => wrong_password(user),
        other => AuthFailure::Refused(WireError::fatal(
            SqlState(if other.sqlstate() == "0A000" {
                "0A000"
            } else {
                "08P01"
            }),
            format!("SCRAM authentication failed: {other}"),
        )),
    }
}

fn malformed(what: &'static str) -> AuthFailure {
    AuthFailure::Refused(
        ProtocolError::Malformed {
            tag: fe::PASSWORD,
            what,
        }
        .into(),
    )
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    auth: Authentication,
) -> Result<(), AuthFailure> {
    let mut out = BytesMut::with_capacity(64);
    backend::authentication(&mut out, auth);
    crate::tls::write_flush(stream, &out)
        .await
        .map_err(|_| AuthFailure::Gone)
}

/// Reads the client's next message, which must be a password-family 'p'.
async fn read_password_message<S>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, AuthFailure>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some((tag, total)) = frame::header(buf).map_err(WireError::from)? {
            if tag != fe::PASSWORD {
                return Err(AuthFailure::Refused(
                    ProtocolError::Unexpected {
                        tag,
                        when: "during authentication (expected a password message)",
                    }
                    .into(),
                ));
            }
            if total > MAX_STARTUP_LEN {
                return Err(AuthFailure::Refused(
                    ProtocolError::TooLarge {
                        len: total,
                        max: MAX_STARTUP_LEN,
                        limit: ProtocolError::BEFORE_LOGIN,
                    }
                    .into(),
                ));
            }
            if buf.len() >= total {
                return Ok(buf.split_to(total));
            }
        }
        buf.reserve(1024);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(AuthFailure::Gone),
            Ok(_) => {}
        }
    }
}
