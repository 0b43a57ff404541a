//! Broadcast: one call to every member of a peer set, replies as a stream.
//!
//! Owns [`Broadcast`], the stream of `(NodeId, Result<T, CallError>)` a
//! node's [`broadcast`](super::Node::broadcast) returns. Each peer's call runs
//! on its own task from the moment of the broadcast, bounded by the
//! deadline, so a slow or hung peer delays nobody else's reply.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use tokio::task::{Id, JoinSet};

use super::peers::Client;
use crate::codec::{Codec, CodecError};
use crate::{CallError, CallOptions, Connection, NodeId};

/// Replies of a broadcast, in the order they arrive; ends after the last
/// peer answered or timed out. Dropping it cancels the calls still running.
pub struct Broadcast<T> {
    tasks: JoinSet<(NodeId, Result<T, CallError>)>,
    peers: Vec<NodeId>,
    by_task: HashMap<Id, NodeId>,
}

impl<T> std::fmt::Debug for Broadcast<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcast")
            .field("peers", &self.peers)
            .field("pending", &self.tasks.len())
            .finish()
    }
}

impl<T: Send + 'static> Broadcast<T> {
    /// Starts `call` on a client of every member, each bounded by `deadline`.
    pub(crate) fn start<C, F, Fut>(
        service: &'static str,
        members: Vec<(NodeId, Connection)>,
        deadline: Duration,
        call: F,
    ) -> Self
    where
        C: Client,
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, CallError>> + Send + 'static,
    {
        Broadcast::start_with(service, members, deadline, |conn| {
            call(C::from_connection(conn).with_call_options(CallOptions::new().timeout(deadline)))
        })
    }

    /// Starts `call` on the connection to every member, each bounded by
    /// `deadline`.
    fn start_with<F, Fut>(
        service: &'static str,
        members: Vec<(NodeId, Connection)>,
        deadline: Duration,
        call: F,
    ) -> Self
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T, CallError>> + Send + 'static,
    {
        let mut tasks = JoinSet::new();
        let mut by_task = HashMap::new();
        let mut peers = Vec::with_capacity(members.len());
        let op: Arc<str> = format!("{service} (broadcast)").into();
        for (id, conn) in members {
            let label = conn.peer().label().clone();
            // The deadline travels with each call, so the peer stops working
            // on it too; the outer timeout also bounds closures that make
            // several calls.
            let reply = call(conn);
            let op = op.clone();
            let handle = tasks.spawn(async move {
                match tokio::time::timeout(deadline, reply).await {
                    Ok(result) => (id, result),
                    Err(_) => (
                        id,
                        Err(CallError::Timeout {
                            op,
                            peer: label,
                            after: deadline,
                        }),
                    ),
                }
            });
            by_task.insert(handle.id(), id);
            peers.push(id);
        }
        Broadcast {
            tasks,
            peers,
            by_task,
        }
    }
}

impl<T> Broadcast<T> {
    /// The peers the broadcast went to: the members at the moment of the call.
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// Replies still outstanding.
    pub fn pending(&self) -> usize {
        self.tasks.len()
    }
}

impl<T: Send + 'static> Stream for Broadcast<T> {
    type Item = (NodeId, Result<T, CallError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.tasks.poll_join_next_with_id(cx) {
            Poll::Ready(Some(Ok((task, reply)))) => {
                this.by_task.remove(&task);
                Poll::Ready(Some(reply))
            }
            // The caller's closure panicked: surface it where the broadcast
            // is consumed, like a panic in any other task the caller awaits.
            Poll::Ready(Some(Err(e))) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Poll::Ready(Some(Err(e))) => {
                // Cancelled only when the runtime shuts down under us.
                let peer = this.by_task.remove(&e.id()).unwrap_or(NodeId(0));
                Poll::Ready(Some((
                    peer,
                    Err(CallError::Cancelled {
                        op: "broadcast".into(),
                        peer: peer.to_string().into(),
                    }),
                )))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The members of one peer set at one moment, and a deadline: what a
/// generated `…Fanout` (e.g. `ChatFanout`) calls through. Get one with
/// [`Node::fanout`](super::Node::fanout):
///
/// ```ignore
/// let mut replies = node.fanout::<ChatClient>(Duration::from_secs(1)).post(msg);
/// while let Some((peer, reply)) = replies.next().await { /* … */ }
/// ```
///
/// The request is encoded once and the same bytes go to every member.
#[derive(Clone, Debug)]
pub struct Fanout {
    service: &'static str,
    members: Vec<(NodeId, Connection)>,
    deadline: Duration,
}

impl Fanout {
    pub(crate) fn new(
        service: &'static str,
        members: Vec<(NodeId, Connection)>,
        deadline: Duration,
    ) -> Self {
        Fanout {
            service,
            members,
            deadline,
        }
    }

    /// The peers it reaches: the members when it was made.
    pub fn peers(&self) -> Vec<NodeId> {
        self.members.iter().map(|(id, _)| *id).collect()
    }

    /// The deadline of each call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Makes the unary call `op` with `body` on every member and decodes
    /// each reply with `C`. Replies stream back as they arrive, like
    /// [`Node::broadcast`](super::Node::broadcast). If the request could
    /// not be encoded, every member's entry is that [`CallError::Encode`].
    pub fn unary<C, R>(&self, op: &'static str, body: Result<Bytes, CodecError>) -> Broadcast<R>
    where
        C: Codec<R>,
        R: Send + 'static,
    {
        let opts = CallOptions::new().timeout(self.deadline);
        Broadcast::start_with(
            self.service,
            self.members.clone(),
            self.deadline,
            move |conn| {
                let body = body.clone();
                let opts = opts.clone();
                async move {
                    let body =
                        body.map_err(|e| CallError::encode(op, conn.peer().label().clone(), e))?;
                    let reply = conn.call(op, body, opts).await?;
                    crate::codec::decode_reply::<C, R>(op, &conn, reply)
                }
            },
        )
    }

    /// Sends the one-way message `op` with `body` to every member and
    /// returns, per member, whether it was handed to the connection.
    pub async fn oneway(
        &self,
        op: &'static str,
        body: Result<Bytes, CodecError>,
    ) -> Vec<(NodeId, Result<(), CallError>)> {
        let opts = CallOptions::new().timeout(self.deadline);
        let sends = self.members.iter().map(|(id, conn)| {
            let body = body.clone();
            let opts = opts.clone();
            async move {
                let sent = match body {
                    Ok(body) => conn.oneway(op, body, opts).await,
                    Err(e) => Err(CallError::encode(op, conn.peer().label().clone(), e)),
                };
                (*id, sent)
            }
        });
        futures_util::future::join_all(sends).await
    }
}
