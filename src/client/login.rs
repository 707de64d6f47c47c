//! From StartupMessage to ReadyForQuery: limits, user and database checks,
//! authentication, the server parameters the client is shown, and its
//! cancel key.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::{self, AuthFailure};
use super::buffer_budget::MessageLimits;
use super::credentials::{Credentials, UserAuth};
use super::params::ClientParams;
use super::registry::ClientInfo;
use super::session::SessionCtx;
use super::state::ClientState;
use super::strings::StringMode;
use super::tx_status::TxStatus;
use crate::config::{ClientAuth, Config};
use crate::logsafe;
use crate::observe::ErrorKind;
use crate::protocol::backend;
use crate::protocol::startup::StartupMessage;
use crate::protocol::{ClientEncoding, SqlState, WireError};
use crate::proxy::Shared;
use crate::server::{ClientReport, PoolKey, ServerParams};

/// Startup parameters that only the proxy may set on server connections.
const REFUSED_PARAMS: &[&str] = &["replication"];

/// What a client logged into.
pub enum LoggedIn {
    Session(Box<(SessionCtx, ClientState)>),
    /// The admin console (database `pgsidecar`).
    Console,
}

/// Logs a client in. On success the client has received AuthenticationOk,
/// its ParameterStatus set, BackendKeyData and ReadyForQuery. `Ok(None)`:
/// the client went away, or was already told why not.
pub async fn login<S>(
    shared: &Arc<Shared>,
    stream: &mut S,
    buf: &mut BytesMut,
    startup: StartupMessage,
    peer: super::registry::ClientAddr,
) -> Result<Option<LoggedIn>, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = shared.config.load_full();
    let mut out = BytesMut::with_capacity(512);
    let (user, database) = check_startup(&startup, shared, &config, &mut out)?;
    let credentials = shared.credentials.load_full();
    let method = config.auth.client_auth;
    let user_auth = user_auth(&credentials, user, method)?;
    if !stream_is_ok(stream, &out).await {
        return Ok(None);
    }
    out.clear();
    if !authenticate(
        &credentials,
        stream,
        buf,
        method,
        &user_auth,
        user,
        database,
    )
    .await?
    {
        return Ok(None);
    }
    // Checked after authentication, so that it tells a stranger nothing.
    let console = database == crate::admin::DATABASE;
    if console && !config.admin.users.iter().any(|u| u == user) {
        return Err(WireError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            format!("role \"{user}\" may not open the pgsidecar console"),
        )
        .with_hint("list it in [admin] users"));
    }
    backend::auth_ok(&mut out);
    if console {
        // The console's own parameters; it has no cancel key.
        crate::admin::parameter_status(&mut out);
        backend::backend_key_data(&mut out, 0, 0);
        TxStatus::Idle.put_ready(&mut out);
        return Ok(stream_is_ok(stream, &out)
            .await
            .then_some(LoggedIn::Console));
    }
    let Some(params) = server_params(
        shared, &config, stream, &mut out, user, database, &user_auth,
    )
    .await?
    else {
        return Ok(None);
    };
    let client_params = parameter_status(&startup, &params, &mut out);
    let cancel = shared.clients.register(ClientInfo {
        user: user.to_string(),
        database: database.to_string(),
        application_name: client_params
            .startup_raw("application_name")
            .unwrap_or("")
            .to_string(),
        addr: peer,
        connected_at: std::time::SystemTime::now(),
    });
    backend::backend_key_data(&mut out, cancel.slot.pid, cancel.slot.secret);
    TxStatus::Idle.put_ready(&mut out);
    if !stream_is_ok(stream, &out).await {
        return Ok(None);
    }
    let ctx = SessionCtx {
        shared: shared.clone(),
        user: user_auth,
        database: database.to_string(),
        mode: config.proxy.pool_mode,
        messages: MessageLimits::new(
            config.proxy.max_message_size as usize,
            shared.message_memory.clone(),
        ),
        cancel,
    };
    let state = client_state(client_params, &params);
    Ok(Some(LoggedIn::Session(Box::new((ctx, state)))))
}

/// What the proxy remembers about the client from its login.
fn client_state(client_params: ClientParams, params: &ServerParams) -> ClientState {
    // How the client's statements' strings are read, as the client was
    // told: its own startup value, else the server's.
    let strings = StringMode::at_login(
        client_params
            .startup_raw("standard_conforming_strings")
            .or(params.get("standard_conforming_strings")),
    );
    let mut state = ClientState::new(client_params);
    state.memo.strings = strings;
    state
}

/// What the StartupMessage asks for, checked before anything else: the
/// protocol version (a newer 3.x client is told what the proxy speaks, in
/// `out`), no replication, a user name, and room for another client.
/// Returns the user and the database.
fn check_startup<'m>(
    startup: &'m StartupMessage,
    shared: &Shared,
    config: &Config,
    out: &mut BytesMut,
) -> Result<(&'m str, &'m str), WireError> {
    if startup.minor > 0 {
        // Newer 3.x clients: say which version and options we speak, as
        // Postgres does, and carry on with 3.0.
        let unsupported = startup
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect();
        backend::negotiate_protocol_version(out, 0, unsupported);
    }
    if let Some((name, _)) = startup
        .params
        .iter()
        .find(|(k, _)| REFUSED_PARAMS.contains(&k.as_str()))
    {
        return Err(WireError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!(
                "pgsidecar does not support the \"{name}\" startup parameter (replication connections)"
            ),
        ));
    }
    let Some(user) = startup.param("user").filter(|u| !u.is_empty()) else {
        return Err(WireError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        ));
    };
    let database = startup
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user);

    let connected = shared.connected.load(std::sync::atomic::Ordering::Relaxed);
    if connected > config.proxy.max_client_conn as usize {
        return Err(WireError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!(
                "sorry, too many clients already (max_client_conn is {})",
                config.proxy.max_client_conn
            ),
        ));
    }
    Ok((user, database))
}

