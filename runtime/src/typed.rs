//! Typed streams: the byte-level [`Inbound`], [`Outbound`] and [`Reply`]
//! seen through a service's codec.
//!
//! Generated clients and handlers hand these out for the stream call kinds;
//! users see `Streaming<T>` (items arriving), `StreamSender<T>` (items
//! leaving), `ReplyFuture<T>` (a client stream's answer) and
//! [`BoxStream<T>`] (what a server-stream handler returns). Flow control,
//! deadlines and cancellation are the underlying byte streams'; this module
//! only encodes and decodes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;

use crate::codec::{Codec, CodecError};
use crate::connection::{Inbound, Outbound, Reply};
use crate::error::{CallError, Reject};
use crate::wire::SystemCode;

/// What a server-stream or bidi handler returns: any `Send` stream of replies, boxed.
///
/// Build one with `Box::pin(stream)` or `futures::StreamExt::boxed`. The item
/// is the reply type, or `Result<Reply, Reject>` for a stream that may end
/// with a rejection.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

type DecodeFn<T> = fn(Bytes) -> Result<T, CodecError>;
type EncodeFn<T> = fn(&T) -> Result<Bytes, CodecError>;
type SplicedFn<T> = fn(&T) -> Result<crate::connection::SplicedMessage, CodecError>;

/// A stream of typed messages arriving: a caller's replies, or a handler's requests.
///
/// Yields `Ok(item)` per message, `Err(CallError)` once if the call fails or an
/// item cannot be decoded (the stream then ends), and `None` when the sender
/// finished cleanly.
pub struct Streaming<T> {
    inbound: Inbound,
    decode: DecodeFn<T>,
    op: Arc<str>,
    peer: Arc<str>,
    done: bool,
}

impl<T> Streaming<T> {
    /// Decodes `inbound` with codec `C`; `op` and `peer` name the call in errors.
    pub fn new<C: Codec<T>>(
        inbound: Inbound,
        op: impl Into<Arc<str>>,
        peer: impl Into<Arc<str>>,
    ) -> Self {
        Streaming {
            inbound,
            decode: C::decode,
            op: op.into(),
            peer: peer.into(),
            done: false,
        }
    }

