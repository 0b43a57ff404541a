//! Sockets: plain messages between peers, and plain bytes on a transport.
//!
//! Two levels, each usable on its own:
//!
//! - [`Socket`]: a symmetric message socket. One socket listens and dials on
//!   any transport URL; every connection is a Plexus connection carrying one
//!   long-lived bidi stream, [`PIPE_OP`], whose data frames are the messages.
//!   Sending (to one peer in turn, to all, or to one by id) and receiving are
//!   independent, and safe from any number of tasks.
//! - [`RawServer`]: a byte-stream server on the transport layer, with no
//!   Plexus framing at all — callbacks for connect, bytes and close, and
//!   writes that report when the bytes reached the operating system.
//!
//! This module owns the socket's peer table, its receive queue and the raw
//! server's connection tasks. It never defines frames of its own: the
//! message socket is an ordinary Plexus service and client (the wire use is
//! described in `docs/SOCKET.md`).

mod error;
mod peers;
mod raw;
mod route;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use self::error::SocketError;
use self::peers::{Attempt, Peer, PeerTable};
pub use self::peers::{PeerEvent, PeerEvents, PeerId, EVENT_CAPACITY};
pub use self::raw::{
    RawCloseReason, RawError, RawHandle, RawId, RawServer, RawServerBuilder, RawStats, Written,
};
pub use self::route::{Route, DEFAULT_TTL, MAX_HOPS};
use crate::connection::CallContext;
use crate::connection::{Backoff, CallOptions, Connection, ConnectionConfig, Inbound, Outbound};
use crate::endpoint::{Endpoint, Listening, ToUrl};
use crate::error::{ConnectError, Reject};
use crate::router::Router;
#[cfg(feature = "tls")]
use crate::transport::TlsConfig;
use crate::transport::{TransportError, Url};
use crate::wire::handshake::RefusalCode;

/// The operation id of a socket's pipe: the one bidi stream per connection,
/// opened by the dialing socket, whose data frames are the messages in both
/// directions.
pub const PIPE_OP: &str = "plexus.Socket/pipe";

/// The handshake data both sides of a socket connection start with, so a
/// socket never mistakes another kind of Plexus endpoint (or a socket of
/// another envelope version) for a peer. What follows it is the side's
/// [offer](SocketBuilder::offer).
pub const SOCKET_HELLO: &[u8] = b"plexus.socket/2";

/// How a listening socket's refusal by its negotiator starts, so that the
/// dialer can tell it from other refusals.
const NEGOTIATION_REFUSED: &str = "negotiation: ";

/// The reject code a socket answers a pipe it will not take with.
const PIPE_REFUSED: u32 = 1;

/// Receive-queue length when [`SocketBuilder::recv_queue`] is not set.
pub const DEFAULT_RECV_QUEUE: usize = 1024;

/// One received message and the peer it came from. Answer the peer with
/// [`Socket::send_to`]`(msg.source, ..)`, or the message's origin, across
/// the sockets that forwarded it, with [`Socket::reply`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The peer that sent it.
    pub source: PeerId,
    /// What it sent.
    pub content: Bytes,
    /// Where it has been and may still go (see [`Socket::forward`]).
    pub route: Route,
    /// The socket it was received on (its `source` is a peer of that one).
    via: u64,
}

/// What a socket's negotiator decides on: one new connection.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Negotiation<'a> {
    /// The peer's address as the transport sees it.
    pub remote: &'a str,
    /// What the peer offered ([`SocketBuilder::offer`]).
    pub offer: &'a [u8],
    /// Whether this socket dialed the connection.
    pub dialed: bool,
}

type Negotiator = Arc<dyn Fn(&Negotiation<'_>) -> Result<(), String> + Send + Sync>;

/// What sending does when a peer has no room (its receiver is behind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendMode {
    /// Wait for flow-control credit and queue space; wait for a peer to
    /// connect when there is none. Bound waits with a timeout.
    #[default]
    Blocking,
    /// Never wait: a message with nowhere to go is dropped and counted
    /// ([`SocketError::QueueFull`], [`SocketStats::dropped`]); no peer at all
    /// is [`SocketError::NoPeers`].
    BestEffort,
}

/// What the socket does with messages peers send it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecvMode {
    /// Queue them for [`Socket::recv`].
    #[default]
    All,
    /// "No receive": read and discard them, counting each in
    /// [`SocketStats::discarded`] — for send-only sockets. Peers are never
    /// slowed down by a discarding socket.
    Discard,
}

/// A socket's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketStats {
    /// Messages handed to peers (a `send_all` counts once per peer reached).
    pub sent: u64,
    /// Messages received and queued for `recv`.
    pub received: u64,
    /// Messages a best-effort send dropped because the peer had no room.
    pub dropped: u64,
    /// Messages received and thrown away by a [`RecvMode::Discard`] socket.
    pub discarded: u64,
    /// Messages not forwarded because their TTL ran out.
    pub expired: u64,
    /// Peers connected right now.
    pub peers: usize,
}

