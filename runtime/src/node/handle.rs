//! The running node: [`Node`], the handle applications hold, and what it
//! owns (endpoint, discovery backend, driver task). Configuration is in
//! [`NodeBuilder`](super::NodeBuilder); the deciding is in the driver.

use super::*;

pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    pub(super) endpoint: Endpoint,
    /// Shared with the driver, which re-announces for newcomers.
    pub(super) discovery: Arc<dyn Discovery>,
    /// The current announcement; `None` once stopped. An async lock so that
    /// group changes are announced in the order they were made.
    pub(super) announcement: Arc<tokio::sync::Mutex<Option<Announcement>>>,
    pub(super) local_urls: Vec<Url>,
    pub(super) stop: CancellationToken,
    pub(super) task: Mutex<Option<JoinHandle<()>>>,
    /// The live topology page, when the node serves one.
    #[cfg(feature = "topology")]
    pub(super) topology: Option<super::topology::TopologyPage>,
}

impl Drop for Inner {
    /// Dropped without [`Node::stop`]: stop at once, like a crash. The
    /// discovery backend is dropped without a leave, so peers see this node
    /// go suspect, then lost; connections are aborted.
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        for conn in self.endpoint.connections() {
            conn.abort();
        }
        lock(&self.shared.links).clear();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let endpoint = self.endpoint.clone();
            runtime.spawn(async move { endpoint.shutdown().await });
        }
    }
}

