//! Handing a released server straight to the session that has waited
//! longest: the pool's queue of waiting checkouts, and the [`Lease`] whose
//! drop gives its connection to the head of that queue.
//!
//! Why not bb8's checkout: bb8 puts a returned connection in its idle list
//! and wakes one getter, which must then run, lock and pop it; a session
//! already running (one that just released and asks again, or a new one)
//! takes it first, and the woken getter goes to the back of the line. Each
//! getter also arms bb8's `connection_timeout` timer and takes its lock
//! three times. Here a connection given back while sessions wait goes into
//! the oldest waiter's slot and wakes that one task: nothing else runs, no
//! one can overtake, and waiters are served in arrival order (FIFO). Their
//! `checkout_timeout` is kept by one watchdog task per pool, not a timer
//! each.
//!
//! bb8 still owns each connection's life: opening (a waiter with room in
//! the pool starts a "filler" that takes one from bb8, which connects),
//! the check of a returned connection (`has_broken`: broken, retired, or
//! asked back by the fleet budget) and closing it, `max_lifetime` and
//! `idle_timeout` of connections idle in bb8, and the counts the pool
//! metrics read. A connection only goes back into bb8 when no one waits.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use super::connection::ServerConn;
use super::pool::{GateSlot, ServerManager};

/// A connection as bb8 lends it.
type Bb8Lease = bb8::PooledConnection<'static, ServerManager>;

/// Where a checkout's connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Handed over by the client that released it a moment ago.
    Handed,
    /// Taken from bb8 (idle there, or newly opened): checked if it sat
    /// idle.
    Pool,
}

/// Why a checkout ended without a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// None came within its `checkout_timeout`.
    WaitedInVain,
    /// Its caller's `give_up` said so while it waited.
    GivenUp,
}

/// The part of a pool its leases share: bb8, and who waits.
pub struct Handoff {
    bb8: bb8::Pool<ServerManager>,
    queue: Mutex<Queue>,
    size: u32,
    timeout: Duration,
    gate: GateSlot,
}

/// Waiting checkouts, oldest first, under one lock with the slots kept for
/// reuse (so that waiting allocates nothing once a pool has been busy).
#[derive(Default)]
struct Queue {
    waiters: VecDeque<Arc<Slot>>,
    /// Slots of served waiters; reusable once the waiter let go of it.
    spare: Vec<Arc<Slot>>,
    /// Fillers started and not yet finished.
    opening: u32,
    /// The pool was found at its size since the queue last started; while
    /// sessions wait, only a connection closed in [`Handoff::give`] or a
    /// filler that failed makes room again (connections idle in bb8, which
    /// the reaper may close, exist only while no one waits). Spares
    /// asking bb8 for its count on every enqueue.
    full: bool,
    /// The task failing waiters at their deadline runs.
    watchdog: bool,
    /// It found the queue empty at its last wake-up.
    watchdog_idle: bool,
    /// The deadline of the last waiter queued (a later one's is not earlier).
    last_deadline: Option<Instant>,
}

/// Where one waiting checkout receives its connection.
///
/// Why a waker under the slot's own lock rather than a `Notify`: the
/// waiter already takes that lock to look for its connection, so
/// registering there costs nothing more, and whoever serves, fails or
/// nudges it wakes it under the same lock; a `Notify` took its own lock
/// to register, again to notify and again when its wait was dropped
/// (~250 instructions per waiting checkout), and its wait made every
/// acquisition's state larger.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

struct SlotState {
    /// The connection handed over, and when.
    lease: Option<(Bb8Lease, Source, Instant)>,
    /// Still in the queue (not served, not given up).
    queued: bool,
    /// Its `checkout_timeout` passed before a connection came.
    expired: bool,
    /// [`Handoff::wake_waiters`] asks it to ask its `give_up` again.
    nudged: bool,
    deadline: Instant,
    /// The waiting task, once it found nothing yet.
    waker: Option<Waker>,
}

impl Default for SlotState {
    fn default() -> Self {
        SlotState {
            lease: None,
            queued: false,
            expired: false,
            nudged: false,
            deadline: Instant::now(),
            waker: None,
        }
    }
}

