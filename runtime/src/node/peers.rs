//! Typed, live peer sets: the peers whose service a node may call right now.
//!
//! Owns [`PeerSet`], its change notifications ([`PeerChanges`]) and the
//! [`Client`] trait generated clients implement so a set can hand out typed
//! clients. A set only reads what the node's driver publishes; it never
//! dials or closes anything.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::events::{NodeEvent, NodeEvents};
use super::Shared;
use crate::descriptor::Contract;
use crate::{CallError, CallOptions, Connection, NodeId};

/// A typed client that can be made from a connection: implemented by every
/// client `#[plexus::service]` and `.proto` generation emit (`ChatClient`…).
pub trait Client: Contract + Clone + Send + Sync + 'static {
    /// A client calling over `connection`.
    fn from_connection(connection: Connection) -> Self;

    /// The same client with `options` (deadline, metadata) on every call.
    fn with_call_options(self, options: CallOptions) -> Self;

    /// What [`Node::fanout`](super::Node::fanout) returns for this client:
    /// one method per unary and one-way operation, calling every member at
    /// once (`ChatFanout` for `ChatClient`).
    type Fanout: From<super::Fanout>;
}

/// The peers serving service `C` that this node is linked with: connected,
/// described, in a matching group (for group-scoped services) and allowed
/// by the role rules. Kept up to date by the node; every method reads the
/// current membership.
///
/// To follow changes without missing any, take [`PeerSet::changes`] first,
/// then read the membership.
pub struct PeerSet<C> {
    shared: Arc<Shared>,
    client: PhantomData<fn() -> C>,
}

impl<C> Clone for PeerSet<C> {
    fn clone(&self) -> Self {
        PeerSet {
            shared: self.shared.clone(),
            client: PhantomData,
        }
    }
}

impl<C: Client> std::fmt::Debug for PeerSet<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSet")
            .field("service", &C::DESCRIPTOR.full_name)
            .field("peers", &self.ids())
            .finish()
    }
}

impl<C: Client> PeerSet<C> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        PeerSet {
            shared,
            client: PhantomData,
        }
    }

    /// The service's full name (`package.Service`).
    pub fn service(&self) -> &'static str {
        C::DESCRIPTOR.full_name
    }

    /// The members' ids, in ascending order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.shared
            .members(C::DESCRIPTOR.full_name)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Every member with a client calling it.
    pub fn list(&self) -> Vec<(NodeId, C)> {
        self.shared
            .members(C::DESCRIPTOR.full_name)
            .into_iter()
            .map(|(id, conn)| (id, C::from_connection(conn)))
            .collect()
    }

    /// A client calling `peer`, if it is a member.
    pub fn get(&self, peer: NodeId) -> Option<C> {
        self.shared
            .members(C::DESCRIPTOR.full_name)
            .into_iter()
            .find(|(id, _)| *id == peer)
            .map(|(_, conn)| C::from_connection(conn))
    }

    /// A member's verified certificate, on a secured transport
    /// ([`PeerInfo::identity`](crate::PeerInfo::identity)); `None` when
    /// `peer` is not a member or its link has no certificate.
    pub fn identity(&self, peer: NodeId) -> Option<crate::transport::PeerIdentity> {
        self.shared
            .members(C::DESCRIPTOR.full_name)
            .into_iter()
            .find(|(id, _)| *id == peer)
            .and_then(|(_, conn)| conn.peer().identity().cloned())
    }

    /// The members with their connections, in ascending id order.
    pub(crate) fn members(&self) -> Vec<(NodeId, Connection)> {
        self.shared.members(C::DESCRIPTOR.full_name)
    }

    /// Runs `call` once on a client of every current member, all at once,
    /// and waits for every result: the "to all" send mode, and with a
    /// symmetric one-way service, a bus (each member gets each message once).
    /// Members joining meanwhile take no part. For replies as they come,
    /// bounded by a deadline, use [`Node::broadcast`](crate::Node::broadcast).
    pub async fn send_all<F, Fut, T>(&self, call: F) -> Vec<(NodeId, Result<T, CallError>)>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let sends = self.members().into_iter().map(|(id, conn)| {
            let reply = call(C::from_connection(conn));
            async move { (id, reply.await) }
        });
        futures_util::future::join_all(sends).await
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.shared.members(C::DESCRIPTOR.full_name).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins and leaves from now on.
    pub fn changes(&self) -> PeerChanges {
        PeerChanges {
            events: NodeEvents::new(self.shared.events.subscribe()),
            service: C::DESCRIPTOR.full_name,
        }
    }

    /// Waits until `done` holds for the members' ids (checked now and after
    /// every change); bound it with a timeout. Returns the ids that satisfied it.
    pub async fn wait_until(&self, mut done: impl FnMut(&[NodeId]) -> bool) -> Vec<NodeId> {
        let mut changes = self.changes();
        loop {
            let ids = self.ids();
            if done(&ids) {
                return ids;
            }
            if changes.next().await.is_none() {
                return self.ids();
            }
        }
    }
}

/// A peer joining or leaving a [`PeerSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// The peer became a member.
    Joined(NodeId),
    /// The peer stopped being a member (it left the group, was lost,
    /// stopped, or its connection closed).
    Left(NodeId),
}

/// Join/leave notifications of one [`PeerSet`]; also a
/// [`Stream`](futures_core::Stream).
#[derive(Debug)]
pub struct PeerChanges {
    events: NodeEvents,
    service: &'static str,
}

impl PeerChanges {
    /// The next change; `None` once the node is gone.
    pub async fn next(&mut self) -> Option<PeerChange> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for PeerChanges {
    type Item = PeerChange;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PeerChange>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.events).poll_next(cx) {
                Poll::Ready(Some(NodeEvent::ServiceLinked { peer, service }))
                    if service == this.service =>
                {
                    return Poll::Ready(Some(PeerChange::Joined(peer)))
                }
                Poll::Ready(Some(NodeEvent::ServiceUnlinked { peer, service }))
                    if service == this.service =>
                {
                    return Poll::Ready(Some(PeerChange::Left(peer)))
                }
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
