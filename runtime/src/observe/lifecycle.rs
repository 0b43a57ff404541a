//! Lifecycle: connections, handshakes, sessions and nodes, as `tracing`
//! events and the metrics that count them.
//!
//! Owns turning the endpoint's [`Event`]s (at the moment they are sent,
//! whether or not anyone subscribed) and a node's [`NodeEvent`]s into
//! records. Like the call path, it builds nothing when nothing listens.

use std::sync::{Arc, Once, Weak};

use metrics::Unit;

use super::{metrics_enabled, names, Address};
use crate::connection::events::Event;
use crate::connection::CloseReason;
use crate::discovery::PeerState;
use crate::node::NodeEvent;
use crate::wire::RefusalCode;

fn connection_tracing() -> bool {
    tracing::enabled!(target: "plexus::connection", tracing::Level::INFO)
}

fn node_tracing() -> bool {
    tracing::enabled!(target: "plexus::node", tracing::Level::INFO)
}

/// Gives every metric its unit and description, once, on the recorder
/// installed when the first one is recorded.
pub(crate) fn describe_metrics() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(names::CLIENT_STARTED, "Calls this side started.");
        describe_counter!(
            names::CLIENT_HANDLED,
            "Calls this side made that ended, by outcome and code."
        );
        describe_histogram!(
            names::CLIENT_DURATION,
            Unit::Seconds,
            "How long the calls this side made took."
        );
        describe_histogram!(
            names::CLIENT_REQUEST_SIZE,
            Unit::Bytes,
            "Size of each request message sent."
        );
        describe_histogram!(
            names::CLIENT_RESPONSE_SIZE,
            Unit::Bytes,
            "Size of each response message received."
        );
        describe_histogram!(
            names::CLIENT_REQUESTS_PER_RPC,
            Unit::Count,
            "Request messages per call."
        );
        describe_histogram!(
            names::CLIENT_RESPONSES_PER_RPC,
            Unit::Count,
            "Response messages per call."
        );
        describe_counter!(
            names::SERVER_STARTED,
            "Calls the peer opened that this side started serving or refused."
        );
        describe_counter!(
            names::SERVER_HANDLED,
            "Calls served that ended, by outcome and code."
        );
        describe_histogram!(
            names::SERVER_DURATION,
            Unit::Seconds,
            "How long serving a call took."
        );
        describe_histogram!(
            names::SERVER_REQUEST_SIZE,
            Unit::Bytes,
            "Size of each request message received."
        );
        describe_histogram!(
            names::SERVER_RESPONSE_SIZE,
            Unit::Bytes,
            "Size of each response message sent."
        );
        describe_histogram!(
            names::SERVER_REQUESTS_PER_RPC,
            Unit::Count,
            "Request messages per call served."
        );
        describe_histogram!(
            names::SERVER_RESPONSES_PER_RPC,
            Unit::Count,
            "Response messages per call served."
        );
        describe_gauge!(names::CONNECTIONS_OPEN, "Connections open now.");
        describe_counter!(
            names::CONNECTIONS_CLOSED,
            "Connections that ended, by reason."
        );
        describe_counter!(
            names::HANDSHAKES_REFUSED,
            "Incoming handshakes that failed, by reason."
        );
        describe_counter!(names::SESSIONS_OPENED, "Sessions opened or accepted.");
        describe_counter!(names::SESSIONS_CLOSED, "Sessions closed.");
        describe_counter!(
            names::PUBSUB_DROPPED,
            "Publish/subscribe events dropped under a subscriber's drop policy."
        );
        describe_counter!(
            names::PUBSUB_EVICTED,
            "Subscribers a publisher gave up on for holding their events up."
        );
        describe_counter!(
            names::PIPELINE_REDELIVERED,
            "Pipeline items delivered again after a worker failed."
        );
        describe_gauge!(names::DISCOVERY_PEERS, "Peers a node knows, by state.");
    });
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

