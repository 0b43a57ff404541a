//! Handlers by operation id: what a connection runs when the peer calls.
//!
//! A [`Router`] maps operation ids (`package.Service/method`) to handlers of
//! one of five kinds. Generated handler adapters build routers; hand-written
//! byte-level handlers use the same methods. Routers merge, so several
//! services share one connection.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::connection::scope::CallScope;
use crate::connection::{CallOptions, Connection, Inbound, Outbound, Session, Shared};
use crate::descriptor::ServiceDescriptor;
use crate::error::Reject;
use crate::peer::PeerInfo;

/// What a handler knows about the call it is serving.
#[derive(Clone)]
pub struct CallContext {
    pub(crate) op: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Connection,
    pub(crate) session: Option<Session>,
    pub(crate) deadline: Option<tokio::time::Instant>,
    /// `None` when the caller sent none (most calls), saving an allocation.
    pub(crate) metadata: Option<Arc<[(String, Bytes)]>>,
    pub(crate) token: CancellationToken,
    /// What the endpoint's interceptors left for the handler, if anything.
    pub(crate) extensions: Option<Arc<crate::intercept::Extensions>>,
    /// The call's span and metrics while something observes it.
    pub(crate) record: Option<Arc<crate::observe::call::CallRecord>>,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("op", &self.op)
            .field("peer", self.shared.peer.label())
            .finish_non_exhaustive()
    }
}

impl CallContext {
    /// The operation id being served.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The caller.
    pub fn peer(&self) -> &PeerInfo {
        &self.shared.peer
    }

    /// The session the call runs inside, if the caller made it through a
    /// [`Session`]. Calls back through it stay inside the session.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The connection the call came in on: call the caller back through it.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Time left before the caller's deadline, if it set one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// The metadata value for `key`, if the caller sent one.
    pub fn metadata(&self, key: &str) -> Option<&Bytes> {
        self.all_metadata()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Every metadata pair the caller sent, in order.
    pub fn all_metadata(&self) -> &[(String, Bytes)] {
        self.metadata.as_deref().unwrap_or(&[])
    }

    /// Resolves when the caller cancels, the deadline passes or the connection
    /// ends. The handler's future is dropped at that moment; work it spawned
    /// can watch this to stop too.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Whether the call has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A value an interceptor left for the handler (see
    /// [`Interceptor`](crate::intercept::Interceptor)), by type.
    pub fn extension<T: std::any::Any + Send + Sync>(&self) -> Option<&T> {
        self.extensions.as_deref()?.get::<T>()
    }

    /// A token that fires on cancellation, for work the handler spawns.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Options for a call that is a child of this one, for work on another
    /// task (on the handler's own task every call is a child already): the
    /// child ends by this call's deadline if its own is later, and is
    /// cancelled when this call ends — cancelled by the caller, past its
    /// deadline, or answered. Set a shorter timeout or metadata on top.
    ///
    /// ```
    /// # async fn demo(ctx: plexus::CallContext, conn: plexus::Connection) {
    /// let opts = ctx.child_options().metadata("trace-id", "abc");
    /// tokio::spawn(async move {
    ///     let _ = conn.call("demo.Audit/log", plexus::Bytes::new(), opts).await;
    /// });
    /// # }
    /// ```
    pub fn child_options(&self) -> CallOptions {
        CallOptions::new().child_of(self.scope())
    }

    /// This call as the parent of the calls its handler makes.
    pub(crate) fn scope(&self) -> CallScope {
        CallScope {
            deadline: self.deadline,
            token: self.token.clone(),
        }
    }
}

type UnaryFn =
    dyn Fn(CallContext, Bytes) -> BoxFuture<'static, Result<Bytes, Reject>> + Send + Sync;
type OneWayFn = dyn Fn(CallContext, Bytes) -> BoxFuture<'static, ()> + Send + Sync;
type ServerStreamFn =
    dyn Fn(CallContext, Bytes, Outbound) -> BoxFuture<'static, Result<(), Reject>> + Send + Sync;
type ClientStreamFn =
    dyn Fn(CallContext, Inbound) -> BoxFuture<'static, Result<Bytes, Reject>> + Send + Sync;
type BidiFn =
    dyn Fn(CallContext, Inbound, Outbound) -> BoxFuture<'static, Result<(), Reject>> + Send + Sync;

/// A registered handler.
#[derive(Clone)]
pub(crate) enum Route {
    Unary(Arc<UnaryFn>),
    OneWay(Arc<OneWayFn>),
    ServerStream(Arc<ServerStreamFn>),
    ClientStream(Arc<ClientStreamFn>),
    Bidi(Arc<BidiFn>),
}

impl Route {
    /// Whether the request side is a single message carried by the call-open frame.
    pub(crate) fn single_request(&self) -> bool {
        matches!(
            self,
            Route::Unary(_) | Route::OneWay(_) | Route::ServerStream(_)
        )
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            Route::Unary(_) => "unary",
            Route::OneWay(_) => "one-way",
            Route::ServerStream(_) => "server-stream",
            Route::ClientStream(_) => "client-stream",
            Route::Bidi(_) => "bidi-stream",
        }
    }
}

/// Handlers by operation id.
///
/// ```
/// use plexus::{Bytes, Reject, Router};
/// let router = Router::new()
///     .unary("demo.Echo/echo", |_ctx, body: Bytes| async move { Ok::<_, Reject>(body) })
///     .unary("demo.Echo/fail", |_ctx, _body| async move {
///         Err::<Bytes, _>(Reject::new(400, "always fails"))
///     });
/// assert!(router.contains("demo.Echo/echo"));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    routes: Arc<HashMap<Arc<str>, Route>>,
    /// Run before every handler (but the runtime's own plumbing).
    interceptors: crate::intercept::Interceptors,
    /// The contracts of the services merged in, so a node can announce them.
    descriptors: Vec<&'static ServiceDescriptor>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ops: Vec<_> = self.routes.keys().collect();
        ops.sort();
        let services: Vec<_> = self.descriptors.iter().map(|d| d.full_name).collect();
        f.debug_struct("Router")
            .field("operations", &ops)
            .field("services", &services)
            .finish()
    }
}

