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

use futures_core::Stream;
use tokio::task::{Id, JoinSet};

use super::peers::Client;
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
        let mut tasks = JoinSet::new();
        let mut by_task = HashMap::new();
        let mut peers = Vec::with_capacity(members.len());
        let op: Arc<str> = format!("{service} (broadcast)").into();
        for (id, conn) in members {
            let label = conn.peer().label().clone();
            // The deadline travels with each call, so the peer stops working
            // on it too; the outer timeout also bounds closures that make
            // several calls.
            let client =
                C::from_connection(conn).with_call_options(CallOptions::new().timeout(deadline));
            let reply = call(client);
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
