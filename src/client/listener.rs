//! Accepting client connections on TCP and on the Unix socket: one task
//! per client, each with a login deadline, the client counter, and cancel
//! requests handled on the spot.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::net::TcpListener;

use super::handshake::{self, Opening};
use super::registry::ClientAddr;
use super::unix_socket::UnixSocket;
use super::{login, session};
use crate::observe::ErrorKind;
use crate::proxy::Shared;
use crate::tls::{ClientStream, ClientTransport};

/// Binds the client port with SO_REUSEPORT, so that a new pgsidecar can
/// serve the same port while an old one drains (rolling restart).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A listening socket: TCP, or the Unix socket (which removes its file
/// when the loop ends and drops it).
pub trait Accept: Send + 'static {
    type Stream: ClientTransport;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, ClientAddr)>> + Send;
}

impl Accept for TcpListener {
    type Stream = ClientStream;

    async fn accept(&self) -> std::io::Result<(ClientStream, ClientAddr)> {
        let (tcp, peer) = TcpListener::accept(self).await?;
        Ok((ClientStream::Plain(tcp), ClientAddr::Tcp(peer)))
    }
}

impl Accept for UnixSocket {
    type Stream = tokio::net::UnixStream;

    async fn accept(&self) -> std::io::Result<(Self::Stream, ClientAddr)> {
        let (stream, _) = self.listener.accept().await?;
        Ok((stream, ClientAddr::Unix { port: self.port }))
    }
}

/// How often a run of failed accepts is logged: at descriptor exhaustion
/// accept fails every 50 ms, and a line each time would flood the log.
const ACCEPT_ERROR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs the first failed accept of a run, then one line per
/// [`ACCEPT_ERROR_LOG_EVERY`] with the number of failures in between.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn failed(&mut self, error: &std::io::Error, now: std::time::Instant) -> bool {
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_EVERY);
        if !due {
            self.unlogged += 1;
            return false;
        }
        let since = std::mem::take(&mut self.unlogged);
        tracing::warn!(%error, failed_since_last_line = since, "accept failed");
        self.last_logged = Some(now);
        true
    }
}

/// Accepts clients until shutdown starts.
pub async fn accept_loop<L: Accept>(listener: L, shared: Arc<Shared>) {
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                // `handle` itself, not an async block calling it: the
                // block kept its own copy of the arguments beside
                // handle's, 88 bytes in every client's task.
                shared.sessions.spawn(handle(shared.clone(), stream, peer));
            }
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                errors.failed(&error, std::time::Instant::now());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Decrements the client count however the task ends.
struct Counted(Arc<Shared>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client's task: logs it in, then serves it until it leaves.
///
/// Why the login is a boxed future of its own: every connected client's
/// task is as large as this future, and everything the login needs
/// (negotiation, authentication, the first server connection, writing a
/// refusal) stays in the box, freed once the client is in. What stays is
/// the arguments (an async fn keeps them for its whole life), the count
/// guard and the session's future (`tests::a_clients_task_stays_small`).
async fn handle<S: ClientTransport>(shared: Arc<Shared>, stream: S, peer: ClientAddr) {
    tracing::debug!(%peer, "client connected");
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let _counted = Counted(shared.clone());
    if let Some(session) = Box::pin(log_in(shared, stream, peer)).await {
        session::run(session).await;
    }
}

/// Negotiates and logs a client in: its session, or `None` once a
/// refusal, a cancel request or a console session is over.
async fn log_in<S: ClientTransport>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: ClientAddr,
) -> Option<Box<session::Session<S>>> {
    stream.set_options();
    let mut buf = BytesMut::with_capacity(256);
    let deadline = shared.config.load().proxy.client_login_timeout;
    let tls = shared.client_tls.load_full();

    let logged_in = tokio::time::timeout(deadline, async {
        match handshake::negotiate(&mut stream, &mut buf, &tls).await? {
            Opening::Closed => Ok(None),
            Opening::Cancel { pid, secret } => {
                shared.clients.cancel(pid, &secret).await;
                Ok(None)
            }
            Opening::Startup(startup) => {
                login::login(&shared, &mut stream, &mut buf, startup, peer).await
            }
        }
    })
    .await;

    let (ctx, client) = match logged_in {
        Ok(Ok(Some(login::LoggedIn::Session(session)))) => *session,
        Ok(Ok(Some(login::LoggedIn::Console))) => {
            crate::admin::run(stream, buf, shared).await;
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Err(error)) => {
            shared.observer.metrics().error(login_error_kind(&error));
            let _ = crate::tls::write_flush(&mut stream, &error.to_bytes()).await;
            return None;
        }
        Err(_) => {
            shared.observer.metrics().error(ErrorKind::Protocol);
            let error = crate::protocol::WireError::fatal(
                crate::protocol::SqlState::CANNOT_CONNECT_NOW,
                format!("login did not complete within {deadline:?} (proxy.client_login_timeout)"),
            );
            let _ = crate::tls::write_flush(&mut stream, &error.to_bytes()).await;
            return None;
        }
    };
    Some(Box::new(session::Session {
        stream,
        cbuf: buf,
        ctx,
        client,
    }))
}

/// The `errors_total` kind of a refused login.
fn login_error_kind(error: &crate::protocol::WireError) -> ErrorKind {
    use crate::protocol::SqlState;
    match error.code {
        SqlState::INVALID_PASSWORD | SqlState::INVALID_AUTHORIZATION => ErrorKind::Auth,
        SqlState::INVALID_CATALOG_NAME => ErrorKind::Auth,
        SqlState::TOO_MANY_CONNECTIONS => ErrorKind::TooManyClients,
        SqlState::CONNECTION_FAILURE => ErrorKind::NoNode,
        _ => ErrorKind::Protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_run_of_failed_accepts_is_logged_once_per_interval() {
        let mut errors = AcceptErrors::default();
        let error = std::io::Error::from_raw_os_error(24);
        let start = Instant::now();
        assert!(errors.failed(&error, start), "the first failure is logged");
        let logged = (1..=200)
            .filter(|i| errors.failed(&error, start + Duration::from_millis(50 * i)))
            .count();
        // 10 s of failures every 50 ms: one more line at the 10 s mark.
        assert_eq!(logged, 1);
        assert_eq!(
            errors.unlogged, 0,
            "the logged line counted the failures before it"
        );
        assert!(!errors.failed(&error, start + Duration::from_millis(10_001)));
        assert_eq!(errors.unlogged, 1);
    }
}

#[cfg(test)]
mod task_size {
    use super::*;

    fn future_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What a connected client's task holds for its whole life. Tokio
    /// keeps it in a 128-byte-aligned cell with ~100 bytes of its own:
    /// each 128 bytes crossed is 128 more per idle client.
    #[test]
    fn a_clients_whole_task_stays_small() {
        let tcp = future_size(handle::<ClientStream>);
        let unix = future_size(handle::<tokio::net::UnixStream>);
        eprintln!("client task: {tcp} bytes (unix {unix})");
        // 1,624 with the login boxed apart and `handle` spawned itself
        // (the session's own future 1,480: `session::tests`): a
        // 1,792-byte cell (massif). 1,912 with an async block around
        // `handle` and the login inline: a 2,048-byte cell. 1,576 with
        // one StopSignal per session and the session's future 1,432.
        assert!(
            tcp <= 1576 && unix <= 1576,
            "a client's task grew to {tcp} bytes: every idle client pays it (keep rare or large states boxed)"
        );
    }
}
