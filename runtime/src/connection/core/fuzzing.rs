//! A model shell around the connection core, for the fuzz target
//! `frame_sequence` (`fuzz/fuzz_targets/frame_sequence.rs`) and for a
//! randomised unit test: it plays the peer's frames, this side's handlers,
//! callers and stream readers, and the clock, does with each answer of the
//! core what the runtime's shells do, and checks after every step the rules
//! no sequence may break (see [`Harness::check`] and [`Harness::finish`]).
//!
//! Compiled for the crate's tests and under `--cfg fuzzing` (cargo-fuzz sets
//! it), when the crate root re-exports it; never in a normal build.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rules::OP_OVERHEAD;
use super::{
    Action, Admitted, Attached, Beat, Budget, Charge, Core, Entry, Failure, InItem, InboundTx,
    Keepalive, RecvWindow, SendCredit, ServedCalls, Side,
};
use crate::descriptor::CallKind;
use crate::wire::frame::{CallOpen, Frame, OpRef};
use crate::wire::SystemCode;

/// The operations this side serves, by name; the last has no handler.
const OPERATIONS: [(&str, Option<CallKind>); 6] = [
    ("t.S/unary", Some(CallKind::Unary)),
    ("t.S/oneway", Some(CallKind::OneWay)),
    ("t.S/server", Some(CallKind::ServerStream)),
    ("t.S/client", Some(CallKind::ClientStream)),
    ("t.S/bidi", Some(CallKind::Bidi)),
    ("t.S/missing", None),
];

/// Zeros to cut message bodies from, so a step allocates no body.
static ZEROS: [u8; 4096] = [0; 4096];

/// The limits of the modelled connection. Small, so that a short sequence
/// reaches every one of them.
#[derive(Clone, Debug)]
pub struct Config {
    /// Whether this side dialed (its calls then have odd ids).
    pub dialer: bool,
    /// Calls of the peer's served at once (at least 1).
    pub max_calls: u32,
    /// This side's stream window, and the peer's.
    pub window: u32,
    /// The largest frame either side accepts (at most 4096 here).
    pub max_frame: u32,
    /// The memory budget, in bytes.
    pub budget: usize,
    /// Keepalive interval and timeout, in milliseconds.
    pub keepalive_ms: (u16, u16),
}

impl Config {
    /// A configuration from one byte of fuzz input per limit.
    pub fn from_bytes(b: [u8; 5]) -> Config {
        let interval = u16::from(b[4] % 16 + 1) * 100;
        Config {
            dialer: b[0] & 1 == 1,
            max_calls: u32::from(b[0] >> 1) % 8 + 1,
            window: (u32::from(b[1]) + 1) * 16,
            max_frame: (u32::from(b[2]) + 1) * 16,
            budget: (usize::from(b[3]) + 1) * 256,
            keepalive_ms: (interval, interval * 3),
        }
    }
}

/// The receiving end of a stream: what the application reads, and the credit
/// it returns as it does (as `Inbound` does).
struct Reader {
    rx: mpsc::UnboundedReceiver<InItem>,
    window: Arc<RecvWindow>,
    /// Consumed and not yet returned as credit.
    unreported: u32,
    /// Bytes the peer delivered on it, as counted here.
    received: u64,
    /// Bytes returned to the peer as credit.
    credited: u64,
    /// The stream ended (end, failure, or its buffer closed).
    ended: bool,
}

/// A call of the peer's whose handler runs.
struct Served {
    call: Attached,
    token: CancellationToken,
    _charge: Charge,
    reader: Option<Reader>,
    credit: Option<Arc<SendCredit>>,
}

/// A call this side opened.
struct Local {
    reply: Option<super::reply::ReplyRx>,
    reader: Option<Reader>,
    credit: Option<Arc<SendCredit>>,
    /// Terminal outcomes seen (an ack or a failure, in any form).
    outcomes: u32,
}

/// How the peer's admitted calls ended, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fates {
    /// Calls of the peer's admitted (one-way messages not included).
    pub admitted: u64,
    /// Answered by their handler.
    pub answered: u64,
    /// Cancelled by the peer before their handler ended.
    pub cancelled: u64,
    /// Still running when the connection ended.
    pub ended_with_connection: u64,
}

