//! A session's wait for a process-wide cancellation (shutdown, the forced
//! close after `shutdown_timeout`) that costs one atomic load per poll.
//!
//! Why not poll the token's own future: a session races it against every
//! request and every relay wake-up, and each poll of a
//! `WaitForCancellationFuture` still waiting takes two locks that every
//! client shares (the token's, to read whether it is cancelled, and its
//! `Notify`'s waiter list, to refresh the waker). Here the token's future
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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Resolves once `token` is cancelled; made once per session and polled
/// through `Pin<&mut>` as often as needed.
pub struct StopSignal<'a> {
    registration: Pin<Box<Registration<'a>>>,
    /// The task waker `registration` wakes (`None` before the first
    /// poll), compared here without reading the registration.
    task: Option<Waker>,
}

pin_project_lite::pin_project! {
    /// The token's future and the waker it was last polled with.
    struct Registration<'a> {
        #[pin]
        inner: WaitForCancellationFuture<'a>,
        noting: Option<Arc<NotingWaker>>,
    }
}

/// Set once any noting waker was woken (some signal's token fired): until
/// then no signal needs to read its own note.
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

impl Registration<'_> {
    /// Whether the token woke its noting waker (`false` before the first
    /// poll).
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
}

impl<'a> StopSignal<'a> {
    pub fn new(token: &'a CancellationToken) -> Self {
        StopSignal {
            registration: Box::pin(Registration {
                inner: token.cancelled(),
                noting: None,
            }),
            task: None,
        }
    }

    /// Whether the token woke this signal since it was registered (so it
    /// is cancelled), without taking its lock. `false` before the first
    /// poll.
    pub fn fired(&self) -> bool {
        SOME_WOKEN.load(Ordering::Acquire) && self.registration.woken()
    }
}

impl Future for StopSignal<'_> {
    type Output = ();

    /// Inlined into the sessions' loops: the usual poll (registered with
    /// this task, nothing fired) is a pointer comparison and one load of
    /// a flag, and everything else is out of line, so that the caller
    /// does not pay a call and the registration's register spills on
    /// every request (measured: ~25 instructions per poll, polled four
    /// times per transaction).
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(task) = &this.task
            && task.will_wake(cx.waker())
            && !SOME_WOKEN.load(Ordering::Acquire)
        {
            // Still registered with the same task, and no waker was
            // woken since.
            return Poll::Pending;
        }
        this.poll_slow(cx)
    }
}

impl StopSignal<'_> {
    /// The first poll, a wake-up from some token (this one's or
    /// another's), or another task's waker.
    #[cold]
    #[inline(never)]
    fn poll_slow(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(task) = &self.task
            && task.will_wake(cx.waker())
            && !self.registration.woken()
        {
            // Some other signal's token fired, not this one's.
            return Poll::Pending;
        }
        let polled = self.registration.as_mut().register(cx.waker());
        match &mut self.task {
            Some(task) => task.clone_from(cx.waker()),
            none => *none = Some(cx.waker().clone()),
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_when_cancelled_after_waiting() {
        let token = CancellationToken::new();
        let signal = StopSignal::new(&token);
        tokio::pin!(signal);
        // Pending twice (the second poll takes the cheap path).
        for _ in 0..2 {
            assert!(
                futures_poll_once(signal.as_mut()).await.is_pending(),
                "not cancelled yet"
            );
        }
        assert!(!signal.fired());
        token.cancel();
        assert!(signal.fired(), "the token's wake-up is noted");
        signal.as_mut().await;
    }

    #[tokio::test]
    async fn resolves_at_once_when_already_cancelled() {
        let token = CancellationToken::new();
        token.cancel();
        let signal = StopSignal::new(&token);
        tokio::pin!(signal);
        signal.as_mut().await;
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken() {
        let token = CancellationToken::new();
        let (waiting, waited) = tokio::sync::oneshot::channel();
        let waiter = {
            let token = token.clone();
            tokio::spawn(async move {
                let signal = StopSignal::new(&token);
                tokio::pin!(signal);
                // Woken by something else first: still waits.
                tokio::select! {
                    biased;
                    () = signal.as_mut() => panic!("not cancelled yet"),
                    () = tokio::task::yield_now() => {}
                }
                let _ = waiting.send(());
                signal.as_mut().await;
            })
        };
        waited.await.expect("the task waits");
        token.cancel();
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
        let token = CancellationToken::new();
        let mut signal = Box::pin(StopSignal::new(&token));
        let (first, second) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
        for counting in [&first, &first, &second, &second] {
            let waker = Waker::from(counting.clone());
            let polled = signal.as_mut().poll(&mut Context::from_waker(&waker));
            assert!(polled.is_pending(), "not cancelled yet");
        }
        token.cancel();
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
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
        );
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}
