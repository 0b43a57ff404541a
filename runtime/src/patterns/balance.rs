//! Sending to one peer of a set, chosen fairly, with failover.
//!
//! Owns [`Balancer`] and its [`Strategy`]: which member of a [`PeerSet`] takes
//! the next call, how many calls each member has in flight, when a failed
//! call moves on to another member, is retried (a [`RetryPolicy`]) or hedged
//! to a second member. It reads the set's current membership on every call
//! and never dials or closes anything.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connection::scope::CallScope;
use crate::connection::{RetryPolicy, RetryStats};
use crate::node::{Client, PeerSet};
use crate::{CallError, CallOptions, Connection, NodeId};

// Defined here rather than beside the set's other methods so that the node
// layer does not import the patterns built on top of it.
impl<C: Client> PeerSet<C> {
    /// Sends to one member at a time, chosen by `strategy`; see [`Balancer`].
    pub fn balanced(&self, strategy: Strategy) -> Balancer<C> {
        Balancer::new(self.clone(), strategy)
    }
}

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
/// another member. Clones share the turn, the in-flight counts and the retry
/// budget.
///
/// With a [`RetryPolicy`] ([`retry`](Self::retry)) a failed call is also
/// retried — after the policy's backoff, within its attempts, its budget and
/// the call's deadline, on a member not tried yet when there is one. With
/// [`hedge`](Self::hedge), a call still unanswered after the hedge delay is
/// also sent to a second member; the first answer wins and the other call is
/// cancelled.
///
/// ```no_run
/// # use plexus::{Reject, Node};
/// # #[plexus::service(package = "demo")]
/// # pub trait Resize { async fn resize(&self, width: u32) -> Result<u32, Reject>; }
/// # async fn demo(node: Node) -> Result<(), plexus::CallError> {
/// use std::time::Duration;
/// use plexus::patterns::Strategy;
/// use plexus::retry::RetryPolicy;
///
/// let resizers = node
///     .peers::<ResizeClient>()
///     .balanced(Strategy::LeastInFlight)
///     .retry(RetryPolicy::new().attempts(3))
///     .hedge(Duration::from_millis(50))
///     .deadline(Duration::from_secs(2));
/// let width = resizers.call(|r: ResizeClient| async move { r.resize(640).await }).await?;
/// # Ok(()) }
/// ```
pub struct Balancer<C> {
    peers: PeerSet<C>,
    strategy: Strategy,
    failover: Failover,
    load: Arc<Load>,
    retry: Option<RetryPolicy>,
    hedge: Option<Duration>,
    deadline: Option<Duration>,
    idempotent: Option<bool>,
}

impl<C> Clone for Balancer<C> {
    fn clone(&self) -> Self {
        Balancer {
            peers: self.peers.clone(),
            strategy: self.strategy,
            failover: self.failover,
            load: self.load.clone(),
            retry: self.retry.clone(),
            hedge: self.hedge,
            deadline: self.deadline,
            idempotent: self.idempotent,
        }
    }
}

impl<C: Client> std::fmt::Debug for Balancer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.peers.service())
            .field("strategy", &self.strategy)
            .field("failover", &self.failover)
            .field("retry", &self.retry)
            .field("hedge", &self.hedge)
            .field("in_flight", &self.load.counts())
            .finish()
    }
}

/// One attempt of a call, tagged with the member it went to; its slot is
/// released when it ends (or is dropped, which cancels the call).
async fn attempt<Fut: Future>(peer: NodeId, slot: Slot, fut: Fut) -> (NodeId, Fut::Output) {
    let result = fut.await;
    drop(slot);
    (peer, result)
}

/// What one attempt ends with: the member it went to, and its result.
type Tried<T> = (NodeId, Result<T, CallError>);

/// The operation a failure names, if it names one.
fn failed_op(e: &CallError) -> Option<&str> {
    match e {
        CallError::Timeout { op, .. }
        | CallError::Cancelled { op, .. }
        | CallError::NoSuchOperation { op, .. }
        | CallError::HandlerFailed { op, .. }
        | CallError::ConnectionLost { op, .. }
        | CallError::Protocol { op, .. }
        | CallError::Decode { op, .. }
        | CallError::Encode { op, .. }
        | CallError::Closing { op, .. }
        | CallError::Overloaded { op, .. }
        | CallError::SessionClosed { op, .. }
        | CallError::MessageTooLarge { op, .. } => Some(op),
        _ => None,
    }
}

