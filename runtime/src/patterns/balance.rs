//! Sending to one peer of a set, chosen fairly, with failover.
//!
//! Owns [`Balancer`] and its [`Strategy`]: which member of a [`PeerSet`] takes
//! the next call, how many calls each member has in flight, and when a failed
//! call moves on to another member. It reads the set's current membership on
//! every call and never dials or closes anything.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::node::{Client, PeerSet};
use crate::{CallError, Connection, NodeId};

/// How a [`Balancer`] picks the member that takes the next call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Members in turn, in ascending id order.
    #[default]
    RoundRobin,
    /// The member with the fewest calls in flight through this balancer;
    /// ties go in turn.
    LeastInFlight,
}

/// Which failures move a call on to another member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Failover {
    /// Only failures that prove the peer never ran the call
    /// ([`CallError::is_safe_to_retry`]: it was closing, or does not serve the
    /// operation). Nothing runs twice.
    #[default]
    Safe,
    /// Also a lost connection: the peer may have run the call before it died,
    /// so the call may run twice (at-least-once). For work whose effect is
    /// idempotent, or whose handler died with it.
    AtLeastOnce,
}

impl Failover {
    pub(crate) fn moves_on(self, error: &CallError) -> bool {
        error.is_safe_to_retry()
            || (self == Failover::AtLeastOnce && matches!(error, CallError::ConnectionLost { .. }))
    }
}

/// In-flight bookkeeping shared by the clones of one balancer.
#[derive(Debug, Default)]
pub(crate) struct Load {
    next: AtomicUsize,
    in_flight: Mutex<HashMap<NodeId, usize>>,
    /// Signalled whenever a call ends, so waiters for a free slot look again.
    pub(crate) freed: Notify,
}

impl Load {
    fn counts(&self) -> MutexGuard<'_, HashMap<NodeId, usize>> {
        // Every critical section is a counter update; a panic cannot tear one.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn in_flight(&self, peer: NodeId) -> usize {
        self.counts().get(&peer).copied().unwrap_or(0)
    }

    /// Picks among `members` (ascending ids) skipping closed connections,
    /// peers in `skip`, and peers at `cap`; counts the call against the
    /// chosen one.
    pub(crate) fn take(
        self: &Arc<Self>,
        strategy: Strategy,
        members: &[(NodeId, Connection)],
        skip: &[NodeId],
        cap: Option<usize>,
    ) -> Option<(usize, Slot)> {
        let mut counts = self.counts();
        let eligible = |(id, conn): &(NodeId, Connection)| {
            !conn.is_closed()
                && !skip.contains(id)
                && cap.is_none_or(|cap| counts.get(id).copied().unwrap_or(0) < cap)
        };
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let order = (0..n).map(|i| (start + i) % n);
        let chosen = match strategy {
            Strategy::RoundRobin => order.clone().find(|&i| eligible(&members[i])),
            Strategy::LeastInFlight => order
                .filter(|&i| eligible(&members[i]))
                .min_by_key(|&i| counts.get(&members[i].0).copied().unwrap_or(0)),
        }?;
        let peer = members[chosen].0;
        *counts.entry(peer).or_insert(0) += 1;
        drop(counts);
        Some((
            chosen,
            Slot {
                load: self.clone(),
                peer,
            },
        ))
    }
}

/// One call counted against a member; released on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    load: Arc<Load>,
    peer: NodeId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.load.counts();
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
        drop(counts);
        self.load.freed.notify_waiters();
    }
}

/// Sends each call to one member of a [`PeerSet`], chosen by a [`Strategy`];
/// a call that fails in a way the [`Failover`] policy allows moves on to
/// another member. Clones share the turn and the in-flight counts.
///
/// ```no_run
/// # use plexus::{Reject, node::Node};
/// # #[plexus::service(package = "demo")]
/// # pub trait Resize { async fn resize(&self, width: u32) -> Result<u32, Reject>; }
/// # async fn demo(node: Node) -> Result<(), plexus::CallError> {
/// use plexus::patterns::Strategy;
///
/// let resizers = node.peers::<ResizeClient>().balanced(Strategy::LeastInFlight);
/// let width = resizers.call(|r: ResizeClient| async move { r.resize(640).await }).await?;
/// # Ok(()) }
/// ```
pub struct Balancer<C> {
    peers: PeerSet<C>,
    strategy: Strategy,
    failover: Failover,
    load: Arc<Load>,
}

impl<C> Clone for Balancer<C> {
    fn clone(&self) -> Self {
        Balancer {
            peers: self.peers.clone(),
            strategy: self.strategy,
            failover: self.failover,
            load: self.load.clone(),
        }
    }
}

impl<C: Client> std::fmt::Debug for Balancer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.peers.service())
            .field("strategy", &self.strategy)
            .field("failover", &self.failover)
            .field("in_flight", &self.load.counts())
            .finish()
    }
}

impl<C: Client> Balancer<C> {
    /// A balancer over `peers` using `strategy`, failing over only when it
    /// is safe ([`Failover::Safe`]).
    pub fn new(peers: PeerSet<C>, strategy: Strategy) -> Self {
        Balancer {
            peers,
            strategy,
            failover: Failover::default(),
            load: Arc::default(),
        }
    }

    /// The same balancer with another failover policy.
    pub fn failover(mut self, failover: Failover) -> Self {
        self.failover = failover;
        self
    }

    /// The peer set it balances over.
    pub fn peers(&self) -> &PeerSet<C> {
        &self.peers
    }

    /// Calls in flight through this balancer (and its clones) to `peer`.
    pub fn in_flight(&self, peer: NodeId) -> usize {
        self.load.in_flight(peer)
    }

    /// The member the next call goes to, with a client calling it, without
    /// counting anything in flight; `None` when the set is empty.
    pub fn pick(&self) -> Option<(NodeId, C)> {
        let mut members = self.peers.members();
        let (i, _slot) = self.load.take(self.strategy, &members, &[], None)?;
        let (id, conn) = members.swap_remove(i);
        Some((id, C::from_connection(conn)))
    }

    /// Runs `call` on a client of one member and returns its result, with
    /// the member that produced it. A failure the failover policy allows
    /// moves the call to a member not tried yet; when none is left the last
    /// failure is returned. An empty set gives [`CallError::NoPeers`].
    pub async fn call_peer<F, Fut, T>(&self, call: F) -> Result<(NodeId, T), CallError>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut tried = Vec::new();
        let mut last = None;
        loop {
            let mut members = self.peers.members();
            let Some((i, slot)) = self.load.take(self.strategy, &members, &tried, None) else {
                return Err(last.unwrap_or_else(|| CallError::no_peers(self.peers.service())));
            };
            let (peer, conn) = members.swap_remove(i);
            let result = call(C::from_connection(conn)).await;
            drop(slot);
            match result {
                Ok(value) => return Ok((peer, value)),
                Err(e) if self.failover.moves_on(&e) => {
                    tracing::debug!(%peer, error = %e, "call moves on to another peer");
                    tried.push(peer);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`call_peer`](Self::call_peer) without the member's id.
    pub async fn call<F, Fut, T>(&self, call: F) -> Result<T, CallError>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        self.call_peer(call).await.map(|(_, value)| value)
    }
}
