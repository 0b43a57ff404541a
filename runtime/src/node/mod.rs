//! Nodes: services that find each other and connect by themselves.
//!
//! A [`Node`] is one process-level identity: an [`Endpoint`] listening on one
//! or more URLs and serving several services, a [`Discovery`] backend
//! announcing it, and a driver that tracks peers, dials them, exchanges
//! service descriptions over the built-in `plexus.Node/describe` operation,
//! and links services by group, scope and role. Applications see the
//! result as typed, live [`PeerSet`]s, a [`broadcast`](Node::broadcast) to
//! every member, and a stream of [`NodeEvent`]s. [`Actor`] runs a service's
//! `&mut` state on its own task.
//!
//! This module never parses bytes off the wire or opens sockets itself: it
//! drives the endpoint and the discovery backend.
//!
//! ```no_run
//! # use plexus::{Reject, Node, discovery::Beacon};
//! # #[plexus::service(package = "chat")]
//! # pub trait Chat { async fn post(&self, text: String) -> Result<u64, Reject>; }
//! # struct Room;
//! # impl Chat for Room { async fn post(&self, _t: String) -> Result<u64, Reject> { Ok(0) } }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use futures_util::StreamExt;
//!
//! let node = Node::builder("alice")
//!     .group("lobby")
//!     .discovery(Beacon::loopback())
//!     .serve(ChatHandler::new(Room))
//!     .start()
//!     .await?;
//! let peers = node.peers::<ChatClient>();
//! peers.wait_until(|ids| !ids.is_empty()).await;
//! let mut replies = node.broadcast(Duration::from_secs(1), |chat: ChatClient| async move {
//!     chat.post("hello".into()).await
//! });
//! while let Some((peer, reply)) = replies.next().await {
//!     println!("{peer}: {reply:?}");
//! }
//! node.stop().await?;
//! # Ok(()) }
//! ```
//!
//! The full picture — connection rules, scopes, roles, bounds — is in
//! `docs/NODES.md`.

mod actor;
mod broadcast;
mod description;
mod driver;
mod events;
pub(crate) mod handle;
mod hooks;
mod lifecycle;
mod locality;
mod peers;
mod relay;
#[cfg(feature = "topology")]
mod topology;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast as channel, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::actor::{Actor, ActorError, ActorFuture, DEFAULT_MAILBOX};
pub use self::broadcast::{Broadcast, Fanout, FanoutStream};
pub use self::description::{
    services_link, MethodInfo, NodeDescription, RoleRule, Scope, ServiceInfo, DESCRIBE_OP,
};
use self::driver::{Driver, Input};
pub use self::events::{NodeEvent, NodeEvents};
use self::handle::Inner;
pub(crate) use self::handle::Node;
pub use self::hooks::{Invitation, LinkCandidate, INVITE_DECLINED, INVITE_OP};
pub use self::peers::{Client, PeerChange, PeerChanges, PeerSet};
pub use self::relay::{DEFAULT_MAX_HOPS, RELAY_OP};
use crate::codec::{decode_request, encode_reply, MsgPack};
use crate::descriptor::{Contract, ServiceDescriptor};
use crate::discovery::{
    Announcement, Beacon, Discovery, DiscoveryError, DiscoveryStats, PeerState, MAX_SERVICES,
};
use crate::router::IntoRouter;
use crate::transport::Url;
use crate::wire::SystemCode;
use crate::{
    CallError, ConnectError, Connection, ConnectionConfig, Endpoint, NodeId, Reject, Router,
};

