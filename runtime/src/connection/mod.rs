//! Connections: one transport stream carrying many calls in both directions.
//!
//! A connection's protocol state and rules live in one sans-IO state
//! machine, the core (see `core`): fed decoded frames and this side's own
//! events, it says what to send, whom to deliver to, what to refuse and
//! what to close. Around it run two tasks, its shells: a reader that
//! decodes frames, asks the core and does what it says (see `reader`), and a
//! writer that drains the shared write queue (see `writer`) and, beside it,
//! keeps the keepalive (asking the core's keepalive rule whether to ping or
//! give the peer up) and fails calls at their deadlines.
//!
//! [`Connection`] is the cheap, cloneable handle to all of it. It never
//! touches the socket itself.

mod calls;
pub(crate) mod core;
pub(crate) mod events;
mod handler;
mod observed;
mod reader;
mod redial;
mod retry;
pub(crate) mod scope;
mod served;
mod session;
mod stream;
mod writer;

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use self::calls::CallOptions;
use self::core::{Beat, Budget, CallSlots, Core, Failure, Keepalive, ServedCalls, Side};
use self::events::EventHub;
pub use self::handler::CallContext;
pub(crate) use self::handler::{Route, Routes};
pub use self::redial::Backoff;
pub(crate) use self::redial::{Dial, Redial};
pub use self::retry::{RetryBudget, RetryPolicy, RetryStats};
use self::session::SessionState;
pub(crate) use self::session::{builtin_routes, SessionHook};
pub use self::session::{Session, SessionRequest, NO_SESSIONS};
pub use self::stream::{Inbound, Outbound, Reply, TrySendError};
pub(crate) use self::writer::SplicedMessage;
use self::writer::WriteQueue;
use crate::peer::PeerInfo;
use crate::transport::{ReadHalf, WriteHalf};
use crate::wire;
use crate::wire::node_id::NodeId;

/// Tuning of a connection. Both sides announce their own receive limits in
/// the handshake; each side enforces its own.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    pub(crate) max_frame: u32,
    pub(crate) window: u32,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) hello_timeout: Duration,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) write_high_water: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_calls: u32,
    pub(crate) memory_budget: usize,
    pub(crate) stall_timeout: Duration,
}

