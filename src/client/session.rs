//! One client's life after login: wait for a request, answer it on the spot
//! if no server is needed, otherwise route it and take a server from that
//! node's pool, relay until the server can be released (transaction end in
//! transaction mode, disconnect in session mode or while pinned), and leave
//! the server clean when the client goes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::buffer_budget::MessageLimits;
use super::credentials::UserAuth;
use super::flow::{HeldEnv, SessionFlow};
use super::hold::{self, Held, NodePools};
use super::idle::{self, Idle};
use super::input::{next_frame, read_more};
use super::limits::{self, RelayTimers};
use super::registry::{ClientHandle, ClientSlot};
use super::relay::{self, RelayEnd};
use super::route;
use super::state::ClientState;
use super::stop_signal::{ForceClose, StopSignal};
use super::tx_status::TxStatus;
use crate::config::PoolMode;
use crate::observe::ErrorKind;
use crate::protocol::frame;
use crate::protocol::{SqlState, WireError};
use crate::proxy::Shared;
use crate::tls::WaitReadable;

/// Everything a session needs besides its socket.
pub struct SessionCtx {
    pub shared: Arc<Shared>,
    pub user: Arc<UserAuth>,
    pub database: String,
    pub mode: PoolMode,
    pub messages: MessageLimits,
    pub cancel: ClientHandle,
}

/// What a logged-in client's task owns. Boxed and borrowed from, so the
/// task's state holds it once: an async fn keeps its arguments apart from
/// the locals they move into, which would count them twice per client.
pub struct Session<S> {
    pub stream: S,
    pub cbuf: BytesMut,
    pub ctx: SessionCtx,
    pub client: ClientState,
}

/// Runs a logged-in client until it leaves.
pub async fn run<S>(mut session: Box<Session<S>>)
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin,
{
    let Session {
        stream,
        cbuf,
        ctx,
        client,
    } = &mut *session;
    let mut phase = Phase::Idle;
    let mut kept = Kept {
        retry: Retry::default(),
        books: hold::Books::default(),
        pools: NodePools::new(&ctx.shared.config),
    };
    let span = tracing::debug_span!("client", pid = ctx.cancel.slot.pid);
    let result = InSpan {
        inner: serve(stream, cbuf, ctx, client, &mut phase, &mut kept),
        span,
    }
    .await;
    close(stream, ctx, client, phase, &mut kept.books, result).await;
}

pin_project_lite::pin_project! {
    /// `tracing::Instrumented`, minus its cost when the span is off (the
    /// default: it is a debug span). Instrumented enters and leaves the
    /// span on every poll of the session, a few times per transaction,
    /// and even a disabled span asks each time whether a `log` logger
    /// should hear of it (tracing's `log` feature is on through a
    /// dependency): ~40 instructions per poll for nothing. A disabled
    /// span never becomes enabled, so here it is checked once per poll.
    struct InSpan<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.span.is_disabled() {
            return this.inner.poll(cx);
        }
        let _entered = this.span.enter();
        this.inner.poll(cx)
    }
}

/// The end of a session, however it came (Terminate, the client gone, a
/// FATAL error for it, shutdown, a server's own FATAL): the final error
/// sent if there is one, the held server left clean, and after a refusal
/// mid-message, the linger that lets the client read its error.
async fn close<S>(
    stream: &mut S,
    ctx: &SessionCtx,
    client: &mut ClientState,
    phase: Phase,
    books: &mut hold::Books,
    result: Result<(), WireError>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut refused_mid_message = false;
    if let Err(e) = result {
        if e.code == SqlState::PROTOCOL_VIOLATION {
            ctx.shared.observer.metrics().error(ErrorKind::Protocol);
        }
        let text = e.to_bytes_in(client.params.encoding());
        let sent = crate::tls::write_flush(stream, &text).await.is_ok();
        refused_mid_message =
            sent && (e.code == SqlState::PROTOCOL_VIOLATION || e.code == SqlState::OUT_OF_MEMORY);
    }
    if unset_server(&ctx.cancel.slot) {
        // Boxed: rare, and kept out of every client task's size.
        Box::pin(ctx.cancel.slot.cancels_settled()).await;
    }
    if let Phase::Holding(h) = phase {
        Box::pin(hold::leave(h, books, client, ctx.mode)).await;
    }
    if refused_mid_message {
        // Boxed: rare, and kept out of every client task's size.
        Box::pin(linger(stream)).await;
    }
}

