//! Plexus: typed remote calls between services that find each other.
//!
//! Layers, bottom up. A module uses only modules below it, in the exact
//! order `runtime/tests/layering.rs` checks (`docs/RUNTIME.md` says what
//! each owns); where a lower layer needs a higher one, it defines the
//! interface and the higher one fills it in:
//!
//! | layer | here |
//! |---|---|
//! | wire | [`wire`]: the pure frame codec and handshake (spec in `docs/PROTOCOL.md`); [`NodeId`] |
//! | transport | [`transport`]: byte streams by URL — `tcp://`, `tls://`, `unix://`, `inproc://` |
//! | error | [`CallError`], [`ConnectError`], [`Reject`] |
//! | descriptor | [`contract`]: what a service contract is at run time |
//! | discovery | [`discovery`]: finding peers — beacon, static list, etcd |
//! | peer | [`PeerInfo`]: who is on the other end |
//! | observability | [`observe`]: a span per call with the OpenTelemetry RPC fields, W3C trace context, metrics |
//! | interception | [`intercept`] and [`access`]: hooks around every call; allow-lists and policies |
//! | connection | [`Connection`]: many calls in both directions over one stream, flow control, keepalive, sessions, [`events`]; what a handler is given ([`CallContext`]) |
//! | call | [`Connection::call`] and friends, [`CallOptions`], [`stream`] |
//! | codec | [`codec`]: typed messages to payload bytes and back; [`Blob`](codec::Blob), bytes shared with the frame they arrived in |
//! | service | [`Router`], and the generated clients and handlers |
//! | introspection | [`reflection`] and [`health`]: what an endpoint serves and whether it is serving, over the wire |
//! | endpoint | [`Endpoint`], [`Server`]: identity, handshake, listeners |
//! | typed | [`Streaming`], [`StreamSender`]: the byte streams through a codec |
//! | socket | [`socket`]: [`Socket`](socket::Socket) — untyped messages to and from peers; a raw byte-stream server |
//! | node | [`node`]: [`Node`] — discovery, groups, roles, [`PeerSet`](node::PeerSet)s, broadcast, [`Actor`](node::Actor), the topology page |
//! | patterns | [`patterns`]: send to one fairly, publish/subscribe, pipeline, survey over peer sets |
//! | files | [`files`]: offer files, download one in checked chunks from every peer that has it |
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use plexus::{Bytes, CallOptions, Connection, Reject, Router, Server};
//!
//! let server = Server::bind("tcp://127.0.0.1:0")
//!     .serve(Router::new().unary("demo.Echo/echo", |_ctx, body: Bytes| async move {
//!         Ok::<_, Reject>(body)
//!     }))
//!     .start()
//!     .await?;
//! let conn = Connection::connect(&server.local_url().to_string()).await?;
//! let reply = conn.call("demo.Echo/echo", Bytes::from("hi"), CallOptions::new()).await?;
//! assert_eq!(&reply[..], b"hi");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// Contracts declared inside this crate (`files::FileShare`) expand to
// `::plexus::…` paths like everyone else's.
extern crate self as plexus;

pub mod access;
mod connection;
pub mod discovery;
mod endpoint;
mod error;
pub mod files;
pub mod health;
pub mod intercept;
pub mod node;
pub mod observe;
pub mod patterns;
mod peer;
pub mod reflection;
mod router;
pub mod socket;
pub mod transport;
pub mod wire;

/// The connection core's model shell, for the fuzz target `frame_sequence`
/// only: built when cargo-fuzz passes `--cfg fuzzing`, never otherwise (see
/// `fuzz/README.md`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub use crate::connection::core::fuzzing as connection_fuzzing;

// -- service-contract layer (descriptor, codecs, typed wrappers) --
pub mod codec;
mod descriptor;
mod typed;

// The root: what a first program names. Every public item has exactly one
// public path; the rest lives in the modules below and in the layer modules
// above.
pub use bytes::Bytes;
pub use plexus_macros::service;

