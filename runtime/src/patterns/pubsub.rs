//! Publish/subscribe on typed topics, with a subscriber-chosen overflow policy.
//!
//! Owns the [`Topic`] contract (declared with [`topic!`](crate::topic)), the
//! serving side [`Publisher`], the receiving side [`Subscriber`], and the
//! little wire format between them. A subscription is one server stream per
//! publisher (`<package>.<Topic>/subscribe`), so every event rides the
//! connection's per-stream credit: a subscriber that stops reading stops
//! returning credit, and the publisher waits — unless the subscriber asked to
//! drop, in which case it keeps draining the stream into a bounded queue and
//! counts what it throws away.
//!
//! Wire: the request is a MessagePack map `{ filters: [string] }`. Each
//! stream item starts with a tag byte: `0` — subscribed (sent once, before any
//! event, when the publisher registered the subscription); `1` — an event:
//! varint topic length, the topic's UTF-8 bytes, then the event encoded by the
//! topic's codec.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, CodecError, MsgPack};
use crate::descriptor::{Contract, ServiceDescriptor};
use crate::node::{Client, PeerChange, PeerSet};
use crate::wire::varint;
use crate::{CallOptions, Connection, IntoRouter, NodeId, Outbound, Reject, Router};

/// Longest topic a publisher sends or a filter may be, in bytes.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Most filters one subscription may carry.
pub const MAX_FILTERS: usize = 64;

/// The default capacity of a subscriber's queue, in events.
pub const DEFAULT_CAPACITY: usize = 1024;

const TAG_SUBSCRIBED: u8 = 0;
const TAG_EVENT: u8 = 1;

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
/// use plexus::Contract;
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

        impl $crate::Contract for $name {
            const DESCRIPTOR: &'static $crate::ServiceDescriptor = &$crate::ServiceDescriptor {
                package: $package,
                name: stringify!($name),
                full_name: concat!($package, ".", stringify!($name)),
                version: 1,
                docs: "",
                roles: &["publisher", "subscriber"],
                methods: &[$crate::MethodDescriptor {
                    name: "subscribe",
                    op: concat!($package, ".", stringify!($name), "/subscribe"),
                    kind: $crate::CallKind::ServerStream,
                    role: Some("publisher"),
                    idempotent: false,
                    request: "plexus.Subscribe",
                    reply: stringify!($event),
                    docs: "Events on the topics matching the filters, from now on.",
                    params: &[],
                    json_schemas: $crate::JsonSchemas::none,
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

/// One registered subscriber, as the publisher holds it.
struct Subscription {
    peer: NodeId,
    filters: Vec<String>,
    out: tokio::sync::Mutex<Outbound>,
    /// Cancelled when a send to it fails: the handler then ends.
    gone: CancellationToken,
}

#[derive(Default)]
struct Hub {
    subs: Mutex<Vec<(u64, Arc<Subscription>)>>,
    next: AtomicU64,
    closed: CancellationToken,
    published: AtomicU64,
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

/// The serving side of a [`Topic`]: serve it on a node (`serve_as(publisher.clone(),
/// "publisher")`) or any endpoint, then [`publish`](Self::publish). Clones
/// share the subscribers.
///
/// Each event is encoded once and sent to every subscriber whose filters
/// match its topic, all at once; `publish` returns when it is queued for
/// each of them. A subscriber in block mode that falls behind makes
/// `publish` wait for it (backpressure); subscribers in drop mode never do.
/// Events a subscriber registered after `publish` started do not reach it;
/// events from one publishing task reach each subscriber in order.
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
            .field("subscribers", &self.subscribers())
            .finish()
    }
}

impl<T: Topic> Publisher<T> {
    /// A publisher with no subscribers yet.
    pub fn new() -> Self {
        Publisher {
            hub: Arc::default(),
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

    /// Publishes `event` on `topic` to every subscriber whose filters match;
    /// returns how many it was queued for. A subscriber whose stream fails is
    /// dropped (it is gone) and not counted.
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
            .filter(|(_, s)| topic_matches(&s.filters, topic))
            .map(|(_, s)| s.clone())
            .collect();
        self.hub.published.fetch_add(1, Ordering::Relaxed);
        let sends = targets.iter().map(|sub| {
            let item = item.clone();
            async move {
                let mut out = sub.out.lock().await;
                match out.send(item).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(peer = %sub.peer, error = %e, "subscriber gone");
                        sub.gone.cancel();
                        false
                    }
                }
            }
        });
        let sent = futures_util::future::join_all(sends).await;
        Ok(sent.into_iter().filter(|ok| *ok).count())
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
                        out: tokio::sync::Mutex::new(out),
                        gone: CancellationToken::new(),
                    });
                    // Register and announce under the stream's lock, so the
                    // "subscribed" marker precedes every event sent to it.
                    let registered = {
                        let mut out = sub.out.lock().await;
                        let id = hub.next.fetch_add(1, Ordering::Relaxed);
                        lock(&hub.subs).push((id, sub.clone()));
                        let registered = Registered {
                            hub: hub.clone(),
                            id,
                        };
                        if out
                            .send(Bytes::from_static(&[TAG_SUBSCRIBED]))
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                        registered
                    };
                    tokio::select! {
                        () = ctx.cancelled() => {}
                        () = sub.gone.cancelled() => {}
                        () = hub.closed.cancelled() => {}
                    }
                    drop(registered);
                    Ok(())
                }
            })
            .with_descriptor(T::DESCRIPTOR)
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
/// (`taken` being what [`Subscriber::recv`] returned).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Events that arrived and decoded.
    pub arrived: u64,
    /// Events thrown away by the overflow policy.
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
                        return;
                    }
                    Overflow::DropOldest => {
                        state.queue.pop_front();
                        state.queue.extend(item.take());
                        self.dropped.fetch_add(1, Ordering::Relaxed);
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
    let mut readers: HashMap<NodeId, AbortHandle> = HashMap::new();
    let mut tasks: JoinSet<NodeId> = JoinSet::new();
    let start = |tasks: &mut JoinSet<NodeId>,
                 readers: &mut HashMap<NodeId, AbortHandle>,
                 peer: NodeId,
                 conn: Connection| {
        let (request, inbox) = (request.clone(), inbox.clone());
        let handle = tasks.spawn(async move {
            read_from::<T>(conn, request, inbox).await;
            peer
        });
        readers.insert(peer, handle);
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
                    if let Some(reader) = readers.remove(&peer) {
                        reader.abort();
                    }
                }
                None => break,
            },
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(peer) = ended {
                    readers.remove(&peer);
                }
            }
        }
    }
}

