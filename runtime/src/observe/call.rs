//! One call's span and metrics, on either side.
//!
//! A [`CallRecord`] exists only for a call that something listens to
//! ([`super::active`]): the calling and serving paths make one at the start,
//! hand it to whatever outlives the opening (a stream's handles, the
//! handler's future), and it records the outcome exactly once — when the
//! call ends, or, if it never said how, when the last holder lets go (then
//! it was cancelled, timed out or refused, which the record works out).
//!
//! This is the hook interface below connections: what it needs of a call's
//! options, of what a call's opening returned and of a served call's context
//! it asks through [`Options`], [`Opened`] and [`ServedCall`], which the
//! connection's types implement (`connection/observed.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use metrics::{Label, SharedString};
use tracing::field::Empty;

use super::names;
use super::trace_context::{TraceContext, TRACEPARENT};
use super::{metrics_enabled, tracing_enabled, Address};
use crate::descriptor::CallKind;
use crate::error::{CallError, Reject};
use crate::peer::PeerInfo;
use crate::wire::SystemCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// How a call ended, as recorded: a name and, where there is one, a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    name: &'static str,
    code: Option<u32>,
}

impl Outcome {
    const OK: Outcome = Outcome {
        name: "ok",
        code: None,
    };

    fn system(code: SystemCode) -> Outcome {
        let name = match code {
            SystemCode::NoSuchOperation => "no_such_operation",
            SystemCode::HandlerFailed => "handler_failed",
            SystemCode::DeadlineExceeded => "deadline_exceeded",
            SystemCode::Cancelled => "cancelled",
            SystemCode::InvalidPayload => "invalid_payload",
            SystemCode::GoingAway => "going_away",
            SystemCode::Protocol => "protocol",
            SystemCode::TooLarge => "too_large",
            SystemCode::SessionClosed => "session_closed",
            SystemCode::ResourceExhausted => "resource_exhausted",
            SystemCode::PermissionDenied => "permission_denied",
            SystemCode::Unknown => "unknown",
        };
        Outcome {
            name,
            code: Some(code as u32),
        }
    }

    fn of_reject(r: &Reject) -> Outcome {
        match r.system_code() {
            Some(code) => Outcome::system(code),
            None => Outcome {
                name: "rejected",
                code: Some(r.code()),
            },
        }
    }

    fn of_error(e: &CallError) -> Outcome {
        let bare = |name| Outcome { name, code: None };
        match e {
            CallError::Rejected(r) => Outcome {
                name: "rejected",
                code: Some(r.code()),
            },
            CallError::Timeout { .. } => Outcome::system(SystemCode::DeadlineExceeded),
            CallError::Cancelled { .. } => Outcome::system(SystemCode::Cancelled),
            CallError::NoSuchOperation { .. } => Outcome::system(SystemCode::NoSuchOperation),
            CallError::HandlerFailed { .. } => Outcome::system(SystemCode::HandlerFailed),
            CallError::Protocol { .. } => Outcome::system(SystemCode::Protocol),
            CallError::Decode { .. } => Outcome::system(SystemCode::InvalidPayload),
            CallError::Closing { .. } => Outcome::system(SystemCode::GoingAway),
            CallError::Overloaded { .. } => Outcome::system(SystemCode::ResourceExhausted),
            CallError::PermissionDenied { .. } => Outcome::system(SystemCode::PermissionDenied),
            CallError::SessionClosed { .. } => Outcome::system(SystemCode::SessionClosed),
            CallError::MessageTooLarge { .. } => Outcome::system(SystemCode::TooLarge),
            CallError::ConnectionLost { .. } => bare("connection_lost"),
            CallError::Encode { .. } => bare("encode_failed"),
            CallError::SessionTimeout { .. } => bare("session_timeout"),
            CallError::NoPeers { .. } => bare("no_peers"),
        }
    }
}

/// The metric labels every sample of one call carries.
struct Labels {
    base: [Label; 3],
}

impl Labels {
    fn new(op: &str) -> Labels {
        let (service, method) = op.split_once('/').unwrap_or((op, ""));
        Labels {
            base: [
                Label::from_static_parts(names::RPC_SYSTEM, "plexus"),
                Label::new(names::RPC_SERVICE, SharedString::from(service.to_owned())),
                Label::new(names::RPC_METHOD, SharedString::from(method.to_owned())),
            ],
        }
    }

