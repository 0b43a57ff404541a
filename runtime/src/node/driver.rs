//! The node's driver: the one task that owns the peer table and decides, for
//! every peer, whether to hold a connection and which services link.
//!
//! Inputs are discovery events, descriptions that arrive over connections
//! (dialed here or accepted by the describe handler), closed connections,
//! this node's own group changes, and a periodic reconcile tick that
//! retries what failed. Outputs are connections dialed or closed, the
//! published peer sets ([`Shared::links`]) and [`NodeEvent`]s. Owning the
//! table in one task means every decision sees one consistent state.
//!
//! Connection rule: between two nodes only the one with the lower node id
//! dials, so a pair never holds two connections; the other side registers
//! the connection when the dialer describes itself.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::description::{services_link, NodeDescription, DESCRIBE_OP};
use super::events::NodeEvent;
use super::hooks::{LinkCandidate, INVITE_DECLINED};
use super::{locality, KnownPeer, Shared};
use crate::codec::{Codec, MsgPack};
use crate::discovery::{
    Announcement, Discovery, DiscoveryEvent, DiscoveryEvents, PeerRecord, PeerState,
};
use crate::{CallError, CallOptions, Connection, Endpoint, NodeId};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What the driver reacts to, besides discovery events and its tick.
#[derive(Debug)]
pub(crate) enum Input {
    /// A peer described itself over `conn` (we dialed it, or it dialed us).
    Described {
        conn: Connection,
        desc: NodeDescription,
    },
    /// Dialing a peer failed; the tick retries (later, if the peer
    /// `declined` the link).
    DialFailed {
        peer: NodeId,
        reason: String,
        declined: bool,
    },
    /// Someone wants to reach `peer` outside the links (an invitation).
    Lookup {
        peer: NodeId,
        reply: oneshot::Sender<Option<Contact>>,
    },
    /// The connection registered under `key` for `peer` ended.
    Closed { peer: NodeId, key: u64 },
    /// A node listed by static discovery answered at `url` and described itself.
    StaticDescribed {
        url: String,
        conn: Connection,
        desc: NodeDescription,
    },
    /// Dialing a statically listed URL failed; the tick retries.
    StaticFailed { url: String, reason: String },
    /// This node's group changed (already announced).
    GroupChanged {
        from: Option<String>,
        to: Option<String>,
    },
}

/// How to reach a peer: the connection this node holds to it, if any, and
/// the endpoints it announced.
#[derive(Debug)]
pub(crate) struct Contact {
    pub(crate) conn: Option<Connection>,
    pub(crate) endpoints: Vec<String>,
}

/// The driver's tuning, from the node builder.
pub(crate) struct Settings {
    pub(crate) describe_timeout: Duration,
    pub(crate) reconcile_every: Duration,
    pub(crate) follow_locally: bool,
    pub(crate) heartbeat_window: Option<Duration>,
}

/// Declined links are redialed after this many reconcile intervals.
const DECLINED_BACKOFF: u32 = 10;

#[derive(Debug)]
struct Peer {
    name: String,
    group: Option<String>,
    endpoints: Vec<String>,
    incarnation: u64,
    /// Service names from the announcement, until a description arrives.
    hint: Vec<String>,
    state: PeerState,
    /// Whether discovery has reported the peer. Until it has, the peer is
    /// not linked: discovery would ignore its leave and never report it
    /// lost, so a peer set could keep a departed member.
    announced: bool,
    description: Option<NodeDescription>,
    conn: Option<(u64, Connection)>,
    dialing: bool,
    links: BTreeSet<String>,
    /// The peer refused our describe (its link hook): not dialed before then.
    declined_until: Option<Instant>,
    /// Discovery stopped hearing the peer while its connection kept
    /// hearing it: it is judged by that connection alone until discovery
    /// hears it again (service traffic as heartbeat).
    by_link: bool,
    /// The last probe (ping) sent on its connection: when, and how many
    /// frames the connection had received by then.
    probe: Option<(Instant, u64)>,
}

impl Peer {
    fn from_record(r: &PeerRecord) -> Self {
        Peer {
            name: r.name.clone(),
            group: r.group.clone(),
            endpoints: r.endpoints.clone(),
            incarnation: r.incarnation,
            hint: r.services.clone(),
            state: PeerState::Alive,
            announced: true,
            description: None,
            conn: None,
            dialing: false,
            links: BTreeSet::new(),
            declined_until: None,
            by_link: false,
            probe: None,
        }
    }

