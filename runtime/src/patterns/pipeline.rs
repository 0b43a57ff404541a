//! Pipeline (push/pull): each work item to exactly one worker, fairly, with
//! acked delivery and redelivery when a worker dies.
//!
//! Owns [`Pipeline`] and [`Delivered`]. Workers are the members of a
//! [`PeerSet`]; an item is delivered by an acked call the caller supplies,
//! and it is done when that call is acked. Each worker takes at most a fixed
//! number of items at a time, so items go to whichever worker has room —
//! workers pull at the pace they work. It never dials or closes anything.

use std::future::Future;
use std::sync::Arc;

use super::balance::{Failover, Load, Strategy};
use crate::node::{Client, PeerChange, PeerSet};
use crate::{CallError, NodeId};

/// The default number of items one worker holds at a time.
pub const DEFAULT_PER_WORKER: usize = 4;

/// The default number of deliveries an item gets before its last failure is
/// returned.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// An item's acknowledgement: which worker did it, after how many
/// deliveries, and what it replied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered<T> {
    /// The worker whose ack ended the item.
    pub worker: NodeId,
    /// Deliveries it took (1 unless a worker died or was closing).
    pub attempts: u32,
    /// The worker's reply.
    pub value: T,
}

/// Pushes work items to the members of a peer set of workers.
///
/// - **Fair**: an item goes to the worker with the fewest items in flight
///   (ties in turn), and no worker holds more than
///   [`per_worker`](Self::per_worker) at once; with equal work every worker
///   gets an equal share.
/// - **Acked**: [`push`](Self::push) resolves when a worker acks the item.
/// - **Redelivered**: if the worker's connection is lost before the ack, or
///   it was closing, the item goes to another worker (never back to the one
///   that failed it while that one stays in the set on the same terms). An
///   item acked once is never delivered again, so no healthy worker runs an
///   item twice. A worker that was cut off but kept running may have done
///   the item too: delivery is at least once, like every acked queue; make
///   the work idempotent, or key it, when that matters.
/// - **Pull**: while every worker is full, or there are none, `push` waits;
///   bound it with a timeout. Waiting pushes get workers in the order they
///   started waiting; an item being redelivered does not queue again.
///
/// A rejection or any other error from the worker ends the item with that
/// error — only failures that lose the worker move it on.
///
/// ```no_run
/// # use plexus::{Reject, Node};
/// # #[plexus::service(package = "jobs")]
/// # pub trait Jobs { async fn run(&self, job: u64) -> Result<u64, Reject>; }
/// # async fn demo(node: Node) -> Result<(), plexus::CallError> {
/// use plexus::patterns::Pipeline;
///
/// let pipeline = Pipeline::new(node.peers::<JobsClient>()).per_worker(2);
/// let done = pipeline.push(|worker: JobsClient| async move { worker.run(7).await }).await?;
/// println!("job 7 done by {} after {} deliveries", done.worker, done.attempts);
/// # Ok(()) }
/// ```
pub struct Pipeline<C> {
    workers: PeerSet<C>,
    per_worker: usize,
    max_attempts: u32,
    load: Arc<Load>,
    /// New pushes waiting for a worker queue here, first come first
    /// served; only the one at the head watches for a free slot, so a freed
    /// slot wakes one push, not all of them. Redeliveries skip the queue:
    /// they may not use every worker, so one at the head could hold up
    /// pushes that a free worker would take.
    turnstile: Arc<tokio::sync::Semaphore>,
}

impl<C> Clone for Pipeline<C> {
    fn clone(&self) -> Self {
        Pipeline {
            workers: self.workers.clone(),
            per_worker: self.per_worker,
            max_attempts: self.max_attempts,
            load: self.load.clone(),
            turnstile: self.turnstile.clone(),
        }
    }
}

impl<C: Client> std::fmt::Debug for Pipeline<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("service", &self.workers.service())
            .field("per_worker", &self.per_worker)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl<C: Client> Pipeline<C> {
    /// A pipeline to the members of `workers`, [`DEFAULT_PER_WORKER`] items
    /// per worker at a time, [`DEFAULT_MAX_ATTEMPTS`] deliveries per item.
    pub fn new(workers: PeerSet<C>) -> Self {
        Pipeline {
            workers,
            per_worker: DEFAULT_PER_WORKER,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            load: Arc::default(),
            turnstile: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// How many items one worker holds at a time (at least 1).
    pub fn per_worker(mut self, items: usize) -> Self {
        self.per_worker = items.max(1);
        self
    }

    /// How many deliveries an item gets at most (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The workers.
    pub fn workers(&self) -> &PeerSet<C> {
        &self.workers
    }

    /// Items in flight at `worker` through this pipeline (and its clones).
    pub fn in_flight(&self, worker: NodeId) -> usize {
        self.load.in_flight(worker)
    }

    /// Delivers one item: waits for a worker with room, runs `deliver` on a
    /// client calling it, and returns once a worker acks. `deliver` is run
    /// again, on another worker, for each redelivery — build the request
    /// inside it (clone the item in).
    pub async fn push<F, Fut, T>(&self, deliver: F) -> Result<Delivered<T>, CallError>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        // Workers that failed this item; a worker leaves the list when it
        // joins the set again (a new connection).
        let mut failed: Vec<NodeId> = Vec::new();
        let mut attempts = 0;
        loop {
            let (peer, client, slot) = self.acquire(&mut failed).await?;
            attempts += 1;
            let result = deliver(client).await;
            drop(slot);
            match result {
                Ok(value) => {
                    return Ok(Delivered {
                        worker: peer,
                        attempts,
                        value,
                    })
                }
                Err(e) if Failover::AtLeastOnce.moves_on(&e) && attempts < self.max_attempts => {
                    tracing::debug!(worker = %peer, error = %e, attempts, "item redelivered");
                    crate::observe::lifecycle::pipeline_redelivered();
                    failed.push(peer);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for a worker not in `failed` with room and takes a slot at it;
    /// fails only once the node is gone.
    async fn acquire(
        &self,
        failed: &mut Vec<NodeId>,
    ) -> Result<(NodeId, C, super::balance::Slot), CallError> {
        // A redelivery waits beside the queue, not in it: it cannot take a
        // slot at a worker that failed it, and at the queue's head it would
        // keep every push behind it from a worker only it refuses.
        let _turn = if failed.is_empty() {
            match self.turnstile.acquire().await {
                Ok(turn) => Some(turn),
                Err(_) => return Err(CallError::no_peers(self.workers.service())),
            }
        } else {
            None
        };
        let mut changes = self.workers.changes();
        loop {
            // Registered before looking, so a slot freed in between wakes us.
            let freed = self.load.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let mut members = self.workers.members();
            if let Some((i, slot)) = self.load.take(
                Strategy::LeastInFlight,
                &members,
                failed,
                Some(self.per_worker),
            ) {
                let (peer, conn) = members.swap_remove(i);
                return Ok((peer, C::from_connection(conn), slot));
            }
            tokio::select! {
                () = &mut freed => {}
                change = changes.next() => match change {
                    Some(PeerChange::Joined(peer)) => failed.retain(|p| *p != peer),
                    Some(PeerChange::Left(_)) => {}
                    // The node is gone: no worker will join again.
                    None => return Err(CallError::no_peers(self.workers.service())),
                },
            }
        }
    }
}
