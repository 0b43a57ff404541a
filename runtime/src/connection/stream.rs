//! The handles a stream call hands out: [`Inbound`] to receive messages,
//! [`Outbound`] to send them, [`Reply`] to await a client stream's answer.
//!
//! The same two stream types serve both ends of a call: a caller receives
//! replies through an `Inbound` and a handler receives requests through one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::calls::CallName;
use super::core::reply::ReplyRx;
use super::core::{Failure, InItem, RecvWindow, SendCredit};
use super::scope::CallScope;
use super::writer::SplicedMessage;
use super::Shared;
use crate::error::CallError;
use crate::wire::frame::{encode_credit, encode_empty, Kind};
use crate::wire::SystemCode;

impl Shared {
    /// Ends a call this side gave up on: removes it, tells the peer, and fails
    /// whatever still waits on it.
    pub(crate) fn cancel_call(&self, id: u32, failure: Failure) {
        let entry = self.core().take(id);
        if let Some(e) = entry {
            let _ = self
                .out
                .push(|o| encode_empty(&mut o.buf, Kind::Cancel, id));
            e.fail(failure);
        }
    }

    fn ended(&self, name: &CallName, credit: &SendCredit) -> CallError {
        if let Some(f) = credit.failure() {
            name.error(f, None)
        } else if self.closed.is_cancelled() {
            name.error(self.lost(), None)
        } else {
            CallError::Cancelled {
                op: name.op.clone(),
                peer: name.peer.clone(),
            }
        }
    }
}

fn session_closed(session: &str) -> Failure {
    Failure::System {
        code: SystemCode::SessionClosed,
        message: session.to_owned(),
    }
}

fn cancelled() -> Failure {
    Failure::System {
        code: SystemCode::Cancelled,
        message: "cancelled by the caller".into(),
    }
}

/// Cancels the call when the last handle of a call this side opened is
/// dropped before the call ended.
pub(crate) struct CallGuard {
    shared: Arc<Shared>,
    id: u32,
    armed: bool,
}

impl CallGuard {
    pub(crate) fn new(shared: Arc<Shared>, id: u32) -> Self {
        CallGuard {
            shared,
            id,
            armed: true,
        }
    }

    /// The call ended normally; dropping the guard does nothing.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.cancel_call(self.id, cancelled());
        }
    }
}

/// A reader that has caught up returns its consumed bytes as credit once they
/// reach this fraction of the window (see [`Inbound::consumed_all`]).
const IDLE_RETURN_FRACTION: u32 = 8;

/// The receiving side of a stream: a caller's replies or a handler's requests.
///
/// Yields each message as `Ok(bytes)`, a failure as one `Err` (after which
/// the stream ends), and `None` when the other side finished cleanly. Reading
/// returns flow-control credit to the sender, so a slow reader slows the
/// sender instead of growing memory.
pub struct Inbound {
    name: CallName,
    shared: Arc<Shared>,
    id: u32,
    rx: mpsc::UnboundedReceiver<InItem>,
    window: Arc<RecvWindow>,
    unreported: u32,
    guard: Option<Arc<CallGuard>>,
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Option<Duration>,
    scope: Option<Scope>,
    /// The served call this stream's call is a child of: when it is
    /// cancelled, so is this call.
    parent: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    done: bool,
}

/// The session a stream belongs to: when it closes, the stream is cancelled.
struct Scope {
    name: Arc<str>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Scope {
    fn new(token: CancellationToken, name: Arc<str>) -> Self {
        Scope {
            name,
            closed: Box::pin(token.cancelled_owned()),
        }
    }
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("op", &self.name.op)
            .field("id", &self.id)
            .finish()
    }
}