    fn base(&self) -> Vec<Label> {
        self.base.to_vec()
    }

    fn with_outcome(&self, outcome: Outcome) -> Vec<Label> {
        let mut labels = self.base();
        labels.push(Label::from_static_parts(names::OUTCOME, outcome.name));
        if let Some(code) = outcome.code {
            labels.push(Label::new(names::CODE, code.to_string()));
        }
        labels
    }
}

/// One observed call.
pub(crate) struct CallRecord {
    side: Side,
    kind: CallKind,
    /// The call's span until it ends: the span closes then, not when the
    /// last handle of a stream is dropped.
    span: std::sync::Mutex<tracing::Span>,
    /// This call's own trace context, when its span is recorded: a client's
    /// is sent as `traceparent`; a server's is the handler's current one.
    trace: Option<TraceContext>,
    labels: Option<Labels>,
    started: tokio::time::Instant,
    sent: AtomicU64,
    received: AtomicU64,
    done: AtomicBool,
    /// Serving side: what tells a deadline from a cancellation when the
    /// handler's future is dropped unfinished (the token is cancelled in
    /// both cases).
    deadline: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for CallRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallRecord")
            .field("side", &self.side)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl CallRecord {
    fn new(side: Side, kind: CallKind, op: &str, span: tracing::Span) -> CallRecord {
        let labels = metrics_enabled().then(|| Labels::new(op));
        let started_name = match side {
            Side::Client => names::CLIENT_STARTED,
            Side::Server => names::SERVER_STARTED,
        };
        if let Some(l) = &labels {
            super::lifecycle::describe_metrics();
            metrics::counter!(started_name, l.base()).increment(1);
        }
        CallRecord {
            side,
            kind,
            span: std::sync::Mutex::new(span),
            trace: None,
            labels,
            started: tokio::time::Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            done: AtomicBool::new(false),
            deadline: None,
        }
    }

    /// A message of `len` bytes went out (a request from a caller, a
    /// response from a handler).
    pub(crate) fn sent(&self, len: usize) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = &self.labels {
            let name = match self.side {
                Side::Client => names::CLIENT_REQUEST_SIZE,
                Side::Server => names::SERVER_RESPONSE_SIZE,
            };
            metrics::histogram!(name, l.base()).record(len as f64);
        }
    }

    /// A message of `len` bytes came in.
    pub(crate) fn received(&self, len: usize) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = &self.labels {
            let name = match self.side {
                Side::Client => names::CLIENT_RESPONSE_SIZE,
                Side::Server => names::SERVER_REQUEST_SIZE,
            };
            metrics::histogram!(name, l.base()).record(len as f64);
        }
    }

    /// What a stream's receiving handle yielded. On the calling side the end
    /// of the replies (or a failure) ends the call; on the serving side the
    /// handler's return does, so only messages count here.
    pub(crate) fn inbound(&self, item: Option<&Result<Bytes, CallError>>) {
        match item {
            Some(Ok(message)) => self.received(message.len()),
            Some(Err(e)) if self.side == Side::Client => self.finish(Outcome::of_error(e)),
            None if self.side == Side::Client => self.finish(Outcome::OK),
            _ => {}
        }
    }

    /// A client-stream call's reply resolved.
    pub(crate) fn replied(&self, reply: &Result<Bytes, CallError>) {
        match reply {
            Ok(message) => {
                self.received(message.len());
                self.finish(Outcome::OK);
            }
            Err(e) => self.finish(Outcome::of_error(e)),
        }
    }

    /// A handle on the call's span (a disabled one once the call ended).
    fn span(&self) -> tracing::Span {
        self.span.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn finish(&self, outcome: Outcome) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let sent = self.sent.load(Ordering::Relaxed);
        let received = self.received.load(Ordering::Relaxed);
        let span = std::mem::replace(
            &mut *self.span.lock().unwrap_or_else(|e| e.into_inner()),
            tracing::Span::none(),
        );
        if !span.is_disabled() {
            let span = &span;
            span.record(names::OUTCOME, outcome.name);
            if let Some(code) = outcome.code {
                span.record(names::CODE, code);
            }
            if outcome == Outcome::OK {
                span.record("otel.status_code", "OK");
            } else {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", outcome.name);
            }
            span.record("rpc.plexus.messages_sent", sent);
            span.record("rpc.plexus.messages_received", received);
        }
        if let Some(l) = &self.labels {
            let elapsed = self.started.elapsed().as_secs_f64();
            let (handled, duration, requests, responses, reqs, resps) = match self.side {
                Side::Client => (
                    names::CLIENT_HANDLED,
                    names::CLIENT_DURATION,
                    names::CLIENT_REQUESTS_PER_RPC,
                    names::CLIENT_RESPONSES_PER_RPC,
                    sent,
                    received,
                ),
                Side::Server => (
                    names::SERVER_HANDLED,
                    names::SERVER_DURATION,
                    names::SERVER_REQUESTS_PER_RPC,
                    names::SERVER_RESPONSES_PER_RPC,
                    received,
                    sent,
                ),
            };
            let labelled = l.with_outcome(outcome);
            metrics::counter!(handled, labelled.clone()).increment(1);
            metrics::histogram!(duration, labelled).record(elapsed);
            metrics::histogram!(requests, l.base()).record(reqs as f64);
            metrics::histogram!(responses, l.base()).record(resps as f64);
        }
    }

    /// Serving side: the handler's future was dropped before it finished.
    fn dropped_unfinished(&self, polled: bool) {
        let outcome = if !polled {
            // Admission refused it (the connection was closing, or the
            // peer was at its call limit) before the handler ran.
            Outcome {
                name: "refused",
                code: None,
            }
        } else if self
            .deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            Outcome::system(SystemCode::DeadlineExceeded)
        } else {
            Outcome::system(SystemCode::Cancelled)
        };
        self.finish(outcome);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // Nothing said how it ended: the caller let go of it.
        self.finish(Outcome::system(SystemCode::Cancelled));
    }
}