/// The model shell; see the module documentation.
pub struct Harness {
    config: Config,
    side: Side,
    core: Core<CallKind, u32>,
    budget: Arc<Budget>,
    served: Arc<ServedCalls>,
    keepalive: Keepalive,
    now: Instant,
    last_heard: Instant,
    /// The operations the peer defined, in index order (its send table).
    peer_ops: Vec<usize>,
    /// Bytes the definitions charged, for the connection's life.
    op_bytes: usize,
    next_local: u32,
    /// Handlers running, by the order they started in. Two may serve one
    /// id: the peer may open it again once it cancelled the first call.
    running: BTreeMap<u64, Served>,
    started: u64,
    one_way_running: Vec<Charge>,
    fates: Fates,
    highest_admitted: u32,
    local: BTreeMap<u32, Local>,
    /// A one-way message held at the call limit.
    held: Option<Frame>,
    /// Whether this side sent its goaway, and the peer sent one.
    draining: bool,
    peer_gone_away: bool,
    closed: bool,
    /// Peer frames not read because the reader was holding the peer back.
    held_back_frames: u64,
}

impl Harness {
    /// A fresh connection, just past its handshake, at an arbitrary instant.
    pub fn new(config: Config) -> Harness {
        let side = Side::new(config.dialer);
        let budget = Arc::new(Budget::new(config.budget));
        let served = Arc::new(ServedCalls::new(config.max_calls, budget.clone()));
        let (interval, timeout) = config.keepalive_ms;
        let t0 = Instant::now();
        Harness {
            core: Core::new(side, budget.clone(), served.clone()),
            keepalive: Keepalive::new(
                Duration::from_millis(interval.into()),
                Duration::from_millis(timeout.into()),
            ),
            side,
            budget,
            served,
            now: t0,
            last_heard: t0,
            peer_ops: Vec::new(),
            op_bytes: 0,
            next_local: side.first_id(),
            running: BTreeMap::new(),
            started: 0,
            one_way_running: Vec::new(),
            fates: Fates::default(),
            highest_admitted: 0,
            local: BTreeMap::new(),
            held: None,
            draining: false,
            peer_gone_away: false,
            closed: false,
            held_back_frames: 0,
            config,
        }
    }

    fn body(&self, len: u16) -> Bytes {
        let max = self.config.max_frame.min(ZEROS.len() as u32) as usize;
        Bytes::from_static(&ZEROS[..usize::from(len) % (max + 1)])
    }

    /// A call id for a frame: mostly one in use (either direction), or the
    /// peer's next, this side's parity, 0, or anything at all.
    fn pick_id(&self, pick: u16) -> u32 {
        let open: Vec<u32> = self
            .running
            .values()
            .map(|s| s.call.id())
            .chain(self.local.keys().copied())
            .collect();
        let peer_parity = |k: u32| {
            if self.side.is_dialer() {
                2 * k + 2
            } else {
                2 * k + 1
            }
        };
        match pick % 16 {
            0..=9 if !open.is_empty() => open[usize::from(pick >> 4) % open.len()],
            10 => 0,
            11 => self.side.first_id() + 2 * u32::from(pick >> 4),
            12 => u32::from(pick),
            _ => peer_parity(u32::from(pick >> 4)),
        }
    }

    /// The peer opens a call. `op` picks an operation (and whether this use
    /// defines it, as a peer's send table would, or breaks interning);
    /// `shape` sets `END` (bit 0), `ONEWAY` (bit 1) and a session (bit 2,
    /// `session` picking which).
    pub fn peer_open(&mut self, op: u8, id: u16, shape: u8, body: u16, session: u8) {
        let which = usize::from(op) % OPERATIONS.len();
        let oneway = shape & 2 != 0;
        let op_ref = if op >= 250 {
            // Interning gone wrong: an index out of order, or undefined.
            OpRef {
                index: u32::from(op - 250) + self.peer_ops.len() as u32 + 1,
                name: (op & 1 == 0).then(|| OPERATIONS[which].0.to_owned()),
            }
        } else {
            match self.peer_ops.iter().position(|&w| w == which) {
                Some(index) => OpRef {
                    index: index as u32,
                    name: None,
                },
                None => OpRef {
                    index: self.peer_ops.len() as u32,
                    name: Some(OPERATIONS[which].0.to_owned()),
                },
            }
        };
        let id = if oneway && id % 8 != 0 {
            0
        } else {
            self.pick_id(id)
        };
        let open = CallOpen {
            id,
            op: op_ref,
            deadline: None,
            metadata: Vec::new(),
            session: (shape & 4 != 0).then_some(u32::from(session)),
            end: shape & 1 != 0,
            oneway,
            body: self.body(body),
        };
        self.peer(Frame::CallOpen(open));
    }

