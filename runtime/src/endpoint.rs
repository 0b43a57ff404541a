//! Endpoints and servers: one node identity, one set of services, any number
//! of listeners and connections.
//!
//! An [`Endpoint`] dials and listens under one [`NodeId`], runs the handshake
//! (refusing version mismatches and connections to itself), and serves its
//! [`Router`] on every connection, whichever side opened it. A [`Server`] is
//! an endpoint with one listener, for the common case.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::access::AllowList;
use crate::connection::events::{Event, EventHub, Events};
use crate::connection::{
    builtin_routes, Backoff, CloseReason, Connection, ConnectionConfig, Dial, Established, Redial,
    RetryPolicy, SessionHook, SessionRequest,
};
use crate::error::ConnectError;
use crate::error::Reject;
use crate::health::Health;
use crate::intercept::{CallInterceptor, CallInterceptors, Interceptor};
use crate::peer::PeerInfo;
use crate::router::{IntoRouter, Router};
use crate::transport::PeerIdentity;
#[cfg(feature = "tls")]
use crate::transport::TlsConfig;
use crate::transport::{self, ReadHalf, TransportConfig, Url, UrlError, WriteHalf};
use crate::wire::driver::{
    Admission, DialerHello, DialerStep, HandshakeFailure, ListenerHandshake, ListenerStep,
    LocalSide,
};
use crate::wire::handshake;
use crate::wire::key::SessionKey;
use crate::wire::node_id::NodeId;

/// Something that names a transport address: `&str`, `String` or [`Url`].
pub trait ToUrl {
    /// Parses or clones into a [`Url`].
    fn to_url(&self) -> Result<Url, UrlError>;
}

impl ToUrl for str {
    fn to_url(&self) -> Result<Url, UrlError> {
        Url::parse(self)
    }
}

impl ToUrl for String {
    fn to_url(&self) -> Result<Url, UrlError> {
        Url::parse(self)
    }
}

impl ToUrl for Url {
    fn to_url(&self) -> Result<Url, UrlError> {
        Ok(self.clone())
    }
}

impl<T: ToUrl + ?Sized> ToUrl for &T {
    fn to_url(&self) -> Result<Url, UrlError> {
        (**self).to_url()
    }
}

/// A dialer's request to connect, as the listener's accept hook sees it.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    node: NodeId,
    remote: String,
    data: Bytes,
    identity: Option<PeerIdentity>,
}

impl ConnectRequest {
    /// The dialer's node id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The dialer's address as the transport sees it.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The application data the dialer sent with its hello.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The dialer's verified certificate, when the transport verified one
    /// (see [`PeerInfo::identity`]). An allow-list, if set, has admitted it
    /// before the hook runs.
    pub fn identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }
}

type AcceptHook = Arc<dyn Fn(&ConnectRequest) -> Result<Bytes, String> + Send + Sync>;

struct Inner {
    node: NodeId,
    router: Router,
    config: ConnectionConfig,
    transport: TransportConfig,
    hello_data: Bytes,
    accept: Option<AcceptHook>,
    /// With a key, every handshake proves it both ways (PROTOCOL.md §3.6).
    key: Option<SessionKey>,
    /// Run around every call a connection of this endpoint opens.
    call_interceptors: Option<Arc<CallInterceptors>>,
    /// Which certificates may connect, either way; replaceable at run time.
    allow: RwLock<Option<Arc<AllowList>>>,
    max_connections: usize,
    /// Incoming handshakes that may run at once; the listeners stop
    /// accepting while all are taken.
    handshakes: Arc<tokio::sync::Semaphore>,
    events: Arc<EventHub>,
    health: Health,
    conns: Mutex<HashMap<u64, Connection>>,
    next_conn: AtomicU64,
    /// Incoming handshakes past the connection-limit check, not yet registered.
    handshaking: AtomicUsize,
    shutdown: CancellationToken,
}