impl SlotState {
    /// The waiting task, to wake once this lock is let go of.
    fn wake(&mut self) -> Option<Waker> {
        self.waker.take()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handoff {
    pub(super) fn new(
        bb8: bb8::Pool<ServerManager>,
        size: u32,
        timeout: Duration,
        gate: GateSlot,
    ) -> Self {
        Handoff {
            bb8,
            queue: Mutex::default(),
            size,
            timeout,
            gate,
        }
    }

    /// Starts taking a connection: an idle one of bb8's at once if no one
    /// is waiting ahead, else a place in the queue, where the next one
    /// given back (or opened) comes after every earlier waiter was served,
    /// within `checkout_timeout` ([`Queued::poll_taken`]).
    ///
    /// Why not an async fn: the wait is kept in the session's own state
    /// (not boxed per transaction), so it must be small; a plain struct
    /// polled by hand holds only what waiting needs.
    ///
    /// `at`: when the caller asked (its request's one clock reading); the
    /// wait and the `checkout_timeout` deadline count from there.
    pub fn start(self: &Arc<Self>, at: std::time::Instant) -> Started<'_> {
        let mut queue = lock(&self.queue);
        if queue.waiters.is_empty()
            && let Some(conn) = self.idle_now()
        {
            return Started::Now(self.lease(conn), Source::Pool);
        }
        if queue.waiters.is_empty() {
            queue.full = false;
        }
        let since = Instant::from_std(at);
        // Deadlines stay in queue order (the watchdog relies on it)
        // although `at` was read before the lock: a caller that read
        // the clock a moment earlier but queued later gets its
        // predecessor's deadline.
        let own = since + self.timeout;
        let deadline = queue.last_deadline.map_or(own, |last| last.max(own));
        queue.last_deadline = Some(deadline);
        let slot = queue.spare_slot();
        *lock(&slot.state) = SlotState {
            lease: None,
            queued: true,
            expired: false,
            nudged: false,
            deadline,
            waker: None,
        };
        queue.waiters.push_back(slot.clone());
        self.refill(&mut queue);
        if !queue.watchdog {
            self.start_watchdog(&mut queue);
        }
        Started::Queued(Queued {
            hand: self,
            slot,
            since,
            asked: false,
            served: false,
        })
    }

    /// Wakes every queued checkout to ask its `give_up` again (the
    /// cluster changed: a node went down, or the primary moved).
    pub fn wake_waiters(&self) {
        let queue = lock(&self.queue);
        for slot in &queue.waiters {
            let waker = {
                let mut state = lock(&slot.state);
                state.nudged = true;
                state.wake()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Starts the task that fails waiters at their deadline: one per pool
    /// while anyone waits, instead of a timer per waiting checkout. The
    /// queue is in deadline order, so it sleeps until the oldest waiter's
    /// deadline and, woken, fails those past theirs; a waiter served
    /// before its deadline costs it nothing.
    fn start_watchdog(self: &Arc<Self>, queue: &mut Queue) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        queue.watchdog = true;
        let hand = self.clone();
        runtime.spawn(async move {
            while let Some(next) = hand.expire() {
                tokio::time::sleep_until(next).await;
            }
        });
    }

    /// Fails the waiters past their deadline; returns when to look again,
    /// or `None` (and the watchdog stops) when no one has waited for a
    /// whole `checkout_timeout` (it lingers that long, so that a pool
    /// whose queue empties and fills again does not start a task each time).
    fn expire(&self) -> Option<Instant> {
        let mut queue = lock(&self.queue);
        let now = Instant::now();
        while let Some(first) = queue.waiters.front() {
            let (later, waker) = {
                let mut state = lock(&first.state);
                if state.deadline > now {
                    (Some(state.deadline), None)
                } else {
                    state.queued = false;
                    state.expired = true;
                    (None, state.wake())
                }
            };
            if let Some(deadline) = later {
                queue.watchdog_idle = false;
                return Some(deadline);
            }
            if let Some(waker) = waker {
                waker.wake();
            }
            if let Some(slot) = queue.waiters.pop_front() {
                queue.spare.push(slot);
            }
        }
        if !queue.watchdog_idle {
            queue.watchdog_idle = true;
            return Some(now + self.timeout);
        }
        queue.watchdog = false;
        queue.watchdog_idle = false;
        None
    }

    fn lease(self: &Arc<Self>, conn: Bb8Lease) -> Lease {
        Lease {
            conn: Some(conn),
            hand: self.clone(),
        }
    }

    /// An idle connection of bb8's, without waiting. Polled once: bb8
    /// answers at once when it has one (its timer is never armed then).
    fn idle_now(&self) -> Option<Bb8Lease> {
        let mut get = std::pin::pin!(self.bb8.get_owned());
        match get.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(conn)) => Some(conn),
            _ => None,
        }
    }

    /// Starts fillers, one per waiter beyond those already opening, while
    /// the pool has room: each takes one connection from bb8 (which opens
    /// it, waiting for a fleet budget permit first) and gives it to the
    /// queue like a released one.
    ///
    /// Inlined up to its first test: a busy pool (every queued checkout
    /// of a `-S` run) is found full at once, and the call cost more than
    /// the test.
    #[inline]
    fn refill(self: &Arc<Self>, queue: &mut Queue) {
        if queue.full || queue.opening as usize >= queue.waiters.len() {
            return;
        }
        self.start_fillers(queue);
    }

    #[inline(never)]
    fn start_fillers(self: &Arc<Self>, queue: &mut Queue) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let open = self.bb8.state().connections;
        while (queue.opening as usize) < queue.waiters.len() && open + queue.opening < self.size {
            queue.opening += 1;
            let hand = self.clone();
            runtime.spawn(async move {
                let got = hand.bb8.get_owned().await;
                let mut queue = lock(&hand.queue);
                queue.opening -= 1;
                match got {
                    Ok(conn) => {
                        drop(queue);
                        hand.give(conn, Source::Pool);
                    }
                    // The failure went to the error sink (the pool's last
                    // error, which waiters that time out report); those
                    // still waiting get another try.
                    Err(_) => {
                        queue.full = false;
                        hand.refill(&mut queue);
                    }
                }
            });
        }
        queue.full = open + queue.opening >= self.size;
    }

