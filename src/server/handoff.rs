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

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::connection::ServerConn;
use super::pool::{GateSlot, ServerManager, ServerPool};
use crate::client::clock::Tick;

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

/// The part of a pool its leases use: bb8, and who waits. Part of its
/// [`ServerPool`], which each lease holds (see [`Lease`]).
pub struct Handoff {
    bb8: bb8::Pool<ServerManager>,
    queue: Mutex<Queue>,
    size: u32,
    timeout: Duration,
    gate: GateSlot,
}

/// Waiting checkouts, oldest first, and where each receives its
/// connection, all under one lock (so that waiting allocates nothing once
/// a pool has been busy).
///
/// Why the slots live here, numbered, rather than each behind its own
/// lock and `Arc`: a queued checkout took four locks (queue and slot to
/// start, queue and slot to be served) besides its own polls, and a
/// reference count going up and down, and looked for a reusable slot
/// among those of waiters not yet gone; under the queue's lock alone it
/// takes two, and its number is free again as soon as it took its
/// connection (~50 instructions per queued checkout).
#[derive(Default)]
struct Queue {
    /// Slot numbers of the waiting checkouts, oldest first.
    waiters: VecDeque<u32>,
    /// Every slot; one is used by exactly one [`Queued`] from
    /// [`Handoff::start`] until it took its connection or was dropped.
    slots: Vec<Slot>,
    /// Numbers of the slots no checkout uses.
    free: Vec<u32>,
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
    /// When the last waiter queued started its wait (a later one's start
    /// is not earlier): see [`Slot::since`].
    last_since: Option<Tick>,
}

/// Where one waiting checkout receives its connection.
///
/// Why a waker in the slot rather than a `Notify`: the waiter already
/// takes the queue's lock to look for its connection, so registering
/// there costs nothing more, and whoever serves, fails or nudges it wakes
/// it under the same lock; a `Notify` took its own lock to register,
/// again to notify and again when its wait was dropped (~250 instructions
/// per waiting checkout), and its wait made every acquisition's state
/// larger.
struct Slot {
    /// The connection handed over, its pool (the giver's reference,
    /// passed on: see [`Handoff::give_at`]), where it came from, and when.
    lease: Option<(Bb8Lease, Arc<ServerPool>, Source, Tick)>,
    /// Still in the queue (not served, not given up).
    queued: bool,
    /// Its `checkout_timeout` passed before a connection came.
    expired: bool,
    /// [`Handoff::wake_waiters`] asks it to ask its `give_up` again.
    nudged: bool,
    /// When its wait started, kept in queue order: its `checkout_timeout`
    /// deadline is this plus the timeout. Why the start rather than the
    /// deadline: only the watchdog, which rarely runs, needs the sum.
    since: Tick,
    /// The waiting task, once it found nothing yet.
    waker: Option<Waker>,
}

