//! The connection core: the protocol state of one connection and every rule
//! of PROTOCOL.md §4–§13 that decides what a frame means, with no I/O.
//!
//! [`Core`] is fed the frames the reader decoded ([`Core::on_frame`]) and this
//! side's own events — a call opened or given up, a served call ended, a
//! graceful close, the end of the stream, the current instant for deadlines —
//! and answers with what to do: an [`Action`] (send a pong, serve a call,
//! refuse it with a code, hand an outcome to the call waiting for it, hold
//! the reader back, close for a violation). It never touches a socket, a
//! task or a clock. The reader (`reader.rs`), the served-call code
//! (`served.rs`) and the connection's handle (`mod.rs`, `calls.rs`,
//! `stream.rs`) are its shells: they lock it, ask, let go of the lock, and
//! do what it said.
//!
//! It lives behind the connection's one state lock, taken once per frame as
//! the call table's lock was, and that lock is never held while a frame is
//! queued for the writer (the writer's lock may take it, never the other
//! way round). What other tasks give back into without that lock — memory
//! freed ([`Budget`]), served calls ended ([`ServedCalls`]), stream credit
//! ([`RecvWindow`], [`SendCredit`]) — are lock-free accounting types of this
//! module that the core charges and decides with. The keepalive rule
//! ([`Keepalive`]) and the stall rule ([`StallWatch`]) are small machines of
//! their own, fed durations and instants by the keepalive (in the writer task) and the
//! reader.
//!
//! The unit tests (`tests.rs`) drive it frame by frame on explicit instants;
//! the fuzz target `frame_sequence` drives it with arbitrary sequences of
//! frames, local events and time steps (see `fuzzing.rs`).

mod budget;
mod flow;
mod keepalive;
mod lifecycle;
pub(crate) mod reply;
mod rules;
mod table;

#[cfg(any(test, fuzzing))]
pub mod fuzzing;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

pub(crate) use self::budget::{Budget, CallSlots, Charge, ServedCalls, Slot};
pub(crate) use self::flow::{RecvWindow, SendCredit};
pub(crate) use self::keepalive::{Beat, Keepalive};
pub(crate) use self::lifecycle::Lifecycle;
pub(crate) use self::rules::{Hold, OpTable, StallWatch};
pub(crate) use self::table::{CallTable, Entry, Failure, InItem, InboundTx};
use super::CloseReason;
use crate::descriptor::CallKind;
use crate::error::Reject;
use crate::wire::frame::{CallOpen, Frame};
use crate::wire::SystemCode;

/// Most sessions a peer may have open on one connection (§12); a further
/// open is refused with `ResourceExhausted`.
pub(crate) const MAX_SESSIONS: usize = 1024;

/// What an operation name resolves to, as far as the core cares: the kind
/// of its calls. (The runtime's `Route`; a bare [`CallKind`] in tests.)
pub(crate) trait Operation: Clone {
    /// The kind of call the operation takes.
    fn kind(&self) -> CallKind;
    /// How messages name that kind (`unary`, `server-stream`, …).
    fn kind_name(&self) -> &'static str;
}

/// In tests and the fuzz harness an operation is its bare kind, named as
/// descriptors name it.
#[cfg(any(test, fuzzing))]
impl Operation for CallKind {
    fn kind(&self) -> CallKind {
        *self
    }

    fn kind_name(&self) -> &'static str {
        self.as_str()
    }
}

/// Which side opened a call or session, from its id (§6): odd ids are the
/// dialer's, even ids the listener's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Side {
    dialer: bool,
}

impl Side {
    pub(crate) fn new(dialer: bool) -> Side {
        Side { dialer }
    }

    /// Whether this side dialed the connection.
    pub(crate) fn is_dialer(self) -> bool {
        self.dialer
    }

    /// Whether `id` was opened by this side.
    pub(crate) fn is_local(self, id: u32) -> bool {
        (id % 2 == 1) == self.dialer
    }

    /// The first id this side opens calls and sessions with.
    pub(crate) fn first_id(self) -> u32 {
        if self.dialer {
            1
        } else {
            2
        }
    }
}

/// A call of the peer's that passed every check and is counted as served:
/// the shell runs its handler.
#[derive(Debug)]
pub(crate) struct Admitted<R, S> {
    /// The opening frame.
    pub(crate) open: CallOpen,
    /// The operation's name.
    pub(crate) op: Arc<str>,
    /// What it resolved to.
    pub(crate) route: R,
    /// The session the call runs in, if it names one.
    pub(crate) session: Option<S>,
}