/// The credentials `user` authenticates against: its own, or a stand-in
/// that fails like a wrong password for a name the proxy does not know.
fn user_auth(
    credentials: &Credentials,
    user: &str,
    method: ClientAuth,
) -> Result<Arc<UserAuth>, WireError> {
    match credentials.user(user) {
        Some(known) => Ok(known.clone()),
        // With trust there is no exchange to hide behind.
        None if method == ClientAuth::Trust => Err(WireError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            format!("role \"{user}\" is not allowed to connect through pgsidecar"),
        )
        .with_hint("add it to [[users]] in the pgsidecar config")),
        // Anyone else learns nothing about which names exist: the exchange
        // runs as for a known user and fails like a wrong password.
        None => Ok(Arc::new(UserAuth::stand_in(user, method))),
    }
}

/// Runs the authentication exchange; false if the client went away.
async fn authenticate<S>(
    credentials: &Credentials,
    stream: &mut S,
    buf: &mut BytesMut,
    method: ClientAuth,
    user_auth: &UserAuth,
    user: &str,
    database: &str,
) -> Result<bool, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match auth::authenticate(stream, buf, method, user_auth).await {
        Ok(()) => {}
        Err(AuthFailure::Gone) => return Ok(false),
        Err(AuthFailure::Refused(e)) => {
            let error = e.to_string();
            tracing::info!(
                user = &*logsafe::name(user),
                database = &*logsafe::name(database),
                error = %logsafe::message(&error),
                "client authentication failed"
            );
            return Err(e);
        }
    }
    if credentials.user(user).is_none() {
        // A stand-in never authenticates; this is only a second lock.
        return Err(WireError::fatal(
            SqlState::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        ));
    }
    Ok(true)
}

/// The parameters of a server on the primary (opening the pool's first
/// connection if need be), so that a server-side refusal reaches the
/// client at once: then it is written to the client, and `None` returned.
async fn server_params<S>(
    shared: &Shared,
    config: &Config,
    stream: &mut S,
    out: &mut BytesMut,
    user: &str,
    database: &str,
    user_auth: &UserAuth,
) -> Result<Option<Arc<ServerParams>>, WireError>
where
    S: AsyncWrite + Unpin,
{
    let cluster = shared.cluster().clone();
    // Just after a start or a failover the monitor may not have settled on
    // a primary yet: wait for one as a request waits for a server.
    let Some(primary) = cluster.wait_for_primary(config.pool.checkout_timeout).await else {
        return Err(WireError::fatal(
            SqlState::CONNECTION_FAILURE,
            format!("no primary is available: {}", cluster.no_primary_reason()),
        ));
    };
    let key = PoolKey {
        database: database.to_string(),
        user: user.to_string(),
        node: cluster.addr(primary).clone(),
    };
    let pool = shared.pools.get(&key, config, || user_auth.server_secret());
    match pool.server_params().await {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            let error = e.to_string();
            tracing::warn!(
                user = &*logsafe::name(user),
                database = &*logsafe::name(database),
                error = %logsafe::message(&error),
                "server login failed"
            );
            shared.observer.metrics().error(ErrorKind::Server);
            shared.pools.forget_if_unused(&key);
            match e.to_client() {
                ClientReport::Forward(frame) => out.extend_from_slice(&frame),
                ClientReport::Error(w) => w.encode(out),
            }
            let _ = crate::tls::write_flush(stream, out).await;
            Ok(None)
        }
    }
}

/// The client's session parameters, and the ParameterStatus set it is
/// shown: the server's parameters with its own startup values (the proxy
/// applies them on whichever server it gets).
fn parameter_status(
    startup: &StartupMessage,
    params: &ServerParams,
    out: &mut BytesMut,
) -> ClientParams {
    let mut client_params = ClientParams::from_startup(&startup.params);
    if let Some(default) = params.get("client_encoding") {
        client_params.set_default_encoding(default);
    }
    for (name, value) in &params.params {
        // Server parameter names are ASCII, most already lower case
        // (`DateStyle`, `TimeZone` are not): no copy for the others.
        let lower;
        let key = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name.as_str()
        };
        let value = match client_params.startup_raw(key) {
            // As the server reports it: `UTF8` for `utf8`, `EUC_JP` for
            // `eucjp` (drivers look the name up in their own tables).
            Some(v) if name == "client_encoding" => ClientEncoding::reported(v).unwrap_or(v),
            Some(v) => v,
            None => value.as_str(),
        };
        backend::parameter_status(out, name, value);
    }
    if client_params.startup_raw("application_name").is_some()
        && params.get("application_name").is_none()
    {
        let name = client_params.startup_raw("application_name").unwrap_or("");
        backend::parameter_status(out, "application_name", name);
    }
    client_params
}

async fn stream_is_ok<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) -> bool {
    out.is_empty() || crate::tls::write_flush(stream, out).await.is_ok()
}
