//! Serving calls the peer opens: find the handler, run it on its own task
//! under the call's deadline and cancellation, catch its panics, and send
//! exactly one ack or reject when it ends (nothing for one-way calls, and
//! nothing when the caller cancelled).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::budget::Charge;
use super::calls::CallName;
use super::flow::{RecvWindow, SendCredit};
use super::stream::{Inbound, Outbound};
use super::table::{Entry, InboundTx};
use super::{Connection, Session, Shared};
use crate::descriptor::CallKind;
use crate::error::Reject;
use crate::intercept::{IncomingCall, Interceptors};
use crate::observe::call as observe;
use crate::router::{CallContext, Route};
use crate::wire::frame::encode_reject;
use crate::wire::{CallOpen, Kind, SystemCode};

/// A violation the reader closes the connection for.
pub(crate) struct Violation(pub(crate) String);

enum Outcome {
    Done(Result<Bytes, Reject>),
    Panicked(String),
    TimedOut,
    Cancelled,
}

fn panic_message(p: Box<dyn Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("handler panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("handler panicked: {s}")
    } else {
        "handler panicked".to_string()
    }
}

impl Shared {
    fn reject_now(&self, id: u32, code: SystemCode, message: &str) {
        let _ = self
            .out
            .push(|o| encode_reject(&mut o.buf, id, true, code as u32, message, &[]));
    }

    /// Refuses a call the peer opened, before any handler runs. The answer
    /// goes out on the call's id, so that id must not belong to a call still
    /// running (served calls check the same under the table lock on insert).
    fn refuse(&self, id: u32, op: &str, code: SystemCode, message: &str) -> Result<(), Violation> {
        if self.table().contains_key(&id) {
            return Err(Violation(format!("call id {id} opened twice")));
        }
        observe::refused(&self.peer, op, code);
        self.reject_now(id, code, message);
        Ok(())
    }