/// The entry of a served call, as its handler knows it: the id alone is not
/// enough, because once the peer cancelled the call it may open the id again
/// while the first handler is still stopping, and that handler's end must
/// not take the second call's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attached {
    id: u32,
    serial: u64,
}

impl Attached {
    /// The call's id.
    pub(crate) fn id(self) -> u32 {
        self.id
    }
}

/// A call of the peer's refused before anything ran (§7.7): answer it with
/// a `SYSTEM` reject.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) id: u32,
    pub(crate) op: Arc<str>,
    pub(crate) code: SystemCode,
    pub(crate) message: Cow<'static, str>,
}

/// Why a one-way message was dropped (§7.2: nothing goes back).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// This side is draining.
    Closing,
    /// No handler for the operation.
    NoSuchOperation,
    /// The operation takes calls of this kind, not one-way messages.
    NotOneWay(&'static str),
    /// The message names a session that is not open.
    SessionClosed(u32),
}

/// What the shell does for a frame.
#[derive(Debug)]
pub(crate) enum Action<R, S> {
    /// Nothing: the frame was taken in, or is ignored as §4 says.
    Nothing,
    /// Answer the peer's ping with a pong carrying this value.
    Pong(u64),
    /// Serve the peer's call (or one-way message).
    Serve(Admitted<R, S>),
    /// Refuse the peer's call.
    Refuse(Refusal),
    /// Drop the peer's one-way message to `op`.
    Drop { op: Arc<str>, why: Dropped },
    /// The call ended: hand the outcome to whoever waits on it (an ack's
    /// reply, or a failure).
    Finish(Entry, Result<Bytes, Failure>),
    /// A one-way message at the call limit (§7.8): stop reading until a
    /// served call ends, then feed this frame again.
    Hold(Frame),
    /// The peer is going away with an error code; its reason, to log.
    PeerGoingAway { code: u32, reason: String },
    /// The peer broke the protocol: close the connection with a
    /// `Protocol` goaway carrying this description (§11.3).
    Violation(String),
}

/// What ending the connection leaves to fail.
#[derive(Debug)]
pub(crate) struct Shutdown<S> {
    /// Every call still open, and whether the peer's goaway says it was never
    /// taken (§11.4: fail it as `GoingAway`, not as lost).
    pub(crate) calls: Vec<(Entry, bool)>,
    /// Every session still open.
    pub(crate) sessions: Vec<S>,
}

/// Why the peer may not open a session (§12).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionRefusal {
    /// The id has this side's parity, or is open already.
    Unavailable(u32),
    /// The peer has [`MAX_SESSIONS`] open.
    TooMany,
}

impl SessionRefusal {
    /// The reject the open call answers with.
    pub(crate) fn reject(&self) -> Reject {
        match self {
            SessionRefusal::Unavailable(id) => {
                Reject::invalid_payload(format!("session id {id} is not available"))
            }
            SessionRefusal::TooMany => Reject::overloaded(format!(
                "{MAX_SESSIONS} sessions already open on this connection"
            )),
        }
    }
}

/// The protocol state of one connection; see the module documentation.
pub(crate) struct Core<R, S> {
    side: Side,
    budget: Arc<Budget>,
    served: Arc<ServedCalls>,
    /// Every call open on the connection, both directions.
    calls: CallTable,
    /// The operations the peer defined (§5).
    ops: OpTable<R>,
    /// The sessions open on the connection, both directions (§12).
    sessions: HashMap<u32, S>,
    life: Lifecycle,
    /// The serial of the last served call's entry.
    attached: u64,
}

impl<R: Operation, S: Clone> Core<R, S> {
    /// A fresh connection's core: nothing open, nothing defined.
    pub(crate) fn new(side: Side, budget: Arc<Budget>, served: Arc<ServedCalls>) -> Self {
        Core {
            side,
            budget,
            served,
            calls: CallTable::default(),
            ops: OpTable::default(),
            sessions: HashMap::new(),
            life: Lifecycle::default(),
            attached: 0,
        }
    }