/// The state a socket's tasks and its pipe handler share. It holds no
/// endpoint, so connections (whose router points here) never keep the
/// socket's listeners alive.
struct State {
    /// Tells this socket's messages from other sockets'.
    id: u64,
    /// TTL of the messages this socket sends.
    ttl: u8,
    expired: AtomicU64,
    peers: PeerTable,
    next_peer: AtomicU64,
    /// Where round-robin sending starts next.
    cursor: AtomicUsize,
    queue: mpsc::Sender<Message>,
    inbox: tokio::sync::Mutex<mpsc::Receiver<Message>>,
    closed: CancellationToken,
    send_mode: SendMode,
    recv_mode: RecvMode,
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    discarded: AtomicU64,
}

/// The user-facing owner: dropping the last [`Socket`] handle closes it.
struct Owner {
    state: Arc<State>,
    endpoint: Endpoint,
    listeners: Mutex<Vec<Listening>>,
    max_connections: Option<usize>,
    redial: Option<Backoff>,
    negotiator: Option<Negotiator>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if self.state.closed.is_cancelled() {
            return;
        }
        self.state.closed.cancel();
        for l in self.listeners.get_mut().unwrap_or_else(|e| e.into_inner()) {
            l.close();
        }
        drop(self.state.peers.clear());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let endpoint = self.endpoint.clone();
            rt.spawn(async move { endpoint.shutdown().await });
        }
    }
}