/// Why a node could not start, or could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A listener could not be opened.
    #[error("node `{node}` cannot listen on {url}: {source}")]
    Listen {
        /// The node's name.
        node: String,
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The discovery backend failed.
    #[error("node `{node}`: {source}")]
    Discovery {
        /// The node's name.
        node: String,
        /// Why.
        #[source]
        source: DiscoveryError,
    },
    /// The topology page could not start.
    #[cfg(feature = "topology")]
    #[error("node `{node}`: {source}")]
    Topology {
        /// The node's name.
        node: String,
        /// Why.
        #[source]
        source: crate::observe::topology::TopologyError,
    },
    /// A role that the service's contract does not declare.
    #[error("service {service} declares roles {declared:?}; `{role}` is not one of them (add it to the contract's `roles`, or pick a declared one)")]
    UnknownRole {
        /// The service.
        service: String,
        /// The role given.
        role: String,
        /// The roles the contract declares.
        declared: Vec<String>,
    },
    /// A scope or rule was given for a service the node neither serves nor uses.
    #[error("{what} given for service {service}, which this node neither serves nor uses (add it with serve(..) or uses::<..>() first)")]
    UnknownService {
        /// The service.
        service: String,
        /// What was given (`scope`, `connect_rule`).
        what: &'static str,
    },
    /// The same service was added twice.
    #[error(
        "service {service} is added twice to node `{node}`; a node takes one role per service"
    )]
    DuplicateService {
        /// The node's name.
        node: String,
        /// The service.
        service: String,
    },
    /// More services than an announcement can list.
    #[error("node `{node}` takes part in {count} services; announcements list at most {max}")]
    TooManyServices {
        /// The node's name.
        node: String,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The node has been stopped.
    #[error("node `{node}` is stopped")]
    Stopped {
        /// The node's name.
        node: String,
    },
    /// An invitation needs a group to invite to.
    #[error("node `{node}` is in no group; join one before inviting peers to it")]
    NotInGroup {
        /// The node's name.
        node: String,
    },
    /// The peer to invite is not known to this node (not discovered, or
    /// forgotten after it was lost).
    #[error("node `{node}` knows no peer {peer}; it must be discovered before it can be invited")]
    UnknownPeer {
        /// The node's name.
        node: String,
        /// The peer.
        peer: NodeId,
    },
    /// The invited peer declined to join.
    #[error("peer {peer} declined the invitation to group `{group}`: {reason}")]
    InviteDeclined {
        /// The peer.
        peer: NodeId,
        /// The group it was invited to.
        group: String,
        /// Its reason.
        reason: String,
    },
    /// The invitation could not be delivered or answered.
    #[error("inviting peer {peer} to group `{group}` failed: {reason}")]
    InviteFailed {
        /// The peer.
        peer: NodeId,
        /// The group.
        group: String,
        /// What went wrong (dialing it, or the call).
        reason: String,
    },
}

/// A peer as this node knows it right now ([`Node::known_peers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownPeer {
    /// Its node id.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its group.
    pub group: Option<String>,
    /// Alive, suspect, lost or left.
    pub state: PeerState,
    /// Whether this node holds a connection to it.
    pub connected: bool,
    /// The services it takes part in (from its description, or its
    /// announcement until the description arrives).
    pub services: Vec<String>,
    /// The services of ours it is linked for (it is in their peer sets).
    pub linked: Vec<String>,
}

/// State the driver publishes and handles read: the node's own description,
/// the peer sets, the peer table snapshot, the event channel.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    name: Mutex<String>,
    incarnation: u64,
    pub(crate) services: Vec<ServiceInfo>,
    group: Mutex<Option<String>>,
    /// Service full name → linked peers and the connection to each.
    links: Mutex<HashMap<String, BTreeMap<NodeId, Connection>>>,
    known: Mutex<BTreeMap<NodeId, KnownPeer>>,
    pub(crate) events: channel::Sender<NodeEvent>,
    pub(crate) inputs: mpsc::UnboundedSender<Input>,
    /// Set when [`Node::stop`] begins: from then on no peer is described
    /// (linked) over a new connection.
    stopping: AtomicBool,
    /// The application's hooks: invitations, per-peer link decisions.
    pub(crate) hooks: hooks::Hooks,
    /// Broadcasts relayed through this node recently (mesh relay).
    pub(crate) relayed: relay::Seen,
    /// What changing the group needs, set once the node has started.
    control: std::sync::OnceLock<Control>,
}

