//! The peers of a message socket: who they are, how to send to each, and
//! the events of their coming and going.
//!
//! Owns the peer table and nothing of the wire: a peer is one connection's
//! pipe stream, opened by whichever socket dialed.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::connection::events::Subscription;
use crate::connection::{Connection, Outbound, TrySendError};
use crate::error::CallError;

/// One peer of a socket: a connection and its pipe stream. Numbered by the
/// socket in the order peers join, from 1; never reused within a socket.
///
/// A `PeerId` means something only to the socket that handed it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub(crate) u64);

impl PeerId {
    /// The peer's number within its socket.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer #{}", self.0)
    }
}

/// A peer connecting to or leaving a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// The peer's pipe is open: it can be sent to.
    Joined(PeerId),
    /// The peer's pipe or connection ended. Messages it sent before still
    /// reach `recv`.
    Left(PeerId),
}

/// A subscription to a socket's [`PeerEvent`]s, from the moment of
/// subscribing. Use [`recv`](Self::recv) or poll it as a
/// [`Stream`](futures_core::Stream).
pub struct PeerEvents {
    inner: Subscription<PeerEvent>,
}

impl fmt::Debug for PeerEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerEvents")
            .field("missed", &self.inner.missed)
            .finish_non_exhaustive()
    }
}

impl PeerEvents {
    /// The next event; `None` once the socket is closed (after the
    /// [`PeerEvent::Left`] of every peer it had).
    pub async fn recv(&mut self) -> Option<PeerEvent> {
        std::future::poll_fn(|cx| self.inner.poll_next(cx)).await
    }

    /// Events skipped because this subscriber fell more than
    /// [`EVENT_CAPACITY`] behind; [`Socket::peers`](super::Socket::peers) is
    /// always current.
    pub fn missed(&self) -> u64 {
        self.inner.missed
    }
}

impl futures_core::Stream for PeerEvents {
    type Item = PeerEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PeerEvent>> {
        self.get_mut().inner.poll_next(cx)
    }
}

/// Events a [`PeerEvents`] subscriber may fall behind before it skips some.
pub const EVENT_CAPACITY: usize = 1024;

/// How one attempt to hand a message to a peer ended.
pub(crate) enum Attempt {
    Sent,
    /// No credit or no room in the connection's queue, or another sender is
    /// waiting on this peer.
    Full,
    /// The pipe or connection ended.
    Gone,
    TooLarge {
        size: usize,
        limit: usize,
    },
}

/// A joined peer: where its messages go.
pub(crate) struct Peer {
    pub(crate) id: PeerId,
    pub(crate) remote: Arc<str>,
    pub(crate) conn: Connection,
    /// The connection's identity, to keep one pipe per connection.
    pub(crate) conn_key: usize,
    /// A lock, not a queue: senders to one peer take turns, in order.
    out: tokio::sync::Mutex<Outbound>,
}

impl Peer {
    pub(crate) fn new(id: PeerId, conn: Connection, conn_key: usize, out: Outbound) -> Self {
        Peer {
            id,
            remote: conn.peer().label().clone(),
            conn,
            conn_key,
            out: tokio::sync::Mutex::new(out),
        }
    }

    /// Sends if there is credit and room right now, and nobody else is
    /// sending to this peer; never waits.
    pub(crate) fn offer(&self, content: &Bytes) -> Attempt {
        match self.out.try_lock() {
            Ok(mut out) => try_send(&mut out, content),
            Err(_) => Attempt::Full,
        }
    }

    /// Sends if there is credit and room right now. Waits only for other
    /// senders' turns, which are short: in best-effort mode nobody holds the
    /// lock across a wait for credit.
    pub(crate) async fn try_send(&self, content: &Bytes) -> Attempt {
        try_send(&mut *self.out.lock().await, content)
    }

    /// Sends, waiting for credit and room as long as it takes.
    pub(crate) async fn send(&self, content: Bytes) -> Attempt {
        let mut out = self.out.lock().await;
        match out.send(content).await {
            Ok(()) => Attempt::Sent,
            Err(e) => failed(e),
        }
    }
}