    /// Starts serving a call the peer opened.
    pub(crate) fn serve(
        self: &Arc<Self>,
        open: CallOpen,
        op: Arc<str>,
        route: Option<Route>,
    ) -> Result<(), Violation> {
        let id = open.id;
        if open.oneway {
            if id != 0 {
                return Err(Violation(format!(
                    "one-way call to `{op}` carries call id {id}, not 0"
                )));
            }
            if !self.serving_new_calls() {
                tracing::debug!(op = %op, "one-way message dropped: connection is closing");
                return Ok(());
            }
            match route {
                Some(Route::OneWay(f)) => {
                    let mut ctx = self.context(op.clone(), &open, CancellationToken::new());
                    if let Some(sid) = open.session {
                        let Some(state) = self.session(sid) else {
                            tracing::debug!(op = %op, "one-way message dropped: session {sid} is closed");
                            return Ok(());
                        };
                        ctx.token = state.token.child_token();
                        ctx.session = Some(Session {
                            state,
                            shared: self.clone(),
                        });
                    }
                    let request = Some(open.body.len());
                    ctx.record = observe::serving(&self.peer, &ctx, CallKind::OneWay, request);
                    let deadline = open.deadline;
                    // Counted like any served call (the reader waits at the
                    // limit before it gets here), its body charged until the
                    // handler ends.
                    self.serving.fetch_add(1, Ordering::AcqRel);
                    let serving = Serving(self.clone(), std::cell::Cell::new(false));
                    let charge = Charge::new(&self.budget, open.body.len());
                    let body = open.body;
                    let fut = self.intercepted(ctx, move |ctx| {
                        let fut = f(ctx, body);
                        Box::pin(async move {
                            fut.await;
                            Ok(())
                        })
                    });
                    let fut = AssertUnwindSafe(fut).catch_unwind();
                    tokio::spawn(async move {
                        let _serving = serving;
                        let _charge = charge;
                        let outcome = match deadline {
                            Some(d) => match tokio::time::timeout(d, fut).await {
                                Ok(r) => r,
                                Err(_) => {
                                    tracing::debug!(op = %op, "one-way handler stopped at its deadline");
                                    return;
                                }
                            },
                            None => fut.await,
                        };
                        match outcome {
                            Ok(Ok(())) => {}
                            Ok(Err(refused)) => {
                                tracing::debug!(op = %op, "one-way message refused by an interceptor: {refused}");
                            }
                            Err(p) => tracing::warn!(op = %op, "{}", panic_message(p)),
                        }
                    });
                }
                Some(other) => tracing::warn!(
                    op = %op,
                    "one-way message dropped: the operation is {}, not one-way",
                    other.kind_name()
                ),
                None => tracing::warn!(op = %op, "one-way message dropped: no such operation"),
            }
            return Ok(());
        }
        if id == 0 || self.is_local_id(id) {
            return Err(Violation(format!(
                "call to `{op}` uses id {id}, which belongs to this side"
            )));
        }
        if !self.serving_new_calls() {
            return self.refuse(
                id,
                &op,
                SystemCode::GoingAway,
                "connection is closing; no new calls",
            );
        }
        let Some(route) = route else {
            return self.refuse(
                id,
                &op,
                SystemCode::NoSuchOperation,
                &format!("no handler for `{op}`"),
            );
        };
        if route.single_request() != open.end {
            let message = format!(
                "`{op}` is a {} operation but was called as {}",
                route.kind_name(),
                if open.end {
                    "a single request"
                } else {
                    "a request stream"
                }
            );
            return self.refuse(id, &op, SystemCode::Protocol, &message);
        }

        let (token, session) = match open.session {
            None => (CancellationToken::new(), None),
            Some(sid) => match self.session(sid) {
                Some(state) => {
                    let token = state.token.child_token();
                    (
                        token,
                        Some(Session {
                            state,
                            shared: self.clone(),
                        }),
                    )
                }
                None => {
                    let message = format!("session {sid}");
                    return self.refuse(id, &op, SystemCode::SessionClosed, &message);
                }
            },
        };
        // Filled in below for the calls that need an entry at once; a unary
        // call gets one only if it has to wait.
        let mut entry = Entry::default();
        let mut ctx = self.context(op.clone(), &open, token.clone());
        ctx.session = session;
        let request = route.single_request().then_some(open.body.len());
        ctx.record = observe::serving(&self.peer, &ctx, observe::route_kind(&route), request);
        let record = ctx.record.clone();
        let name = || CallName {
            op: op.clone(),
            peer: self.peer.label.clone(),
            record: record.clone(),
        };
        let credit = || Arc::new(SendCredit::new(self.peer_window));
        let first = open.body.clone();
        let body_len = open.body.len();
        let inbound = |entry: &mut Entry| {
            let (tx, rx) = mpsc::unbounded_channel();
            let window = Arc::new(RecvWindow::new(
                self.config.window,
                self.config.max_frame,
                self.budget.clone(),
            ));
            // A body on the opening frame of a request stream is its first message.
            if !first.is_empty() {
                window.receive(first.len());
                let _ = tx.send(super::table::InItem::Data(first.clone()));
            }
            entry.inbound = Some(InboundTx {
                tx,
                window: window.clone(),
            });
            Inbound::served(name(), self.clone(), id, rx, window)
        };
        let body = open.body;
        let fut: BoxFuture<'static, Result<Bytes, Reject>> = match route {
            Route::Unary(f) => {
                let fut = self.intercepted(ctx, move |ctx| f(ctx, body));
                return self.serve_unary(id, token, open.deadline, body_len, fut);
            }
            Route::OneWay(f) => self.intercepted(ctx, move |ctx| {
                let fut = f(ctx, body);
                Box::pin(async move {
                    fut.await;
                    Ok(Bytes::new())
                })
            }),
            Route::ServerStream(f) => {
                let c = credit();
                entry.credit = Some(c.clone());
                let out = Outbound::served(name(), self.clone(), id, c);
                self.intercepted(ctx, move |ctx| {
                    let fut = f(ctx, body, out);
                    Box::pin(async move { fut.await.map(|()| Bytes::new()) })
                })
            }
            Route::ClientStream(f) => {
                let i = inbound(&mut entry);
                self.intercepted(ctx, move |ctx| f(ctx, i))
            }
            Route::Bidi(f) => {
                let i = inbound(&mut entry);
                let c = credit();
                entry.credit = Some(c.clone());
                let out = Outbound::served(name(), self.clone(), id, c);
                self.intercepted(ctx, move |ctx| {
                    let fut = f(ctx, i, out);
                    Box::pin(async move { fut.await.map(|()| Bytes::new()) })
                })
            }
        };
        entry.cancel = Some(token.clone());
        if let Some(serving) = self.admit(id, Some(entry))? {
            let charge = Charge::new(&self.budget, body_len);
            tokio::spawn(run(serving, charge, id, token, open.deadline, fut));
        }
        Ok(())
    }

    /// Admits call `id` — counted for the goaway and against the call limit,
    /// its entry (if any) in the table — or refuses it because the connection
    /// is closing or the peer already has as many calls served as this side
    /// allows (`None`). The returned guard counts the call as served until
    /// it is dropped.
    fn admit(
        self: &Arc<Self>,
        id: u32,
        entry: Option<Entry>,
    ) -> Result<Option<Serving>, Violation> {
        let mut table = self.table();
        if table.contains_key(&id) {
            return Err(Violation(format!("call id {id} opened twice")));
        }
        // Checked under the table lock, which `close` also takes to send
        // its goaway: a call is either counted in the goaway's last id
        // and served, or refused here — never both, never neither.
        if !self.serving_new_calls() {
            drop(table);
            self.reject_now(
                id,
                SystemCode::GoingAway,
                "connection is closing; no new calls",
            );
            return Ok(None);
        }
        let max = self.config.max_calls;
        if self.serving.fetch_add(1, Ordering::AcqRel) >= max {
            self.serving.fetch_sub(1, Ordering::AcqRel);
            drop(table);
            self.reject_now(
                id,
                SystemCode::ResourceExhausted,
                &format!("{max} calls already served at once for this peer, the limit it was told in the handshake"),
            );
            return Ok(None);
        }
        self.highest_peer_id.fetch_max(id, Ordering::Relaxed);
        if let Some(entry) = entry {
            table.insert(id, entry);
        }
        Ok(Some(Serving(self.clone(), std::cell::Cell::new(false))))
    }

    /// Serves a unary call: its handler is polled once right here, and a
    /// handler that finishes at once (most do) is answered without a task,
    /// a table entry or a timer. One that has to wait moves to its own task
    /// as usual. The call's entry is only needed once it can be cancelled,
    /// which is not before the reader reads its next frame.
    fn serve_unary(
        self: &Arc<Self>,
        id: u32,
        token: CancellationToken,
        deadline: Option<Duration>,
        body_len: usize,
        mut fut: BoxFuture<'static, Result<Bytes, Reject>>,
    ) -> Result<(), Violation> {
        // Counted from admission until its answer is queued, so a graceful
        // close cannot slip in between.
        let Some(serving) = self.admit(id, None)? else {
            return Ok(());
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let outcome =
            match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
                Ok(std::task::Poll::Ready(result)) => Outcome::Done(result),
                Err(p) => Outcome::Panicked(panic_message(p)),
                Ok(std::task::Poll::Pending) => {
                    // The spawned task polls it again with a real waker, so
                    // whatever the first poll registered with the no-op waker is
                    // registered afresh.
                    let entry = Entry {
                        cancel: Some(token.clone()),
                        ..Entry::default()
                    };
                    self.table().insert(id, entry);
                    let charge = Charge::new(&self.budget, body_len);
                    tokio::spawn(run(serving, charge, id, token, deadline, fut));
                    return Ok(());
                }
            };
        token.cancel();
        // Answers go straight into the queue: it counts against the budget,
        // and the reader stops taking new calls while the budget is full.
        if let Some(answer) = Answer::of(self, outcome) {
            let _ = self.out.push(|o| {
                answer.encode(o, id);
                serving.end();
            });
        }
        drop(serving);
        Ok(())
    }

    /// The handler's future, behind the router's interceptors when it has
    /// any: they run first, and a refusal answers the call instead of the
    /// handler. Without interceptors this is the handler's own future.
    fn intercepted<T: observe::Served + Send + 'static>(
        self: &Arc<Self>,
        ctx: CallContext,
        handler: impl FnOnce(CallContext) -> BoxFuture<'static, Result<T, Reject>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, Reject>> {
        // Observed (when something listens) around the interceptors too.
        let record = ctx.record.clone();
        observe::served(record, self.intercepted_plain(ctx, handler))
    }

    fn intercepted_plain<T: Send + 'static>(
        self: &Arc<Self>,
        mut ctx: CallContext,
        handler: impl FnOnce(CallContext) -> BoxFuture<'static, Result<T, Reject>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, Reject>> {
        let chain = self.router.interceptors();
        if chain.is_empty() || Interceptors::exempt(&ctx.op) {
            return handler(ctx);
        }
        let chain = chain.clone();
        let call = IncomingCall {
            op: ctx.op.clone(),
            peer: self.peer.clone(),
            metadata: ctx.metadata.clone(),
            session: ctx.session.as_ref().map(|s| s.state.name.clone()),
        };
        Box::pin(async move {
            let granted = chain.admit(call).await?;
            if !granted.is_empty() {
                ctx.extensions = Some(Arc::new(granted));
            }
            handler(ctx).await
        })
    }

    fn context(
        self: &Arc<Self>,
        op: Arc<str>,
        open: &CallOpen,
        token: CancellationToken,
    ) -> CallContext {
        CallContext {
            op,
            shared: self.clone(),
            conn: Connection::direct(self.clone()),
            session: None,
            deadline: open.deadline.map(|d| tokio::time::Instant::now() + d),
            metadata: (!open.metadata.is_empty()).then(|| open.metadata.clone().into()),
            token,
            extensions: None,
            record: None,
        }
    }
}

