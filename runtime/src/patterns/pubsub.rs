//! Publish/subscribe on typed topics, with a subscriber-chosen overflow policy.
//!
//! Owns the [`Topic`] contract (declared with [`topic!`](crate::topic)), the
//! serving side [`Publisher`], the receiving side [`Subscriber`], and the
//! little wire format between them. A subscription is one server stream per
//! publisher (`<package>.<Topic>/subscribe`), so every event rides the
//! connection's per-stream credit. The publisher keeps a bounded queue per
//! subscription, filled by `publish` and drained into its stream by the
//! subscription's own task, so subscribers never wait on one another. A
//! subscriber in block mode that stops reading stops returning credit, its
//! queue fills, and `publish` waits for it — at most the send timeout, after
//! which it is dropped. One that asked to drop keeps draining its stream into
//! its own bounded queue and counts what it throws away; if it falls behind
//! anyway (or hangs), the publisher's queue for it drops by the same policy
//! and tells it how many, and a hung one is dropped after the send timeout.
//!
//! Wire: the request is a MessagePack map `{ filters: [string], overflow:
//! u8 }` (overflow `0` block, `1` drop oldest, `2` drop newest; absent means
//! block). Each stream item starts with a tag byte: `0` — subscribed (sent
//! once, before any event, when the publisher registered the subscription);
//! `1` — an event: varint topic length, the topic's UTF-8 bytes, then the
//! event encoded by the topic's codec; `2` — skipped: a varint count of events
//! the publisher dropped for this subscriber (under its drop policy) since
//! the previous item.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, CodecError, MsgPack};
use crate::connection::Outbound;
use crate::descriptor::{Contract, ServiceDescriptor};
use crate::node::{Client, PeerChange, PeerSet};
use crate::router::IntoRouter;
use crate::wire::varint;
use crate::{CallOptions, Connection, NodeId, Reject, Router};

/// Longest topic a publisher sends or a filter may be, in bytes.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Most filters one subscription may carry.
pub const MAX_FILTERS: usize = 64;

/// The default capacity of a subscriber's queue, in events.
pub const DEFAULT_CAPACITY: usize = 1024;

const TAG_SUBSCRIBED: u8 = 0;
const TAG_EVENT: u8 = 1;
const TAG_SKIPPED: u8 = 2;

/// A topic contract: a named stream of typed events. Declare one with
/// [`topic!`](crate::topic); the event type may be a serde type (MessagePack,
/// the default) or a `.proto` message (`codec = plexus::codec::Prost`). In a
/// `.proto` file, a service marked `option (plexus.topic) = true;` with one
/// method `rpc Subscribe(google.protobuf.Empty) returns (stream Event)` makes
/// `plexus_codegen::compile_protos` generate the same declaration.
///
/// Its descriptor has the roles `publisher` and `subscriber` and one server
/// stream operation, `subscribe`, served by publishers; nodes announce it and
/// link subscribers to publishers like any other service.
pub trait Topic: Contract + Send + Sync + 'static {
    /// What is published.
    type Event: Send + 'static;
    /// How events are encoded.
    type Codec: Codec<Self::Event>;
}