/// The discovery backend and the current announcement: what announcing a
/// change of this node needs.
struct Control {
    discovery: Arc<dyn Discovery>,
    /// `None` once stopped. An async lock so that changes are announced in
    /// the order they were made.
    announcement: Arc<tokio::sync::Mutex<Option<Announcement>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a plain map update; a panic cannot tear one.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn group(&self) -> Option<String> {
        lock(&self.group).clone()
    }

    /// Moves this node to group `to` (`None`: no group): announces the
    /// change through discovery at once, emits `GroupChanged` and has the
    /// driver re-check every peer. Even if announcing fails the node is in
    /// the new group; peers learn it when they connect (descriptions carry
    /// it).
    pub(crate) async fn change_group(&self, to: Option<String>) -> Result<(), NodeError> {
        let stopped = || NodeError::Stopped { node: self.name() };
        let control = self.control.get().ok_or_else(stopped)?;
        let mut announcement = control.announcement.lock().await;
        let Some(current) = announcement.as_mut() else {
            return Err(stopped());
        };
        let from = std::mem::replace(&mut *lock(&self.group), to.clone());
        if from == to {
            return Ok(());
        }
        current.group = to.clone();
        let result = control.discovery.update(current.clone()).await;
        let _ = self.inputs.send(Input::GroupChanged { from, to });
        result.map_err(|source| NodeError::Discovery {
            node: self.name(),
            source,
        })
    }

    pub(crate) fn name(&self) -> String {
        lock(&self.name).clone()
    }

    pub(crate) fn describe(&self) -> NodeDescription {
        NodeDescription {
            node_id: self.id.to_string(),
            name: self.name(),
            group: self.group(),
            incarnation: self.incarnation,
            services: self.services.clone(),
        }
    }

    pub(crate) fn members(&self, service: &str) -> Vec<(NodeId, Connection)> {
        lock(&self.links)
            .get(service)
            .map(|m| m.iter().map(|(id, c)| (*id, c.clone())).collect())
            .unwrap_or_default()
    }

    /// Makes `peer` a member of exactly the sets named in `services`.
    pub(crate) fn set_links(
        &self,
        peer: NodeId,
        services: &std::collections::BTreeSet<String>,
        conn: Option<Connection>,
    ) {
        let mut links = lock(&self.links);
        for (name, members) in links.iter_mut() {
            match (&conn, services.contains(name)) {
                (Some(c), true) => {
                    members.insert(peer, c.clone());
                }
                _ => {
                    members.remove(&peer);
                }
            }
        }
    }

    /// Every peer this node has heard of, with its state, by id.
    pub(crate) fn known_peers(&self) -> Vec<KnownPeer> {
        lock(&self.known).values().cloned().collect()
    }

    pub(crate) fn set_known(&self, peer: KnownPeer) {
        lock(&self.known).insert(peer.id, peer);
    }
}

/// One entry of the builder's service list.
struct Participation {
    descriptor: &'static ServiceDescriptor,
    role: Option<String>,
    serves: bool,
}