/// The client no longer holds its server: no cancel can reach it through
/// the client from now on. True while cancels already on their way have
/// not arrived: the server then goes back to the pool only once
/// `cancels_settled` says so (a late one would stop whatever the server
/// runs next, possibly another client's query). A plain function, not an
/// async one awaited: that cost ~20 instructions per transaction for the
/// future's states, and the wait almost never happens.
#[inline]
fn unset_server(slot: &ClientSlot) -> bool {
    slot.unset_server()
}

/// How long a refused client's remaining input is read and dropped.
const LINGER: Duration = Duration::from_secs(1);

/// After a FATAL error sent while the client may still be sending (a
/// message refused at its header: too large, or past the memory for large
/// messages): closing with its bytes unread would make the kernel reset
/// the connection, and the client could lose the error before reading it.
/// So the proxy stops writing and reads what is still coming, dropping it,
/// until the client closes or [`LINGER`] passes.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::AsyncWriteExt;
    let _ = stream.shutdown().await;
    let mut sink = vec![0u8; 8192];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// What the request loop keeps from one request to the next.
struct Kept {
    /// A request on a server just taken from the pool may be retried on
    /// another if that server turns out dead before answering anything.
    retry: Retry,
    /// The bookkeeping of the current hold, or the last one's, emptied,
    /// for the next.
    books: hold::Books,
    /// This client's pools and configuration.
    pools: NodePools,
}

/// Where a session stands between requests.
pub(super) enum Phase {
    /// No server held: requests are answered locally or routed.
    Idle,
    /// A server held (a transaction, a pinned session, session mode): the
    /// next request goes to it.
    Holding(Held),
}

impl Phase {
    /// The held server, leaving the session idle.
    pub(super) fn release(&mut self) -> Held {
        match std::mem::replace(self, Phase::Idle) {
            Phase::Holding(h) => h,
            Phase::Idle => unreachable!("a relay ran, so a server was held"),
        }
    }
}

/// What the request loop does next.
enum Next {
    Serve,
    /// The client is gone, or a FATAL error already told it why.
    Close,
}