    fn alive(&self) -> bool {
        matches!(self.state, PeerState::Alive | PeerState::Suspect)
    }
}

pub(crate) struct Driver {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    describe_timeout: Duration,
    reconcile_every: Duration,
    follow_locally: bool,
    heartbeat_window: Option<Duration>,
    /// A move to a local peer's group is under way (follow locally).
    following: bool,
    peers: HashMap<NodeId, Peer>,
    /// Tags each registered connection, so a stale close notice is ignored.
    next_key: u64,
    discovery: Arc<dyn Discovery>,
    announcement: Arc<tokio::sync::Mutex<Option<Announcement>>>,
    /// When to announce again for newcomers; see [`Driver::welcome`].
    reannounce_at: Option<tokio::time::Instant>,
    /// URLs from static discovery, with the node last found at each.
    statics: Vec<StaticTarget>,
    /// Whether the backend announces nothing (static lists): then a
    /// connection is the only sign of life, so a described peer counts as
    /// announced and a closed connection as lost.
    liveness_by_connection: bool,
}

/// One URL from static discovery.
struct StaticTarget {
    url: String,
    peer: Option<NodeId>,
    dialing: bool,
}

/// How long a re-announcement for newcomers waits, so that several nodes
/// starting together cost one datagram.
const REANNOUNCE_DELAY: Duration = Duration::from_millis(5);

