//! Connection and session events, observable as a stream — so an
//! application learns that a peer went away, and why, without polling.
//! Public as `plexus::events`; defined here, beside the connections and
//! sessions they describe, because connections send them.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::broadcast;

use super::{CloseReason, PeerInfo, Session};
use crate::observe::lifecycle::{connection_tracing, describe_metrics};
use crate::observe::{metrics_enabled, names, Address};
use crate::wire::handshake::RefusalCode;

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
    /// An incoming connection did not complete its handshake: this side
    /// refused it (`code` says why: a version, the connection limit, a
    /// missing or wrong session key, a certificate not on the allow-list,
    /// the accept hook), or the dialer broke off, was silent too long or
    /// failed to prove the session key (`code` is `None`). Nothing was
    /// served on it.
    HandshakeFailed {
        /// The dialer's address as the transport sees it.
        remote: String,
        /// The refusal sent, if one was.
        code: Option<crate::wire::handshake::RefusalCode>,
        /// What happened, in words.
        reason: String,
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
        endpoint_event(&event);
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
    inner: Subscription<Event>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("missed", &self.inner.missed)
            .finish_non_exhaustive()
    }
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Events {
            inner: Subscription::new(rx),
        }
    }

    /// The next event; `None` once the endpoint is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.inner.poll_next(cx)).await
    }

    /// Events skipped because this subscriber fell more than 1024 behind.
    pub fn missed(&self) -> u64 {
        self.inner.missed
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().inner.poll_next(cx)
    }
}

/// What one wait for the next item gives back: the item, how many were
/// skipped on the way, and the receiver to keep using.
type Next<T> = (Option<T>, u64, broadcast::Receiver<T>);

/// A broadcast receiver that can be polled: the receiver travels into a
/// boxed wait and comes back with its result. Shared by every event stream
/// of the crate (endpoint and node events).
pub(crate) struct Subscription<T> {
    rx: Option<broadcast::Receiver<T>>,
    pub(crate) missed: u64,
    pending: Option<Pin<Box<dyn std::future::Future<Output = Next<T>> + Send>>>,
}

async fn next<T: Clone>(mut rx: broadcast::Receiver<T>) -> Next<T> {
    let mut missed = 0;
    loop {
        match rx.recv().await {
            Ok(e) => return (Some(e), missed, rx),
            Err(broadcast::error::RecvError::Lagged(n)) => missed += n,
            Err(broadcast::error::RecvError::Closed) => return (None, missed, rx),
        }
    }
}

impl<T: Clone + Send + 'static> Subscription<T> {
    pub(crate) fn new(rx: broadcast::Receiver<T>) -> Self {
        Subscription {
            rx: Some(rx),
            missed: 0,
            pending: None,
        }
    }

    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.pending.is_none() {
            let Some(rx) = self.rx.take() else {
                return Poll::Ready(None);
            };
            self.pending = Some(Box::pin(next(rx)));
        }
        let Some(fut) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready((item, missed, rx)) => {
                self.pending = None;
                self.rx = Some(rx);
                self.missed += missed;
                Poll::Ready(item)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn close_reason(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Local => "local",
        CloseReason::Remote => "remote",
        CloseReason::PeerGone => "peer_gone",
        CloseReason::KeepaliveTimeout(_) => "keepalive_timeout",
        CloseReason::Protocol(_) => "protocol",
        CloseReason::Io(_) => "io",
        CloseReason::Aborted => "aborted",
        CloseReason::PeerNotReading { .. } => "peer_not_reading",
        CloseReason::CutOff(_) => "cut_off",
        CloseReason::Revoked(_) => "revoked",
    }
}

fn refusal(code: Option<RefusalCode>) -> &'static str {
    match code {
        None => "broken_off",
        Some(RefusalCode::VersionMismatch) => "version_mismatch",
        Some(RefusalCode::SelfConnect) => "self_connect",
        Some(RefusalCode::Rejected) => "rejected",
        Some(RefusalCode::TooManyConnections) => "too_many_connections",
        Some(RefusalCode::Malformed) => "malformed",
        Some(RefusalCode::ShuttingDown) => "shutting_down",
        Some(RefusalCode::KeyRequired) => "key_required",
        Some(RefusalCode::KeyMismatch) => "key_mismatch",
        Some(RefusalCode::NotAllowed) => "not_allowed",
        Some(RefusalCode::Other) => "other",
    }
}

/// Records an endpoint event as it is sent.
pub(crate) fn endpoint_event(event: &Event) {
    let traced = connection_tracing();
    let counted = metrics_enabled();
    if !traced && !counted {
        return;
    }
    if counted {
        describe_metrics();
    }
    match event {
        Event::Connected { peer } => {
            let address = Address::parse(peer.remote());
            if traced {
                tracing::event!(
                    target: "plexus::connection",
                    tracing::Level::INFO,
                    {
                        rpc.plexus.peer = %peer.node_id(),
                        network.peer.address = peer.remote(),
                        network.transport = address.transport
                    },
                    "connection established"
                );
            }
            if counted {
                metrics::gauge!(names::CONNECTIONS_OPEN, "network.transport" => address.transport)
                    .increment(1.0);
            }
        }
        Event::Disconnected { peer, reason } => {
            let address = Address::parse(peer.remote());
            let why = close_reason(reason);
            if traced {
                tracing::event!(
                    target: "plexus::connection",
                    tracing::Level::INFO,
                    {
                        rpc.plexus.peer = %peer.node_id(),
                        network.peer.address = peer.remote(),
                        network.transport = address.transport,
                        plexus.reason = why
                    },
                    "connection closed: {reason}"
                );
            }
            if counted {
                metrics::gauge!(names::CONNECTIONS_OPEN, "network.transport" => address.transport)
                    .decrement(1.0);
                metrics::counter!(names::CONNECTIONS_CLOSED, "plexus.reason" => why).increment(1);
            }
        }
        Event::HandshakeFailed {
            remote,
            code,
            reason,
        } => {
            let why = refusal(*code);
            if traced {
                tracing::event!(
                    target: "plexus::connection",
                    tracing::Level::INFO,
                    {
                        network.peer.address = remote.as_str(),
                        plexus.reason = why
                    },
                    "handshake failed: {reason}"
                );
            }
            if counted {
                metrics::counter!(names::HANDSHAKES_REFUSED, "plexus.reason" => why).increment(1);
            }
        }
        Event::SessionOpened { session } => {
            if traced {
                tracing::event!(
                    target: "plexus::connection",
                    tracing::Level::INFO,
                    {
                        rpc.plexus.peer = %session.connection().peer().node_id(),
                        rpc.plexus.session = session.name()
                    },
                    "session opened"
                );
            }
            if counted {
                metrics::counter!(names::SESSIONS_OPENED).increment(1);
            }
        }
        Event::SessionClosed { name, peer, reason } => {
            if traced {
                tracing::event!(
                    target: "plexus::connection",
                    tracing::Level::INFO,
                    {
                        rpc.plexus.peer = %peer.node_id(),
                        rpc.plexus.session = &**name
                    },
                    "session closed: {reason}"
                );
            }
            if counted {
                metrics::counter!(names::SESSIONS_CLOSED).increment(1);
            }
        }
    }
}
