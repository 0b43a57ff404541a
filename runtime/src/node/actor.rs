//! Actor handlers: service state owned by one task, changed one call at a time.
//!
//! Owns [`Actor`], a handle to a task that holds a value of `S` and runs the
//! closures sent to it, one after another, in the order they arrived. A
//! `#[plexus::service]` implementation keeps an `Actor` and forwards each
//! call into it, so handler code mutates plain `&mut S` with no lock — the
//! service/shim split of LightImage.Networking. This module knows nothing of
//! connections or nodes; it only carries the served call's scope (deadline,
//! cancellation) over to the job, so the job's own calls cascade from it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::connection::scope::CallScope;
use crate::error::Reject;

/// The future an [`Actor::call_async`] closure returns: it may borrow the
/// state for as long as it runs.
pub type ActorFuture<'a, R> = Pin<Box<dyn Future<Output = R> + Send + 'a>>;

/// A job that borrows the state until its future completes; it resolves
/// to whether the caller's closure panicked.
type AsyncJob<S> = Box<dyn for<'a> FnOnce(&'a mut S) -> ActorFuture<'a, bool> + Send>;

/// A job returns whether the caller's closure panicked (the caller has
/// been told already; the actor decides what becomes of the state).
enum Job<S> {
    Sync(Box<dyn FnOnce(&mut S) -> bool + Send>),
    Async(AsyncJob<S>),
}

/// What an actor does with its state after a call panicked.
enum OnPanic<S> {
    /// Keep serving with the state as the call left it.
    Keep,
    /// Replace the state with a fresh one and keep serving.
    Restart(Box<dyn Fn() -> S + Send>),
}

fn panic_message(p: Box<dyn Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Pins down the higher-ranked signature of an async job's closure.
fn async_job<S, F>(f: F) -> F
where
    F: for<'a> FnOnce(&'a mut S) -> ActorFuture<'a, bool>,
{
    f
}

/// Mailbox size of [`Actor::spawn`]: senders wait when this many calls are queued.
pub const DEFAULT_MAILBOX: usize = 1024;

/// A handle to state running on its own task; cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use plexus::node::Actor;
///
/// let counter = Actor::spawn(0u64);
/// let after = counter.call(|n| { *n += 1; *n }).await.unwrap();
/// assert_eq!(after, 1);
/// # }
/// ```
///
/// Inside a service, forward each operation:
///
/// ```ignore
/// struct Room { log: Actor<Vec<Message>> }
///
/// impl Chat for Room {
///     async fn post(&self, msg: Message) -> Result<Receipt, Reject> {
///         let seq = self.log.call(move |log| { log.push(msg); log.len() as u64 }).await?;
///         Ok(Receipt { seq })
///     }
/// }
/// ```
///
/// The closures are synchronous: the state is never held across an await,
/// so a slow peer cannot stall the actor. Do async work (calling other
/// peers, I/O) before or after `call`.
///
/// A closure that panics fails its own call with [`ActorError::Panicked`]
/// (a `HandlerFailed` rejection for the peer) and nothing else: the actor
/// keeps serving the calls behind it. Its state keeps whatever the closure
/// changed before it panicked; an actor made with [`Actor::restarting`]
/// starts again from a fresh state instead.
pub struct Actor<S> {
    mailbox: mpsc::Sender<Job<S>>,
}

impl<S> Clone for Actor<S> {
    fn clone(&self) -> Self {
        Actor {
            mailbox: self.mailbox.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Actor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("stopped", &self.mailbox.is_closed())
            .finish_non_exhaustive()
    }
}

impl<S: Send + 'static> Actor<S> {
    /// Moves `state` onto a new task with a mailbox of [`DEFAULT_MAILBOX`]
    /// calls. The task ends when every handle is dropped. Must be called
    /// inside a Tokio runtime.
    pub fn spawn(state: S) -> Self {
        Actor::with_mailbox(state, DEFAULT_MAILBOX)
    }