impl Driver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        endpoint: Endpoint,
        discovery: Arc<dyn Discovery>,
        announcement: Arc<tokio::sync::Mutex<Option<Announcement>>>,
        settings: Settings,
    ) -> Self {
        Driver {
            shared,
            endpoint,
            describe_timeout: settings.describe_timeout,
            reconcile_every: settings.reconcile_every,
            follow_locally: settings.follow_locally,
            heartbeat_window: settings.heartbeat_window,
            following: false,
            peers: HashMap::new(),
            next_key: 0,
            liveness_by_connection: discovery.backend() == "static",
            discovery,
            announcement,
            reannounce_at: None,
            statics: Vec::new(),
        }
    }

    /// A newcomer just announced itself; it has not heard our announcement
    /// (sent before it listened), and would not until our next interval. A
    /// peer missing from its discovery table would have its leave ignored
    /// and its crash never reported, so answer soon with our announcement.
    fn welcome(&mut self) {
        if self.reannounce_at.is_none() {
            self.reannounce_at = Some(tokio::time::Instant::now() + REANNOUNCE_DELAY);
        }
    }

    async fn reannounce(&mut self) {
        self.reannounce_at = None;
        let current = self.announcement.lock().await.clone();
        if let Some(announcement) = current {
            if let Err(e) = self.discovery.update(announcement).await {
                tracing::debug!("re-announcing for newcomers failed: {e}");
            }
        }
    }

    pub(crate) async fn run(
        mut self,
        mut discovery: DiscoveryEvents,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.reconcile_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut discovering = true;
        loop {
            let reannounce_at = self.reannounce_at;
            let reannounce = async move {
                match reannounce_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = reannounce => self.reannounce().await,
                event = discovery.recv(), if discovering => match event {
                    Some(event) => self.on_discovery(event),
                    None => discovering = false,
                },
                Some(input) = inputs.recv() => self.on_input(input),
                _ = tick.tick() => {
                    let ids: Vec<NodeId> = self.peers.keys().copied().collect();
                    for id in ids {
                        self.judge_by_link(id);
                        self.reconcile(id, true);
                    }
                    self.dial_statics();
                }
            }
        }
    }

    fn emit(&self, event: NodeEvent) {
        let _ = self.shared.events.send(event);
    }

    fn on_discovery(&mut self, event: DiscoveryEvent) {
        match event {
            DiscoveryEvent::Discovered(r) => {
                self.welcome();
                self.heard(r, false);
            }
            DiscoveryEvent::Updated(r) => self.heard(r, false),
            DiscoveryEvent::Returned(r) => {
                self.welcome();
                self.heard(r, true);
            }
            DiscoveryEvent::Suspect(id) => {
                if self.link_vouches(id, false) {
                    return;
                }
                if let Some(p) = self.peers.get_mut(&id) {
                    if p.state == PeerState::Alive {
                        p.state = PeerState::Suspect;
                        self.publish_peer(id);
                        self.emit(NodeEvent::PeerSuspect(id));
                    }
                }
            }
            DiscoveryEvent::Recovered(id) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    if p.state == PeerState::Suspect {
                        p.state = PeerState::Alive;
                        self.publish_peer(id);
                        self.emit(NodeEvent::PeerRecovered(id));
                    }
                }
            }
            DiscoveryEvent::Lost(id) => {
                if self.link_vouches(id, true) {
                    if let Some(p) = self.peers.get_mut(&id) {
                        tracing::debug!(peer = %id, "discovery lost the peer but its link carries traffic; judging it by the link");
                        p.by_link = true;
                    }
                    return;
                }
                self.gone(id, PeerState::Lost)
            }
            DiscoveryEvent::Left(id) => self.gone(id, PeerState::Left),
            DiscoveryEvent::Endpoint(url) => {
                if !self.statics.iter().any(|t| t.url == url) {
                    self.statics.push(StaticTarget {
                        url,
                        peer: None,
                        dialing: false,
                    });
                    self.dial_statics();
                }
            }
        }
    }

    /// A peer is alive with this record (discovered, updated or returned).
    fn heard(&mut self, r: PeerRecord, returned: bool) {
        let id = r.node_id;
        match self.peers.get_mut(&id) {
            None => {
                self.peers.insert(id, Peer::from_record(&r));
                self.emit(NodeEvent::PeerDiscovered {
                    peer: id,
                    name: r.name.clone(),
                    group: r.group.clone(),
                });
            }
            Some(p) => {
                let was_gone = !p.alive();
                let restarted = r.incarnation != p.incarnation;
                // Discovery hears it again: no longer judged by its link, and
                // whatever it declined may have changed.
                p.by_link = false;
                p.declined_until = None;
                if r.incarnation != p.incarnation {
                    // A restart: whatever we knew about its services and its
                    // old connection belongs to the previous process.
                    if p.description.as_ref().map(|d| d.incarnation) != Some(r.incarnation) {
                        p.description = None;
                    }
                    p.incarnation = r.incarnation;
                }
                let from = std::mem::replace(&mut p.group, r.group.clone());
                let old_name = std::mem::replace(&mut p.name, r.name.clone());
                p.endpoints = r.endpoints.clone();
                p.hint = r.services.clone();
                p.state = PeerState::Alive;
                p.announced = true;
                // `Returned` from discovery about a peer this node kept
                // (judged by its link) is no return here, unless it restarted.
                if was_gone || (returned && restarted) {
                    self.emit(NodeEvent::PeerReturned(id));
                }
                if old_name != r.name {
                    self.emit(NodeEvent::PeerRenamed {
                        peer: id,
                        from: old_name,
                        to: r.name.clone(),
                    });
                }
                if from != r.group {
                    self.emit(NodeEvent::GroupChanged {
                        node: id,
                        from,
                        to: r.group.clone(),
                    });
                }
            }
        }
        self.consider_following(&r);
        self.reconcile(id, true);
    }

    /// Follow locally: a node in no group joins the group of a peer on
    /// this host.
    fn consider_following(&mut self, r: &PeerRecord) {
        if !self.follow_locally || self.following || self.shared.group().is_some() {
            return;
        }
        let Some(group) = r.group.clone() else {
            return;
        };
        if !locality::on_this_host(&r.endpoints) {
            return;
        }
        self.following = true;
        tracing::debug!(peer = %r.node_id, %group, "following a local peer into its group");
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.change_group(Some(group)).await {
                tracing::debug!("following a local peer failed: {e}");
            }
        });
    }

    /// Service traffic as heartbeat: whether `id`'s connection vouches for
    /// it while discovery does not hear it.
    ///
    /// On `Suspect` (`lost` false) the link is probed (a ping; a live peer's
    /// pong is traffic) and vouches if it heard the peer within the window.
    /// On `Lost` it vouches if it has heard the peer since that probe — so a
    /// dead peer is reported lost on discovery's time, not the window's.
    /// Without a recent probe (a backend that reports loss without
    /// suspicion, as an expired etcd lease), a link heard within the window
    /// is probed now and the peer judged by it from then on.
    fn link_vouches(&mut self, id: NodeId, lost: bool) -> bool {
        let Some(window) = self.heartbeat_window else {
            return false;
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        let Some((_, conn)) = &p.conn else {
            return false;
        };
        let Some(silent) = conn.silent_for() else {
            return false;
        };
        let now = Instant::now();
        let heard = conn.stats().frames_received;
        let recent_probe = p
            .probe
            .filter(|(at, _)| now.saturating_duration_since(*at) < window);
        match (lost, recent_probe) {
            (true, Some((_, before))) => heard > before,
            _ if silent >= window => false,
            _ => {
                conn.probe();
                p.probe = Some((now, heard));
                true
            }
        }
    }

    /// A peer judged by its link: lost once the link is gone, or a probe of
    /// it went unanswered for half the window.
    fn judge_by_link(&mut self, id: NodeId) {
        let Some(window) = self.heartbeat_window else {
            return;
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if !p.by_link || !p.alive() {
            return;
        }
        let now = Instant::now();
        let alive = match &p.conn {
            None => false,
            Some((_, conn)) => match (conn.silent_for(), p.probe) {
                (None, _) => false,
                (Some(_), Some((at, before))) => {
                    if conn.stats().frames_received > before {
                        p.probe = None;
                        true
                    } else {
                        now.saturating_duration_since(at) < window / 2
                    }
                }
                (Some(silent), None) => {
                    if silent >= window / 2 {
                        conn.probe();
                        p.probe = Some((now, conn.stats().frames_received));
                    }
                    true
                }
            },
        };
        if !alive {
            tracing::debug!(peer = %id, "the link of a peer discovery had lost went silent too");
            p.by_link = false;
            self.gone(id, PeerState::Lost);
        }
    }

    fn gone(&mut self, id: NodeId, state: PeerState) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if !p.alive() {
            return;
        }
        p.state = state;
        if let Some((_, conn)) = p.conn.take() {
            if state == PeerState::Left {
                // A leaving peer drains its calls; let them finish.
                tokio::spawn(async move { conn.close().await });
            } else {
                conn.abort();
            }
        }
        self.reconcile(id, false);
        self.emit(match state {
            PeerState::Left => NodeEvent::PeerLeft(id),
            _ => NodeEvent::PeerLost(id),
        });
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Described { conn, desc } => self.described(conn, desc),
            Input::DialFailed {
                peer,
                reason,
                declined,
            } => {
                tracing::debug!(peer = %peer, declined, "dialing failed, retrying at a later reconcile: {reason}");
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.dialing = false;
                    if declined {
                        p.declined_until =
                            Some(Instant::now() + self.reconcile_every * DECLINED_BACKOFF);
                    }
                }
            }
            Input::Lookup { peer, reply } => {
                let contact = self.peers.get(&peer).map(|p| Contact {
                    conn: p.conn.as_ref().map(|(_, c)| c.clone()),
                    endpoints: p.endpoints.clone(),
                });
                let _ = reply.send(contact);
            }
            Input::StaticDescribed { url, conn, desc } => {
                if let Some(t) = self.statics.iter_mut().find(|t| t.url == url) {
                    t.dialing = false;
                    t.peer = desc.id();
                }
                if let Some(id) = desc.id() {
                    if let Some(p) = self.peers.get_mut(&id) {
                        if !p.endpoints.contains(&url) {
                            p.endpoints.push(url);
                        }
                    }
                }
                self.described(conn, desc);
            }
            Input::StaticFailed { url, reason } => {
                tracing::debug!(url = %url, "static peer did not answer, retrying at the next tick: {reason}");
                if let Some(t) = self.statics.iter_mut().find(|t| t.url == url) {
                    t.dialing = false;
                }
            }
            Input::Closed { peer, key } => {
                let by_connection = self.liveness_by_connection;
                if let Some(p) = self.peers.get_mut(&peer) {
                    if p.conn.as_ref().is_some_and(|(k, _)| *k == key) {
                        p.conn = None;
                        if by_connection || p.by_link {
                            // Nothing else says whether it lives: it is lost
                            // until a static redial or its own dial brings it back.
                            self.gone(peer, PeerState::Lost);
                            return;
                        }
                        // No redial here: if the peer closed because it does
                        // not want the link, redialing at once would spin.
                        // The tick redials.
                        self.reconcile(peer, false);
                    }
                }
            }
            Input::GroupChanged { from, to } => {
                self.following = false;
                self.emit(NodeEvent::GroupChanged {
                    node: self.shared.id,
                    from,
                    to,
                });
                let ids: Vec<NodeId> = self.peers.keys().copied().collect();
                for id in ids {
                    self.reconcile(id, true);
                }
            }
        }
    }

    fn described(&mut self, conn: Connection, desc: NodeDescription) {
        let Some(id) = desc.id() else {
            conn.abort();
            return;
        };
        if !self.peers.contains_key(&id) {
            // It dialed us before our discovery heard of it.
            self.emit(NodeEvent::PeerDiscovered {
                peer: id,
                name: desc.name.clone(),
                group: desc.group.clone(),
            });
            self.peers.insert(
                id,
                Peer {
                    name: desc.name.clone(),
                    group: desc.group.clone(),
                    endpoints: Vec::new(),
                    incarnation: desc.incarnation,
                    hint: Vec::new(),
                    state: PeerState::Alive,
                    announced: false,
                    description: None,
                    conn: None,
                    dialing: false,
                    links: BTreeSet::new(),
                    declined_until: None,
                    by_link: false,
                    probe: None,
                },
            );
        }
        let events = &self.shared.events;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.state == PeerState::Left && desc.incarnation <= peer.incarnation {
            // It said goodbye; a link it (or a dial of ours begun before the
            // leave) completes now belongs to a process on its way out. Only
            // a restart (a new incarnation) or a new announcement brings it
            // back.
            conn.abort();
            return;
        }
        if peer.name != desc.name {
            let from = std::mem::replace(&mut peer.name, desc.name.clone());
            let _ = events.send(NodeEvent::PeerRenamed {
                peer: id,
                from,
                to: desc.name.clone(),
            });
        }
        if peer.group != desc.group {
            let from = std::mem::replace(&mut peer.group, desc.group.clone());
            let _ = events.send(NodeEvent::GroupChanged {
                node: id,
                from,
                to: desc.group.clone(),
            });
        }
        // Two connections to one peer (both sides dialed): keep the one the
        // lower node id dialed, as the peer decides the same way.
        if let Some((_, old)) = &peer.conn {
            let lower_dials = self.shared.id < id;
            if !old.is_closed()
                && old.dialed_here() == lower_dials
                && conn.dialed_here() != lower_dials
            {
                tokio::spawn(async move { conn.close().await });
                return;
            }
        }
        if self.liveness_by_connection {
            peer.announced = true;
        }
        if !peer.alive() {
            let _ = events.send(NodeEvent::PeerReturned(id));
        }
        // Describing itself is proof of life, even before discovery says so.
        peer.state = PeerState::Alive;
        peer.dialing = false;
        peer.incarnation = peer.incarnation.max(desc.incarnation);
        let fresh = peer.description.as_ref() != Some(&desc);
        if fresh {
            for s in &desc.services {
                let _ = events.send(NodeEvent::ServiceDiscovered {
                    peer: id,
                    service: s.full_name.clone(),
                    role: s.role.clone(),
                });
            }
        }
        peer.description = Some(desc);
        let _ = events.send(NodeEvent::PeerConnected {
            peer: id,
            identity: conn.peer().identity().cloned(),
        });
        let key = self.next_key;
        self.next_key += 1;
        if let Some((_, old)) = peer.conn.replace((key, conn.clone())) {
            // The newest connection wins: the old one belongs to a link the
            // peer has already given up on (e.g. it restarted).
            old.abort();
        }
        let inputs = self.shared.inputs.clone();
        tokio::spawn(async move {
            conn.closed().await;
            let _ = inputs.send(Input::Closed { peer: id, key });
        });
        self.reconcile(id, false);
    }

    /// Dials every statically listed URL whose node is not connected now.
    fn dial_statics(&mut self) {
        for t in &mut self.statics {
            let connected = t
                .peer
                .and_then(|id| self.peers.get(&id))
                .is_some_and(|p| p.conn.is_some());
            if connected || t.dialing {
                continue;
            }
            t.dialing = true;
            let endpoint = self.endpoint.clone();
            let shared = self.shared.clone();
            let url = t.url.clone();
            let limit = self.describe_timeout;
            tokio::spawn(async move {
                let input = match dial_url(&endpoint, &shared, &url, limit).await {
                    Ok((conn, desc)) => Input::StaticDescribed { url, conn, desc },
                    Err(reason) => Input::StaticFailed { url, reason },
                };
                let _ = shared.inputs.send(input);
            });
        }
    }

    /// Brings one peer's connection and links in line with what is known.
    fn reconcile(&mut self, id: NodeId, may_dial: bool) {
        let my_group = self.shared.group();
        let me = self.shared.id;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let wanted = p.alive() && wanted(&self.shared, my_group.as_deref(), id, p);
        let declined = p.declined_until.is_some_and(|t| Instant::now() < t);
        if !wanted {
            if let Some((_, conn)) = p.conn.take() {
                tokio::spawn(async move { conn.close().await });
            }
        } else if may_dial
            && p.conn.is_none()
            && !p.dialing
            && !declined
            && me < id
            && !p.endpoints.is_empty()
        {
            p.dialing = true;
            let endpoint = self.endpoint.clone();
            let shared = self.shared.clone();
            let urls = p.endpoints.clone();
            let limit = self.describe_timeout;
            tokio::spawn(async move {
                let input = match dial(&endpoint, &shared, &urls, id, limit).await {
                    Ok((conn, desc)) => Input::Described { conn, desc },
                    Err(DialError { reason, declined }) => Input::DialFailed {
                        peer: id,
                        reason,
                        declined,
                    },
                };
                let _ = shared.inputs.send(input);
            });
        }
        let links = links(&self.shared, my_group.as_deref(), id, p);
        if links != p.links {
            let old = std::mem::replace(&mut p.links, links);
            let conn = p.conn.as_ref().map(|(_, c)| c.clone());
            let new = p.links.clone();
            self.shared.set_links(id, &new, conn);
            for s in old.difference(&new) {
                let _ = self.shared.events.send(NodeEvent::ServiceUnlinked {
                    peer: id,
                    service: s.clone(),
                });
            }
            for s in new.difference(&old) {
                let _ = self.shared.events.send(NodeEvent::ServiceLinked {
                    peer: id,
                    service: s.clone(),
                });
            }
        } else if let Some((_, conn)) = &p.conn {
            // Same links over a replacement connection: publish the new one.
            if !p.links.is_empty() {
                let links = p.links.clone();
                self.shared.set_links(id, &links, Some(conn.clone()));
            }
        }
        self.publish_peer(id);
    }

    fn publish_peer(&self, id: NodeId) {
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        let services = match &p.description {
            Some(d) => d.services.iter().map(|s| s.full_name.clone()).collect(),
            None => p.hint.clone(),
        };
        self.shared.set_known(KnownPeer {
            id,
            name: p.name.clone(),
            group: p.group.clone(),
            state: p.state,
            connected: p.conn.is_some(),
            services,
            linked: p.links.iter().cloned().collect(),
        });
    }
}