/// Pub/sub events dropped under a drop policy, on `side` (`publisher` or
/// `subscriber`).
pub(crate) fn pubsub_dropped(side: &'static str, count: u64) {
    if count > 0 && metrics_enabled() {
        describe_metrics();
        metrics::counter!(names::PUBSUB_DROPPED, "plexus.pubsub.side" => side).increment(count);
    }
}

/// A subscriber a publisher gave up on.
pub(crate) fn pubsub_evicted() {
    if metrics_enabled() {
        describe_metrics();
        metrics::counter!(names::PUBSUB_EVICTED).increment(1);
    }
}

/// A pipeline item sent again, on another worker.
pub(crate) fn pipeline_redelivered() {
    if metrics_enabled() {
        describe_metrics();
        metrics::counter!(names::PIPELINE_REDELIVERED).increment(1);
    }
}

fn node_event_name(event: &NodeEvent) -> &'static str {
    match event {
        NodeEvent::PeerDiscovered { .. } => "peer_discovered",
        NodeEvent::PeerConnected { .. } => "peer_connected",
        NodeEvent::PeerSuspect(_) => "peer_suspect",
        NodeEvent::PeerRecovered(_) => "peer_recovered",
        NodeEvent::PeerLost(_) => "peer_lost",
        NodeEvent::PeerReturned(_) => "peer_returned",
        NodeEvent::PeerLeft(_) => "peer_left",
        NodeEvent::GroupChanged { .. } => "group_changed",
        NodeEvent::ServiceDiscovered { .. } => "service_discovered",
        NodeEvent::ServiceLinked { .. } => "service_linked",
        NodeEvent::ServiceUnlinked { .. } => "service_unlinked",
        NodeEvent::Initialized { .. } => "initialized",
        NodeEvent::PeerRenamed { .. } => "peer_renamed",
        NodeEvent::Invited { .. } => "invited",
    }
}

/// A node started or stopped.
pub(crate) fn node_state(name: &str, id: crate::NodeId, state: &'static str) {
    if node_tracing() {
        tracing::event!(
            target: "plexus::node",
            tracing::Level::INFO,
            {
                plexus.node = name,
                plexus.node.id = %id,
                plexus.event = state
            },
            "node {state}"
        );
    }
}

/// Follows a node's events for as long as the node lives: each becomes a
/// `tracing` event, and the peers-by-state gauges follow its peer table.
/// The events are rare (discovery and liveness), so one small task per node
/// does it, at no cost to calls.
pub(crate) fn watch_node(shared: &Arc<crate::node::Shared>) {
    let mut events = crate::node::NodeEvents::new(shared.events.subscribe());
    let node: Weak<crate::node::Shared> = Arc::downgrade(shared);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            // The node's name now: a node can be renamed.
            let Some(name) = node.upgrade().map(|shared| shared.name()) else {
                break;
            };
            if node_tracing() {
                let peer = event.node_id();
                let what = node_event_name(&event);
                tracing::event!(
                    target: "plexus::node",
                    tracing::Level::INFO,
                    {
                        plexus.node = name.as_str(),
                        plexus.event = what,
                        rpc.plexus.peer = %peer
                    },
                    "{event:?}"
                );
            }
            if metrics_enabled() {
                let Some(shared) = node.upgrade() else { break };
                describe_metrics();
                let mut counts = [0u32; 4];
                for peer in shared.known_peers() {
                    counts[state_index(peer.state)] += 1;
                }
                for (state, count) in ["alive", "suspect", "lost", "left"].into_iter().zip(counts) {
                    metrics::gauge!(
                        names::DISCOVERY_PEERS,
                        "plexus.node" => name.clone(),
                        "plexus.peer.state" => state
                    )
                    .set(count);
                }
            }
        }
    });
}

fn state_index(state: PeerState) -> usize {
    match state {
        PeerState::Alive => 0,
        PeerState::Suspect => 1,
        PeerState::Lost => 2,
        PeerState::Left => 3,
    }
}
