//! The reader task: decodes frames from the transport and routes each one —
//! call opens to handlers, replies and stream messages to the call waiting
//! for them, pings to an answering pong. It never waits on the writer, so a
//! peer that does not read cannot stall it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::rules::{self, Hold, StallWatch};
use super::served::Violation;
use super::table::{Failure, InItem};
use super::{CloseReason, Shared};
use crate::error::Reject;
use crate::router::Route;
use crate::transport::ReadHalf;
use crate::wire::frame::{encode_goaway, encode_ping};
use crate::wire::{self, Frame, Kind, SystemCode};

/// Read buffer kept free before each read, at first: small, so an idle
/// connection holds little.
const READ_RESERVE_MIN: usize = 2 * 1024;
/// ... and at most, once reads keep filling it: bulk streams then take a
/// few 64 KiB messages per read instead of a message in two reads.
const READ_RESERVE_MAX: usize = 512 * 1024;

/// Operations the peer has defined, by index, with the handler resolved once.
type OpTable = rules::OpTable<Route>;

pub(crate) async fn run(shared: Arc<Shared>, mut rd: ReadHalf, mut buf: BytesMut) {
    let mut ops = OpTable::default();
    let max = shared.config.max_frame;
    let mut reserve = READ_RESERVE_MIN;
    shared.note_heard();
    loop {
        loop {
            match wire::decode(&mut buf, max) {
                Ok(Some(frame)) => {
                    shared.frames_received.fetch_add(1, Ordering::Relaxed);
                    // A one-way message cannot be refused, so at the call
                    // limit it waits here, and the peer with it.
                    if matches!(&frame, Frame::CallOpen(o) if o.oneway) && at_call_limit(&shared) {
                        if let Err(stall) = hold_back(&shared, |s| !at_call_limit(s)).await {
                            cut_off(&shared, stall);
                            return;
                        }
                    }
                    if let Err(Violation(m)) = dispatch(&shared, &mut ops, frame) {
                        protocol_close(&shared, m);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    protocol_close(&shared, e.to_string());
                    return;
                }
            }
        }
        // What this batch answered on the spot leaves now, before the next
        // read (which on a drained socket is a syscall that finds nothing).
        shared.out.write_through();
        // At the budget, stop reading: the peer is held back by TCP until
        // handlers, stream readers or the writer free memory.
        if over_budget(&shared) {
            if let Err(stall) = hold_back(&shared, |s| !over_budget(s)).await {
                cut_off(&shared, stall);
                return;
            }
        }
        if shared.closed.is_cancelled() {
            return;
        }
        if buf.capacity() - buf.len() < reserve / 2 {
            buf.reserve(reserve);
        }
        let read = tokio::select! {
            biased;
            _ = shared.closed.cancelled() => return,
            r = rd.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => {
                let reason = if let Some(r) = shared.peer_goaway_error.get() {
                    r.clone()
                } else if shared.serving_new_calls() && !shared.peer_draining() {
                    CloseReason::PeerGone
                } else {
                    CloseReason::Remote
                };
                shared.shut(reason);
                return;
            }
            Ok(n) => {
                shared.note_heard();
                // A read that filled what was free says more is waiting:
                // read in bigger bites from now on. Small reads shrink the
                // bite again, and a drained buffer much larger than the bite
                // is given back, so a connection that once carried a bulk
                // stream does not keep its buffer while it idles.
                if n >= reserve / 2 {
                    reserve = (reserve * 2).min(READ_RESERVE_MAX);
                } else if n < reserve / 8 {
                    reserve = (reserve / 2).max(READ_RESERVE_MIN);
                }
                if n == buf.len() && buf.capacity() > 4 * reserve {
                    let mut fresh = BytesMut::with_capacity(reserve);
                    fresh.extend_from_slice(&buf);
                    buf = fresh;
                }
            }
            Err(e) => {
                shared.shut(CloseReason::Io(e.to_string()));
                return;
            }
        }
    }
}

fn over_budget(shared: &Shared) -> bool {
    shared.budget.is_full(shared.out.queued())
}

fn at_call_limit(shared: &Shared) -> bool {
    shared.serving.load(Ordering::Acquire) >= shared.config.max_calls
}

/// A peer that read nothing of what is queued for it for `after`.
struct Stall {
    queued: usize,
    after: Duration,
}

/// Stops reading until `room` holds. Gives up with a [`Stall`] when bytes
/// are queued for the peer and none of them has left for the stall timeout:
/// a peer that is held back but does not drain is cut off, one that drains
/// slowly never is, and neither is one held back only by this side's own
/// handlers or stream readers (nothing queued for it).
async fn hold_back(shared: &Shared, room: impl Fn(&Shared) -> bool) -> Result<(), Stall> {
    shared.set_held_back(true);
    shared.budget.set_waiting(true);
    let mut watch = StallWatch::new(
        shared.config.stall_timeout,
        shared.out.written(),
        Instant::now().into_std(),
    );
    let outcome = loop {
        // Registered before the checks, so a release or a drain in between
        // is not missed.
        let freed = shared.budget.freed();
        let drained = shared.out.drained();
        tokio::pin!(freed, drained);
        drained.as_mut().enable();
        if room(shared) || shared.closed.is_cancelled() {
            break Ok(());
        }
        let now = Instant::now().into_std();
        let wake = match watch.observe(now, shared.out.written(), shared.out.queued()) {
            Hold::Wait { until } => Instant::from_std(until),
            Hold::Stalled { queued, after } => break Err(Stall { queued, after }),
        };
        tokio::select! {
            biased;
            _ = shared.closed.cancelled() => {}
            () = &mut freed => {}
            () = &mut drained => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    };
    shared.budget.set_waiting(false);
    shared.set_held_back(false);
    // Not reading is not the peer's silence.
    shared.note_heard();
    outcome
}

/// Cuts off a peer that does not read: a goaway saying why (which it may
/// never read), then the connection ends and its queue is dropped.
fn cut_off(shared: &Shared, stall: Stall) {
    let message = format!(
        "read none of the {} bytes queued for it for {:?} while over this side's memory budget of {} bytes",
        stall.queued,
        stall.after,
        shared.budget.limit()
    );
    tracing::warn!(peer = %shared.peer.label(), "cutting off the peer: it {message}");
    let last = shared.highest_peer_id.load(Ordering::Acquire);
    let _ = shared.out.push(|o| {
        encode_goaway(
            &mut o.buf,
            last,
            SystemCode::ResourceExhausted as u32,
            &format!("cut off: {message}"),
        )
    });
    shared.shut(CloseReason::PeerNotReading {
        queued: stall.queued,
        after: stall.after,
    });
}

/// Tells the peer why (best effort) and closes the connection.
fn protocol_close(shared: &Shared, message: String) {
    tracing::warn!(peer = %shared.peer.label(), "closing connection: protocol error: {message}");
    let last = shared.highest_peer_id.load(Ordering::Acquire);
    let _ = shared
        .out
        .push(|o| encode_goaway(&mut o.buf, last, SystemCode::Protocol as u32, &message));
    shared.shut(CloseReason::Protocol(message));
}

fn dispatch(shared: &Arc<Shared>, ops: &mut OpTable, frame: Frame) -> Result<(), Violation> {
    match frame {
        Frame::CallOpen(open) => {
            let index = open.op.index as usize;
            if let Some(name) = &open.op.name {
                // A name the router knows is shared with it, not stored again.
                let held = ops
                    .define(index, name, |name| match shared.router.route_named(name) {
                        Some((known, route)) => (known, Some(route)),
                        None => (Arc::from(name), None),
                    })
                    .map_err(Violation)?;
                // Held for the connection's life, so never released.
                shared.budget.charge(held);
            }
            let (op, route) = ops.get(index).map_err(Violation)?;
            shared.serve(open, op, route)
        }
        Frame::Data { id, body } => {
            let table = shared.table();
            match table.get(&id).map(|e| e.inbound.as_ref()) {
                Some(Some(inbound)) => {
                    if !inbound.window.receive(body.len()) {
                        return Err(Violation(format!(
                            "stream {id} sent beyond its flow-control window"
                        )));
                    }
                    let len = body.len();
                    if inbound.tx.send(InItem::Data(body)).is_err() {
                        // Nobody reads this stream any more: the bytes are
                        // dropped here, not held.
                        inbound.window.release(len as u32);
                    }
                    Ok(())
                }
                Some(None) => Err(Violation(format!(
                    "data on call {id}, which takes no stream"
                ))),
                // The call already ended on this side (cancel or deadline); the
                // peer had not heard yet.
                None => Ok(()),
            }
        }
        Frame::End { id } => {
            if let Some(Some(inbound)) = shared.table().get(&id).map(|e| e.inbound.as_ref()) {
                let _ = inbound.tx.send(InItem::End);
            }
            Ok(())
        }
        Frame::Ack { id, body } => {
            if !shared.is_local_id(id) {
                return Err(Violation(format!(
                    "ack for call {id}, which this side did not open"
                )));
            }
            let entry = shared.table().remove(&id);
            if let Some(e) = entry {
                if let Some(c) = &e.credit {
                    c.close();
                }
                if let Some(i) = e.inbound {
                    let _ = i.tx.send(InItem::End);
                }
                if let Some(r) = e.reply {
                    let _ = r.send(Ok(body));
                }
            }
            Ok(())
        }
        Frame::Reject {
            id,
            system,
            code,
            message,
            details,
        } => {
            if !shared.is_local_id(id) {
                return Err(Violation(format!(
                    "reject for call {id}, which this side did not open"
                )));
            }
            let failure = if system {
                Failure::System {
                    code: SystemCode::from_u32(code),
                    message,
                }
            } else {
                Failure::Rejected(Reject::new(code, message).with_details(details))
            };
            let entry = shared.table().remove(&id);
            if let Some(e) = entry {
                e.fail(failure);
            }
            Ok(())
        }
        Frame::Cancel { id } => {
            let entry = shared.table().remove(&id);
            if let Some(e) = entry {
                e.fail(Failure::System {
                    code: SystemCode::Cancelled,
                    message: "cancelled by the peer".into(),
                });
            }
            Ok(())
        }
        Frame::Credit { id, bytes } => {
            if let Some(Some(c)) = shared.table().get(&id).map(|e| e.credit.as_ref()) {
                c.grant(bytes);
            }
            Ok(())
        }
        Frame::Ping { payload } => {
            let _ = shared
                .out
                .push(|o| encode_ping(&mut o.buf, Kind::Pong, payload));
            Ok(())
        }
        Frame::Pong { .. } => Ok(()),
        Frame::GoAway {
            last_id,
            code,
            reason,
        } => {
            if code != 0 {
                tracing::warn!(peer = %shared.peer.label(), code, "peer is going away: {reason}");
                let why = if code == SystemCode::ResourceExhausted as u32
                    || code == SystemCode::PermissionDenied as u32
                {
                    CloseReason::CutOff(reason)
                } else {
                    CloseReason::Protocol(format!("reported by the peer: {reason}"))
                };
                let _ = shared.peer_goaway_error.set(why);
            }
            shared.peer_going_away(last_id);
            Ok(())
        }
    }
}
