//! The single write path of a connection.
//!
//! Every task that sends — callers, handlers, the reader answering pings —
//! encodes its frame straight into one shared buffer under a short lock and
//! wakes the writer task. The writer swaps the whole buffer out and writes it
//! with one `write_all`, so under load many frames leave in one syscall and no
//! frame costs an allocation or a task of its own. The lock is never held
//! across an await.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::transport::WriteHalf;
use crate::wire::frame::Kind;
use crate::wire::frame::{
    encode_body, encode_call_open, encode_call_open_head, encode_header, CallOpenHead,
};

/// Capacity kept between batches; a batch that grew the buffer beyond this
/// gives the memory back afterwards.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Below this many queued bytes the writer first lets other ready senders
/// add their frames; above it, it writes at once.
const COALESCE_BELOW: usize = 16 * 1024;

/// A write no larger than this carried a lone small frame or two: the
/// connection is not under load, so the writer does not wait for company.
const LONE_BATCH: usize = 512;

/// Bodies at least this large are queued by reference and written with a
/// vectored write instead of being copied into the buffer.
const SHARE_BODY_FROM: usize = 16 * 1024;

/// A buffer of small frames this large is moved to the parts as one chunk.
const SEAL_AT: usize = 256 * 1024;

/// FNV-1a for the operation names this side calls: short strings of our own
/// choosing (never the peer's), so a fast hash with no DoS guard is right.
#[derive(Default)]
pub(crate) struct OpHasher(u64);

impl Hasher for OpHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One message encoded in pieces: the bytes the encoder wrote, with large
/// byte strings it did not copy spliced in by reference at their offsets.
/// On the wire it is one payload, `bytes` with every hole filled in order;
/// only the queue sees the pieces, so a 64 KiB blob reaches the socket's
/// vectored write without ever being copied in this process.
#[derive(Debug, Clone, Default)]
pub(crate) struct SplicedMessage {
    /// What the encoder wrote, holes left out.
    bytes: Bytes,
    /// `(offset into bytes, what goes there)`, offsets non-decreasing.
    holes: Vec<(usize, Bytes)>,
    /// The payload's length: `bytes` and every hole.
    len: usize,
}

impl SplicedMessage {
    /// A message of the encoder's bytes with `holes` spliced in: each
    /// `(offset, piece)` goes before `bytes[offset..]`, in order.
    ///
    /// # Panics
    /// If an offset is past the end of `bytes` or smaller than the one before.
    pub(crate) fn new(bytes: Bytes, holes: Vec<(usize, Bytes)>) -> Self {
        let mut at = 0;
        let mut len = bytes.len();
        for (offset, piece) in &holes {
            assert!(
                *offset >= at && *offset <= bytes.len(),
                "holes out of order"
            );
            at = *offset;
            len += piece.len();
        }
        SplicedMessage { bytes, holes, len }
    }

    /// The payload's length on the wire.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How much of it the encoder wrote (and copied): all but the holes.
    #[cfg(test)]
    pub(crate) fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// The payload as one contiguous `Bytes`: free without holes, a copy
    /// with them.
    #[cfg(test)]
    pub(crate) fn to_bytes(&self) -> Bytes {
        if self.holes.is_empty() {
            return self.bytes.clone();
        }
        let mut out = BytesMut::with_capacity(self.len);
        let mut at = 0;
        for (offset, piece) in &self.holes {
            out.extend_from_slice(&self.bytes[at..*offset]);
            out.extend_from_slice(piece);
            at = *offset;
        }
        out.extend_from_slice(&self.bytes[at..]);
        out.freeze()
    }
}

impl From<Bytes> for SplicedMessage {
    fn from(bytes: Bytes) -> Self {
        SplicedMessage {
            len: bytes.len(),
            bytes,
            holes: Vec::new(),
        }
    }
}

/// The connection's outgoing state, guarded by one lock.
///
/// The bytes waiting for the writer are `parts` (in order) followed by
/// `buf`: small frames are encoded into `buf`; a large body is queued as a
/// shared `Bytes` after freezing what `buf` held before it.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    /// Encoded frames waiting for the writer.
    pub(crate) buf: BytesMut,
    parts: Vec<Bytes>,
    parts_len: usize,
    /// Operation ids interned on this connection, in definition order. Kept
    /// here so an id is defined in the same order its frames are written.
    pub(crate) ops: HashMap<Box<str>, u32, BuildHasherDefault<OpHasher>>,
    closed: bool,
}