/// Anything that can become a [`Router`]: a router, or a generated handler adapter.
pub trait IntoRouter {
    /// Converts into a router.
    fn into_router(self) -> Router;
}

impl IntoRouter for Router {
    fn into_router(self) -> Router {
        self
    }
}

impl Router {
    /// An empty router: every call gets `NoSuchOperation`.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(mut self, op: String, route: Route) -> Self {
        let routes = Arc::make_mut(&mut self.routes);
        if routes.contains_key(op.as_str()) {
            panic!("operation `{op}` is registered twice on one router; each operation id must be unique");
        }
        routes.insert(Arc::from(op), route);
        self
    }

    /// Whether a handler is registered for `op`.
    pub fn contains(&self, op: &str) -> bool {
        self.routes.contains_key(op)
    }

    /// The registered operation ids, sorted.
    pub fn operations(&self) -> Vec<&str> {
        let mut ops: Vec<&str> = self.routes.keys().map(|k| &**k).collect();
        ops.sort_unstable();
        ops
    }

    /// Records that this router serves the contract `descriptor` (generated
    /// handler adapters do this for their own service). A node announces the
    /// recorded contracts to its peers; a router without any still serves its
    /// operations to whoever calls them.
    pub fn with_descriptor(mut self, descriptor: &'static ServiceDescriptor) -> Self {
        if !self
            .descriptors
            .iter()
            .any(|d| d.full_name == descriptor.full_name)
        {
            self.descriptors.push(descriptor);
        }
        self
    }

    /// The contracts of the services merged into this router, in the order
    /// they were added.
    pub fn descriptors(&self) -> &[&'static ServiceDescriptor] {
        &self.descriptors
    }

    /// Runs `interceptor` before every handler of this router (and of routers
    /// merged into it), after the ones added before it. See
    /// [`Interceptor`](crate::intercept::Interceptor).
    pub fn intercept(mut self, interceptor: impl crate::intercept::Interceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    pub(crate) fn interceptors(&self) -> &crate::intercept::Interceptors {
        &self.interceptors
    }

    /// The handler for `op`, with the router's own copy of the name.
    pub(crate) fn route_named(&self, op: &str) -> Option<(Arc<str>, Route)> {
        self.routes
            .get_key_value(op)
            .map(|(name, route)| (name.clone(), route.clone()))
    }

    /// Registers an acked call: one request, one reply or a rejection.
    ///
    /// # Panics
    /// If `op` is already registered.
    pub fn unary<F, Fut>(self, op: impl Into<String>, f: F) -> Self
    where
        F: Fn(CallContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Reject>> + Send + 'static,
    {
        self.insert(
            op.into(),
            Route::Unary(Arc::new(move |c, b| {
                let scope = c.scope();
                Box::pin(scope.enter(f(c, b)))
            })),
        )
    }

    /// Registers a fire-and-forget operation: nothing is sent back.
    ///
    /// # Panics
    /// If `op` is already registered.
    pub fn oneway<F, Fut>(self, op: impl Into<String>, f: F) -> Self
    where
        F: Fn(CallContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.insert(
            op.into(),
            Route::OneWay(Arc::new(move |c, b| {
                let scope = c.scope();
                Box::pin(scope.enter(f(c, b)))
            })),
        )
    }

    /// Registers a server stream: one request, a stream of replies sent through
    /// the [`Outbound`], ended by returning.
    ///
    /// # Panics
    /// If `op` is already registered.
    pub fn server_stream<F, Fut>(self, op: impl Into<String>, f: F) -> Self
    where
        F: Fn(CallContext, Bytes, Outbound) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Reject>> + Send + 'static,
    {
        self.insert(
            op.into(),
            Route::ServerStream(Arc::new(move |c, b, o| {
                let scope = c.scope();
                Box::pin(scope.enter(f(c, b, o)))
            })),
        )
    }

    /// Registers a client stream: a stream of requests, one reply.
    ///
    /// # Panics
    /// If `op` is already registered.
    pub fn client_stream<F, Fut>(self, op: impl Into<String>, f: F) -> Self
    where
        F: Fn(CallContext, Inbound) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Reject>> + Send + 'static,
    {
        self.insert(
            op.into(),
            Route::ClientStream(Arc::new(move |c, i| {
                let scope = c.scope();
                Box::pin(scope.enter(f(c, i)))
            })),
        )
    }

    /// Registers a bidirectional stream.
    ///
    /// # Panics
    /// If `op` is already registered.
    pub fn bidi<F, Fut>(self, op: impl Into<String>, f: F) -> Self
    where
        F: Fn(CallContext, Inbound, Outbound) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Reject>> + Send + 'static,
    {
        self.insert(
            op.into(),
            Route::Bidi(Arc::new(move |c, i, o| {
                let scope = c.scope();
                Box::pin(scope.enter(f(c, i, o)))
            })),
        )
    }

    /// Adds every operation of `other` (another service) to this router.
    ///
    /// # Panics
    /// If both register the same operation id.
    // Named like a builder step, not arithmetic: routers are not summed.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, other: impl IntoRouter) -> Self {
        let other = other.into_router();
        for (op, route) in other.routes.iter() {
            self = self.insert(op.to_string(), route.clone());
        }
        for descriptor in other.descriptors {
            self = self.with_descriptor(descriptor);
        }
        self.interceptors.extend(&other.interceptors);
        self
    }
}
