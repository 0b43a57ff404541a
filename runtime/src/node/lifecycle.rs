//! A node's lifecycle in `tracing` and metrics: its start and stop, each
//! of its events, and the peers-by-state gauges (names and fields in
//! `docs/OBSERVABILITY.md`).

use std::sync::{Arc, Weak};

use super::NodeEvent;
use crate::discovery::PeerState;
use crate::observe::lifecycle::{describe_metrics, node_tracing};
use crate::observe::{metrics_enabled, names};

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
pub(crate) fn watch_node(shared: &Arc<super::Shared>) {
    let mut events = super::NodeEvents::new(shared.events.subscribe());
    let node: Weak<super::Shared> = Arc::downgrade(shared);
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
