//! Sessions: named scopes on a connection, opened with data and accepted or
//! rejected by the other side (Interconnect's model).
//!
//! Opening a session is a call to the built-in operation
//! `plexus.Session/open` carrying the session id, its name and the opener's
//! data; the peer's session hook answers with accept data or a rejection.
//! Calls made through a [`Session`] carry its id, the peer serves them only
//! while the session is open, and closing the session — from either side,
//! or by losing the connection — cancels every call still running in it.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::core::Charge;
use super::events::Event;
use super::handler::{CallContext, Route, Routes};
use super::{CallOptions, Connection, Inbound, Outbound, PeerInfo, Reply, Shared};
use crate::error::{CallError, Reject};
use crate::wire::varint;

/// Built-in operation that opens a session.
pub(crate) const OPEN_OP: &str = "plexus.Session/open";
/// Built-in one-way operation that closes a session.
pub(crate) const CLOSE_OP: &str = "plexus.Session/close";
/// Reject code used when the peer has no session hook.
pub const NO_SESSIONS: u32 = 0xffff_0001;
/// What one open session costs besides its name and data, as charged to the
/// budget.
const SESSION_OVERHEAD: usize = 256;

/// Decides whether to accept a session: `Ok(data)` accepts and sends `data`
/// back to the opener, `Err(reject)` refuses.
pub(crate) type SessionHook =
    Arc<dyn Fn(SessionRequest) -> BoxFuture<'static, Result<Bytes, Reject>> + Send + Sync>;

/// The shared state of one session, on one side.
pub(crate) struct SessionState {
    pub(crate) id: u32,
    pub(crate) name: Arc<str>,
    /// What the other side sent: the opener's data, or the acceptor's reply.
    pub(crate) peer_data: OnceLock<Bytes>,
    pub(crate) token: CancellationToken,
    reason: OnceLock<String>,
    /// A session the peer opened counts against the connection's budget
    /// while it lives.
    _charge: Option<Charge>,
}

/// A named session on a connection. Clone freely.
///
/// Calls made through it run inside the session on the peer; closing it
/// (either side) or losing the connection cancels them.
#[derive(Clone)]
pub struct Session {
    pub(crate) state: Arc<SessionState>,
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.state.name)
            .field("id", &self.state.id)
            .field("peer", self.shared.peer.label())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A peer's request to open a session, as the session hook sees it.
pub struct SessionRequest {
    session: Session,
    data: Bytes,
}

impl fmt::Debug for SessionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRequest")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl SessionRequest {
    /// The session's name.
    pub fn name(&self) -> &str {
        &self.session.state.name
    }

    /// The data the opener sent.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Who asks.
    pub fn peer(&self) -> &PeerInfo {
        &self.session.shared.peer
    }

    /// The session as it will be once accepted: keep it to call the opener
    /// inside the session later (it is usable once the hook has returned `Ok`).
    pub fn session(&self) -> Session {
        self.session.clone()
    }
}

fn encode_open(id: u32, name: &str, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(10 + name.len() + data.len());
    varint::put(&mut b, u64::from(id));
    varint::put(&mut b, name.len() as u64);
    b.put_slice(name.as_bytes());
    b.put_slice(data);
    b.freeze()
}

fn decode_open(mut b: Bytes) -> Result<(u32, String, Bytes), Reject> {
    let bad = |what: &str| Reject::invalid_payload(format!("session open: {what}"));
    let id = varint::get_u32(&mut b, "session id").map_err(|e| bad(&e.to_string()))?;
    let n = varint::get(&mut b, "session name").map_err(|e| bad(&e.to_string()))?;
    if n > 1024 || n > b.remaining() as u64 {
        return Err(bad("name length out of range"));
    }
    let name =
        String::from_utf8(b.split_to(n as usize).to_vec()).map_err(|_| bad("name is not UTF-8"))?;
    Ok((id, name, b))
}

fn encode_close(id: u32, reason: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + reason.len());
    varint::put(&mut b, u64::from(id));
    b.put_slice(reason.as_bytes());
    b.freeze()
}

impl Shared {
    pub(crate) fn emit(&self, event: Event) {
        self.events.send(event);
    }

    /// Ends a session on this side: cancels its calls and reports it.
    pub(crate) fn end_session(&self, id: u32, reason: &str) -> Option<Arc<SessionState>> {
        let state = self.core().remove_session(id)?;
        self.session_ended(&state, reason);
        Some(state)
    }

