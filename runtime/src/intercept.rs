//! Interceptors: async hooks around every call, on both sides.
//!
//! Owns the two hook traits and the chains that run them. A server-side
//! [`Interceptor`] sees each call the peer opens — operation, metadata,
//! the peer and its verified certificate, the session — before its handler
//! runs, and may refuse it with a [`Reject`], or admit it and leave values
//! for the handler ([`CallContext::extension`](crate::CallContext::extension)). A client-side
//! [`CallInterceptor`] sees each call this side opens before it is sent
//! (and may add metadata, such as a bearer token, or refuse it) and its
//! outcome after. Interceptors compose in the order they were added; an
//! endpoint without any pays nothing for them (the serving and calling
//! paths test for an empty chain once). Authorization ([`crate::access`]),
//! tracing and metrics are built on them.
//!
//! Two runtime-internal operations are never intercepted, so a strict
//! policy cannot cut the plumbing: a node's descriptor exchange
//! (`plexus.Node/describe`) and closing a session (`plexus.Session/close`).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::error::{CallError, Reject};
use crate::peer::PeerInfo;

/// Values interceptors leave for the handler, by type.
#[derive(Clone, Default)]
pub struct Extensions(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl Extensions {
    /// Stores `value`, replacing one of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if one was stored.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn extend(&mut self, other: Extensions) {
        if self.0.is_empty() {
            *self = other;
        } else {
            self.0.extend(other.0);
        }
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("values", &self.0.len())
            .finish()
    }
}

/// A call the peer opened, as a server-side interceptor sees it before the
/// handler runs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct IncomingCall {
    pub(crate) op: Arc<str>,
    pub(crate) peer: PeerInfo,
    pub(crate) metadata: Option<Arc<[(String, Bytes)]>>,
    pub(crate) session: Option<Arc<str>>,
}

impl IncomingCall {
    /// The operation id (`package.Service/method`).
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The service part of the operation id (`package.Service`).
    pub fn service(&self) -> &str {
        self.op.split_once('/').map_or(&self.op, |(s, _)| s)
    }

    /// The method part of the operation id.
    pub fn method(&self) -> &str {
        self.op.split_once('/').map_or("", |(_, m)| m)
    }

    /// The caller: node id, address, and its verified certificate
    /// ([`PeerInfo::identity`]).
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
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

    /// The name of the session the call runs inside, if any.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }
}

/// A server-side interceptor: admits a call (with values for the handler)
/// or refuses it.
///
/// Any `Fn(IncomingCall) -> impl Future<Output = Result<Extensions, Reject>>`
/// is one:
///
/// ```
/// use plexus::intercept::{Extensions, IncomingCall};
/// use plexus::{Endpoint, Reject};
///
/// #[derive(Debug)]
/// struct User(String);
///
/// let endpoint = Endpoint::builder()
///     .intercept(|call: IncomingCall| async move {
///         match call.metadata("authorization").map(|v| v.as_ref()) {
///             Some(b"Bearer letmein") => {
///                 let mut ext = Extensions::default();
///                 ext.insert(User("alice".into()));
///                 Ok(ext)
///             }
///             _ => Err(Reject::new(401, "a bearer token is required")),
///         }
///     })
///     .build();
/// # let _ = endpoint;
/// ```
pub trait Interceptor: Send + Sync + 'static {
    /// Decides on `call`. `Err` refuses it: the caller receives the reject
    /// (as [`CallError::Rejected`], or the matching variant for a system
    /// reject such as [`Reject::permission_denied`]) and the handler never
    /// runs. `Ok` admits it, with values the handler reads through
    /// [`CallContext::extension`](crate::CallContext::extension).
    fn intercept(&self, call: IncomingCall) -> BoxFuture<'static, Result<Extensions, Reject>>;
}

impl<F, Fut> Interceptor for F
where
    F: Fn(IncomingCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Extensions, Reject>> + Send + 'static,
{
    fn intercept(&self, call: IncomingCall) -> BoxFuture<'static, Result<Extensions, Reject>> {
        Box::pin(self(call))
    }
}