impl Inbound {
    pub(crate) fn new(
        name: CallName,
        rx: mpsc::UnboundedReceiver<InItem>,
        window: Arc<RecvWindow>,
        guard: Arc<CallGuard>,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Self {
        let shared = guard.shared.clone();
        let id = guard.id;
        Inbound {
            name,
            shared,
            id,
            rx,
            window,
            unreported: 0,
            guard: Some(guard),
            sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            timeout,
            scope: None,
            parent: None,
            done: false,
        }
    }

    /// Ties the call to the served call it was made in: cancelling that
    /// one cancels this one.
    pub(crate) fn child_of(mut self, parent: Option<CallScope>) -> Self {
        self.parent = parent.map(|p| Box::pin(p.token.lend().cancelled_owned()));
        self
    }

    /// Ties the stream to a session: closing the session cancels it.
    pub(crate) fn scoped(mut self, token: CancellationToken, session: Arc<str>) -> Self {
        self.scope = Some(Scope::new(token, session));
        self
    }

    /// The handler's side of a stream opened by the peer.
    pub(crate) fn served(
        name: CallName,
        shared: Arc<Shared>,
        id: u32,
        rx: mpsc::UnboundedReceiver<InItem>,
        window: Arc<RecvWindow>,
    ) -> Self {
        Inbound {
            name,
            shared,
            id,
            rx,
            window,
            unreported: 0,
            guard: None,
            sleep: None,
            timeout: None,
            scope: None,
            parent: None,
            done: false,
        }
    }

    /// The operation this stream belongs to.
    pub fn op(&self) -> &str {
        &self.name.op
    }

    /// The peer at the other end, as named in errors.
    pub fn peer(&self) -> &str {
        &self.name.peer
    }

    /// Receives the next message; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<Bytes, CallError>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// Bytes received on this stream and not yet returned to the sender as credit.
    pub fn buffered_bytes(&self) -> u64 {
        self.window.outstanding()
    }

    fn consumed(&mut self, n: usize) {
        self.unreported = self.unreported.saturating_add(n as u32);
        if self.unreported >= self.shared.config.window / 2 {
            self.return_credit();
        }
    }

    /// The reader has taken every message that arrived and is about to
    /// wait: return what it consumed now if that is a sizeable part of the
    /// window, instead of holding it until half the window is reached.
    ///
    /// Without this a bulk stream can lock into stop-and-wait: the receiver
    /// holds up to half a window unreported between bursts, the sender
    /// gets credit only for the burst the receiver is reading, and neither
    /// side ever works while the other does (measured: 1 MiB per credit, one
    /// writev per credit, ~half the throughput of the pipelined phase).
    /// Small trickles stay below the threshold and cost no extra frames.
    fn consumed_all(&mut self) {
        if self.unreported > 0
            && self.unreported >= self.shared.config.window / IDLE_RETURN_FRACTION
        {
            self.return_credit();
        }
    }

    fn return_credit(&mut self) {
        let grant = std::mem::take(&mut self.unreported);
        self.window.release(grant);
        let id = self.id;
        let _ = self
            .shared
            .out
            .push(|o| encode_credit(&mut o.buf, id, grant));
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(g) = self.guard.take() {
            if let Ok(mut g) = Arc::try_unwrap(g) {
                g.disarm();
            }
        }
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, CallError>>> {
        let polled = self.poll_item_unobserved(cx);
        if let (Some(record), Poll::Ready(item)) = (&self.name.record, &polled) {
            record.inbound(item.as_ref());
        }
        polled
    }

    fn poll_item_unobserved(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, CallError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.rx.poll_recv(cx);
        if polled.is_pending() {
            self.consumed_all();
        }
        if let Poll::Ready(item) = polled {
            return Poll::Ready(match item {
                Some(InItem::Data(b)) => {
                    self.consumed(b.len());
                    Some(Ok(b))
                }
                Some(InItem::End) => {
                    self.finish();
                    None
                }
                Some(InItem::Failed(f)) => {
                    self.finish();
                    Some(Err(self.name.error(f, self.timeout)))
                }
                None => {
                    self.finish();
                    if self.shared.closed.is_cancelled() {
                        Some(Err(self.name.error(self.shared.lost(), None)))
                    } else {
                        None
                    }
                }
            });
        }
        if let Some(scope) = self.scope.as_mut() {
            if scope.closed.as_mut().poll(cx).is_ready() {
                self.done = true;
                let session = scope.name.clone();
                self.shared.cancel_call(self.id, session_closed(&session));
                return Poll::Ready(Some(Err(CallError::SessionClosed {
                    op: self.name.op.clone(),
                    peer: self.name.peer.clone(),
                    session,
                })));
            }
        }
        if let Some(parent) = self.parent.as_mut() {
            if parent.as_mut().poll(cx).is_ready() {
                self.done = true;
                self.shared.cancel_call(self.id, cancelled());
                return Poll::Ready(Some(Err(CallError::Cancelled {
                    op: self.name.op.clone(),
                    peer: self.name.peer.clone(),
                })));
            }
        }
        if let Some(sleep) = self.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            self.done = true;
            let after = self.timeout.unwrap_or_default();
            self.shared.cancel_call(
                self.id,
                Failure::System {
                    code: SystemCode::DeadlineExceeded,
                    message: String::new(),
                },
            );
            return Poll::Ready(Some(Err(CallError::Timeout {
                op: self.name.op.clone(),
                peer: self.name.peer.clone(),
                after,
            })));
        }
        Poll::Pending
    }
}

impl futures_core::Stream for Inbound {
    type Item = Result<Bytes, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

/// The sending side of a stream: a caller's requests or a handler's replies.
///
/// [`send`](Outbound::send) waits for flow-control credit, so it blocks while
/// the receiver is behind. A caller ends its requests with
/// [`finish`](Outbound::finish); dropping a caller's `Outbound` before then
/// (and before the reply) cancels the call. A handler's stream ends when the
/// handler returns.
pub struct Outbound {
    name: CallName,
    shared: Arc<Shared>,
    id: u32,
    credit: Arc<SendCredit>,
    guard: Option<Arc<CallGuard>>,
    deadline: Option<Instant>,
    opener: bool,
    dropped: u64,
}

/// Why [`Outbound::try_send`] did not send.
#[derive(Debug)]
pub enum TrySendError {
    /// The receiver is behind (no credit) or the connection's queue is full;
    /// the message was dropped and counted in [`Outbound::dropped`].
    Full(Bytes),
    /// The call or connection ended.
    Closed(CallError),
}

impl std::fmt::Display for TrySendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrySendError::Full(b) => write!(
                f,
                "receiver is behind; dropped a message of {} bytes",
                b.len()
            ),
            TrySendError::Closed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TrySendError {}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("op", &self.name.op)
            .field("id", &self.id)
            .finish()
    }
}

