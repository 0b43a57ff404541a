//! Broadcast: one call to every member of a peer set, replies as a stream.
//!
//! Owns [`Broadcast`], the stream of `(NodeId, Result<T, CallError>)` a
//! node's [`broadcast`](super::Node::broadcast) returns, and [`Fanout`], the
//! typed calls to every member generated `…Fanout` types go through —
//! unary, one-way and server-stream ([`FanoutStream`]), to the members or,
//! relayed, to the whole mesh (see `relay`). Each peer's call runs on its
//! own task from the moment of the broadcast, bounded by the deadline, so a
//! slow or hung peer delays nobody else's reply.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};

use super::peers::Client;
use super::Shared;
use crate::codec::{Codec, CodecError};
use crate::connection::scope::CallScope;
use crate::{CallError, CallOptions, Connection, NodeId, Streaming};

/// `opts` made children of the call being served on this task, if any: the
/// calls run on tasks of their own, which have no current call of their own.
fn within_served_call(opts: CallOptions) -> CallOptions {
    match CallScope::current() {
        Some(scope) => opts.child_of(scope),
        None => opts,
    }
}

/// Replies of a broadcast, in the order they arrive; ends after the last
/// peer answered or timed out. Dropping it cancels the calls still running.
///
/// A relayed broadcast ([`Node::relay`](super::Node::relay)) yields one
/// reply per node of the mesh that answered, tagged with that node.
pub struct Broadcast<T> {
    source: Source<T>,
    peers: Vec<NodeId>,
}

enum Source<T> {
    /// One task per member.
    Tasks {
        tasks: JoinSet<(NodeId, Result<T, CallError>)>,
        by_task: HashMap<Id, NodeId>,
    },
    /// Replies from the mesh, merged by one task (aborted on drop).
    Relayed {
        replies: mpsc::Receiver<(NodeId, Result<T, CallError>)>,
        task: tokio::task::JoinHandle<()>,
        open: Arc<AtomicUsize>,
    },
}

impl<T> Drop for Broadcast<T> {
    fn drop(&mut self) {
        if let Source::Relayed { task, .. } = &self.source {
            task.abort();
        }
    }
}

impl<T> std::fmt::Debug for Broadcast<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcast")
            .field("peers", &self.peers)
            .field("pending", &self.pending())
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
        let opts = within_served_call(CallOptions::new().timeout(deadline));
        Broadcast::start_with(service, members, deadline, |conn| {
            call(C::from_connection(conn).with_call_options(opts.clone()))
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
            source: Source::Tasks { tasks, by_task },
            peers,
        }
    }

    /// The replies a relay task merges from the mesh: `open` counts the
    /// members' streams still running.
    pub(crate) fn relayed(
        peers: Vec<NodeId>,
        replies: mpsc::Receiver<(NodeId, Result<T, CallError>)>,
        task: tokio::task::JoinHandle<()>,
        open: Arc<AtomicUsize>,
    ) -> Self {
        Broadcast {
            source: Source::Relayed {
                replies,
                task,
                open,
            },
            peers,
        }
    }
}

impl<T> Broadcast<T> {
    /// The peers the broadcast went to: the members at the moment of the
    /// call (for a relayed one: the first hop).
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// Replies still outstanding (for a relayed one: members whose part of
    /// the mesh has not finished answering).
    pub fn pending(&self) -> usize {
        match &self.source {
            Source::Tasks { tasks, .. } => tasks.len(),
            Source::Relayed { open, .. } => open.load(Ordering::Acquire),
        }
    }
}