    /// The peer sends any other frame: `kind` picks which, `id` the call,
    /// `n` a length, an amount of credit, a code or a ping value.
    pub fn peer_frame(&mut self, kind: u8, id: u16, n: u32) {
        let id = self.pick_id(id);
        let frame = match kind % 9 {
            0 => Frame::Data {
                id,
                body: self.body(n as u16),
            },
            1 => Frame::End { id },
            2 => Frame::Ack {
                id,
                body: self.body(n as u16),
            },
            3 => Frame::Reject {
                id,
                system: n & 1 == 1,
                code: n >> 1,
                message: "no".into(),
                details: Bytes::new(),
            },
            4 => Frame::Cancel { id },
            5 => Frame::Credit { id, bytes: n },
            6 => Frame::Ping { payload: n.into() },
            7 => Frame::Pong { payload: n.into() },
            _ => Frame::GoAway {
                last_id: id,
                code: n % 12,
                reason: "going".into(),
            },
        };
        self.peer(frame);
    }

    fn peer(&mut self, frame: Frame) {
        // The reader does not read while it holds the peer back (a held
        // one-way message, or the budget full): the frame stays unread.
        if self.closed || self.held.is_some() || self.budget.is_full(0) {
            self.held_back_frames += 1;
            return;
        }
        self.last_heard = self.now;
        self.take_in(frame);
    }