pub use crate::connection::{
    CallContext, CallOptions, CloseReason, Connection, ConnectionConfig, ConnectionStats,
};
pub use crate::endpoint::{Endpoint, Server, ToUrl};
pub use crate::error::{CallError, ConnectError, Reject};
pub use crate::node::handle::Node;
pub use crate::peer::PeerInfo;
pub use crate::router::Router;
pub use crate::typed::{BoxStream, StreamSender, Streaming};
pub use crate::wire::node_id::NodeId;

/// Setting up the accepting side: the builders behind [`Server::bind`] and
/// [`Endpoint::builder`], a running listener, what an accept hook sees, and
/// what [`Server`] and [`Endpoint`] accept as services.
pub mod server {
    pub use crate::endpoint::{ConnectRequest, EndpointBuilder, Listening, ServerBuilder};
    pub use crate::router::IntoRouter;
}

/// Sessions: named scopes opened on one connection with data, accepted or
/// rejected by the peer, whose calls end when the session closes
/// (`docs/PROTOCOL.md` §12). Open one with [`Connection::open_session`].
pub mod session {
    pub use crate::connection::{Session, SessionRequest, NO_SESSIONS};
}

/// Connection and session events, observable as a stream — so an
/// application learns that a peer went away, and why, without polling:
/// [`Endpoint::events`] subscribes to an endpoint's [`Event`](events::Event)s.
pub mod events {
    pub use crate::connection::events::{Event, Events};
}

/// Retries and redials: how a call is retried ([`RetryPolicy`](retry::RetryPolicy),
/// bounded by a [`RetryBudget`](retry::RetryBudget)) and how a reconnecting
/// connection waits between dials ([`Backoff`](retry::Backoff)).
pub mod retry {
    pub use crate::connection::{Backoff, RetryBudget, RetryPolicy, RetryStats};
}

/// The byte-level streams of one call, for code that works without a
/// contract: [`Inbound`](stream::Inbound) (bodies arriving),
/// [`Outbound`](stream::Outbound) (bodies leaving, with flow control) and
/// [`Reply`](stream::Reply) (a client stream's answer). Typed contracts see
/// them as [`Streaming`], [`StreamSender`] and [`ReplyFuture`](contract::ReplyFuture).
pub mod stream {
    pub use crate::connection::{Inbound, Outbound, Reply, TrySendError};
}

/// What a service contract is at run time: its descriptor (services,
/// methods, call kinds, schemas), the [`Contract`](contract::Contract) trait
/// every generated client and handler implements, and the pieces generated
/// code builds on.
pub mod contract {
    pub use crate::descriptor::{
        CallKind, Contract, JsonSchemas, MethodDescriptor, ParamDescriptor, ServiceDescriptor,
    };
    pub use crate::typed::{forward, forward_fallible, undecodable_oneway, ReplyFuture};
}

/// The crates generated code reaches through `plexus`, so that a crate with
/// generated contracts needs `plexus` as its only dependency for them:
/// `plexus_codegen` points prost's derives and well-known types here. Not an
/// API of its own; use the crates directly if you need them.
#[doc(hidden)]
pub mod codegen {
    /// `BytesMut`, which generated codecs encode into.
    pub use bytes;
    pub use prost;
    pub use prost_types;
}

/// Includes the code `plexus_codegen::compile_protos` generated from
/// `build.rs` for one package: `plexus::include_proto!("chat");` in a module
/// is `include!(concat!(env!("OUT_DIR"), "/chat.rs"));`.
///
/// ```ignore
/// mod chat {
///     plexus::include_proto!("chat");
/// }
/// ```
///
/// Files of several packages refer to each other through the module tree;
/// include them all at once with `plexus_codegen::Builder::include_file`.
#[macro_export]
macro_rules! include_proto {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
    };
}
// -- end service-contract layer --
