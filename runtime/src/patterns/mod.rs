//! Messaging patterns over a node's peer sets: send to one fairly, to all,
//! to a chosen peer; publish/subscribe; pipeline; bus; survey.
//!
//! Everything here is built on [`PeerSet`](crate::node::PeerSet)s and typed
//! clients: the node keeps the sets current (discovery, sessions, roles),
//! the patterns decide who gets which message. None of them opens a socket
//! or parses a frame.
//!
//! | pattern | here |
//! |---|---|
//! | to one peer, fairly, with failover | [`Balancer`] ([`PeerSet::balanced`](crate::node::PeerSet::balanced)), [`Strategy`], [`Failover`] |
//! | to all peers | [`PeerSet::send_all`](crate::node::PeerSet::send_all), [`Node::broadcast`](crate::Node::broadcast) |
//! | to a chosen peer | [`PeerSet::get`](crate::node::PeerSet::get) |
//! | no receive (send-only) | [`NodeBuilder::uses_as`](crate::node::NodeBuilder::uses_as): take part without serving |
//! | publish/subscribe | [`topic!`](crate::topic), [`Publisher`], [`Subscriber`], [`Overflow`] |
//! | pipeline (push/pull) | [`Pipeline`]: acked, fair, redelivered when a worker dies |
//! | bus | a symmetric one-way service + [`PeerSet::send_all`](crate::node::PeerSet::send_all) |
//! | survey | [`Node::survey`](crate::Node::survey) → [`Survey`] |
//!
//! Untyped messaging (bytes to and from peers, no contract) is
//! [`socket`](crate::socket). The guide is `docs/PATTERNS.md`.

mod balance;
mod pipeline;
mod pubsub;
mod survey;

pub use self::balance::{Balancer, Failover, Strategy};
pub use self::pipeline::{Delivered, Pipeline, DEFAULT_MAX_ATTEMPTS, DEFAULT_PER_WORKER};
#[doc(hidden)]
pub use self::pubsub::topic_fingerprint;
pub use self::pubsub::{
    topic_matches, Overflow, PublishError, Publisher, Received, Subscriber, SubscriberBuilder,
    SubscriberStats, Topic, TopicClient, DEFAULT_CAPACITY, MAX_FILTERS, MAX_TOPIC_LEN,
};
pub use self::survey::Survey;