impl<C: Client> Balancer<C> {
    /// A balancer over `peers` using `strategy`, failing over only when it
    /// is safe ([`Failover::Safe`]), retrying nothing else.
    pub fn new(peers: PeerSet<C>, strategy: Strategy) -> Self {
        Balancer {
            peers,
            strategy,
            failover: Failover::default(),
            load: Arc::default(),
            retry: None,
            hedge: None,
            deadline: None,
            idempotent: None,
        }
    }

    /// The same balancer with another failover policy.
    pub fn failover(mut self, failover: Failover) -> Self {
        self.failover = failover;
        self
    }

    /// Retries failed calls by `policy` (see [`RetryPolicy`] for which
    /// failures). Whether an operation is idempotent is read from the
    /// contract (`#[idempotent]`) by the operation the failure names; see
    /// [`idempotent`](Self::idempotent) to say so for every call.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Hedges: a call with no answer `after` this long is also sent to
    /// another member not yet tried; whichever answers first is the result,
    /// and the other call is cancelled (its peer sees the cancellation).
    /// Each hedge counts as an attempt and takes a token from the retry
    /// budget (the default policy's, unless [`retry`](Self::retry) set one),
    /// so hedging adds a bounded share of load. Only for idempotent
    /// operations: a hedged call may run on two peers.
    pub fn hedge(mut self, after: Duration) -> Self {
        self.hedge = Some(after);
        self.retry.get_or_insert_with(RetryPolicy::default);
        self
    }

    /// Bounds each call, retries and hedges included: attempts get the time
    /// left as their timeout, and no retry starts that could not end in
    /// time. Inside a handler, the served call's deadline bounds it too.
    pub fn deadline(mut self, total: Duration) -> Self {
        self.deadline = Some(total);
        self
    }

    /// Declares every call through this balancer idempotent (or not),
    /// instead of reading it from the contract — needed for retrying
    /// rejections, which name no operation.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
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

    /// The retry budget's counts, when a retry policy is set.
    pub fn retry_stats(&self) -> Option<RetryStats> {
        self.retry.as_ref().map(|p| p.retry_budget().stats())
    }

    /// The member the next call goes to, with a client calling it, without
    /// counting anything in flight; `None` when the set is empty.
    pub fn pick(&self) -> Option<(NodeId, C)> {
        let mut members = self.peers.members();
        let (i, _slot) = self.load.take(self.strategy, &members, &[], None)?;
        let (id, conn) = members.swap_remove(i);
        Some((id, C::from_connection(conn)))
    }

    fn is_idempotent(&self, e: &CallError) -> bool {
        self.idempotent.unwrap_or_else(|| {
            failed_op(e).is_some_and(|op| {
                C::DESCRIPTOR
                    .methods
                    .iter()
                    .any(|m| m.op == op && m.idempotent)
            })
        })
    }

    /// Whether `e` lets the call go on to another attempt (policy aside).
    fn moves_on(&self, e: &CallError) -> bool {
        self.failover.moves_on(e)
            || self
                .retry
                .as_ref()
                .is_some_and(|p| p.retries(e, self.is_idempotent(e)))
    }

    /// The deadline of a call starting now: the balancer's own, or the one
    /// inherited from the call being served, whichever is earlier.
    fn call_deadline(&self) -> Option<Instant> {
        let own = self.deadline.map(|d| Instant::now() + d);
        let inherited = CallScope::current().and_then(|s| s.deadline);
        match (own, inherited) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Picks a member (not in `avoid`, else — when `repeat` — any not in
    /// `busy`) and hands the caller's closure a client of it.
    fn launch<F, Fut, T>(
        &self,
        call: &F,
        avoid: &[NodeId],
        busy: &[NodeId],
        repeat: bool,
        deadline: Option<Instant>,
    ) -> Option<(NodeId, impl Future<Output = Tried<T>>)>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut members = self.peers.members();
        let (i, slot) = self
            .load
            .take(self.strategy, &members, avoid, None)
            .or_else(|| {
                repeat
                    .then(|| self.load.take(self.strategy, &members, busy, None))
                    .flatten()
            })?;
        let (peer, conn) = members.swap_remove(i);
        let mut client = C::from_connection(conn);
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            client = client.with_call_options(CallOptions::new().timeout(left));
        }
        Some((peer, attempt(peer, slot, call(client))))
    }

