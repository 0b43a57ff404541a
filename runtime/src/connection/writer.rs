//! The single write path of a connection.
//!
//! Every task that sends — callers, handlers, the reader answering pings —
//! encodes its frame straight into one shared buffer under a short lock and
//! wakes the writer task. The writer swaps the whole buffer out and writes it
//! with one `write_all`, so under load many frames leave in one syscall and no
//! frame costs an allocation or a task of its own. The lock is never held
//! across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::transport::WriteHalf;

/// Capacity kept between batches; a batch that grew the buffer beyond this
/// gives the memory back afterwards.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Below this many queued bytes the writer first lets other ready senders
/// add their frames; above it, it writes at once.
const COALESCE_BELOW: usize = 16 * 1024;

/// The connection's outgoing state, guarded by one lock.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    /// Encoded frames waiting for the writer.
    pub(crate) buf: BytesMut,
    /// Operation ids interned on this connection, in definition order. Kept
    /// here so an id is defined in the same order its frames are written.
    pub(crate) ops: HashMap<Box<str>, u32>,
    closed: bool,
}

/// The queue callers write frames into.
#[derive(Debug)]
pub(crate) struct WriteQueue {
    out: Mutex<Outgoing>,
    wake: Notify,
    drained: Notify,
    high_water: usize,
    bytes_written: AtomicU64,
}

/// The writer is gone; nothing more can be sent.
#[derive(Debug)]
pub(crate) struct QueueClosed;

impl WriteQueue {
    pub(crate) fn new(high_water: usize) -> Self {
        WriteQueue {
            out: Mutex::new(Outgoing::default()),
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
        let was_empty = out.buf.is_empty();
        let r = encode(&mut out);
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
        if out.buf.len() >= self.high_water {
            return Ok(None);
        }
        let was_empty = out.buf.is_empty();
        let f = encode.take().ok_or(QueueClosed)?;
        let r = f(&mut out);
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

    /// Bytes encoded and not yet handed to the transport.
    pub(crate) fn queued(&self) -> usize {
        self.lock().buf.len()
    }

    /// Bytes handed to the transport so far.
    pub(crate) fn written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// The writer task: drains the queue into the transport until the queue is
    /// closed and empty, or the transport fails.
    pub(crate) async fn run(&self, mut io: WriteHalf) -> std::io::Result<()> {
        let mut batch = BytesMut::new();
        loop {
            let closed = {
                let mut out = self.lock();
                if out.buf.is_empty() {
                    out.closed
                } else {
                    std::mem::swap(&mut out.buf, &mut batch);
                    false
                }
            };
            if batch.is_empty() {
                if closed {
                    break;
                }
                self.wake.notified().await;
                // Small frames: let every other task that is ready to send
                // encode its frame first, so this wake-up writes them all in
                // one syscall. Without it the writer runs right after the
                // first sender and writes batches of one (measured: ~2 writes
                // per unary call instead of ~0.1). A queue already holding a
                // large message goes out at once, keeping streams pipelined.
                if self.queued() < COALESCE_BELOW {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            self.drained.notify_waiters();
            io.write_all(&batch).await?;
            io.flush().await?;
            self.bytes_written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch = BytesMut::new();
            }
        }
        io.shutdown().await
    }
}
