//! What a node reports about its peers and itself, as a stream.
//!
//! Owns [`NodeEvent`] and the subscription type [`NodeEvents`]; the node's
//! driver is the only sender. Subscribing never slows the node: a subscriber
//! that falls more than [`CAPACITY`] events behind skips the oldest and can
//! see how many in [`NodeEvents::missed`].

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::broadcast;

use crate::connection::events::Subscription;
use crate::NodeId;

/// Events buffered per subscriber before the oldest are skipped.
pub const CAPACITY: usize = 4096;

/// Something that happened to a node's view of its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// The node is up: it listens at `urls` and has started announcing.
    /// Sent once, before any other event; subscribe with
    /// [`NodeBuilder::events`](super::NodeBuilder::events) to see it.
    Initialized {
        /// The node itself.
        node: NodeId,
        /// Its name.
        name: String,
        /// Where it listens (with real ports), as announced.
        urls: Vec<String>,
    },
    /// A peer was heard of for the first time (by discovery, or because it
    /// connected and described itself first).
    PeerDiscovered {
        /// The peer.
        peer: NodeId,
        /// Its name.
        name: String,
        /// Its group.
        group: Option<String>,
    },
    /// A connection to a peer is up and described (either side dialed):
    /// `identity` is the peer's verified certificate on a secured transport
    /// ([`PeerInfo::identity`](crate::PeerInfo::identity)).
    PeerConnected {
        /// The peer.
        peer: NodeId,
        /// Its verified certificate, if the transport has one.
        identity: Option<crate::transport::PeerIdentity>,
    },
    /// A peer went silent for the suspect bound; it may be gone.
    PeerSuspect(NodeId),
    /// A suspect peer was heard from again.
    PeerRecovered(NodeId),
    /// A peer went silent for the lost bound (or its registration expired);
    /// its connection is closed and its services unlinked.
    PeerLost(NodeId),
    /// A peer came back after being lost or leaving, or restarted.
    PeerReturned(NodeId),
    /// A peer announced a graceful leave.
    PeerLeft(NodeId),
    /// A peer (or this node, after [`Node::rename`](super::Node::rename))
    /// changed its name.
    PeerRenamed {
        /// Who was renamed.
        peer: NodeId,
        /// The name before.
        from: String,
        /// The name now.
        to: String,
    },
    /// A peer invited this node to its group ([`Node::invite`](super::Node::invite)),
    /// and the invite hook said yes or no.
    Invited {
        /// The inviting peer.
        by: NodeId,
        /// The group it invited to.
        group: String,
        /// Whether this node accepted (and so moved to the group).
        accepted: bool,
    },
    /// A node's group changed: `node` is a peer, or this node itself after
    /// [`Node::join`](super::Node::join) and friends.
    GroupChanged {
        /// Whose group changed.
        node: NodeId,
        /// The group before.
        from: Option<String>,
        /// The group now.
        to: Option<String>,
    },
    /// A peer's description arrived and lists this service.
    ServiceDiscovered {
        /// The peer.
        peer: NodeId,
        /// The service's full name (`package.Service`).
        service: String,
        /// The role the peer takes in it.
        role: Option<String>,
    },
    /// A peer joined this node's peer set of a service: it is connected,
    /// serves the service, and matches scope and role rules.
    ServiceLinked {
        /// The peer.
        peer: NodeId,
        /// The service's full name.
        service: String,
    },
    /// A peer left this node's peer set of a service.
    ServiceUnlinked {
        /// The peer.
        peer: NodeId,
        /// The service's full name.
        service: String,
    },
}

impl NodeEvent {
    /// The node the event is about.
    pub fn node_id(&self) -> NodeId {
        match self {
            NodeEvent::PeerDiscovered { peer, .. }
            | NodeEvent::PeerConnected { peer, .. }
            | NodeEvent::ServiceDiscovered { peer, .. }
            | NodeEvent::ServiceLinked { peer, .. }
            | NodeEvent::ServiceUnlinked { peer, .. } => *peer,
            NodeEvent::GroupChanged { node, .. } | NodeEvent::Initialized { node, .. } => *node,
            NodeEvent::PeerRenamed { peer, .. } => *peer,
            NodeEvent::Invited { by, .. } => *by,
            NodeEvent::PeerSuspect(id)
            | NodeEvent::PeerRecovered(id)
            | NodeEvent::PeerLost(id)
            | NodeEvent::PeerReturned(id)
            | NodeEvent::PeerLeft(id) => *id,
        }
    }
}

/// A subscription to a node's events, from the moment of subscribing. Use
/// [`NodeEvents::recv`] or poll it as a [`Stream`](futures_core::Stream).
pub struct NodeEvents {
    inner: Subscription<NodeEvent>,
}

impl std::fmt::Debug for NodeEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEvents")
            .field("missed", &self.inner.missed)
            .finish_non_exhaustive()
    }
}

impl NodeEvents {
    pub(crate) fn new(rx: broadcast::Receiver<NodeEvent>) -> Self {
        NodeEvents {
            inner: Subscription::new(rx),
        }
    }

    /// The next event; `None` once the node is gone.
    pub async fn recv(&mut self) -> Option<NodeEvent> {
        std::future::poll_fn(|cx| self.inner.poll_next(cx)).await
    }

    /// Events skipped because this subscriber fell too far behind.
    pub fn missed(&self) -> u64 {
        self.inner.missed
    }
}

impl futures_core::Stream for NodeEvents {
    type Item = NodeEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        self.get_mut().inner.poll_next(cx)
    }
}