fn client_span(op: &str, kind: CallKind, peer: &PeerInfo) -> tracing::Span {
    let (service, method) = op.split_once('/').unwrap_or((op, ""));
    let address = Address::parse(peer.remote());
    tracing::info_span!(
        target: "plexus::call",
        "rpc.client",
        "otel.name" = op,
        "otel.kind" = "client",
        "otel.status_code" = Empty,
        "rpc.system" = "plexus",
        "rpc.service" = service,
        "rpc.method" = method,
        "server.address" = address.host,
        "server.port" = address.port,
        "network.transport" = address.transport,
        "rpc.plexus.call_kind" = kind.as_str(),
        "rpc.plexus.peer" = %peer.node_id(),
        "rpc.plexus.outcome" = Empty,
        "rpc.plexus.code" = Empty,
        "error.type" = Empty,
        "rpc.plexus.messages_sent" = Empty,
        "rpc.plexus.messages_received" = Empty,
        "trace_id" = Empty,
        "span_id" = Empty,
        "parent_span_id" = Empty,
    )
}

fn server_span(op: &str, kind: CallKind, peer: &PeerInfo, session: Option<&str>) -> tracing::Span {
    let (service, method) = op.split_once('/').unwrap_or((op, ""));
    let address = Address::parse(peer.remote());
    // The remote caller is the parent (through `traceparent`), not whatever
    // span the connection's reader happens to run in.
    tracing::info_span!(
        target: "plexus::call",
        parent: None,
        "rpc.server",
        "otel.name" = op,
        "otel.kind" = "server",
        "otel.status_code" = Empty,
        "rpc.system" = "plexus",
        "rpc.service" = service,
        "rpc.method" = method,
        "client.address" = address.host,
        "client.port" = address.port,
        "network.transport" = address.transport,
        "rpc.plexus.call_kind" = kind.as_str(),
        "rpc.plexus.peer" = %peer.node_id(),
        "rpc.plexus.session" = session,
        "rpc.plexus.outcome" = Empty,
        "rpc.plexus.code" = Empty,
        "error.type" = Empty,
        "rpc.plexus.messages_sent" = Empty,
        "rpc.plexus.messages_received" = Empty,
        "trace_id" = Empty,
        "span_id" = Empty,
        "parent_span_id" = Empty,
    )
}

