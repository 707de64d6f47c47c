//! A session's waits for the process-wide cancellations (shutdown, then
//! the forced close after `shutdown_timeout`) that cost one atomic load
//! per poll, both kept in one registration.
//!
//! Why not poll the tokens' own futures: a session races them against
//! every request and every relay wake-up, and each poll of a
//! `WaitForCancellationFuture` still waiting takes two locks that every
//! client shares (the token's, to read whether it is cancelled, and its
//! `Notify`'s waiter list, to refresh the waker). Here a token's future
//! is polled once to register, with a waker that notes being woken; later
//! polls only read that note, and poll the token's future again only once
//! it woke (the token was cancelled) or the task's waker changed.
//!
//! Why the note is read through a process-wide flag first: the noting
//! waker is an allocation of its own per session, cold by the time the
//! session is polled again when hundreds of clients take turns (a cache
//! miss per poll, a few polls per transaction). Until some signal's token
//! fired, no waker has noted anything, so a poll reads one flag that every
//! session shares and no one writes (it stays in every core's cache), and
//! compares the task's waker with a copy kept in the signal itself. The
//! token's future and the noting waker are boxed together, out of the
//! session's state: only the first poll, a wake-up and `fired` after some
//! token fired read them, and the signal is no larger for the waker copy.
//!
//! Why one registration for both tokens: every connected client keeps
//! its signal for its whole life, idle or not, and a registration (the
//! token's future, its box, the noting waker) is ~150 bytes of memory per
//! client. The proxy cancels `force_close` only after `shutdown`
//! (`Proxy::shutdown`), so one registration serves both in turn: it waits
//! for shutdown, and once that fired, it is made again, in place, for the
//! forced close.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Resolves, as [`shutdown`](Self::shutdown), once the shutdown token is
/// cancelled and, as [`force_close`](Self::force_close), once the forced
/// close's is; made once per session and polled through `Pin<&mut>` as
/// often as needed.
pub struct StopSignal<'a> {
    registration: Pin<Box<Registration<'a>>>,
    /// The task waker `registration` wakes (`None` before the first
    /// poll, and after the registration moved to the forced close), so
    /// compared here without reading the registration.
    task: Option<Waker>,
}

pin_project_lite::pin_project! {
    /// The future of the token waited for, the waker it was last polled
    /// with, and the forced close's token to wait for once shutdown fired.
    struct Registration<'a> {
        #[pin]
        inner: WaitForCancellationFuture<'a>,
        noting: Option<Arc<NotingWaker>>,
        force_close: &'a CancellationToken,
        // Shutdown fired: `inner` waits for the forced close.
        shut_down: bool,
    }
}

/// Set once any noting waker was woken, or a signal found its shutdown
/// token cancelled (some signal's token fired): until then no signal needs
/// to read its own note.
static SOME_WOKEN: AtomicBool = AtomicBool::new(false);

/// Wakes the session's task, noting that the token woke it.
struct NotingWaker {
    woken: AtomicBool,
    task: Waker,
}

impl Wake for NotingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        SOME_WOKEN.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<'a> Registration<'a> {
    /// Whether the token waited for woke its noting waker (`false`
    /// before the first poll).
    fn woken(&self) -> bool {
        self.noting
            .as_ref()
            .is_some_and(|r| r.woken.load(Ordering::Acquire))
    }

    /// Asks the token itself, leaving a fresh noting waker that wakes
    /// `task`.
    fn register(self: Pin<&mut Self>, task: &Waker) -> Poll<()> {
        let this = self.project();
        let noting = Arc::new(NotingWaker {
            woken: AtomicBool::new(false),
            task: task.clone(),
        });
        let waker = Waker::from(noting.clone());
        let polled = this.inner.poll(&mut Context::from_waker(&waker));
        *this.noting = Some(noting);
        polled
    }