/// Reads one publisher's stream into the inbox until it ends.
async fn read_from<T: Topic>(conn: Connection, request: Bytes, inbox: Arc<Inbox<T::Event>>) {
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
    while let Some(item) = stream.recv().await {
        let mut item = match item {
            Ok(item) => item,
            Err(e) => {
                tracing::debug!(%publisher, error = %e, "subscription ended");
                return;
            }
        };
        match parse_item(&mut item) {
            Some(None) => inbox.set_live(publisher, true),
            Some(Some(topic)) => match T::Codec::decode(item) {
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

/// Splits a stream item: `Some(None)` for the subscribed marker,
/// `Some(Some(topic))` for an event (leaving the payload in `item`), `None`
/// when malformed.
fn parse_item(item: &mut Bytes) -> Option<Option<String>> {
    match *item.first()? {
        TAG_SUBSCRIBED if item.len() == 1 => Some(None),
        TAG_EVENT => {
            item.advance(1);
            let len = usize::try_from(varint::get(item, "topic length").ok()?).ok()?;
            if len > MAX_TOPIC_LEN || len > item.len() {
                return None;
            }
            let topic = std::str::from_utf8(&item[..len]).ok()?.to_owned();
            item.advance(len);
            Some(Some(topic))
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
        assert_eq!(parse_item(&mut marker), Some(None));
        let mut event = Bytes::from_static(b"\x01\x03a/bpayload");
        assert_eq!(parse_item(&mut event), Some(Some("a/b".to_owned())));
        assert_eq!(&event[..], b"payload");
        for bad in [
            &b""[..],
            b"\x02",
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