/// The request loop. Returns `Err` with a final error for the client.
async fn serve<S>(
    stream: &mut S,
    cbuf: &mut BytesMut,
    ctx: &SessionCtx,
    client: &mut ClientState,
    phase: &mut Phase,
    kept: &mut Kept,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin,
{
    // Replies made while idle, written once no further request is buffered.
    let mut out = BytesMut::new();
    // Made once per client, not per request: registered with its token
    // when first polled, then one atomic load per poll; one for shutdown
    // and the forced close after it (stop_signal.rs).
    let stop = StopSignal::new(&ctx.shared.shutdown, &ctx.shared.force_close);
    tokio::pin!(stop);
    loop {
        if let Phase::Idle = phase {
            let next = next_unit(
                stream,
                cbuf,
                ctx,
                client,
                &mut kept.pools,
                &mut out,
                stop.as_mut(),
            );
            let Some(unit) = next.await? else {
                return Ok(());
            };
            let deferred_begin = client.deferred_begin.clone();
            // Not boxed: its state (the routing decision's leftovers and
            // one small checkout, server::CheckoutUnless; the rare paths
            // are boxed) fits in the room the relay below takes anyway,
            // so an idle client's task is no larger for it, and a
            // transaction allocates nothing to take its server. The
            // result is taken apart before the next await, so that the
            // error is not kept in this task's state meanwhile.
            // The server is written straight into `phase`.
            let refused =
                match hold::acquire(ctx, client, &mut kept.pools, &unit, &mut kept.books, phase)
                    .await
                {
                    Ok(()) => {
                        kept.retry.fresh = Fresh::Taken { deferred_begin };
                        None
                    }
                    Err(e) => Some(Box::new(e)),
                };
            if let Some(e) = refused {
                Box::pin(fail_request(stream, cbuf, &unit, client, *e)).await;
                continue;
            }
        }
        if let Phase::Idle = phase {
            continue;
        }
        match relay_on(phase, kept, stream, cbuf, ctx, client, stop.as_mut()).await? {
            // No lock for a cancelled shutdown: the session's registered
            // signal says it.
            Next::Serve if stop.fired() => return Err(shutting_down()),
            Next::Serve => {}
            Next::Close => return Ok(()),
        }
    }
}

/// Waits for the next request while no server is held: answers what the
/// proxy can itself, and returns the next unit of work that needs a
/// server, or `None` when the client left.
async fn next_unit<S>(
    stream: &mut S,
    cbuf: &mut BytesMut,
    ctx: &SessionCtx,
    client: &mut ClientState,
    pools: &mut NodePools,
    out: &mut BytesMut,
    mut stop: Pin<&mut StopSignal<'_>>,
) -> Result<Option<route::Unit>, WireError>
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin,
{
    loop {
        let limits = pools.limits();
        // A BEGIN the proxy acknowledged itself is an open transaction.
        // Only with a limit; its timer is boxed (a timer is large, and
        // most clients have no limit) and kept from one request to the
        // next, reset rather than made again (no allocation per request).
        let next = {
            let idle = limits.idle(client.deferred_begin.is_some());
            let mut expiry = idle.map(|idle| {
                let deadline = tokio::time::Instant::now() + idle.limit;
                let timer = match &mut client.idle_timer {
                    Some(timer) => {
                        timer.as_mut().reset(deadline);
                        timer
                    }
                    none => none.insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                (timer, idle)
            });
            let reading = next_frame(stream, cbuf, &ctx.messages);
            tokio::pin!(reading);
            // In a fixed order, like a biased `select!`, without its branch
            // mask, task budget check and the idle limit's never-ready future
            // when there is no limit (~50 instructions per request). The
            // budget still applies: the socket's read checks it.
            std::future::poll_fn(|cx| {
                if stop.as_mut().poll_shutdown(cx).is_ready() {
                    return Poll::Ready(Err(shutting_down()));
                }
                if let Poll::Ready(next) = reading.as_mut().poll(cx) {
                    return Poll::Ready(next);
                }
                match &mut expiry {
                    Some((timer, idle)) => match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(idle.error())),
                        Poll::Pending => Poll::Pending,
                    },
                    None => Poll::Pending,
                }
            })
            .await?
        };
        let Some((tag, total)) = next else {
            return Ok(None);
        };
        let primary_pool = pools.primary(ctx)?;
        match idle::answer(
            tag,
            &cbuf[..total],
            client,
            &ctx.shared,
            primary_pool,
            ctx.mode,
            out,
        )? {
            Idle::Terminate => return Ok(None),
            Idle::Answered => {
                cbuf.advance(total);
                if !matches!(frame::complete(cbuf), Ok(Some(_))) {
                    write(stream, out).await;
                    out.clear();
                }
                continue;
            }
            Idle::NeedServer => {
                write(stream, out).await;
                out.clear();
            }
            Idle::Later(later) => {
                cbuf.advance(total);
                write(stream, out).await;
                out.clear();
                write(stream, &later.await).await;
                continue;
            }
        }
        loop {
            if let Some(unit) = route::find_unit(
                cbuf,
                &client.statements,
                &mut client.memo,
                &mut client.carried,
                &ctx.shared.classifier,
                client.params.encoding(),
            )? {
                return Ok(Some(unit));
            }
            if !read_more(stream, cbuf, &ctx.messages).await? {
                return Ok(None);
            }
        }
    }
}

/// Every end of a relay, in one place: the server given back (or marked
/// broken), the request moved to another server, or the session ended.
#[inline]
fn relay_ended(
    end: RelayEnd,
    fresh: Fresh,
    phase: &mut Phase,
    cbuf: &mut BytesMut,
    ctx: &SessionCtx,
    client: &mut ClientState,
    kept: &mut Kept,
) -> Result<Next, WireError> {
    match end {
        RelayEnd::Released => {
            kept.retry.attempts = 0;
            hold::release(phase.release(), &mut kept.books, client);
            Ok(Next::Serve)
        }
        RelayEnd::ClientGone => Ok(Next::Close),
        RelayEnd::ClientError(e) => Err(*e),
        RelayEnd::Unanswered(consumed) => {
            // Killed while pooled, noticed only once the request got
            // there: nothing ran and nothing reached the client, so the
            // request goes to another server as if it had just come.
            let mut lease = phase.release().lease;
            lease.mark_broken();
            tracing::info!(server = %lease.addr, "server connection was dead; retrying the request on another");
            let mut restored = consumed;
            restored.extend_from_slice(cbuf);
            *cbuf = restored;
            client.deferred_begin = fresh.deferred_begin();
            kept.retry.attempts += 1;
            Ok(Next::Serve)
        }
        // The server stays held: leaving rolls it back and returns it.
        RelayEnd::Idle(e) => Err(*e),
        RelayEnd::QueryUnanswered(limit) => {
            let mut lease = phase.release().lease;
            lease.mark_broken();
            tracing::warn!(server = %lease.addr, "server did not answer a query_timeout cancel");
            Err(limits::query_unanswered_error(limit))
        }
        RelayEnd::ServerEnded => {
            // The server's own FATAL (57P01 from pg_terminate_backend,
            // 25P03 from idle_in_transaction_session_timeout) reached the
            // client: one error, then the close, as on a direct
            // connection.
            let mut lease = phase.release().lease;
            lease.mark_broken();
            tracing::info!(server = %lease.addr, "server connection ended with a FATAL error");
            ctx.shared.observer.metrics().error(ErrorKind::Server);
            Ok(Next::Close)
        }
        RelayEnd::ServerGone(err) => {
            let mut lease = phase.release().lease;
            lease.mark_broken();
            tracing::warn!(server = %lease.addr, error = ?err, "server connection lost");
            ctx.shared.observer.metrics().error(ErrorKind::Server);
            Err(WireError::fatal(
                SqlState::ADMIN_SHUTDOWN,
                format!("the server connection to {} was lost", lease.addr),
            )
            .with_detail("the current transaction, if any, was not committed"))
        }
    }
}