/// Default [`ConnectionConfig::max_calls`].
const DEFAULT_MAX_CALLS: u32 = 256;
/// Default [`ConnectionConfig::memory_budget`]: 16 MiB.
const DEFAULT_MEMORY_BUDGET: usize = 16 * 1024 * 1024;

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_frame: wire::DEFAULT_MAX_FRAME,
            window: 2 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(4),
            default_timeout: Some(Duration::from_secs(30)),
            write_high_water: 1024 * 1024,
            drain_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_calls: DEFAULT_MAX_CALLS,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionConfig {
    /// The defaults: 16 MiB frames, 2 MiB stream windows, ping after 5 s of
    /// silence, lost after 15 s, 30 s default timeout for unary calls, 10 s
    /// to dial and 10 s for the handshake, 256 calls served at once, a
    /// 16 MiB memory budget, and a peer that reads nothing for 10 s while
    /// over it cut off.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a dial may take to reach the peer (TCP connect, and for
    /// `tls://` the TLS handshake) before it fails with
    /// [`ConnectError::ConnectTimeout`](crate::ConnectError::ConnectTimeout).
    /// Every dial of an endpoint uses it: direct, reconnecting and a node's.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Most calls this side serves at once for one peer (at least 1),
    /// announced in the handshake. A Plexus peer keeps its calls within the
    /// limit by queueing them locally; calls from a peer that ignores it are
    /// refused with [`CallError::Overloaded`](crate::CallError::Overloaded)
    /// before they run, and its one-way messages wait (the connection stops
    /// reading) until a call ends.
    pub fn max_calls(mut self, calls: u32) -> Self {
        self.max_calls = calls.max(1);
        self
    }

    /// Bytes one peer may make this side hold through one connection: request
    /// bodies of calls being served, stream messages not yet read, interned
    /// operation names, open sessions, and everything queued for the peer.
    /// At the budget this side stops reading from the peer until memory is
    /// freed (the peer is held back by TCP); see
    /// [`stall_timeout`](Self::stall_timeout) for a peer that never drains.
    /// `docs/PROTOCOL.md` §13 gives the arithmetic.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes.max(64 * 1024);
        self
    }

    /// How long this side waits, over its memory budget with answers queued
    /// for the peer, for the peer to read any of them. A peer that reads
    /// nothing for this long is sent a goaway saying why and cut off
    /// ([`CloseReason::PeerNotReading`]).
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Largest frame (and so largest single message) this side accepts.
    /// Larger frames from the peer close the connection with a protocol error.
    pub fn max_frame(mut self, bytes: u32) -> Self {
        self.max_frame = bytes.max(wire::handshake::MIN_FRAME);
        self
    }

    /// Bytes of stream data this side buffers per stream before the sender must
    /// wait for credit.
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.window = bytes.max(1024);
        self
    }

    /// Ping the peer after `interval` without traffic; declare it lost (and
    /// fail every pending call with `ConnectionLost`) after `timeout` without
    /// traffic. A dead peer is detected within `timeout + interval`.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval.max(Duration::from_millis(1));
        self.keepalive_timeout = timeout.max(self.keepalive_interval);
        self
    }

    /// How long the handshake may take (the dialer's wait for an answer,
    /// and the whole of a listener's side, the key proof included).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self.hello_timeout = self.hello_timeout.min(timeout);
        self
    }

    /// How long a listener waits for a dialer's hello once the stream is up
    /// (4 s by default, at most the handshake timeout). Shorter than the
    /// dialer's own handshake timeout on purpose: dialers that connect and
    /// say nothing hold one of the listener's handshake places only this
    /// long, so an honest dialer queued behind a wave of them still gets in
    /// within its own timeout.
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout.min(self.handshake_timeout);
        self
    }

    /// Timeout applied to unary calls that set none (`None`: wait forever,
    /// bounded only by keepalive).
    pub fn default_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Encoded bytes queued for the socket above which senders wait.
    pub fn write_high_water(mut self, bytes: usize) -> Self {
        self.write_high_water = bytes.max(1);
        self
    }

    /// How long a graceful close waits for in-flight calls.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// This side closed it gracefully.
    Local,
    /// The peer closed it gracefully (goaway, then end of stream).
    Remote,
    /// The peer's stream ended without a goaway.
    PeerGone,
    /// Nothing was heard from the peer for this long.
    KeepaliveTimeout(Duration),
    /// The peer broke the protocol.
    Protocol(String),
    /// The transport failed.
    Io(String),
    /// This side aborted it.
    Aborted,
    /// The peer left `queued` bytes unread for `after` while this side was
    /// over its memory budget, and was cut off.
    PeerNotReading {
        /// Bytes queued for the peer when it was cut off.
        queued: usize,
        /// How long nothing of them was read.
        after: Duration,
    },
    /// The peer cut this side off: for exceeding one of its limits, or
    /// because it revoked this side's access.
    CutOff(String),
    /// This side revoked the peer's access (its allow-list no longer admits it).
    Revoked(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed by this side"),
            CloseReason::Remote => f.write_str("closed by the peer"),
            CloseReason::PeerGone => f.write_str("the peer went away without closing"),
            CloseReason::KeepaliveTimeout(d) => write!(f, "nothing heard from the peer for {d:?}"),
            CloseReason::Protocol(m) => write!(f, "protocol error: {m}"),
            CloseReason::Io(m) => write!(f, "transport error: {m}"),
            CloseReason::Aborted => f.write_str("aborted by this side"),
            CloseReason::PeerNotReading { queued, after } => write!(
                f,
                "the peer read none of the {queued} bytes queued for it for {after:?}; cut off"
            ),
            CloseReason::CutOff(m) => write!(f, "cut off by the peer: {m}"),
            CloseReason::Revoked(m) => write!(f, "access revoked by this side: {m}"),
        }
    }
}

/// Counters a connection exposes, for tests, metrics and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Encoded bytes waiting for the socket right now.
    pub queued_bytes: usize,
    /// Bytes handed to the transport so far.
    pub bytes_written: u64,
    /// Calls open on this connection right now, both directions.
    pub calls_in_flight: usize,
    /// Frames received so far.
    pub frames_received: u64,
    /// Bytes the peer's traffic holds on this side right now, the write
    /// queue included: what counts against the memory budget.
    pub budget_used: usize,
    /// The memory budget.
    pub budget_limit: usize,
    /// Calls this side is serving for the peer right now.
    pub calls_served: u32,
    /// Whether the reader is holding the peer back right now (over the
    /// budget, or at the call limit with a one-way message waiting).
    pub held_back: bool,
}