    /// Gives a connection back: to the oldest waiter, or to bb8 when no one
    /// waits (bb8 checks it and keeps or closes it). One that must close
    /// (broken, past `max_lifetime`, asked back by the fleet budget) goes
    /// to bb8 to be closed, and a filler opens another for the waiters.
    fn give(self: &Arc<Self>, conn: Bb8Lease, source: Source) {
        self.give_at(conn, source, Instant::now());
    }

    /// [`give`](Self::give) at `now`: one clock reading serves as the time
    /// the connection was returned (its idle time and age count from
    /// there) and, for a waiter, the time its wait ended.
    fn give_at(self: &Arc<Self>, mut conn: Bb8Lease, source: Source, now: Instant) {
        conn.mark_returned_at(now.into_std());
        let mut queue = lock(&self.queue);
        if queue.waiters.is_empty() {
            // Under the queue's lock: a checkout that finds no idle
            // connection and starts waiting cannot slip in between.
            drop(conn);
            return;
        }
        if self.must_close(&mut conn) {
            drop(conn);
            queue.full = false;
            self.refill(&mut queue);
            return;
        }
        let Some(slot) = queue.waiters.pop_front() else {
            return;
        };
        let waker = {
            let mut state = lock(&slot.state);
            state.queued = false;
            state.lease = Some((conn, source, now));
            state.wake()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        // Reusable once its waiter has taken the connection and let go.
        queue.spare.push(slot);
    }

    /// Whether a connection must close instead of serving a waiter. It is
    /// marked retired (if not broken) so that bb8, checking it again, closes it.
    fn must_close(&self, conn: &mut Bb8Lease) -> bool {
        let close = conn.is_broken()
            || conn.too_old_when_returned()
            || self
                .gate
                .get()
                .is_some_and(|(seat, _)| seat.should_give_back());
        if close {
            conn.retire();
        }
        close
    }
}

impl Queue {
    /// A slot no one else holds, reused if one is free.
    fn spare_slot(&mut self) -> Arc<Slot> {
        match self.spare.iter().rposition(|s| Arc::strong_count(s) == 1) {
            Some(i) => self.spare.swap_remove(i),
            None => Arc::new(Slot::default()),
        }
    }
}

/// A connection a queued checkout was given: where it came from, and when
/// it was handed over (`None`: not waited for).
pub type Handed = (Lease, Source, Option<std::time::Instant>);

/// How [`Handoff::start`] began: with a connection, or in the queue.
pub enum Started<'a> {
    Now(Lease, Source),
    Queued(Queued<'a>),
}

/// A queued checkout; dropped (served, timed out, or cancelled because the
/// node went down) it leaves the queue, and a connection handed to it too
/// late goes on to the next waiter.
pub struct Queued<'a> {
    hand: &'a Arc<Handoff>,
    slot: Arc<Slot>,
    /// When the caller asked: its wait counts from there.
    since: Instant,
    /// `give_up` was asked when the wait started.
    asked: bool,
    /// It took its connection: nothing left to undo on drop.
    served: bool,
}

