//! Discovery: how nodes find each other, and notice when they go.
//!
//! This layer owns announcing a node ([`Announcement`]), hearing other nodes'
//! announcements, and turning them into a stream of [`DiscoveryEvent`]s with
//! a per-peer liveness state machine ([`Liveness`]). It never opens a Plexus
//! connection: the node layer above reacts to the events (dials endpoints,
//! exchanges descriptors, matches groups and roles).
//!
//! Backends sit behind one object-safe trait, [`Discovery`]:
//!
//! | backend | for |
//! |---|---|
//! | [`Beacon`] | UDP multicast on one LAN — the embedded default; [`Beacon::loopback()`] for tests and examples |
//! | [`Static`] | a fixed list of peer URLs |
//! | `Etcd` (cargo feature `etcd`) | fleets beyond one LAN: a lease-bound key per node and a prefix watch |
//!
//! A node drives a backend in three steps: [`Discovery::start`] with its
//! announcement (returns the event stream), [`Discovery::update`] when the
//! announcement changes (e.g. a group switch), [`Discovery::leave`] to stop
//! with a graceful leave. Dropping a backend without `leave` stops it at once
//! with no leave, which peers see as a crash (suspect, then lost).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use plexus::discovery::{Announcement, Beacon, Discovery, DiscoveryEvent};
//! use plexus::NodeId;
//!
//! let beacon = Beacon::loopback();
//! let me = Announcement::new(NodeId::random(), "alice")
//!     .group("lab-3")
//!     .endpoint("tcp://127.0.0.1:4000");
//! let mut events = beacon.start(me).await?;
//! while let Some(event) = events.recv().await {
//!     if let DiscoveryEvent::Discovered(peer) = event {
//!         println!("found {} at {:?}", peer.name, peer.endpoints);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The byte layout, the liveness bounds and the etcd key layout are specified
//! in `docs/DISCOVERY.md`.

mod announcement;
mod beacon;
pub mod datagram;
#[cfg(feature = "etcd")]
mod etcd;
mod liveness;
mod static_list;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

pub use self::announcement::{
    Announcement, DecodeError, EncodeError, ANNOUNCEMENT_VERSION, MAX_ANNOUNCEMENT_LEN,
    MAX_ENDPOINTS, MAX_SERVICES, MAX_TEXT_LEN,
};
pub use self::beacon::{Beacon, BeaconConfig, DEFAULT_MULTICAST_GROUP, DEFAULT_PORT};
#[cfg(feature = "etcd")]
pub use self::etcd::{Etcd, EtcdConfig};
pub use self::liveness::{Liveness, LivenessConfig, Observation, PeerState};
pub use self::static_list::Static;
use crate::wire::key::SessionKey;
use crate::NodeId;

/// The future a [`Discovery`] method returns.
pub type DiscoveryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, DiscoveryError>> + Send + 'a>>;

/// A discovery backend, as a node drives it.
///
/// Object-safe, so a node can hold a `Box<dyn Discovery>` whichever backend
/// the user chose. A backend runs at most once at a time: `start` after a
/// `start` fails with [`DiscoveryError::AlreadyStarted`]; after `leave` it may
/// be started again.
pub trait Discovery: Send + Sync + 'static {
    /// A short name for logs and errors: `"beacon"`, `"static"`, `"etcd"`.
    fn backend(&self) -> &'static str;

    /// Starts announcing `announcement` and listening for peers; returns the
    /// stream of what is heard. The stream ends after [`Discovery::leave`] or
    /// when the backend is dropped.
    fn start(&self, announcement: Announcement) -> DiscoveryFuture<'_, DiscoveryEvents>;

    /// Replaces the announcement (new group, endpoints or services) and
    /// announces it at once. The backend keeps its own sequence counter, so
    /// the `sequence` given here is only a floor.
    fn update(&self, announcement: Announcement) -> DiscoveryFuture<'_, ()>;

    /// Announces a graceful leave and stops; peers report
    /// [`DiscoveryEvent::Left`] without waiting for a timeout.
    fn leave(&self) -> DiscoveryFuture<'_, ()>;

    /// Counters since the backend was created.
    fn stats(&self) -> DiscoveryStats;

    /// Uses the group's session key (a node's `session_key`), called before
    /// [`start`](Discovery::start): a backend that publishes or hears
    /// announcements authenticates them with it. A backend already given a
    /// key of its own keeps that one. The default ignores it (a static list
    /// carries nothing to authenticate: the connections it leads to prove
    /// the key themselves).
    fn use_key(&mut self, key: &SessionKey) {
        let _ = key;
    }
}

