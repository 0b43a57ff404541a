//! Handlers by operation id: what a connection runs when the peer calls.
//!
//! A [`Router`] maps operation ids (`package.Service/method`) to handlers of
//! one of five kinds. Generated handler adapters build routers; hand-written
//! byte-level handlers use the same methods. Routers merge, so several
//! services share one connection. What a handler is and is given (`Route`,
//! [`CallContext`]) and the table connections look up are defined with the
//! connections below (`connection/handler.rs`); a router builds that table
//! and adds the contracts it serves.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::connection::{CallContext, Inbound, Outbound, Route, Routes};
use crate::descriptor::ServiceDescriptor;
use crate::error::Reject;

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
    /// The handlers and interceptors, as connections look them up.
    routes: Routes,
    /// The contracts of the services merged in, so a node can announce them.
    descriptors: Vec<&'static ServiceDescriptor>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ops: Vec<_> = self.routes.table.keys().collect();
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
        self.routes = self.routes.insert(op, route);
        self
    }

    /// Whether a handler is registered for `op`.
    pub fn contains(&self, op: &str) -> bool {
        self.routes.table.contains_key(op)
    }

    /// The registered operation ids, sorted.
    pub fn operations(&self) -> Vec<&str> {
        let mut ops: Vec<&str> = self.routes.table.keys().map(|k| &**k).collect();
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
        self.routes.interceptors.push(Arc::new(interceptor));
        self
    }

    /// The handlers and interceptors, as this router's connections look
    /// them up.
    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The handler for `op`, with the router's own copy of the name.
    pub(crate) fn route_named(&self, op: &str) -> Option<(Arc<str>, Route)> {
        self.routes.route_named(op)
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
        self.insert(op.into(), Route::unary(f))
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
        self.insert(op.into(), Route::oneway(f))
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
        self.insert(op.into(), Route::server_stream(f))
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
        self.insert(op.into(), Route::client_stream(f))
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
        self.insert(op.into(), Route::bidi(f))
    }

    /// Adds every operation of `other` (another service) to this router.
    ///
    /// # Panics
    /// If both register the same operation id.
    // Named like a builder step, not arithmetic: routers are not summed.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, other: impl IntoRouter) -> Self {
        let other = other.into_router();
        for (op, route) in other.routes.table.iter() {
            self = self.insert(op.to_string(), route.clone());
        }
        for descriptor in other.descriptors {
            self = self.with_descriptor(descriptor);
        }
        self.routes.interceptors.extend(&other.routes.interceptors);
        self
    }
}

// The runtime's own operations (sessions), built below routers.
impl IntoRouter for Routes {
    fn into_router(self) -> Router {
        Router {
            routes: self,
            descriptors: Vec::new(),
        }
    }
}