/// Whether this node wants a connection to `p`: some service of ours links
/// with one of theirs (and the link hook agrees). Before their description
/// arrives, the announced service names stand in, with the scope of our
/// side.
fn wanted(shared: &Shared, my_group: Option<&str>, id: NodeId, p: &Peer) -> bool {
    match &p.description {
        Some(d) => shared
            .services
            .iter()
            .any(|mine| linked_service(shared, my_group, id, p, d, mine, false)),
        None => shared.services.iter().any(|mine| {
            p.hint.contains(&mine.full_name)
                && (mine.scope == super::Scope::Global
                    || (my_group.is_some() && my_group == p.group.as_deref()))
        }),
    }
}

/// Whether `mine` links with `p` (described as `d`): a service of theirs
/// matches by contract, scope and roles (and, if `serving`, they serve it),
/// and the link hook agrees.
fn linked_service(
    shared: &Shared,
    my_group: Option<&str>,
    id: NodeId,
    p: &Peer,
    d: &NodeDescription,
    mine: &super::ServiceInfo,
    serving: bool,
) -> bool {
    let Some(theirs) = d.services.iter().find(|theirs| {
        (!serving || theirs.serves) && services_link(mine, my_group, theirs, p.group.as_deref())
    }) else {
        return false;
    };
    let remote = p.conn.as_ref().map(|(_, c)| c.peer());
    shared.hooks.allows(&LinkCandidate {
        peer: id,
        name: &p.name,
        group: p.group.as_deref(),
        service: &mine.full_name,
        role: theirs.role.as_deref(),
        remote: remote.as_ref().map(|r| r.remote()),
    })
}