impl<D: Discovery + ?Sized> Discovery for Box<D> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn start(&self, announcement: Announcement) -> DiscoveryFuture<'_, DiscoveryEvents> {
        (**self).start(announcement)
    }
    fn update(&self, announcement: Announcement) -> DiscoveryFuture<'_, ()> {
        (**self).update(announcement)
    }
    fn leave(&self) -> DiscoveryFuture<'_, ()> {
        (**self).leave()
    }
    fn stats(&self) -> DiscoveryStats {
        (**self).stats()
    }
    fn use_key(&mut self, key: &SessionKey) {
        (**self).use_key(key)
    }
}

/// What discovery knows about a peer: its latest announcement, minus the
/// bookkeeping (sequence, leave flag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's node id; its connections must present the same id in the
    /// handshake.
    pub node_id: NodeId,
    /// The peer's name.
    pub name: String,
    /// The group the peer is in, if any.
    pub group: Option<String>,
    /// URLs to dial, in the peer's order of preference.
    pub endpoints: Vec<String>,
    /// The peer process's incarnation.
    pub incarnation: u64,
    /// Service names the peer hosts (a hint).
    pub services: Vec<String>,
}

impl PeerRecord {
    /// The record an announcement describes.
    pub fn from_announcement(announcement: &Announcement) -> Self {
        PeerRecord {
            node_id: announcement.node_id,
            name: announcement.name.clone(),
            group: announcement.group.clone(),
            endpoints: announcement.endpoints.clone(),
            incarnation: announcement.incarnation,
            services: announcement.services.clone(),
        }
    }
}

/// Something discovery noticed about a peer.
///
/// Every event that carries a [`PeerRecord`] also means "alive now".
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryEvent {
    /// A peer heard of for the first time.
    Discovered(PeerRecord),
    /// A known, live peer changed its group, endpoints, name or services.
    Updated(PeerRecord),
    /// A peer has been silent for `suspect_after`; it may be gone.
    Suspect(NodeId),
    /// A suspect peer was heard from again, unchanged.
    Recovered(NodeId),
    /// A peer has been silent for `lost_after` (or its etcd lease expired):
    /// consider it gone.
    Lost(NodeId),
    /// A peer came back after being lost or leaving, or restarted (new
    /// incarnation — its old connections are dead).
    Returned(PeerRecord),
    /// A peer left on purpose.
    Left(NodeId),
    /// An endpoint to dial whose node id is not known yet (the [`Static`]
    /// backend). The node learns the id in the handshake; no liveness events
    /// follow for it — the connection is its liveness.
    Endpoint(String),
}

impl DiscoveryEvent {
    /// The peer the event is about, when its id is known.
    pub fn node_id(&self) -> Option<NodeId> {
        match self {
            DiscoveryEvent::Discovered(r)
            | DiscoveryEvent::Updated(r)
            | DiscoveryEvent::Returned(r) => Some(r.node_id),
            DiscoveryEvent::Suspect(id)
            | DiscoveryEvent::Recovered(id)
            | DiscoveryEvent::Lost(id)
            | DiscoveryEvent::Left(id) => Some(*id),
            DiscoveryEvent::Endpoint(_) => None,
        }
    }
}

/// The stream of [`DiscoveryEvent`]s from a started backend.
///
/// Events are queued without bound so that a slow reader never delays the
/// backend's own announcements; the queue is bounded in practice by the
/// liveness table's `max_peers`. Use [`DiscoveryEvents::recv`] or the
/// [`futures_core::Stream`] implementation.
#[derive(Debug)]
pub struct DiscoveryEvents {
    rx: mpsc::UnboundedReceiver<DiscoveryEvent>,
}

