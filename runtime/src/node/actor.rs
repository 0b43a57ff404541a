//! Actor handlers: service state owned by one task, changed one call at a time.
//!
//! Owns [`Actor`], a handle to a task that holds a value of `S` and runs the
//! closures sent to it, one after another, in the order they arrived. A
//! `#[plexus::service]` implementation keeps an `Actor` and forwards each
//! call into it, so handler code mutates plain `&mut S` with no lock — the
//! service/shim split of LightImage.Networking. This module knows nothing of
//! connections or nodes.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

use crate::error::Reject;
use crate::wire::SystemCode;

/// The future an [`Actor::call_async`] closure returns: it may borrow the
/// state for as long as it runs.
pub type ActorFuture<'a, R> = Pin<Box<dyn Future<Output = R> + Send + 'a>>;

/// A job that borrows the state until its future completes.
type AsyncJob<S> = Box<dyn for<'a> FnOnce(&'a mut S) -> ActorFuture<'a, ()> + Send>;

enum Job<S> {
    Sync(Box<dyn FnOnce(&mut S) + Send>),
    Async(AsyncJob<S>),
}

/// Pins down the higher-ranked signature of an async job's closure.
fn async_job<S, F>(f: F) -> F
where
    F: for<'a> FnOnce(&'a mut S) -> ActorFuture<'a, ()>,
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
/// peers, I/O) before or after `call`. If a closure panics the actor stops:
/// that call and every later one fail with [`ActorStopped`].
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
    pub fn with_mailbox(mut state: S, capacity: usize) -> Self {
        let (mailbox, mut jobs) = mpsc::channel::<Job<S>>(capacity.max(1));
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                match job {
                    Job::Sync(f) => f(&mut state),
                    Job::Async(f) => f(&mut state).await,
                }
            }
        });
        Actor { mailbox }
    }

    /// Runs `f` on the state after every call that arrived before it, and
    /// returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, ActorStopped>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job::Sync(Box::new(move |state| {
            // The caller may have given up (its call was cancelled); the
            // change to the state stands either way.
            let _ = reply.send(f(state));
        }));
        self.mailbox.send(job).await.map_err(|_| ActorStopped)?;
        answer.await.map_err(|_| ActorStopped)
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
    pub async fn call_async<R, F>(&self, f: F) -> Result<R, ActorStopped>
    where
        F: for<'a> FnOnce(&'a mut S) -> ActorFuture<'a, R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job::Async(Box::new(async_job(move |state: &mut S| {
            Box::pin(async move {
                // As with `call`: the change stands even if the caller left.
                let _ = reply.send(f(state).await);
            }) as ActorFuture<'_, ()>
        })));
        self.mailbox.send(job).await.map_err(|_| ActorStopped)?;
        answer.await.map_err(|_| ActorStopped)
    }

    /// Queues `f` without waiting for it to run; it still runs in arrival order.
    pub async fn tell<F>(&self, f: F) -> Result<(), ActorStopped>
    where
        F: FnOnce(&mut S) + Send + 'static,
    {
        self.mailbox
            .send(Job::Sync(Box::new(f)))
            .await
            .map_err(|_| ActorStopped)
    }

    /// Whether the actor's task has ended (a closure panicked).
    pub fn is_stopped(&self) -> bool {
        self.mailbox.is_closed()
    }
}

/// The actor's task has ended: a closure panicked, or the runtime is shutting
/// down. Its state is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the actor holding this service's state has stopped (a handler panicked while changing it, or the runtime is shutting down)")]
pub struct ActorStopped;

impl From<ActorStopped> for Reject {
    /// A caller sees the stopped actor as a failed handler.
    fn from(e: ActorStopped) -> Reject {
        Reject::new(SystemCode::HandlerFailed as u32, e.to_string())
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
    async fn a_panicking_closure_stops_the_actor() {
        let actor = Actor::spawn(0u32);
        let failed = actor.call(|_| -> u32 { panic!("boom") }).await;
        assert_eq!(failed, Err(ActorStopped));
        assert_eq!(actor.call(|n| *n).await, Err(ActorStopped));
        assert!(actor.is_stopped());
        let reject: Reject = ActorStopped.into();
        assert_eq!(reject.code(), SystemCode::HandlerFailed as u32);
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
        assert_eq!(failed, Err(ActorStopped));
        assert!(log.is_stopped());
    }
}
