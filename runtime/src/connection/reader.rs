//! The reader task, a shell around the connection's core: it reads from
//! the transport, decodes frames, feeds each to the core and does what the
//! core answers — serve a call, refuse it, hand an outcome to the call
//! waiting for it, answer a ping, hold the peer back, close for a violation.
//! It decides nothing about a frame itself. It never waits on the writer, so
//! a peer that does not read cannot stall it.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::core::{Action, Hold, StallWatch};
use super::{CloseReason, Shared};
use crate::transport::ReadHalf;
use crate::wire::frame::{encode_goaway, encode_ping, Frame, Kind};
use crate::wire::{self, SystemCode};

/// Read buffer kept free before each read, at first: small, so an idle
/// connection holds little.
const READ_RESERVE_MIN: usize = 2 * 1024;
/// ... and at most, once reads keep filling it: bulk streams then take a
/// few 64 KiB messages per read instead of a message in two reads.
const READ_RESERVE_MAX: usize = 512 * 1024;

pub(crate) async fn run(shared: Arc<Shared>, rd: &mut ReadHalf, mut buf: BytesMut) {
    let max = shared.config.max_frame;
    let mut reserve = READ_RESERVE_MIN;
    let mut retired = Retired::default();
    shared.note_heard();
    loop {
        loop {
            match wire::frame::decode_complete(&mut buf, max) {
                Ok(Some(frame)) => {
                    shared.frames_received.fetch_add(1, Ordering::Relaxed);
                    let mut next = Some(frame);
                    while let Some(frame) = next.take() {
                        match take_in(&shared, frame) {
                            Flow::Go => {}
                            Flow::Stop => return,
                            // A one-way message at the call limit waits
                            // here, and the peer with it, until a served
                            // call ends; then the core takes it again.
                            Flow::Hold(frame) => {
                                let room = |s: &Shared| !s.served.at_limit();
                                if let Err(stall) = Box::pin(hold_back(&shared, room)).await {
                                    cut_off(&shared, stall);
                                    return;
                                }
                                next = Some(frame);
                            }
                        }
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
            if let Err(stall) = Box::pin(hold_back(&shared, |s| !over_budget(s))).await {
                cut_off(&shared, stall);
                return;
            }
        }
        if shared.closed.is_cancelled() {
            return;
        }
        let read = tokio::select! {
            biased;
            _ = shared.closed.cancelled() => return,
            r = std::future::poll_fn(|cx| poll_read(cx, rd, &mut buf, reserve, &mut retired)) => r,
        };
        match read {
            Ok(0) => {
                let reason = shared.core().end_of_stream();
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
                // Bites back to small ones: the bulk is over, its chunks go.
                if reserve <= SPARE_BUFFER_MAX {
                    retired.clear();
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

/// Bytes of read buffers kept per thread for the connections that wait on
/// it: room for the buffers of a hundred or so busy connections, whatever
/// the number of idle ones.
const SPARE_BYTES: usize = 256 * 1024;
/// A connection whose read bite or buffer is larger than this is carrying
/// bulk traffic: it keeps its buffer while it waits.
const SPARE_BUFFER_MAX: usize = 64 * 1024;

/// Read buffers of this thread's connections that are waiting for input.
/// A connection that has nothing buffered gives its buffer back here while
/// it waits and takes one again when its stream is readable, so an idle
/// connection holds no read buffer (a keepalive ping borrows one for the
/// read and returns it), and busy ones reuse the same buffers without an
/// allocation per read.
#[derive(Default)]
struct Spare {
    buffers: Vec<BytesMut>,
    /// Their capacity, together.
    bytes: usize,
}

thread_local! {
    static SPARE: RefCell<Spare> = RefCell::new(Spare::default());
}

/// Read chunks a bulk connection has moved on from, kept to read into again
/// once every frame cut from them is dropped. A stream's messages are still
/// with their reader when the next read needs room, so without these every
/// chunk would come fresh from the allocator, which gives the last one back
/// to the kernel, to be faulted in again page by page. Only a connection
/// reading in bites larger than [`SPARE_BUFFER_MAX`] keeps any, and it
/// drops them when its bites shrink again.
#[derive(Default)]
struct Retired(Vec<BytesMut>);

/// Chunks a connection keeps retired, at most: more than a stream window
/// (2 MiB by default) of nearly full 512 KiB chunks.
const RETIRED_MAX: usize = 6;

impl Retired {
    /// A retired chunk no frame shares any more, with room for `need`.
    fn reuse(&mut self, need: usize) -> Option<BytesMut> {
        // A chunk that is still shared may have room left at its end,
        // which is its own to write: that is not a chunk to reuse.
        let i = self
            .0
            .iter_mut()
            .position(|c| c.capacity() < need && c.try_reclaim(need))?;
        Some(self.0.swap_remove(i))
    }

    /// Keeps `chunk` (whose frames may still be alive) to read into again;
    /// the oldest makes way, so a chunk some frame of which is kept long is
    /// not waited for.
    fn retire(&mut self, mut chunk: BytesMut) {
        if self.0.len() == RETIRED_MAX {
            self.0.remove(0);
        }
        chunk.clear();
        self.0.push(chunk);
    }

    fn clear(&mut self) {
        if !self.0.is_empty() {
            self.0 = Vec::new();
        }
    }
}

/// The free room below which a read first makes more: half a bite, but at
/// most a 64 KiB message, so a bulk connection fills its chunks nearly
/// whole and a stream window spans few of them.
fn room_wanted(reserve: usize) -> usize {
    (reserve / 2).min(SPARE_BUFFER_MAX)
}

/// Room `buf` needs before the next read: for the rest of the frame it
/// holds the start of, and at least [`room_wanted`].
fn room_needed(buf: &BytesMut, reserve: usize) -> usize {
    let frame = wire::frame::frame_len(buf).map_or(0, |total| total.saturating_sub(buf.len()));
    frame.max(room_wanted(reserve))
}

/// Makes `room` free after what `buf` holds: in place if no frame shares
/// its chunk any more; for a frame of [`EXACT_FROM`](wire::frame::EXACT_FROM)
/// or more, a buffer of exactly its size; on a bulk connection, a retired
/// chunk that is free again or a new chunk of a whole bite; otherwise as
/// `BytesMut::reserve` grows it.
fn make_room(buf: &mut BytesMut, room: usize, reserve: usize, retired: &mut Retired) {
    if buf.try_reclaim(room) {
        return;
    }
    let len = buf.len();
    let exact = len + room >= wire::frame::EXACT_FROM && room > room_wanted(reserve);
    if !exact && reserve <= SPARE_BUFFER_MAX {
        buf.reserve(reserve.max(room));
        return;
    }
    let mut chunk = match retired.reuse(len + room) {
        Some(chunk) if !exact => chunk,
        _ if exact => BytesMut::with_capacity(len + room),
        // Whole chunks of the largest bite, whatever the bite is now, so
        // every chunk holds many messages and comes round again.
        _ => BytesMut::with_capacity((len + room).max(READ_RESERVE_MAX)),
    };
    chunk.extend_from_slice(buf);
    let old = std::mem::replace(buf, chunk);
    if !exact && reserve > SPARE_BUFFER_MAX {
        retired.retire(old);
    }
}

/// Reads into `buf`, taking a buffer from this thread's spares when it has
/// none, and giving it back when the stream has nothing to read and the
/// buffer holds nothing (a partial frame stays with its connection). With
/// the spares full, the buffer is freed: a connection that waits holds none.
fn poll_read(
    cx: &mut Context<'_>,
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    reserve: usize,
    retired: &mut Retired,
) -> Poll<std::io::Result<usize>> {
    let room = room_needed(buf, reserve);
    if buf.capacity() - buf.len() < room {
        // Nothing buffered and too little room (no buffer at all, or what
        // is left of the handshake's): a spare, if this thread has one.
        if buf.is_empty() {
            let spare = SPARE.with(|s| {
                let mut s = s.try_borrow_mut().ok()?;
                let spare = s.buffers.pop()?;
                s.bytes -= spare.capacity();
                Some(spare)
            });
            if let Some(spare) = spare {
                *buf = spare;
            }
        }
        if buf.capacity() - buf.len() < room {
            make_room(buf, room, reserve, retired);
        }
    }
    let polled = std::pin::pin!(rd.read_buf(buf)).poll(cx);
    if polled.is_pending()
        && buf.is_empty()
        && reserve <= SPARE_BUFFER_MAX
        && buf.capacity() <= SPARE_BUFFER_MAX
    {
        let idle = std::mem::take(buf);
        SPARE.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.bytes + idle.capacity() <= SPARE_BYTES {
                    s.bytes += idle.capacity();
                    s.buffers.push(idle);
                }
            }
        });
    }
    polled
}

/// How long the read half stays open, at most, once the writer is done.
const LINGER: Duration = Duration::from_secs(1);
/// How much it discards meanwhile, at most: a peer that sends more after
/// the end is flooding, not finishing a write, and is reset.
const LINGER_BYTES: usize = 1024 * 1024;

/// After the connection ended: keeps reading, and discarding, until the
/// peer closes its side, [`LINGER`] after the writer is done
/// (`written_out` resolves), or [`LINGER_BYTES`] have been discarded. A socket
/// closed with unread input resets the connection, and the reset destroys
/// what is still queued for the peer — the goaway saying why it was closed
/// — before the peer reads it; a peer that closes after reading is never
/// reset.
pub(crate) async fn linger(written_out: impl Future<Output = ()>, rd: &mut ReadHalf) {
    let done = async {
        written_out.await;
        tokio::time::sleep(LINGER).await;
    };
    tokio::pin!(done);
    // On the heap: an array here would make this future 4 KiB larger.
    let mut sink = vec![0u8; 4096];
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        tokio::select! {
            () = &mut done => return,
            read = rd.read(&mut sink) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            },
        }
    }
}

fn over_budget(shared: &Shared) -> bool {
    shared.budget.is_full(shared.out.queued())
}

/// A peer that read nothing of what is queued for it for `after`.
struct Stall {
    queued: usize,
    after: Duration,
}

/// Stops reading until `room` holds. Callers box it: it is entered only
/// under pressure, and inline it would make every reader future larger. Gives up with a [`Stall`] when bytes
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
    let last = shared.core().last_admitted();
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
    let last = shared.core().last_admitted();
    let _ = shared
        .out
        .push(|o| encode_goaway(&mut o.buf, last, SystemCode::Protocol as u32, &message));
    shared.shut(CloseReason::Protocol(message));
}

/// What the reader does after a frame.
enum Flow {
    /// Read on.
    Go,
    /// Hold the peer back, then feed this frame again.
    Hold(Frame),
    /// The connection ended.
    Stop,
}

/// Feeds one frame to the core and does what it answers, after letting go
/// of the core's lock.
fn take_in(shared: &Arc<Shared>, frame: Frame) -> Flow {
    // A name the router knows is shared with it, not stored again.
    let resolve = |name: &str| match shared.router.route_named(name) {
        Some((known, route)) => (known, Some(route)),
        None => (Arc::from(name), None),
    };
    let action = shared.core().on_frame(frame, resolve);
    match action {
        Action::Nothing => {}
        Action::Pong(payload) => {
            let _ = shared
                .out
                .push(|o| encode_ping(&mut o.buf, Kind::Pong, payload));
        }
        Action::Serve(call) => shared.serve(call),
        Action::Refuse(refusal) => shared.refuse(refusal),
        Action::Drop { op, why } => shared.drop_one_way(&op, why),
        Action::Finish(entry, outcome) => entry.finish(outcome),
        Action::Hold(frame) => return Flow::Hold(frame),
        Action::PeerGoingAway { code, reason } => {
            tracing::warn!(peer = %shared.peer.label(), code, "peer is going away: {reason}");
        }
        Action::Violation(message) => {
            protocol_close(shared, message);
            return Flow::Stop;
        }
    }
    Flow::Go
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bulk connection's buffer after a read: `frames` whole 64 KiB
    /// frames cut from it (alive while the caller keeps them) and the first
    /// 100 bytes of the next one left in it.
    fn filled(buf: &mut BytesMut, frames: usize) -> Vec<bytes::Bytes> {
        let frame = 64 * 1024 + 10;
        buf.resize(frames * frame + 100, 0);
        (0..frames).map(|_| buf.split_to(frame).freeze()).collect()
    }

    #[test]
    fn a_bulk_reader_reads_into_a_retired_chunk_once_its_frames_are_gone() {
        let mut retired = Retired::default();
        let mut buf = BytesMut::with_capacity(READ_RESERVE_MAX);
        let first = filled(&mut buf, 7);
        let first_chunk = first[0].as_ptr();
        make_room(
            &mut buf,
            room_wanted(READ_RESERVE_MAX),
            READ_RESERVE_MAX,
            &mut retired,
        );
        // The partial frame moved to a new chunk; the old one is retired.
        assert_eq!(buf.len(), 100);
        assert_eq!(retired.0.len(), 1);
        let second = filled(&mut buf, 7);
        // Its frames still alive: the retired chunk is not read into.
        make_room(
            &mut buf,
            room_wanted(READ_RESERVE_MAX),
            READ_RESERVE_MAX,
            &mut retired,
        );
        assert_ne!(buf.as_ptr(), first_chunk);
        drop(first);
        drop(second);
        let _third = filled(&mut buf, 7);
        make_room(
            &mut buf,
            room_wanted(READ_RESERVE_MAX),
            READ_RESERVE_MAX,
            &mut retired,
        );
        assert_eq!(
            buf.as_ptr(),
            first_chunk,
            "the first chunk, free again, is read into"
        );
        assert_eq!(&buf[..], &[0; 100][..], "with the partial frame in front");
    }

    #[test]
    fn retired_chunks_are_bounded_and_go_when_bites_shrink() {
        let mut retired = Retired::default();
        let mut buf = BytesMut::with_capacity(READ_RESERVE_MAX);
        let mut kept = Vec::new();
        for _ in 0..2 * RETIRED_MAX {
            kept.extend(filled(&mut buf, 7));
            make_room(
                &mut buf,
                room_wanted(READ_RESERVE_MAX),
                READ_RESERVE_MAX,
                &mut retired,
            );
            assert!(retired.0.len() <= RETIRED_MAX);
        }
        assert_eq!(retired.0.len(), RETIRED_MAX);
        retired.clear();
        assert_eq!(retired.0.capacity(), 0, "nothing kept");
    }

    #[test]
    fn a_small_reader_retires_nothing_and_a_large_frame_gets_its_own_buffer() {
        let mut retired = Retired::default();
        let mut buf = BytesMut::with_capacity(4 * 1024);
        let _kept = filled(&mut buf, 0);
        make_room(&mut buf, 2 * 1024, 4 * 1024, &mut retired);
        assert!(retired.0.is_empty());
        // A 4 MiB frame whose header is in: a buffer of exactly its size.
        let mut buf = BytesMut::with_capacity(READ_RESERVE_MAX);
        let total = 4 << 20;
        buf.extend_from_slice(&((total - 10) as u32).to_be_bytes());
        buf.extend_from_slice(&[0; 6]);
        let kept = buf.split_to(0).freeze();
        let room = room_needed(&buf, READ_RESERVE_MAX);
        assert_eq!(room, total - 10);
        make_room(&mut buf, room, READ_RESERVE_MAX, &mut retired);
        assert_eq!(buf.capacity(), total);
        drop(kept);
    }
}