    fn session_ended(&self, state: &SessionState, reason: &str) {
        let _ = state.reason.set(reason.to_owned());
        state.token.cancel();
        self.emit(Event::SessionClosed {
            name: state.name.clone(),
            peer: self.peer.clone(),
            reason: reason.to_owned(),
        });
    }

    /// Ends the sessions the connection's end took from the core.
    pub(crate) fn end_sessions(&self, sessions: Vec<Arc<SessionState>>, reason: &str) {
        for state in sessions {
            self.session_ended(&state, reason);
        }
    }

    /// Opens a session with the peer.
    pub(crate) async fn open_session(
        self: &Arc<Self>,
        name: &str,
        data: Bytes,
        settle: Duration,
    ) -> Result<Session, CallError> {
        // Session ids follow the call-id rule: odd from the dialer, even from
        // the listener, so both sides can open sessions without colliding.
        let id = self.next_session_id();
        let state = Arc::new(SessionState {
            id,
            name: name.into(),
            peer_data: OnceLock::new(),
            token: CancellationToken::new(),
            reason: OnceLock::new(),
            _charge: None,
        });
        // Registered before asking, so the acceptor may call into the session
        // as soon as it has said yes. (On an ended connection the call below
        // fails.)
        let _ = self.core().add_session(id, state.clone());
        let opts = CallOptions::new().timeout(settle);
        let asked = self.call(OPEN_OP, encode_open(id, name, &data), opts).await;
        match asked {
            Ok(reply) => {
                let _ = state.peer_data.set(reply);
                let session = Session {
                    state,
                    shared: self.clone(),
                };
                self.emit(Event::SessionOpened {
                    session: session.clone(),
                });
                Ok(session)
            }
            Err(e) => {
                self.core().remove_session(id);
                state.token.cancel();
                if let CallError::Timeout { .. } = e {
                    // The peer may still accept later; tell it not to bother.
                    let _ = self
                        .oneway(
                            CLOSE_OP,
                            encode_close(id, "settle timeout"),
                            CallOptions::new(),
                        )
                        .await;
                    return Err(CallError::SessionTimeout {
                        session: name.into(),
                        peer: self.peer.label.clone(),
                        after: settle,
                    });
                }
                Err(e)
            }
        }
    }
}

/// The built-in session operations every endpoint serves.
pub(crate) fn builtin_routes(hook: Option<SessionHook>) -> Routes {
    let open = Route::unary(move |ctx: CallContext, body: Bytes| {
        let hook = hook.clone();
        async move {
            let (id, name, data) = decode_open(body)?;
            let shared = ctx.shared.clone();
            shared
                .core()
                .may_open_session(id)
                .map_err(|refused| refused.reject())?;
            let Some(hook) = hook else {
                return Err(Reject::new(
                    NO_SESSIONS,
                    format!(
                        "{} accepts no sessions (no session hook is set)",
                        shared.local_label()
                    ),
                ));
            };
            let charge = Charge::new(&shared.budget, name.len() + data.len() + SESSION_OVERHEAD);
            let state = Arc::new(SessionState {
                id,
                name: name.into(),
                _charge: Some(charge),
                peer_data: OnceLock::from(data.clone()),
                token: CancellationToken::new(),
                reason: OnceLock::new(),
            });
            let session = Session {
                state: state.clone(),
                shared: shared.clone(),
            };
            let reply = hook(SessionRequest {
                session: session.clone(),
                data,
            })
            .await?;
            if shared.core().add_session(id, state).is_err() {
                return Err(Reject::new(NO_SESSIONS, "connection closed"));
            }
            shared.emit(Event::SessionOpened { session });
            Ok(reply)
        }
    });
    let close = Route::oneway(|ctx: CallContext, mut body: Bytes| async move {
        let Ok(id) = varint::get_u32(&mut body, "session id") else {
            return;
        };
        let reason = String::from_utf8_lossy(&body).into_owned();
        ctx.shared
            .end_session(id, &format!("closed by the peer: {reason}"));
    });
    Routes::default()
        .insert(OPEN_OP.to_owned(), open)
        .insert(CLOSE_OP.to_owned(), close)
}

impl Session {
    /// The session's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// What the other side sent: the opener's data (on the accepting side) or
    /// the acceptor's reply (on the opening side).
    pub fn peer_data(&self) -> Bytes {
        self.state.peer_data.get().cloned().unwrap_or_default()
    }

