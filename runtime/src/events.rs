//! Connection and session events, observable as a stream — so an
//! application learns that a peer went away, and why, without polling.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::broadcast;

use crate::connection::{CloseReason, PeerInfo, Session};

/// Something that happened on an endpoint's connections.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection completed its handshake (either direction).
    Connected {
        /// Who is on the other end.
        peer: PeerInfo,
    },
    /// A connection ended.
    Disconnected {
        /// Who was on the other end.
        peer: PeerInfo,
        /// Why it ended.
        reason: CloseReason,
    },
    /// A session was opened (by this side, accepted by the peer) or accepted
    /// (opened by the peer).
    SessionOpened {
        /// The session.
        session: Session,
    },
    /// A session was closed by either side or by the connection ending.
    SessionClosed {
        /// The session's name.
        name: std::sync::Arc<str>,
        /// The peer.
        peer: PeerInfo,
        /// Why.
        reason: String,
    },
}

/// Where an endpoint's events go. The channel (a ring of [`CAPACITY`] slots)
/// is made on the first subscription: an endpoint nobody listens to — one
/// per `Connection::connect` — pays nothing for it.
#[derive(Default)]
pub(crate) struct EventHub(std::sync::OnceLock<broadcast::Sender<Event>>);

impl EventHub {
    pub(crate) fn subscribe(&self) -> Events {
        let tx = self.0.get_or_init(|| broadcast::channel(CAPACITY).0);
        Events::new(tx.subscribe())
    }

    /// Sends to current subscribers, if there are any.
    pub(crate) fn send(&self, event: Event) {
        if let Some(tx) = self.0.get() {
            let _ = tx.send(event);
        }
    }
}

/// Capacity of an endpoint's event channel; a subscriber that falls further
/// behind skips events and can see how many in [`Events::missed`].
pub(crate) const CAPACITY: usize = 1024;

/// A subscription to an endpoint's events. Use [`Events::recv`] or poll it
/// as a [`Stream`](futures_core::Stream).
pub struct Events {
    rx: broadcast::Receiver<Event>,
    missed: u64,
    pending: Option<Pending>,
}

/// What one wait for the next event gives back: the event, how many were
/// skipped on the way, and the receiver to keep using.
type Next = (Option<Event>, u64, broadcast::Receiver<Event>);
type Pending = Pin<Box<dyn std::future::Future<Output = Next> + Send>>;

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

async fn next(mut rx: broadcast::Receiver<Event>) -> Next {
    let mut missed = 0;
    loop {
        match rx.recv().await {
            Ok(e) => return (Some(e), missed, rx),
            Err(broadcast::error::RecvError::Lagged(n)) => missed += n,
            Err(broadcast::error::RecvError::Closed) => return (None, missed, rx),
        }
    }
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Events {
            rx,
            missed: 0,
            pending: None,
        }
    }

    /// The next event; `None` once the endpoint is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Events skipped because this subscriber fell more than 1024 behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let fut = match self.pending.as_mut() {
            Some(f) => f,
            None => {
                // Swap the receiver into the future; a fresh placeholder
                // receiver stands in until it comes back.
                let placeholder = self.rx.resubscribe();
                let rx = std::mem::replace(&mut self.rx, placeholder);
                self.pending.insert(Box::pin(next(rx)))
            }
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready((event, missed, rx)) => {
                self.pending = None;
                self.rx = rx;
                self.missed += missed;
                Poll::Ready(event)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx)
    }
}