impl Queued<'_> {
    /// Polls for the connection. `give_up` (told the time) is asked when
    /// the wait starts and whenever [`Handoff::wake_waiters`] wakes it (not
    /// when served), and the checkout ends with [`NotTaken::GivenUp`] if it
    /// says so: the caller's watch on the node costs nothing when a
    /// connection is there at once, and no subscription of its own while
    /// it waits. Not to be polled again once ready. Gives the connection
    /// with the time it was handed over (which, read by the session that
    /// gave it back, may be earlier than this wait's start).
    pub fn poll_taken(
        &mut self,
        cx: &mut Context<'_>,
        give_up: impl Fn(std::time::Instant) -> bool,
    ) -> Poll<Result<Handed, NotTaken>> {
        let mut state = lock(&self.slot.state);
        if let Some((conn, source, at)) = state.lease.take() {
            // Served: `give_at` took the waiter out of the queue and its
            // waker, so dropping this has nothing to undo (no second lock).
            drop(state);
            self.served = true;
            return Poll::Ready(Ok((self.hand.lease(conn), source, Some(at.into_std()))));
        }
        if state.expired {
            return Poll::Ready(Err(NotTaken::WaitedInVain));
        }
        // Told the request's reading when the wait starts, a new one when
        // nudged.
        let asked_at = if !std::mem::replace(&mut self.asked, true) {
            Some(self.since.into_std())
        } else if std::mem::take(&mut state.nudged) {
            Some(std::time::Instant::now())
        } else {
            None
        };
        if asked_at.is_some_and(give_up) {
            return Poll::Ready(Err(NotTaken::GivenUp));
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            none => *none = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let (queued, mut late) = {
            let mut state = lock(&self.slot.state);
            // No longer waiting: a spare slot keeps no task alive.
            state.waker = None;
            (state.queued, state.lease.take())
        };
        if queued {
            let mut queue = lock(&self.hand.queue);
            if let Some(i) = queue
                .waiters
                .iter()
                .position(|s| Arc::ptr_eq(s, &self.slot))
            {
                queue.waiters.remove(i);
                queue.spare.push(self.slot.clone());
            }
            // Served after all, between the two locks.
            let mut state = lock(&self.slot.state);
            state.queued = false;
            late = late.or_else(|| state.lease.take());
        }
        if let Some((conn, source, _)) = late {
            self.hand.give(conn, source);
        }
    }
}

/// A server connection checked out of its pool; dropping it gives it to
/// the next waiting client, or back to the pool (which closes it if it was
/// marked broken).
pub struct Lease {
    /// Always `Some` until dropped.
    conn: Option<Bb8Lease>,
    hand: Arc<Handoff>,
}

impl Deref for Lease {
    type Target = ServerConn;

    fn deref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Lease {
    /// Gives the connection back, as dropping the lease does, with the
    /// caller's clock reading of a moment ago instead of a new one.
    pub fn give_back_at(mut self, at: std::time::Instant) {
        if let Some(conn) = self.conn.take() {
            self.hand
                .give_at(conn, Source::Handed, Instant::from_std(at));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.hand.give(conn, Source::Handed);
        }
    }
}
