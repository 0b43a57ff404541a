//! Cascading deadlines and cancellation: the call a handler is serving, as
//! the calls it makes see it.
//!
//! The serving code runs every handler inside a [`CallScope`] (a tokio
//! task-local holding the served call's deadline and cancellation token). A
//! call opened while a scope is current — by the handler itself, or by
//! anything it awaits on the same task — inherits both: its deadline is the
//! earlier of its own and the served call's, and it is cancelled (with a
//! cancel frame to its peer) when the served call is. So cancelling or
//! timing out one call stops the whole tree of calls it caused, however many
//! hops deep.
//!
//! Work spawned onto another task has no current scope; it inherits only
//! through [`CallContext::child_options`](crate::CallContext::child_options).
//! [`CallOptions::detached`](super::CallOptions::detached) opts a call out.
//!
//! This module owns the scope and the arithmetic; it never sends a frame.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

tokio::task_local! {
    static CURRENT: CallScope;
}

/// The deadline and cancellation of one call being served.
#[derive(Clone, Debug)]
pub(crate) struct CallScope {
    pub(crate) deadline: Option<Instant>,
    pub(crate) token: CallToken,
}

thread_local! {
    /// A token no one holds, for the next unary call served on this thread.
    static SPARE: Cell<Option<Arc<Reusable>>> = const { Cell::new(None) };
}

/// The cancellation of one call being served, as its handler's context,
/// its scope and the serving code share it. It fires when the caller
/// cancels, the deadline passes, the connection or session ends, or the
/// call is answered.
///
/// Most unary calls are answered on the spot, and their handlers never look
/// at the token or keep it: for them a token nobody else came to hold is
/// handed to the next call instead of being cancelled and freed (cancelling
/// a token no one holds is seen by no one). That saves the token's
/// allocation per call. A token lent out as a plain [`CancellationToken`]
/// (to the call table, to the handler, to a child stream) is never reused.
#[derive(Clone, Debug)]
pub(crate) enum CallToken {
    /// A token that may go on to the next call (see [`CallToken::reusable`]).
    Reusable(Arc<Reusable>),
    /// A token of this call only.
    Plain(CancellationToken),
}

#[derive(Debug, Default)]
pub(crate) struct Reusable {
    token: CancellationToken,
    /// Handed out as a plain token: someone may hold it unseen.
    lent: AtomicBool,
}

impl CallToken {
    /// A token for a call that may be answered on the spot: the one the
    /// last such call on this thread left, or a new one.
    pub(crate) fn reusable() -> CallToken {
        let spare = SPARE.try_with(Cell::take).ok().flatten();
        CallToken::Reusable(spare.unwrap_or_default())
    }

    fn token(&self) -> &CancellationToken {
        match self {
            CallToken::Reusable(r) => &r.token,
            CallToken::Plain(t) => t,
        }
    }

    /// Whether the call has been cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.token().is_cancelled()
    }

    /// Resolves when the call is cancelled.
    pub(crate) async fn cancelled(&self) {
        self.token().cancelled().await
    }

    /// Cancels the call.
    pub(crate) fn cancel(&self) {
        self.token().cancel()
    }

    /// The call's cancellation as a plain token, for whatever keeps it
    /// beyond the call's context; from now on the token is not reused.
    pub(crate) fn lend(&self) -> CancellationToken {
        if let CallToken::Reusable(r) = self {
            r.lent.store(true, Ordering::Relaxed);
        }
        self.token().clone()
    }

    /// The call ended (answered, refused or failed) and its handler's
    /// future is gone: the token fires for whoever still holds it, unless
    /// no one does, and then it is kept for this thread's next call.
    pub(crate) fn release(self) {
        if let CallToken::Reusable(mut r) = self {
            // Unique: no context, scope or clone of this call is left.
            if let Some(only) = Arc::get_mut(&mut r) {
                if !*only.lent.get_mut() && !only.token.is_cancelled() {
                    let _ = SPARE.try_with(|spare| spare.set(Some(r)));
                    return;
                }
            }
            r.token.cancel();
        } else {
            self.cancel();
        }
    }
}