    /// The connection the session lives on.
    pub fn connection(&self) -> Connection {
        Connection::direct(self.shared.clone())
    }

    /// Whether the session has been closed (by either side or by the connection ending).
    pub fn is_closed(&self) -> bool {
        self.state.token.is_cancelled()
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.state.reason.get().cloned()
    }

    /// Resolves when the session closes.
    pub async fn closed(&self) {
        self.state.token.cancelled().await
    }

    /// A [`Connection`] whose calls all run inside this session — hand it to
    /// a generated client (`ChatClient::new(session.as_connection())`) for
    /// typed calls scoped to the session. Closing it closes the session.
    pub fn as_connection(&self) -> Connection {
        Connection::scoped(self.clone())
    }

    /// Ends the session on this side at once, cancelling its calls; the peer
    /// is told in the background.
    pub(crate) fn abort(&self) {
        if self.shared.end_session(self.state.id, "aborted").is_some() {
            let this = self.clone();
            tokio::spawn(async move {
                let _ = this
                    .shared
                    .oneway(
                        CLOSE_OP,
                        encode_close(this.state.id, "aborted"),
                        CallOptions::new(),
                    )
                    .await;
            });
        }
    }

    /// Closes the session: its calls on both sides are cancelled and the peer is told.
    pub async fn close(&self, reason: &str) {
        if self.shared.end_session(self.state.id, reason).is_some() {
            let _ = self
                .shared
                .oneway(
                    CLOSE_OP,
                    encode_close(self.state.id, reason),
                    CallOptions::new(),
                )
                .await;
        }
    }

    fn scoped(&self, op: &str, mut opts: CallOptions) -> Result<CallOptions, CallError> {
        if self.is_closed() {
            return Err(self.closed_error(op));
        }
        opts.session = Some(self.state.id);
        Ok(opts)
    }

    fn closed_error(&self, op: &str) -> CallError {
        CallError::SessionClosed {
            op: op.into(),
            peer: self.shared.peer.label.clone(),
            session: self.state.name.clone(),
        }
    }

    async fn within<T>(
        &self,
        op: &str,
        fut: impl std::future::Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        tokio::select! {
            biased;
            _ = self.state.token.cancelled() => Err(self.closed_error(op)),
            r = fut => r.map_err(|e| match e {
                CallError::SessionClosed { op, peer, .. } => CallError::SessionClosed { op, peer, session: self.state.name.clone() },
                other => other,
            }),
        }
    }

    /// A unary call inside the session; see [`Connection::call`].
    pub async fn call(&self, op: &str, body: Bytes, opts: CallOptions) -> Result<Bytes, CallError> {
        let opts = self.scoped(op, opts)?;
        self.within(op, self.shared.call(op, body, opts)).await
    }

    /// A one-way message inside the session; see [`Connection::oneway`].
    pub async fn oneway(&self, op: &str, body: Bytes, opts: CallOptions) -> Result<(), CallError> {
        let opts = self.scoped(op, opts)?;
        self.within(op, self.shared.oneway(op, body, opts)).await
    }

    /// A server stream inside the session; see [`Connection::server_stream`].
    /// Closing the session cancels the stream.
    pub async fn server_stream(
        &self,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<Inbound, CallError> {
        let opts = self.scoped(op, opts)?;
        let inbound = self
            .within(op, self.shared.server_stream(op, body, opts))
            .await?;
        Ok(inbound.scoped(self.state.token.clone(), self.state.name.clone()))
    }

    /// A client stream inside the session; see [`Connection::client_stream`].
    pub async fn client_stream(
        &self,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Reply), CallError> {
        let opts = self.scoped(op, opts)?;
        let (out, reply) = self.within(op, self.shared.client_stream(op, opts)).await?;
        Ok((
            out,
            reply.scoped(self.state.token.clone(), self.state.name.clone()),
        ))
    }

    /// A bidirectional stream inside the session; see [`Connection::bidi`].
    pub async fn bidi(
        &self,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Inbound), CallError> {
        let opts = self.scoped(op, opts)?;
        let (out, inbound) = self.within(op, self.shared.bidi(op, opts)).await?;
        Ok((
            out,
            inbound.scoped(self.state.token.clone(), self.state.name.clone()),
        ))
    }
}