    /// Shutdown fired: from now on the registration waits for the forced
    /// close (registered at its first poll).
    fn to_force_close(self: Pin<&mut Self>) {
        let mut this = self.project();
        *this.shut_down = true;
        *this.noting = None;
        let force_close: &'a CancellationToken = this.force_close;
        this.inner.set(force_close.cancelled());
        SOME_WOKEN.store(true, Ordering::Release);
    }
}

impl<'a> StopSignal<'a> {
    pub fn new(shutdown: &'a CancellationToken, force_close: &'a CancellationToken) -> Self {
        StopSignal {
            registration: Box::pin(Registration {
                inner: shutdown.cancelled(),
                noting: None,
                force_close,
                shut_down: false,
            }),
            task: None,
        }
    }

    /// Whether shutdown fired and this signal heard of it (woken, or
    /// polled since), without taking the token's lock. `false` before the
    /// first poll.
    pub fn fired(&self) -> bool {
        SOME_WOKEN.load(Ordering::Acquire) && {
            let r = &*self.registration;
            r.shut_down || r.woken()
        }
    }

    /// Resolves once shutdown fired (the sessions poll it by hand:
    /// [`poll_shutdown`](Self::poll_shutdown)).
    #[cfg(test)]
    pub fn shutdown(self: Pin<&mut Self>) -> Shutdown<'_, 'a> {
        Shutdown(self)
    }

    /// Polls for shutdown, as [`shutdown`](Self::shutdown)'s future does.
    #[inline]
    pub fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_stop(cx, false)
    }

    /// Resolves once the forced close fired.
    pub fn force_close(self: Pin<&mut Self>) -> ForceClose<'_, 'a> {
        ForceClose(self)
    }

    /// Inlined into the sessions' loops: the usual poll (registered with
    /// this task, nothing fired) is a pointer comparison and one load of
    /// a flag, and everything else is out of line, so that the caller
    /// does not pay a call and the registration's register spills on
    /// every request (measured: ~25 instructions per poll, polled four
    /// times per transaction).
    #[inline]
    fn poll_stop(&mut self, cx: &mut Context<'_>, force: bool) -> Poll<()> {
        if let Some(task) = &self.task
            && task.will_wake(cx.waker())
            && !SOME_WOKEN.load(Ordering::Acquire)
        {
            // Still registered with the same task, and no waker was
            // woken since.
            return Poll::Pending;
        }
        self.poll_slow(cx, force)
    }

    /// The first poll, a wake-up from some token (this one's or
    /// another's), another task's waker, or shutdown fired. `force`: the
    /// forced close is asked for, else shutdown.
    #[cold]
    #[inline(never)]
    fn poll_slow(&mut self, cx: &mut Context<'_>, force: bool) -> Poll<()> {
        if !self.registration.shut_down {
            if let Some(task) = &self.task
                && task.will_wake(cx.waker())
                && !self.registration.woken()
            {
                // Some other signal's token fired, not this one's.
                return Poll::Pending;
            }
            if self.registration.as_mut().register(cx.waker()).is_pending() {
                self.keep_task(cx);
                return Poll::Pending;
            }
            self.registration.as_mut().to_force_close();
            self.task = None;
        }
        if !force {
            return Poll::Ready(());
        }
        if let Some(task) = &self.task
            && task.will_wake(cx.waker())
            && !self.registration.woken()
        {
            return Poll::Pending;
        }
        let polled = self.registration.as_mut().register(cx.waker());
        self.keep_task(cx);
        polled
    }

    fn keep_task(&mut self, cx: &Context<'_>) {
        match &mut self.task {
            Some(task) => task.clone_from(cx.waker()),
            none => *none = Some(cx.waker().clone()),
        }
    }
}

/// [`StopSignal::shutdown`].
#[cfg(test)]
pub struct Shutdown<'s, 'a>(Pin<&'s mut StopSignal<'a>>);