/// A running node: an identity, its services, its peers. Cheap to clone;
/// dropping the last clone without [`Node::stop`] stops it like a crash.
#[derive(Clone)]
pub struct Node {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.shared.id)
            .field("name", &self.inner.shared.name())
            .field("group", &self.inner.shared.group())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts configuring a node called `name`.
    pub fn builder(name: impl Into<String>) -> NodeBuilder {
        NodeBuilder {
            name: name.into(),
            node_id: None,
            listen: Vec::new(),
            group: None,
            discovery: None,
            router: Router::new(),
            services: Vec::new(),
            scopes: Vec::new(),
            rules: Vec::new(),
            config: ConnectionConfig::default(),
            describe_timeout: Duration::from_secs(5),
            reconcile_every: Duration::from_secs(1),
            reflection: true,
            health: true,
            #[cfg(feature = "tls")]
            tls: None,
            key: None,
            allow: None,
            call_interceptors: Vec::new(),
            events: channel::channel(events::CAPACITY).0,
            follow_locally: false,
            hooks: hooks::Hooks::default(),
            heartbeat_window: Some(Duration::from_secs(3)),
            #[cfg(feature = "topology")]
            topology: None,
        }
    }

    /// The node's health table; see [`Endpoint::health`]. It reports
    /// `NOT_SERVING` from the moment [`stop`](Self::stop) or
    /// [`drain`](Self::drain) begins.
    pub fn health(&self) -> &crate::health::Health {
        self.inner.endpoint.health()
    }

    /// Stops in two steps, for load balancers and orchestrators: reports
    /// `NOT_SERVING` at once while still serving for `grace`, then
    /// [`stop`](Self::stop)s.
    pub async fn drain(&self, grace: Duration) -> Result<(), NodeError> {
        self.inner.endpoint.health().drain();
        tokio::time::sleep(grace).await;
        self.stop().await
    }

    /// The URL of the node's topology page (`http://127.0.0.1:PORT/`), when
    /// it serves one ([`NodeBuilder::topology_page`]).
    #[cfg(feature = "topology")]
    pub fn topology_url(&self) -> Option<&str> {
        self.inner.topology.as_ref().map(|p| p.url())
    }

    /// The node's id: the endpoint's, the one in its announcements.
    pub fn id(&self) -> NodeId {
        self.inner.shared.id
    }

    /// The node's name.
    pub fn name(&self) -> String {
        self.inner.shared.name()
    }

    /// Renames the node: announces the new name at once (peers report
    /// [`NodeEvent::PeerRenamed`]) and reports it here too.
    pub async fn rename(&self, name: impl Into<String>) -> Result<(), NodeError> {
        let to = name.into();
        let mut announcement = self.inner.announcement.lock().await;
        let Some(current) = announcement.as_mut() else {
            return Err(NodeError::Stopped {
                node: self.inner.shared.name(),
            });
        };
        let from = std::mem::replace(&mut *lock(&self.inner.shared.name), to.clone());
        if from == to {
            return Ok(());
        }
        current.name = to.clone();
        let result = self.inner.discovery.update(current.clone()).await;
        let _ = self.inner.shared.events.send(NodeEvent::PeerRenamed {
            peer: self.inner.shared.id,
            from,
            to,
        });
        result.map_err(|source| NodeError::Discovery {
            node: self.inner.shared.name(),
            source,
        })
    }

    /// The group the node is in.
    pub fn group(&self) -> Option<String> {
        self.inner.shared.group()
    }

    /// Where the node listens (with real ports for `:0`).
    pub fn local_urls(&self) -> &[Url] {
        &self.inner.local_urls
    }

    /// The endpoint underneath, for direct connections and its events.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// What the node tells peers about itself.
    pub fn description(&self) -> NodeDescription {
        self.inner.shared.describe()
    }

    /// The discovery backend's counters (sent, received, dropped…).
    pub fn discovery_stats(&self) -> DiscoveryStats {
        self.inner.discovery.stats()
    }

    /// Subscribes to peer and group events from now on.
    pub fn events(&self) -> NodeEvents {
        NodeEvents::new(self.inner.shared.events.subscribe())
    }

    /// Every peer this node has heard of, with its state, by id.
    pub fn known_peers(&self) -> Vec<KnownPeer> {
        self.inner.shared.known_peers()
    }

    /// The live set of peers serving `C` that this node is linked with.
    pub fn peers<C: Client>(&self) -> PeerSet<C> {
        PeerSet::new(self.inner.shared.clone())
    }

    /// Calls `call` with a client of every member of `peers::<C>()` at this
    /// moment (peers joining later do not take part). Each call runs on its
    /// own task, bounded by `deadline` (which also travels with the call);
    /// replies stream back as they arrive, and a peer that does not answer
    /// in time yields [`CallError::Timeout`].
    pub fn broadcast<C, F, Fut, T>(&self, deadline: Duration, call: F) -> Broadcast<T>
    where
        C: Client,
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, CallError>> + Send + 'static,
        T: Send + 'static,
    {
        let service = C::DESCRIPTOR.full_name;
        Broadcast::start(service, self.inner.shared.members(service), deadline, call)
    }

    /// Typed calls to every member of `peers::<C>()` at this moment, each
    /// bounded by `deadline`: `node.fanout::<ChatClient>(deadline).post(msg)`
    /// is a [`Broadcast`] of the replies, with the request encoded once.
    /// Unary and one-way operations only; for anything else use
    /// [`broadcast`](Self::broadcast) with a closure.
    pub fn fanout<C: Client>(&self, deadline: Duration) -> C::Fanout {
        let service = C::DESCRIPTOR.full_name;
        Fanout::new(service, self.inner.shared.members(service), deadline).into()
    }

    /// Typed calls relayed to every node of the mesh of service `C`, not
    /// only this node's own members: each member runs its handler and
    /// relays the call on to its members (never back where it came from),
    /// each node answers once however many ways the call reaches it, and
    /// the replies stream back tagged with the node that produced them —
    /// `node.relay::<ChatClient>(deadline).post(msg)`. At most
    /// [`DEFAULT_MAX_HOPS`] hops from here; see
    /// [`relay_within`](Self::relay_within). Unary and one-way operations
    /// only. Nodes joining meanwhile may or may not be reached.
    pub fn relay<C: Client>(&self, deadline: Duration) -> C::Fanout {
        self.relay_within::<C>(deadline, DEFAULT_MAX_HOPS)
    }

    /// [`relay`](Self::relay), at most `max_hops` hops from this node
    /// (1 is the members only).
    pub fn relay_within<C: Client>(&self, deadline: Duration, max_hops: u8) -> C::Fanout {
        let service = C::DESCRIPTOR.full_name;
        Fanout::new(service, self.inner.shared.members(service), deadline)
            .relayed(self.inner.shared.clone(), max_hops)
            .into()
    }

    /// Joins `group`, leaving the current one if any: announces the change,
    /// disconnects group-scoped links to peers of the old group and links
    /// the new one's.
    pub async fn join(&self, group: impl Into<String>) -> Result<(), NodeError> {
        self.set_group(Some(group.into())).await
    }

    /// Same as [`Node::join`]: moves to `group`.
    pub async fn switch(&self, group: impl Into<String>) -> Result<(), NodeError> {
        self.set_group(Some(group.into())).await
    }

    /// Leaves the current group; only global services stay linked.
    pub async fn leave_group(&self) -> Result<(), NodeError> {
        self.set_group(None).await
    }

    async fn set_group(&self, to: Option<String>) -> Result<(), NodeError> {
        self.inner.shared.change_group(to).await
    }

    /// Asks `peer` to join this node's group. It answers through its
    /// invite hook ([`NodeBuilder::on_invite`]): `Ok(())` once it has joined
    /// (and announced it), [`NodeError::InviteDeclined`] with its reason if
    /// it declined. A peer this node holds no connection to (it is in
    /// another group, say) is dialed for the invitation at the endpoints
    /// it announced, and the connection closed after.
    pub async fn invite(&self, peer: NodeId) -> Result<(), NodeError> {
        hooks::invite(&self.inner.shared, &self.inner.endpoint, peer).await
    }

    /// Stops gracefully: stops tracking peers and linking new ones,
    /// announces a leave (peers see it at once), lets calls in flight in both
    /// directions finish (up to the connection drain timeout) and closes
    /// every connection and listener. Calling it again does nothing.
    pub async fn stop(&self) -> Result<(), NodeError> {
        self.inner.endpoint.health().drain();
        let Some(_) = self.inner.announcement.lock().await.take() else {
            return Ok(());
        };
        // The driver goes first: were it still running after the leave, a
        // peer closing its link on hearing the leave could be redialed and
        // linked again by a node that has already said goodbye.
        self.inner.shared.stopping.store(true, Ordering::Release);
        self.inner.stop.cancel();
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let left = self.inner.discovery.leave().await;
        self.inner.endpoint.shutdown().await;
        lock(&self.inner.shared.links).clear();
        let shared = &self.inner.shared;
        super::lifecycle::node_state(&shared.name(), shared.id, "stopped");
        #[cfg(feature = "topology")]
        if let Some(page) = &self.inner.topology {
            page.stop();
        }
        left.map_err(|source| NodeError::Discovery {
            node: self.inner.shared.name(),
            source,
        })
    }
}