    /// Receives the next item; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<T, CallError>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// The underlying byte stream.
    pub fn into_inner(self) -> Inbound {
        self.inbound
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, CallError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match Pin::new(&mut self.inbound).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(match item {
            None => {
                self.done = true;
                None
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            Some(Ok(bytes)) => match (self.decode)(bytes) {
                Ok(item) => Some(Ok(item)),
                Err(e) => {
                    self.done = true;
                    Some(Err(CallError::decode(
                        self.op.clone(),
                        self.peer.clone(),
                        e,
                    )))
                }
            },
        })
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl<T> std::fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("op", &self.op)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Sends typed messages: a caller's requests, or (inside the runtime) a handler's replies.
///
/// A caller ends its requests with [`finish`](StreamSender::finish);
/// dropping the sender first cancels the call.
pub struct StreamSender<T> {
    outbound: Outbound,
    encode: EncodeFn<T>,
    encode_spliced: SplicedFn<T>,
    op: Arc<str>,
    peer: Arc<str>,
}

impl<T> StreamSender<T> {
    /// Encodes into `outbound` with codec `C`; `op` and `peer` name the call in errors.
    pub fn new<C: Codec<T>>(
        outbound: Outbound,
        op: impl Into<Arc<str>>,
        peer: impl Into<Arc<str>>,
    ) -> Self {
        StreamSender {
            outbound,
            encode: C::encode,
            encode_spliced: crate::codec::encode_spliced::<C, T>,
            op: op.into(),
            peer: peer.into(),
        }
    }

    /// Sends one item, waiting while the receiver is behind.
    pub async fn send(&mut self, item: T) -> Result<(), CallError> {
        let msg = (self.encode_spliced)(&item)
            .map_err(|e| CallError::encode(self.op.clone(), self.peer.clone(), e))?;
        self.outbound.send_spliced(msg).await
    }

    /// Best-effort send: sends `item` if the receiver keeps up, otherwise
    /// drops it and counts it in [`dropped`](Self::dropped); never waits.
    /// `Ok(false)` means dropped.
    pub fn try_send(&mut self, item: T) -> Result<bool, CallError> {
        let bytes = (self.encode)(&item)
            .map_err(|e| CallError::encode(self.op.clone(), self.peer.clone(), e))?;
        match self.outbound.try_send(bytes) {
            Ok(()) => Ok(true),
            Err(crate::connection::TrySendError::Full(_)) => Ok(false),
            Err(crate::connection::TrySendError::Closed(e)) => Err(e),
        }
    }

    /// Items [`try_send`](Self::try_send) dropped so far.
    pub fn dropped(&self) -> u64 {
        self.outbound.dropped()
    }

    /// Tells the receiver no more items follow.
    pub async fn finish(self) -> Result<(), CallError> {
        self.outbound.finish().await
    }

    /// The underlying byte stream.
    pub fn into_inner(self) -> Outbound {
        self.outbound
    }
}

impl<T> std::fmt::Debug for StreamSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("op", &self.op)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// The typed answer to a client-stream call; resolves once the handler acks or rejects.
///
/// Dropping it before it resolves (and after the sender is finished) cancels the call.
pub struct ReplyFuture<T> {
    reply: Reply,
    decode: DecodeFn<T>,
    op: Arc<str>,
    peer: Arc<str>,
}

impl<T> ReplyFuture<T> {
    /// Decodes `reply` with codec `C`; `op` and `peer` name the call in errors.
    pub fn new<C: Codec<T>>(
        reply: Reply,
        op: impl Into<Arc<str>>,
        peer: impl Into<Arc<str>>,
    ) -> Self {
        ReplyFuture {
            reply,
            decode: C::decode,
            op: op.into(),
            peer: peer.into(),
        }
    }
}

impl<T> Future for ReplyFuture<T> {
    type Output = Result<T, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.reply).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(bytes)) => Poll::Ready(
                (this.decode)(bytes)
                    .map_err(|e| CallError::decode(this.op.clone(), this.peer.clone(), e)),
            ),
        }
    }
}

impl<T> std::fmt::Debug for ReplyFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyFuture")
            .field("op", &self.op)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Sends every item of a handler's reply stream, encoded with `C`.
///
/// Used by generated handlers for server and bidi streams. Stops early, with
/// a rejection the runtime relays if the caller is still there, when an item
/// cannot be encoded or the caller stopped listening.
pub async fn forward<C: Codec<T>, T>(
    mut replies: BoxStream<T>,
    mut outbound: Outbound,
) -> Result<(), Reject> {
    while let Some(item) = replies.next().await {
        send_encoded::<C, T>(&mut outbound, &item).await?;
    }
    Ok(())
}

/// Like [`forward`], for a stream whose items may be a rejection: the first
/// `Err(reject)` ends the stream and is relayed to the caller.
pub async fn forward_fallible<C: Codec<T>, T>(
    mut replies: BoxStream<Result<T, Reject>>,
    mut outbound: Outbound,
) -> Result<(), Reject> {
    while let Some(item) = replies.next().await {
        send_encoded::<C, T>(&mut outbound, &item?).await?;
    }
    Ok(())
}

async fn send_encoded<C: Codec<T>, T>(outbound: &mut Outbound, item: &T) -> Result<(), Reject> {
    let msg = crate::codec::encode_spliced::<C, T>(item)
        .map_err(|e| Reject::new(SystemCode::HandlerFailed as u32, e.to_string()))?;
    outbound
        .send_spliced(msg)
        .await
        .map_err(|e| Reject::new(SystemCode::HandlerFailed as u32, e.to_string()))
}

/// Reports a one-way request that could not be decoded. One-way calls have
/// no reply to carry the error, so it is logged (at `warn`) and dropped.
pub fn undecodable_oneway(op: &str, reject: &Reject) {
    tracing::warn!(
        op,
        reason = reject.message(),
        "dropped an undecodable one-way request"
    );
}