    /// Feeds a frame to the core and does what it says, as the reader does.
    fn take_in(&mut self, frame: Frame) {
        let defined = self.core.operations_defined();
        let defines = match &frame {
            Frame::CallOpen(open) => open
                .op
                .name
                .as_deref()
                .and_then(|name| OPERATIONS.iter().position(|(n, _)| *n == name)),
            _ => None,
        };
        let goaway = matches!(frame, Frame::GoAway { .. });
        let data_on = match &frame {
            Frame::Data { id, .. } => self.reader_mut(*id).map(|r| (*id, r.window.outstanding())),
            _ => None,
        };
        let action = self.core.on_frame(frame, |name| {
            let kind = OPERATIONS
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, k)| *k);
            (Arc::from(name), kind)
        });
        // Mirror the peer's send table: the definition the core took in.
        if self.core.operations_defined() > defined {
            let which = defines.expect("the core defined a name the frame did not carry");
            self.peer_ops.push(which);
            self.op_bytes += OPERATIONS[which].0.len() + OP_OVERHEAD;
        }
        let violated = matches!(action, Action::Violation(_));
        match action {
            Action::Nothing | Action::Pong(_) | Action::PeerGoingAway { .. } => {}
            Action::Serve(call) => self.serve(call),
            Action::Refuse(refusal) => {
                assert!(
                    self.current(refusal.id).is_none(),
                    "call {} refused while it runs",
                    refusal.id
                );
                match refusal.code {
                    SystemCode::GoingAway => assert!(self.draining || self.closed),
                    SystemCode::ResourceExhausted => assert!(self.served.at_limit()),
                    _ => {}
                }
            }
            Action::Drop { .. } => {}
            Action::Finish(entry, outcome) => entry.finish(outcome),
            Action::Hold(frame) => {
                assert!(self.served.at_limit(), "held below the call limit");
                self.held = Some(frame);
            }
            Action::Violation(_) => self.shut(),
        }
        if goaway && !violated {
            self.peer_gone_away = true;
        }
        if let Some((id, before)) = data_on {
            if let Some(r) = self.reader_mut(id) {
                r.received += r.window.outstanding().saturating_sub(before);
            }
        }
        self.settle();
    }

    /// The handler serving `id` whose call is still open (not cancelled).
    fn current(&self, id: u32) -> Option<u64> {
        self.running
            .iter()
            .find(|(_, s)| s.call.id() == id && !s.token.is_cancelled())
            .map(|(k, _)| *k)
    }

    fn reader_mut(&mut self, id: u32) -> Option<&mut Reader> {
        if let Some(k) = self.current(id) {
            return self.running.get_mut(&k).and_then(|s| s.reader.as_mut());
        }
        self.local.get_mut(&id).and_then(|l| l.reader.as_mut())
    }

    /// Runs an admitted call's handler, as `served.rs` does.
    fn serve(&mut self, call: Admitted<CallKind, u32>) {
        let id = call.open.id;
        assert!(!self.closed, "a call admitted after the end");
        assert!(
            !self.draining,
            "call {id} admitted after this side's goaway"
        );
        assert!(self.served.count() <= self.served.max());
        if call.open.oneway {
            assert_eq!(call.route, CallKind::OneWay);
            self.one_way_running
                .push(Charge::new(&self.budget, call.open.body.len()));
            return;
        }
        assert!(
            self.current(id).is_none(),
            "call {id} admitted while it runs"
        );
        self.fates.admitted += 1;
        self.highest_admitted = self.highest_admitted.max(id);
        let kind = call.route;
        let single = matches!(
            kind,
            CallKind::Unary | CallKind::OneWay | CallKind::ServerStream
        );
        let token = CancellationToken::new();
        let mut entry = Entry {
            cancel: Some(token.clone()),
            ..Entry::default()
        };
        let mut reader = None;
        if matches!(kind, CallKind::ClientStream | CallKind::Bidi) {
            let (tx, rx) = mpsc::unbounded_channel();
            let window = Arc::new(RecvWindow::new(
                self.config.window,
                self.config.max_frame,
                self.budget.clone(),
            ));
            let first = call.open.body.len();
            if first > 0 {
                window.receive(first);
                let _ = tx.send(InItem::Data(call.open.body.clone()));
            }
            entry.inbound = Some(InboundTx::new(tx, window.clone()));
            reader = Some(Reader {
                rx,
                window,
                unreported: 0,
                received: first as u64,
                credited: 0,
                ended: false,
            });
        }
        let credit = matches!(kind, CallKind::ServerStream | CallKind::Bidi)
            .then(|| Arc::new(SendCredit::new(self.config.window)));
        entry.credit = credit.clone();
        let charged = if single { call.open.body.len() } else { 0 };
        let Ok(attached) = self.core.attach(id, entry) else {
            self.fates.ended_with_connection += 1;
            self.served.end();
            return;
        };
        self.started += 1;
        self.running.insert(
            self.started,
            Served {
                call: attached,
                token,
                _charge: Charge::new(&self.budget, charged),
                reader,
                credit,
            },
        );
    }

    /// A handler ends: its call is answered, unless it already ended (the
    /// peer cancelled it, or the connection ended). `pick` chooses which; a
    /// one-way handler when there is one and `pick` is odd.
    pub fn handler_done(&mut self, pick: u16) {
        if pick % 2 == 1 && !self.one_way_running.is_empty() {
            let at = usize::from(pick >> 1) % self.one_way_running.len();
            self.one_way_running.swap_remove(at);
            self.served.end();
            self.settle();
            return;
        }
        let Some(key) = nth_key(&self.running, pick >> 1) else {
            return;
        };
        let Some(call) = self.running.remove(&key) else {
            return;
        };
        let id = call.call.id();
        match self.core.finish_served(call.call) {
            Some(entry) => {
                assert!(!self.closed, "call {id} still open after the end");
                if let Some(c) = &entry.credit {
                    c.close();
                }
                // The answer is queued, then the call stops counting.
                self.fates.answered += 1;
            }
            None if self.closed => self.fates.ended_with_connection += 1,
            None => {
                // Only the peer's cancel ends a call under its handler.
                assert!(
                    call.token.is_cancelled(),
                    "call {id} vanished from the table"
                );
                self.fates.cancelled += 1;
            }
        }
        self.served.end();
        drop(call);
        self.settle();
    }

    /// A handler or caller sends a stream message of `len` bytes on the
    /// stream `pick` chooses, if its credit allows (as `Outbound::try_send`).
    pub fn send(&mut self, pick: u16, len: u16) {
        let len = usize::from(len) % (self.config.max_frame as usize + 1);
        let credits: Vec<Arc<SendCredit>> = self
            .running
            .values()
            .filter_map(|s| s.credit.clone())
            .chain(self.local.values().filter_map(|l| l.credit.clone()))
            .collect();
        if credits.is_empty() {
            return;
        }
        let credit = &credits[usize::from(pick) % credits.len()];
        if let Ok(true) = credit.try_take(len) {
            assert!(
                credit.available() >= -i64::from(self.config.max_frame),
                "sent more than the peer's window allows"
            );
        }
    }

    /// The application reads what arrived on the stream `pick` chooses,
    /// returning credit in half-window steps (as `Inbound` does).
    pub fn read(&mut self, pick: u16) {
        let half = self.config.window / 2;
        let ids: Vec<u32> = self
            .running
            .values()
            .filter(|s| s.reader.is_some() && !s.token.is_cancelled())
            .map(|s| s.call.id())
            .chain(
                self.local
                    .iter()
                    .filter(|(_, l)| l.reader.is_some())
                    .map(|(id, _)| *id),
            )
            .collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[usize::from(pick) % ids.len()];
        let mut terminal = 0;
        if let Some(r) = self.reader_mut(id) {
            // As `Inbound`: nothing is read after the stream's end.
            while let (false, Ok(item)) = (r.ended, r.rx.try_recv()) {
                match item {
                    InItem::Data(b) => {
                        r.unreported = r.unreported.saturating_add(b.len() as u32);
                        if r.unreported >= half {
                            let grant = std::mem::take(&mut r.unreported);
                            r.window.release(grant);
                            r.credited += u64::from(grant);
                        }
                    }
                    InItem::End | InItem::Failed(_) => {
                        r.ended = true;
                        terminal += 1;
                    }
                }
            }
        }
        if let Some(l) = self.local.get_mut(&id) {
            l.outcomes += terminal;
        }
        self.settle();
    }

    /// This side opens a call of the kind `kind` picks, with a deadline
    /// `timeout_ms` ahead (0: none).
    pub fn open(&mut self, kind: u8, timeout_ms: u16) {
        let kind = [
            CallKind::Unary,
            CallKind::ServerStream,
            CallKind::ClientStream,
            CallKind::Bidi,
        ][usize::from(kind) % 4];
        let id = self.next_local;
        let mut entry = Entry::default();
        let mut local = Local {
            reply: None,
            reader: None,
            credit: None,
            outcomes: 0,
        };
        if matches!(kind, CallKind::Unary | CallKind::ClientStream) {
            let (tx, rx) = super::reply::channel();
            entry.reply = Some(tx);
            local.reply = Some(rx);
        }
        if matches!(kind, CallKind::ServerStream | CallKind::Bidi) {
            let (tx, rx) = mpsc::unbounded_channel();
            let window = Arc::new(RecvWindow::new(
                self.config.window,
                self.config.max_frame,
                self.budget.clone(),
            ));
            entry.inbound = Some(InboundTx::new(tx, window.clone()));
            local.reader = Some(Reader {
                rx,
                window,
                unreported: 0,
                received: 0,
                credited: 0,
                ended: false,
            });
        }
        if matches!(kind, CallKind::ClientStream | CallKind::Bidi) {
            let credit = Arc::new(SendCredit::new(self.config.window));
            entry.credit = Some(credit.clone());
            local.credit = Some(credit);
        }
        if timeout_ms > 0 {
            entry.deadline = Some(self.now + Duration::from_millis(timeout_ms.into()));
        }
        match self.core.open_local(id, entry) {
            Ok(open) => {
                assert!(!self.draining && !self.peer_gone_away && !self.closed);
                assert_eq!(open, self.core.calls_in_flight());
                self.next_local = self.next_local.wrapping_add(2);
                self.local.insert(id, local);
            }
            Err(_) => assert!(
                self.draining || self.peer_gone_away || self.closed,
                "a call refused while the connection opens calls"
            ),
        }
    }

    /// This side gives up on a call it opened (its handle dropped): a
    /// cancel goes out and the call fails.
    pub fn give_up(&mut self, pick: u16) {
        let Some(id) = nth_key(&self.local, pick) else {
            return;
        };
        if let Some(entry) = self.core.take(id) {
            entry.fail(Failure::System {
                code: SystemCode::Cancelled,
                message: String::new(),
            });
        }
        self.settle();
    }

    /// The peer opens session `id` (kept if the core allows it), or this
    /// side closes it.
    pub fn session(&mut self, id: u8, open: bool) {
        let id = u32::from(id);
        if open {
            if self.core.may_open_session(id).is_ok() {
                assert!(!self.side.is_local(id));
                let _ = self.core.add_session(id, id);
            }
        } else {
            self.core.remove_session(id);
        }
    }

    /// Time passes: deadlines expire, the keepalive checks.
    pub fn advance(&mut self, ms: u16) {
        self.now += Duration::from_millis(ms.into());
        let mut expired = Vec::new();
        let next = self.core.expire(self.now, &mut expired);
        if let Some(next) = next {
            assert!(next > self.now, "an expired deadline left in the table");
        }
        for (_, entry) in expired {
            entry.fail(Failure::System {
                code: SystemCode::DeadlineExceeded,
                message: String::new(),
            });
        }
        if !self.closed {
            let held_back = self.held.is_some() || self.budget.is_full(0);
            let silent = self.now.saturating_duration_since(self.last_heard);
            if let Beat::Lost(after) = self.keepalive.check(silent, held_back) {
                assert!(
                    !held_back && after >= Duration::from_millis(self.config.keepalive_ms.1.into())
                );
                self.shut();
            }
        }
        self.settle();
    }

    /// This side closes gracefully: its goaway goes out.
    pub fn close(&mut self) {
        match self.core.drain() {
            Some(last) => {
                assert!(!self.draining && !self.closed);
                assert_eq!(last, self.highest_admitted, "the goaway's last id");
                self.draining = true;
            }
            None => assert!(self.draining || self.closed),
        }
    }

    /// The peer's stream ends.
    pub fn end_of_stream(&mut self) {
        if !self.closed {
            let _ = self.core.end_of_stream();
            self.shut();
        }
    }

    fn shut(&mut self) {
        let down = self.core.shut();
        self.closed = true;
        self.held = None;
        for (entry, _) in down.calls {
            entry.fail(Failure::Lost("closed".into()));
        }
    }

    /// After a step: a held message goes in once there is room; outcomes
    /// that arrived are counted; the peer's goaway is noted.
    fn settle(&mut self) {
        if self.held.is_some() && !self.served.at_limit() && !self.closed {
            if let Some(frame) = self.held.take() {
                self.take_in(frame);
            }
        }
        for (id, l) in &mut self.local {
            if let Some(rx) = &mut l.reply {
                match rx.try_recv() {
                    Ok(_) => {
                        l.outcomes += 1;
                        l.reply = None;
                    }
                    Err(super::reply::TryRecvError::Closed) => {
                        panic!("call {id} was dropped without an outcome")
                    }
                    Err(super::reply::TryRecvError::Empty) => {}
                }
            }
        }
    }

    /// The rules no step may break, checked after every one.
    pub fn check(&self) {
        let slack = self.config.max_frame as usize + 2 * 1024;
        let held = self.budget.held();
        assert!(
            held <= self.config.budget + slack,
            "the budget holds {held} bytes, over its limit {} by more than one frame (or it underflowed)",
            self.config.budget
        );
        assert!(
            held >= self.op_bytes,
            "the budget released definitions it holds for life"
        );
        assert_eq!(
            self.served.count() as usize,
            self.running.len() + self.one_way_running.len(),
            "the served count disagrees with the handlers running"
        );
        assert!(self.served.count() <= self.served.max());
        let readers = self
            .running
            .values()
            .filter_map(|s| s.reader.as_ref())
            .chain(self.local.values().filter_map(|l| l.reader.as_ref()));
        for r in readers {
            if !self.closed {
                assert!(
                    r.window.outstanding()
                        <= u64::from(self.config.window) + u64::from(self.config.max_frame),
                    "a stream holds more than its window and one frame"
                );
            }
            assert!(
                r.credited <= r.received,
                "credit returned for bytes never received: the peer's credit exceeds its window"
            );
        }
        for (id, l) in &self.local {
            assert!(l.outcomes <= 1, "call {id} ended more than once");
        }
        if self.closed {
            assert_eq!(self.core.calls_in_flight(), 0);
        }
    }

    /// Ends the sequence: the connection ends (if it has not), every handler
    /// stops, and every call must have ended exactly once — each admitted
    /// call of the peer's answered, cancelled by the peer or ended with the
    /// connection; each of this side's calls with one outcome — and the
    /// budget must hold nothing but the interned names.
    pub fn finish(mut self) -> Fates {
        if !self.closed {
            self.shut();
        }
        while !self.running.is_empty() {
            self.handler_done(0);
        }
        while !self.one_way_running.is_empty() {
            self.handler_done(1);
        }
        for id in self.local.keys().copied().collect::<Vec<_>>() {
            self.read_all(id);
        }
        self.settle();
        assert_eq!(self.served.count(), 0);
        for (id, l) in &self.local {
            assert_eq!(l.outcomes, 1, "call {id} did not end exactly once");
        }
        let f = self.fates;
        assert_eq!(
            f.admitted,
            f.answered + f.cancelled + f.ended_with_connection,
            "an admitted call neither answered, cancelled nor ended: {f:?}"
        );
        let op_bytes = self.op_bytes;
        let budget = self.budget.clone();
        drop(self);
        assert_eq!(
            budget.held(),
            op_bytes,
            "bytes still charged after everything ended"
        );
        f
    }

    fn read_all(&mut self, id: u32) {
        let Some(l) = self.local.get_mut(&id) else {
            return;
        };
        let Some(r) = l.reader.as_mut() else {
            return;
        };
        let mut terminal = 0;
        loop {
            match r.rx.try_recv() {
                Ok(InItem::End | InItem::Failed(_)) => {
                    if !r.ended {
                        r.ended = true;
                        terminal += 1;
                    }
                }
                Ok(InItem::Data(_)) => {}
                Err(_) => break,
            }
        }
        assert!(
            r.ended,
            "stream call {id} ended without an end or a failure"
        );
        l.outcomes += terminal;
    }

    /// Peer frames the reader did not read because it held the peer back.
    pub fn held_back_frames(&self) -> u64 {
        self.held_back_frames
    }

    /// Operations the peer defined.
    pub fn operations_defined(&self) -> usize {
        self.peer_ops.len()
    }
}