/// How long a connection that has ended keeps writing what was queued.
const FLUSH_GRACE: Duration = Duration::from_secs(1);

/// The connection's core, as the runtime's shells use it: operations
/// resolve to the router's routes, sessions are shared session states.
pub(crate) type ConnCore = Core<Route, Arc<SessionState>>;

/// State shared by a connection's handle, its tasks and its calls.
pub(crate) struct Shared {
    pub(crate) peer: PeerInfo,
    pub(crate) local: NodeId,
    side: Side,
    next_id: AtomicU32,
    next_session: AtomicU32,
    /// The protocol state: calls, sessions, goaways, the peer's operations.
    /// One lock, taken once per frame and never held while queueing one.
    core: Mutex<ConnCore>,
    pub(crate) events: Arc<EventHub>,
    pub(crate) out: WriteQueue,
    pub(crate) router: Routes,
    pub(crate) config: ConnectionConfig,
    /// Largest frame the peer accepts.
    pub(crate) peer_max_frame: u32,
    /// The peer's per-stream window: our send credit.
    pub(crate) peer_window: u32,
    reason: OnceLock<CloseReason>,
    pub(crate) closed: CancellationToken,
    /// Set once the writer task is done: what was queued is written (or
    /// abandoned after the flush grace) and the stream is closed.
    written_out: WrittenOut,
    /// What the last-heard time and deadlines count from: tokio's clock, so
    /// paused test time drives keepalive and deadlines alike.
    epoch: tokio::time::Instant,
    last_heard_ms: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    /// The deadline (µs since `epoch`) the sweeper is armed for: the
    /// earliest of the unary calls this side has outstanding, or `u64::MAX`.
    earliest_deadline: AtomicU64,
    /// Wakes the sweeper when a call arms an earlier deadline.
    deadline_armed: tokio::sync::Notify,
    /// Calls of the peer's being served right now, of every kind (a unary
    /// call answered on the spot has no table entry, so a graceful close
    /// waits for this count as well as for the table).
    pub(crate) served: Arc<ServedCalls>,
    /// What the peer's traffic holds on this side, against the budget.
    pub(crate) budget: Arc<Budget>,
    /// This side's calls to the peer, within the peer's announced limit.
    pub(crate) slots: Arc<CallSlots>,
    /// The reader is not reading: over the budget, or at the call limit.
    held_back: std::sync::atomic::AtomicBool,
    /// Run around every call this side opens, when the endpoint has any.
    pub(crate) call_interceptors: Option<Arc<crate::intercept::CallInterceptors>>,
    /// What runs once the connection has ended (the endpoint forgetting it);
    /// run by the writer task, so no task of its own waits for the end.
    on_end: Mutex<OnEnd>,
}