    /// Like [`Actor::spawn`] with a mailbox of `capacity` calls (at least 1).
    pub fn with_mailbox(state: S, capacity: usize) -> Self {
        Actor::start(state, capacity, OnPanic::Keep)
    }

    /// An actor whose state is made by `init`, and made afresh by it after
    /// a call panicked (the panicking call fails with
    /// [`ActorError::Panicked`]; calls behind it see the new state). Mailbox
    /// of [`DEFAULT_MAILBOX`] calls.
    pub fn restarting(init: impl Fn() -> S + Send + 'static) -> Self {
        Actor::start(init(), DEFAULT_MAILBOX, OnPanic::Restart(Box::new(init)))
    }

    fn start(mut state: S, capacity: usize, on_panic: OnPanic<S>) -> Self {
        let (mailbox, mut jobs) = mpsc::channel::<Job<S>>(capacity.max(1));
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let panicked = match job {
                    Job::Sync(f) => f(&mut state),
                    Job::Async(f) => f(&mut state).await,
                };
                if panicked {
                    if let OnPanic::Restart(init) = &on_panic {
                        // A panicking `init` stops the actor: every later
                        // call sees `Stopped`.
                        state = init();
                    }
                }
            }
        });
        Actor { mailbox }
    }

    /// Runs `f` on the state after every call that arrived before it, and
    /// returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, ActorError>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job::Sync(Box::new(move |state| {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(state)));
            let panicked = outcome.is_err();
            // The caller may have given up (its call was cancelled); the
            // change to the state stands either way.
            let _ = reply.send(outcome.map_err(panic_message));
            panicked
        }));
        self.mailbox
            .send(job)
            .await
            .map_err(|_| ActorError::Stopped)?;
        answer
            .await
            .map_err(|_| ActorError::Stopped)?
            .map_err(ActorError::Panicked)
    }

    /// Runs the async `f` on the state after every call that arrived before
    /// it, and returns its result. The actor takes no other call until the
    /// future completes, so `f` may hold `&mut S` across awaits — and
    /// whatever it awaits holds up every call behind it. Generated
    /// `…Actor` traits (see `docs/CONTRACTS.md`) forward here.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use plexus::node::Actor;
    ///
    /// let log = Actor::spawn(Vec::<String>::new());
    /// let len = log
    ///     .call_async(|log| Box::pin(async move {
    ///         tokio::task::yield_now().await; // e.g. I/O, with the state held
    ///         log.push("hi".into());
    ///         log.len()
    ///     }))
    ///     .await
    ///     .unwrap();
    /// assert_eq!(len, 1);
    /// # }
    /// ```
    pub async fn call_async<R, F>(&self, f: F) -> Result<R, ActorError>
    where
        F: for<'a> FnOnce(&'a mut S) -> ActorFuture<'a, R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        // The job runs on the actor's task, but on behalf of the call being
        // served here: calls it makes are that call's children (deadline,
        // cancellation), as if the handler had made them itself.
        let scope = CallScope::current();
        let job = Job::Async(Box::new(async_job(move |state: &mut S| {
            Box::pin(async move {
                // Building the future may panic as well as running it.
                let run = async {
                    match std::panic::catch_unwind(AssertUnwindSafe(|| f(state))) {
                        Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                        Err(p) => Err(p),
                    }
                };
                let outcome = match scope {
                    Some(scope) => scope.enter(run).await,
                    None => run.await,
                };
                let panicked = outcome.is_err();
                // As with `call`: the change stands even if the caller left.
                let _ = reply.send(outcome.map_err(panic_message));
                panicked
            }) as ActorFuture<'_, bool>
        })));
        self.mailbox
            .send(job)
            .await
            .map_err(|_| ActorError::Stopped)?;
        answer
            .await
            .map_err(|_| ActorError::Stopped)?
            .map_err(ActorError::Panicked)
    }

    /// Queues `f` without waiting for it to run; it still runs in arrival order.
    /// A panic in `f` is logged; nobody waits to be told.
    pub async fn tell<F>(&self, f: F) -> Result<(), ActorError>
    where
        F: FnOnce(&mut S) + Send + 'static,
    {
        let job = Job::Sync(Box::new(move |state| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| f(state))) {
                Ok(()) => false,
                Err(p) => {
                    tracing::warn!("an actor job panicked: {}", panic_message(p));
                    true
                }
            }
        }));
        self.mailbox
            .send(job)
            .await
            .map_err(|_| ActorError::Stopped)
    }

    /// Whether the actor's task has ended (the runtime is shutting down, or
    /// a restarting actor's `init` panicked).
    pub fn is_stopped(&self) -> bool {
        self.mailbox.is_closed()
    }
}