/// A symmetric message socket: listen and dial on any transport, send to
/// one peer in turn, to all peers or to one by id, receive from all.
///
/// Clone it freely: clones are the same socket, and every method takes
/// `&self`, so any number of tasks may send and receive at once. Each
/// received message goes to exactly one [`recv`](Self::recv) call.
///
/// ```no_run
/// # async fn demo() -> Result<(), plexus::socket::SocketError> {
/// use plexus::socket::Socket;
///
/// let server = Socket::new();
/// let url = server.listen("tcp://127.0.0.1:0").await?;
/// let worker = server.clone();
/// tokio::spawn(async move {
///     while let Ok(msg) = worker.recv().await {
///         let _ = worker.send_to(msg.source, msg.content).await;
///     }
/// });
///
/// let client = Socket::new();
/// client.dial(&url).await?;
/// client.send("hello").await?;
/// let echo = client.recv().await?;
/// assert_eq!(&echo.content[..], b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Socket {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("node", &self.owner.endpoint.node_id())
            .field("peers", &self.owner.state.peers.snapshot().len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Configures a [`Socket`].
#[must_use]
pub struct SocketBuilder {
    max_connections: Option<usize>,
    redial: Option<Backoff>,
    send_mode: SendMode,
    recv_mode: RecvMode,
    recv_queue: usize,
    config: ConnectionConfig,
    #[cfg(feature = "tls")]
    tls: Option<TlsConfig>,
    ttl: u8,
    offer: Bytes,
    negotiator: Option<Negotiator>,
}

impl std::fmt::Debug for SocketBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketBuilder")
            .field("max_connections", &self.max_connections)
            .field("send_mode", &self.send_mode)
            .field("recv_mode", &self.recv_mode)
            .field("ttl", &self.ttl)
            .field("negotiates", &self.negotiator.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for SocketBuilder {
    fn default() -> Self {
        SocketBuilder {
            max_connections: None,
            redial: None,
            send_mode: SendMode::default(),
            recv_mode: RecvMode::default(),
            recv_queue: DEFAULT_RECV_QUEUE,
            config: ConnectionConfig::default(),
            #[cfg(feature = "tls")]
            tls: None,
            ttl: DEFAULT_TTL,
            offer: Bytes::new(),
            negotiator: None,
        }
    }
}

impl SocketBuilder {
    /// At most `max` connections, both directions counted: a dialer beyond
    /// it is refused ([`SocketError::TooManyConnections`] on its side), and
    /// this socket does not dial beyond it ([`SocketError::AtLimit`]).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max);
        self
    }

    /// Dial again, after a jittered exponential `backoff`, when the
    /// connection to a peer this socket dialed is lost; keep trying until the
    /// socket closes or the backoff's attempt limit is reached. Each new
    /// connection is a new peer (a new [`PeerId`], a `Joined` event). Off by
    /// default: a lost dialed peer is simply gone.
    pub fn redial(mut self, backoff: Backoff) -> Self {
        self.redial = Some(backoff);
        self
    }

    /// Blocking (the default) or best-effort sending.
    pub fn send_mode(mut self, mode: SendMode) -> Self {
        self.send_mode = mode;
        self
    }

    /// Receive everything (the default) or discard everything.
    pub fn recv_mode(mut self, mode: RecvMode) -> Self {
        self.recv_mode = mode;
        self
    }

    /// Messages received and not yet taken by [`Socket::recv`] that the
    /// socket holds (at least 1; default [`DEFAULT_RECV_QUEUE`]). When the
    /// queue is full, the socket stops reading its pipes, so flow-control
    /// credit stops going back and senders wait: memory stays bounded
    /// (this queue plus one stream window per peer) and nothing is dropped.
    pub fn recv_queue(mut self, messages: usize) -> Self {
        self.recv_queue = messages.max(1);
        self
    }

    /// Connection tuning: frame limit (the largest message), stream window
    /// (bytes in flight per peer), keepalive, handshake timeout.
    pub fn config(mut self, config: ConnectionConfig) -> Self {
        self.config = config;
        self
    }

    /// TLS settings for `tls://` URLs.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Hops the messages this socket sends may make (at least 1; default
    /// [`DEFAULT_TTL`]): each socket forwarding one takes one off, and at 1
    /// it is not forwarded any more, so a loop of switches cannot carry it
    /// round forever.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl.max(1);
        self
    }

    /// What this socket tells every peer it connects with, in the handshake
    /// (at most about 60 KiB): a protocol name, a version, a token — read
    /// by the peer's [`negotiate`](Self::negotiate) hook.
    pub fn offer(mut self, offer: impl Into<Bytes>) -> Self {
        self.offer = offer.into();
        self
    }

    /// Decides on every new connection, both directions, from what the peer
    /// [offered](Self::offer): `Ok(())` takes the peer on, `Err(reason)`
    /// refuses it — a dialer learns the reason as
    /// [`SocketError::Negotiation`], and so does this socket when it dialed.
    /// Runs during the handshake: keep it short.
    pub fn negotiate<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Negotiation<'_>) -> Result<(), String> + Send + Sync + 'static,
    {
        self.negotiator = Some(Arc::new(hook));
        self
    }

    /// Builds the socket. It listens nowhere and has no peers until
    /// [`Socket::listen`] or [`Socket::dial`].
    pub fn build(self) -> Socket {
        let (queue, inbox) = mpsc::channel(self.recv_queue);
        let state = Arc::new(State {
            id: rand::random(),
            ttl: self.ttl,
            expired: AtomicU64::new(0),
            peers: PeerTable::new(),
            next_peer: AtomicU64::new(1),
            cursor: AtomicUsize::new(0),
            queue,
            inbox: tokio::sync::Mutex::new(inbox),
            closed: CancellationToken::new(),
            send_mode: self.send_mode,
            recv_mode: self.recv_mode,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        });
        let mut hello = Vec::with_capacity(SOCKET_HELLO.len() + self.offer.len());
        hello.extend_from_slice(SOCKET_HELLO);
        hello.extend_from_slice(&self.offer);
        let hello = Bytes::from(hello);
        let welcome = hello.clone();
        let negotiator = self.negotiator.clone();
        let mut endpoint = Endpoint::builder()
            .config(self.config)
            .hello_data(hello)
            .accept(move |req| {
                let Some(offer) = req.data().strip_prefix(SOCKET_HELLO) else {
                    return Err(
                        "this is a plexus message socket (envelope v2); connect with plexus::socket::Socket::dial"
                            .into(),
                    );
                };
                if let Some(negotiate) = &negotiator {
                    negotiate(&Negotiation {
                        remote: req.remote(),
                        offer,
                        dialed: false,
                    })
                    .map_err(|why| format!("{NEGOTIATION_REFUSED}{why}"))?;
                }
                Ok(welcome.clone())
            })
            .serve(pipe_route(state.clone()));
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls {
            endpoint = endpoint.tls(tls);
        }
        if let Some(max) = self.max_connections {
            endpoint = endpoint.max_connections(max);
        }
        Socket {
            owner: Arc::new(Owner {
                state,
                endpoint: endpoint.build(),
                listeners: Mutex::new(Vec::new()),
                max_connections: self.max_connections,
                redial: self.redial,
                negotiator: self.negotiator,
            }),
        }
    }
}

fn pipe_route(state: Arc<State>) -> Router {
    Router::new().bidi(PIPE_OP, move |ctx, inbound, outbound| {
        state.clone().serve_pipe(ctx, inbound, outbound)
    })
}