/// Relays between the client and its held server until the server is
/// released or something ends the stretch, and deals with how it ended
/// (`relay_ended`, called here: the end is not moved out to the loop,
/// ~50 instructions per transaction; keeping `phase` across the relay
/// grew every client's task by 16 bytes until the relay's server side
/// borrowed its replay buffer instead of holding it).
async fn relay_on<S>(
    phase: &mut Phase,
    kept: &mut Kept,
    stream: &mut S,
    cbuf: &mut BytesMut,
    ctx: &SessionCtx,
    client: &mut ClientState,
    stop: Pin<&mut StopSignal<'_>>,
) -> Result<Next, WireError>
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin,
{
    // (Never idle here: the loop checked.)
    let Phase::Holding(h) = phase else {
        return Ok(Next::Serve);
    };
    let limits = *kept.pools.limits();
    // Only query_timeout sends a cancel of its own.
    let timer_cancel = limits
        .query
        .map(|_| (h.lease.link.clone(), ctx.cancel.slot.clone()));
    ctx.cancel.slot.set_server(&h.lease.link);
    let (io, state, pool) = h.lease.split_with_pool();
    let env = HeldEnv {
        shared: &ctx.shared,
        pool,
    };
    let mut flow = SessionFlow {
        expect: &mut kept.books.expect,
        client,
        hold: &mut kept.books.hold,
        server: state,
        env: &env,
        mode: ctx.mode,
        who: &ctx.cancel.slot.info,
    };
    let mut timers = RelayTimers::new(limits, timer_cancel);
    let retry = &mut kept.retry;
    let fresh = std::mem::take(&mut retry.fresh);
    // Not a hand-written poll_fn as in `next_unit`: that kept both
    // futures' references and a moved copy of the signal across the
    // await, +112 bytes in every client's task
    // (`tests::a_clients_task_stays_small`). Nor a select!: the same race
    // as a struct owning both futures costs no more room, and none of the
    // select!'s task budget check and branch mask on every poll.
    let raced = UnlessForced {
        stop: stop.force_close(),
        relay: relay::relay(
            stream,
            cbuf,
            io,
            &mut flow,
            &ctx.messages,
            &mut timers,
            (fresh.is_taken() && retry.attempts < MAX_RETRIES).then_some(&mut retry.replay),
        ),
    };
    let Some(end) = raced.await else {
        // The server stays held: leaving rolls it back (or closes it).
        return Err(closed_at_shutdown());
    };
    if unset_server(&ctx.cancel.slot) {
        // Boxed: rare, and kept out of every client task's size.
        Box::pin(ctx.cancel.slot.cancels_settled()).await;
    }
    ctx.cancel.slot.set_pinned(client.pins.is_pinned());
    // Only the request that took the server carries classifications.
    client.carried.clear();
    tracing::trace!(?end, status = %kept.books.expect.status(), "relay ended");
    relay_ended(end, fresh, phase, cbuf, ctx, client, kept)
}

pin_project_lite::pin_project! {
    /// A relay raced against the forced close, which is polled first (as
    /// in a biased `select!`); `None` once the forced close fired. The
    /// budget still applies: the relay's socket reads check it.
    struct UnlessForced<'s, 'a, F> {
        stop: ForceClose<'s, 'a>,
        #[pin]
        relay: F,
    }
}