/// The services of ours `p` is linked for: connected, described, serving it,
/// matching scope and roles, and allowed by the link hook.
fn links(shared: &Shared, my_group: Option<&str>, id: NodeId, p: &Peer) -> BTreeSet<String> {
    let (Some(d), Some(_), true) = (&p.description, &p.conn, p.alive() && p.announced) else {
        return BTreeSet::new();
    };
    shared
        .services
        .iter()
        .filter(|mine| linked_service(shared, my_group, id, p, d, mine, true))
        .map(|mine| mine.full_name.clone())
        .collect()
}

/// Why a dial did not produce a link.
struct DialError {
    reason: String,
    /// The peer refused the describe exchange (its link hook).
    declined: bool,
}

/// Dials `peer` at the first of `urls` that answers with the right node id,
/// and exchanges descriptions.
async fn dial(
    endpoint: &Endpoint,
    shared: &Shared,
    urls: &[String],
    peer: NodeId,
    limit: Duration,
) -> Result<(Connection, NodeDescription), DialError> {
    let mut failures = Vec::new();
    let mut declined = false;
    for url in urls {
        let conn = match tokio::time::timeout(limit, endpoint.connect(url.as_str())).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                failures.push(format!("{url}: {e}"));
                continue;
            }
            Err(_) => {
                failures.push(format!("{url}: no handshake within {limit:?}"));
                continue;
            }
        };
        if conn.peer().node_id() != peer {
            failures.push(format!(
                "{url} is node {} now, not {peer}",
                conn.peer().node_id()
            ));
            conn.close().await;
            continue;
        }
        match describe(&conn, shared, limit).await {
            Ok(desc) if desc.id() == Some(peer) => return Ok((conn, desc)),
            Ok(desc) => {
                failures.push(format!("{url} described itself as {}", desc.node_id));
                conn.abort();
            }
            Err(e) => {
                declined |= e.as_reject().is_some_and(|r| r.code() == INVITE_DECLINED);
                failures.push(format!("{url}: {e}"));
                conn.abort();
            }
        }
    }
    Err(DialError {
        reason: failures.join("; "),
        declined,
    })
}