impl Slot {
    /// The waiting task, to wake (under the queue's lock: waking only
    /// schedules it).
    fn wake(&mut self) -> Option<Waker> {
        self.waker.take()
    }
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
    /// `give_up` (told `at`) is asked once the checkout has to wait, before
    /// it joins the queue; a checkout that does join it is registered to
    /// be woken (`cx`) at once.
    ///
    /// Why all under the one lock taken here: a checkout that waits (every
    /// one, at 16 clients on pools of 5) took the queue's lock a second
    /// time, in a second call, to register its waker and ask `give_up`.
    pub fn start<'a>(
        &'a self,
        home: &Arc<ServerPool>,
        at: Tick,
        cx: &mut Context<'_>,
        give_up: impl Fn(Tick) -> bool,
    ) -> Started<'a> {
        let mut queue = self.queue.lock();
        if queue.waiters.is_empty()
            && let Some(conn) = self.idle_now()
        {
            return Started::Now(Lease::new(conn, home.clone()), Source::Pool);
        }
        // Nothing joined yet: giving up leaves nothing to undo.
        if give_up(at) {
            return Started::GivenUp;
        }
        if queue.waiters.is_empty() {
            queue.full = false;
        }
        let since = at;
        // Deadlines stay in queue order (the watchdog relies on it)
        // although `at` was read before the lock: a caller that read
        // the clock a moment earlier but queued later gets its
        // predecessor's deadline.
        let start = queue.last_since.map_or(since, |last| last.max(since));
        queue.last_since = Some(start);
        let slot = queue.take_slot(start, cx.waker().clone());
        queue.waiters.push_back(slot);
        Self::refill(home, &mut queue);
        if !queue.watchdog {
            Self::start_watchdog(home, &mut queue);
        }
        Started::Queued(Queued {
            hand: self,
            slot,
            served: false,
        })
    }

    /// Wakes every queued checkout to ask its `give_up` again (the
    /// cluster changed: a node went down, or the primary moved).
    pub fn wake_waiters(&self) {
        let mut queue = self.queue.lock();
        let Queue { waiters, slots, .. } = &mut *queue;
        for &i in waiters.iter() {
            let slot = &mut slots[i as usize];
            slot.nudged = true;
            if let Some(waker) = slot.wake() {
                waker.wake();
            }
        }
    }

    /// Starts the task that fails waiters at their deadline: one per pool
    /// while anyone waits, instead of a timer per waiting checkout. The
    /// queue is in deadline order, so it sleeps until the oldest waiter's
    /// deadline and, woken, fails those past theirs; a waiter served
    /// before its deadline costs it nothing.
    fn start_watchdog(home: &Arc<ServerPool>, queue: &mut Queue) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        queue.watchdog = true;
        let home = home.clone();
        runtime.spawn(async move {
            while let Some(next) = home.hand.expire() {
                tokio::time::sleep_until(next).await;
            }
        });
    }

    /// Fails the waiters past their deadline; returns when to look again,
    /// or `None` (and the watchdog stops) when no one has waited for a
    /// whole `checkout_timeout` (it lingers that long, so that a pool
    /// whose queue empties and fills again does not start a task each time).
    ///
    /// In tokio's time, which its timer sleeps in (tokio's clock may be
    /// paused in tests): a waiter's start is converted (clock.rs), here
    /// only, where no request waits for it.
    fn expire(&self) -> Option<tokio::time::Instant> {
        let mut queue = self.queue.lock();
        let now = tokio::time::Instant::now();
        while let Some(&first) = queue.waiters.front() {
            let slot = &mut queue.slots[first as usize];
            let deadline = tokio::time::Instant::from_std(slot.since.instant()) + self.timeout;
            if deadline > now {
                queue.watchdog_idle = false;
                return Some(deadline);
            }
            slot.queued = false;
            slot.expired = true;
            if let Some(waker) = slot.wake() {
                waker.wake();
            }
            queue.waiters.pop_front();
        }
        if !queue.watchdog_idle {
            queue.watchdog_idle = true;
            return Some(now + self.timeout);
        }
        queue.watchdog = false;
        queue.watchdog_idle = false;
        None
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
    fn refill(home: &Arc<ServerPool>, queue: &mut Queue) {
        if queue.full || queue.opening as usize >= queue.waiters.len() {
            return;
        }
        Self::start_fillers(home, queue);
    }

    #[inline(never)]
    fn start_fillers(home: &Arc<ServerPool>, queue: &mut Queue) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hand = &home.hand;
        let open = hand.bb8.state().connections;
        while (queue.opening as usize) < queue.waiters.len() && open + queue.opening < hand.size {
            queue.opening += 1;
            let home = home.clone();
            runtime.spawn(async move {
                let got = home.hand.bb8.get_owned().await;
                let mut queue = home.hand.queue.lock();
                queue.opening -= 1;
                match got {
                    Ok(conn) => {
                        drop(queue);
                        Self::give(conn, home, Source::Pool);
                    }
                    // The failure went to the error sink (the pool's last
                    // error, which waiters that time out report); those
                    // still waiting get another try.
                    Err(_) => {
                        queue.full = false;
                        Self::refill(&home, &mut queue);
                    }
                }
            });
        }
        queue.full = open + queue.opening >= hand.size;
    }

    /// Gives a connection back: to the oldest waiter, or to bb8 when no one
    /// waits (bb8 checks it and keeps or closes it). One that must close
    /// (broken, past `max_lifetime`, asked back by the fleet budget) goes
    /// to bb8 to be closed, and a filler opens another for the waiters.
    fn give(conn: Bb8Lease, home: Arc<ServerPool>, source: Source) {
        Self::give_at(conn, home, source, Tick::now());
    }

    /// [`give`](Self::give) at `now`: one clock reading serves as the time
    /// the connection was returned (its idle time and age count from
    /// there) and, for a waiter, the time its wait ended.
    ///
    /// `home`, the giver's reference to the pool, goes to the waiter with
    /// the connection: handing a connection over moves it, and no
    /// reference count goes up or down (two atomic operations per
    /// transaction, on a count every session of the pool shares).
    fn give_at(mut conn: Bb8Lease, home: Arc<ServerPool>, source: Source, now: Tick) {
        conn.mark_returned_at(now);
        // SAFETY: the pool is alive while `hand` is used. `home` keeps it
        // alive until it is dropped at the end of this function, after the
        // queue's guard (declared later, dropped first), or until it is
        // moved into a slot of this very queue below; a slot's lease is
        // taken out only under the queue's lock (`poll_taken`,
        // `Queued::leave`), which this function holds until its guard is
        // dropped, and neither `hand` nor the guard is used after that.
        // Why not a reference borrowed from `home`: it would forbid moving
        // `home` into the slot while the queue is locked.
        let hand: &Handoff = unsafe { &(*Arc::as_ptr(&home)).hand };
        let mut queue = hand.queue.lock();
        if queue.waiters.is_empty() {
            // Under the queue's lock: a checkout that finds no idle
            // connection and starts waiting cannot slip in between.
            drop(conn);
            return;
        }
        if hand.must_close(&mut conn) {
            drop(conn);
            queue.full = false;
            Self::refill(&home, &mut queue);
            return;
        }
        let Some(first) = queue.waiters.pop_front() else {
            return;
        };
        let slot = &mut queue.slots[first as usize];
        slot.queued = false;
        slot.lease = Some((conn, home, source, now));
        if let Some(waker) = slot.wake() {
            waker.wake();
        }
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
    /// A slot for a new waiter whose wait started `since`, to be woken
    /// through `waker`: a free one reused, else a new one (the list grows
    /// to the most waiters the pool has had at once).
    ///
    /// Inlined: every queued checkout takes one (not inlined, the call
    /// and its moves cost ~35 instructions).
    #[inline]
    fn take_slot(&mut self, since: Tick, waker: Waker) -> u32 {
        let Some(i) = self.free.pop() else {
            return self.new_slot(since, waker);
        };
        // Set field by field: a free slot holds no connection and no
        // waker (its last waiter took the one, the hand-over or its drop
        // the other), so nothing needs dropping, and writing the whole
        // slot over cost ~25 instructions.
        let slot = &mut self.slots[i as usize];
        debug_assert!(slot.lease.is_none() && slot.waker.is_none());
        slot.queued = true;
        slot.expired = false;
        slot.nudged = false;
        slot.since = since;
        slot.waker = Some(waker);
        i
    }

    /// A slot added to the list: only until the pool has had its most
    /// waiters at once (kept out of line, so that `take_slot` inlines).
    #[cold]
    #[inline(never)]
    fn new_slot(&mut self, since: Tick, waker: Waker) -> u32 {
        let i = u32::try_from(self.slots.len()).expect("fewer waiters than 2^32");
        self.slots.push(Slot {
            lease: None,
            queued: true,
            expired: false,
            nudged: false,
            since,
            waker: Some(waker),
        });
        i
    }
}