async fn run(
    serving: Serving,
    charge: Charge,
    id: u32,
    token: CancellationToken,
    deadline: Option<Duration>,
    fut: BoxFuture<'static, Result<Bytes, Reject>>,
) {
    let guarded = async {
        let caught = AssertUnwindSafe(fut).catch_unwind();
        let result = match deadline {
            Some(d) => match tokio::time::timeout(d, caught).await {
                Ok(r) => r,
                Err(_) => return Outcome::TimedOut,
            },
            None => caught.await,
        };
        match result {
            Ok(r) => Outcome::Done(r),
            Err(p) => Outcome::Panicked(panic_message(p)),
        }
    };
    let outcome = tokio::select! {
        biased;
        _ = token.cancelled() => Outcome::Cancelled,
        o = guarded => o,
    };
    // The handler is done with the request; its memory is no longer the
    // peer's to hold.
    drop(charge);
    let shared = &serving.0;
    // Whoever removes the entry answers the call; if the caller cancelled or
    // the connection closed, it is already gone and nothing is sent.
    let Some(entry) = shared.table().remove(&id) else {
        return;
    };
    if let Some(c) = &entry.credit {
        c.close();
    }
    token.cancel();
    // Straight into the queue, which counts against the budget (see
    // `serve_unary`).
    if let Some(answer) = Answer::of(shared, outcome) {
        let _ = shared.out.push(|o| {
            answer.encode(o, id);
            serving.end();
        });
    }
}

