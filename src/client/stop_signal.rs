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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

pin_project_lite::pin_project! {
    /// Resolves once `token` is cancelled; made once per session and
    /// polled through `Pin<&mut>` as often as needed.
    pub struct StopSignal<'a> {
        #[pin]
        inner: WaitForCancellationFuture<'a>,
        registered: Option<Arc<NotingWaker>>,
    }
}

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
        self.task.wake_by_ref();
    }
}

impl<'a> StopSignal<'a> {
    pub fn new(token: &'a CancellationToken) -> Self {
        StopSignal {
            inner: token.cancelled(),
            registered: None,
        }
    }

    /// Whether the token woke this signal since it was registered (so it
    /// is cancelled), without taking its lock. `false` before the first
    /// poll.
    pub fn fired(&self) -> bool {
        self.registered
            .as_ref()
            .is_some_and(|r| r.woken.load(Ordering::Acquire))
    }
}

impl Future for StopSignal<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if let Some(r) = this.registered
            && !r.woken.load(Ordering::Acquire)
            && r.task.will_wake(cx.waker())
        {
            // Still registered with the same task, and not woken since.
            return Poll::Pending;
        }
        // The first poll, a wake-up from the token, or another task's
        // waker: ask the token itself, leaving a fresh noting waker.
        let noting = Arc::new(NotingWaker {
            woken: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(noting.clone());
        let polled = this.inner.poll(&mut Context::from_waker(&waker));
        *this.registered = Some(noting);
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

    /// Polls `f` once.
    async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}