/// A connection a queued checkout was given: where it came from, and when
/// it was handed over (`None`: not waited for).
pub type Handed = (Lease, Source, Option<Tick>);

/// How [`Handoff::start`] began: with a connection, in the queue, or not
/// at all (its `give_up` said so).
pub enum Started<'a> {
    Now(Lease, Source),
    Queued(Queued<'a>),
    GivenUp,
}

/// A queued checkout; dropped (served, timed out, or cancelled because the
/// node went down) it leaves the queue, and a connection handed to it too
/// late goes on to the next waiter.
pub struct Queued<'a> {
    hand: &'a Handoff,
    /// Its slot's number in the queue's list.
    slot: u32,
    /// It took its connection: nothing left to undo on drop.
    served: bool,
}

impl Queued<'_> {
    /// Polls for the connection. `give_up` (told the time) is asked
    /// whenever [`Handoff::wake_waiters`] wakes it (not when served; it
    /// was asked when the wait started, in [`Handoff::start`]), and the
    /// checkout ends with [`NotTaken::GivenUp`] if it says so: the
    /// caller's watch on the node costs nothing when a connection is there
    /// at once, and no subscription of its own while it waits. Not to be
    /// polled again once ready. Gives the connection with the time it was
    /// handed over (which, read by the session that gave it back, may be
    /// earlier than this wait's start).
    pub fn poll_taken(
        &mut self,
        cx: &mut Context<'_>,
        give_up: impl Fn(Tick) -> bool,
    ) -> Poll<Result<Handed, NotTaken>> {
        let mut queue = self.hand.queue.lock();
        let Queue { slots, free, .. } = &mut *queue;
        let state = &mut slots[self.slot as usize];
        if let Some((conn, home, source, at)) = state.lease.take() {
            // Served: `give_at` took the waiter out of the queue and its
            // waker, so the slot is free at once and dropping this has
            // nothing to undo (no second lock).
            free.push(self.slot);
            drop(queue);
            self.served = true;
            return Poll::Ready(Ok((Lease::new(conn, home), source, Some(at))));
        }
        if state.expired {
            return Poll::Ready(Err(NotTaken::WaitedInVain));
        }
        if std::mem::take(&mut state.nudged) && give_up(Tick::now()) {
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
    /// Inlined: a served checkout (nearly every one) has nothing to undo,
    /// and the call cost more than the test.
    #[inline]
    fn drop(&mut self) {
        if !self.served {
            self.leave();
        }
    }
}

impl Queued<'_> {
    /// Leaves the queue unserved (timed out, given up, or cancelled).
    #[cold]
    #[inline(never)]
    fn leave(&mut self) {
        let late = {
            let mut queue = self.hand.queue.lock();
            let Queue {
                waiters,
                slots,
                free,
                ..
            } = &mut *queue;
            let state = &mut slots[self.slot as usize];
            // No longer waiting: a free slot keeps no task alive.
            state.waker = None;
            let late = state.lease.take();
            if std::mem::take(&mut state.queued)
                && let Some(i) = waiters.iter().position(|&s| s == self.slot)
            {
                waiters.remove(i);
            }
            free.push(self.slot);
            late
        };
        // Served after all, before it looked: the next waiter gets it.
        if let Some((conn, home, source, _)) = late {
            Handoff::give(conn, home, source);
        }
    }
}