    /// Takes in one frame from the peer. `resolve` looks up an operation
    /// name the peer defines (once per definition), returning the shared
    /// name and what it resolves to.
    ///
    /// Stream data is delivered to its call's buffer right here (a channel
    /// send); everything else that reaches beyond the core is in the answer.
    pub(crate) fn on_frame(
        &mut self,
        frame: Frame,
        resolve: impl FnOnce(&str) -> (Arc<str>, Option<R>),
    ) -> Action<R, S> {
        match frame {
            // A one-way message cannot be refused, so at the call limit it
            // waits, and the peer with it (before its name is defined, so
            // feeding it again defines it once).
            Frame::CallOpen(open) if open.oneway && self.served.at_limit() => {
                Action::Hold(Frame::CallOpen(open))
            }
            Frame::CallOpen(open) => self.call_open(open, resolve),
            Frame::Data { id, body } => self.data(id, body),
            Frame::End { id } => {
                // Once is enough; a repeated End is ignored like one on an
                // unknown id.
                if let Some(Some(inbound)) = self.calls.get_mut(&id).map(|e| e.inbound.as_mut()) {
                    if !inbound.ended {
                        inbound.ended = true;
                        let _ = inbound.tx.send(InItem::End);
                    }
                }
                Action::Nothing
            }
            Frame::Ack { id, body } => {
                if !self.side.is_local(id) {
                    return Action::Violation(format!(
                        "ack for call {id}, which this side did not open"
                    ));
                }
                self.finish(id, Ok(body))
            }
            Frame::Reject {
                id,
                system,
                code,
                message,
                details,
            } => {
                if !self.side.is_local(id) {
                    return Action::Violation(format!(
                        "reject for call {id}, which this side did not open"
                    ));
                }
                let failure = if system {
                    Failure::System {
                        code: SystemCode::from_u32(code),
                        message,
                    }
                } else {
                    Failure::Rejected(Reject::new(code, message).with_details(details))
                };
                self.finish(id, Err(failure))
            }
            Frame::Cancel { id } => self.finish(
                id,
                Err(Failure::System {
                    code: SystemCode::Cancelled,
                    message: "cancelled by the peer".into(),
                }),
            ),
            Frame::Credit { id, bytes } => {
                if let Some(Some(credit)) = self.calls.get(&id).map(|e| e.credit.as_ref()) {
                    credit.grant(bytes);
                }
                Action::Nothing
            }
            Frame::Ping { payload } => Action::Pong(payload),
            Frame::Pong { .. } => Action::Nothing,
            Frame::GoAway {
                last_id,
                code,
                reason,
            } => match self.life.peer_goaway(last_id, code, reason) {
                Some(reason) => Action::PeerGoingAway { code, reason },
                None => Action::Nothing,
            },
        }
    }

    /// A call ends by a frame: whoever removes its entry delivers the
    /// outcome; an id no longer open (the call ended here first) is ignored.
    fn finish(&mut self, id: u32, outcome: Result<Bytes, Failure>) -> Action<R, S> {
        match self.remove_call(id) {
            Some(entry) => Action::Finish(entry, outcome),
            None => Action::Nothing,
        }
    }

    fn data(&mut self, id: u32, body: Bytes) -> Action<R, S> {
        match self.calls.get(&id).map(|e| e.inbound.as_ref()) {
            Some(Some(inbound)) if inbound.ended => {
                Action::Violation(format!("data on stream {id} after its end"))
            }
            Some(Some(inbound)) => {
                let len = body.len();
                if !inbound.window.receive(len) {
                    return Action::Violation(format!(
                        "stream {id} sent beyond its flow-control window"
                    ));
                }
                if inbound.tx.send(InItem::Data(body)).is_err() {
                    // Nobody reads this stream any more: the bytes are
                    // dropped here, not held.
                    inbound.window.release(len as u32);
                }
                Action::Nothing
            }
            Some(None) => Action::Violation(format!("data on call {id}, which takes no stream")),
            // The call already ended on this side (cancel or deadline); the
            // peer had not heard yet.
            None => Action::Nothing,
        }
    }

    fn call_open(
        &mut self,
        open: CallOpen,
        resolve: impl FnOnce(&str) -> (Arc<str>, Option<R>),
    ) -> Action<R, S> {
        let index = open.op.index as usize;
        if let Some(name) = &open.op.name {
            match self.ops.define(index, name, resolve) {
                // Held for the connection's life, so never released.
                Ok(held) => self.budget.charge(held),
                Err(violation) => return Action::Violation(violation),
            }
        }
        let (op, route) = match self.ops.get(index) {
            Ok(found) => found,
            Err(violation) => return Action::Violation(violation),
        };
        if open.oneway {
            self.one_way(open, op, route)
        } else {
            self.admit(open, op, route)
        }
    }

