//! Plain-or-TLS streams. The session, relay and login code are generic
//! over `AsyncRead + AsyncWrite`; these enums let one type stand for either
//! without boxing every read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsAcceptor;

/// A client's connection.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Between taking the plain socket and getting the TLS one back (or
    /// after a failed handshake): every I/O fails.
    Detached,
}

/// A connection to a Postgres node.
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A client connection as the opening handshake sees it: a TCP one may be
/// upgraded to TLS, a Unix socket one never is. Each transport is its own
/// type (not one more enum variant), so the TCP session code is exactly
/// what it was and neither pays a branch per read for the other.
pub trait ClientTransport:
    AsyncRead + AsyncWrite + WaitReadable + Unpin + Send + Sync + 'static
{
    /// Whether an SSLRequest may be answered 'S' and `[proxy] tls_mode =
    /// "require"` applies. Not on a Unix socket, as with Postgres (hostssl
    /// lines never match a local connection): libpq does not ask for TLS
    /// there, and the bytes never leave the host.
    const OFFERS_TLS: bool;
    /// Socket options for a new client (TCP_NODELAY on TCP), set in the
    /// client's task rather than the accept loop's.
    fn set_options(&self) {}
    fn is_tls(&self) -> bool;
    /// Runs the TLS handshake on the plain socket (after 'S' was sent).
    fn upgrade(
        &mut self,
        acceptor: &TlsAcceptor,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

impl ClientTransport for ClientStream {
    const OFFERS_TLS: bool = true;

    fn set_options(&self) {
        if let ClientStream::Plain(tcp) = self {
            let _ = tcp.set_nodelay(true);
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    async fn upgrade(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let ClientStream::Plain(tcp) = std::mem::replace(self, ClientStream::Detached) else {
            return Err(io::Error::other("TLS requested twice"));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = ClientStream::Tls(Box::new(tls));
        Ok(())
    }
}

impl ClientTransport for UnixStream {
    const OFFERS_TLS: bool = false;

    fn is_tls(&self) -> bool {
        false
    }

    async fn upgrade(&mut self, _acceptor: &TlsAcceptor) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no TLS on a Unix socket",
        ))
    }
}

impl ServerStream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ServerStream::Plain(s) => s,
            ServerStream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }
}

/// Waiting for a client's next request without a read buffer: with
/// thousands of idle clients, their buffers would be most of the memory.
pub trait WaitReadable {
    /// Whether a read that finds nothing leaves no bytes behind in the
    /// stream itself, so that the buffer can be let go of while waiting
    /// (`input::read_more`). Not for TLS: rustls may already hold
    /// decrypted bytes.
    fn can_wait_unbuffered(&self) -> bool;

    /// Whether the stream holds no bytes of its own and its socket is not
    /// readable as the runtime last heard (a look at its readiness: nothing
    /// read, cleared or registered). `false` when unsure (TLS). The relay
    /// asks this of a socket whose last read found nothing: its waker is
    /// then still registered, so a read now would only find nothing again
    /// (see `relay::poll`).
    #[inline]
    fn surely_unreadable(&self) -> bool {
        false
    }
}

impl WaitReadable for ClientStream {
    fn can_wait_unbuffered(&self) -> bool {
        matches!(self, ClientStream::Plain(_))
    }

    #[inline]
    fn surely_unreadable(&self) -> bool {
        matches!(self, ClientStream::Plain(tcp) if not_readable(tcp))
    }
}

impl WaitReadable for UnixStream {
    fn can_wait_unbuffered(&self) -> bool {
        true
    }

    #[inline]
    fn surely_unreadable(&self) -> bool {
        self.try_io(Interest::READABLE, || Ok(())).is_err()
    }
}

impl ServerStream {
    /// As [`WaitReadable::surely_unreadable`].
    #[inline]
    pub fn surely_unreadable(&self) -> bool {
        matches!(self, ServerStream::Plain(tcp) if not_readable(tcp))
    }
}

/// The socket's readiness says not readable. `try_io` calls the closure
/// only when it is, and a closure that does no I/O and returns `Ok`
/// leaves the readiness as it was.
#[inline]
fn not_readable(tcp: &TcpStream) -> bool {
    tcp.try_io(Interest::READABLE, || Ok(())).is_err()
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection detached")
}

// The reads, writes and flushes are marked #[inline]: each is a branch
// on the variant around a call, made several times per transaction, and
// some builds kept them out of line (a call, and a plain socket's flush
// that does nothing, ~20 instructions each).
impl AsyncRead for ClientStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for ClientStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Detached => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for ServerStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Writes `bytes` and flushes: a TLS stream may keep written bytes in its
/// buffer until flushed, and the peer is waiting for them.
pub async fn write_flush<S>(stream: &mut S, bytes: &[u8]) -> io::Result<()>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::AsyncWriteExt;
    stream.write_all(bytes).await?;
    stream.flush().await
}