impl DiscoveryEvents {
    /// A connected sender and stream: what a backend's
    /// [`Discovery::start`] returns the stream half of, keeping the sender
    /// to report what it hears. Dropping every sender ends the stream.
    pub fn channel() -> (mpsc::UnboundedSender<DiscoveryEvent>, DiscoveryEvents) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, DiscoveryEvents { rx })
    }

    /// The next event; `None` once the backend has stopped.
    pub async fn recv(&mut self) -> Option<DiscoveryEvent> {
        self.rx.recv().await
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<DiscoveryEvent> {
        self.rx.try_recv().ok()
    }
}

impl futures_core::Stream for DiscoveryEvents {
    type Item = DiscoveryEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<DiscoveryEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// Counters of a discovery backend. Malformed and unauthenticated input is
/// counted here and otherwise ignored — never fatal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStats {
    /// Datagrams (beacon) or watch events (etcd) received, including this
    /// node's own looped-back announcements.
    pub received: u64,
    /// Announcements from other nodes that passed every check.
    pub accepted: u64,
    /// Input that was not a valid announcement (foreign, truncated, oversized…).
    pub dropped_malformed: u64,
    /// Well-formed datagrams refused by the session-key check.
    pub dropped_unauthenticated: u64,
    /// Announcements not newer than one already seen (duplicates, reordering).
    pub dropped_stale: u64,
    /// Announcements from new peers refused because the table was full.
    pub dropped_over_capacity: u64,
    /// Announcements sent (or written, for etcd).
    pub sent: u64,
    /// Sends that failed (and were retried at the next interval).
    pub send_errors: u64,
}

/// The live counters behind [`DiscoveryStats`], shared by a backend's task
/// and its handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) dropped_malformed: AtomicU64,
    pub(crate) dropped_unauthenticated: AtomicU64,
    pub(crate) dropped_stale: AtomicU64,
    pub(crate) dropped_over_capacity: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) send_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what an observation of the liveness table said (stale, full,
    /// accepted).
    pub(crate) fn count_observation(&self, observation: &Observation) {
        match observation {
            Observation::Stale => Counters::bump(&self.dropped_stale),
            Observation::TableFull => Counters::bump(&self.dropped_over_capacity),
            Observation::Event(_) | Observation::Refreshed => Counters::bump(&self.accepted),
        }
    }

    pub(crate) fn snapshot(&self) -> DiscoveryStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DiscoveryStats {
            received: get(&self.received),
            accepted: get(&self.accepted),
            dropped_malformed: get(&self.dropped_malformed),
            dropped_unauthenticated: get(&self.dropped_unauthenticated),
            dropped_stale: get(&self.dropped_stale),
            dropped_over_capacity: get(&self.dropped_over_capacity),
            sent: get(&self.sent),
            send_errors: get(&self.send_errors),
        }
    }
}

/// Why a discovery backend could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// `start` was called on a running backend.
    #[error("{backend} discovery is already running; call leave() before starting it again")]
    AlreadyStarted {
        /// The backend.
        backend: &'static str,
    },
    /// `update` or `leave` was called before `start` (or after `leave`).
    #[error("{backend} discovery is not running; call start() first")]
    NotStarted {
        /// The backend.
        backend: &'static str,
    },
    /// The configuration cannot work.
    #[error("invalid {backend} discovery configuration: {reason}")]
    Config {
        /// The backend.
        backend: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A configured endpoint is not a valid Plexus URL.
    #[error("invalid endpoint {url:?} in {backend} discovery: {reason}")]
    InvalidEndpoint {
        /// The backend.
        backend: &'static str,
        /// The offending URL.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The announcement breaks a limit of the announcement format.
    #[error("announcement cannot be encoded: {0}")]
    Announcement(#[from] EncodeError),
    /// A socket operation failed.
    #[error("beacon socket: {context}: {source}")]
    Io {
        /// What was being done (names the group, port and interface).
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backend's service (e.g. etcd) failed.
    #[error("{backend} discovery: {context}: {source}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// What was being done (names the endpoints or key).
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend's task stopped unexpectedly (it panicked or was aborted).
    #[error("{backend} discovery task has stopped")]
    Stopped {
        /// The backend.
        backend: &'static str,
    },
}
