//! Logging into a Postgres node as a client: StartupMessage, then trust,
//! cleartext, MD5 or SCRAM-SHA-256 with the configured password, then the
//! ParameterStatus and BackendKeyData the server sends before it is ready.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::connection::{ServerConn, ServerParams};
use super::error::ServerError;
use crate::config::Secret;
use crate::protocol::frame::{self, be};
use crate::protocol::md5;
use crate::protocol::scram::{self, ScramClient};
use crate::protocol::startup::encode_startup;
use crate::tls::{ServerStream, write_flush};

/// Who to log in as, where.
#[derive(Clone, Debug)]
pub struct LoginParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub secret: ServerSecret,
    pub connect_timeout: Duration,
    /// Capacity of the connection's prepared-statement LRU.
    pub prepared_capacity: usize,
    /// Age at which a connection is closed when given back rather than
    /// handed to the next client (`pool.max_lifetime`).
    pub max_lifetime: Duration,
    /// Whether and how to encrypt the connection.
    pub tls: crate::tls::ServerTls,
}

/// How the proxy proves itself to a server. `Debug` names the kind only.
#[derive(Clone)]
pub enum ServerSecret {
    None,
    Password(Secret),
    /// A stored MD5 hash: enough to answer an MD5 challenge.
    Md5(String),
    /// SCRAM pass-through keys learned from a client's login.
    Scram(scram::Secret),
}

impl LoginParams {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerSecret::None => "None",
            ServerSecret::Password(_) => "Password(********)",
            ServerSecret::Md5(_) => "Md5(********)",
            ServerSecret::Scram(_) => "Scram(********)",
        })
    }
}

/// Names the proxy's server connections in `pg_stat_activity` until a
/// client's settings are applied.
const LABEL: &str = "SET application_name TO 'pgsidecar'";

/// Largest message accepted from a server during login (auth and params
/// are tiny; anything bigger means we are not talking to Postgres).
const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

/// Opens a TCP connection and logs in, within `connect_timeout`.
pub async fn connect(p: &LoginParams, addr: Arc<str>) -> Result<ServerConn, ServerError> {
    match tokio::time::timeout(p.connect_timeout, connect_inner(p, addr)).await {
        Ok(result) => result,
        Err(_) => Err(ServerError::ConnectTimeout {
            addr: p.addr(),
            timeout: p.connect_timeout,
        }),
    }
}