impl Outbound {
    pub(crate) fn opener(
        name: CallName,
        shared: Arc<Shared>,
        id: u32,
        credit: Arc<SendCredit>,
        guard: Arc<CallGuard>,
        deadline: Option<Instant>,
    ) -> Self {
        Outbound {
            name,
            shared,
            id,
            credit,
            guard: Some(guard),
            deadline,
            opener: true,
            dropped: 0,
        }
    }

    pub(crate) fn served(
        name: CallName,
        shared: Arc<Shared>,
        id: u32,
        credit: Arc<SendCredit>,
    ) -> Self {
        Outbound {
            name,
            shared,
            id,
            credit,
            guard: None,
            deadline: None,
            opener: false,
            dropped: 0,
        }
    }

    /// Sends one message, waiting for credit while the receiver is behind.
    pub async fn send(&mut self, msg: Bytes) -> Result<(), CallError> {
        self.send_spliced(SplicedMessage::from(msg)).await
    }

    /// [`send`](Self::send) for a message encoded in pieces, whose large
    /// pieces go to the socket without being copied.
    pub(crate) async fn send_spliced(&mut self, msg: SplicedMessage) -> Result<(), CallError> {
        let limit = self.shared.peer_max_frame as usize;
        if msg.len() > limit {
            return Err(CallError::MessageTooLarge {
                op: self.name.op.clone(),
                peer: self.name.peer.clone(),
                size: msg.len(),
                limit,
            });
        }
        let take = self.credit.take(msg.len());
        let taken = match self.deadline {
            Some(d) => match tokio::time::timeout_at(d, take).await {
                Ok(r) => r,
                Err(_) => {
                    self.shared.cancel_call(
                        self.id,
                        Failure::System {
                            code: SystemCode::DeadlineExceeded,
                            message: String::new(),
                        },
                    );
                    return Err(CallError::Timeout {
                        op: self.name.op.clone(),
                        peer: self.name.peer.clone(),
                        after: Duration::ZERO,
                    });
                }
            },
            None => take.await,
        };
        if taken.is_err() {
            return Err(self.shared.ended(&self.name, &self.credit));
        }
        let id = self.id;
        self.shared
            .out
            .push_bounded(|o| o.frame_spliced(Kind::Data, id, &msg))
            .await
            .map_err(|_| self.shared.ended(&self.name, &self.credit))?;
        if let Some(record) = &self.name.record {
            record.sent(msg.len());
        }
        Ok(())
    }

    /// The operation this stream belongs to.
    pub fn op(&self) -> &str {
        &self.name.op
    }

    /// The peer at the other end, as named in errors.
    pub fn peer(&self) -> &str {
        &self.name.peer
    }

    /// Best-effort send: sends `msg` if the receiver has credit and the
    /// connection has room right now, otherwise drops it — counting it in
    /// [`dropped`](Self::dropped) — and returns [`TrySendError::Full`]. Never waits.
    pub fn try_send(&mut self, msg: Bytes) -> Result<(), TrySendError> {
        let limit = self.shared.peer_max_frame as usize;
        if msg.len() > limit {
            return Err(TrySendError::Closed(CallError::MessageTooLarge {
                op: self.name.op.clone(),
                peer: self.name.peer.clone(),
                size: msg.len(),
                limit,
            }));
        }
        match self.credit.try_take(msg.len()) {
            Err(_) => {
                return Err(TrySendError::Closed(
                    self.shared.ended(&self.name, &self.credit),
                ))
            }
            Ok(false) => {
                self.dropped += 1;
                return Err(TrySendError::Full(msg));
            }
            Ok(true) => {}
        }
        let id = self.id;
        match self
            .shared
            .out
            .try_push_bounded(|o| o.frame(Kind::Data, id, &msg))
        {
            Ok(Some(())) => {
                if let Some(record) = &self.name.record {
                    record.sent(msg.len());
                }
                Ok(())
            }
            Ok(None) => {
                // The credit was taken but nothing was sent: give it back.
                self.credit.grant(msg.len() as u32);
                self.dropped += 1;
                Err(TrySendError::Full(msg))
            }
            Err(_) => Err(TrySendError::Closed(
                self.shared.ended(&self.name, &self.credit),
            )),
        }
    }

