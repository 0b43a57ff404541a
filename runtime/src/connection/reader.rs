//! The reader task: decodes frames from the transport and routes each one —
//! call opens to handlers, replies and stream messages to the call waiting
//! for them, pings to an answering pong. It never waits on the writer, so a
//! peer that does not read cannot stall it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::served::Violation;
use super::table::{Failure, InItem};
use super::{CloseReason, Shared};
use crate::error::Reject;
use crate::router::Route;
use crate::transport::ReadHalf;
use crate::wire::frame::{encode_goaway, encode_ping};
use crate::wire::{self, Frame, Kind, SystemCode};

/// Most distinct operations a peer may define on one connection.
const MAX_OPS: usize = 65_536;
/// Read buffer kept free before each read, at first: small, so an idle
/// connection holds little.
const READ_RESERVE_MIN: usize = 2 * 1024;
/// ... and at most, once reads keep filling it: bulk streams then take a
/// few 64 KiB messages per read instead of a message in two reads.
const READ_RESERVE_MAX: usize = 512 * 1024;

/// Operations the peer has defined, by index, with the handler resolved once.
type OpTable = Vec<(Arc<str>, Option<Route>)>;

pub(crate) async fn run(shared: Arc<Shared>, mut rd: ReadHalf, mut buf: BytesMut) {
    let mut ops = OpTable::new();
    let max = shared.config.max_frame;
    let mut reserve = READ_RESERVE_MIN;
    shared.note_heard();
    loop {
        loop {
            match wire::decode(&mut buf, max) {
                Ok(Some(frame)) => {
                    shared.frames_received.fetch_add(1, Ordering::Relaxed);
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
        // Answers the reader queues itself (pongs, refusals) skip the
        // high-water wait; a peer that keeps sending without ever reading
        // would grow them without end. Past this cap it is cut off.
        if shared.out.queued() > queue_cap(&shared) {
            protocol_close(&shared, "the peer keeps sending but does not read".into());
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
                    CloseReason::Protocol(format!("reported by the peer: {r}"))
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

/// Most bytes the write queue may hold before the peer is deemed not to read:
/// what bounded senders may queue (the high-water mark plus one message),
/// and as much again for control answers.
fn queue_cap(shared: &Shared) -> usize {
    2 * shared.config.write_high_water + shared.peer_max_frame as usize + 1024 * 1024
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
                if index != ops.len() {
                    return Err(Violation(format!(
                        "operation `{name}` defined as index {index}, expected {}",
                        ops.len()
                    )));
                }
                if ops.len() >= MAX_OPS {
                    return Err(Violation(format!("more than {MAX_OPS} operations defined")));
                }
                let route = shared.router.route(name);
                ops.push((Arc::from(name.as_str()), route));
            }
            let Some((op, route)) = ops.get(index) else {
                return Err(Violation(format!(
                    "call uses undefined operation index {index}"
                )));
            };
            let (op, route) = (op.clone(), route.clone());
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
                    let _ = inbound.tx.send(InItem::Data(body));
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
                let _ = shared.peer_goaway_error.set(reason);
            }
            shared.peer_going_away(last_id);
            Ok(())
        }
    }
}