impl State {
    /// The listening side of a pipe: admits the peer, drains its messages
    /// on a task of their own, and keeps the call open while both last.
    async fn serve_pipe(
        self: Arc<Self>,
        ctx: CallContext,
        inbound: Inbound,
        outbound: Outbound,
    ) -> Result<(), Reject> {
        let conn = ctx.connection().clone();
        if conn.dialed_here() {
            return Err(Reject::new(
                PIPE_REFUSED,
                "a socket pipe is opened by the dialing side; this side dialed the connection",
            ));
        }
        let key = Arc::as_ptr(&ctx.shared) as usize;
        let peer = self.admit(conn, key, outbound)?;
        let (done, finished) = oneshot::channel::<()>();
        // Draining runs apart from this handler: if the peer cancels the
        // pipe, the handler is dropped, but what the peer sent before still
        // reaches `recv`.
        tokio::spawn(self.clone().pump(peer, inbound, Some(done)));
        tokio::select! {
            _ = self.closed.cancelled() => {}
            _ = finished => {}
        }
        Ok(())
    }

    /// Adds a peer for a fresh pipe on `conn`.
    fn admit(
        self: &Arc<Self>,
        conn: Connection,
        key: usize,
        out: Outbound,
    ) -> Result<Arc<Peer>, Reject> {
        if self.closed.is_cancelled() {
            return Err(Reject::new(PIPE_REFUSED, "the socket is closed"));
        }
        let id = PeerId(self.next_peer.fetch_add(1, Ordering::Relaxed));
        let peer = Arc::new(Peer::new(id, conn, key, out));
        if !self.peers.join(peer.clone()) {
            return Err(Reject::new(
                PIPE_REFUSED,
                "this connection already carries a socket pipe; one pipe per connection",
            ));
        }
        // `close` cancels, then clears the table: a join that raced it is
        // either cleared there or undone here.
        if self.closed.is_cancelled() {
            self.peers.leave(id);
            return Err(Reject::new(PIPE_REFUSED, "the socket is closed"));
        }
        Ok(peer)
    }

