//! Per-stream flow control: credit the receiver grants, spent by the sender.
//!
//! The receiver of a stream announces a window (bytes it is willing to
//! buffer) in the handshake. The sender may have at most that many bytes of
//! stream data in flight; the receiver returns credit as the application
//! consumes messages. A fast sender facing a slow reader therefore waits
//! instead of growing memory on either side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::budget::Budget;

use tokio::sync::Notify;

/// The sending side's view of one stream's window.
#[derive(Debug)]
pub(crate) struct SendCredit {
    state: Mutex<SendState>,
    notify: Notify,
    window: u32,
}

#[derive(Debug)]
struct SendState {
    available: i64,
    closed: bool,
    /// How the call ended, when it ended with a failure the sender should see.
    failure: Option<super::table::Failure>,
}

/// Why a sender could not acquire credit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CreditClosed;

impl SendCredit {
    pub(crate) fn new(window: u32) -> Self {
        SendCredit {
            state: Mutex::new(SendState {
                available: i64::from(window),
                closed: false,
                failure: None,
            }),
            notify: Notify::new(),
            window,
        }
    }

    /// Takes `n` bytes of credit; a message larger than the credit left goes
    /// once half the window is free, taking the credit below zero.
    pub(crate) fn try_take(&self, n: usize) -> Result<bool, CreditClosed> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.closed {
            return Err(CreditClosed);
        }
        let n = n as i64;
        // A message larger than what is left may still go once at least half
        // the window is free: the receiver returns credit only in half-window
        // steps, so waiting for more could wait forever. The receiver's limit
        // (window plus one frame) still holds.
        if st.available >= n || st.available >= i64::from(self.window / 2) {
            st.available -= n;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Waits until `n` bytes of credit are available and takes them.
    pub(crate) async fn take(&self, n: usize) -> Result<(), CreditClosed> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_take(n)? {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Adds credit granted by the receiver.
    pub(crate) fn grant(&self, n: u32) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.available = st.available.saturating_add(i64::from(n));
        drop(st);
        self.notify.notify_waiters();
    }

    /// Wakes and fails every waiter: the stream or connection ended.
    pub(crate) fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.notify.notify_waiters();
    }

    /// Like [`close`](Self::close), remembering why for the sender.
    pub(crate) fn fail(&self, failure: super::table::Failure) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.closed = true;
        st.failure.get_or_insert(failure);
        drop(st);
        self.notify.notify_waiters();
    }

    /// Why the stream ended, if it ended with a failure.
    pub(crate) fn failure(&self) -> Option<super::table::Failure> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failure
            .clone()
    }

    /// Bytes the sender may still send without waiting.
    pub(crate) fn available(&self) -> i64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .available
    }
}

/// The receiving side's account of one stream: bytes received and not yet
/// returned as credit. The reader checks it against the window so a peer that
/// ignores flow control is caught, not buffered. The same bytes count against
/// the connection's memory budget until they are credited back or the stream
/// is gone.
#[derive(Debug)]
pub(crate) struct RecvWindow {
    outstanding: AtomicU64,
    limit: u64,
    budget: Arc<Budget>,
}

impl RecvWindow {
    /// `window` is what we announced; `slack` admits one oversized message.
    pub(crate) fn new(window: u32, slack: u32, budget: Arc<Budget>) -> Self {
        RecvWindow {
            outstanding: AtomicU64::new(0),
            limit: u64::from(window) + u64::from(slack),
            budget,
        }
    }

    /// Records `n` received bytes; `false` if the peer exceeded its credit.
    pub(crate) fn receive(&self, n: usize) -> bool {
        self.budget.charge(n);
        let now = self.outstanding.fetch_add(n as u64, Ordering::AcqRel) + n as u64;
        now <= self.limit
    }

    /// Records `n` bytes returned to the peer as credit, or dropped unread.
    pub(crate) fn release(&self, n: u32) {
        self.outstanding.fetch_sub(u64::from(n), Ordering::AcqRel);
        self.budget.release(n as usize);
    }

    /// Bytes received and not yet credited back.
    pub(crate) fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Acquire)
    }
}

impl Drop for RecvWindow {
    fn drop(&mut self) {
        // Whatever was never credited back is gone with the stream.
        let left = usize::try_from(*self.outstanding.get_mut()).unwrap_or(usize::MAX);
        self.budget.release(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_spent_and_granted() {
        let c = SendCredit::new(100);
        assert_eq!(c.try_take(60), Ok(true));
        assert_eq!(c.try_take(60), Ok(false));
        c.grant(60);
        assert_eq!(c.try_take(60), Ok(true));
        assert_eq!(c.available(), 40);
    }

    #[test]
    fn oversized_message_goes_alone_on_a_full_window() {
        let c = SendCredit::new(100);
        assert_eq!(c.try_take(500), Ok(true));
        assert_eq!(c.try_take(1), Ok(false));
        c.grant(500);
        assert_eq!(c.try_take(1), Ok(true));
    }

    #[test]
    fn large_message_after_small_ones_does_not_stall() {
        // The receiver holds back credit below half a window; a message
        // bigger than what is left must still be able to go.
        let c = SendCredit::new(100);
        assert_eq!(c.try_take(10), Ok(true));
        assert_eq!(c.try_take(95), Ok(true));
        assert!(c.available() < 0);
        assert_eq!(c.try_take(1), Ok(false));
    }

    #[test]
    fn closed_credit_fails_takers() {
        let c = SendCredit::new(10);
        c.close();
        assert_eq!(c.try_take(1), Err(CreditClosed));
    }

    #[tokio::test]
    async fn waiter_wakes_on_grant() {
        let c = std::sync::Arc::new(SendCredit::new(10));
        assert_eq!(c.try_take(10), Ok(true));
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.take(5).await });
        tokio::task::yield_now().await;
        c.grant(5);
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
        assert!(matches!(r, Ok(Ok(Ok(())))));
    }

    #[test]
    fn receiver_catches_a_peer_over_its_window() {
        let w = RecvWindow::new(100, 10, Arc::new(Budget::new(1 << 20)));
        assert!(w.receive(100));
        assert!(w.receive(10));
        assert!(!w.receive(1));
        w.release(50);
        assert_eq!(w.outstanding(), 61);
    }

    #[test]
    fn unread_stream_bytes_count_against_the_budget_until_credited_or_dropped() {
        let budget = Arc::new(Budget::new(1 << 20));
        let w = RecvWindow::new(100, 10, budget.clone());
        assert!(w.receive(80));
        assert_eq!(budget.held(), 80);
        w.release(50);
        assert_eq!(budget.held(), 30);
        drop(w);
        assert_eq!(budget.held(), 0, "a dropped stream gives its bytes back");
    }
}