#[cfg(test)]
impl Future for Shutdown<'_, '_> {
    type Output = ();

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

/// [`StopSignal::force_close`].
pub struct ForceClose<'s, 'a>(Pin<&'s mut StopSignal<'a>>);

impl Future for ForceClose<'_, '_> {
    type Output = ();

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_stop(cx, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens for shutdown and the forced close.
    fn tokens() -> (CancellationToken, CancellationToken) {
        (CancellationToken::new(), CancellationToken::new())
    }

    #[tokio::test]
    async fn resolves_when_cancelled_after_waiting() {
        let (shutdown, force) = tokens();
        let signal = StopSignal::new(&shutdown, &force);
        tokio::pin!(signal);
        // Pending twice (the second poll takes the cheap path).
        for _ in 0..2 {
            assert!(
                futures_poll_once(signal.as_mut().shutdown())
                    .await
                    .is_pending(),
                "not cancelled yet"
            );
        }
        assert!(!signal.fired());
        shutdown.cancel();
        assert!(signal.fired(), "the token's wake-up is noted");
        signal.as_mut().shutdown().await;
        assert!(signal.fired(), "and still known once the signal moved on");
    }

    #[tokio::test]
    async fn resolves_at_once_when_already_cancelled() {
        let (shutdown, force) = tokens();
        shutdown.cancel();
        let signal = StopSignal::new(&shutdown, &force);
        tokio::pin!(signal);
        signal.as_mut().shutdown().await;
        assert!(signal.fired());
    }

    #[tokio::test]
    async fn the_forced_close_resolves_after_shutdown_and_only_once_cancelled() {
        let (shutdown, force) = tokens();
        let signal = StopSignal::new(&shutdown, &force);
        tokio::pin!(signal);
        // Waiting for the forced close before shutdown: registered on
        // shutdown, which moves it on.
        assert!(
            futures_poll_once(signal.as_mut().force_close())
                .await
                .is_pending()
        );
        shutdown.cancel();
        for _ in 0..2 {
            assert!(
                futures_poll_once(signal.as_mut().force_close())
                    .await
                    .is_pending(),
                "shutdown is not the forced close"
            );
        }
        assert!(signal.fired(), "shutdown was heard");
        signal.as_mut().shutdown().await;
        force.cancel();
        signal.as_mut().force_close().await;
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken() {
        let (shutdown, force) = tokens();
        let (waiting, waited) = tokio::sync::oneshot::channel();
        let (relaying, relayed) = tokio::sync::oneshot::channel();
        let waiter = {
            let (shutdown, force) = (shutdown.clone(), force.clone());
            tokio::spawn(async move {
                let signal = StopSignal::new(&shutdown, &force);
                tokio::pin!(signal);
                // Woken by something else first: still waits.
                tokio::select! {
                    biased;
                    () = signal.as_mut().shutdown() => panic!("not cancelled yet"),
                    () = tokio::task::yield_now() => {}
                }
                let _ = waiting.send(());
                signal.as_mut().shutdown().await;
                // Then the forced close, woken again.
                tokio::select! {
                    biased;
                    () = signal.as_mut().force_close() => panic!("not forced yet"),
                    () = tokio::task::yield_now() => {}
                }
                let _ = relaying.send(());
                signal.as_mut().force_close().await;
            })
        };
        waited.await.expect("the task waits");
        shutdown.cancel();
        relayed.await.expect("the task waits for the forced close");
        force.cancel();
        waiter.await.expect("the waiting task finished");
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_waker_of_the_latest_poll_is_woken() {
        let (shutdown, force) = tokens();
        let mut signal = Box::pin(StopSignal::new(&shutdown, &force));
        let (first, second) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
        for counting in [&first, &first, &second, &second] {
            let waker = Waker::from(counting.clone());
            let polled = signal
                .as_mut()
                .poll_shutdown(&mut Context::from_waker(&waker));
            assert!(polled.is_pending(), "not cancelled yet");
        }
        shutdown.cancel();
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the latest waker is woken"
        );
        assert_eq!(first.0.load(Ordering::SeqCst), 0, "the replaced one is not");
        let waker = Waker::from(second.clone());
        assert!(
            signal
                .as_mut()
                .poll_shutdown(&mut Context::from_waker(&waker))
                .is_ready()
        );
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: Future>(f: F) -> Poll<F::Output> {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }
}