impl<F: Future> Future for UnlessForced<'_, '_, F> {
    type Output = Option<F::Output>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if Pin::new(this.stop).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        this.relay.poll(cx).map(Some)
    }
}

/// How often one request may be moved to another server.
const MAX_RETRIES: u32 = 2;

#[derive(Default)]
struct Retry {
    /// Whether the held server was just taken for this request.
    fresh: Fresh,
    attempts: u32,
    /// The relay's copy of the request, reused from one to the next.
    replay: BytesMut,
}

/// Whether the server a relay runs on was just taken for its request: only
/// then may the request move to another server if this one turns out dead.
#[derive(Default)]
enum Fresh {
    /// Held from an earlier request (or already relayed on once).
    #[default]
    Used,
    /// Just taken; the client's deferred BEGIN as it was before (taking
    /// the server sent it, and a retry must send it again).
    Taken {
        deferred_begin: Option<bytes::Bytes>,
    },
}

impl Fresh {
    fn is_taken(&self) -> bool {
        matches!(self, Fresh::Taken { .. })
    }

    /// The deferred BEGIN to restore when the request moves on.
    fn deferred_begin(self) -> Option<bytes::Bytes> {
        match self {
            Fresh::Taken { deferred_begin } => deferred_begin,
            Fresh::Used => None,
        }
    }
}

fn closed_at_shutdown() -> WireError {
    WireError::fatal(
        SqlState::ADMIN_SHUTDOWN,
        "terminating connection because pgsidecar is shutting down and shutdown_timeout has passed",
    )
    .with_detail("the transaction in progress was rolled back")
}

fn shutting_down() -> WireError {
    WireError::fatal(
        SqlState::ADMIN_SHUTDOWN,
        "terminating connection because pgsidecar is shutting down",
    )
}

/// Answers a request that could not get a server: the error, then
/// ReadyForQuery so the client can carry on. The unit (up to its Sync) is
/// dropped, as the server would have skipped it after an error.
async fn fail_request<S>(
    stream: &mut S,
    cbuf: &mut BytesMut,
    unit: &route::Unit,
    client: &mut ClientState,
    error: WireError,
) where
    S: AsyncWrite + Unpin,
{
    tracing::warn!(error = %crate::logsafe::message(&error.to_string()), "request refused");
    cbuf.advance(unit.len);
    client.carried.clear();
    // A transaction the proxy had acknowledged (deferred BEGIN) is gone.
    client.deferred_begin = None;
    let mut out = error.to_bytes_in(client.params.encoding());
    if unit.ends_with_ready {
        TxStatus::Idle.put_ready(&mut out);
    } else {
        // Extended protocol up to Flush: skip to the client's Sync.
        client.skip_to_sync = true;
    }
    write(stream, &out).await;
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // A client that cannot be written to is gone; the next read sees it.
    let _ = crate::tls::write_flush(stream, bytes).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, F: std::future::Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connected client's task holds this future, idle or not: what
    /// a request needs only while it runs (the acquisition of a server)
    /// must not make it larger.
    #[test]
    fn a_clients_task_stays_small() {
        let session = future_size(run::<crate::tls::ClientStream>);
        let unix = future_size(run::<tokio::net::UnixStream>);
        eprintln!("session future: {session} bytes (unix {unix})");
        // 1,480 bytes once the relay's timers were boxed apart, made only
        // once one is armed (and the client's limits were kept, boxed, from
        // one request to the next). 1,488 once the held server's pool was borrowed from its
        // lease (no second reference kept in `Held`); 1,496 once the server's cancel link was made at login and
        // shared (relay_on no longer keeps a CancelTarget across its await)
        // and the relay borrowed its replay buffer, with relay_ended
        // called inside relay_on (which needs 16 of them). 1,616 since be75909 (1,728 at 33e8a18 with the acquisition
        // boxed; 1,864 with its old nested futures inline). A hand-written
        // poll_fn in place of relay_on's select! measured 1,728 (+112 bytes,
        // ~140 more bytes of RSS per idle client): the bound is the size.
        // 1,448 once shutdown and the forced close shared one StopSignal;
        // 1,432 with the relay raced against the forced close by a small
        // struct future (`relay_on`, no select!).
        assert!(
            session <= 1432 && unix <= 1432,
            "a client's task grew to {session} bytes: every idle client pays it (keep rare or large states boxed)"
        );
    }
}