    /// Moves a peer's messages into the receive queue until its pipe ends,
    /// then removes the peer and closes its connection.
    async fn pump(
        self: Arc<Self>,
        peer: Arc<Peer>,
        mut inbound: Inbound,
        done: Option<oneshot::Sender<()>>,
    ) {
        loop {
            let item = tokio::select! {
                biased;
                _ = self.closed.cancelled() => break,
                item = inbound.recv() => item,
            };
            let bytes = match item {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => {
                    tracing::debug!(peer = %peer.id, remote = %peer.remote, "socket pipe ended: {e}");
                    break;
                }
                None => break,
            };
            if self.recv_mode == RecvMode::Discard {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (route, content) = match route::unwrap(bytes) {
                Ok(unwrapped) => unwrapped,
                Err(why) => {
                    tracing::warn!(peer = %peer.id, remote = %peer.remote, "socket pipe closed: {why}");
                    break;
                }
            };
            let msg = Message {
                source: peer.id,
                content,
                route,
                via: self.id,
            };
            // Waiting here is the backpressure: the pipe is not read, so no
            // credit goes back, so the peer's sends wait.
            tokio::select! {
                biased;
                _ = self.closed.cancelled() => break,
                sent = self.queue.send(msg) => {
                    if sent.is_err() {
                        break;
                    }
                    self.received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        drop(inbound);
        self.peers.leave(peer.id);
        drop(done);
        if self.closed.is_cancelled() {
            // `close` shuts the whole endpoint down.
            return;
        }
        // A connection without its pipe is of no use to a socket, and
        // closing it frees its place under the connection limit. The pipe's
        // sending half goes first, so the drain does not wait for it.
        let conn = peer.conn.clone();
        drop(peer);
        conn.close().await;
    }

    fn is_closed(&self) -> Result<(), SocketError> {
        if self.closed.is_cancelled() {
            Err(SocketError::Closed)
        } else {
            Ok(())
        }
    }

    /// The peers to send to now: waits for one in blocking mode.
    async fn targets(&self) -> Result<Arc<Vec<Arc<Peer>>>, SocketError> {
        self.is_closed()?;
        match self.send_mode {
            SendMode::BestEffort => {
                let list = self.peers.snapshot();
                if list.is_empty() {
                    return Err(SocketError::NoPeers);
                }
                Ok(list)
            }
            SendMode::Blocking => tokio::select! {
                biased;
                _ = self.closed.cancelled() => Err(SocketError::Closed),
                list = self.peers.wait_nonempty() => Ok(list),
            },
        }
    }

    /// One try without waiting (best-effort), or a wait for room (blocking).
    async fn deliver(&self, peer: &Peer, content: &Bytes) -> Result<Attempt, SocketError> {
        match self.send_mode {
            SendMode::BestEffort => Ok(peer.try_send(content).await),
            SendMode::Blocking => tokio::select! {
                biased;
                _ = self.closed.cancelled() => Err(SocketError::Closed),
                attempt = peer.send(content.clone()) => Ok(attempt),
            },
        }
    }

    fn queue_full(&self, peer: &Peer) -> SocketError {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        SocketError::QueueFull {
            peer: peer.id,
            remote: peer.remote.to_string(),
            dropped,
        }
    }
}

fn too_large(peer: &Peer, size: usize, limit: usize) -> SocketError {
    SocketError::TooLarge {
        peer: peer.id,
        remote: peer.remote.to_string(),
        size,
        limit,
    }
}

impl Default for Socket {
    fn default() -> Self {
        Socket::new()
    }
}

impl Socket {
    /// A socket with the defaults: no connection limit, blocking sends,
    /// receiving everything into a queue of [`DEFAULT_RECV_QUEUE`] messages.
    pub fn new() -> Socket {
        Socket::builder().build()
    }

    /// Starts configuring a socket.
    pub fn builder() -> SocketBuilder {
        SocketBuilder::default()
    }

    /// Binds `url` (`tcp://`, `tls://`, `unix://`, `inproc://`) and accepts
    /// peers on it in the background. Returns where it is reachable, with
    /// the real port for `:0`.
    pub async fn listen(&self, url: impl ToUrl) -> Result<Url, SocketError> {
        self.owner.state.is_closed()?;
        let listening = self.owner.endpoint.listen(url).await?;
        let local = listening.local_url().clone();
        let mut listeners = self
            .owner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.owner.state.closed.is_cancelled() {
            listening.close();
            return Err(SocketError::Closed);
        }
        listeners.push(listening);
        Ok(local)
    }

    /// Dials the socket listening at `url` and opens the pipe to it.
    /// Returns the new peer's id once it can be sent to. With
    /// [`SocketBuilder::redial`], the socket dials `url` again whenever this
    /// connection is lost.
    pub async fn dial(&self, url: impl ToUrl) -> Result<PeerId, SocketError> {
        let url = url
            .to_url()
            .map_err(|e| ConnectError::from(TransportError::from(e)))?;
        let (id, ended) = Self::dial_once(&self.owner, &url).await?;
        if let Some(backoff) = self.owner.redial.clone() {
            tokio::spawn(redial(
                Arc::downgrade(&self.owner),
                self.owner.state.clone(),
                url,
                backoff,
                ended,
            ));
        }
        Ok(id)
    }

    /// One dial: the new peer, and a receiver that completes when it leaves.
    async fn dial_once(
        owner: &Arc<Owner>,
        url: &Url,
    ) -> Result<(PeerId, oneshot::Receiver<()>), SocketError> {
        let state = &owner.state;
        state.is_closed()?;
        if let Some(max) = owner.max_connections {
            if owner.endpoint.connections().len() >= max {
                return Err(SocketError::AtLimit {
                    url: url.to_string(),
                    max,
                });
            }
        }
        let conn = owner.endpoint.connect(url).await.map_err(|e| match e {
            ConnectError::Refused {
                url,
                code: RefusalCode::TooManyConnections,
                reason,
            } => SocketError::TooManyConnections { url, reason },
            ConnectError::Refused {
                url,
                code: RefusalCode::Rejected,
                reason,
            } if reason.starts_with(NEGOTIATION_REFUSED) => SocketError::Negotiation {
                url,
                reason: reason[NEGOTIATION_REFUSED.len()..].to_owned(),
                by_peer: true,
            },
            e => SocketError::Connect(e),
        })?;
        let peer_info = conn.peer();
        let Some(offer) = peer_info.data().strip_prefix(SOCKET_HELLO) else {
            conn.abort();
            return Err(SocketError::NotASocket {
                url: url.to_string(),
            });
        };
        if let Some(negotiate) = &owner.negotiator {
            let verdict = negotiate(&Negotiation {
                remote: peer_info.remote(),
                offer,
                dialed: true,
            });
            if let Err(reason) = verdict {
                conn.abort();
                return Err(SocketError::Negotiation {
                    url: url.to_string(),
                    reason,
                    by_peer: false,
                });
            }
        }
        // The pipe lives as long as the peer, not as long as a call that
        // happened to be served when the socket dialed.
        let (out, inbound) = match conn.bidi(PIPE_OP, CallOptions::new().detached()).await {
            Ok(pipe) => pipe,
            Err(e) => {
                conn.abort();
                return Err(SocketError::Connect(ConnectError::Closed {
                    url: url.to_string(),
                    reason: format!("the socket pipe did not open: {e}"),
                }));
            }
        };
        let key = conn.direct_shared().map_or(0, |s| Arc::as_ptr(&s) as usize);
        let peer = match state.admit(conn.clone(), key, out) {
            Ok(peer) => peer,
            Err(_) => {
                conn.abort();
                return Err(SocketError::Closed);
            }
        };
        let id = peer.id;
        let (left, ended) = oneshot::channel();
        tokio::spawn(state.clone().pump(peer, inbound, Some(left)));
        Ok((id, ended))
    }

    /// Sends `content` to one peer, taking peers in turn (round-robin) and
    /// skipping a peer that has no room while another has. Returns the peer
    /// it went to.
    ///
    /// Blocking mode: with no peer, waits for one; with every peer full,
    /// waits for room at the peer whose turn it is. Best-effort mode:
    /// [`SocketError::NoPeers`] or [`SocketError::QueueFull`] at once.
    pub async fn send(&self, content: impl Into<Bytes>) -> Result<PeerId, SocketError> {
        let state = &self.owner.state;
        let wrapped = route::wrap(&Route::start(state.ttl), &content.into());
        self.send_one(wrapped, None).await
    }

    /// Sends an enveloped message to one peer in turn, never to `except`.
    async fn send_one(
        &self,
        content: Bytes,
        except: Option<PeerId>,
    ) -> Result<PeerId, SocketError> {
        let state = &self.owner.state;
        loop {
            let mut peers = state.targets().await?;
            if let Some(except) = except {
                let others: Vec<_> = peers.iter().filter(|p| p.id != except).cloned().collect();
                if others.is_empty() {
                    return Err(SocketError::NoPeers);
                }
                peers = Arc::new(others);
            }
            let n = peers.len();
            let start = state.cursor.fetch_add(1, Ordering::Relaxed) % n;
            let mut full = None;
            for i in 0..n {
                let peer = &peers[(start + i) % n];
                let attempt = match state.send_mode {
                    SendMode::BestEffort => peer.try_send(&content).await,
                    SendMode::Blocking => peer.offer(&content),
                };
                match attempt {
                    Attempt::Sent => {
                        state.sent.fetch_add(1, Ordering::Relaxed);
                        return Ok(peer.id);
                    }
                    Attempt::Full => {
                        full.get_or_insert_with(|| peer.clone());
                    }
                    Attempt::Gone => {
                        state.peers.leave(peer.id);
                    }
                    Attempt::TooLarge { size, limit } => return Err(too_large(peer, size, limit)),
                }
            }
            // Every peer was full (or gone; then look again).
            let Some(peer) = full else { continue };
            if state.send_mode == SendMode::BestEffort {
                return Err(state.queue_full(&peer));
            }
            match state.deliver(&peer, &content).await? {
                Attempt::Sent => {
                    state.sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(peer.id);
                }
                Attempt::TooLarge { size, limit } => return Err(too_large(&peer, size, limit)),
                Attempt::Gone => {
                    state.peers.leave(peer.id);
                }
                Attempt::Full => {}
            }
        }
    }

    /// Sends `content` to every peer connected now, and returns how many it
    /// reached.
    ///
    /// Blocking mode: waits for a peer if there is none, and for room at
    /// every peer (the slowest one sets the pace). Best-effort mode: a peer
    /// without room is skipped and counted in [`SocketStats::dropped`];
    /// [`SocketError::QueueFull`] only when no peer had room.
    pub async fn send_all(&self, content: impl Into<Bytes>) -> Result<usize, SocketError> {
        let state = &self.owner.state;
        let wrapped = route::wrap(&Route::start(state.ttl), &content.into());
        self.send_each(wrapped, None).await
    }

    /// Sends an enveloped message to every peer but `except`.
    async fn send_each(
        &self,
        content: Bytes,
        except: Option<PeerId>,
    ) -> Result<usize, SocketError> {
        let state = &self.owner.state;
        loop {
            let mut peers = state.targets().await?;
            if let Some(except) = except {
                let others: Vec<_> = peers.iter().filter(|p| p.id != except).cloned().collect();
                if others.is_empty() {
                    return Ok(0);
                }
                peers = Arc::new(others);
            }
            let attempts: Vec<Attempt> = match state.send_mode {
                SendMode::BestEffort => {
                    let mut attempts = Vec::with_capacity(peers.len());
                    for peer in peers.iter() {
                        attempts.push(peer.try_send(&content).await);
                    }
                    attempts
                }
                SendMode::Blocking => tokio::select! {
                    biased;
                    _ = state.closed.cancelled() => return Err(SocketError::Closed),
                    all = futures_util::future::join_all(
                        peers.iter().map(|p| p.send(content.clone())),
                    ) => all,
                },
            };
            let mut reached = 0;
            let mut first_full = None;
            let mut first_error = None;
            for (peer, attempt) in peers.iter().zip(attempts) {
                match attempt {
                    Attempt::Sent => reached += 1,
                    Attempt::Full => {
                        if first_full.is_none() {
                            first_full = Some(state.queue_full(peer));
                        } else {
                            state.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Attempt::Gone => {
                        state.peers.leave(peer.id);
                    }
                    Attempt::TooLarge { size, limit } => {
                        first_error.get_or_insert_with(|| too_large(peer, size, limit));
                    }
                }
            }
            state.sent.fetch_add(reached as u64, Ordering::Relaxed);
            if reached > 0 {
                return Ok(reached);
            }
            if let Some(e) = first_error.or(first_full) {
                return Err(e);
            }
            // Every peer left meanwhile: nobody got it, so try the peers
            // there are now.
        }
    }

    /// Sends `content` to `peer` — typically the `source` of a received
    /// [`Message`]. A peer that is not (or no longer) connected is
    /// [`SocketError::UnknownPeer`].
    pub async fn send_to(
        &self,
        peer: PeerId,
        content: impl Into<Bytes>,
    ) -> Result<(), SocketError> {
        let wrapped = route::wrap(&Route::start(self.owner.state.ttl), &content.into());
        self.send_wrapped_to(peer, wrapped).await
    }

    /// Sends `content` back to where `msg` came from: to its `source`, and
    /// from there along the path the sockets that forwarded it recorded —
    /// each of them takes the next hop off the reply's destination when it
    /// forwards it ([`forward`](Self::forward)). Call it on the socket that
    /// received `msg`; for a message that was not forwarded it is
    /// [`send_to`](Self::send_to)`(msg.source, ..)`.
    pub async fn reply(&self, msg: &Message, content: impl Into<Bytes>) -> Result<(), SocketError> {
        if msg.via != self.owner.state.id {
            return Err(SocketError::UnknownPeer(msg.source));
        }
        let route = Route {
            ttl: self.owner.state.ttl,
            path: Vec::new(),
            destination: msg.route.path.clone(),
        };
        let wrapped = route::wrap(&route, &content.into());
        self.send_wrapped_to(msg.source, wrapped).await
    }

    /// Sends `msg` on — what a switch does with what it receives (on this
    /// socket or another one). A reply on its way back (its route has a
    /// destination) goes to the next hop of its destination, a peer of this
    /// socket; any other message to one peer in turn, never back to the one
    /// it came from. Either way the hop it came from is added to its path,
    /// and its TTL goes down by one: at 1 it is not sent but dropped,
    /// counted in [`SocketStats::expired`], and reported as
    /// [`SocketError::TtlExpired`]. Returns the peer it went to.
    pub async fn forward(&self, msg: Message) -> Result<PeerId, SocketError> {
        // The hop it came from is skipped only if it is a peer of this
        // socket; a switch of two sockets forwards what the other received.
        let except = (msg.via == self.owner.state.id).then_some(msg.source);
        let (onward, next) = self.onward(msg)?;
        match next {
            Some(hop) => self.send_wrapped_to(hop, onward).await.map(|()| hop),
            None => self.send_one(onward, except).await,
        }
    }

    /// Sends `msg` on to every peer but the one it came from — a bus of
    /// switches; the TTL keeps a loop among them from carrying it round for
    /// ever. A reply on its way back goes to its next hop only (see
    /// [`forward`](Self::forward)). Returns how many peers it reached.
    pub async fn forward_all(&self, msg: Message) -> Result<usize, SocketError> {
        let except = (msg.via == self.owner.state.id).then_some(msg.source);
        let (onward, next) = self.onward(msg)?;
        match next {
            Some(hop) => self.send_wrapped_to(hop, onward).await.map(|()| 1),
            None => self.send_each(onward, except).await,
        }
    }

    /// The envelope `msg` goes on in, and its next hop if it is a reply on
    /// its way back.
    fn onward(&self, msg: Message) -> Result<(Bytes, Option<PeerId>), SocketError> {
        let state = &self.owner.state;
        if msg.route.ttl <= 1 {
            state.expired.fetch_add(1, Ordering::Relaxed);
            return Err(SocketError::TtlExpired {
                from: msg.source,
                hops: msg.route.path.len() + 1,
            });
        }
        let mut route = msg.route;
        route.ttl -= 1;
        if route.path.len() >= MAX_HOPS {
            route.path.remove(0);
        }
        route.path.push(msg.source);
        let next = route.destination.pop();
        Ok((route::wrap(&route, &msg.content), next))
    }

    async fn send_wrapped_to(&self, peer: PeerId, content: Bytes) -> Result<(), SocketError> {
        let state = &self.owner.state;
        state.is_closed()?;
        let Some(target) = state.peers.get(peer) else {
            return Err(SocketError::UnknownPeer(peer));
        };
        match state.deliver(&target, &content).await? {
            Attempt::Sent => {
                state.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Attempt::Full => Err(state.queue_full(&target)),
            Attempt::Gone => {
                state.peers.leave(peer);
                Err(SocketError::UnknownPeer(peer))
            }
            Attempt::TooLarge { size, limit } => Err(too_large(&target, size, limit)),
        }
    }

    /// The next message from any peer. Any number of tasks may wait at
    /// once; each message goes to exactly one of them, in arrival order.
    ///
    /// [`SocketError::Closed`] once the socket is closed (messages still
    /// queued then are dropped with it); [`SocketError::ReceiveDisabled`] on
    /// a [`RecvMode::Discard`] socket.
    pub async fn recv(&self) -> Result<Message, SocketError> {
        let state = &self.owner.state;
        if state.recv_mode == RecvMode::Discard {
            return Err(SocketError::ReceiveDisabled);
        }
        tokio::select! {
            biased;
            _ = state.closed.cancelled() => Err(SocketError::Closed),
            msg = async { state.inbox.lock().await.recv().await } => msg.ok_or(SocketError::Closed),
        }
    }

    /// The peers connected now, in the order they joined.
    pub fn peers(&self) -> Vec<PeerId> {
        self.owner
            .state
            .peers
            .snapshot()
            .iter()
            .map(|p| p.id)
            .collect()
    }

    /// Subscribes to peers joining and leaving, from now on.
    pub fn peer_events(&self) -> PeerEvents {
        self.owner.state.peers.subscribe()
    }

    /// The socket's counters.
    pub fn stats(&self) -> SocketStats {
        let s = &self.owner.state;
        SocketStats {
            sent: s.sent.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            discarded: s.discarded.load(Ordering::Relaxed),
            expired: s.expired.load(Ordering::Relaxed),
            peers: s.peers.snapshot().len(),
        }
    }

    /// Whether [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.owner.state.closed.is_cancelled()
    }

    /// Closes the socket: stops listening, ends every pipe (what was already
    /// sent is still delivered to the peers) and closes every connection.
    /// Waiting sends and receives return [`SocketError::Closed`]. Dropping
    /// the last handle of a socket closes it too, in the background.
    pub async fn close(&self) {
        let state = &self.owner.state;
        state.closed.cancel();
        let listeners = std::mem::take(
            &mut *self
                .owner
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for l in &listeners {
            l.close();
        }
        // Dropping the pipes' sending halves ends the pipes this side opened,
        // so the connections' drain does not wait for them.
        drop(state.peers.clear());
        self.owner.endpoint.shutdown().await;
    }
}

/// Keeps a dialed peer: each time its connection is lost, dials `url` again
/// after the backoff's wait, until the socket is closed or dropped, or the
/// backoff's attempt limit runs out.
async fn redial(
    owner: std::sync::Weak<Owner>,
    state: Arc<State>,
    url: Url,
    backoff: Backoff,
    mut ended: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = state.closed.cancelled() => return,
            _ = &mut ended => {}
        }
        let mut attempt = 0;
        ended = loop {
            tokio::select! {
                _ = state.closed.cancelled() => return,
                () = tokio::time::sleep(backoff.delay(attempt)) => {}
            }
            // Only a weak hold while waiting: a dropped socket is not kept alive.
            let Some(owner) = owner.upgrade() else {
                return;
            };
            match Socket::dial_once(&owner, &url).await {
                Ok((peer, ended)) => {
                    tracing::debug!(%url, %peer, "socket redialed");
                    break ended;
                }
                Err(SocketError::Closed) => return,
                Err(e) => {
                    attempt += 1;
                    tracing::debug!(%url, attempt, "socket redial failed: {e}");
                    if backoff.attempts_limit().is_some_and(|max| attempt >= max) {
                        tracing::warn!(%url, attempt, "socket gives up redialing: {e}");
                        return;
                    }
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_peer_and_the_remedy() {
        let gone = SocketError::UnknownPeer(PeerId(7)).to_string();
        assert!(
            gone.contains("peer #7") && gone.contains("recv()"),
            "{gone}"
        );
        let full = SocketError::QueueFull {
            peer: PeerId(3),
            remote: "node 0000abcd at tcp://127.0.0.1:9".into(),
            dropped: 5,
        }
        .to_string();
        assert!(
            full.contains("peer #3") && full.contains("127.0.0.1:9"),
            "{full}"
        );
        assert!(
            full.contains("5 dropped") && full.contains("SendMode::Blocking"),
            "{full}"
        );
    }

    #[tokio::test]
    async fn a_bad_url_is_a_connect_error_naming_it() {
        let socket = Socket::new();
        let err = socket.dial("nope://x").await.expect_err("bad scheme");
        assert!(matches!(err, SocketError::Connect(_)), "{err:?}");
        assert!(err.to_string().contains("nope"), "{err}");
        let err = socket.listen("tcp://").await.expect_err("no address");
        assert!(matches!(err, SocketError::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn recv_queue_is_at_least_one_and_stats_start_at_zero() {
        let socket = Socket::builder().recv_queue(0).build();
        assert_eq!(socket.owner.state.queue.max_capacity(), 1);
        assert_eq!(socket.stats(), SocketStats::default());
        assert!(socket.peers().is_empty());
    }
}