/// Which scope, if any, a call made with some options belongs to.
#[derive(Clone, Debug, Default)]
pub(crate) enum Parent {
    /// The scope current on the calling task, if any (the default).
    #[default]
    Current,
    /// A scope handed over explicitly ([`CallContext::child_options`](crate::CallContext::child_options)).
    Explicit(CallScope),
    /// None: the call stands on its own.
    Detached,
}

impl Parent {
    /// The scope a call made now belongs to.
    pub(crate) fn resolve(&self) -> Option<CallScope> {
        match self {
            Parent::Current => CallScope::current(),
            Parent::Explicit(scope) => Some(scope.clone()),
            Parent::Detached => None,
        }
    }
}

impl CallScope {
    /// The scope of the call being served on this task, if any.
    pub(crate) fn current() -> Option<CallScope> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `fut` with this scope current.
    pub(crate) fn enter<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }

    /// Time left before the deadline, if there is one.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// The timeout of a call whose own (or default) timeout is `own`, inside
/// `parent`: the earlier of the two deadlines.
pub(crate) fn cascade(own: Option<Duration>, parent: Option<&CallScope>) -> Option<Duration> {
    match (own, parent.and_then(CallScope::remaining)) {
        (Some(own), Some(left)) => Some(own.min(left)),
        (own, left) => own.or(left),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(left: Option<Duration>) -> CallScope {
        CallScope {
            deadline: left.map(|d| Instant::now() + d),
            token: CallToken::Plain(CancellationToken::new()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_earlier_deadline_wins() {
        let s = Duration::from_secs;
        assert_eq!(cascade(Some(s(5)), Some(&scope(Some(s(2))))), Some(s(2)));
        assert_eq!(cascade(Some(s(1)), Some(&scope(Some(s(2))))), Some(s(1)));
        assert_eq!(cascade(None, Some(&scope(Some(s(2))))), Some(s(2)));
        assert_eq!(cascade(Some(s(3)), Some(&scope(None))), Some(s(3)));
        assert_eq!(cascade(Some(s(3)), None), Some(s(3)));
        assert_eq!(cascade(None, None), None);
    }

    fn address(t: &CallToken) -> usize {
        match t {
            CallToken::Reusable(r) => Arc::as_ptr(r) as usize,
            CallToken::Plain(_) => 0,
        }
    }

    #[test]
    fn a_token_no_one_kept_goes_to_the_next_call_and_a_kept_one_fires() {
        SPARE.with(Cell::take);
        // No one kept it: the next call gets it, unfired.
        let first = CallToken::reusable();
        let at = address(&first);
        first.release();
        let second = CallToken::reusable();
        assert_eq!(address(&second), at);
        assert!(!second.is_cancelled());
        // Still held (a context or scope kept by spawned work): it fires,
        // and the next call gets a new one.
        let kept = second.clone();
        second.release();
        assert!(kept.is_cancelled());
        let third = CallToken::reusable();
        assert_ne!(address(&third), at);
        assert!(!third.is_cancelled());
        // Lent out as a plain token: it fires, held or not, and is not handed on.
        let lent = third.lend();
        third.release();
        assert!(lent.is_cancelled());
        assert!(!CallToken::reusable().is_cancelled());
        drop(kept);
    }

    #[tokio::test(start_paused = true)]
    async fn a_scope_is_current_only_inside_enter_and_not_in_spawned_tasks() {
        assert!(CallScope::current().is_none());
        let outer = scope(Some(Duration::from_secs(1)));
        let token = outer.token.clone();
        outer
            .enter(async move {
                let inner = CallScope::current().expect("current inside enter");
                assert!(inner.token.is_cancelled() == token.is_cancelled());
                let spawned = tokio::spawn(async { CallScope::current().is_none() });
                assert!(spawned.await.expect("joins"), "spawned work is detached");
            })
            .await;
        assert!(CallScope::current().is_none());
        assert!(Parent::Detached.resolve().is_none());
    }
}
