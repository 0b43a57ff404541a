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

use std::future::Future;
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
    pub(crate) token: CancellationToken,
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
            token: CancellationToken::new(),
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
