//! The names of every span, field and metric Plexus records, as constants.
//!
//! Spans and fields follow the OpenTelemetry RPC semantic conventions
//! (`rpc.system`, `rpc.service`, `rpc.method`, `server.address`, …) with
//! `rpc.plexus.*` for what is Plexus's own, as the conventions ask of an
//! RPC system; the `otel.*` fields are the ones `tracing-opentelemetry`
//! reads for the span's name, kind and status. Metrics are named after
//! OpenTelemetry's `rpc.{client,server}.*` instruments, with the gRPC set's
//! `started`/`handled` counters beside them. `docs/OBSERVABILITY.md` says
//! what each one holds.

/// Span of a call this side made.
pub const CLIENT_SPAN: &str = "rpc.client";
/// Span of a call this side served.
pub const SERVER_SPAN: &str = "rpc.server";

/// `rpc.system`: always `plexus`.
pub const RPC_SYSTEM: &str = "rpc.system";
/// `rpc.service`: the service part of the operation id (`greet.Greeter`).
pub const RPC_SERVICE: &str = "rpc.service";
/// `rpc.method`: the method part of the operation id (`hello`).
pub const RPC_METHOD: &str = "rpc.method";
/// How the call ended: `ok`, `rejected`, or the failure's name (see
/// `docs/OBSERVABILITY.md`).
pub const OUTCOME: &str = "rpc.plexus.outcome";
/// The reject code: the handler's own for `rejected`, the system code for
/// the runtime's refusals and failures.
pub const CODE: &str = "rpc.plexus.code";
/// The call kind: `unary`, `oneway`, `server_stream`, `client_stream`, `bidi`.
pub const CALL_KIND: &str = "rpc.plexus.call_kind";

/// Calls this side started.
pub const CLIENT_STARTED: &str = "rpc.client.call.started";
/// Calls this side made that ended, by outcome and code.
pub const CLIENT_HANDLED: &str = "rpc.client.call.handled";
/// How long the calls this side made took, seconds.
pub const CLIENT_DURATION: &str = "rpc.client.call.duration";
/// Size of each request message sent, bytes.
pub const CLIENT_REQUEST_SIZE: &str = "rpc.client.request.size";
/// Size of each response message received, bytes.
pub const CLIENT_RESPONSE_SIZE: &str = "rpc.client.response.size";
/// Request messages per call.
pub const CLIENT_REQUESTS_PER_RPC: &str = "rpc.client.requests_per_rpc";
/// Response messages per call.
pub const CLIENT_RESPONSES_PER_RPC: &str = "rpc.client.responses_per_rpc";

/// Calls the peer opened that this side started serving (or refused).
pub const SERVER_STARTED: &str = "rpc.server.call.started";
/// Calls served that ended, by outcome and code.
pub const SERVER_HANDLED: &str = "rpc.server.call.handled";
/// How long serving took, seconds.
pub const SERVER_DURATION: &str = "rpc.server.call.duration";
/// Size of each request message received, bytes.
pub const SERVER_REQUEST_SIZE: &str = "rpc.server.request.size";
/// Size of each response message sent, bytes.
pub const SERVER_RESPONSE_SIZE: &str = "rpc.server.response.size";
/// Request messages per call served.
pub const SERVER_REQUESTS_PER_RPC: &str = "rpc.server.requests_per_rpc";
/// Response messages per call served.
pub const SERVER_RESPONSES_PER_RPC: &str = "rpc.server.responses_per_rpc";

/// Connections open now (gauge), by `network.transport`.
pub const CONNECTIONS_OPEN: &str = "plexus.connections.open";
/// Connections that ended, by `plexus.reason`.
pub const CONNECTIONS_CLOSED: &str = "plexus.connections.closed";
/// Incoming handshakes that failed, by `plexus.reason` (the refusal code's
/// name, or `broken_off` when the dialer gave up or failed its proof).
pub const HANDSHAKES_REFUSED: &str = "plexus.handshakes.refused";
/// Sessions opened or accepted.
pub const SESSIONS_OPENED: &str = "plexus.sessions.opened";
/// Sessions closed.
pub const SESSIONS_CLOSED: &str = "plexus.sessions.closed";
/// Publish/subscribe events dropped under a subscriber's drop policy, by
/// `plexus.pubsub.side` (`publisher`: dropped from its queue for a slow
/// subscriber; `subscriber`: dropped from the subscriber's inbox).
pub const PUBSUB_DROPPED: &str = "plexus.pubsub.dropped";
/// Subscribers a publisher gave up on for holding their events up.
pub const PUBSUB_EVICTED: &str = "plexus.pubsub.evicted";
/// Pipeline items delivered again, on another worker, after a failure.
pub const PIPELINE_REDELIVERED: &str = "plexus.pipeline.redelivered";
/// Peers a node knows (gauge), by `plexus.node` and `plexus.peer.state`
/// (`alive`, `suspect`, `lost`, `left`).
pub const DISCOVERY_PEERS: &str = "plexus.discovery.peers";
