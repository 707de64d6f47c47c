//! From StartupMessage to ReadyForQuery: limits, user and database checks,
//! authentication, the server parameters the client is shown, and its
//! cancel key.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::{self, AuthFailure};
use super::buffer_budget::MessageLimits;
use super::credentials::UserAuth;
use super::params::ClientParams;
use super::registry::ClientInfo;
use super::session::SessionCtx;
use super::state::ClientState;
use super::strings::StringMode;
use super::tx_status::TxStatus;
use crate::config::ClientAuth;
use crate::logsafe;
use crate::observe::ErrorKind;
use crate::protocol::backend;
use crate::protocol::startup::StartupMessage;
use crate::protocol::{ClientEncoding, SqlState, WireError};
use crate::proxy::Shared;
use crate::server::{ClientReport, PoolKey};

/// Startup parameters that only the proxy may set on server connections.
const REFUSED_PARAMS: &[&str] = &["replication"];

/// What a client logged into.
pub enum LoggedIn {
    Session(Box<(SessionCtx, ClientState)>),
    /// The admin console (database `pgsidecar`).
    Console,
}

/// Logs a client in. On success the client has received AuthenticationOk,
/// its ParameterStatus set, BackendKeyData and ReadyForQuery.
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
    if startup.minor > 0 {
        // Newer 3.x clients: say which version and options we speak, as
        // Postgres does, and carry on with 3.0.
        let unsupported = startup
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect();
        backend::negotiate_protocol_version(&mut out, 0, unsupported);
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

    let credentials = shared.credentials.load_full();
    let method = config.auth.client_auth;
    let user_auth = match credentials.user(user) {
        Some(known) => known.clone(),
        // With trust there is no exchange to hide behind.
        None if method == ClientAuth::Trust => {
            return Err(WireError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                format!("role \"{user}\" is not allowed to connect through pgsidecar"),
            )
            .with_hint("add it to [[users]] in the pgsidecar config"));
        }
        // Anyone else learns nothing about which names exist: the exchange
        // runs as for a known user and fails like a wrong password.
        None => Arc::new(UserAuth::stand_in(user, method)),
    };
    if !stream_is_ok(stream, &out).await {
        return Ok(None);
    }
    out.clear();
    match auth::authenticate(stream, buf, method, &user_auth).await {
        Ok(()) => {}
        Err(AuthFailure::Gone) => return Ok(None),
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
        crate::admin::parameter_status(&mut out);
        backend::backend_key_data(&mut out, 0, 0);
        TxStatus::Idle.put_ready(&mut out);
        if !stream_is_ok(stream, &out).await {
            return Ok(None);
        }
        return Ok(Some(LoggedIn::Console));
    }

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
    let pool = shared
        .pools
        .get(&key, &config, || user_auth.server_secret());
    let params = match pool.server_params().await {
        Ok(p) => p,
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
                ClientReport::Error(w) => w.encode(&mut out),
            }
            let _ = crate::tls::write_flush(stream, &out).await;
            return Ok(None);
        }
    };

    // The client sees the server's parameters with its own startup values
    // (the proxy applies them on whichever server it gets).
    let mut client_params = ClientParams::from_startup(&startup.params);
    if let Some(default) = params.get("client_encoding") {
        client_params.set_default_encoding(default);
    }
    for (name, value) in &params.params {
        let value = match client_params.startup_raw(&name.to_lowercase()) {
            // As the server reports it: `UTF8` for `utf8`, `EUC_JP` for
            // `eucjp` (drivers look the name up in their own tables).
            Some(v) if name == "client_encoding" => ClientEncoding::reported(v).unwrap_or(v),
            Some(v) => v,
            None => value.as_str(),
        };
        backend::parameter_status(&mut out, name, value);
    }
    if client_params.startup_raw("application_name").is_some()
        && params.get("application_name").is_none()
    {
        let name = client_params.startup_raw("application_name").unwrap_or("");
        backend::parameter_status(&mut out, "application_name", name);
    }
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
    // How the client's statements' strings are read, as the client was
    // told: its own startup value, else the server's.
    let strings = StringMode::at_login(
        client_params
            .startup_raw("standard_conforming_strings")
            .or(params.get("standard_conforming_strings")),
    );
    let mut state = ClientState::new(client_params);
    state.memo.strings = strings;
    Ok(Some(LoggedIn::Session(Box::new((
        SessionCtx {
            shared: shared.clone(),
            user: user_auth,
            database: database.to_string(),
            mode: config.proxy.pool_mode,
            messages: MessageLimits::new(
                config.proxy.max_message_size as usize,
                shared.message_memory.clone(),
            ),
            cancel,
        },
        state,
    )))))
}

async fn stream_is_ok<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) -> bool {
    out.is_empty() || crate::tls::write_flush(stream, out).await.is_ok()
}