/// Declares a [`Topic`](crate::patterns::Topic): a unit struct naming the
/// topic, its package, its event type and optionally its codec.
///
/// ```
/// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
/// pub struct Reading { pub sensor: String, pub celsius: f32 }
///
/// plexus::topic! {
///     /// Sensor readings, published on topics like `site/room/sensor`.
///     pub struct Telemetry in "telemetry" => Reading;
/// }
///
/// use plexus::contract::Contract;
/// assert_eq!(Telemetry::DESCRIPTOR.full_name, "telemetry.Telemetry");
/// assert_eq!(Telemetry::DESCRIPTOR.roles, ["publisher", "subscriber"]);
/// ```
///
/// With a `.proto` message: `pub struct Stock in "inventory" => pb::StockEvent,
/// codec = plexus::codec::Prost;`.
#[macro_export]
macro_rules! topic {
    ($(#[$meta:meta])* $vis:vis struct $name:ident in $package:literal => $event:ty $(, codec = $codec:ty)? $(;)?) => {
        $crate::topic!(@emit [$(#[$meta])*] $vis $name $package ($event) ($($codec)?));
    };
    (@emit [$($meta:tt)*] $vis:vis $name:ident $package:literal ($event:ty) ()) => {
        $crate::topic!(@emit [$($meta)*] $vis $name $package ($event) ($crate::codec::MsgPack));
    };
    (@emit [$($meta:tt)*] $vis:vis $name:ident $package:literal ($event:ty) ($codec:ty)) => {
        $($meta)*
        #[derive(Clone, Copy, Debug, Default)]
        $vis struct $name;

        impl $crate::contract::Contract for $name {
            const DESCRIPTOR: &'static $crate::contract::ServiceDescriptor = &$crate::contract::ServiceDescriptor {
                package: $package,
                name: stringify!($name),
                full_name: concat!($package, ".", stringify!($name)),
                version: 1,
                docs: "",
                roles: &["publisher", "subscriber"],
                methods: &[$crate::contract::MethodDescriptor {
                    name: "subscribe",
                    op: concat!($package, ".", stringify!($name), "/subscribe"),
                    kind: $crate::contract::CallKind::ServerStream,
                    role: Some("publisher"),
                    idempotent: false,
                    request: "plexus.Subscribe",
                    reply: stringify!($event),
                    docs: "Events on the topics matching the filters, from now on.",
                    params: &[],
                    json_schemas: $crate::contract::JsonSchemas::none,
                }],
                codec: <$codec as $crate::codec::Format>::NAME,
                fingerprint: $crate::patterns::topic_fingerprint(&[
                    concat!($package, ".", stringify!($name)),
                    <$codec as $crate::codec::Format>::NAME,
                ]),
                file_descriptor_set: None,
            };
        }

        impl $crate::patterns::Topic for $name {
            type Event = $event;
            type Codec = $codec;
        }
    };
}

/// The schema fingerprint of a topic declared with [`topic!`](crate::topic):
/// FNV-1a over its full name and codec (event types are named differently
/// in different crates, so they do not take part).
#[doc(hidden)]
pub const fn topic_fingerprint(parts: &[&str]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ 0x7470_6963; // "topic"
    let mut i = 0;
    while i < parts.len() {
        let bytes = parts[i].as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            hash = (hash ^ bytes[j] as u64).wrapping_mul(PRIME);
            j += 1;
        }
        hash = (hash ^ 0xff).wrapping_mul(PRIME);
        i += 1;
    }
    hash
}

fn subscribe_op<T: Topic>() -> &'static str {
    T::DESCRIPTOR
        .methods
        .first()
        .map(|m| m.op)
        .unwrap_or(T::DESCRIPTOR.full_name)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a plain collection update; a panic cannot tear one.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SubscribeRequest {
    filters: Vec<String>,
    /// The subscriber's [`Overflow`], as [`Overflow::to_wire`]; absent
    /// (older subscribers) means block.
    #[serde(default)]
    overflow: u8,
}

/// Whether `topic` matches any of `filters` (no filters, or an empty one,
/// match everything).
///
/// A filter matches the topics that start with it, where each `*` in the
/// filter stands for any run of characters within one `/`-separated
/// segment (possibly none):
///
/// ```
/// use plexus::patterns::topic_matches;
///
/// let f = |s: &str| vec![s.to_owned()];
/// assert!(topic_matches(&f("site-a/"), "site-a/hall/t1"));
/// assert!(topic_matches(&f("site-*/hall"), "site-b/hall/t1"));
/// assert!(topic_matches(&f("*/hall/"), "site-a/hall/t2"));
/// assert!(!topic_matches(&f("*/hall"), "site-a/b/hall")); // `*` stays in its segment
/// ```
pub fn topic_matches(filters: &[String], topic: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| filter_matches(f, topic))
}

/// One filter against one topic; see [`topic_matches`].
fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut parts = filter.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = topic.strip_prefix(first) else {
        return false;
    };
    for part in parts {
        // The `*` before `part` may skip up to the end of this segment; the
        // leftmost place `part` fits leaves the most topic for what follows.
        let segment_end = rest.find('/').unwrap_or(rest.len());
        let found = (0..=segment_end)
            .filter(|&skip| rest.is_char_boundary(skip))
            .find(|&skip| rest[skip..].starts_with(part));
        match found {
            Some(skip) => rest = &rest[skip + part.len()..],
            None => return false,
        }
    }
    true
}

/// Why [`Publisher::publish`] failed. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic string is longer than [`MAX_TOPIC_LEN`].
    #[error("topic of {len} bytes is longer than the limit of {max} (shorten the topic)")]
    TopicTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The event could not be encoded.
    #[error(transparent)]
    Encode(#[from] CodecError),
    /// The publisher was closed.
    #[error("the publisher is closed")]
    Closed,
}

/// The default [`PublisherBuilder::queue`]: events queued per subscriber.
pub const DEFAULT_PUBLISHER_QUEUE: usize = 256;

/// The default [`PublisherBuilder::send_timeout`].
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of events queued for one subscriber, whatever the count.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// A subscriber the publisher gave up on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// The subscribing node.
    pub peer: NodeId,
    /// Why, in words.
    pub reason: String,
}

/// The publisher's side of one subscription: the events queued for it and
/// how it wants overflow handled.
struct Subscription {
    peer: NodeId,
    filters: Vec<String>,
    overflow: Overflow,
    queue: Mutex<Queued>,
    /// Something was queued (the subscription's sender waits on it).
    ready: Notify,
    /// Something was sent (block-mode publishes wait on it).
    room: Notify,
    /// Cancelled when the subscriber is gone or evicted: its handler ends.
    gone: CancellationToken,
}

#[derive(Default)]
struct Queued {
    items: VecDeque<Bytes>,
    bytes: usize,
    /// Events dropped here since the last one sent, reported to the
    /// subscriber before the next.
    skipped: u64,
}

/// What became of an event offered to one subscription.
enum Offer {
    Queued,
    /// Dropped (or made room by dropping another) under the subscriber's
    /// drop policy.
    Dropped,
    /// Block mode and no room.
    Full,
}

impl Subscription {
    fn offer(&self, item: &Bytes, capacity: usize) -> Offer {
        let mut q = lock(&self.queue);
        let full = q.items.len() >= capacity || q.bytes + item.len() > QUEUE_BYTES;
        if full && !q.items.is_empty() {
            match self.overflow {
                Overflow::Block => return Offer::Full,
                Overflow::DropNewest => {
                    q.skipped += 1;
                    return Offer::Dropped;
                }
                Overflow::DropOldest => {
                    if let Some(old) = q.items.pop_front() {
                        q.bytes -= old.len();
                        q.skipped += 1;
                    }
                }
            }
        }
        q.bytes += item.len();
        q.items.push_back(item.clone());
        drop(q);
        self.ready.notify_one();
        if full {
            Offer::Dropped
        } else {
            Offer::Queued
        }
    }