/// Counts a call as served, against the call limit and for a graceful
/// close, until [`end`](Self::end) or its drop, however serving it ends.
pub(crate) struct Serving(Arc<Shared>, std::cell::Cell<bool>);

impl Serving {
    /// Stops counting the call. Called under the write queue's lock as its
    /// answer is queued, so the count drops exactly when the answer can
    /// leave: the peer, which counts the call until the answer arrives,
    /// never sees this side over the limit it announced, and a graceful
    /// close that sees the count at zero finds the answer already queued.
    fn end(&self) {
        if !self.1.replace(true) {
            self.0.end_serving();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.end();
    }
}

/// The one frame that ends a served call.
enum Answer {
    Ack(Bytes),
    Reject {
        system: bool,
        code: u32,
        message: String,
        details: Bytes,
    },
}

impl Answer {
    /// What to send for `outcome`; nothing when the caller cancelled.
    fn of(shared: &Shared, outcome: Outcome) -> Option<Answer> {
        let (code, message, details, system) = match outcome {
            Outcome::Cancelled => return None,
            Outcome::Done(Ok(reply)) if reply.len() <= shared.peer_max_frame as usize => {
                return Some(Answer::Ack(reply))
            }
            Outcome::Done(Ok(reply)) => (
                SystemCode::TooLarge as u32,
                format!(
                    "reply of {} bytes exceeds the caller's frame limit of {} bytes",
                    reply.len(),
                    shared.peer_max_frame
                ),
                Bytes::new(),
                true,
            ),
            Outcome::Done(Err(r)) if r.system_code().is_some() => {
                (r.code(), r.message().to_owned(), Bytes::new(), true)
            }
            Outcome::Done(Err(r)) => (r.code(), r.message().to_owned(), r.details().clone(), false),
            Outcome::Panicked(m) => (SystemCode::HandlerFailed as u32, m, Bytes::new(), true),
            Outcome::TimedOut => (
                SystemCode::DeadlineExceeded as u32,
                "deadline passed; handler stopped".to_owned(),
                Bytes::new(),
                true,
            ),
        };
        // Keep a reject well inside any frame limit the peer may have announced.
        let mut message = message;
        let mut details = details;
        let room = (shared.peer_max_frame as usize).saturating_sub(64) / 2;
        if message.len() > room {
            let mut end = room;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        if details.len() > room {
            details = Bytes::new();
        }
        Some(Answer::Reject {
            system,
            code,
            message,
            details,
        })
    }

    fn encode(&self, o: &mut super::writer::Outgoing, id: u32) {
        match self {
            Answer::Ack(reply) => o.frame(Kind::Ack, id, reply),
            Answer::Reject {
                system,
                code,
                message,
                details,
            } => encode_reject(&mut o.buf, id, *system, *code, message, details),
        }
    }
}
