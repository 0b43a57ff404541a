//! What a connection serves the peer's calls with: the handler of each
//! operation ([`Route`], one of five kinds), what a handler is told about
//! its call ([`CallContext`]), and the table of both with the interceptors
//! they run behind ([`Routes`]). An endpoint's [`Router`](crate::Router),
//! above connections, builds the table; a connection only looks up in it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio_util::sync::{CancellationToken, ReusableBoxFuture};

use super::scope::{CallScope, CallToken};
use super::{CallOptions, Connection, Inbound, Outbound, Session, Shared};
use crate::descriptor::CallKind;
use crate::error::Reject;
use crate::intercept::Interceptors;
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
    pub(crate) token: CallToken,
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
        self.token.lend()
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

/// Where the reader builds the future of a unary handler it runs on the
/// spot: a box kept from one call to the next, reused when the next
/// handler's future has the same layout (so one operation called again and
/// again allocates no box).
pub(crate) type UnarySlot = ReusableBoxFuture<'static, Result<Bytes, Reject>>;

/// A unary handler, type-erased: its future boxed, or built in a reused box.
pub(crate) trait UnaryHandler: Send + Sync {
    /// The handler's future for one call, in a box of its own.
    fn call(&self, ctx: CallContext, body: Bytes) -> BoxFuture<'static, Result<Bytes, Reject>>;

    /// The handler's future for one call, built in `slot`.
    fn call_in(&self, ctx: CallContext, body: Bytes, slot: &mut UnarySlot);
}

/// A unary handler function (see [`Route::unary`]).
struct UnaryFn<F>(F);

impl<F, Fut> UnaryHandler for UnaryFn<F>
where
    F: Fn(CallContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, Reject>> + Send + 'static,
{
    fn call(&self, ctx: CallContext, body: Bytes) -> BoxFuture<'static, Result<Bytes, Reject>> {
        let scope = ctx.scope();
        Box::pin(scope.enter((self.0)(ctx, body)))
    }

    fn call_in(&self, ctx: CallContext, body: Bytes, slot: &mut UnarySlot) {
        let scope = ctx.scope();
        let fut = (self.0)(ctx, body);
        // The scope, and the token it holds, end with the handler: a
        // finished future left in the box holds neither (so the token can
        // go to the next call).
        slot.set(async move { scope.enter(fut).await });
    }
}
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
    Unary(Arc<dyn UnaryHandler>),
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

    /// The call kind this route serves.
    pub(crate) fn call_kind(&self) -> CallKind {
        match self {
            Route::Unary(_) => CallKind::Unary,
            Route::OneWay(_) => CallKind::OneWay,
            Route::ServerStream(_) => CallKind::ServerStream,
            Route::ClientStream(_) => CallKind::ClientStream,
            Route::Bidi(_) => CallKind::Bidi,
        }
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

impl Route {
    /// An acked call's handler: one request, one reply or a rejection. Runs
    /// as its call's scope, so the calls it makes are that call's children.
    pub(crate) fn unary<F, Fut>(f: F) -> Route
    where
        F: Fn(CallContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Reject>> + Send + 'static,
    {
        Route::Unary(Arc::new(UnaryFn(f)))
    }

    /// A fire-and-forget operation's handler.
    pub(crate) fn oneway<F, Fut>(f: F) -> Route
    where
        F: Fn(CallContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Route::OneWay(Arc::new(move |c, b| {
            let scope = c.scope();
            Box::pin(scope.enter(f(c, b)))
        }))
    }

    /// A server stream's handler.
    pub(crate) fn server_stream<F, Fut>(f: F) -> Route
    where
        F: Fn(CallContext, Bytes, Outbound) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Reject>> + Send + 'static,
    {
        Route::ServerStream(Arc::new(move |c, b, o| {
            let scope = c.scope();
            Box::pin(scope.enter(f(c, b, o)))
        }))
    }

    /// A client stream's handler.
    pub(crate) fn client_stream<F, Fut>(f: F) -> Route
    where
        F: Fn(CallContext, Inbound) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Reject>> + Send + 'static,
    {
        Route::ClientStream(Arc::new(move |c, i| {
            let scope = c.scope();
            Box::pin(scope.enter(f(c, i)))
        }))
    }

    /// A bidirectional stream's handler.
    pub(crate) fn bidi<F, Fut>(f: F) -> Route
    where
        F: Fn(CallContext, Inbound, Outbound) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Reject>> + Send + 'static,
    {
        Route::Bidi(Arc::new(move |c, i, o| {
            let scope = c.scope();
            Box::pin(scope.enter(f(c, i, o)))
        }))
    }
}

/// Handlers by operation id and the interceptors they run behind: an
/// endpoint's router as its connections see it (cheap to clone: shared).
#[derive(Clone, Default)]
pub(crate) struct Routes {
    pub(crate) table: Arc<HashMap<Arc<str>, Route>>,
    /// Run before every handler (but the runtime's own plumbing).
    pub(crate) interceptors: Interceptors,
}

impl Routes {
    /// Adds `route` for `op`.
    ///
    /// # Panics
    /// If `op` is already registered.
    pub(crate) fn insert(mut self, op: String, route: Route) -> Self {
        let table = Arc::make_mut(&mut self.table);
        if table.contains_key(op.as_str()) {
            panic!("operation `{op}` is registered twice on one router; each operation id must be unique");
        }
        table.insert(Arc::from(op), route);
        self
    }

    pub(crate) fn interceptors(&self) -> &Interceptors {
        &self.interceptors
    }

    /// The handler for `op`, with the table's own copy of the name.
    pub(crate) fn route_named(&self, op: &str) -> Option<(Arc<str>, Route)> {
        self.table
            .get_key_value(op)
            .map(|(name, route)| (name.clone(), route.clone()))
    }
}
