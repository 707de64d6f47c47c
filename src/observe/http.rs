//! The HTTP endpoints on `[http].listen`: `/metrics` (Prometheus text),
//! `/healthz` (the process runs), `/readyz` (a primary is reachable),
//! `/queries` (top fingerprints, JSON). hyper 1, HTTP/1.1, GET and HEAD
//! only. Stopping finishes requests in flight (for up to 5 s).
//!
//! The HTTP side must never take the file descriptors clients need: a
//! request's headers must arrive within `[http] header_timeout`, at most
//! `[http] max_connections` connections are open at once, and none is
//! kept when the process nears its open-file limit ([`FdReserve`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ObserveError;
use super::observer::Observer;
use super::queries;

/// How long a stop waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(5);

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// A running HTTP server. Dropping it stops the server too (without
/// waiting); [`stop`](Self::stop) waits until it has stopped.
pub struct HttpHandle {
    /// The bound address (the real port when port 0 was configured).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl HttpHandle {
    /// Stops accepting, lets requests in flight finish, and returns when
    /// the server is down.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for HttpHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Observer {
    /// Binds `[http].listen` (port 0 picks a free port) and serves the
    /// endpoints until the handle is stopped or dropped.
    pub async fn serve_http(self: &Arc<Self>) -> Result<HttpHandle, ObserveError> {
        let listen = self.config().http.listen;
        let bind_error = |source| ObserveError::HttpBind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, self.clone(), stopped));
        tracing::info!(%addr, "HTTP endpoints listening");
        Ok(HttpHandle {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// The descriptors the HTTP side leaves to clients: it refuses a
/// connection whose descriptor is within this many of the open-file limit
/// (an eighth of the limit, at least 32). The kernel hands out the lowest
/// free number, so a high number means that many are in use.
struct FdReserve {
    refuse_from: u64,
}

impl FdReserve {
    fn new() -> Self {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            limit.rlim_cur
        } else {
            libc::RLIM_INFINITY
        };
        let reserve = (soft / 8).max(32);
        FdReserve {
            refuse_from: soft.saturating_sub(reserve),
        }
    }

    fn near_limit(&self, stream: &TcpStream) -> bool {
        u64::try_from(stream.as_raw_fd()).unwrap_or(0) >= self.refuse_from
    }
}

/// One of the `max_connections` slots, given back when the connection ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers 503 without reading the request (if the socket takes it at
/// once) and closes the connection.
fn refuse(stream: TcpStream, why: &str) {
    let body = format!("{why}\n");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {TEXT}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.try_write(format!("{head}{body}").as_bytes());
    tracing::debug!(why, "HTTP connection refused");
}

async fn serve(listener: TcpListener, observer: Arc<Observer>, mut stopped: oneshot::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    let reserve = FdReserve::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let http = observer.config().http.clone();
                    if reserve.near_limit(&stream) {
                        refuse(stream, "pgsidecar is near its open-file limit");
                        continue;
                    }
                    let Some(slot) = Slot::take(&open, http.max_connections as usize) else {
                        refuse(stream, "too many HTTP connections (http.max_connections)");
                        continue;
                    };
                    let observer = observer.clone();
                    let service = service_fn(move |req| {
                        let observer = observer.clone();
                        async move { Ok::<_, Infallible>(respond(&observer, &req)) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(http.header_timeout)
                        .serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _slot = slot;
                        if let Err(error) = conn.await {
                            tracing::debug!(%error, "HTTP connection ended");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off.
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP requests still running after {DRAIN:?}; closing");
    }
}

/// Routes one request.
fn respond(observer: &Observer, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz" | "/queries");
    if !known {
        return reply(StatusCode::NOT_FOUND, TEXT, format!("no endpoint {path}\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "use GET\n".to_string(),
        );
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => reply(StatusCode::OK, PROMETHEUS, observer.render_metrics()),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if observer.ready() => reply(StatusCode::OK, TEXT, "ready\n".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not ready: no reachable primary\n".into(),
        ),
        _ => match queries::parse_params(req.uri().query()) {
            Ok(params) => {
                let report = queries::report(observer.digests(), params);
                reply(StatusCode::OK, JSON, format!("{report}\n"))
            }
            Err(message) => reply(StatusCode::BAD_REQUEST, TEXT, format!("{message}\n")),
        },
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
