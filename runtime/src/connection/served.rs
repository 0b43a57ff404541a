//! Serving calls the peer opens, once the core admitted them: run the
//! handler on its own task under the call's deadline and cancellation, catch
//! its panics, and send exactly one ack or reject when it ends (nothing for
//! one-way calls, and nothing when the caller cancelled). Which calls are
//! served, refused or dropped is the core's decision (`core::Core::on_frame`);
//! this is the shell that carries it out.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::calls::CallName;
use super::core::{
    Admitted, Attached, Charge, Dropped, Entry, InItem, InboundTx, Operation, RecvWindow, Refusal,
    SendCredit, ServedCalls,
};
use super::handler::{CallContext, Route, UnarySlot};
use super::scope::CallToken;
use super::session::SessionState;
use super::stream::{Inbound, Outbound};
use super::{Connection, Session, Shared};
use crate::descriptor::CallKind;
use crate::error::Reject;
use crate::intercept::{IncomingCall, Interceptors};
use crate::observe::call as observe;
use crate::wire::frame::{encode_reject, CallOpen, Kind};
use crate::wire::SystemCode;

thread_local! {
    /// The box the last unary handler answered on the spot on this thread
    /// ran in, for the next one (see [`UnarySlot`]).
    static HANDLER_BOX: Cell<Option<UnarySlot>> = const { Cell::new(None) };
}

impl Operation for Route {
    fn kind(&self) -> CallKind {
        self.call_kind()
    }