    /// The next thing to send: a skipped-events report first, if any.
    fn next(&self) -> Option<Bytes> {
        let mut q = lock(&self.queue);
        if q.skipped > 0 {
            let mut marker = BytesMut::with_capacity(11);
            marker.put_u8(TAG_SKIPPED);
            varint::put(&mut marker, q.skipped);
            q.skipped = 0;
            return Some(marker.freeze());
        }
        let item = q.items.pop_front()?;
        q.bytes -= item.len();
        drop(q);
        self.room.notify_waiters();
        Some(item)
    }
}

#[derive(Default)]
struct Hub {
    subs: Mutex<Vec<(u64, Arc<Subscription>)>>,
    next: AtomicU64,
    closed: CancellationToken,
    published: AtomicU64,
    evicted: AtomicU64,
    evictions: std::sync::OnceLock<tokio::sync::broadcast::Sender<Eviction>>,
    queue: usize,
    send_timeout: Duration,
}

impl Hub {
    fn evictions(&self) -> &tokio::sync::broadcast::Sender<Eviction> {
        self.evictions
            .get_or_init(|| tokio::sync::broadcast::channel(64).0)
    }

    /// Gives up on a subscriber that holds its events up: it is dropped,
    /// counted and reported.
    fn evict(&self, sub: &Subscription, reason: String) {
        if sub.gone.is_cancelled() {
            return;
        }
        sub.gone.cancel();
        self.evicted.fetch_add(1, Ordering::Relaxed);
        crate::observe::lifecycle::pubsub_evicted();
        tracing::warn!(peer = %sub.peer, "subscriber dropped: {reason}");
        let _ = self.evictions().send(Eviction {
            peer: sub.peer,
            reason,
        });
    }
}

/// Removes a subscription from the hub when its handler ends, however it ends.
struct Registered {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.hub.subs).retain(|(id, _)| *id != self.id);
    }
}

/// A publisher's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// Events published so far.
    pub published: u64,
    /// Subscribers registered right now.
    pub subscribers: usize,
    /// Subscribers dropped for holding their events up longer than the
    /// send timeout.
    pub evicted: u64,
}

/// Configures a [`Publisher`]; see [`Publisher::builder`].
#[must_use]
#[derive(Debug)]
pub struct PublisherBuilder<T> {
    queue: usize,
    send_timeout: Duration,
    topic: PhantomData<fn() -> T>,
}

impl<T: Topic> PublisherBuilder<T> {
    /// Events queued per subscriber between `publish` and its stream (at
    /// least 1); [`DEFAULT_PUBLISHER_QUEUE`] by default, and never more than
    /// 8 MiB of them. A subscriber in drop mode that falls this far behind
    /// loses events here, by its own policy, and is told how many; one in
    /// block mode makes `publish` wait.
    pub fn queue(mut self, events: usize) -> Self {
        self.queue = events.max(1);
        self
    }

    /// How long one subscriber may hold its events up before it is dropped
    /// (counted in [`PublisherStats::evicted`], reported by
    /// [`Publisher::evictions`]): in drop mode, a send to it that gets no
    /// credit (its process or link is hung — a slow reader in drop mode
    /// keeps draining its stream); in block mode, a `publish` waiting for
    /// room in its queue. So a block-mode subscriber stalls publishing for
    /// at most this long. [`DEFAULT_SEND_TIMEOUT`] (5 s) by default.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// The publisher.
    pub fn build(self) -> Publisher<T> {
        Publisher {
            hub: Arc::new(Hub {
                queue: self.queue,
                send_timeout: self.send_timeout,
                ..Hub::default()
            }),
            topic: PhantomData,
        }
    }
}

/// The serving side of a [`Topic`]: serve it on a node (`serve_as(publisher.clone(),
/// "publisher")`) or any endpoint, then [`publish`](Self::publish). Clones
/// share the subscribers.
///
/// Each event is encoded once and queued for every subscriber whose filters
/// match its topic; each subscription sends from its own queue, so one
/// subscriber never holds up another. `publish` returns once the event is
/// queued for each of them. A subscriber in block mode whose queue is full
/// makes `publish` wait for it (backpressure), at most the send timeout;
/// subscribers in drop mode never do — when one falls behind, its queue
/// drops by its own policy and it is told how many it missed. A subscriber
/// that holds its events up longer than the send timeout (a hung process or
/// link) is dropped. Events a subscriber registered after `publish` started
/// do not reach it; events from one publishing task reach each subscriber in
/// order.
pub struct Publisher<T> {
    hub: Arc<Hub>,
    topic: PhantomData<fn() -> T>,
}

impl<T> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Publisher {
            hub: self.hub.clone(),
            topic: PhantomData,
        }
    }
}

impl<T: Topic> Default for Publisher<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Topic> std::fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &T::DESCRIPTOR.full_name)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T: Topic> Publisher<T> {
    /// A publisher with no subscribers yet and the default queue and send
    /// timeout.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts configuring a publisher.
    pub fn builder() -> PublisherBuilder<T> {
        PublisherBuilder {
            queue: DEFAULT_PUBLISHER_QUEUE,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            topic: PhantomData,
        }
    }

    /// How many subscribers are registered.
    pub fn subscribers(&self) -> usize {
        lock(&self.hub.subs).len()
    }

    /// The subscribers' node ids, one entry per subscription.
    pub fn subscriber_ids(&self) -> Vec<NodeId> {
        lock(&self.hub.subs).iter().map(|(_, s)| s.peer).collect()
    }

    /// Events published so far.
    pub fn published(&self) -> u64 {
        self.hub.published.load(Ordering::Relaxed)
    }

    /// All counters.
    pub fn stats(&self) -> PublisherStats {
        PublisherStats {
            published: self.published(),
            subscribers: self.subscribers(),
            evicted: self.hub.evicted.load(Ordering::Relaxed),
        }
    }

