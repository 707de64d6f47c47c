//! One open connection to a Postgres node, logged in and ready for queries,
//! with the buffers the relay uses while a client holds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;

use super::cancel::CancelTarget;
use super::prepared::PreparedOnServer;
use crate::client::clock::Tick;
use crate::tls::ServerStream;

/// What a server reported at login: its ParameterStatus values and the key
/// a CancelRequest needs.
#[derive(Debug, Default, Clone)]
pub struct ServerParams {
    pub params: Vec<(String, String)>,
    pub backend_pid: i32,
    /// Shared, so handing it to each client's cancel slot copies nothing.
    pub backend_secret: Arc<[u8]>,
}

impl ServerParams {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a connection may go back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Idle at a protocol boundary (ReadyForQuery 'I'): reusable.
    Clean,
    /// Mid-protocol, in a transaction, or failed: must be closed.
    Broken,
    /// Healthy but no longer wanted (its budget slot is needed elsewhere):
    /// closed without the pool treating it as a failure.
    Retired,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How a server connection is reached from outside the client holding it:
/// where a cancel for its query goes, and how the admin console names it.
/// Built once at login and shared: recording the server a client holds
/// (twice a transaction, `ClientSlot::set_server`) then copies a pointer
/// instead of building and dropping a link with its shared parts.
#[derive(Debug)]
pub struct ServerLink {
    pub cancel: CancelTarget,
    pub node: Arc<str>,
    pub server_id: u64,
}

/// A logged-in server connection.
pub struct ServerConn {
    pub(crate) stream: ServerStream,
    /// Bytes read from the server not yet forwarded.
    pub(crate) rbuf: BytesMut,
    /// Bytes queued for the server.
    pub(crate) wbuf: BytesMut,
    pub id: u64,
    pub addr: Arc<str>,
    pub peer: std::net::SocketAddr,
    pub params: Arc<ServerParams>,
    /// Handed to the client's cancel slot while a client holds it.
    pub link: Arc<ServerLink>,
    /// When it reaches `max_lifetime` (`None`: beyond any clock), worked
    /// out once at login so that each handoff compares two instants
    /// instead of subtracting them.
    retire_at: Option<Tick>,
    /// When a client last gave it back (see [`ServerConn::needs_check`]).
    returned: Tick,
    health: Health,
    pub state: ServerState,
    /// Keeps it listed in its pool until closed.
    pub(crate) registration: Option<super::pool::Registration>,
}

/// Session state the proxy has left on a server connection.
pub struct ServerState {
    /// Proxy-named prepared statements present on it.
    pub prepared: PreparedOnServer,
    /// Session parameters the proxy has set on it.
    pub params: crate::client::params::ServerParamsState,
}

/// The I/O half of a split connection.
pub struct ServerIoParts<'a> {
    pub stream: &'a mut ServerStream,
    pub rbuf: &'a mut BytesMut,
    pub wbuf: &'a mut BytesMut,
}

impl ServerConn {
    pub(crate) fn new(
        stream: ServerStream,
        rbuf: BytesMut,
        addr: Arc<str>,
        peer: std::net::SocketAddr,
        params: ServerParams,
        prepared_capacity: usize,
        max_lifetime: Duration,
    ) -> Self {
        let created = Tick::now();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(ServerLink {
            cancel: CancelTarget {
                server: peer,
                pid: params.backend_pid,
                secret: params.backend_secret.clone(),
            },
            node: addr.clone(),
            server_id: id,
        });
        ServerConn {
            stream,
            rbuf,
            wbuf: BytesMut::with_capacity(4096),
            id,
            addr,
            peer,
            params: Arc::new(params),
            link,
            retire_at: created.checked_add(max_lifetime),
            returned: created,
            health: Health::Clean,
            state: ServerState {
                prepared: PreparedOnServer::new(prepared_capacity),
                params: Default::default(),
            },
            registration: None,
        }
    }

    /// Marks the connection unusable: the pool will close it instead of
    /// handing it to the next client.
    pub fn mark_broken(&mut self) {
        self.health = Health::Broken;
    }

    /// Closes it when it is next given back, as a healthy connection that
    /// is no longer wanted (see [`Health::Retired`]).
    pub fn retire(&mut self) {
        if self.health == Health::Clean {
            self.health = Health::Retired;
        }
    }

    /// Whether the pool must close it (broken or retired).
    pub fn is_broken(&self) -> bool {
        self.health != Health::Clean
    }

    /// Whether it failed (as opposed to being retired).
    pub fn has_failed(&self) -> bool {
        self.health == Health::Broken
    }

    /// Notes when it was given back (`Handoff::give`, which reads the
    /// clock once for this and for the waiter it goes to).
    pub fn mark_returned_at(&mut self, at: Tick) {
        self.returned = at;
    }

    /// Whether it had reached `max_lifetime` when last given back (what
    /// closes it instead of handing it straight to the next client).
    pub fn too_old_when_returned(&self) -> bool {
        self.retire_at.is_some_and(|at| self.returned >= at)
    }

    /// Whether [`check_idle`](Self::check_idle) is worth its system call
    /// before handing the connection out: after it sat idle for `after`,
    /// or while its pool has recently lost connections (a restart or a
    /// mass kill leaves many dead ones behind). A backend killed in the
    /// moments between two transactions is still caught: the request that
    /// reaches it is retried on another connection (the session's retry).
    /// `now`: the caller's clock reading.
    pub fn needs_check(&self, after: std::time::Duration, pool_troubled: bool, now: Tick) -> bool {
        pool_troubled || now.saturating_duration_since(self.returned) >= after
    }

    /// Check before handing an idle connection out: an idle server sends
    /// nothing, so anything to read (a FATAL from pg_terminate_backend, EOF
    /// after a restart, a TLS alert) means it is gone. Peeks at the socket
    /// itself (one non-blocking system call) rather than trusting the
    /// reactor's readiness, which may not have caught up with a backend
    /// killed a moment ago.
    pub fn check_idle(&mut self) -> bool {
        if self.is_broken() || !self.rbuf.is_empty() || !self.wbuf.is_empty() {
            return false;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(self.stream.tcp()).peek(&mut probe) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            // EOF, or bytes an idle server never sends.
            Ok(_) => false,
        }
    }

    /// Splits the connection into its I/O parts and its session state, so
    /// the relay can drive one while the session updates the other.
    pub fn split(&mut self) -> (ServerIoParts<'_>, &mut ServerState) {
        (
            ServerIoParts {
                stream: &mut self.stream,
                rbuf: &mut self.rbuf,
                wbuf: &mut self.wbuf,
            },
            &mut self.state,
        )
    }
}

impl ServerConn {
    /// Runs a statement of the proxy's own (ROLLBACK, DISCARD ALL) and waits
    /// for ReadyForQuery, returning its status. Any error response marks
    /// the connection broken: the proxy's statements are not supposed to fail.
    pub async fn run_internal(&mut self, sql: &str) -> std::io::Result<u8> {
        use tokio::io::AsyncReadExt;
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        crate::protocol::frame::put_query(&mut out, sql);
        crate::tls::write_flush(&mut self.stream, &out).await?;
        let mut failed = false;
        loop {
            while let Some((tag, total)) = crate::protocol::frame::header(&self.rbuf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            {
                if self.rbuf.len() < total {
                    break;
                }
                let msg = self.rbuf.split_to(total);
                match tag {
                    b'E' => failed = true,
                    b'Z' => {
                        if failed {
                            self.mark_broken();
                        }
                        return Ok(crate::protocol::frame::ready_status(&msg));
                    }
                    _ => {}
                }
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                self.mark_broken();
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}