/// One node identity with its services, dialing and listening.
///
/// ```no_run
/// # async fn demo() -> Result<(), plexus::ConnectError> {
/// use plexus::{Bytes, Endpoint, Reject, Router};
/// let endpoint = Endpoint::builder()
///     .serve(Router::new().unary("demo.Echo/echo", |_ctx, b: Bytes| async move { Ok::<_, Reject>(b) }))
///     .build();
/// let listening = endpoint.listen("tcp://127.0.0.1:0").await?;
/// let conn = Endpoint::builder().build().connect(listening.local_url()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// Configures an [`Endpoint`].
#[must_use]
pub struct EndpointBuilder {
    node: Option<NodeId>,
    router: Router,
    config: ConnectionConfig,
    transport: TransportConfig,
    hello_data: Bytes,
    accept: Option<AcceptHook>,
    sessions: Option<SessionHook>,
    key: Option<SessionKey>,
    allow: Option<AllowList>,
    call_interceptors: CallInterceptors,
    max_connections: usize,
    max_handshakes: usize,
    introspection: Introspection,
}

/// Which built-in operations beyond sessions an endpoint serves.
struct Introspection {
    reflection: bool,
    health: bool,
    node: Option<crate::reflection::NodeInfo>,
}

/// Default [`EndpointBuilder::max_connections`].
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default [`EndpointBuilder::max_handshakes`].
const DEFAULT_MAX_HANDSHAKES: usize = 128;