impl Outgoing {
    /// Bytes queued, in parts and buffer.
    pub(crate) fn len(&self) -> usize {
        self.parts_len + self.buf.len()
    }

    fn is_empty(&self) -> bool {
        self.parts_len == 0 && self.buf.is_empty()
    }

    /// Queues a frame whose payload is `body`: large bodies by reference.
    pub(crate) fn frame(&mut self, kind: Kind, id: u32, body: &Bytes) {
        if body.len() < SHARE_BODY_FROM {
            encode_body(&mut self.buf, kind, id, body);
            return;
        }
        encode_header(&mut self.buf, body.len(), kind, 0, id);
        self.share(body);
    }

    /// Queues a frame whose payload is `msg`: its holes, and any other
    /// large piece, by reference.
    pub(crate) fn frame_spliced(&mut self, kind: Kind, id: u32, msg: &SplicedMessage) {
        if msg.holes.is_empty() {
            return self.frame(kind, id, &msg.bytes);
        }
        encode_header(&mut self.buf, msg.len, kind, 0, id);
        let mut at = 0;
        for (offset, hole) in &msg.holes {
            self.piece(&msg.bytes, at, *offset);
            self.share(hole);
            at = *offset;
        }
        self.piece(&msg.bytes, at, msg.bytes.len());
    }

    /// Queues `bytes[from..to]`: copied when small, by reference otherwise.
    fn piece(&mut self, bytes: &Bytes, from: usize, to: usize) {
        if to - from < SHARE_BODY_FROM {
            self.buf.extend_from_slice(&bytes[from..to]);
        } else {
            self.share(&bytes.slice(from..to));
        }
    }

    /// Queues a call-open frame: a large request body by reference.
    pub(crate) fn call_open(&mut self, head: &CallOpenHead<'_>, body: &Bytes) {
        if body.len() < SHARE_BODY_FROM {
            encode_call_open(&mut self.buf, head, body);
            return;
        }
        encode_call_open_head(&mut self.buf, head, body.len());
        self.share(body);
    }

    /// Queues what `buf` holds, then `body`, without copying it.
    fn share(&mut self, body: &Bytes) {
        let head = self.buf.split().freeze();
        self.parts_len += head.len() + body.len();
        self.parts.push(head);
        self.parts.push(body.clone());
    }

    /// Moves a large `buf` to the parts, so a long queue is a list of
    /// chunks rather than one buffer that doubles (and is copied) as it
    /// grows.
    fn seal_if_large(&mut self) {
        if self.buf.len() >= SEAL_AT {
            let chunk = self.buf.split().freeze();
            self.parts_len += chunk.len();
            self.parts.push(chunk);
        }
    }
}

/// The transport's write half and a spare buffer, held by whoever writes:
/// the writer task, or a sender writing through ([`WriteQueue::write_through`]).
/// Frames are taken from the queue only under this lock, so they reach the
/// transport in queue order whoever writes them.
struct Io {
    io: Option<WriteHalf>,
    spare: BytesMut,
}

/// The queue callers write frames into.
pub(crate) struct WriteQueue {
    out: Mutex<Outgoing>,
    io: tokio::sync::Mutex<Io>,
    /// A write-through left bytes inside the transport (a TLS session's
    /// buffer) that a flush must still push out.
    unflushed: AtomicBool,
    wake: Notify,
    drained: Notify,
    high_water: usize,
    bytes_written: AtomicU64,
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("queued", &self.queued())
            .field("high_water", &self.high_water)
            .field("written", &self.written())
            .finish()
    }
}

/// The writer is gone; nothing more can be sent.
#[derive(Debug)]
pub(crate) struct QueueClosed;