async fn connect_inner(p: &LoginParams, addr: Arc<str>) -> Result<ServerConn, ServerError> {
    let io = |source| ServerError::Io {
        addr: p.addr(),
        source,
    };
    let tcp = TcpStream::connect((p.host.as_str(), p.port))
        .await
        .map_err(|source| ServerError::Connect {
            addr: p.addr(),
            source,
        })?;
    tcp.set_nodelay(true).map_err(io)?;
    let peer = tcp.peer_addr().map_err(io)?;
    let mut stream = p
        .tls
        .negotiate(tcp, &p.host)
        .await
        .map_err(|source| ServerError::Tls {
            addr: p.addr(),
            source,
        })?;

    let mut out = BytesMut::with_capacity(256);
    encode_startup(&mut out, &[("user", &p.user), ("database", &p.database)]);
    write_flush(&mut stream, &out).await.map_err(io)?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut params = ServerParams::default();
    let mut scram: Option<ScramClient> = None;
    let mut labelled = false;
    loop {
        let (tag, msg) = read_message(&mut stream, &mut buf, p).await?;
        let body = frame::body(&msg);
        match tag {
            be::AUTHENTICATION => {
                let code =
                    be_i32(body).ok_or_else(|| protocol(p, "short authentication message"))?;
                out.clear();
                match code {
                    0 => {}
                    3 => {
                        let ServerSecret::Password(pw) = &p.secret else {
                            return Err(missing(p, "a plaintext password"));
                        };
                        password_message(&mut out, pw.expose().as_bytes(), true);
                    }
                    5 => {
                        let salt: [u8; 4] = body
                            .get(4..8)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| protocol(p, "short MD5 salt"))?;
                        let stored = match &p.secret {
                            ServerSecret::Password(pw) => md5::md5_hash(&p.user, pw.expose()),
                            ServerSecret::Md5(hash) => hash.clone(),
                            _ => return Err(missing(p, "a password or MD5 hash")),
                        };
                        let response = md5::md5_salted(&stored, salt);
                        password_message(&mut out, response.as_bytes(), true);
                    }
                    10 => {
                        let mechanisms = &body[4..];
                        if !mechanisms.split(|b| *b == 0).any(|m| m == b"SCRAM-SHA-256") {
                            return Err(ServerError::UnsupportedAuth {
                                addr: p.addr(),
                                method: String::from_utf8_lossy(mechanisms).replace('\0', " "),
                            });
                        }
                        let secret = match &p.secret {
                            ServerSecret::Password(pw) => scram::Secret::password(pw.expose()),
                            ServerSecret::Scram(keys) => keys.clone(),
                            _ => return Err(missing(p, "a password or SCRAM keys")),
                        };
                        let s = ScramClient::new(secret);
                        let first = s.client_first();
                        let mut body = Vec::with_capacity(first.len() + 20);
                        body.extend_from_slice(b"SCRAM-SHA-256\0");
                        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                        body.extend_from_slice(&first);
                        password_message(&mut out, &body, false);
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| protocol(p, "SASL continue without SASL"))?;
                        let reply = s.server_first(&body[4..]).map_err(|e| scram_error(p, e))?;
                        password_message(&mut out, &reply, false);
                    }
                    12 => {
                        let s = scram
                            .as_ref()
                            .ok_or_else(|| protocol(p, "SASL final without SASL"))?;
                        s.server_final(&body[4..]).map_err(|e| scram_error(p, e))?;
                    }
                    other => {
                        return Err(ServerError::UnsupportedAuth {
                            addr: p.addr(),
                            method: auth_method_name(other).to_string(),
                        });
                    }
                }
                if !out.is_empty() {
                    write_flush(&mut stream, &out).await.map_err(io)?;
                }
            }
            be::PARAMETER_STATUS | be::COMMAND_COMPLETE if labelled => {}
            be::PARAMETER_STATUS => {
                let (name, rest) = frame::cstr(body).map_err(|e| protocol(p, &e.to_string()))?;
                let (value, _) = frame::cstr(rest).map_err(|e| protocol(p, &e.to_string()))?;
                params.params.push((name.to_string(), value.to_string()));
            }
            be::BACKEND_KEY_DATA => {
                params.backend_pid =
                    be_i32(body).ok_or_else(|| protocol(p, "short BackendKeyData"))?;
                params.backend_secret = body[4..].into();
            }
            be::READY_FOR_QUERY if !labelled => {
                // Labelled with a SET rather than in the startup packet, so
                // that the label is not the session's reset value: a
                // client's `RESET application_name` (or RESET ALL) then
                // gives '', as on a direct connection. The client's own
                // value replaces it with the first parameter sync.
                labelled = true;
                out.clear();
                frame::put_query(&mut out, LABEL);
                write_flush(&mut stream, &out).await.map_err(io)?;
            }
            be::READY_FOR_QUERY => {
                return Ok(ServerConn::new(
                    stream,
                    buf,
                    addr,
                    peer,
                    params,
                    p.prepared_capacity,
                    p.max_lifetime,
                ));
            }
            be::ERROR_RESPONSE => {
                let (_, code, message) = crate::protocol::error::parse_error_fields(&msg);
                return Err(ServerError::Rejected {
                    addr: p.addr(),
                    code: code.unwrap_or("?????").to_string(),
                    message: message.unwrap_or("").to_string(),
                    frame: msg.freeze(),
                });
            }
            be::NOTICE_RESPONSE | be::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(protocol(
                    p,
                    &format!("unexpected message '{}' during login", char::from(other)),
                ));
            }
        }
    }
}

/// Reads one complete message, refusing oversized ones.
async fn read_message(
    stream: &mut ServerStream,
    buf: &mut BytesMut,
    p: &LoginParams,
) -> Result<(u8, BytesMut), ServerError> {
    loop {
        match frame::header(buf).map_err(|e| protocol(p, &e.to_string()))? {
            Some((_, total)) if total > MAX_LOGIN_MESSAGE => {
                return Err(protocol(p, "oversized message during login"));
            }
            Some((tag, total)) if buf.len() >= total => {
                return Ok((tag, buf.split_to(total)));
            }
            _ => {}
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|source| ServerError::Io {
                addr: p.addr(),
                source,
            })?;
        if n == 0 {
            return Err(ServerError::Closed { addr: p.addr() });
        }
    }
}

fn password_message(out: &mut BytesMut, data: &[u8], nul: bool) {
    out.put_u8(b'p');
    out.put_u32((4 + data.len() + usize::from(nul)) as u32);
    out.put_slice(data);
    if nul {
        out.put_u8(0);
    }
}

fn missing(p: &LoginParams, what: &'static str) -> ServerError {
    ServerError::NoPassword {
        addr: p.addr(),
        user: p.user.clone(),
        what,
    }
}

fn be_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn protocol(p: &LoginParams, what: &str) -> ServerError {
    ServerError::Protocol {
        addr: p.addr(),
        what: what.to_string(),
    }
}

fn scram_error(p: &LoginParams, e: scram::ScramError) -> ServerError {
    ServerError::Scram {
        addr: p.addr(),
        reason: e.to_string(),
    }
}

fn auth_method_name(code: i32) -> &'static str {
    match code {
        2 => "Kerberos V5",
        6 => "SCM credentials",
        7 | 8 => "GSSAPI",
        9 => "SSPI",
        _ => "unknown",
    }
}