    /// §7.2: a one-way message is served or dropped, never answered.
    fn one_way(&mut self, open: CallOpen, op: Arc<str>, route: Option<R>) -> Action<R, S> {
        if open.id != 0 {
            return Action::Violation(format!(
                "one-way call to `{op}` carries call id {}, not 0",
                open.id
            ));
        }
        let why = match route {
            _ if !self.life.serves_new_calls() => Dropped::Closing,
            None => Dropped::NoSuchOperation,
            Some(route) if route.kind() != CallKind::OneWay => {
                Dropped::NotOneWay(route.kind_name())
            }
            Some(route) => {
                let session = match open.session {
                    None => None,
                    Some(sid) => match self.sessions.get(&sid) {
                        Some(s) => Some(s.clone()),
                        None => {
                            return Action::Drop {
                                op,
                                why: Dropped::SessionClosed(sid),
                            }
                        }
                    },
                };
                // Counted like any served call; the reader waited below the
                // limit before it fed this frame.
                self.served.admit();
                return Action::Serve(Admitted {
                    open,
                    op,
                    route,
                    session,
                });
            }
        };
        Action::Drop { op, why }
    }

    /// §6 and §7.7, in their order: the checks a call passes before its
    /// handler runs, and its admission.
    fn admit(&mut self, open: CallOpen, op: Arc<str>, route: Option<R>) -> Action<R, S> {
        let id = open.id;
        if id == 0 || self.side.is_local(id) {
            return Action::Violation(format!(
                "call to `{op}` uses id {id}, which belongs to this side"
            ));
        }
        // An answer on that id would be taken for the other call's.
        if self.calls.contains_key(&id) {
            return Action::Violation(format!("call id {id} opened twice"));
        }
        let refuse = |code, message: Cow<'static, str>| {
            Action::Refuse(Refusal {
                id,
                op: op.clone(),
                code,
                message,
            })
        };
        if !self.life.serves_new_calls() {
            return refuse(
                SystemCode::GoingAway,
                "connection is closing; no new calls".into(),
            );
        }
        let Some(route) = route else {
            return refuse(
                SystemCode::NoSuchOperation,
                format!("no handler for `{op}`").into(),
            );
        };
        let single = matches!(
            route.kind(),
            CallKind::Unary | CallKind::OneWay | CallKind::ServerStream
        );
        if single != open.end {
            let called = if open.end {
                "a single request"
            } else {
                "a request stream"
            };
            let message = format!(
                "`{op}` is a {} operation but was called as {called}",
                route.kind_name()
            );
            return refuse(SystemCode::Protocol, message.into());
        }
        let session = match open.session {
            None => None,
            Some(sid) => match self.sessions.get(&sid) {
                Some(s) => Some(s.clone()),
                None => return refuse(SystemCode::SessionClosed, format!("session {sid}").into()),
            },
        };
        if !self.served.try_admit() {
            let max = self.served.max();
            return refuse(
                SystemCode::ResourceExhausted,
                format!(
                    "{max} calls already served at once for this peer, the limit it was told in the handshake"
                )
                .into(),
            );
        }
        self.life.admitted(id);
        Action::Serve(Admitted {
            open,
            op,
            route,
            session,
        })
    }

    /// Registers the entry of an admitted call that needs one (a stream
    /// call, or a unary call whose handler has to wait), so its frames and
    /// its cancel reach it; its handler ends it with [`finish_served`](Self::finish_served).
    /// `Err` gives the entry back if the connection ended meanwhile: the
    /// call is not run.
    pub(crate) fn attach(&mut self, id: u32, mut entry: Entry) -> Result<Attached, Entry> {
        if self.life.is_closed() {
            return Err(entry);
        }
        self.attached += 1;
        entry.serial = self.attached;
        self.calls.insert(id, entry);
        Ok(Attached {
            id,
            serial: self.attached,
        })
    }

    /// A served call's handler ended: its entry, to answer the call, unless
    /// the call already ended (the peer cancelled it, or the connection
    /// ended) — then nothing is sent.
    pub(crate) fn finish_served(&mut self, call: Attached) -> Option<Entry> {
        match self.calls.get(&call.id) {
            Some(entry) if entry.serial == call.serial => self.remove_call(call.id),
            _ => None,
        }
    }

    /// This side opens call `id`: registered, and the number of calls open
    /// returned, unless the connection no longer opens calls (this side or
    /// the peer is going away, or it ended); then the entry comes back.
    pub(crate) fn open_local(&mut self, id: u32, entry: Entry) -> Result<usize, Entry> {
        if !self.life.opens_calls() {
            return Err(entry);
        }
        self.calls.insert(id, entry);
        Ok(self.calls.len())
    }

    /// Removes call `id` because this side gave up on it (the call's
    /// handle, deadline or session ended it). `None` if it had already
    /// ended: whoever removed it delivered its outcome.
    pub(crate) fn take(&mut self, id: u32) -> Option<Entry> {
        self.remove_call(id)
    }

    /// Every way a call leaves the table while the connection lives: the
    /// last one out wakes a graceful close waiting for quiet.
    fn remove_call(&mut self, id: u32) -> Option<Entry> {
        let entry = self.calls.remove(&id);
        if entry.is_some() && self.calls.is_empty() {
            self.served.wake_quiet();
        }
        entry
    }

    /// The calls this side opened whose deadline is at or before `now`
    /// (§7.6, the caller's own timer), removed from the table into
    /// `expired`: each gets a cancel sent and fails with `DeadlineExceeded`.
    /// Returns the earliest deadline still ahead.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        expired: &mut Vec<(u32, Entry)>,
    ) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        for (id, entry) in &self.calls {
            match entry.deadline {
                Some(d) if d <= now => due.push(*id),
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
        for id in due {
            if let Some(entry) = self.remove_call(id) {
                expired.push((id, entry));
            }
        }
        next
    }

    /// This side closes gracefully (§11.1): `Some(last_id)` for the goaway
    /// if this switched it to draining, `None` if it was already.
    pub(crate) fn drain(&mut self) -> Option<u32> {
        self.served.set_closing();
        self.life.drain()
    }

    /// The connection ends: nothing more is admitted or opened; every call
    /// and session still open is handed back to be failed and ended.
    pub(crate) fn shut(&mut self) -> Shutdown<S> {
        self.life.close();
        let calls = self
            .calls
            .drain()
            .map(|(id, entry)| {
                let unprocessed = self.side.is_local(id) && self.life.unprocessed(id);
                (entry, unprocessed)
            })
            .collect();
        let sessions = self.sessions.drain().map(|(_, s)| s).collect();
        Shutdown { calls, sessions }
    }

    /// What the end of the peer's stream makes the close reason.
    pub(crate) fn end_of_stream(&self) -> CloseReason {
        self.life.end_of_stream()
    }

    /// The `last_id` for a goaway this side sends now.
    pub(crate) fn last_admitted(&self) -> u32 {
        self.life.last_admitted()
    }

    /// Whether this side may open calls.
    pub(crate) fn opens_calls(&self) -> bool {
        self.life.opens_calls()
    }

    /// Calls open right now, both directions.
    pub(crate) fn calls_in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Nothing open and nothing being served: a graceful close may end.
    pub(crate) fn idle(&self) -> bool {
        self.calls.is_empty() && self.served.count() == 0
    }

    /// Every session open right now.
    pub(crate) fn sessions(&self) -> Vec<S> {
        self.sessions.values().cloned().collect()
    }

    /// Whether the peer may open session `id` (§12): an id of its own
    /// parity that is not open, within [`MAX_SESSIONS`] of its own.
    pub(crate) fn may_open_session(&self, id: u32) -> Result<(), SessionRefusal> {
        if self.side.is_local(id) || self.sessions.contains_key(&id) {
            return Err(SessionRefusal::Unavailable(id));
        }
        let theirs = self
            .sessions
            .keys()
            .filter(|&&sid| !self.side.is_local(sid))
            .count();
        if theirs >= MAX_SESSIONS {
            return Err(SessionRefusal::TooMany);
        }
        Ok(())
    }

    /// Registers session `id`, unless the connection has ended (then the
    /// session comes back).
    pub(crate) fn add_session(&mut self, id: u32, session: S) -> Result<(), S> {
        if self.life.is_closed() {
            return Err(session);
        }
        self.sessions.insert(id, session);
        Ok(())
    }

    /// How many operations the peer has defined (the harness mirrors the
    /// peer's send table with it).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn operations_defined(&self) -> usize {
        self.ops.len()
    }

    /// Removes session `id`; `None` if it was not open.
    pub(crate) fn remove_session(&mut self, id: u32) -> Option<S> {
        self.sessions.remove(&id)
    }
}