impl WriteQueue {
    pub(crate) fn new(high_water: usize) -> Self {
        WriteQueue {
            out: Mutex::new(Outgoing::default()),
            io: tokio::sync::Mutex::new(Io {
                io: None,
                spare: BytesMut::new(),
            }),
            unflushed: AtomicBool::new(false),
            wake: Notify::new(),
            drained: Notify::new(),
            high_water,
            bytes_written: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outgoing> {
        // A panic while holding this lock can only come from an encoder bug;
        // the buffer is still structurally valid, so keep going.
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encodes a frame now, whatever the queue's size. For control frames and
    /// for the reader, which must never wait on the writer.
    pub(crate) fn push<R>(
        &self,
        encode: impl FnOnce(&mut Outgoing) -> R,
    ) -> Result<R, QueueClosed> {
        let mut out = self.lock();
        if out.closed {
            return Err(QueueClosed);
        }
        let was_empty = out.is_empty();
        let r = encode(&mut out);
        out.seal_if_large();
        drop(out);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(r)
    }

    /// Encodes a frame once the queue is below its high-water mark, waiting
    /// for the writer to drain it otherwise. This is where a connection whose
    /// peer reads slowly pushes back on its senders.
    pub(crate) async fn push_bounded<R>(
        &self,
        encode: impl FnOnce(&mut Outgoing) -> R,
    ) -> Result<R, QueueClosed> {
        let mut encode = Some(encode);
        loop {
            // Fast path: room now. Only a full queue pays for registering
            // a waiter.
            if let Some(r) = self.try_encode(&mut encode)? {
                return Ok(r);
            }
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            // Re-check after registering, or a drain in between is missed.
            if let Some(r) = self.try_encode(&mut encode)? {
                return Ok(r);
            }
            drained.await;
        }
    }

    fn try_encode<R>(
        &self,
        encode: &mut Option<impl FnOnce(&mut Outgoing) -> R>,
    ) -> Result<Option<R>, QueueClosed> {
        let mut out = self.lock();
        if out.closed {
            return Err(QueueClosed);
        }
        if out.len() >= self.high_water {
            return Ok(None);
        }
        let was_empty = out.is_empty();
        let f = encode.take().ok_or(QueueClosed)?;
        let r = f(&mut out);
        out.seal_if_large();
        drop(out);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(Some(r))
    }

    /// Encodes a frame if the queue is below its high-water mark right now;
    /// `Ok(None)` if it is not (nothing was encoded).
    pub(crate) fn try_push_bounded<R>(
        &self,
        encode: impl FnOnce(&mut Outgoing) -> R,
    ) -> Result<Option<R>, QueueClosed> {
        self.try_encode(&mut Some(encode))
    }

    /// Marks the queue closed: what is queued is still written, nothing new is taken.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
        self.drained.notify_waiters();
    }

    /// Resolves once the writer (or a write-through) next takes frames from
    /// the queue. Enable it before checking the queue, or a drain in between
    /// is missed.
    pub(crate) fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Gives up on the peer: drops the transport (closing the stream) and
    /// everything still queued, so a peer that stopped reading holds nothing
    /// here once the connection has ended. Call it after the writer task
    /// stopped.
    pub(crate) async fn abandon(&self) {
        {
            let mut out = self.lock();
            out.closed = true;
            out.buf = BytesMut::new();
            out.parts = Vec::new();
            out.parts_len = 0;
        }
        self.io.lock().await.io = None;
        self.drained.notify_waiters();
    }

    /// Bytes encoded and not yet handed to the transport.
    pub(crate) fn queued(&self) -> usize {
        self.lock().len()
    }

    /// Bytes handed to the transport so far.
    pub(crate) fn written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Writes what is queued right now from the calling task, if the
    /// transport is free and takes it all without waiting: a lone frame then
    /// skips the hop to the writer task. Anything the transport does not take
    /// at once goes back to the front of the queue for the writer. Only small
    /// queues are written through; large bodies stay with the writer.
    pub(crate) fn write_through(&self) {
        let Ok(mut held) = self.io.try_lock() else {
            return; // the writer is writing; it will take these frames too
        };
        let Io { io, spare } = &mut *held;
        let Some(io) = io.as_mut() else {
            return;
        };
        {
            let mut out = self.lock();
            if out.buf.is_empty() || out.parts_len > 0 || out.buf.len() > COALESCE_BELOW {
                return;
            }
            std::mem::swap(&mut out.buf, spare);
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut written = 0;
        while written < spare.len() {
            match std::pin::Pin::new(&mut *io).poll_write(&mut cx, &spare[written..]) {
                std::task::Poll::Ready(Ok(n)) if n > 0 => written += n,
                // Would block, failed or wrote nothing: the writer takes over
                // and meets the same condition with a real waker.
                _ => break,
            }
        }
        self.bytes_written
            .fetch_add(written as u64, Ordering::Relaxed);
        if written < spare.len() {
            let rest = spare.split_off(written).freeze();
            let mut out = self.lock();
            out.parts_len += rest.len();
            out.parts.insert(0, rest);
            drop(out);
            self.wake.notify_one();
        } else if written > 0 {
            match std::pin::Pin::new(&mut *io).poll_flush(&mut cx) {
                std::task::Poll::Ready(Ok(())) => {}
                _ => {
                    self.unflushed.store(true, Ordering::Release);
                    self.wake.notify_one();
                }
            }
        }
        spare.clear();
        drop(held);
        self.drained.notify_waiters();
    }

    /// The writer task: drains the queue into the transport until the queue is
    /// closed and empty, or the transport fails.
    ///
    /// `busy` says whether several calls are outstanding on the connection,
    /// so that more frames are likely to follow the one that woke the writer.
    pub(crate) async fn run(&self, io: WriteHalf, busy: impl Fn() -> bool) -> std::io::Result<()> {
        self.io.lock().await.io = Some(io);
        let mut batch = BytesMut::new();
        let mut parts: Vec<Bytes> = Vec::new();
        let mut last_written = 0;
        loop {
            let (queued, closed) = {
                let out = self.lock();
                (!out.is_empty(), out.closed)
            };
            if !queued {
                if self.unflushed.swap(false, Ordering::AcqRel) {
                    let mut held = self.io.lock().await;
                    if let Some(io) = held.io.as_mut() {
                        io.flush().await?;
                    }
                    continue;
                }
                if closed {
                    break;
                }
                self.wake.notified().await;
                // Small frames under load — several calls outstanding, or
                // the last write carried more than a lone frame: let every
                // other task that is ready to send encode its frame first,
                // so this wake-up writes them all in one syscall.
                // Without it the writer runs right after the first sender and
                // writes batches of one (measured: ~2 writes per unary call
                // instead of ~0.1). A lone call goes out at once (latency),
                // and so does a queue already holding a large message,
                // keeping streams pipelined.
                if self.queued() < COALESCE_BELOW && (last_written > LONE_BATCH || busy()) {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            // Take the frames only with the transport in hand, so a
            // write-through cannot slip its frames in between.
            let mut held = self.io.lock().await;
            let Some(io) = held.io.as_mut() else {
                return Ok(());
            };
            {
                let mut out = self.lock();
                std::mem::swap(&mut out.buf, &mut batch);
                std::mem::swap(&mut out.parts, &mut parts);
                out.parts_len = 0;
            }
            if batch.is_empty() && parts.is_empty() {
                continue; // a write-through took them
            }
            self.unflushed.store(false, Ordering::Release);
            self.drained.notify_waiters();
            let written = if parts.is_empty() {
                io.write_all(&batch).await?;
                batch.len()
            } else {
                parts.push(batch.split().freeze());
                write_all_parts(io, &mut parts).await?
            };
            io.flush().await?;
            drop(held);
            last_written = written;
            self.bytes_written
                .fetch_add(written as u64, Ordering::Relaxed);
            parts.clear();
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch = BytesMut::new();
            }
        }
        let mut held = self.io.lock().await;
        match held.io.as_mut() {
            Some(io) => io.shutdown().await,
            None => Ok(()),
        }
    }
}

/// Writes every part, in order, with as few vectored writes as the
/// transport allows. Returns the bytes written.
async fn write_all_parts(io: &mut WriteHalf, parts: &mut [Bytes]) -> std::io::Result<usize> {
    use tokio::io::AsyncWriteExt;
    let total = parts.iter().map(Bytes::len).sum();
    let mut first = 0;
    while first < parts.len() {
        if parts[first].is_empty() {
            first += 1;
            continue;
        }
        let slices: Vec<std::io::IoSlice<'_>> = parts[first..]
            .iter()
            .filter(|p| !p.is_empty())
            .take(64)
            .map(|p| std::io::IoSlice::new(p))
            .collect();
        let mut n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        drop(slices);
        while n > 0 {
            let p = &mut parts[first];
            let step = n.min(p.len());
            p.advance(step);
            n -= step;
            if p.is_empty() {
                first += 1;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn push(q: &WriteQueue, bytes: &[u8]) {
        q.push(|o| o.buf.extend_from_slice(bytes)).expect("open");
    }

    /// Everything `o` has queued, in order.
    fn queued(o: &Outgoing) -> Vec<u8> {
        let mut all: Vec<u8> = o.parts.iter().flat_map(|p| p.iter().copied()).collect();
        all.extend_from_slice(&o.buf);
        all
    }

    #[test]
    fn a_spliced_message_is_the_frame_of_its_whole_payload_with_its_holes_shared() {
        let big = Bytes::from(vec![9u8; 64 * 1024]);
        let other = Bytes::from(vec![8u8; 20 * 1024]);
        let bytes = Bytes::from_static(b"head|mid|tail");
        let msg = SplicedMessage::new(bytes, vec![(5, big.clone()), (9, other.clone())]);
        assert_eq!(msg.len(), 13 + big.len() + other.len());
        let mut spliced = Outgoing::default();
        spliced.frame_spliced(Kind::Data, 3, &msg);
        let mut whole = Outgoing::default();
        whole.frame(Kind::Data, 3, &msg.to_bytes());
        assert_eq!(queued(&spliced), queued(&whole));
        assert_eq!(spliced.len(), whole.len());
        // The holes are queued as the very bytes they were, not copies.
        assert!(spliced.parts.iter().any(|p| p.as_ptr() == big.as_ptr()));
        assert!(spliced.parts.iter().any(|p| p.as_ptr() == other.as_ptr()));
        // Without holes it is a plain frame.
        let mut plain = Outgoing::default();
        plain.frame_spliced(
            Kind::Data,
            3,
            &SplicedMessage::from(Bytes::from_static(b"x")),
        );
        let mut direct = Outgoing::default();
        direct.frame(Kind::Data, 3, &Bytes::from_static(b"x"));
        assert_eq!(queued(&plain), queued(&direct));
    }

    #[tokio::test]
    async fn a_partial_write_through_keeps_the_byte_order() {
        // A transport that takes 8 bytes, then would block until read.
        let (near, mut far) = tokio::io::duplex(8);
        let q = std::sync::Arc::new(WriteQueue::new(1 << 20));
        q.io.lock().await.io = Some(Box::new(near));
        let a: Vec<u8> = (0..20).collect();
        push(&q, &a);
        q.write_through();
        assert_eq!(q.written(), 8, "the transport took what it had room for");
        assert_eq!(q.queued(), 12, "the rest went back to the queue");
        let b: Vec<u8> = (100..130).collect();
        push(&q, &b);
        // The writer takes over from where the write-through stopped.
        let io = q.io.lock().await.io.take().expect("installed");
        let writer = tokio::spawn({
            let q = q.clone();
            async move { q.run(io, || false).await }
        });
        let mut got = vec![0u8; 50];
        tokio::time::timeout(std::time::Duration::from_secs(5), far.read_exact(&mut got))
            .await
            .expect("bounded")
            .expect("read");
        assert_eq!(&got[..20], &a[..]);
        assert_eq!(&got[20..], &b[..]);
        q.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .expect("bounded")
            .expect("no panic")
            .expect("clean shutdown");
    }

    #[tokio::test]
    async fn write_through_leaves_large_queues_to_the_writer() {
        let (near, _far) = tokio::io::duplex(1 << 20);
        let q = WriteQueue::new(1 << 20);
        q.io.lock().await.io = Some(Box::new(near));
        push(&q, &vec![7u8; COALESCE_BELOW + 1]);
        q.write_through();
        assert_eq!(q.written(), 0);
        assert_eq!(q.queued(), COALESCE_BELOW + 1);
    }
}