fn record_trace(span: &tracing::Span, own: &TraceContext, parent: Option<&TraceContext>) {
    span.record("trace_id", tracing::field::display(own.trace_id()));
    span.record("span_id", tracing::field::display(own.span_id()));
    if let Some(p) = parent {
        span.record("parent_span_id", tracing::field::display(p.span_id()));
    }
}

/// Starts observing a call this side opens, if anything listens: its span,
/// its `traceparent` (added to `opts`, replacing one the caller set, which
/// becomes the parent), and its `started` count.
fn start_client(
    peer: &PeerInfo,
    op: &str,
    kind: CallKind,
    opts: &mut impl Options,
) -> Arc<CallRecord> {
    let span = if tracing_enabled() {
        client_span(op, kind, peer)
    } else {
        tracing::Span::none()
    };
    let traced = !span.is_disabled();
    let mut record = CallRecord::new(Side::Client, kind, op, span);
    if traced {
        let metadata = opts.metadata_mut();
        let existing = metadata.iter().position(|(k, _)| k == TRACEPARENT);
        let parent = existing
            .and_then(|i| TraceContext::parse(&metadata[i].1))
            .or_else(TraceContext::current);
        let own = parent.map_or_else(TraceContext::new_root, |p| p.child());
        record_trace(&record.span(), &own, parent.as_ref());
        let header = Bytes::from(own.to_string());
        match existing {
            Some(i) => metadata[i].1 = header,
            None => metadata.push((TRACEPARENT.to_owned(), header)),
        }
        record.trace = Some(own);
    }
    Arc::new(record)
}

/// What an observed call's opening carries its trace context in and hands
/// its record on with: the call's options.
pub(crate) trait Options {
    /// The metadata sent with the call (where `traceparent` goes).
    fn metadata_mut(&mut self) -> &mut Vec<(String, Bytes)>;
    /// Keeps `record` for what outlives the opening (a stream's handles).
    fn keep_record(&mut self, record: Arc<CallRecord>);
}

/// What a call's opening returned, and what that means for its record.
pub(crate) trait Opened {
    /// A unary reply or a sent one-way message ends the call now; a
    /// stream's handles carry the record on (through the call's options).
    fn settle(&self, record: &CallRecord);
}

impl Opened for Bytes {
    fn settle(&self, record: &CallRecord) {
        record.received(self.len());
        record.finish(Outcome::OK);
    }
}

impl Opened for () {
    fn settle(&self, record: &CallRecord) {
        record.finish(Outcome::OK);
    }
}

/// Runs `call` — a call this side opens, its interceptors included —
/// inside its span, with its trace context in the options and its outcome
/// recorded. `request` is the size of the request sent with the opening
/// (`None` for a request stream, whose messages count as they are sent).
pub(crate) async fn client<T: Opened, O: Options>(
    peer: &PeerInfo,
    op: &str,
    kind: CallKind,
    request: Option<usize>,
    mut opts: O,
    call: impl AsyncFnOnce(O) -> Result<T, CallError>,
) -> Result<T, CallError> {
    if !super::active() {
        return call(opts).await;
    }
    let record = start_client(peer, op, kind, &mut opts);
    if let Some(len) = request {
        record.sent(len);
    }
    opts.keep_record(record.clone());
    let span = record.span();
    let outcome = tracing::Instrument::instrument(call(opts), span).await;
    match &outcome {
        Ok(opened) => opened.settle(&record),
        Err(e) => record.finish(Outcome::of_error(e)),
    }
    outcome
}

/// A call the peer opened, as its record reads it: the handler's context.
pub(crate) trait ServedCall {
    /// The operation id.
    fn served_op(&self) -> &str;
    /// The name of the session the call runs in, if any.
    fn session_name(&self) -> Option<&str>;
    /// The metadata the caller sent, if any (where `traceparent` is).
    fn sent_metadata(&self) -> Option<&[(String, Bytes)]>;
    /// When the call's deadline passes, if it has one.
    fn deadline(&self) -> Option<tokio::time::Instant>;
}

/// Starts observing a call the peer opened, if anything listens. The record
/// goes into the handler's context; [`served`] wraps the handler with it.
#[inline]
pub(crate) fn serving(
    peer: &PeerInfo,
    ctx: &impl ServedCall,
    kind: CallKind,
    request: Option<usize>,
) -> Option<Arc<CallRecord>> {
    if !super::active() {
        return None;
    }
    serving_observed(peer, ctx, kind, request)
}