/// A flag set once, that tasks can wait for: smaller than a
/// `CancellationToken` (no allocation of its own) where no child tokens are
/// needed.
#[derive(Default)]
struct WrittenOut {
    set: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl WrittenOut {
    fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            // Registered before the check, so a `set` in between is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.set.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Told who the peer was and why the connection ended, once it has.
pub(crate) type EndHook = Box<dyn FnOnce(PeerInfo, CloseReason) + Send>;

/// Whether a connection's end hook is waiting, or has run.
enum OnEnd {
    Waiting(Option<EndHook>),
    Ended,
}

impl Shared {
    /// Runs `hook` once the connection has ended (now, if it has).
    pub(crate) fn on_end(&self, hook: EndHook) {
        let mut on_end = self.on_end.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *on_end {
            OnEnd::Waiting(slot) => *slot = Some(hook),
            OnEnd::Ended => {
                drop(on_end);
                hook(self.peer.clone(), self.end_reason());
            }
        }
    }

    /// Runs the end hook, if there is one; called once the connection has ended.
    fn run_end_hook(&self) {
        let mut on_end = self.on_end.lock().unwrap_or_else(|e| e.into_inner());
        if let OnEnd::Waiting(hook) = std::mem::replace(&mut *on_end, OnEnd::Ended) {
            drop(on_end);
            if let Some(hook) = hook {
                hook(self.peer.clone(), self.end_reason());
            }
        }
    }

    fn end_reason(&self) -> CloseReason {
        self.reason.get().cloned().unwrap_or(CloseReason::PeerGone)
    }

    pub(crate) fn core(&self) -> std::sync::MutexGuard<'_, ConnCore> {
        // A panic under this lock leaves the tables structurally valid
        // (every change is one map operation); keep going.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates the next id for a call this side opens.
    pub(crate) fn next_call_id(&self) -> u32 {
        // Wrapping is a concern only after two billion calls on one
        // connection; skip 0, which means "one-way".
        loop {
            let id = self.next_id.fetch_add(2, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Allocates the next id for a session this side opens (the call-id
    /// parity rule: odd from the dialer, even from the listener).
    pub(crate) fn next_session_id(&self) -> u32 {
        self.next_session.fetch_add(2, Ordering::Relaxed)
    }

    pub(crate) fn note_heard(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    /// The instant `timeout` from now, on tokio's clock.
    pub(crate) fn deadline_in(&self, timeout: Duration) -> std::time::Instant {
        let now = tokio::time::Instant::now().into_std();
        // A timeout past what the clock can hold is as good as none.
        now.checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(u64::from(u32::MAX)))
    }

    /// Makes sure the sweeper wakes by `deadline` (from [`deadline_in`](Self::deadline_in)).
    pub(crate) fn arm_deadline(&self, deadline: std::time::Instant) {
        let since = deadline.saturating_duration_since(self.epoch.into_std());
        let at = u64::try_from(since.as_micros()).unwrap_or(u64::MAX - 1);
        if at < self.earliest_deadline.fetch_min(at, Ordering::AcqRel) {
            self.deadline_armed.notify_one();
        }
    }

    /// Fails every call whose deadline has passed (telling the peer to stop),
    /// and re-arms for the earliest deadline still ahead.
    fn sweep_deadlines(&self) {
        self.earliest_deadline.store(u64::MAX, Ordering::Release);
        let now = tokio::time::Instant::now().into_std();
        let mut expired = Vec::new();
        let next = self.core().expire(now, &mut expired);
        for (id, entry) in expired {
            let _ = self
                .out
                .push(|o| wire::frame::encode_empty(&mut o.buf, wire::frame::Kind::Cancel, id));
            entry.fail(Failure::System {
                code: wire::SystemCode::DeadlineExceeded,
                message: String::new(),
            });
        }
        if let Some(next) = next {
            self.arm_deadline(next);
        }
    }

    pub(crate) fn is_held_back(&self) -> bool {
        self.held_back.load(Ordering::Acquire)
    }

    pub(crate) fn set_held_back(&self, held: bool) {
        self.held_back.store(held, Ordering::Release);
    }

    fn silent_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed)))
    }

    /// Whether new calls may be opened.
    pub(crate) fn accepting_calls(&self) -> bool {
        self.core().opens_calls()
    }

    /// The failure every pending call sees once the connection is closed.
    pub(crate) fn lost(&self) -> Failure {
        let reason = self.reason.get().cloned().unwrap_or(CloseReason::PeerGone);
        Failure::Lost(reason.to_string().into())
    }

    /// Ends the connection: records why (first reason wins), stops the tasks
    /// and fails every call still open.
    pub(crate) fn shut(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        let down = self.core().shut();
        self.out.close();
        self.closed.cancel();
        let failure = self.lost();
        let unprocessed = Failure::System {
            code: wire::SystemCode::GoingAway,
            message: "the peer closed before taking this call".into(),
        };
        for (entry, never_taken) in down.calls {
            // Calls the peer's goaway says it never took are safe to send
            // again elsewhere; say so (Closing) rather than "lost".
            if never_taken {
                entry.fail(unprocessed.clone());
            } else {
                entry.fail(failure.clone());
            }
        }
        self.end_sessions(down.sessions, "the connection ended");
    }
}

/// A handle to one multiplexed connection. Clone it freely; every clone
/// refers to the same connection.
///
/// Either side can call the other: a connection made by
/// [`Connection::connect`] or [`Endpoint::connect`](crate::Endpoint::connect)
/// serves the dialing endpoint's router to the peer, and a handler can reach
/// the caller through [`CallContext::connection`](crate::CallContext::connection).
///
/// A connection made by [`Endpoint::reconnecting`](crate::Endpoint::reconnecting)
/// is the same type: it redials when its link drops, and its calls wait for
/// the next link (see [`Backoff`]).
#[derive(Clone)]
pub struct Connection {
    link: Link,
}

#[derive(Clone)]
enum Link {
    Direct(Arc<Shared>),
    Redial(Arc<Redial>),
    /// Calls go through a session (see [`Session::as_connection`]).
    Scoped(Session),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = match &self.link {
            Link::Direct(s) => s.peer.label.clone(),
            Link::Redial(r) => r.label.clone(),
            Link::Scoped(s) => s.shared.peer.label.clone(),
        };
        f.debug_struct("Connection")
            .field("peer", &peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// What the handshake settled, handed to [`Connection::start`].
pub(crate) struct Established {
    pub(crate) peer: PeerInfo,
    pub(crate) local: NodeId,
    pub(crate) dialer: bool,
    pub(crate) peer_max_frame: u32,
    pub(crate) peer_window: u32,
    /// Most calls the peer serves at once.
    pub(crate) peer_max_calls: u32,
    /// The endpoint's call interceptors, if it has any.
    pub(crate) call_interceptors: Option<Arc<crate::intercept::CallInterceptors>>,
    /// Bytes read past the handshake (the first frames, if the peer was quick).
    pub(crate) leftover: bytes::BytesMut,
}

macro_rules! dispatch {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match &$self.link {
            Link::Direct(s) => s.$method($($arg),*).await,
            Link::Redial(r) => r.$method($($arg),*).await,
            Link::Scoped(s) => s.$method($($arg),*).await,
        }
    };
}

impl Connection {
    pub(crate) fn direct(shared: Arc<Shared>) -> Connection {
        Connection {
            link: Link::Direct(shared),
        }
    }

    pub(crate) fn redial(redial: Redial) -> Connection {
        Connection {
            link: Link::Redial(Arc::new(redial)),
        }
    }

    pub(crate) fn scoped(session: Session) -> Connection {
        Connection {
            link: Link::Scoped(session),
        }
    }

    /// Whether this side dialed the connection (for a reconnecting one: always).
    pub fn dialed_here(&self) -> bool {
        match &self.link {
            Link::Direct(s) => s.side.is_dialer(),
            Link::Scoped(s) => s.shared.side.is_dialer(),
            Link::Redial(_) => true,
        }
    }

    /// The live link's state, if there is one.
    pub(crate) fn direct_shared(&self) -> Option<Arc<Shared>> {
        match &self.link {
            Link::Direct(s) => Some(s.clone()),
            Link::Redial(r) => r.current(),
            Link::Scoped(s) => Some(s.shared.clone()),
        }
    }

    /// Starts the reader task and the writer task (which keeps the keepalive
    /// and the deadlines too) over an established stream.
    pub(crate) fn start(
        (rd, wr): (ReadHalf, WriteHalf),
        est: Established,
        router: Routes,
        config: ConnectionConfig,
        events: Arc<EventHub>,
    ) -> Connection {
        let side = Side::new(est.dialer);
        let budget = Arc::new(Budget::new(config.memory_budget));
        let served = Arc::new(ServedCalls::new(config.max_calls, budget.clone()));
        let shared = Arc::new(Shared {
            peer: est.peer,
            local: est.local,
            side,
            next_id: AtomicU32::new(side.first_id()),
            next_session: AtomicU32::new(side.first_id()),
            core: Mutex::new(Core::new(side, budget.clone(), served.clone())),
            out: WriteQueue::new(config.write_high_water),
            router,
            peer_max_frame: est.peer_max_frame,
            peer_window: est.peer_window,
            reason: OnceLock::new(),
            closed: CancellationToken::new(),
            written_out: WrittenOut::default(),
            epoch: tokio::time::Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            earliest_deadline: AtomicU64::new(u64::MAX),
            deadline_armed: tokio::sync::Notify::new(),
            served,
            budget,
            slots: Arc::new(CallSlots::new(est.peer_max_calls)),
            held_back: std::sync::atomic::AtomicBool::new(false),
            call_interceptors: est.call_interceptors,
            on_end: Mutex::new(OnEnd::Waiting(None)),
            events,
            config,
        });
        let w = shared.clone();
        tokio::spawn(async move {
            // Coalescing pays only when several calls may be about to send.
            let busy = || w.core().calls_in_flight() > 1;
            let run = w.out.run(wr, busy);
            // Once the connection has ended, what is still queued (a goaway,
            // last answers) gets a short grace to leave; a peer that does not
            // read must not keep the writer, the stream and the queue alive.
            let ended = async {
                w.closed.cancelled().await;
                w.run_end_hook();
                tokio::time::sleep(FLUSH_GRACE).await;
            };
            // The keepalive and the deadlines of this side's calls run in
            // this task too: one task (and its memory) fewer per connection.
            tokio::select! {
                r = run => {
                    if let Err(e) = r {
                        w.shut(CloseReason::Io(e.to_string()));
                    }
                }
                () = ended => {}
                never = keepalive(&w) => match never {},
            }
            // The writer may have finished before the branch above saw
            // the end; the hook runs once either way.
            w.run_end_hook();
            w.out.abandon().await;
            w.written_out.set();
        });
        let r = shared.clone();
        tokio::spawn(async move {
            let mut rd = rd;
            reader::run(r.clone(), &mut rd, est.leftover).await;
            // Boxed: entered once, at the end; inline it would make every
            // reader future (and so every idle connection) larger.
            Box::pin(reader::linger(r.written_out.wait(), &mut rd)).await;
        });
        Connection::direct(shared)
    }

    /// Who is on the other end. For a reconnecting connection: the peer of the
    /// current link, or, while no link is up, the dialed URL with a zero node id.
    pub fn peer(&self) -> PeerInfo {
        match &self.link {
            Link::Direct(s) => s.peer.clone(),
            Link::Scoped(s) => s.shared.peer.clone(),
            Link::Redial(r) => match r.current() {
                Some(s) => s.peer.clone(),
                None => PeerInfo::new(NodeId(0), r.url.to_string(), Bytes::new()),
            },
        }
    }

    /// This side's node id.
    pub fn local_node(&self) -> NodeId {
        match &self.link {
            Link::Direct(s) => s.local,
            Link::Redial(r) => r.local,
            Link::Scoped(s) => s.shared.local,
        }
    }

    /// Whether the connection has ended (for a reconnecting connection: whether
    /// it has stopped redialing).
    pub fn is_closed(&self) -> bool {
        match &self.link {
            Link::Direct(s) => s.closed.is_cancelled(),
            Link::Redial(r) => matches!(&*r.state.borrow(), redial::LinkState::Stopped(_)),
            Link::Scoped(s) => s.is_closed(),
        }
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match &self.link {
            Link::Direct(s) if s.closed.is_cancelled() => s.reason.get().cloned(),
            Link::Direct(_) => None,
            Link::Redial(_) if self.is_closed() => Some(CloseReason::Local),
            Link::Redial(_) => None,
            Link::Scoped(s) => s.is_closed().then_some(CloseReason::Local),
        }
    }

    /// Waits until the connection ends and says why. A reconnecting
    /// connection ends only when it is closed or gives up redialing.
    pub async fn closed(&self) -> CloseReason {
        match &self.link {
            Link::Scoped(s) => {
                s.closed().await;
                CloseReason::Local
            }
            Link::Direct(s) => {
                s.closed.cancelled().await;
                s.reason.get().cloned().unwrap_or(CloseReason::PeerGone)
            }
            Link::Redial(r) => {
                let mut rx = r.state.clone();
                loop {
                    if let redial::LinkState::Stopped(reason) = &*rx.borrow_and_update() {
                        return CloseReason::Io(reason.to_string());
                    }
                    if rx.changed().await.is_err() {
                        return CloseReason::Local;
                    }
                }
            }
        }
    }

    /// How long nothing has been heard from the peer on the live link
    /// (any frame: replies, calls, keepalive pongs); `None` without one.
    pub(crate) fn silent_for(&self) -> Option<Duration> {
        self.direct_shared()
            .filter(|s| !s.closed.is_cancelled())
            .map(|s| s.silent_for())
    }

    /// Sends a ping now, so that a live peer is heard from within a round
    /// trip (its pong counts as traffic).
    pub(crate) fn probe(&self) {
        if let Some(s) = self.direct_shared() {
            let _ = s
                .out
                .push(|o| wire::frame::encode_ping(&mut o.buf, wire::frame::Kind::Ping, u64::MAX));
            s.out.write_through();
        }
    }

    /// Counters for this connection (for a reconnecting one: its current link).
    pub fn stats(&self) -> ConnectionStats {
        let Some(s) = self.direct_shared() else {
            return ConnectionStats::default();
        };
        let queued = s.out.queued();
        ConnectionStats {
            queued_bytes: queued,
            bytes_written: s.out.written(),
            calls_in_flight: s.calls_in_flight(),
            frames_received: s.frames_received.load(Ordering::Relaxed),
            budget_used: s.budget.held() + queued,
            budget_limit: s.budget.limit(),
            calls_served: s.served.count(),
            held_back: s.held_back.load(Ordering::Acquire),
        }
    }

    /// Closes gracefully: tells the peer (goaway) that no new calls will be
    /// taken, refuses new calls on this side with [`CallError::Closing`](crate::CallError::Closing),
    /// lets calls in flight in both directions finish (up to the configured
    /// drain timeout), then closes the stream. A reconnecting connection
    /// also stops redialing.
    pub async fn close(&self) {
        match &self.link {
            Link::Direct(s) => s.close().await,
            Link::Scoped(s) => s.close("closed by this side").await,
            Link::Redial(r) => {
                r.stop.cancel();
                if let Some(s) = r.current() {
                    s.close().await;
                }
            }
        }
    }

    /// Ends the connection at once because the peer may no longer talk to
    /// this side: a goaway saying why (`reason`), then the stream is closed;
    /// calls in flight fail with `ConnectionLost`. An endpoint does this when
    /// its allow-list stops admitting the peer.
    pub fn revoke(&self, reason: &str) {
        if let Some(s) = self.direct_shared() {
            let last = s.core().last_admitted();
            let _ = s.out.push(|o| {
                wire::frame::encode_goaway(
                    &mut o.buf,
                    last,
                    wire::SystemCode::PermissionDenied as u32,
                    &format!("access revoked: {reason}"),
                )
            });
            s.shut(CloseReason::Revoked(reason.to_owned()));
        }
    }

    /// Ends the connection at once: every call in flight fails with
    /// `ConnectionLost`, the peer sees the stream end.
    pub fn abort(&self) {
        match &self.link {
            Link::Direct(s) => s.shut(CloseReason::Aborted),
            Link::Scoped(s) => s.abort(),
            Link::Redial(r) => {
                r.stop.cancel();
                if let Some(s) = r.current() {
                    s.shut(CloseReason::Aborted);
                }
            }
        }
    }

    /// Calls `op` with `body` and waits for the handler's answer: `Ok(reply)`
    /// if it acked, [`CallError::Rejected`](crate::CallError::Rejected) if it
    /// refused, or another [`CallError`](crate::CallError) saying what went wrong.
    pub async fn call(
        &self,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<Bytes, crate::CallError> {
        dispatch!(self, call(op, body, opts))
    }

    /// Sends `body` to `op` without waiting for, or getting, any answer. Returns
    /// once the message is queued for the socket.
    pub async fn oneway(
        &self,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<(), crate::CallError> {
        dispatch!(self, oneway(op, body, opts))
    }

    /// Calls `op` with one request and receives a stream of replies, ended by
    /// the handler's ack or broken by its reject.
    pub async fn server_stream(
        &self,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<Inbound, crate::CallError> {
        dispatch!(self, server_stream(op, body, opts))
    }

    /// Opens a stream of requests to `op`; the handler answers once, at the
    /// end, through the returned [`Reply`]. Call [`Outbound::finish`] after the
    /// last message.
    pub async fn client_stream(
        &self,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Reply), crate::CallError> {
        dispatch!(self, client_stream(op, opts))
    }

    /// Opens a stream in both directions with `op`.
    pub async fn bidi(
        &self,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Inbound), crate::CallError> {
        dispatch!(self, bidi(op, opts))
    }

    /// Opens a named session with `data`. The peer's session hook
    /// ([`EndpointBuilder::on_session`](crate::server::EndpointBuilder::on_session))
    /// accepts — the returned [`Session`] carries its reply in
    /// [`Session::peer_data`] — or rejects, giving
    /// [`CallError::Rejected`](crate::CallError::Rejected). If it does neither
    /// within `settle`, the result is [`CallError::SessionTimeout`](crate::CallError::SessionTimeout).
    pub async fn open_session(
        &self,
        name: &str,
        data: impl Into<Bytes>,
        settle: Duration,
    ) -> Result<Session, crate::CallError> {
        let shared = match &self.link {
            Link::Direct(s) => s.clone(),
            Link::Scoped(s) => s.shared.clone(),
            Link::Redial(r) => {
                r.link(
                    session::OPEN_OP,
                    Some(tokio::time::Instant::now() + settle),
                    settle,
                )
                .await?
            }
        };
        shared.open_session(name, data.into(), settle).await
    }

    /// The sessions open on this connection right now.
    pub fn sessions(&self) -> Vec<Session> {
        let Some(s) = self.direct_shared() else {
            return Vec::new();
        };
        let states = s.core().sessions();
        states
            .into_iter()
            .map(|state| Session {
                state,
                shared: s.clone(),
            })
            .collect()
    }
}

impl Shared {
    async fn close(&self) {
        // The switch to draining and every admission happen under the core's
        // lock: every call with an id above `last` will be refused.
        let draining = self.core().drain();
        if let Some(last) = draining {
            let _ = self
                .out
                .push(|o| wire::frame::encode_goaway(&mut o.buf, last, 0, "closing"));
        }
        // Waits for the last call to end (woken when it does), the drain
        // timeout, or the connection ending, whichever comes first.
        let deadline = tokio::time::sleep(self.config.drain_timeout);
        tokio::pin!(deadline);
        loop {
            let quiet = self.served.quiet();
            if self.core().idle() || self.closed.is_cancelled() {
                break;
            }
            tokio::select! {
                () = quiet => {}
                () = &mut deadline => break,
                () = self.closed.cancelled() => break,
            }
        }
        self.shut(CloseReason::Local);
        // A graceful close returns once the last answers and the goaway
        // have left (at most the flush grace later).
        self.written_out.wait().await;
    }

    fn calls_in_flight(&self) -> usize {
        self.core().calls_in_flight()
    }

    /// `node xxxxxxxx`, this side, for messages.
    pub(crate) fn local_label(&self) -> String {
        format!("node {:08x}", (self.local.0 >> 96) as u32)
    }
}

/// Pings an idle peer and declares it lost after the keepalive timeout
/// (the rule is the core's [`Keepalive`]; this checks it on a timer), and
/// keeps the deadlines of this side's unary calls: one timer per connection,
/// armed for the earlier of the next check and the earliest deadline,
/// instead of one registered and dropped per call. Runs inside the writer
/// task, beside the writer, and never completes: once the connection has
/// ended it only waits for the writer to finish.
async fn keepalive(s: &Shared) -> std::convert::Infallible {
    let mut rule = Keepalive::new(s.config.keepalive_interval, s.config.keepalive_timeout);
    let mut next_check = tokio::time::Instant::now() + rule.interval();
    let timer = tokio::time::sleep_until(next_check);
    tokio::pin!(timer);
    while !s.closed.is_cancelled() {
        let earliest = s.earliest_deadline.load(Ordering::Acquire);
        let sweep_at = (earliest != u64::MAX).then(|| s.epoch + Duration::from_micros(earliest));
        let wake = sweep_at.map_or(next_check, |at| at.min(next_check));
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            biased;
            () = s.deadline_armed.notified() => continue,
            () = &mut timer => {}
        }
        let now = tokio::time::Instant::now();
        if sweep_at.is_some_and(|at| at <= now) {
            s.sweep_deadlines();
        }
        if now < next_check {
            continue;
        }
        // The next check one interval from this one (a late check, on a busy
        // thread, counts from when it ran, as `MissedTickBehavior::Delay` does).
        next_check = now + rule.interval();
        if s.closed.is_cancelled() {
            break;
        }
        match rule.check(s.silent_for(), s.is_held_back()) {
            Beat::Quiet => {}
            Beat::Ping(seq) => {
                let _ = s
                    .out
                    .push(|o| wire::frame::encode_ping(&mut o.buf, wire::frame::Kind::Ping, seq));
            }
            Beat::Lost(silent) => {
                s.shut(CloseReason::KeepaliveTimeout(silent));
                break;
            }
        }
    }
    std::future::pending().await
}
