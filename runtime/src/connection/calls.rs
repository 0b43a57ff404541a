//! Opening calls: unary, one-way, and the three stream kinds.
//!
//! Each method allocates an id, registers the call in the table, encodes the
//! call-open frame into the write queue and hands back something to await.
//! Dropping what it handed back before the call ends cancels the call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::core::{reply, Entry, Failure, InItem, InboundTx, RecvWindow, SendCredit, Slot};
use super::scope::{cascade, CallScope, Parent};
use super::stream::{CallGuard, Inbound, Outbound, Reply};
use super::Shared;
use crate::descriptor::CallKind;
use crate::error::CallError;
use crate::wire::frame::CallOpenHead;

/// Per-call options: a deadline and metadata.
///
/// A call made while a handler is serving another call (on the handler's
/// task) is that call's child: it ends by the parent's deadline if its own
/// is later, and is cancelled when the parent is. [`detached`](Self::detached)
/// opts out; [`CallContext::child_options`](crate::CallContext::child_options)
/// hands the parent to work on another task.
///
/// ```
/// use std::time::Duration;
/// let opts = plexus::CallOptions::new()
///     .timeout(Duration::from_secs(2))
///     .metadata("trace-id", "abc123");
/// assert_eq!(opts.get_timeout(), Some(Duration::from_secs(2)));
/// ```
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) metadata: Vec<(String, Bytes)>,
    pub(crate) idempotent: bool,
    pub(crate) session: Option<u32>,
    pub(crate) parent: Parent,
    /// The call's span and metrics while something observes it (set by
    /// `observe::call::client`, carried on to a stream's handles).
    pub(crate) record: Option<Arc<crate::observe::call::CallRecord>>,
}

impl CallOptions {
    /// No deadline beyond the connection's default, no metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// The call fails with [`CallError::Timeout`] if it has not ended within
    /// `timeout`. The deadline travels with the call as a relative duration,
    /// and the handler is stopped when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a metadata pair the handler can read with
    /// [`CallContext::metadata`](crate::CallContext::metadata).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Marks the call safe to run more than once. On a reconnecting
    /// connection such a call is retried on the next link when the connection
    /// drops under it; any other call fails with `ConnectionLost` instead.
    /// Generated clients set this for operations marked idempotent.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Whether the call is marked idempotent.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// The timeout set on these options, if any.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Makes the call stand on its own: it neither inherits the deadline of
    /// the call being served nor is cancelled when that call is — for work
    /// that must finish even if the caller that caused it gives up (an audit
    /// write, a cache fill). Its own timeout, or the connection's default,
    /// still applies. A call is always cancelled when its future is dropped,
    /// so work that must outlive the handler runs on a task of its own (or
    /// an actor's).
    pub fn detached(mut self) -> Self {
        self.parent = Parent::Detached;
        self
    }

    /// Whether [`detached`](Self::detached) was set.
    pub fn is_detached(&self) -> bool {
        matches!(self.parent, Parent::Detached)
    }

    /// Makes the call a child of `scope` (see [`CallContext::child_options`](crate::CallContext::child_options)).
    pub(crate) fn child_of(mut self, scope: CallScope) -> Self {
        self.parent = Parent::Explicit(scope);
        self
    }

    /// The call this one is a child of, if any, and its timeout in that
    /// light: the earlier of `own` and the parent's deadline. A parent that
    /// is already cancelled or out of time fails the call before anything
    /// is sent.
    pub(crate) fn inherit(
        &self,
        op: &str,
        peer: &Arc<str>,
        own: Option<Duration>,
    ) -> Result<(Option<Duration>, Option<CallScope>), CallError> {
        let parent = self.parent.resolve();
        let timeout = cascade(own, parent.as_ref());
        if let Some(p) = &parent {
            if p.token.is_cancelled() {
                return Err(CallError::Cancelled {
                    op: op.into(),
                    peer: peer.clone(),
                });
            }
            if timeout == Some(Duration::ZERO) {
                return Err(CallError::Timeout {
                    op: op.into(),
                    peer: peer.clone(),
                    after: Duration::ZERO,
                });
            }
        }
        Ok((timeout, parent))
    }
}

/// How a call's request side travels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One request in the call-open frame, an answer expected.
    Single,
    /// One request in the call-open frame, nothing back.
    OneWay,
    /// Requests follow as data frames.
    Stream,
}

/// A request stream just opened: its sending half and what its receiving
/// half is made with.
struct OpenedStream {
    out: Outbound,
    guard: Arc<CallGuard>,
    deadline: Option<tokio::time::Instant>,
    timeout: Option<Duration>,
    parent: Option<CallScope>,
}

