//! Lifecycle: connections, handshakes, sessions and nodes, as `tracing`
//! events and the metrics that count them.
//!
//! Owns the metrics' descriptions, whether lifecycle events are listened
//! to, and the counters of the patterns. The modules that own the events
//! record them with these: the endpoint's `Event`s where they are sent
//! (`connection/events.rs`, whether or not anyone subscribed), a node's
//! `NodeEvent`s by a task that follows them (`node/lifecycle.rs`). Like the
//! call path, nothing is built when nothing listens.

use std::sync::Once;

use metrics::Unit;

use super::{metrics_enabled, names};

/// Whether connection and session lifecycle events are traced.
pub(crate) fn connection_tracing() -> bool {
    tracing::enabled!(target: "plexus::connection", tracing::Level::INFO)
}

/// Whether node lifecycle events are traced.
pub(crate) fn node_tracing() -> bool {
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
