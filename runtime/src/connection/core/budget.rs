//! What a peer may make this side hold: one memory budget per connection and
//! the count of calls served at once.
//!
//! The budget counts the bytes a peer's traffic keeps alive here — request
//! bodies of calls being served, stream messages received and not yet
//! consumed, interned operation names, open sessions — plus, read live from
//! the write queue, everything queued for the peer. The reader checks it
//! between batches of frames: at or above the limit it stops reading, so the
//! peer is held back by TCP itself, and it resumes once handlers, stream
//! readers or the writer have freed enough. It never decides what a frame
//! means and never touches the socket.
//!
//! [`ServedCalls`] counts the peer's calls this side serves at once against
//! the limit it announced; [`CallSlots`] is the other side of that limit:
//! the calls this side has open towards a peer, kept within what the peer
//! announced, so a well-behaved caller queues locally instead of being
//! refused.
//!
//! Both are lock-free counters: the connection core charges and admits
//! under its lock, but whatever frees memory or ends a call — handlers,
//! stream readers, the writer — gives back from its own task, without it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Bytes a peer's traffic holds on this side, against a limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    held: AtomicUsize,
    /// Set while the reader waits for room; releases only notify then.
    waiting: AtomicBool,
    freed: Notify,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            limit,
            held: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            freed: Notify::new(),
        }
    }

    /// The limit, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged right now (the write queue not included).
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Counts `n` more bytes as held.
    pub(crate) fn charge(&self, n: usize) {
        self.held.fetch_add(n, Ordering::AcqRel);
    }

    /// Counts `n` bytes as freed, waking the reader if it waits for room.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.held.fetch_sub(n, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire) {
            self.freed.notify_one();
        }
    }

    /// Wakes the reader if it waits: something else it waits for changed
    /// (a served call ended).
    pub(crate) fn wake(&self) {
        if self.waiting.load(Ordering::Acquire) {
            self.freed.notify_one();
        }
    }

    /// Whether `queued` bytes in the write queue plus what is held reach the limit.
    pub(crate) fn is_full(&self, queued: usize) -> bool {
        self.held().saturating_add(queued) >= self.limit
    }

    /// Marks the reader as waiting (or not) for room, so releases wake it.
    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Release);
    }

    /// Resolves after the next release while the reader is marked waiting
    /// (or at once if one happened since the last wait).
    pub(crate) async fn freed(&self) {
        self.freed.notified().await;
    }
}

/// The peer's calls this side serves right now, against the most it
/// announced it serves at once (PROTOCOL.md §7.8). Admitted by the core
/// under its lock; ended by whoever ends the call.
#[derive(Debug)]
pub(crate) struct ServedCalls {
    max: u32,
    now: AtomicU32,
    /// Woken when a call ends: the reader may wait for room.
    budget: Arc<Budget>,
    /// Set once this side closes gracefully; only then does the last call
    /// ending (served here, or in the call table) wake `quiet`, so open
    /// connections pay nothing for it.
    closing: AtomicBool,
    /// Wakes a graceful close waiting for the last call to end.
    quiet: Notify,
}

impl ServedCalls {
    pub(crate) fn new(max: u32, budget: Arc<Budget>) -> Self {
        ServedCalls {
            max: max.max(1),
            now: AtomicU32::new(0),
            budget,
            closing: AtomicBool::new(false),
            quiet: Notify::new(),
        }
    }

    /// The limit.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    /// Calls served right now.
    pub(crate) fn count(&self) -> u32 {
        // SeqCst with `end` and `closing`: a graceful close that reads a
        // call still served is sure that call's end sees it closing.
        self.now.load(Ordering::SeqCst)
    }

    /// Whether as many calls as allowed are being served.
    pub(crate) fn at_limit(&self) -> bool {
        self.count() >= self.max
    }