/// A call this side is about to open, as a client-side interceptor sees it.
#[derive(Debug)]
pub struct OutgoingCall {
    pub(crate) op: Arc<str>,
    pub(crate) peer: PeerInfo,
    // The parts of the call's options an interceptor sees: taken out of them
    // and put back, so this layer needs no connection type.
    pub(crate) timeout: Option<Duration>,
    pub(crate) metadata: Vec<(String, Bytes)>,
}

impl OutgoingCall {
    /// The operation id.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The peer the call goes to.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The call's timeout, if it has one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Adds a metadata pair to the call (the handler and the peer's
    /// interceptors see it).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: impl Into<Bytes>) {
        self.metadata.push((key.into(), value.into()));
    }

    /// The metadata the call carries so far.
    pub fn metadata(&self) -> &[(String, Bytes)] {
        &self.metadata
    }
}

/// A client-side interceptor. `before` runs before the call is sent and
/// may add metadata or refuse the call (nothing is sent then); `after`
/// observes how it ended. For stream calls, `after` sees the opening (the
/// stream itself is the caller's).
pub trait CallInterceptor: Send + Sync + 'static {
    /// Runs before the call is sent.
    fn before<'a>(&'a self, call: &'a mut OutgoingCall) -> BoxFuture<'a, Result<(), CallError>> {
        let _ = call;
        Box::pin(async { Ok(()) })
    }

    /// Runs once the call ended (or, for a stream, was opened): `outcome`
    /// is `Ok` on success, `elapsed` the time since `before`.
    fn after(&self, op: &str, peer: &PeerInfo, outcome: Result<(), &CallError>, elapsed: Duration) {
        let _ = (op, peer, outcome, elapsed);
    }
}

/// The server-side chain of one endpoint (shared: every intercepted call
/// holds it while its interceptors run).
#[derive(Clone, Default)]
pub(crate) struct Interceptors(Arc<Vec<Arc<dyn Interceptor>>>);

impl Interceptors {
    pub(crate) fn push(&mut self, i: Arc<dyn Interceptor>) {
        Arc::make_mut(&mut self.0).push(i);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn extend(&mut self, other: &Interceptors) {
        Arc::make_mut(&mut self.0).extend(other.0.iter().cloned());
    }

    /// Whether `op` is one the runtime keeps for itself (never intercepted).
    pub(crate) fn exempt(op: &str) -> bool {
        op == "plexus.Node/describe" || op == "plexus.Session/close"
    }

    /// Runs every interceptor in order; the first refusal wins.
    pub(crate) async fn admit(&self, call: IncomingCall) -> Result<Extensions, Reject> {
        let Some((last, first)) = self.0.split_last() else {
            return Ok(Extensions::default());
        };
        let mut all = Extensions::default();
        for i in first {
            all.extend(i.intercept(call.clone()).await?);
        }
        // The last one takes the call itself: one interceptor, no clone.
        all.extend(last.intercept(call).await?);
        Ok(all)
    }
}

impl std::fmt::Debug for Interceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interceptors({})", self.0.len())
    }
}

/// The client-side chain of one endpoint.
#[derive(Clone, Default)]
pub(crate) struct CallInterceptors(Vec<Arc<dyn CallInterceptor>>);

impl CallInterceptors {
    pub(crate) fn push(&mut self, i: Arc<dyn CallInterceptor>) {
        self.0.push(i);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs every `before` in order on a call with `timeout` and `metadata`;
    /// returns the metadata to send with.
    pub(crate) async fn before(
        &self,
        op: &str,
        peer: &PeerInfo,
        timeout: Option<Duration>,
        metadata: Vec<(String, Bytes)>,
    ) -> Result<Vec<(String, Bytes)>, CallError> {
        let mut call = OutgoingCall {
            op: op.into(),
            peer: peer.clone(),
            timeout,
            metadata,
        };
        for i in &self.0 {
            i.before(&mut call).await?;
        }
        Ok(call.metadata)
    }

    pub(crate) fn after(
        &self,
        op: &str,
        peer: &PeerInfo,
        outcome: Result<(), &CallError>,
        elapsed: Duration,
    ) {
        for i in &self.0 {
            i.after(op, peer, outcome, elapsed);
        }
    }
}

impl std::fmt::Debug for CallInterceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallInterceptors({})", self.0.len())
    }
}