/// A server connection checked out of its pool; dropping it gives it to
/// the next waiting client, or back to the pool (which closes it if it was
/// marked broken).
///
/// It holds its pool (what it goes back to, and what the session holding
/// it asks about the pool), and passes that reference on with the
/// connection when it is handed over: see [`Handoff::give_at`].
pub struct Lease {
    /// Always `Some` until given back.
    held: Option<(Bb8Lease, Arc<ServerPool>)>,
}

impl Deref for Lease {
    type Target = ServerConn;

    fn deref(&self) -> &ServerConn {
        &self
            .held
            .as_ref()
            .expect("a lease holds its connection until dropped")
            .0
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut ServerConn {
        &mut self
            .held
            .as_mut()
            .expect("a lease holds its connection until dropped")
            .0
    }
}

impl Lease {
    fn new(conn: Bb8Lease, home: Arc<ServerPool>) -> Lease {
        Lease {
            held: Some((conn, home)),
        }
    }

    /// The connection split as [`ServerConn::split`] does, with the pool
    /// it belongs to: the session relays through the one while it tells
    /// the other how its statements went.
    pub fn split_with_pool(
        &mut self,
    ) -> (
        super::ServerIoParts<'_>,
        &mut super::ServerState,
        &ServerPool,
    ) {
        let (conn, pool) = self
            .held
            .as_mut()
            .expect("a lease holds its connection until dropped");
        let (io, state) = conn.split();
        (io, state, pool)
    }

    /// The pool the connection belongs to.
    pub fn pool(&self) -> &Arc<ServerPool> {
        &self
            .held
            .as_ref()
            .expect("a lease holds its connection until dropped")
            .1
    }

    /// Gives the connection back, as dropping the lease does, with the
    /// caller's clock reading of a moment ago instead of a new one.
    ///
    /// Not dropped afterwards (nothing is left in it to drop): the drop's
    /// call found nothing to give back, ~14 instructions per transaction.
    pub fn give_back_at(self, at: Tick) {
        let mut this = std::mem::ManuallyDrop::new(self);
        if let Some((conn, home)) = this.held.take() {
            Handoff::give_at(conn, home, Source::Handed, at);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((conn, home)) = self.held.take() {
            Handoff::give(conn, home, Source::Handed);
        }
    }
}