fn try_send(out: &mut Outbound, content: &Bytes) -> Attempt {
    match out.try_send(content.clone()) {
        Ok(()) => Attempt::Sent,
        Err(TrySendError::Full(_)) => Attempt::Full,
        Err(TrySendError::Closed(e)) => failed(e),
    }
}

fn failed(e: CallError) -> Attempt {
    match e {
        CallError::MessageTooLarge { size, limit, .. } => Attempt::TooLarge { size, limit },
        // Whatever else ended the stream, this peer cannot be sent to again.
        _ => Attempt::Gone,
    }
}

/// The peers of one socket, in the order they joined (so by id).
pub(crate) struct PeerTable {
    /// Replaced, never mutated in place: a sender takes a snapshot by
    /// cloning one `Arc` and sends without holding the lock.
    list: Mutex<Arc<Vec<Arc<Peer>>>>,
    /// Taken when the socket closes, which ends every subscription.
    events: Mutex<Option<broadcast::Sender<PeerEvent>>>,
    changed: tokio::sync::Notify,
}

impl PeerTable {
    pub(crate) fn new() -> Self {
        PeerTable {
            list: Mutex::new(Arc::new(Vec::new())),
            events: Mutex::new(Some(broadcast::channel(EVENT_CAPACITY).0)),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Vec<Arc<Peer>>>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<Peer>>> {
        self.lock().clone()
    }

    pub(crate) fn get(&self, id: PeerId) -> Option<Arc<Peer>> {
        let list = self.snapshot();
        let at = list.binary_search_by_key(&id, |p| p.id).ok()?;
        Some(list[at].clone())
    }

    /// Adds a peer, unless its connection already has one (then `false`).
    pub(crate) fn join(&self, peer: Arc<Peer>) -> bool {
        let id = peer.id;
        {
            let mut list = self.lock();
            if list.iter().any(|p| p.conn_key == peer.conn_key) {
                return false;
            }
            let mut next = Vec::with_capacity(list.len() + 1);
            next.extend(list.iter().cloned());
            // Ids are handed out before the lock is taken, so two joins may
            // arrive out of order; keep the list sorted for `get`.
            let at = next.partition_point(|p| p.id < id);
            next.insert(at, peer);
            *list = Arc::new(next);
        }
        self.announce(PeerEvent::Joined(id));
        self.changed.notify_waiters();
        true
    }

    /// Removes a peer; `None` if it was not (or no longer) in the table.
    pub(crate) fn leave(&self, id: PeerId) -> Option<Arc<Peer>> {
        let gone = {
            let mut list = self.lock();
            let at = list.binary_search_by_key(&id, |p| p.id).ok()?;
            let mut next: Vec<_> = list.iter().cloned().collect();
            let gone = next.remove(at);
            *list = Arc::new(next);
            gone
        };
        self.announce(PeerEvent::Left(id));
        self.changed.notify_waiters();
        Some(gone)
    }

    /// Removes every peer for good: the socket is closing. Subscribers see
    /// each peer leave, then the end of their subscription.
    pub(crate) fn clear(&self) -> Vec<Arc<Peer>> {
        let all = std::mem::take(&mut *self.lock());
        let all = Arc::try_unwrap(all).unwrap_or_else(|shared| (*shared).clone());
        for p in &all {
            self.announce(PeerEvent::Left(p.id));
        }
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.changed.notify_waiters();
        all
    }

    fn announce(&self, event: PeerEvent) {
        if let Some(tx) = &*self.events.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(event);
        }
    }

    /// Waits until the table has at least one peer and returns it.
    pub(crate) async fn wait_nonempty(&self) -> Arc<Vec<Arc<Peer>>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let list = self.snapshot();
            if !list.is_empty() {
                return list;
            }
            changed.await;
        }
    }

    pub(crate) fn subscribe(&self) -> PeerEvents {
        let rx = match &*self.events.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.subscribe(),
            // Closed: a channel whose sender is already gone ends at once.
            None => broadcast::channel(1).1,
        };
        PeerEvents {
            inner: Subscription::new(rx),
        }
    }
}