    /// Every subscriber dropped for holding its events up, from now on.
    pub fn evictions(&self) -> tokio::sync::broadcast::Receiver<Eviction> {
        self.hub.evictions().subscribe()
    }

    /// Publishes `event` on `topic` to every subscriber whose filters match;
    /// returns how many subscribers it was handed to (queued, or dropped
    /// under a subscriber's own drop policy). A subscriber that is gone, or
    /// is dropped now for stalling, is not counted.
    pub async fn publish(&self, topic: &str, event: &T::Event) -> Result<usize, PublishError> {
        if self.hub.closed.is_cancelled() {
            return Err(PublishError::Closed);
        }
        if topic.len() > MAX_TOPIC_LEN {
            return Err(PublishError::TopicTooLong {
                len: topic.len(),
                max: MAX_TOPIC_LEN,
            });
        }
        let payload = T::Codec::encode(event)?;
        let mut item = BytesMut::with_capacity(
            1 + varint::len(topic.len() as u64) + topic.len() + payload.len(),
        );
        item.put_u8(TAG_EVENT);
        varint::put(&mut item, topic.len() as u64);
        item.put_slice(topic.as_bytes());
        item.put_slice(&payload);
        let item = item.freeze();
        let targets: Vec<Arc<Subscription>> = lock(&self.hub.subs)
            .iter()
            .filter(|(_, s)| !s.gone.is_cancelled() && topic_matches(&s.filters, topic))
            .map(|(_, s)| s.clone())
            .collect();
        self.hub.published.fetch_add(1, Ordering::Relaxed);
        let mut handed = 0;
        let mut blocked = Vec::new();
        for sub in targets {
            match sub.offer(&item, self.hub.queue) {
                Offer::Queued => handed += 1,
                Offer::Dropped => {
                    crate::observe::lifecycle::pubsub_dropped("publisher", 1);
                    handed += 1;
                }
                Offer::Full => blocked.push(sub),
            }
        }
        if !blocked.is_empty() {
            let waits = blocked.iter().map(|sub| self.wait_for_room(sub, &item));
            let queued = futures_util::future::join_all(waits).await;
            handed += queued.into_iter().filter(|ok| *ok).count();
        }
        Ok(handed)
    }

    /// Block mode: waits for room in `sub`'s queue for `item`, at most the
    /// send timeout, then drops the subscriber.
    async fn wait_for_room(&self, sub: &Subscription, item: &Bytes) -> bool {
        let hub = &self.hub;
        let waited = tokio::time::timeout(hub.send_timeout, async {
            loop {
                let room = sub.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if sub.gone.is_cancelled() {
                    return false;
                }
                if !matches!(sub.offer(item, hub.queue), Offer::Full) {
                    return true;
                }
                tokio::select! {
                    () = room => {}
                    () = sub.gone.cancelled() => return false,
                }
            }
        })
        .await;
        match waited {
            Ok(queued) => queued,
            Err(_) => {
                hub.evict(
                    sub,
                    format!(
                        "block-mode subscriber read nothing for {:?} with its queue full",
                        hub.send_timeout
                    ),
                );
                false
            }
        }
    }

    /// Ends every subscription (their streams end cleanly) and refuses
    /// further publishing and subscribing.
    pub fn close(&self) {
        self.hub.closed.cancel();
    }

    /// The router serving the topic's `subscribe` operation, with its
    /// descriptor.
    pub fn router(&self) -> Router {
        let hub = self.hub.clone();
        Router::new()
            .server_stream(subscribe_op::<T>(), move |ctx, body, out| {
                let hub = hub.clone();
                async move {
                    if hub.closed.is_cancelled() {
                        return Err(Reject::new(1, "the publisher is closed"));
                    }
                    let request: SubscribeRequest =
                        crate::codec::decode_request::<MsgPack, _>(body)?;
                    if request.filters.len() > MAX_FILTERS {
                        return Err(Reject::invalid_payload(format!(
                            "{} filters; a subscription carries at most {MAX_FILTERS}",
                            request.filters.len()
                        )));
                    }
                    if let Some(long) = request.filters.iter().find(|f| f.len() > MAX_TOPIC_LEN) {
                        return Err(Reject::invalid_payload(format!(
                            "filter of {} bytes; the limit is {MAX_TOPIC_LEN}",
                            long.len()
                        )));
                    }
                    let sub = Arc::new(Subscription {
                        peer: ctx.peer().node_id(),
                        filters: request.filters,
                        overflow: Overflow::from_wire(request.overflow),
                        queue: Mutex::default(),
                        ready: Notify::new(),
                        room: Notify::new(),
                        gone: CancellationToken::new(),
                    });
                    let id = hub.next.fetch_add(1, Ordering::Relaxed);
                    lock(&hub.subs).push((id, sub.clone()));
                    let _registered = Registered {
                        hub: hub.clone(),
                        id,
                    };
                    tokio::select! {
                        () = ctx.cancelled() => {}
                        () = sub.gone.cancelled() => {}
                        () = hub.closed.cancelled() => {}
                        () = send_queued(&hub, &sub, out) => {}
                    }
                    Ok(())
                }
            })
            .with_descriptor(T::DESCRIPTOR)
    }
}