impl<T: Send + 'static> Stream for Broadcast<T> {
    type Item = (NodeId, Result<T, CallError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let (tasks, by_task) = match &mut this.source {
            Source::Tasks { tasks, by_task } => (tasks, by_task),
            Source::Relayed { replies, .. } => return replies.poll_recv(cx),
        };
        match tasks.poll_join_next_with_id(cx) {
            Poll::Ready(Some(Ok((task, reply)))) => {
                by_task.remove(&task);
                Poll::Ready(Some(reply))
            }
            // The caller's closure panicked: surface it where the broadcast
            // is consumed, like a panic in any other task the caller awaits.
            Poll::Ready(Some(Err(e))) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Poll::Ready(Some(Err(e))) => {
                // Cancelled only when the runtime shuts down under us.
                let peer = by_task.remove(&e.id()).unwrap_or(NodeId(0));
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
///
/// Made by [`Node::relay`](super::Node::relay) instead, unary and one-way
/// calls go to the whole mesh: each member runs its handler and relays the
/// call on to its own members, and replies come back from every node
/// reached (see `docs/NODES.md`).
#[derive(Clone)]
pub struct Fanout {
    service: &'static str,
    members: Vec<(NodeId, Connection)>,
    deadline: Duration,
    /// Relayed through the mesh by this node, with the hop limit.
    mesh: Option<(Arc<Shared>, u8)>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("service", &self.service)
            .field("peers", &self.peers())
            .field("deadline", &self.deadline)
            .field("relayed", &self.mesh.as_ref().map(|(_, hops)| hops))
            .finish()
    }
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
            mesh: None,
        }
    }

    /// The same calls relayed through the mesh by `node`, at most
    /// `max_hops` hops from it.
    pub(crate) fn relayed(mut self, node: Arc<Shared>, max_hops: u8) -> Self {
        self.mesh = Some((node, max_hops.max(1)));
        self
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
        if let Some((node, max_hops)) = &self.mesh {
            return super::relay::start(
                node,
                super::relay::Call {
                    service: self.service,
                    op,
                    body,
                    oneway: false,
                    deadline: self.deadline,
                    max_hops: *max_hops,
                },
                self.members.clone(),
                C::decode,
            );
        }
        let opts = within_served_call(CallOptions::new().timeout(self.deadline));
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
    ///
    /// Relayed ([`Node::relay`](super::Node::relay)): per node of the mesh
    /// reached, whether its handler ran, once every reply is in or the
    /// deadline passed.
    pub async fn oneway(
        &self,
        op: &'static str,
        body: Result<Bytes, CodecError>,
    ) -> Vec<(NodeId, Result<(), CallError>)> {
        if let Some((node, max_hops)) = &self.mesh {
            let replies = super::relay::start(
                node,
                super::relay::Call {
                    service: self.service,
                    op,
                    body,
                    oneway: true,
                    deadline: self.deadline,
                    max_hops: *max_hops,
                },
                self.members.clone(),
                |_| Ok(()),
            );
            return futures_util::StreamExt::collect(replies).await;
        }
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

impl Fanout {
    /// Makes the server-stream call `op` with `body` on every member and
    /// merges their streams into one, each item tagged with the member it
    /// came from and decoded with `C`. A member's failure (at the open, or
    /// mid-stream) is one `Err` item for it, after which its stream is done.
    /// Every stream is bounded by the deadline. One hop only: relayed
    /// fan-outs carry unary and one-way calls.
    pub fn server_stream<C, R>(
        &self,
        op: &'static str,
        body: Result<Bytes, CodecError>,
    ) -> FanoutStream<R>
    where
        C: Codec<R>,
        R: Send + 'static,
    {
        let opts = within_served_call(CallOptions::new().timeout(self.deadline));
        // Room for a few items per member: a reader that falls behind
        // holds the members back through flow control, not memory.
        let (tx, items) = mpsc::channel(16 * self.members.len().max(1));
        let open = Arc::new(AtomicUsize::new(self.members.len()));
        let mut tasks = JoinSet::new();
        for (id, conn) in &self.members {
            let (id, conn, body, opts, tx) =
                (*id, conn.clone(), body.clone(), opts.clone(), tx.clone());
            let open = open.clone();
            tasks.spawn(async move {
                let label = conn.peer().label().clone();
                let opened = match body {
                    Ok(body) => conn.server_stream(op, body, opts).await,
                    Err(e) => Err(CallError::encode(op, label.clone(), e)),
                };
                match opened {
                    Ok(inbound) => {
                        let mut items = Streaming::<R>::new::<C>(inbound, op, label);
                        while let Some(item) = items.recv().await {
                            if tx.send((id, item)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send((id, Err(e))).await;
                    }
                }
                open.fetch_sub(1, Ordering::AcqRel);
            });
        }
        FanoutStream {
            items,
            _tasks: tasks,
            peers: self.peers(),
            open,
        }
    }
}

/// The merged streams of a server-stream [`Fanout`] call: every member's
/// items as they arrive, each tagged with its member. Ends when every
/// member's stream has ended (or failed, or passed the deadline); dropping
/// it cancels the streams still running.
pub struct FanoutStream<T> {
    items: mpsc::Receiver<(NodeId, Result<T, CallError>)>,
    /// Aborted, and so cancelled, with the stream.
    _tasks: JoinSet<()>,
    peers: Vec<NodeId>,
    open: Arc<AtomicUsize>,
}

impl<T> std::fmt::Debug for FanoutStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutStream")
            .field("peers", &self.peers)
            .field("pending", &self.pending())
            .finish()
    }
}

impl<T> FanoutStream<T> {
    /// The members the call went to.
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// Members whose stream has not ended yet.
    pub fn pending(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The next item from any member; `None` once every stream has ended.
    pub async fn recv(&mut self) -> Option<(NodeId, Result<T, CallError>)> {
        self.items.recv().await
    }
}

impl<T> Stream for FanoutStream<T> {
    type Item = (NodeId, Result<T, CallError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().items.poll_recv(cx)
    }
}