/// What the caller needs to turn a failure into a `CallError`.
pub(crate) struct CallName {
    pub(crate) op: Arc<str>,
    pub(crate) peer: Arc<str>,
    /// The call's observation record, on an observed stream's handles.
    pub(crate) record: Option<Arc<crate::observe::call::CallRecord>>,
}

impl CallName {
    pub(crate) fn error(&self, f: Failure, timeout: Option<Duration>) -> CallError {
        f.into_call_error(&self.op, &self.peer, timeout)
    }
}

impl Shared {
    /// Refuses a call before anything is sent: the connection is closing or
    /// closed. The call never ran, so the caller may safely try elsewhere.
    fn refuse_if_closing(&self, op: &str) -> Result<(), CallError> {
        if !self.accepting_calls() {
            return Err(self.closing(op));
        }
        Ok(())
    }

    fn closing(&self, op: &str) -> CallError {
        CallError::Closing {
            op: op.into(),
            peer: self.peer.label.clone(),
        }
    }

    fn check_size(&self, op: &str, head: &CallOpenHead<'_>, body: &[u8]) -> Result<(), CallError> {
        // The frame carries the call's header fields besides the message;
        // the error speaks of the message, which is what the caller sized.
        let room = (self.peer_max_frame as usize).saturating_sub(head.encoded_len());
        if body.len() > room {
            return Err(CallError::MessageTooLarge {
                op: op.into(),
                peer: self.peer.label.clone(),
                size: body.len(),
                limit: room,
            });
        }
        Ok(())
    }

    /// Encodes a call-open frame, interning `op` on first use. Waits while the
    /// write queue is over its high-water mark.
    async fn open(
        &self,
        id: u32,
        op: &str,
        opts: &CallOptions,
        timeout: Option<Duration>,
        shape: Shape,
        body: &Bytes,
    ) -> Result<(), CallError> {
        let probe = CallOpenHead {
            id,
            op_index: 0,
            op_name: Some(op),
            deadline: timeout,
            metadata: &opts.metadata,
            session: opts.session,
            end: shape != Shape::Stream,
            oneway: shape == Shape::OneWay,
        };
        self.check_size(op, &probe, body)?;
        self.out
            .push_bounded(|o| {
                let (index, name) = match o.ops.get(op) {
                    Some(&i) => (i, None),
                    None => {
                        let i = o.ops.len() as u32;
                        o.ops.insert(op.into(), i);
                        (i, Some(op))
                    }
                };
                let head = CallOpenHead {
                    op_index: index,
                    op_name: name,
                    ..probe
                };
                o.call_open(&head, body);
            })
            .await
            .map_err(|_| CallError::ConnectionLost {
                op: op.into(),
                peer: self.peer.label.clone(),
                reason: match self.lost() {
                    Failure::Lost(r) => r,
                    _ => "closed".into(),
                },
            })
    }

    /// Registers call `id` with the core; `Ok(calls open now)`, or
    /// `Closing` if the connection stopped opening calls since the caller
    /// looked (nothing was sent).
    fn register(&self, op: &str, id: u32, entry: Entry) -> Result<usize, CallError> {
        let opened = self.core().open_local(id, entry);
        opened.map_err(|_| self.closing(op))
    }

    /// One of the peer's call slots (see `CallSlots`): at once when the peer
    /// has room for another call, otherwise after waiting — at most `timeout`,
    /// which counts towards the call's own.
    async fn slot(&self, op: &str, timeout: Option<Duration>) -> Result<Slot, CallError> {
        if let Some(slot) = self.slots.try_take() {
            return Ok(slot);
        }
        let wait = async {
            tokio::select! {
                slot = self.slots.take() => Ok(slot),
                _ = self.closed.cancelled() => Err(self.name(op).error(self.lost(), timeout)),
            }
        };
        match timeout {
            None => wait.await,
            Some(t) => tokio::time::timeout(t, wait)
                .await
                .map_err(|_| CallError::Timeout {
                    op: op.into(),
                    peer: self.peer.label.clone(),
                    after: t,
                })?,
        }
    }

    fn new_inbound(&self) -> (InboundTx, mpsc::UnboundedReceiver<InItem>, Arc<RecvWindow>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let window = Arc::new(RecvWindow::new(
            self.config.window,
            self.config.max_frame,
            self.budget.clone(),
        ));
        (InboundTx::new(tx, window.clone()), rx, window)
    }
}

impl Shared {
    pub(crate) fn name(&self, op: &str) -> CallName {
        CallName {
            op: op.into(),
            peer: self.peer.label.clone(),
            record: None,
        }
    }