/// A subscription's sender: the "subscribed" marker (before any event:
/// events published from registration on are queued behind it), then
/// whatever is queued, as credit allows. Ends when the stream fails, or when
/// one send waits longer than the send timeout (the subscriber is dropped).
async fn send_queued(hub: &Hub, sub: &Subscription, mut out: Outbound) {
    let timeout = hub.send_timeout;
    let mut next = Some(Bytes::from_static(&[TAG_SUBSCRIBED]));
    loop {
        let Some(item) = next.take().or_else(|| sub.next()) else {
            let ready = sub.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            next = sub.next();
            if next.is_none() {
                ready.await;
            }
            continue;
        };
        match tokio::time::timeout(timeout, out.send(item)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %sub.peer, error = %e, "subscriber gone");
                sub.gone.cancel();
                return;
            }
            Err(_) => {
                hub.evict(
                    sub,
                    format!(
                        "the subscriber returned no credit for {timeout:?} (hung or unreachable)"
                    ),
                );
                return;
            }
        }
    }
}

impl<T: Topic> IntoRouter for Publisher<T> {
    fn into_router(self) -> Router {
        self.router()
    }
}

impl<T: Topic> IntoRouter for &Publisher<T> {
    fn into_router(self) -> Router {
        self.router()
    }
}

/// What a subscriber does when events arrive faster than it reads them and
/// its queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Stop reading from the publishers, so they wait (backpressure).
    #[default]
    Block,
    /// Throw the oldest queued event away to make room, and count it.
    DropOldest,
    /// Throw the arriving event away, and count it.
    DropNewest,
}

impl Overflow {
    fn to_wire(self) -> u8 {
        match self {
            Overflow::Block => 0,
            Overflow::DropOldest => 1,
            Overflow::DropNewest => 2,
        }
    }

    fn from_wire(v: u8) -> Overflow {
        match v {
            1 => Overflow::DropOldest,
            2 => Overflow::DropNewest,
            _ => Overflow::Block,
        }
    }
}

/// An event as a subscriber receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Received<E> {
    /// The publishing node.
    pub publisher: NodeId,
    /// The topic it was published on.
    pub topic: String,
    /// The event.
    pub event: E,
}

/// A subscriber's counters; `arrived == taken + queued + dropped` at all times
/// (`taken` being what [`Subscriber::recv`] returned). Events a publisher
/// dropped for this subscriber under its drop policy while it was behind
/// (the publisher reports how many) count as arrived and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Events that arrived and decoded.
    pub arrived: u64,
    /// Events thrown away by the overflow policy, here or at a publisher.
    pub dropped: u64,
    /// Events waiting in the queue.
    pub queued: usize,
    /// Items that could not be decoded (a publisher with another event type
    /// or codec); not counted in `arrived`.
    pub undecodable: u64,
}

struct InboxState<E> {
    queue: VecDeque<Received<E>>,
    closed: bool,
}

/// The subscriber's bounded queue between its stream readers and `recv`.
struct Inbox<E> {
    state: Mutex<InboxState<E>>,
    capacity: usize,
    overflow: Overflow,
    readable: Notify,
    writable: Notify,
    arrived: AtomicU64,
    dropped: AtomicU64,
    undecodable: AtomicU64,
    /// Publishers whose subscription is confirmed.
    live: Mutex<BTreeSet<NodeId>>,
    live_changed: Notify,
}

impl<E> Inbox<E> {
    fn new(capacity: usize, overflow: Overflow) -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                queue: VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY)),
                closed: false,
            }),
            capacity,
            overflow,
            readable: Notify::new(),
            writable: Notify::new(),
            arrived: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            live: Mutex::new(BTreeSet::new()),
            live_changed: Notify::new(),
        }
    }

    async fn push(&self, item: Received<E>) {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        let mut item = Some(item);
        loop {
            let writable = self.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            {
                let mut state = lock(&self.state);
                if state.closed {
                    // Closed by the subscriber: what arrives now is unwanted
                    // by design, yet counted.
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if state.queue.len() < self.capacity {
                    state.queue.extend(item.take());
                    drop(state);
                    self.readable.notify_one();
                    return;
                }
                match self.overflow {
                    Overflow::DropNewest => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        crate::observe::lifecycle::pubsub_dropped("subscriber", 1);
                        return;
                    }
                    Overflow::DropOldest => {
                        state.queue.pop_front();
                        state.queue.extend(item.take());
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        crate::observe::lifecycle::pubsub_dropped("subscriber", 1);
                        return;
                    }
                    Overflow::Block => {}
                }
            }
            writable.await;
        }
    }

    fn try_pop(&self) -> Result<Option<Received<E>>, ()> {
        let mut state = lock(&self.state);
        match state.queue.pop_front() {
            Some(item) => {
                drop(state);
                self.writable.notify_waiters();
                Ok(Some(item))
            }
            None if state.closed => Err(()),
            None => Ok(None),
        }
    }

    async fn pop(&self) -> Option<Received<E>> {
        loop {
            let readable = self.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            match self.try_pop() {
                Ok(Some(item)) => {
                    // Another reader may be waiting for what is left.
                    if !lock(&self.state).queue.is_empty() {
                        self.readable.notify_one();
                    }
                    return Some(item);
                }
                Err(()) => return None,
                Ok(None) => readable.await,
            }
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.readable.notify_waiters();
        self.writable.notify_waiters();
    }

    fn set_live(&self, peer: NodeId, live: bool) {
        let mut set = lock(&self.live);
        if live {
            set.insert(peer);
        } else {
            set.remove(&peer);
        }
        drop(set);
        self.live_changed.notify_waiters();
    }
}

/// Marks a publisher's subscription gone when its reader ends, however it ends.
struct LiveGuard<E> {
    inbox: Arc<Inbox<E>>,
    peer: NodeId,
}

impl<E> Drop for LiveGuard<E> {
    fn drop(&mut self) {
        self.inbox.set_live(self.peer, false);
    }
}

