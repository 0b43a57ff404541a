//! The answer to a call this side opened, on its way from whoever ends the
//! call (the reader, the deadline sweeper, the connection's close) to the
//! caller waiting for it: a one-shot cell like `tokio::sync::oneshot`'s,
//! except that a cell both ends have let go of is kept in a small
//! per-thread pool for the next call. A call then waits for its answer
//! without allocating (the oneshot cost one allocation per call).
//!
//! It owns the cell and its pool; it never decides what the outcome is.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::table::Failure;

/// How a call ended: the peer's reply, or why there is none.
pub(crate) type Outcome = Result<Bytes, Failure>;

/// Cells a thread keeps for later calls, at most: as many as calls one
/// connection usually has in flight (each cell is about 150 bytes).
const POOL: usize = 64;

thread_local! {
    /// Cells no one holds any more, ready for this thread's next calls.
    static FREE: RefCell<Vec<Arc<Cell>>> = const { RefCell::new(Vec::new()) };
}

#[derive(Debug, Default)]
struct Cell(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    outcome: Option<Outcome>,
    /// The caller, to wake when the outcome arrives or the sender goes.
    waker: Option<Waker>,
    /// The sending end sent, or was dropped without sending.
    sender_done: bool,
}

impl Cell {
    // Nothing panics while the lock is held (moves and a waker clone), so a
    // poisoned lock still guards a consistent state.
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reply cell: the sending end goes into the call's table entry, the
/// receiving end to the caller.
pub(crate) fn channel() -> (ReplyTx, ReplyRx) {
    let cell = FREE
        .try_with(|free| free.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default();
    (ReplyTx(Some(cell.clone())), ReplyRx(Some(cell)))
}

/// The sending end: delivers the outcome once. Dropped without sending, it
/// tells the caller the call ended without one.
#[derive(Debug)]
pub(crate) struct ReplyTx(Option<Arc<Cell>>);

impl ReplyTx {
    /// Delivers `outcome`; gives it back if the caller is gone.
    pub(crate) fn send(mut self, outcome: Outcome) -> Result<(), Outcome> {
        let Some(cell) = self.0.take() else {
            return Err(outcome);
        };
        if Arc::strong_count(&cell) == 1 {
            return Err(outcome);
        }
        let waker = {
            let mut state = cell.state();
            state.outcome = Some(outcome);
            state.sender_done = true;
            state.waker.take()
        };
        // Let go before waking, so the woken caller finds the cell its own
        // and puts it back in the pool.
        drop(cell);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        let Some(cell) = self.0.take() else {
            return;
        };
        let waker = {
            let mut state = cell.state();
            state.sender_done = true;
            state.waker.take()
        };
        drop(cell);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The sending end went without an outcome (the call's entry was dropped).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Closed;

/// Why [`ReplyRx::try_recv`] has no outcome.
#[cfg(any(test, fuzzing))]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    /// Not yet.
    Empty,
    /// Never: the sending end went without one.
    Closed,
}

/// The receiving end: resolves to the outcome, or [`Closed`].
#[derive(Debug)]
pub(crate) struct ReplyRx(Option<Arc<Cell>>);

#[cfg(any(test, fuzzing))]
impl ReplyRx {
    /// The outcome, if it has arrived.
    pub(crate) fn try_recv(&mut self) -> Result<Outcome, TryRecvError> {
        let Some(cell) = &self.0 else {
            return Err(TryRecvError::Closed);
        };
        let mut state = cell.state();
        match state.outcome.take() {
            Some(outcome) => Ok(outcome),
            None if state.sender_done => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl Future for ReplyRx {
    type Output = Result<Outcome, Closed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(cell) = &self.0 else {
            return Poll::Ready(Err(Closed));
        };
        let mut state = cell.state();
        if let Some(outcome) = state.outcome.take() {
            return Poll::Ready(Ok(outcome));
        }
        if state.sender_done {
            return Poll::Ready(Err(Closed));
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for ReplyRx {
    fn drop(&mut self) {
        let Some(mut cell) = self.0.take() else {
            return;
        };
        // Kept only when no sending end holds it any more; one that still
        // does (it is about to deliver, or the call is still open) frees it.
        let Some(only) = Arc::get_mut(&mut cell) else {
            return;
        };
        let state = only.0.get_mut().unwrap_or_else(PoisonError::into_inner);
        *state = State::default();
        let _ = FREE.try_with(|free| {
            if let Ok(mut free) = free.try_borrow_mut() {
                if free.len() < POOL {
                    free.push(cell);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled() -> usize {
        FREE.with(|f| f.borrow().len())
    }

    #[test]
    fn the_outcome_sent_is_the_one_received_and_the_cell_is_kept() {
        FREE.with(|f| f.borrow_mut().clear());
        let (tx, mut rx) = channel();
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Empty));
        tx.send(Ok(Bytes::from_static(b"reply")))
            .expect("caller waits");
        assert!(matches!(rx.try_recv(), Ok(Ok(b)) if b == "reply"));
        drop(rx);
        assert_eq!(pooled(), 1);
        // The next call gets the kept cell, emptied.
        let (tx, mut rx) = channel();
        assert_eq!(pooled(), 0);
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Closed));
    }

    #[tokio::test]
    async fn a_waiting_caller_is_woken_by_the_outcome_or_by_the_sender_going() {
        let (tx, rx) = channel();
        let waiting = tokio::spawn(rx);
        tokio::task::yield_now().await;
        tx.send(Err(Failure::Lost("gone".into()))).expect("waits");
        assert!(matches!(
            waiting.await.expect("joins"),
            Ok(Err(Failure::Lost(_)))
        ));

        let (tx, rx) = channel();
        let waiting = tokio::spawn(rx);
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(waiting.await.expect("joins").err(), Some(Closed));
    }

    #[test]
    fn a_cell_whose_caller_left_refuses_the_outcome_and_is_not_kept_while_held() {
        FREE.with(|f| f.borrow_mut().clear());
        let (tx, rx) = channel();
        drop(rx);
        assert_eq!(pooled(), 0, "the open entry still holds it");
        assert!(tx.send(Ok(Bytes::new())).is_err());
    }
}