/// Dials a URL whose node is not known yet and exchanges descriptions.
async fn dial_url(
    endpoint: &Endpoint,
    shared: &Shared,
    url: &str,
    limit: Duration,
) -> Result<(Connection, NodeDescription), String> {
    let conn = match tokio::time::timeout(limit, endpoint.connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(format!("{url}: {e}")),
        Err(_) => return Err(format!("{url}: no handshake within {limit:?}")),
    };
    match describe(&conn, shared, limit).await {
        Ok(desc) if desc.id() == Some(conn.peer().node_id()) => Ok((conn, desc)),
        Ok(desc) => {
            conn.abort();
            Err(format!("{url} described itself as {}", desc.node_id))
        }
        Err(e) => {
            conn.abort();
            Err(format!("{url}: {e}"))
        }
    }
}

/// Sends our description over `conn` and returns the peer's.
async fn describe(
    conn: &Connection,
    shared: &Shared,
    limit: Duration,
) -> Result<NodeDescription, CallError> {
    let label = conn.peer().label().clone();
    let mine = <MsgPack as Codec<NodeDescription>>::encode(&shared.describe())
        .map_err(|e| CallError::encode(DESCRIBE_OP, label.clone(), e))?;
    // The driver's own exchange: never the child of a call being served.
    let opts = CallOptions::new().timeout(limit).detached();
    let reply: Bytes = conn.call(DESCRIBE_OP, mine, opts).await?;
    <MsgPack as Codec<NodeDescription>>::decode(reply)
        .map_err(|e| CallError::decode(DESCRIBE_OP, label, e))
}