    /// Runs `call` on a client of one member and returns its result, with
    /// the member that produced it. A failure the failover policy (or the
    /// retry policy) allows moves the call to a member not tried yet; with a
    /// retry policy, after its backoff, and back to a member already tried
    /// when every one has been. When nothing more may be tried the last
    /// failure is returned; an empty set gives [`CallError::NoPeers`].
    pub async fn call_peer<F, Fut, T>(&self, call: F) -> Result<(NodeId, T), CallError>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let deadline = self.call_deadline();
        let policy = self.retry.as_ref();
        if let Some(p) = policy {
            p.retry_budget().deposit();
        }
        let no_peers = || CallError::no_peers(self.peers.service());
        // Members this call has reached: done with, and still running.
        let mut tried: Vec<NodeId> = Vec::new();
        let mut out: Vec<NodeId> = Vec::new();
        let mut running = FuturesUnordered::new();
        let (peer, first) = self
            .launch(&call, &tried, &[], false, deadline)
            .ok_or_else(no_peers)?;
        out.push(peer);
        running.push(first);
        let mut attempts = 1u32;
        let mut retries = 0u32;
        let mut hedge_at = self.hedge.map(|d| Instant::now() + d);
        let mut last: Option<CallError> = None;
        loop {
            let hedge_wait = hedge_at.filter(|_| running.len() == 1);
            let hedge_due = async move {
                match hedge_wait {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((peer, result)) = running.next() => {
                    tried.push(peer);
                    out.retain(|p| *p != peer);
                    let e = match result {
                        // Dropping what still runs cancels it.
                        Ok(value) => return Ok((peer, value)),
                        Err(e) => e,
                    };
                    let moves_on = self.moves_on(&e);
                    tracing::debug!(%peer, error = %e, moves_on, "balanced call failed");
                    if !running.is_empty() {
                        // A hedged attempt is still out; it may yet answer.
                        last = Some(e);
                        continue;
                    }
                    if !moves_on {
                        return Err(e);
                    }
                    let next = match policy {
                        // Plain failover: at once, to members not tried yet.
                        None => self.launch(&call, &tried, &[], false, deadline),
                        Some(p) => {
                            if attempts >= p.max_attempts() {
                                return Err(e);
                            }
                            let Some(wait) = p.admit(retries, deadline) else {
                                return Err(e);
                            };
                            retries += 1;
                            tokio::time::sleep(wait).await;
                            self.launch(&call, &tried, &[], true, deadline)
                        }
                    };
                    match next {
                        Some((peer, next)) => {
                            out.push(peer);
                            running.push(next);
                            attempts += 1;
                            hedge_at = self.hedge.map(|d| Instant::now() + d);
                            last = Some(e);
                        }
                        None => return Err(e),
                    }
                }
                () = hedge_due => {
                    hedge_at = None;
                    let Some(p) = policy else { continue };
                    let busy: Vec<NodeId> = tried.iter().chain(&out).copied().collect();
                    let room = attempts < p.max_attempts()
                        && deadline.is_none_or(|d| Instant::now() < d);
                    if !room {
                        continue;
                    }
                    // Hedge only to a member not tried and not busy with
                    // this call: a second try at the same peer is no hedge.
                    if !self.peers.ids().iter().any(|id| !busy.contains(id))
                        || !p.retry_budget().withdraw()
                    {
                        continue;
                    }
                    let Some((peer, hedged)) = self.launch(&call, &busy, &busy, false, deadline)
                    else {
                        continue;
                    };
                    tracing::debug!(%peer, attempts, "hedging a slow call to another member");
                    out.push(peer);
                    running.push(hedged);
                    attempts += 1;
                }
                else => return Err(last.unwrap_or_else(no_peers)),
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