fn nth_key<K: Copy + Ord, V>(map: &BTreeMap<K, V>, pick: u16) -> Option<K> {
    if map.is_empty() {
        return None;
    }
    map.keys().nth(usize::from(pick) % map.len()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// One random step, as the fuzz target's would be.
    fn step(h: &mut Harness, rng: &mut StdRng) {
        match rng.random_range(0..12u8) {
            0..=2 => h.peer_open(
                rng.random(),
                rng.random(),
                rng.random(),
                rng.random(),
                rng.random(),
            ),
            3..=5 => h.peer_frame(rng.random(), rng.random(), rng.random_range(0..5000)),
            6 => h.handler_done(rng.random()),
            7 => h.send(rng.random(), rng.random()),
            8 => h.read(rng.random()),
            9 => h.open(
                rng.random(),
                rng.random_range(0..3) * rng.random_range(0..500),
            ),
            10 => match rng.random_range(0..6u8) {
                0 => h.give_up(rng.random()),
                1 => h.session(rng.random(), rng.random()),
                2 if rng.random_range(0..8u8) == 0 => h.close(),
                3 if rng.random_range(0..16u8) == 0 => h.end_of_stream(),
                _ => h.advance(rng.random_range(0..400)),
            },
            _ => h.advance(rng.random_range(0..100)),
        }
    }

    #[test]
    fn random_sequences_of_frames_and_events_keep_every_rule() {
        let mut totals = Fates::default();
        let (mut held_back, mut defined) = (0, 0);
        for seed in 0..1000u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut h = Harness::new(Config::from_bytes(rng.random()));
            for _ in 0..rng.random_range(1..300) {
                step(&mut h, &mut rng);
                h.check();
            }
            held_back += h.held_back_frames();
            defined += h.operations_defined();
            let f = h.finish();
            totals.admitted += f.admitted;
            totals.answered += f.answered;
            totals.cancelled += f.cancelled;
            totals.ended_with_connection += f.ended_with_connection;
        }
        // The sequences reach every ending, not only the easy one.
        assert!(totals.answered > 0 && totals.cancelled > 0, "{totals:?}");
        assert!(totals.ended_with_connection > 0, "{totals:?}");
        assert!(
            held_back > 0,
            "no sequence filled the budget or the call limit"
        );
        assert!(defined > 0);
    }
}