    /// The name of a stream call's handles, with its observation record.
    fn stream_name(&self, op: &str, opts: &CallOptions) -> CallName {
        CallName {
            record: opts.record.clone(),
            ..self.name(op)
        }
    }

    /// Calls `op` with `body` and waits for the handler's answer: `Ok(reply)`
    /// if it acked, [`CallError::Rejected`] if it refused, or another
    /// [`CallError`] saying what went wrong.
    async fn call_plain(
        self: &Arc<Self>,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<Bytes, CallError> {
        let s = self;
        s.refuse_if_closing(op)?;
        let (timeout, parent) =
            opts.inherit(op, &s.peer.label, opts.timeout.or(s.config.default_timeout))?;
        let slot = s.slot(op, timeout).await?;
        let id = s.next_call_id();
        let (tx, rx) = reply::channel();
        // The connection's sweeper fails the call at its deadline (and
        // cancels it on the peer), so no timer is set up per call.
        let deadline = timeout.map(|t| s.deadline_in(t));
        let open_now = s.register(
            op,
            id,
            Entry {
                reply: Some(tx),
                deadline,
                slot: Some(slot),
                ..Entry::default()
            },
        )?;
        let mut guard = CallGuard::new(s.clone(), id);
        s.open(id, op, &opts, timeout, Shape::Single, &body).await?;
        // Queued (copied, or shared by the queue when large): let go of it
        // now, so the encoder's buffer it may share is free again while the
        // call waits (see `codec::encode_message`).
        drop(body);
        if let Some(d) = deadline {
            s.arm_deadline(d);
        }
        // A lone call writes its request itself; under load the writer
        // gathers every caller's frame into one write instead.
        if open_now <= 1 {
            s.out.write_through();
        }
        let outcome = match &parent {
            None => rx.await,
            // The parent's cancellation ends this call too: returning drops
            // the guard, which tells the peer to stop.
            Some(p) => tokio::select! {
                biased;
                outcome = rx => outcome,
                () = p.token.cancelled() => {
                    return Err(CallError::Cancelled {
                        op: op.into(),
                        peer: s.peer.label.clone(),
                    });
                }
            },
        };
        guard.disarm();
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(f)) => Err(s.name(op).error(f, timeout)),
            Err(_) => Err(s.name(op).error(s.lost(), timeout)),
        }
    }

    /// Sends `body` to `op` without waiting for, or getting, any answer. Returns
    /// once the message is queued for the socket.
    async fn oneway_plain(
        self: &Arc<Self>,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<(), CallError> {
        let s = self;
        s.refuse_if_closing(op)?;
        let (timeout, _) = opts.inherit(op, &s.peer.label, opts.timeout)?;
        s.open(0, op, &opts, timeout, Shape::OneWay, &body).await
    }

    /// Calls `op` with one request and receives a stream of replies, ended by
    /// the handler's ack or broken by its reject.
    async fn server_stream_plain(
        self: &Arc<Self>,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<Inbound, CallError> {
        let s = self;
        s.refuse_if_closing(op)?;
        let (timeout, parent) = opts.inherit(op, &s.peer.label, opts.timeout)?;
        let slot = s.slot(op, timeout).await?;
        let id = s.next_call_id();
        let (inbound_tx, rx, window) = s.new_inbound();
        s.register(
            op,
            id,
            Entry {
                inbound: Some(inbound_tx),
                slot: Some(slot),
                ..Entry::default()
            },
        )?;
        let guard = Arc::new(CallGuard::new(s.clone(), id));
        s.open(id, op, &opts, timeout, Shape::Single, &body).await?;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let name = s.stream_name(op, &opts);
        Ok(Inbound::new(name, rx, window, guard, deadline, timeout).child_of(parent))
    }

    /// Registers and opens a call whose requests stream: the shared first
    /// half of client-stream and bidi calls.
    async fn open_request_stream(
        self: &Arc<Self>,
        op: &str,
        opts: &CallOptions,
        mut entry: Entry,
    ) -> Result<OpenedStream, CallError> {
        self.refuse_if_closing(op)?;
        let (timeout, parent) = opts.inherit(op, &self.peer.label, opts.timeout)?;
        entry.slot = Some(self.slot(op, timeout).await?);
        let id = self.next_call_id();
        let credit = Arc::new(SendCredit::new(self.peer_window));
        entry.credit = Some(credit.clone());
        self.register(op, id, entry)?;
        let guard = Arc::new(CallGuard::new(self.clone(), id));
        self.open(id, op, opts, timeout, Shape::Stream, &Bytes::new())
            .await?;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let out = Outbound::opener(
            self.stream_name(op, opts),
            self.clone(),
            id,
            credit,
            guard.clone(),
            deadline,
        );
        Ok(OpenedStream {
            out,
            guard,
            deadline,
            timeout,
            parent,
        })
    }

    /// Opens a stream of requests to `op`; the handler answers once, at the
    /// end, through the returned [`Reply`]. Call [`Outbound::finish`] after the
    /// last message.
    async fn client_stream_plain(
        self: &Arc<Self>,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Reply), CallError> {
        let (tx, rx) = reply::channel();
        let entry = Entry {
            reply: Some(tx),
            ..Entry::default()
        };
        let o = self.open_request_stream(op, &opts, entry).await?;
        let name = self.stream_name(op, &opts);
        let reply = Reply::new(name, rx, o.guard, o.deadline, o.timeout).child_of(o.parent);
        Ok((o.out, reply))
    }

    /// Opens a stream in both directions with `op`.
    async fn bidi_plain(
        self: &Arc<Self>,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Inbound), CallError> {
        let (inbound_tx, rx, window) = self.new_inbound();
        let entry = Entry {
            inbound: Some(inbound_tx),
            ..Entry::default()
        };
        let o = self.open_request_stream(op, &opts, entry).await?;
        let name = self.stream_name(op, &opts);
        let inbound =
            Inbound::new(name, rx, window, o.guard, o.deadline, o.timeout).child_of(o.parent);
        Ok((o.out, inbound))
    }
}

/// The calls the connection's users make: through the endpoint's call
/// interceptors when it has any, straight through otherwise.
impl Shared {
    /// Runs the interceptors' `before`, `call` itself, then their `after`.
    async fn around<T>(
        &self,
        op: &str,
        mut opts: CallOptions,
        call: impl AsyncFnOnce(CallOptions) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let Some(chain) = &self.call_interceptors else {
            return call(opts).await;
        };
        let started = tokio::time::Instant::now();
        let metadata = std::mem::take(&mut opts.metadata);
        let outcome = match chain.before(op, &self.peer, opts.timeout, metadata).await {
            Ok(metadata) => {
                opts.metadata = metadata;
                call(opts).await
            }
            Err(refused) => Err(refused),
        };
        chain.after(
            op,
            &self.peer,
            outcome.as_ref().map(|_| ()),
            started.elapsed(),
        );
        outcome
    }

    /// Calls `op` with `body` and waits for the handler's answer: `Ok(reply)`
    /// if it acked, [`CallError::Rejected`] if it refused, or another
    /// [`CallError`] saying what went wrong.
    pub(crate) async fn call(
        self: &Arc<Self>,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<Bytes, CallError> {
        if self.call_interceptors.is_none() && !crate::observe::active() {
            return self.call_plain(op, body, opts).await;
        }
        // Boxed, so the plain path's future stays as small as it was.
        let request = Some(body.len());
        Box::pin(crate::observe::call::client(
            &self.peer,
            op,
            CallKind::Unary,
            request,
            opts,
            async |o| {
                self.around(op, o, async |o| self.call_plain(op, body, o).await)
                    .await
            },
        ))
        .await
    }

    /// Sends `body` to `op` without waiting for any answer.
    pub(crate) async fn oneway(
        self: &Arc<Self>,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<(), CallError> {
        let request = Some(body.len());
        crate::observe::call::client(&self.peer, op, CallKind::OneWay, request, opts, async |o| {
            self.around(op, o, async |o| self.oneway_plain(op, body, o).await)
                .await
        })
        .await
    }

    /// Calls `op` with one request and receives a stream of replies.
    pub(crate) async fn server_stream(
        self: &Arc<Self>,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<Inbound, CallError> {
        let request = Some(body.len());
        let kind = CallKind::ServerStream;
        crate::observe::call::client(&self.peer, op, kind, request, opts, async |o| {
            self.around(op, o, async |o| self.server_stream_plain(op, body, o).await)
                .await
        })
        .await
    }

    /// Opens a stream of requests to `op`, answered once at the end.
    pub(crate) async fn client_stream(
        self: &Arc<Self>,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Reply), CallError> {
        let kind = CallKind::ClientStream;
        crate::observe::call::client(&self.peer, op, kind, None, opts, async |o| {
            self.around(op, o, async |o| self.client_stream_plain(op, o).await)
                .await
        })
        .await
    }

    /// Opens a stream in both directions with `op`.
    pub(crate) async fn bidi(
        self: &Arc<Self>,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Inbound), CallError> {
        crate::observe::call::client(&self.peer, op, CallKind::Bidi, None, opts, async |o| {
            self.around(op, o, async |o| self.bidi_plain(op, o).await)
                .await
        })
        .await
    }
}