#[cold]
fn serving_observed(
    peer: &PeerInfo,
    ctx: &impl ServedCall,
    kind: CallKind,
    request: Option<usize>,
) -> Option<Arc<CallRecord>> {
    let span = if tracing_enabled() {
        server_span(ctx.served_op(), kind, peer, ctx.session_name())
    } else {
        tracing::Span::none()
    };
    let traced = !span.is_disabled();
    let mut record = CallRecord::new(Side::Server, kind, ctx.served_op(), span);
    if let Some(len) = request {
        record.received(len);
    }
    if traced {
        let parent = ctx
            .sent_metadata()
            .and_then(|m| m.iter().find(|(k, _)| k == TRACEPARENT))
            .and_then(|(_, v)| TraceContext::parse(v));
        let own = parent.map_or_else(TraceContext::new_root, |p| p.child());
        record_trace(&record.span(), &own, parent.as_ref());
        record.trace = Some(own);
    }
    record.deadline = ctx.deadline();
    Some(Arc::new(record))
}

/// A call the peer opened that was refused before any handler ran (no such
/// operation, a session that is closed, a connection that is closing): its
/// span opens and closes at once, and it counts as started and handled.
pub(crate) fn refused(peer: &PeerInfo, op: &str, code: SystemCode) {
    if !super::active() {
        return;
    }
    let span = if tracing_enabled() {
        server_span(op, CallKind::Unary, peer, None)
    } else {
        tracing::Span::none()
    };
    let record = CallRecord::new(Side::Server, CallKind::Unary, op, span);
    record.finish(Outcome::system(code));
}

/// The handler's future, observed: it runs inside the call's span and trace
/// context, and its result (or its being dropped unfinished) is the call's
/// outcome. Without a record it is returned as it is.
#[inline]
pub(crate) fn served<T: Served + Send + 'static>(
    record: Option<Arc<CallRecord>>,
    fut: BoxFuture<'static, Result<T, Reject>>,
) -> BoxFuture<'static, Result<T, Reject>> {
    match record {
        None => fut,
        Some(record) => Box::pin(Serving {
            fut,
            span: record.span(),
            record,
            polled: false,
            finished: false,
        }),
    }
}

/// What a handler returns, and the reply size it means.
pub(crate) trait Served {
    /// The reply's size, for a reply sent with the ack.
    fn reply_len(&self) -> Option<usize>;
}

impl Served for Bytes {
    fn reply_len(&self) -> Option<usize> {
        Some(self.len())
    }
}

impl Served for () {
    fn reply_len(&self) -> Option<usize> {
        None
    }
}

struct Serving<T> {
    fut: BoxFuture<'static, Result<T, Reject>>,
    /// Entered while the handler is polled.
    span: tracing::Span,
    record: Arc<CallRecord>,
    polled: bool,
    finished: bool,
}

/// Records a panic out of the handler's poll as the call's outcome.
struct PanicGuard<'a>(&'a CallRecord);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.finish(Outcome::system(SystemCode::HandlerFailed));
        }
    }
}

impl<T: Served> Future for Serving<T> {
    type Output = Result<T, Reject>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.polled = true;
        let record = this.record.clone();
        let _entered = this.span.enter();
        let guard = PanicGuard(&record);
        let fut = &mut this.fut;
        let polled = match record.trace {
            Some(cx_trace) => super::trace_context::poll_in(cx_trace, || fut.as_mut().poll(cx)),
            None => fut.as_mut().poll(cx),
        };
        drop(guard);
        if let Poll::Ready(result) = &polled {
            this.finished = true;
            match result {
                Ok(reply) => {
                    // A ready-made server-stream or one-way handler has no
                    // reply body; only a unary or client-stream ack does.
                    if let Some(len) = reply.reply_len() {
                        if matches!(record.kind, CallKind::Unary | CallKind::ClientStream) {
                            record.sent(len);
                        }
                    }
                    record.finish(Outcome::OK);
                }
                Err(reject) => record.finish(Outcome::of_reject(reject)),
            }
        }
        polled
    }
}

impl<T> Drop for Serving<T> {
    fn drop(&mut self) {
        if !self.finished {
            self.record.dropped_unfinished(self.polled);
        }
    }
}