/// Configures a [`Node`]; see [`Node::builder`].
#[must_use]
pub struct NodeBuilder {
    name: String,
    node_id: Option<NodeId>,
    listen: Vec<String>,
    group: Option<String>,
    discovery: Option<Box<dyn Discovery>>,
    router: Router,
    services: Vec<Participation>,
    scopes: Vec<(&'static str, Scope)>,
    rules: Vec<(&'static str, RoleRule)>,
    config: ConnectionConfig,
    describe_timeout: Duration,
    reconcile_every: Duration,
    reflection: bool,
    health: bool,
    #[cfg(feature = "tls")]
    tls: Option<crate::transport::TlsConfig>,
    key: Option<crate::wire::key::SessionKey>,
    allow: Option<crate::access::AllowList>,
    call_interceptors: Vec<
        Box<
            dyn FnOnce(crate::endpoint::EndpointBuilder) -> crate::endpoint::EndpointBuilder + Send,
        >,
    >,
    events: channel::Sender<NodeEvent>,
    follow_locally: bool,
    hooks: hooks::Hooks,
    heartbeat_window: Option<Duration>,
    /// The topology page's address, and the interceptor counting calls
    /// per link for it.
    #[cfg(feature = "topology")]
    topology: Option<(String, topology::LinkCounter)>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services: Vec<_> = self
            .services
            .iter()
            .map(|p| (p.descriptor.full_name, p.role.as_deref(), p.serves))
            .collect();
        f.debug_struct("NodeBuilder")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("group", &self.group)
            .field("services", &services)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Listens on `url` (call again for more). Without any, the node listens
    /// on `tcp://127.0.0.1:0`.
    pub fn listen(mut self, url: impl Into<String>) -> Self {
        self.listen.push(url.into());
        self
    }

    /// Listens and dials on `tls://` with `tls` (server and client sides,
    /// mutual when it requires client certificates; [`TlsConfig::mutual`](crate::transport::TlsConfig::mutual)
    /// builds both for a mesh node). Without a [`listen`](Self::listen) URL
    /// the node then listens on `tls://127.0.0.1:0`, and it announces
    /// `tls://` endpoints, so its peers reach it over TLS. The peers'
    /// certificates are in [`PeerInfo::identity`](crate::PeerInfo::identity)
    /// on every link, and an [`allow`](Self::allow) list decides which are admitted.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::transport::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The group's session key: every connection of the node proves it in
    /// its handshake (see [`EndpointBuilder::session_key`](crate::endpoint::EndpointBuilder::session_key)),
    /// and the node's discovery uses it too — beacon announcements are
    /// tagged with it and checked for freshness, etcd records are signed with
    /// it. A node without the key can neither be linked nor announce itself
    /// to this group.
    pub fn session_key(mut self, key: crate::wire::key::SessionKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Admits as peers only the nodes whose verified certificate `list`
    /// admits (both ways; see [`EndpointBuilder::allow`](crate::endpoint::EndpointBuilder::allow)).
    /// Replace it at run time with `node.endpoint().set_allow_list(..)`.
    pub fn allow(mut self, list: crate::access::AllowList) -> Self {
        self.allow = Some(list);
        self
    }

    /// Runs `interceptor` before the handler of every call peers make to
    /// this node (an authorization [`Policy`](crate::access::Policy), say);
    /// see [`Interceptor`](crate::intercept::Interceptor). The node's own
    /// descriptor exchange is never intercepted.
    pub fn intercept(mut self, interceptor: impl crate::intercept::Interceptor) -> Self {
        self.router = std::mem::take(&mut self.router).intercept(interceptor);
        self
    }

    /// Serves a live page of the mesh this node sees on `addr`, a loopback
    /// `host:port` (`127.0.0.1:0` picks a port; [`Node::topology_url`] says
    /// which): the nodes it knows with their groups, roles, services and
    /// liveness, its links and the call rate on each, updated as they
    /// change. Feature `topology`; see `docs/OBSERVABILITY.md`.
    #[cfg(feature = "topology")]
    pub fn topology_page(mut self, addr: impl Into<String>) -> Self {
        if let Some((old, _)) = &mut self.topology {
            *old = addr.into();
            return self;
        }
        // The page counts calls per link with an interceptor on each side.
        let counter = topology::LinkCounter::default();
        self.topology = Some((addr.into(), counter.clone()));
        self.intercept(counter.clone()).intercept_calls(counter)
    }

    /// Runs `interceptor` around every call this node makes to its peers;
    /// see [`CallInterceptor`](crate::intercept::CallInterceptor).
    pub fn intercept_calls(mut self, interceptor: impl crate::intercept::CallInterceptor) -> Self {
        self.call_interceptors
            .push(Box::new(move |b: crate::endpoint::EndpointBuilder| {
                b.intercept_calls(interceptor)
            }));
        self
    }

    /// The group to be in from the start.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// How the node finds peers. Default: [`Beacon::loopback()`], which
    /// reaches only this host.
    pub fn discovery(mut self, discovery: impl Discovery) -> Self {
        self.discovery = Some(Box::new(discovery));
        self
    }

    /// Uses a fixed node id instead of a random one.
    pub fn node_id(mut self, id: NodeId) -> Self {
        self.node_id = Some(id);
        self
    }

    /// Serves `service` (a generated handler, or a router carrying
    /// descriptors) with no role. Its contracts are announced and linked with
    /// peers; operations of a router without descriptors are served but not
    /// announced.
    pub fn serve(self, service: impl IntoRouter) -> Self {
        self.serve_in(service.into_router(), None)
    }

    /// Serves `service` in `role`, one of the roles its contract declares.
    pub fn serve_as(self, service: impl IntoRouter, role: impl Into<String>) -> Self {
        self.serve_in(service.into_router(), Some(role.into()))
    }

    fn serve_in(mut self, router: Router, role: Option<String>) -> Self {
        for descriptor in router.descriptors() {
            self.services.push(Participation {
                descriptor,
                role: role.clone(),
                serves: true,
            });
        }
        self.router = std::mem::take(&mut self.router).add(router);
        self
    }

    /// Takes part in service `C` as a caller only: peers serving it are
    /// linked into [`Node::peers`] without this node serving it.
    pub fn uses<C: Contract>(self) -> Self {
        self.uses_in(C::DESCRIPTOR, None)
    }

    /// Like [`NodeBuilder::uses`], in `role`.
    pub fn uses_as<C: Contract>(self, role: impl Into<String>) -> Self {
        self.uses_in(C::DESCRIPTOR, Some(role.into()))
    }

    fn uses_in(mut self, descriptor: &'static ServiceDescriptor, role: Option<String>) -> Self {
        self.services.push(Participation {
            descriptor,
            role,
            serves: false,
        });
        self
    }

    /// Sets the scope of service `C` on this node (default
    /// [`Scope::Group`]). A link is global only when both sides say so.
    pub fn scope<C: Contract>(mut self, scope: Scope) -> Self {
        self.scopes.push((C::DESCRIPTOR.full_name, scope));
        self
    }

    /// Adds a rule for service `C`: peers in role `from` connect to peers in
    /// role `to`. With rules, only pairs some rule allows are linked (in
    /// either direction: the link is one connection both use); without any,
    /// every pair is. Rules of both sides count.
    pub fn connect_rule<C: Contract>(
        mut self,
        from: impl Into<String>,
        to: impl Into<String>,
    ) -> Self {
        self.rules.push((
            C::DESCRIPTOR.full_name,
            RoleRule {
                from: from.into(),
                to: to.into(),
            },
        ));
        self
    }

    /// Connection tuning for every connection of the node.
    pub fn connection_config(mut self, config: ConnectionConfig) -> Self {
        self.config = config;
        self
    }

    /// Bound on dialing a peer and exchanging descriptions (default 5 s).
    pub fn describe_timeout(mut self, timeout: Duration) -> Self {
        self.describe_timeout = timeout;
        self
    }

    /// How often the node retries failed dials and re-checks every peer
    /// (default 1 s). Discovery events act at once; this only bounds retries.
    pub fn reconcile_interval(mut self, every: Duration) -> Self {
        self.reconcile_every = every.max(Duration::from_millis(1));
        self
    }

    /// Does not serve `plexus.Reflection/describe` (see [`crate::reflection`]).
    pub fn without_reflection(mut self) -> Self {
        self.reflection = false;
        self
    }

    /// Does not serve `plexus.Health/check` and `/watch` (see [`crate::health`]).
    pub fn without_health(mut self) -> Self {
        self.health = false;
        self
    }

    /// Subscribes to the node's events before it starts, so that nothing is
    /// missed: the first is [`NodeEvent::Initialized`], sent once the node
    /// listens and announces, before any peer event.
    pub fn events(&self) -> NodeEvents {
        NodeEvents::new(self.events.subscribe())
    }

    /// While the node is in no group, it joins the group of the first
    /// peer on the same host that is in one (LightImage's *follow
    /// locally*): a tool started next to an application joins whatever the
    /// application is doing. A peer is on this host when its endpoints are
    /// (`unix://`, `inproc://`, a loopback address, or an address this host
    /// can bind). Once in a group the node stays there until told
    /// otherwise.
    pub fn follow_locally(mut self) -> Self {
        self.follow_locally = true;
        self
    }

    /// Decides on invitations ([`Node::invite`]) from peers: return `Ok(())`
    /// to join the inviter's group (leaving the current one), `Err(reason)`
    /// to decline. Without a hook (or [`accept_invites`](Self::accept_invites))
    /// every invitation is declined. The hook runs on the connection's task:
    /// keep it short.
    pub fn on_invite<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Invitation) -> Result<(), String> + Send + Sync + 'static,
    {
        self.hooks.invite = Some(Arc::new(hook));
        self
    }

    /// Accepts every invitation ([`Node::invite`]), as LightImage nodes do.
    pub fn accept_invites(self) -> Self {
        self.on_invite(|_| Ok(()))
    }

    /// A per-peer say on links, beside the declarative connect rules: for
    /// every service that would link with a peer (same contract, scope and
    /// role rules agree), `hook` decides whether it does. Refused, the peer
    /// stays out of that peer set; refused for every service, the node
    /// holds no connection to it, and a peer that dials anyway is told so
    /// in the describe exchange (and redials only after ten reconcile
    /// intervals). The hook is asked again at every reconcile, so it may
    /// change its mind (an allow-list edited at run time). Called on the
    /// node's driver: keep it short and never block.
    pub fn allow_connection<F>(mut self, hook: F) -> Self
    where
        F: Fn(&LinkCandidate<'_>) -> bool + Send + Sync + 'static,
    {
        self.hooks.allow = Some(Arc::new(hook));
        self
    }

    /// Whether service traffic counts as a heartbeat (default: yes, with a
    /// window of 3 s). A peer whose announcements stop arriving — say
    /// multicast is lost on the way — while its connection to this node
    /// keeps answering is not reported suspect or lost, and its connection
    /// stays up: when discovery reports it suspect the connection is probed
    /// (a ping), and the peer is kept if the connection heard it within
    /// `window` and, when discovery reports it lost, has answered since. A
    /// kept peer is judged by that connection from then on (probed when
    /// idle) and reported lost when a probe goes unanswered for half the
    /// window, or the connection closes. A dead peer is still reported lost
    /// on discovery's time. `None` goes by discovery alone.
    pub fn heartbeat_window(mut self, window: Option<Duration>) -> Self {
        self.heartbeat_window = window.map(|w| w.max(Duration::from_millis(10)));
        self
    }

    fn service_infos(&self) -> Result<Vec<ServiceInfo>, NodeError> {
        let mut infos: Vec<ServiceInfo> = Vec::new();
        for p in &self.services {
            let d = p.descriptor;
            if infos.iter().any(|s| s.full_name == d.full_name) {
                return Err(NodeError::DuplicateService {
                    node: self.name.clone(),
                    service: d.full_name.into(),
                });
            }
            if let Some(role) = &p.role {
                check_role(d, role)?;
            }
            infos.push(ServiceInfo::new(d, p.role.clone(), Scope::Group, p.serves));
        }
        for (service, scope) in &self.scopes {
            let info = infos
                .iter_mut()
                .find(|s| s.full_name == *service)
                .ok_or_else(|| NodeError::UnknownService {
                    service: (*service).into(),
                    what: "scope",
                })?;
            info.scope = *scope;
        }
        for (service, rule) in &self.rules {
            let (info, descriptor) = infos
                .iter_mut()
                .zip(&self.services)
                .find(|(s, _)| s.full_name == *service)
                .ok_or_else(|| NodeError::UnknownService {
                    service: (*service).into(),
                    what: "connect_rule",
                })?;
            check_role(descriptor.descriptor, &rule.from)?;
            check_role(descriptor.descriptor, &rule.to)?;
            info.rules.push(rule.clone());
        }
        if infos.len() > MAX_SERVICES {
            return Err(NodeError::TooManyServices {
                node: self.name.clone(),
                count: infos.len(),
                max: MAX_SERVICES,
            });
        }
        Ok(infos)
    }

    /// Listens, starts discovery and the driver, and returns the running node.
    pub async fn start(self) -> Result<Node, NodeError> {
        let services = self.service_infos()?;
        let id = self.node_id.unwrap_or_else(NodeId::random);
        let events = self.events.clone();
        let (inputs, inputs_rx) = mpsc::unbounded_channel();
        let announcement = Announcement::new(id, self.name.clone());
        let shared = Arc::new(Shared {
            id,
            name: Mutex::new(self.name.clone()),
            incarnation: announcement.incarnation,
            services,
            group: Mutex::new(self.group.clone()),
            links: Mutex::new(HashMap::new()),
            known: Mutex::new(BTreeMap::new()),
            events,
            inputs,
            stopping: AtomicBool::new(false),
            hooks: self.hooks.clone(),
            relayed: relay::Seen::default(),
            control: std::sync::OnceLock::new(),
        });
        lock(&shared.links).extend(
            shared
                .services
                .iter()
                .map(|s| (s.full_name.clone(), BTreeMap::new())),
        );
        let listening = Arc::new(std::sync::OnceLock::new());
        let services_router = self.router.clone();
        #[cfg(feature = "topology")]
        let topology = match self.topology {
            Some((addr, counter)) => Some(
                topology::TopologyPage::serve(
                    &shared,
                    listening.clone(),
                    &addr,
                    NodeEvents::new(shared.events.subscribe()),
                    counter,
                )
                .await
                .map_err(|source| NodeError::Topology {
                    node: self.name.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let mut endpoint = Endpoint::builder()
            .node_id(id)
            .config(self.config)
            .serve(self.router)
            .serve(describe_route(Arc::downgrade(&shared)))
            .serve(hooks::invite_route(Arc::downgrade(&shared)))
            .serve(relay::route(Arc::downgrade(&shared), services_router))
            .node_reflection(node_reflection(Arc::downgrade(&shared), listening.clone()));
        if !self.reflection {
            endpoint = endpoint.without_reflection();
        }
        if !self.health {
            endpoint = endpoint.without_health();
        }
        #[cfg(feature = "tls")]
        let secured = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let secured = false;
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls {
            endpoint = endpoint.tls(tls);
        }
        if let Some(key) = &self.key {
            endpoint = endpoint.session_key(key.clone());
        }
        if let Some(list) = self.allow {
            endpoint = endpoint.allow(list);
        }
        for add in self.call_interceptors {
            endpoint = add(endpoint);
        }
        let endpoint = endpoint.build();
        let urls = if !self.listen.is_empty() {
            self.listen
        } else if secured {
            vec!["tls://127.0.0.1:0".to_string()]
        } else {
            vec!["tcp://127.0.0.1:0".to_string()]
        };
        let mut local_urls = Vec::new();
        for url in urls {
            match endpoint.listen(url.as_str()).await {
                // Every address of a host name is announced, so peers can
                // try each in turn.
                Ok(l) => local_urls.extend(l.local_urls().iter().cloned()),
                Err(source) => {
                    endpoint.shutdown().await;
                    return Err(NodeError::Listen {
                        node: self.name,
                        url,
                        source,
                    });
                }
            }
        }
        let mut announcement = announcement;
        announcement.endpoints = local_urls.iter().map(|u| u.to_string()).collect();
        let _ = listening.set(announcement.endpoints.clone());
        announcement.services = shared
            .services
            .iter()
            .map(|s| s.full_name.clone())
            .collect();
        announcement.group = self.group;
        let mut discovery: Box<dyn Discovery> = match self.discovery {
            Some(d) => d,
            None => Box::new(Beacon::loopback()),
        };
        if let Some(key) = &self.key {
            discovery.use_key(key);
        }
        let discovery: Arc<dyn Discovery> = Arc::from(discovery);
        let discovered = match discovery.start(announcement.clone()).await {
            Ok(events) => events,
            Err(source) => {
                endpoint.shutdown().await;
                return Err(NodeError::Discovery {
                    node: self.name,
                    source,
                });
            }
        };
        let stop = CancellationToken::new();
        let announcement = Arc::new(tokio::sync::Mutex::new(Some(announcement)));
        let _ = shared.control.set(Control {
            discovery: discovery.clone(),
            announcement: announcement.clone(),
        });
        let _ = shared.events.send(NodeEvent::Initialized {
            node: id,
            name: shared.name(),
            urls: local_urls.iter().map(|u| u.to_string()).collect(),
        });
        let driver = Driver::new(
            shared.clone(),
            endpoint.clone(),
            discovery.clone(),
            announcement.clone(),
            driver::Settings {
                describe_timeout: self.describe_timeout,
                reconcile_every: self.reconcile_every,
                follow_locally: self.follow_locally,
                heartbeat_window: self.heartbeat_window,
            },
        );
        lifecycle::watch_node(&shared);
        let task = tokio::spawn(driver.run(discovered, inputs_rx, stop.clone()));
        lifecycle::node_state(&shared.name(), id, "started");
        Ok(Node {
            inner: Arc::new(Inner {
                shared,
                endpoint,
                discovery,
                announcement,
                local_urls,
                stop,
                task: Mutex::new(Some(task)),
                #[cfg(feature = "topology")]
                topology,
            }),
        })
    }
}

/// The node's part of its reflection: name, group, endpoints, roles.
fn node_reflection(
    shared: Weak<Shared>,
    listening: Arc<std::sync::OnceLock<Vec<String>>>,
) -> crate::reflection::NodeInfo {
    Arc::new(move || {
        let shared = shared.upgrade()?;
        Some(crate::reflection::NodeReflection {
            name: shared.name(),
            group: shared.group(),
            incarnation: shared.incarnation,
            endpoints: listening.get().cloned().unwrap_or_default(),
            participation: shared
                .services
                .iter()
                .map(|s| crate::reflection::Participation {
                    service: s.full_name.clone(),
                    role: s.role.clone(),
                    scope: match s.scope {
                        // The wire keeps the scope's first name.
                        Scope::Group => "session".into(),
                        Scope::Global => "global".into(),
                    },
                    serves: s.serves,
                })
                .collect(),
        })
    })
}

fn check_role(d: &ServiceDescriptor, role: &str) -> Result<(), NodeError> {
    if d.roles.contains(&role) {
        Ok(())
    } else {
        Err(NodeError::UnknownRole {
            service: d.full_name.into(),
            role: role.into(),
            declared: d.roles.iter().map(|r| (*r).to_owned()).collect(),
        })
    }
}

/// The built-in `plexus.Node/describe` operation: takes the caller's
/// description, hands the connection to the driver, returns ours.
fn describe_route(shared: Weak<Shared>) -> Router {
    Router::new().unary(DESCRIBE_OP, move |ctx, body: Bytes| {
        let shared = shared.upgrade();
        async move {
            let shared = shared
                .filter(|s| !s.stopping.load(Ordering::Acquire))
                .ok_or_else(|| Reject::new(SystemCode::GoingAway as u32, "the node is stopping"))?;
            let theirs: NodeDescription = decode_request::<MsgPack, _>(body)?;
            let caller = ctx.peer().node_id();
            if theirs.id() != Some(caller) {
                return Err(Reject::new(
                    SystemCode::InvalidPayload as u32,
                    format!(
                        "the description names node {:?} but the connection's handshake said {caller}",
                        theirs.node_id
                    ),
                ));
            }
            if let Some(refusal) = hooks::describe_refusal(&shared, &theirs, ctx.peer().remote()) {
                return Err(refusal);
            }
            let ours = shared.describe();
            let _ = shared.inputs.send(Input::Described {
                conn: ctx.connection().clone(),
                desc: theirs,
            });
            encode_reply::<MsgPack, _>(&ours)
        }
    })
}