    /// Counts one more call if the limit leaves room; `false` if not.
    pub(crate) fn try_admit(&self) -> bool {
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts a one-way message, which cannot be refused: the reader waits
    /// below the limit before it takes one in, so it never passes the limit.
    pub(crate) fn admit(&self) {
        self.now.fetch_add(1, Ordering::AcqRel);
    }

    /// A served call ended: one more may be admitted.
    pub(crate) fn end(&self) {
        let was = self.now.fetch_sub(1, Ordering::SeqCst);
        self.budget.wake();
        if was == 1 {
            self.wake_quiet();
        }
    }

    /// This side closes gracefully: from now on the last call ending wakes
    /// [`quiet`](Self::quiet).
    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Wakes a graceful close if one waits: a call ended and none may be
    /// left (the close checks).
    pub(crate) fn wake_quiet(&self) {
        if self.closing.load(Ordering::SeqCst) {
            self.quiet.notify_waiters();
        }
    }

    /// Resolves at the next [`wake_quiet`](Self::wake_quiet) after it was
    /// created: create it, then check whether calls are left, then await it.
    pub(crate) fn quiet(&self) -> tokio::sync::futures::Notified<'_> {
        self.quiet.notified()
    }
}

/// Bytes charged to a [`Budget`] for as long as this guard lives.
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    pub(crate) fn new(budget: &Arc<Budget>, bytes: usize) -> Self {
        budget.charge(bytes);
        Charge {
            budget: budget.clone(),
            bytes,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// The calls this side has open towards its peer, within the peer's
/// announced `max calls`. A call takes a slot before its call-open frame is
/// written and gives it back when its entry leaves the call table — after
/// the peer's answer arrived or this side's cancel was queued, both of which
/// the peer sees only after it stopped counting the call — so the peer never
/// sees more calls at once than it allowed.
#[derive(Debug)]
pub(crate) struct CallSlots {
    max: u32,
    open: AtomicU32,
    freed: Notify,
}

impl CallSlots {
    pub(crate) fn new(max: u32) -> Self {
        CallSlots {
            max: max.max(1),
            open: AtomicU32::new(0),
            freed: Notify::new(),
        }
    }

    /// Takes a slot if one is free.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                slots: self.clone(),
            })
    }

    /// Waits for a free slot and takes it.
    pub(crate) async fn take(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_take() {
                return slot;
            }
            freed.await;
        }
    }

    /// Calls open right now.
    #[cfg(test)]
    fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }
}

/// One of a peer's call slots, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<CallSlots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
        self.slots.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_budget_counts_charges_and_the_queue_against_its_limit() {
        let b = Arc::new(Budget::new(100));
        let c = Charge::new(&b, 60);
        assert!(!b.is_full(39));
        assert!(b.is_full(40), "held plus queued reaching the limit is full");
        drop(c);
        assert_eq!(b.held(), 0);
        assert!(!b.is_full(99));
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_wakes_a_waiting_reader() {
        let b = Arc::new(Budget::new(10));
        b.charge(10);
        b.set_waiting(true);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.freed().await }
        });
        tokio::task::yield_now().await;
        b.release(5);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("no panic");
    }

    #[test]
    fn served_calls_stop_at_the_limit_and_an_end_makes_room() {
        let served = ServedCalls::new(2, Arc::new(Budget::new(100)));
        assert!(served.try_admit());
        assert!(served.try_admit());
        assert!(served.at_limit());
        assert!(!served.try_admit(), "the third call is refused");
        assert_eq!(served.count(), 2, "a refusal counts nothing");
        served.end();
        assert!(!served.at_limit());
        assert!(served.try_admit());
        assert_eq!(ServedCalls::new(0, Arc::new(Budget::new(1))).max(), 1);
    }

    #[test]
    fn slots_stop_at_the_peers_limit_and_come_back_on_drop() {
        let s = Arc::new(CallSlots::new(2));
        let a = s.try_take().expect("first");
        let _b = s.try_take().expect("second");
        assert!(s.try_take().is_none(), "the peer allows two");
        drop(a);
        assert!(s.try_take().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_at_the_limit_waits_for_a_slot() {
        let s = Arc::new(CallSlots::new(1));
        let held = s.try_take().expect("first");
        let waiter = tokio::spawn({
            let s = s.clone();
            async move {
                let _slot = s.take().await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no slot yet");
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("took the freed slot")
            .expect("no panic");
        assert_eq!(s.open(), 0);
    }

    #[test]
    fn a_peer_announcing_zero_still_gets_one_call() {
        assert_eq!(CallSlots::new(0).max, 1);
    }
}