    fn kind_name(&self) -> &'static str {
        Route::kind_name(self)
    }
}

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
    /// Answers a call the core refused before any handler ran.
    pub(crate) fn refuse(&self, refusal: Refusal) {
        let Refusal {
            id,
            op,
            code,
            message,
        } = refusal;
        observe::refused(&self.peer, &op, code);
        let _ = self
            .out
            .push(|o| encode_reject(&mut o.buf, id, true, code as u32, &message, &[]));
    }

    /// Logs a one-way message the core dropped (nothing goes back).
    pub(crate) fn drop_one_way(&self, op: &str, why: Dropped) {
        match why {
            Dropped::Closing => {
                tracing::debug!(op = %op, "one-way message dropped: connection is closing")
            }
            Dropped::SessionClosed(sid) => {
                tracing::debug!(op = %op, "one-way message dropped: session {sid} is closed")
            }
            Dropped::NotOneWay(kind) => tracing::warn!(
                op = %op,
                "one-way message dropped: the operation is {kind}, not one-way"
            ),
            Dropped::NoSuchOperation => {
                tracing::warn!(op = %op, "one-way message dropped: no such operation")
            }
        }
    }

    /// The call's session, as its handler sees it, and the cancellation its
    /// handler runs under (closing the session cancels it). A call that may
    /// be answered on the spot (`reusable`) outside a session gets a token
    /// that may go on to the next such call (see [`CallToken`]).
    fn scope_of(
        self: &Arc<Self>,
        session: Option<Arc<SessionState>>,
        reusable: bool,
    ) -> (CallToken, Option<Session>) {
        match session {
            None if reusable => (CallToken::reusable(), None),
            None => (CallToken::Plain(CancellationToken::new()), None),
            Some(state) => (
                CallToken::Plain(state.token.child_token()),
                Some(Session {
                    state,
                    shared: self.clone(),
                }),
            ),
        }
    }

    /// Serves a call (or one-way message) the core admitted and counted.
    pub(crate) fn serve(self: &Arc<Self>, call: Admitted<Route, Arc<SessionState>>) {
        let Admitted {
            open,
            op,
            route,
            session,
        } = call;
        // From here on the call is counted as served until the guard ends it.
        let serving = Serving::new(self.served.clone());
        let unary = matches!(route, Route::Unary(_));
        let (token, session) = self.scope_of(session, unary && !open.oneway);
        if open.oneway {
            return self.serve_one_way(open, op, route, token, session, serving);
        }
        let id = open.id;
        // Filled in below for the calls that need an entry at once; a unary
        // call gets one only if it has to wait.
        let mut entry = Entry::default();
        let mut ctx = self.context(op.clone(), &open, token.clone());
        ctx.session = session;
        let single = route.single_request();
        let request = single.then_some(open.body.len());
        ctx.record = observe::serving(&self.peer, &ctx, route.call_kind(), request);
        let record = ctx.record.clone();
        let name = || CallName {
            op: op.clone(),
            peer: self.peer.label.clone(),
            record: record.clone(),
        };
        let credit = || Arc::new(SendCredit::new(self.peer_window));
        let first = open.body.clone();
        // A single request is charged to the budget while its handler runs;
        // a request stream's first message is charged by its window.
        let charged = if single { open.body.len() } else { 0 };
        let inbound = |entry: &mut Entry| {
            let (tx, rx) = mpsc::unbounded_channel();
            let window = Arc::new(RecvWindow::new(
                self.config.window,
                self.config.max_frame,
                self.budget.clone(),
            ));
            // A body on the opening frame of a request stream is its first
            // message (at most one frame: always within the window).
            if !first.is_empty() {
                window.receive(first.len());
                let _ = tx.send(InItem::Data(first.clone()));
            }
            entry.inbound = Some(InboundTx::new(tx, window.clone()));
            Inbound::served(name(), self.clone(), id, rx, window)
        };
        let body = open.body;
        let fut: BoxFuture<'static, Result<Bytes, Reject>> = match route {
            // Without interceptors or an observer (most calls), the
            // handler's own future is built in the box this thread's last
            // such call left, and the box is kept again if it is answered
            // on the spot.
            Route::Unary(f) if ctx.record.is_none() && !self.intercepts(&ctx.op) => {
                let mut slot = HANDLER_BOX
                    .try_with(Cell::take)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| UnarySlot::new(std::future::pending()));
                f.call_in(ctx, body, &mut slot);
                let keep = |slot| {
                    let _ = HANDLER_BOX.try_with(|spare| spare.set(Some(slot)));
                };
                return self.serve_unary(id, token, open.deadline, charged, slot, serving, keep);
            }
            Route::Unary(f) => {
                let fut = self.intercepted(ctx, move |ctx| f.call(ctx, body));
                return self.serve_unary(id, token, open.deadline, charged, fut, serving, drop);
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
        entry.cancel = Some(token.lend());
        // Refused only if the connection ended meanwhile: then nothing runs.
        if let Ok(attached) = self.core().attach(id, entry) {
            let charge = Charge::new(&self.budget, charged);
            let shared = self.clone();
            let deadline = open.deadline;
            tokio::spawn(run(shared, serving, charge, attached, token, deadline, fut));
        }
    }

    /// Runs a one-way message's handler on its own task, its body charged
    /// until it ends; nothing is ever sent back.
    fn serve_one_way(
        self: &Arc<Self>,
        open: CallOpen,
        op: Arc<str>,
        route: Route,
        token: CallToken,
        session: Option<Session>,
        serving: Serving,
    ) {
        let Route::OneWay(f) = route else {
            return; // the core admits one-way messages to one-way routes only
        };
        let mut ctx = self.context(op.clone(), &open, token);
        ctx.session = session;
        let request = Some(open.body.len());
        ctx.record = observe::serving(&self.peer, &ctx, CallKind::OneWay, request);
        let deadline = open.deadline;
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

    /// Serves a unary call: its handler is polled once right here, and a
    /// handler that finishes at once (most do) is answered without a task,
    /// a table entry or a timer. One that has to wait moves to its own task
    /// as usual. The call's entry is only needed once it can be cancelled,
    /// which is not before the reader reads its next frame. A handler
    /// answered on the spot leaves its finished future to `keep`.
    #[allow(clippy::too_many_arguments)]
    fn serve_unary<F>(
        self: &Arc<Self>,
        id: u32,
        token: CallToken,
        deadline: Option<Duration>,
        body_len: usize,
        mut fut: F,
        serving: Serving,
        keep: impl FnOnce(F),
    ) where
        F: Future<Output = Result<Bytes, Reject>> + Unpin + Send + 'static,
    {
        // Counted from admission until its answer is queued, so a graceful
        // close cannot slip in between.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let outcome =
            match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut fut).poll(&mut cx))) {
                Ok(std::task::Poll::Ready(result)) => {
                    keep(fut);
                    Outcome::Done(result)
                }
                Err(p) => {
                    drop(fut);
                    Outcome::Panicked(panic_message(p))
                }
                Ok(std::task::Poll::Pending) => {
                    // The spawned task polls it again with a real waker, so
                    // whatever the first poll registered with the no-op waker is
                    // registered afresh.
                    let entry = Entry {
                        cancel: Some(token.lend()),
                        ..Entry::default()
                    };
                    if let Ok(attached) = self.core().attach(id, entry) {
                        let charge = Charge::new(&self.budget, body_len);
                        let shared = self.clone();
                        tokio::spawn(run(shared, serving, charge, attached, token, deadline, fut));
                    }
                    return;
                }
            };
        // The handler's future is gone: whoever kept its token sees it fire.
        token.release();
        // Answers go straight into the queue: it counts against the budget,
        // and the reader stops taking new calls while the budget is full.
        if let Some(answer) = Answer::of(self, outcome) {
            let _ = self.out.push(|o| {
                answer.encode(o, id);
                serving.end();
            });
        }
        drop(serving);
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

    /// Whether the router's interceptors run before `op`'s handler.
    fn intercepts(&self, op: &str) -> bool {
        !self.router.interceptors().is_empty() && !Interceptors::exempt(op)
    }

    fn context(self: &Arc<Self>, op: Arc<str>, open: &CallOpen, token: CallToken) -> CallContext {
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
    shared: Arc<Shared>,
    serving: Serving,
    charge: Charge,
    call: Attached,
    token: CallToken,
    deadline: Option<Duration>,
    fut: impl Future<Output = Result<Bytes, Reject>> + Send,
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
    // Whoever removes the entry answers the call; if the caller cancelled or
    // the connection closed, it is already gone and nothing is sent.
    let Some(entry) = shared.core().finish_served(call) else {
        return;
    };
    let id = call.id();
    if let Some(c) = &entry.credit {
        c.close();
    }
    token.cancel();
    // Straight into the queue, which counts against the budget (see
    // `serve_unary`).
    if let Some(answer) = Answer::of(&shared, outcome) {
        let _ = shared.out.push(|o| {
            answer.encode(o, id);
            serving.end();
        });
    }
}

/// Counts a call as served, against the call limit and for a graceful
/// close, until [`end`](Self::end) or its drop, however serving it ends.
/// Made once per call the core admitted (which counted it).
pub(crate) struct Serving(Arc<ServedCalls>, std::cell::Cell<bool>);

impl Serving {
    fn new(served: Arc<ServedCalls>) -> Serving {
        Serving(served, std::cell::Cell::new(false))
    }

    /// Stops counting the call. Called under the write queue's lock as its
    /// answer is queued, so the count drops exactly when the answer can
    /// leave: the peer, which counts the call until the answer arrives,
    /// never sees this side over the limit it announced, and a graceful
    /// close that sees the count at zero finds the answer already queued.
    fn end(&self) {
        if !self.1.replace(true) {
            self.0.end();
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