    /// Messages [`try_send`](Self::try_send) dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes this side may still send before it has to wait for the receiver.
    pub fn credit(&self) -> i64 {
        self.credit.available()
    }

    /// Ends this side of the stream cleanly. For a caller this tells the
    /// handler no more requests follow; for a handler it is optional (the
    /// stream ends when the handler returns).
    pub async fn finish(mut self) -> Result<(), CallError> {
        if self.opener {
            let id = self.id;
            self.shared
                .out
                .push_bounded(|o| encode_empty(&mut o.buf, Kind::End, id))
                .await
                .map_err(|_| self.shared.ended(&self.name, &self.credit))?;
        }
        // A finished request side no longer cancels the call on drop; the
        // reply or inbound handle still does.
        self.guard.take();
        Ok(())
    }
}

/// The answer to a client-stream call: resolves once the handler acks or rejects.
pub struct Reply {
    name: CallName,
    rx: ReplyRx,
    guard: Option<Arc<CallGuard>>,
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Option<Duration>,
    scope: Option<Scope>,
    parent: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply").field("op", &self.name.op).finish()
    }
}

impl Reply {
    pub(crate) fn new(
        name: CallName,
        rx: ReplyRx,
        guard: Arc<CallGuard>,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Self {
        Reply {
            name,
            rx,
            guard: Some(guard),
            sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            timeout,
            scope: None,
            parent: None,
        }
    }

    /// Ties the call to the served call it was made in (see
    /// [`Inbound::child_of`]).
    pub(crate) fn child_of(mut self, parent: Option<CallScope>) -> Self {
        self.parent = parent.map(|p| Box::pin(p.token.lend().cancelled_owned()));
        self
    }

    /// The operation this reply belongs to.
    pub fn op(&self) -> &str {
        &self.name.op
    }

    /// The peer at the other end, as named in errors.
    pub fn peer(&self) -> &str {
        &self.name.peer
    }

    /// Ties the reply to a session: closing the session cancels the call.
    pub(crate) fn scoped(mut self, token: CancellationToken, session: Arc<str>) -> Self {
        self.scope = Some(Scope::new(token, session));
        self
    }

    fn settle(&mut self) {
        if let Some(g) = self.guard.take() {
            if let Ok(mut g) = Arc::try_unwrap(g) {
                g.disarm();
            }
        }
    }
}

impl Future for Reply {
    type Output = Result<Bytes, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = this.poll_unobserved(cx);
        if let (Some(record), Poll::Ready(reply)) = (&this.name.record, &polled) {
            record.replied(reply);
        }
        polled
    }
}

impl Reply {
    fn poll_unobserved(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, CallError>> {
        let this = self;
        if let Poll::Ready(r) = Pin::new(&mut this.rx).poll(cx) {
            this.settle();
            let shared_lost = || Failure::Lost("connection closed".into());
            return Poll::Ready(match r {
                Ok(Ok(b)) => Ok(b),
                Ok(Err(f)) => Err(this.name.error(f, this.timeout)),
                Err(_) => Err(this.name.error(shared_lost(), this.timeout)),
            });
        }
        if let Some(scope) = this.scope.as_mut() {
            if scope.closed.as_mut().poll(cx).is_ready() {
                let session = scope.name.clone();
                if let Some(g) = this.guard.take() {
                    g.shared.cancel_call(g.id, session_closed(&session));
                }
                return Poll::Ready(Err(CallError::SessionClosed {
                    op: this.name.op.clone(),
                    peer: this.name.peer.clone(),
                    session,
                }));
            }
        }
        if let Some(parent) = this.parent.as_mut() {
            if parent.as_mut().poll(cx).is_ready() {
                if let Some(g) = this.guard.take() {
                    g.shared.cancel_call(g.id, cancelled());
                }
                return Poll::Ready(Err(CallError::Cancelled {
                    op: this.name.op.clone(),
                    peer: this.name.peer.clone(),
                }));
            }
        }
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            let after = this.timeout.unwrap_or_default();
            if let Some(g) = this.guard.take() {
                g.shared.cancel_call(
                    g.id,
                    Failure::System {
                        code: SystemCode::DeadlineExceeded,
                        message: String::new(),
                    },
                );
            }
            return Poll::Ready(Err(CallError::Timeout {
                op: this.name.op.clone(),
                peer: this.name.peer.clone(),
                after,
            }));
        }
        Poll::Pending
    }
}