/// Configures a [`Subscriber`]; see [`Subscriber::builder`].
#[must_use]
pub struct SubscriberBuilder<T> {
    filters: Vec<String>,
    overflow: Overflow,
    capacity: usize,
    topic: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for SubscriberBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberBuilder")
            .field("filters", &self.filters)
            .field("overflow", &self.overflow)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<T: Topic> SubscriberBuilder<T> {
    /// Receives only topics starting with `prefix`, where a `*` stands for
    /// any run of characters within one `/`-separated segment (see
    /// [`topic_matches`]). Several filters: any of them; none: every topic.
    pub fn filter(mut self, prefix: impl Into<String>) -> Self {
        self.filters.push(prefix.into());
        self
    }

    /// What to do when the queue is full; [`Overflow::Block`] by default.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// How many events the queue holds (at least 1); [`DEFAULT_CAPACITY`]
    /// by default.
    pub fn capacity(mut self, events: usize) -> Self {
        self.capacity = events.max(1);
        self
    }

    fn request(&self) -> Bytes {
        let request = SubscribeRequest {
            filters: self.filters.clone(),
            overflow: self.overflow.to_wire(),
        };
        // A struct of strings always encodes.
        <MsgPack as Codec<SubscribeRequest>>::encode(&request).unwrap_or_default()
    }

    /// Subscribes to every member of `publishers`, now and as they join;
    /// a publisher leaving ends its subscription. Needs a tokio runtime.
    pub fn follow(self, publishers: PeerSet<TopicClient<T>>) -> Subscriber<T> {
        let inbox = Arc::new(Inbox::new(self.capacity, self.overflow));
        let request = self.request();
        let task = tokio::spawn(follow::<T>(publishers, request, inbox.clone()));
        Subscriber {
            inbox,
            task: task.abort_handle(),
            filters: self.filters,
        }
    }

    /// Subscribes to the one publisher at the other end of `connection`.
    /// Needs a tokio runtime.
    pub fn connect(self, connection: Connection) -> Subscriber<T> {
        let inbox = Arc::new(Inbox::new(self.capacity, self.overflow));
        let request = self.request();
        let task = tokio::spawn(read_from::<T>(connection, request, inbox.clone()));
        Subscriber {
            inbox,
            task: task.abort_handle(),
            filters: self.filters,
        }
    }
}

/// Keeps one subscription per member of the publisher set.
async fn follow<T: Topic>(
    publishers: PeerSet<TopicClient<T>>,
    request: Bytes,
    inbox: Arc<Inbox<T::Event>>,
) {
    let mut changes = publishers.changes();
    let mut readers: HashMap<NodeId, CancellationToken> = HashMap::new();
    let mut tasks: JoinSet<NodeId> = JoinSet::new();
    let start = |tasks: &mut JoinSet<NodeId>,
                 readers: &mut HashMap<NodeId, CancellationToken>,
                 peer: NodeId,
                 conn: Connection| {
        let (request, inbox) = (request.clone(), inbox.clone());
        let left = CancellationToken::new();
        let stop = left.clone();
        tasks.spawn(async move {
            read_until::<T>(conn, request, inbox, stop).await;
            peer
        });
        readers.insert(peer, left);
    };
    for (peer, client) in publishers.list() {
        start(&mut tasks, &mut readers, peer, client.connection);
    }
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(PeerChange::Joined(peer)) => {
                    if !readers.contains_key(&peer) {
                        if let Some(client) = publishers.get(peer) {
                            start(&mut tasks, &mut readers, peer, client.connection);
                        }
                    }
                }
                Some(PeerChange::Left(peer)) => {
                    // The reader keeps what already arrived, then ends.
                    if let Some(left) = readers.remove(&peer) {
                        left.cancel();
                    }
                }
                None => break,
            },
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(peer) = ended {
                    // Only if it is this reader's entry: the peer may have
                    // left and come back, with a new reader, meanwhile.
                    if readers.get(&peer).is_some_and(CancellationToken::is_cancelled) {
                        readers.remove(&peer);
                    }
                }
            }
        }
    }
}

/// Reads one publisher's stream into the inbox until it ends.
async fn read_from<T: Topic>(conn: Connection, request: Bytes, inbox: Arc<Inbox<T::Event>>) {
    read_until::<T>(conn, request, inbox, CancellationToken::new()).await;
}

/// How long a subscription to a publisher that left the set stays open for
/// the events it published before it left (its leave can overtake them).
const LEFT_GRACE: Duration = Duration::from_secs(2);