impl fmt::Debug for EndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointBuilder")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl EndpointBuilder {
    /// Uses a fixed node id instead of a random one.
    pub fn node_id(mut self, id: NodeId) -> Self {
        self.node = Some(id);
        self
    }

    /// Serves these operations on every connection of the endpoint. Call it
    /// again to add more services.
    pub fn serve(mut self, service: impl IntoRouter) -> Self {
        self.router = std::mem::take(&mut self.router).add(service);
        self
    }

    /// Connection tuning (limits, keepalive, timeouts).
    pub fn config(mut self, config: ConnectionConfig) -> Self {
        self.config = config;
        self
    }

    /// TLS settings for `tls://` URLs.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.transport.tls = Some(tls);
        self
    }

    /// Application data sent in the hello of every connection this endpoint dials.
    pub fn hello_data(mut self, data: impl Into<Bytes>) -> Self {
        self.hello_data = data.into();
        self
    }

    /// Decides on each incoming connection: `Ok(data)` accepts and returns
    /// `data` to the dialer, `Err(reason)` refuses with that reason.
    pub fn accept<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ConnectRequest) -> Result<Bytes, String> + Send + Sync + 'static,
    {
        self.accept = Some(Arc::new(hook));
        self
    }

    /// Decides on each session a peer opens on any of this endpoint's
    /// connections: return `Ok(data)` to accept (the opener receives `data`),
    /// `Err(reject)` to refuse. A hook that does neither before the opener's
    /// settle timeout leaves the opener with `CallError::SessionTimeout`.
    /// Without a hook, every session is refused.
    pub fn on_session<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(SessionRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, Reject>> + Send + 'static,
    {
        self.sessions = Some(Arc::new(move |req| Box::pin(hook(req))));
        self
    }

    /// Runs `interceptor` before the handler of every call peers open on
    /// this endpoint's connections (after the ones added before it); see
    /// [`Interceptor`]. It may refuse the call or leave values for the handler.
    pub fn intercept(mut self, interceptor: impl Interceptor) -> Self {
        self.router = std::mem::take(&mut self.router).intercept(interceptor);
        self
    }

    /// Runs `interceptor` around every call this endpoint's connections open
    /// (after the ones added before it); see [`CallInterceptor`]. It may add
    /// metadata or refuse the call before it is sent, and sees how it ended.
    pub fn intercept_calls(mut self, interceptor: impl CallInterceptor) -> Self {
        self.call_interceptors.push(Arc::new(interceptor));
        self
    }

    /// Every connection of this endpoint, either way, proves knowledge of
    /// `key` in its handshake, by a mutual challenge-response over both
    /// sides' nonces (the key never crosses the wire; a recorded handshake
    /// cannot be replayed): a dialer without it, or with another key, is
    /// refused before anything is served ([`RefusalCode::KeyRequired`](crate::wire::handshake::RefusalCode::KeyRequired),
    /// [`RefusalCode::KeyMismatch`](crate::wire::handshake::RefusalCode::KeyMismatch)); a listener that cannot prove it is not
    /// trusted ([`ConnectError::Untrusted`]). `docs/PROTOCOL.md` §3.6.
    pub fn session_key(mut self, key: SessionKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Admits only peers whose verified certificate the list admits, in
    /// both directions: incoming handshakes from others are refused with
    /// [`RefusalCode::NotAllowed`](crate::wire::handshake::RefusalCode::NotAllowed), and dialed peers that do not pass fail
    /// with [`ConnectError::Untrusted`] before the hello is sent. Needs a
    /// secured transport; for dialers to be checked, the TLS server must ask
    /// for client certificates (`TlsConfig::require_client_certs`). Replace
    /// it at run time with [`Endpoint::set_allow_list`].
    pub fn allow(mut self, list: AllowList) -> Self {
        self.allow = Some(list);
        self
    }

    /// Refuses incoming connections (with `RefusalCode::TooManyConnections`)
    /// while `max` connections are open on this endpoint, counting both
    /// directions. 4096 by default;
    /// `usize::MAX` for no limit.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Most incoming handshakes in progress at once, across the endpoint's
    /// listeners (at least 1). While all are taken the listeners accept
    /// nothing more, so a flood of dialers that never finish their hello
    /// waits in the kernel's backlog instead of holding tasks and buffers
    /// here; each handshake is bounded by the handshake timeout.
    /// 128 by default.
    pub fn max_handshakes(mut self, max: usize) -> Self {
        self.max_handshakes = max.max(1);
        self
    }

    /// Does not serve `plexus.Reflection/describe` (see [`crate::reflection`]).
    pub fn without_reflection(mut self) -> Self {
        self.introspection.reflection = false;
        self
    }

    /// Does not serve `plexus.Health/check` and `/watch` (see [`crate::health`]).
    pub fn without_health(mut self) -> Self {
        self.introspection.health = false;
        self
    }

    /// What a node adds to the endpoint's reflection.
    pub(crate) fn node_reflection(mut self, node: crate::reflection::NodeInfo) -> Self {
        self.introspection.node = Some(node);
        self
    }

    /// Builds the endpoint. It listens nowhere until [`Endpoint::listen`].
    pub fn build(self) -> Endpoint {
        let shutdown = CancellationToken::new();
        let health = Health::new(
            self.router.descriptors().iter().map(|d| d.full_name),
            shutdown.clone(),
        );
        let router = self.router.add(builtin_routes(self.sessions));
        Endpoint {
            inner: Arc::new(Inner {
                node: self.node.unwrap_or_else(NodeId::random),
                router: self.introspection.add_routes(router, &health),
                events: Arc::default(),
                health,
                config: self.config,
                transport: self.transport,
                hello_data: self.hello_data,
                accept: self.accept,
                key: self.key,
                call_interceptors: (!self.call_interceptors.is_empty())
                    .then(|| Arc::new(self.call_interceptors)),
                allow: RwLock::new(self.allow.map(Arc::new)),
                max_connections: self.max_connections,
                handshakes: Arc::new(tokio::sync::Semaphore::new(self.max_handshakes)),
                conns: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(0),
                handshaking: AtomicUsize::new(0),
                shutdown,
            }),
        }
    }
}

impl Introspection {
    /// `router` with the health and reflection routes added; reflection
    /// describes everything else the router serves.
    fn add_routes(self, mut router: Router, health: &Health) -> Router {
        if self.health {
            router = router.add(health.routes());
        }
        if self.reflection {
            let reflection = crate::reflection::routes(&router, self.node);
            router = router.add(reflection);
        }
        router
    }
}

/// A listener an endpoint runs; accepting stops on [`Listening::close`] or
/// when the endpoint shuts down.
#[derive(Debug)]
pub struct Listening {
    local: Url,
    all: Vec<Url>,
    stop: CancellationToken,
}

impl Listening {
    /// Where the listener is reachable (with the real port for `:0`).
    pub fn local_url(&self) -> &Url {
        &self.local
    }

    /// Every address it listens on: a `tcp://` host name binds each address
    /// it resolves to (IPv4 and IPv6), on one port.
    pub fn local_urls(&self) -> &[Url] {
        &self.all
    }

    /// Stops accepting; established connections are unaffected.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

// Defined here rather than with the rest of `Connection`: a connection
// never names the endpoint above it, and this one is a shortcut for one.
impl Connection {
    /// Dials `url` from a fresh endpoint (a random node id, no services of its
    /// own, default configuration) and completes the handshake.
    ///
    /// For TLS, handshake data, services the peer may call back, or tuning,
    /// build an [`Endpoint`] instead.
    pub async fn connect(url: impl ToUrl) -> Result<Connection, ConnectError> {
        Endpoint::builder().build().connect(url).await
    }
}

impl Endpoint {
    /// Starts configuring an endpoint.
    pub fn builder() -> EndpointBuilder {
        EndpointBuilder {
            node: None,
            router: Router::new(),
            config: ConnectionConfig::default(),
            transport: TransportConfig::new(),
            hello_data: Bytes::new(),
            accept: None,
            sessions: None,
            key: None,
            allow: None,
            call_interceptors: CallInterceptors::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            introspection: Introspection {
                reflection: true,
                health: true,
                node: None,
            },
        }
    }

    /// The endpoint's health table: set a service's status for
    /// `plexus.Health/check` and `/watch` (see [`crate::health`]).
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// Subscribes to this endpoint's connection and session events.
    pub fn events(&self) -> Events {
        self.inner.events.subscribe()
    }

    pub(crate) fn config(&self) -> &ConnectionConfig {
        &self.inner.config
    }

    /// A connection to `url` that keeps itself up: it dials in the
    /// background, redials with `backoff` whenever the link drops, and makes
    /// calls wait for a link up to their deadline. Returns at once; only a
    /// malformed URL is an error here.
    ///
    /// Failed calls are retried by the default [`RetryPolicy`]; see
    /// [`reconnecting_with`](Self::reconnecting_with).
    pub fn reconnecting(
        &self,
        url: impl ToUrl,
        backoff: Backoff,
    ) -> Result<Connection, ConnectError> {
        self.reconnecting_with(url, backoff, RetryPolicy::default())
    }

    /// [`reconnecting`](Self::reconnecting) with the retry policy for its
    /// calls: how often, how far apart and within what budget a call the
    /// peer never ran, or an idempotent call the link dropped under, is
    /// tried again.
    pub fn reconnecting_with(
        &self,
        url: impl ToUrl,
        backoff: Backoff,
        retry: RetryPolicy,
    ) -> Result<Connection, ConnectError> {
        let url = url.to_url().map_err(transport::TransportError::from)?;
        let endpoint = self.clone();
        let dial: Dial = Box::new(move |url| {
            let (endpoint, url) = (endpoint.clone(), url.clone());
            Box::pin(async move { endpoint.connect(url).await })
        });
        Ok(Connection::redial(Redial::start(
            dial,
            self.node_id(),
            self.config().default_timeout,
            url,
            backoff,
            retry,
        )))
    }

    /// This endpoint's node id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// Replaces the allow-list (`None`: admit every peer the transport
    /// accepts), at once and for every listener and dialer of the endpoint.
    /// Open connections whose peer the new list does not admit are closed
    /// with a goaway saying why; their calls fail with `ConnectionLost`.
    /// Returns how many were closed.
    pub fn set_allow_list(&self, list: Option<AllowList>) -> usize {
        let list = list.map(Arc::new);
        *self.inner.allow.write().unwrap_or_else(|e| e.into_inner()) = list.clone();
        let Some(list) = list else { return 0 };
        let mut closed = 0;
        for conn in self.connections() {
            if let Err(reason) = list.check(conn.peer().identity()) {
                tracing::info!(peer = %conn.peer().label(), "closing: {reason}");
                conn.revoke(&reason);
                closed += 1;
            }
        }
        closed
    }

    /// The allow-list in force, if any.
    pub fn allow_list(&self) -> Option<AllowList> {
        self.inner
            .allow
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .cloned()
    }

    /// The connections open right now, both accepted and dialed.
    pub fn connections(&self) -> Vec<Connection> {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Binds `url` and accepts connections on it in the background.
    pub async fn listen(&self, url: impl ToUrl) -> Result<Listening, ConnectError> {
        let url = url.to_url().map_err(transport::TransportError::from)?;
        let mut listener = transport::listen(&url, &self.inner.transport).await?;
        let local = listener.local_url().clone();
        let all = listener.local_urls();
        let stop = self.inner.shutdown.child_token();
        let inner = self.inner.clone();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            loop {
                // A place among the handshakes in progress first: without
                // one, nothing more is accepted.
                let place = tokio::select! {
                    _ = stop2.cancelled() => return,
                    p = inner.handshakes.clone().acquire_owned() => p,
                };
                let Ok(place) = place else { return };
                let accepted = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok(c) => {
                        let inner = inner.clone();
                        tokio::spawn(async move {
                            let _place = place;
                            let remote = c.remote.clone();
                            if let Err(e) = accept_one(&inner, c).await {
                                tracing::debug!(remote = %remote, "incoming connection failed: {e}");
                                inner.events.send(Event::HandshakeFailed {
                                    remote,
                                    code: e.refusal_code(),
                                    reason: e.to_string(),
                                });
                            }
                        });
                    }
                    Err(e) => {
                        drop(place);
                        match &e {
                            // One peer's TLS, upgrade or QUIC handshake
                            // failed: say so, and go on accepting at once.
                            transport::TransportError::Tls { url, .. }
                            | transport::TransportError::WebSocket { url, .. }
                            | transport::TransportError::Quic { url, .. } => {
                                tracing::debug!("incoming connection failed: {e}");
                                inner.events.send(Event::HandshakeFailed {
                                    remote: url.clone(),
                                    code: None,
                                    reason: e.to_string(),
                                });
                            }
                            _ => {
                                tracing::debug!("accept failed: {e}");
                                // Out of file descriptors and the like: back
                                // off instead of spinning.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }
            }
        });
        Ok(Listening { local, all, stop })
    }

    /// Dials `url`, completes the handshake and returns the connection.
    pub async fn connect(&self, url: impl ToUrl) -> Result<Connection, ConnectError> {
        self.connect_with(url, self.inner.hello_data.clone()).await
    }

    /// Dials `url` sending `data` in the hello (instead of the endpoint's
    /// default hello data). The listener's answer is in
    /// [`PeerInfo::data`] of the returned connection.
    pub async fn connect_with(
        &self,
        url: impl ToUrl,
        data: impl Into<Bytes>,
    ) -> Result<Connection, ConnectError> {
        let url = url.to_url().map_err(transport::TransportError::from)?;
        let label = url.to_string();
        let me = self.inner.node;
        let hello = DialerHello::new(self.inner.local_side(), data.into())
            .map_err(|f| connect_error(&label, me, f))?;
        let reach = self.inner.config.connect_timeout;
        let connected = tokio::time::timeout(reach, transport::dial(&url, &self.inner.transport))
            .await
            .map_err(|_| ConnectError::ConnectTimeout {
                url: label.clone(),
                after: reach,
            })??;
        // The listener's certificate, checked before anything is sent to it.
        if let Err(reason) = self.inner.check_allowed(connected.identity.as_ref()) {
            return Err(ConnectError::Untrusted { url: label, reason });
        }
        let identity = connected.identity;
        let (mut rd, mut wr) = connected.stream.split();
        let limit = self.inner.config.handshake_timeout;
        let (mut driver, hello) = hello.start(limit, now());
        let deadline = tokio::time::Instant::from_std(driver.deadline());
        let step = tokio::time::timeout_at(deadline, async {
            send(&mut wr, &hello).await.map_err(|e| closed(&label, e))?;
            let mut buf = BytesMut::with_capacity(256);
            loop {
                buf.clear();
                let step = match rd.read_buf(&mut buf).await {
                    Ok(0) => driver.end_of_stream(),
                    Ok(_) => driver.receive(&buf, now()),
                    Err(e) => return Err(closed(&label, e)),
                };
                match step {
                    DialerStep::Read => {}
                    DialerStep::Accepted { proof, agreed } => {
                        if let Some(proof) = proof {
                            send(&mut wr, &proof).await.map_err(|e| closed(&label, e))?;
                        }
                        return Ok(agreed);
                    }
                    DialerStep::Failed(f) => return Err(connect_error(&label, me, f)),
                }
            }
        })
        .await;
        let agreed = match step {
            Ok(r) => r?,
            Err(_) => match driver.timed_out(now()) {
                Some(DialerStep::Failed(f)) => return Err(connect_error(&label, me, f)),
                _ => {
                    return Err(ConnectError::HandshakeTimeout {
                        url: label,
                        after: limit,
                    })
                }
            },
        };
        let est = Established {
            peer: PeerInfo::new(NodeId(agreed.peer_node), label, agreed.data)
                .with_identity(identity),
            local: me,
            dialer: true,
            peer_max_frame: agreed.peer_max_frame,
            peer_window: agreed.peer_window,
            peer_max_calls: agreed.peer_max_calls,
            call_interceptors: self.inner.call_interceptors.clone(),
            leftover: agreed.leftover,
        };
        Ok(self.register(Connection::start(
            (rd, wr),
            est,
            self.inner.router.routes().clone(),
            self.inner.config.clone(),
            self.inner.events.clone(),
        )))
    }

    fn register(&self, conn: Connection) -> Connection {
        register(&self.inner, conn, None)
    }

    /// Shuts down in two steps, for load balancers: reports `NOT_SERVING`
    /// on the health service at once while still taking connections and
    /// calls for `grace`, then [`shutdown`](Self::shutdown).
    pub async fn drain(&self, grace: Duration) {
        self.inner.health.drain();
        tokio::time::sleep(grace).await;
        self.shutdown().await;
    }

    /// Stops every listener and closes every connection gracefully (health
    /// reports `NOT_SERVING` from the start).
    pub async fn shutdown(&self) {
        self.inner.health.drain();
        self.inner.shutdown.cancel();
        let conns = self.connections();
        let closing = conns.iter().map(|c| c.close());
        futures_util::future::join_all(closing).await;
    }
}

impl Inner {
    /// What this endpoint announces in a handshake.
    fn local_side(&self) -> LocalSide {
        LocalSide {
            node_id: self.node.0,
            max_frame: self.config.max_frame,
            window: self.config.window,
            max_calls: self.config.max_calls,
            key: self.key.clone(),
        }
    }

    /// Whether the allow-list (if any) admits a peer with `identity`.
    fn check_allowed(&self, identity: Option<&PeerIdentity>) -> Result<(), String> {
        let list = self.allow.read().unwrap_or_else(|e| e.into_inner()).clone();
        match list {
            None => Ok(()),
            Some(list) => list.check(identity),
        }
    }
}

fn register(inner: &Arc<Inner>, conn: Connection, slot: Option<HandshakeSlot<'_>>) -> Connection {
    let key = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut conns = inner.conns.lock().unwrap_or_else(|e| e.into_inner());
    conns.insert(key, conn.clone());
    // The handshake's place is given back under the same lock: a limit
    // check between the two would count this connection twice.
    drop(slot);
    drop(conns);
    inner.events.send(Event::Connected { peer: conn.peer() });
    let weak = Arc::downgrade(inner);
    // Captures only the endpoint and the key: the peer comes with the call.
    let forget = move |peer: PeerInfo, reason: CloseReason| {
        if let Some(inner) = weak.upgrade() {
            inner
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            inner.events.send(Event::Disconnected { peer, reason });
        } else {
            // The endpoint is gone (one made by `Connection::connect`): no
            // subscriber is left, but the connection still ended.
            crate::connection::events::endpoint_event(&Event::Disconnected { peer, reason });
        }
    };
    // Told by the connection's own task when it ends: no task per
    // connection waits for it here.
    match conn.direct_shared() {
        Some(shared) => shared.on_end(Box::new(forget)),
        None => {
            let watched = conn.clone();
            tokio::spawn(async move {
                let reason = watched.closed().await;
                forget(watched.peer(), reason);
            });
        }
    }
    conn
}

/// The current instant, for the handshake drivers (tokio's clock, so that
/// paused time in tests drives them too).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn send(wr: &mut WriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

fn closed(url: &str, e: std::io::Error) -> ConnectError {
    ConnectError::Closed {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// A handshake driver's failure as the error the application sees.
fn connect_error(url: &str, node: NodeId, failure: HandshakeFailure) -> ConnectError {
    let url = url.to_string();
    match failure {
        HandshakeFailure::VersionMismatch { theirs } => ConnectError::VersionMismatch {
            url,
            ours: handshake::VERSION,
            theirs,
        },
        HandshakeFailure::SelfConnect => ConnectError::SelfConnect {
            url,
            node: node.to_string(),
        },
        HandshakeFailure::Refused { code, reason } => ConnectError::Refused { url, code, reason },
        HandshakeFailure::Malformed(source) => ConnectError::Handshake { url, source },
        HandshakeFailure::Untrusted(reason) => ConnectError::Untrusted { url, reason },
        HandshakeFailure::TimedOut { after } => ConnectError::HandshakeTimeout { url, after },
        HandshakeFailure::Closed(reason) => ConnectError::Closed { url, reason },
    }
}

/// Runs the listener's side of the handshake on one accepted stream: the
/// driver decides, this reads, writes and waits.
async fn accept_one(inner: &Arc<Inner>, c: transport::Connected) -> Result<(), ConnectError> {
    let remote = c.remote;
    let identity = c.identity;
    let (mut rd, mut wr): (ReadHalf, WriteHalf) = c.stream.split();
    let me = inner.node;
    let mut driver = ListenerHandshake::new(
        inner.local_side(),
        inner.config.hello_timeout,
        inner.config.handshake_timeout,
        now(),
    );
    // Held until the connection is registered, so handshakes running side
    // by side cannot all pass the limit check before any of them counts.
    let mut slot = None;
    let mut buf = BytesMut::with_capacity(256);
    let mut step = ListenerStep::Read;
    let agreed = loop {
        step = match step {
            ListenerStep::SendAndRead(welcome) => {
                let deadline = tokio::time::Instant::from_std(driver.deadline());
                match tokio::time::timeout_at(deadline, send(&mut wr, &welcome)).await {
                    Ok(Ok(())) => ListenerStep::Read,
                    Ok(Err(e)) => return Err(closed(&remote, e)),
                    Err(_) => driver.timed_out(now()).unwrap_or(ListenerStep::Read),
                }
            }
            ListenerStep::Read => {
                buf.clear();
                let deadline = tokio::time::Instant::from_std(driver.deadline());
                match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => driver.end_of_stream(),
                    Ok(Ok(_)) => driver.receive(&buf, now()),
                    Ok(Err(e)) => return Err(closed(&remote, e)),
                    Err(_) => driver.timed_out(now()).unwrap_or(ListenerStep::Read),
                }
            }
            ListenerStep::Admit => {
                let max = inner.max_connections;
                slot = HandshakeSlot::take(inner, max).ok();
                let admission = Admission {
                    at_limit: slot.is_none().then_some(max),
                    shutting_down: inner.shutdown.is_cancelled(),
                    allowed: inner.check_allowed(identity.as_ref()),
                };
                driver.admit(admission, |hello| match &inner.accept {
                    Some(hook) => hook(&ConnectRequest {
                        node: NodeId(hello.node_id),
                        remote: remote.clone(),
                        data: hello.data.clone(),
                        identity: identity.clone(),
                    }),
                    None => Ok(Bytes::new()),
                })
            }
            ListenerStep::Accepted { answer, agreed } => {
                if let Some(welcome) = answer {
                    let deadline = tokio::time::Instant::from_std(driver.deadline());
                    match tokio::time::timeout_at(deadline, send(&mut wr, &welcome)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(closed(&remote, e)),
                        Err(_) => {
                            return Err(ConnectError::HandshakeTimeout {
                                url: remote,
                                after: inner.config.handshake_timeout,
                            })
                        }
                    }
                }
                break agreed;
            }
            ListenerStep::Failed { answer, failure } => {
                if let Some(refusal) = answer {
                    // Best effort: the peer is told why if it still listens.
                    let _ = send(&mut wr, &refusal).await;
                    let _ = wr.shutdown().await;
                }
                return Err(connect_error(&remote, me, failure));
            }
        }
    };
    let est = Established {
        peer: PeerInfo::new(NodeId(agreed.peer_node), remote, agreed.data).with_identity(identity),
        local: me,
        dialer: false,
        peer_max_frame: agreed.peer_max_frame,
        peer_window: agreed.peer_window,
        peer_max_calls: agreed.peer_max_calls,
        call_interceptors: inner.call_interceptors.clone(),
        leftover: agreed.leftover,
    };
    let conn = Connection::start(
        (rd, wr),
        est,
        inner.router.routes().clone(),
        inner.config.clone(),
        inner.events.clone(),
    );
    register(inner, conn, slot);
    Ok(())
}

/// A place under the connection limit, held by a handshake that passed the
/// check and has not registered its connection yet.
struct HandshakeSlot<'a> {
    inner: &'a Inner,
}

impl<'a> HandshakeSlot<'a> {
    /// Takes a place if open connections plus handshakes in progress are
    /// below `max`.
    fn take(inner: &'a Inner, max: usize) -> Result<Self, ()> {
        // Counted under the connection table's lock, which `register` also
        // takes, so a connection is never missed nor counted by two checks
        // as free.
        let conns = inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        let busy = conns.len() + inner.handshaking.load(Ordering::Acquire);
        if busy >= max {
            return Err(());
        }
        inner.handshaking.fetch_add(1, Ordering::AcqRel);
        Ok(HandshakeSlot { inner })
    }
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.inner.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An endpoint with one listener: the quickest way to serve.
///
/// ```no_run
/// # async fn demo() -> Result<(), plexus::ConnectError> {
/// use plexus::{Bytes, Reject, Router, Server};
/// let server = Server::bind("tcp://127.0.0.1:0")
///     .serve(Router::new().unary("demo.Echo/echo", |_ctx, b: Bytes| async move { Ok::<_, Reject>(b) }))
///     .start()
///     .await?;
/// println!("listening on {}", server.local_url());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    endpoint: Endpoint,
    listening: Listening,
}

/// Configures a [`Server`].
#[must_use]
#[derive(Debug)]
pub struct ServerBuilder {
    url: String,
    endpoint: EndpointBuilder,
}

impl Server {
    /// Starts configuring a server that will listen on `url`.
    pub fn bind(url: impl Into<String>) -> ServerBuilder {
        ServerBuilder {
            url: url.into(),
            endpoint: Endpoint::builder(),
        }
    }

    /// Where the server is reachable (with the real port for `:0`).
    pub fn local_url(&self) -> &Url {
        self.listening.local_url()
    }

    /// The endpoint behind the server: its node id, its connections (to push
    /// to connected clients), and further listeners.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The client connections open right now.
    pub fn connections(&self) -> Vec<Connection> {
        self.endpoint.connections()
    }

    /// The server's health table; see [`Endpoint::health`].
    pub fn health(&self) -> &Health {
        self.endpoint.health()
    }

    /// Reports `NOT_SERVING` at once, keeps serving for `grace`, then shuts
    /// down; see [`Endpoint::drain`].
    pub async fn drain(&self, grace: Duration) {
        self.endpoint.health().drain();
        tokio::time::sleep(grace).await;
        self.shutdown().await;
    }

    /// Stops accepting and closes every connection gracefully.
    pub async fn shutdown(&self) {
        self.endpoint.health().drain();
        self.listening.close();
        self.endpoint.shutdown().await;
    }
}

impl ServerBuilder {
    /// Serves these operations (call again to add more services).
    pub fn serve(mut self, service: impl IntoRouter) -> Self {
        self.endpoint = self.endpoint.serve(service);
        self
    }

    /// Connection tuning.
    pub fn config(mut self, config: ConnectionConfig) -> Self {
        self.endpoint = self.endpoint.config(config);
        self
    }

    /// TLS settings (required for `tls://`).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.endpoint = self.endpoint.tls(tls);
        self
    }

    /// A fixed node id.
    pub fn node_id(mut self, id: NodeId) -> Self {
        self.endpoint = self.endpoint.node_id(id);
        self
    }

    /// Does not serve reflection; see [`EndpointBuilder::without_reflection`].
    pub fn without_reflection(mut self) -> Self {
        self.endpoint = self.endpoint.without_reflection();
        self
    }

    /// Does not serve health; see [`EndpointBuilder::without_health`].
    pub fn without_health(mut self) -> Self {
        self.endpoint = self.endpoint.without_health();
        self
    }

    /// Refuses connections beyond `max`; see [`EndpointBuilder::max_connections`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.endpoint = self.endpoint.max_connections(max);
        self
    }

    /// The session key every connection must prove; see
    /// [`EndpointBuilder::session_key`].
    pub fn session_key(mut self, key: SessionKey) -> Self {
        self.endpoint = self.endpoint.session_key(key);
        self
    }

    /// Admits only these certificates; see [`EndpointBuilder::allow`].
    pub fn allow(mut self, list: AllowList) -> Self {
        self.endpoint = self.endpoint.allow(list);
        self
    }

    /// Runs `interceptor` before every handler; see [`EndpointBuilder::intercept`].
    pub fn intercept(mut self, interceptor: impl Interceptor) -> Self {
        self.endpoint = self.endpoint.intercept(interceptor);
        self
    }

    /// Decides on each incoming connection; see [`EndpointBuilder::accept`].
    pub fn accept<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ConnectRequest) -> Result<Bytes, String> + Send + Sync + 'static,
    {
        self.endpoint = self.endpoint.accept(hook);
        self
    }

    /// Binds and starts accepting.
    pub async fn start(self) -> Result<Server, ConnectError> {
        let endpoint = self.endpoint.build();
        let listening = endpoint.listen(self.url.as_str()).await?;
        Ok(Server {
            endpoint,
            listening,
        })
    }
}