/// Why a call into an [`Actor`] did not return a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActorError {
    /// The call's closure panicked; the actor went on serving.
    #[error("the handler panicked while changing the service's state: {0}")]
    Panicked(String),
    /// The actor's task has ended (the runtime is shutting down, or a
    /// restarting actor's `init` panicked); its state is gone.
    #[error("the actor holding this service's state has stopped (the runtime is shutting down, or its state could not be made afresh)")]
    Stopped,
}

impl From<ActorError> for Reject {
    /// A caller sees either as a failed handler
    /// ([`CallError::HandlerFailed`](crate::CallError::HandlerFailed)).
    fn from(e: ActorError) -> Reject {
        Reject::handler_failed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_in_arrival_order() {
        let log = Actor::spawn(Vec::new());
        for i in 0..100 {
            log.tell(move |v: &mut Vec<i32>| v.push(i)).await.unwrap();
        }
        let seen = log.call(|v| v.clone()).await.unwrap();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_panicking_call_fails_alone_and_the_actor_keeps_its_state() {
        let actor = Actor::spawn(0u32);
        assert_eq!(
            actor
                .call(|n| {
                    *n += 1;
                    *n
                })
                .await,
            Ok(1)
        );
        let failed = actor.call(|_| -> u32 { panic!("boom") }).await;
        assert_eq!(failed, Err(ActorError::Panicked("boom".into())));
        assert!(!actor.is_stopped());
        assert_eq!(
            actor
                .call(|n| {
                    *n += 1;
                    *n
                })
                .await,
            Ok(2),
            "state as it was"
        );
        let reject: Reject = ActorError::Panicked("boom".into()).into();
        assert_eq!(
            reject.system_code(),
            Some(crate::wire::SystemCode::HandlerFailed)
        );
    }

    #[tokio::test]
    async fn a_restarting_actor_starts_afresh_after_a_panic() {
        let actor = Actor::restarting(|| 10u32);
        assert_eq!(
            actor
                .call(|n| {
                    *n += 1;
                    *n
                })
                .await,
            Ok(11)
        );
        let failed = actor
            .call_async(|_| -> ActorFuture<'_, u32> { Box::pin(async { panic!("boom") }) })
            .await;
        assert!(matches!(failed, Err(ActorError::Panicked(m)) if m == "boom"));
        assert_eq!(actor.call(|n| *n).await, Ok(10));
    }

    #[tokio::test]
    async fn async_calls_hold_the_state_until_done_and_keep_arrival_order() {
        let log = Actor::spawn(Vec::new());
        let slow = {
            let log = log.clone();
            tokio::spawn(async move {
                log.call_async(|v: &mut Vec<i32>| {
                    Box::pin(async move {
                        v.push(1);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        v.push(2);
                    })
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // Queued behind the slow call: sees both of its pushes.
        let seen = log.call(|v| v.clone()).await.unwrap();
        assert_eq!(seen, vec![1, 2]);
        slow.await.unwrap().unwrap();

        let failed = log
            .call_async(|_| -> ActorFuture<'_, ()> { Box::pin(async { panic!("boom") }) })
            .await;
        assert_eq!(failed, Err(ActorError::Panicked("boom".into())));
        assert_eq!(log.call(|v| v.len()).await, Ok(2), "still serving");
    }
}