/// Reads one publisher's stream into the inbox until it ends, or until
/// `left` (the publisher left the set) and then at most [`LEFT_GRACE`]
/// more: a publisher that leaves gracefully ends its streams after its last
/// events, and those still reach the inbox.
async fn read_until<T: Topic>(
    conn: Connection,
    request: Bytes,
    inbox: Arc<Inbox<T::Event>>,
    left: CancellationToken,
) {
    let publisher = conn.peer().node_id();
    let _live = LiveGuard {
        inbox: inbox.clone(),
        peer: publisher,
    };
    let mut stream = match conn
        .server_stream(subscribe_op::<T>(), request, CallOptions::new())
        .await
    {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%publisher, error = %e, "subscription failed");
            return;
        }
    };
    let mut until: Option<tokio::time::Instant> = None;
    loop {
        let item = match until {
            None => tokio::select! {
                biased;
                item = stream.recv() => item,
                () = left.cancelled() => {
                    until = Some(tokio::time::Instant::now() + LEFT_GRACE);
                    continue;
                }
            },
            Some(at) => match tokio::time::timeout_at(at, stream.recv()).await {
                Ok(item) => item,
                Err(_) => return,
            },
        };
        let Some(item) = item else { return };
        let mut item = match item {
            Ok(item) => item,
            Err(e) => {
                tracing::debug!(%publisher, error = %e, "subscription ended");
                return;
            }
        };
        match parse_item(&mut item) {
            Some(Item::Subscribed) => inbox.set_live(publisher, true),
            Some(Item::Skipped(n)) => {
                // Dropped at the publisher, by this subscriber's own policy,
                // while it was behind: counted as if they arrived and were
                // dropped here.
                inbox.arrived.fetch_add(n, Ordering::Relaxed);
                inbox.dropped.fetch_add(n, Ordering::Relaxed);
            }
            Some(Item::Event(topic)) => match T::Codec::decode(item) {
                Ok(event) => {
                    inbox
                        .push(Received {
                            publisher,
                            topic,
                            event,
                        })
                        .await
                }
                Err(e) => {
                    tracing::debug!(%publisher, error = %e, "undecodable event");
                    inbox.undecodable.fetch_add(1, Ordering::Relaxed);
                }
            },
            None => {
                tracing::debug!(%publisher, "malformed subscription item");
                inbox.undecodable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One item of a subscription stream.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    /// The publisher registered the subscription.
    Subscribed,
    /// An event on this topic; its payload is left in the item.
    Event(String),
    /// The publisher dropped this many events for this subscriber.
    Skipped(u64),
}

/// Splits a stream item; `None` when malformed.
fn parse_item(item: &mut Bytes) -> Option<Item> {
    match *item.first()? {
        TAG_SUBSCRIBED if item.len() == 1 => Some(Item::Subscribed),
        TAG_EVENT => {
            item.advance(1);
            let len = usize::try_from(varint::get(item, "topic length").ok()?).ok()?;
            if len > MAX_TOPIC_LEN || len > item.len() {
                return None;
            }
            let topic = std::str::from_utf8(&item[..len]).ok()?.to_owned();
            item.advance(len);
            Some(Item::Event(topic))
        }
        TAG_SKIPPED => {
            item.advance(1);
            let n = varint::get(item, "skipped").ok()?;
            item.is_empty().then_some(Item::Skipped(n))
        }
        _ => None,
    }
}

/// The receiving side of a [`Topic`]: events from its publishers, filtered
/// by topic prefix, through a bounded queue with an [`Overflow`] policy.
///
/// A subscriber gets only events published after its subscription was
/// registered ([`wait_publishers`](Self::wait_publishers) waits for that).
/// Dropping it, or [`close`](Self::close), ends its subscriptions.
///
/// ```no_run
/// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
/// # pub struct Reading { pub celsius: f32 }
/// # plexus::topic! { pub struct Telemetry in "telemetry" => Reading; }
/// # async fn demo(node: plexus::Node) {
/// use plexus::patterns::{Overflow, Subscriber, TopicClient};
///
/// let readings = Subscriber::<Telemetry>::builder()
///     .filter("site-a/")
///     .overflow(Overflow::DropOldest)
///     .capacity(256)
///     .follow(node.peers::<TopicClient<Telemetry>>());
/// while let Some(r) = readings.recv().await {
///     println!("{} from {}: {:?} ({} dropped so far)", r.topic, r.publisher, r.event, readings.dropped());
/// }
/// # }
/// ```
pub struct Subscriber<T: Topic> {
    inbox: Arc<Inbox<T::Event>>,
    task: AbortHandle,
    filters: Vec<String>,
}

impl<T: Topic> std::fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("topic", &T::DESCRIPTOR.full_name)
            .field("filters", &self.filters)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T: Topic> Drop for Subscriber<T> {
    fn drop(&mut self) {
        self.task.abort();
        self.inbox.close();
    }
}

impl<T: Topic> Subscriber<T> {
    /// Starts configuring a subscriber: no filters (every topic),
    /// [`Overflow::Block`], [`DEFAULT_CAPACITY`] events.
    pub fn builder() -> SubscriberBuilder<T> {
        SubscriberBuilder {
            filters: Vec::new(),
            overflow: Overflow::default(),
            capacity: DEFAULT_CAPACITY,
            topic: PhantomData,
        }
    }

    /// The next event; `None` once closed and drained. Safe to call from
    /// several tasks (each event goes to one of them).
    pub async fn recv(&self) -> Option<Received<T::Event>> {
        self.inbox.pop().await
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Received<T::Event>> {
        self.inbox.try_pop().ok().flatten()
    }

    /// Events thrown away by the overflow policy so far.
    pub fn dropped(&self) -> u64 {
        self.inbox.dropped.load(Ordering::Relaxed)
    }

    /// All counters.
    pub fn stats(&self) -> SubscriberStats {
        SubscriberStats {
            arrived: self.inbox.arrived.load(Ordering::Relaxed),
            dropped: self.dropped(),
            queued: lock(&self.inbox.state).queue.len(),
            undecodable: self.inbox.undecodable.load(Ordering::Relaxed),
        }
    }

    /// The publishers this subscriber is registered with right now.
    pub fn publishers(&self) -> Vec<NodeId> {
        lock(&self.inbox.live).iter().copied().collect()
    }

    /// Waits until registered with at least `count` publishers (bound it with
    /// a timeout); from then on, everything they publish reaches it.
    pub async fn wait_publishers(&self, count: usize) {
        loop {
            let changed = self.inbox.live_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if lock(&self.inbox.live).len() >= count {
                return;
            }
            changed.await;
        }
    }

    /// Ends the subscriptions; what is queued can still be received, then
    /// `recv` returns `None`.
    pub fn close(&self) {
        self.task.abort();
        self.inbox.close();
    }
}

/// A client for a topic's publishers, for [`PeerSet`]s: the node links it to
/// every peer publishing the topic (`node.peers::<TopicClient<Telemetry>>()`).
pub struct TopicClient<T> {
    connection: Connection,
    topic: PhantomData<fn() -> T>,
}

impl<T> Clone for TopicClient<T> {
    fn clone(&self) -> Self {
        TopicClient {
            connection: self.connection.clone(),
            topic: PhantomData,
        }
    }
}

impl<T: Topic> std::fmt::Debug for TopicClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicClient")
            .field("topic", &T::DESCRIPTOR.full_name)
            .field("peer", &self.connection.peer().label())
            .finish()
    }
}

impl<T: Topic> TopicClient<T> {
    /// The connection to the publisher.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

impl<T: Topic> Contract for TopicClient<T> {
    const DESCRIPTOR: &'static ServiceDescriptor = T::DESCRIPTOR;
}

impl<T: Topic> Client for TopicClient<T> {
    fn from_connection(connection: Connection) -> Self {
        TopicClient {
            connection,
            topic: PhantomData,
        }
    }

    fn with_call_options(self, _options: CallOptions) -> Self {
        // A subscription is one long-lived stream; per-call options (a
        // deadline) would end it.
        self
    }

    /// A topic has no unary or one-way operation to fan out.
    type Fanout = crate::node::Fanout;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_filters_match() {
        let filters = vec!["site-a/".to_owned(), "alarm".to_owned()];
        assert!(topic_matches(&filters, "site-a/room-1"));
        assert!(topic_matches(&filters, "alarms/fire"));
        assert!(!topic_matches(&filters, "site-b/room-1"));
        assert!(topic_matches(&[], "anything"));
        assert!(topic_matches(&[String::new()], "anything"));
    }

    #[test]
    fn wildcards_match_within_one_segment() {
        let m = |f: &str, t: &str| topic_matches(&[f.to_owned()], t);
        assert!(m("site-*/hall", "site-a/hall"));
        assert!(m("site-*/hall", "site-abc/hall/t1"));
        assert!(m("site-*/hall", "site-/hall"), "a star may match nothing");
        assert!(
            !m("site-*/hall", "site-a/b/hall"),
            "a star stays in its segment"
        );
        assert!(!m("site-*/hall", "site-a/room"));
        assert!(m("*/*/t1", "site-a/hall/t1"));
        assert!(!m("*/*/t1", "site-a/t1"));
        assert!(m("*", "anything/at/all"));
        assert!(m("a*c*e", "abcde"));
        assert!(
            m("a*b/c", "aab/c"),
            "the leftmost fit is not the only one tried"
        );
        assert!(m("a*ab", "aaab"));
        assert!(!m("a*x", "ab/x"));
        assert!(m("é*/z", "éà/z"), "multi-byte characters");
    }

    #[test]
    fn items_parse_and_malformed_ones_are_refused() {
        let mut marker = Bytes::from_static(&[TAG_SUBSCRIBED]);
        assert_eq!(parse_item(&mut marker), Some(Item::Subscribed));
        let mut event = Bytes::from_static(b"\x01\x03a/bpayload");
        assert_eq!(parse_item(&mut event), Some(Item::Event("a/b".to_owned())));
        let mut skipped = Bytes::from_static(b"\x02\xac\x02");
        assert_eq!(parse_item(&mut skipped), Some(Item::Skipped(300)));
        assert_eq!(&event[..], b"payload");
        for bad in [
            &b""[..],
            b"\x02",
            b"\x02\x01x",
            b"\x03",
            b"\x00x",
            b"\x01\x05ab",
            b"\x01\x02\xff\xfe",
        ] {
            assert_eq!(
                parse_item(&mut Bytes::copy_from_slice(bad)),
                None,
                "{bad:?}"
            );
        }
    }

    fn item(event: u32) -> Received<u32> {
        Received {
            publisher: NodeId(1),
            topic: "t".into(),
            event,
        }
    }

    /// An inbox of 2 that was offered events 0..5 without anyone reading.
    async fn overflowed(overflow: Overflow) -> Inbox<u32> {
        let inbox = Inbox::new(2, overflow);
        for i in 0..5 {
            inbox.push(item(i)).await;
        }
        inbox
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_and_counts() {
        let inbox = overflowed(Overflow::DropOldest).await;
        assert_eq!(inbox.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(inbox.pop().await.map(|r| r.event), Some(3));
        assert_eq!(inbox.pop().await.map(|r| r.event), Some(4));
    }

    #[tokio::test]
    async fn drop_newest_keeps_the_oldest_and_counts() {
        let inbox = overflowed(Overflow::DropNewest).await;
        assert_eq!(inbox.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(inbox.pop().await.map(|r| r.event), Some(0));
        assert_eq!(inbox.pop().await.map(|r| r.event), Some(1));
        inbox.close();
        assert_eq!(inbox.pop().await, None);
    }

    #[tokio::test]
    async fn block_waits_for_room() {
        let inbox = Arc::new(Inbox::new(1, Overflow::Block));
        inbox.push(item(0)).await;
        let pusher = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.push(item(1)).await }
        });
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished());
        assert_eq!(inbox.pop().await.map(|r| r.event), Some(0));
        tokio::time::timeout(std::time::Duration::from_secs(5), pusher)
            .await
            .expect("the blocked push completes once there is room")
            .expect("no panic");
        assert_eq!(inbox.pop().await.map(|r| r.event), Some(1));
        assert_eq!(inbox.dropped.load(Ordering::Relaxed), 0);
    }
}
