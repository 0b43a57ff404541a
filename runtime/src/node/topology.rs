//! The live topology page: a node serves, over HTTP on loopback, a small
//! page showing the nodes it knows — their groups, roles, services,
//! links and liveness — and the call rate on each of its links, updated
//! as things change (server-sent events).
//!
//! Owns the page's state (a snapshot rebuilt on every node event and once
//! a second for the rates), the per-link call counts (an interceptor on
//! each side, so a node without the page pays nothing), and the HTTP
//! server (axum). The page itself is one dependency-free HTML file
//! (`topology.html` beside this file). Turned on with
//! [`NodeBuilder::topology_page`](crate::node::NodeBuilder::topology_page);
//! the page never listens beyond loopback (what goes wrong starting it is
//! [`TopologyError`], public in `plexus::observe::topology`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::discovery::PeerState;
use crate::error::{CallError, Reject};
use crate::intercept::{CallInterceptor, Extensions, IncomingCall, Interceptor};
use crate::node::{NodeEvent, NodeEvents};
use crate::observe::topology::{loopback_addr, TopologyError};
use crate::{NodeId, PeerInfo};

const PAGE: &str = include_str!("topology.html");
/// How often the rates are recomputed and the page refreshed when nothing
/// else happens.
const TICK: Duration = Duration::from_secs(1);

/// Calls on each of a node's links, counted by its interceptors.
#[derive(Clone, Default)]
pub(crate) struct LinkCounter(Arc<Mutex<HashMap<NodeId, LinkCalls>>>);

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct LinkCalls {
    /// Calls this node made to the peer.
    made: u64,
    /// Calls the peer made to this node.
    served: u64,
    /// Calls this node made that failed.
    failed: u64,
}

impl LinkCounter {
    fn bump(&self, peer: NodeId, f: impl FnOnce(&mut LinkCalls)) {
        f(self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer)
            .or_default());
    }

    fn snapshot(&self) -> HashMap<NodeId, LinkCalls> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Interceptor for LinkCounter {
    fn intercept(&self, call: IncomingCall) -> BoxFuture<'static, Result<Extensions, Reject>> {
        self.bump(call.peer().node_id(), |c| c.served += 1);
        Box::pin(async { Ok(Extensions::default()) })
    }
}

impl CallInterceptor for LinkCounter {
    fn after(&self, _op: &str, peer: &PeerInfo, outcome: Result<(), &CallError>, _: Duration) {
        self.bump(peer.node_id(), |c| {
            c.made += 1;
            if outcome.is_err() {
                c.failed += 1;
            }
        });
    }
}

/// What the page shows, as JSON (`GET /topology.json`, and each server-sent
/// event on `/events`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
struct Snapshot {
    /// The node serving the page.
    node: SelfView,
    /// Every peer it has heard of, by name then id.
    peers: Vec<PeerView>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
struct SelfView {
    id: String,
    name: String,
    group: Option<String>,
    urls: Vec<String>,
    services: Vec<ServiceView>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
struct ServiceView {
    name: String,
    role: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
struct PeerView {
    id: String,
    name: String,
    group: Option<String>,
    /// `alive`, `suspect`, `lost` or `left`.
    state: &'static str,
    /// Whether the node holds a connection to it.
    connected: bool,
    services: Vec<ServiceView>,
    /// Services of this node it is linked for.
    linked: Vec<String>,
    calls_made: u64,
    calls_served: u64,
    calls_failed: u64,
    /// Calls per second on the link, both directions, over the last tick.
    rate: f64,
}

fn state_name(state: PeerState) -> &'static str {
    match state {
        PeerState::Alive => "alive",
        PeerState::Suspect => "suspect",
        PeerState::Lost => "lost",
        PeerState::Left => "left",
    }
}

/// Where the node listens, once it does.
pub(crate) type Urls = Arc<std::sync::OnceLock<Vec<String>>>;

/// The roles peers take, as their descriptions said (service → role).
type Roles = HashMap<NodeId, BTreeMap<String, Option<String>>>;

fn snapshot(
    shared: &crate::node::Shared,
    urls: &Urls,
    roles: &Roles,
    calls: &HashMap<NodeId, LinkCalls>,
    rates: &HashMap<NodeId, f64>,
) -> Snapshot {
    let me = shared.describe();
    let node = SelfView {
        id: me.node_id.clone(),
        name: me.name.clone(),
        group: me.group.clone(),
        urls: urls.get().cloned().unwrap_or_default(),
        services: me
            .services
            .iter()
            .map(|s| ServiceView {
                name: s.full_name.clone(),
                role: s.role.clone(),
            })
            .collect(),
    };
    let mut peers: Vec<PeerView> = shared
        .known_peers()
        .into_iter()
        .map(|p| {
            let c = calls.get(&p.id).copied().unwrap_or_default();
            let theirs = roles.get(&p.id);
            PeerView {
                id: p.id.to_string(),
                name: p.name,
                group: p.group,
                state: state_name(p.state),
                connected: p.connected,
                services: p
                    .services
                    .into_iter()
                    .map(|name| ServiceView {
                        role: theirs.and_then(|r| r.get(&name).cloned().flatten()),
                        name,
                    })
                    .collect(),
                linked: p.linked,
                calls_made: c.made,
                calls_served: c.served,
                calls_failed: c.failed,
                rate: rates.get(&p.id).copied().unwrap_or(0.0),
            }
        })
        .collect();
    peers.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    Snapshot { node, peers }
}

/// A running topology page; it stops with its node (or when dropped).
pub(crate) struct TopologyPage {
    url: String,
    stop: CancellationToken,
}

impl Drop for TopologyPage {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TopologyPage {
    /// Serves the page for the node behind `shared` on `addr`, following
    /// `events` (subscribed before the node's driver started, so nothing
    /// is missed) and the link counts of `counter`.
    pub(crate) async fn serve(
        shared: &Arc<crate::node::Shared>,
        urls: Urls,
        addr: &str,
        events: NodeEvents,
        counter: LinkCounter,
    ) -> Result<TopologyPage, TopologyError> {
        let addr = loopback_addr(addr)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| TopologyError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| TopologyError::Bind { addr, source })?;
        let first = snapshot(
            shared,
            &urls,
            &Roles::new(),
            &HashMap::new(),
            &HashMap::new(),
        );
        let (tx, rx) = watch::channel(Arc::new(first));
        let stop = CancellationToken::new();
        tokio::spawn(follow(
            Arc::downgrade(shared),
            urls,
            events,
            counter,
            tx,
            stop.clone(),
        ));
        let app = axum::Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route("/topology.json", get(current))
            .route("/events", get(stream))
            .with_state(rx);
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(target: "plexus::node", "topology page stopped: {e}");
            }
        });
        let url = match local {
            SocketAddr::V4(a) => format!("http://{a}/"),
            SocketAddr::V6(a) => format!("http://[{}]:{}/", a.ip(), a.port()),
        };
        Ok(TopologyPage { url, stop })
    }

    /// The page's URL (`http://127.0.0.1:PORT/`).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Stops serving.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

type State = watch::Receiver<Arc<Snapshot>>;

async fn current(axum::extract::State(rx): axum::extract::State<State>) -> impl IntoResponse {
    let json = serde_json::to_string(&**rx.borrow()).unwrap_or_default();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
}

async fn stream(axum::extract::State(rx): axum::extract::State<State>) -> impl IntoResponse {
    // The current snapshot at once, then each new one.
    let updates = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let json = serde_json::to_string(&**rx.borrow_and_update()).unwrap_or_default();
        let event = SseEvent::default().event("topology").data(json);
        Some((Ok::<_, std::convert::Infallible>(event), (rx, false)))
    });
    Sse::new(updates).keep_alive(KeepAlive::default())
}

/// Rebuilds the snapshot on every node event and every tick, for as long
/// as the node lives and the page runs.
async fn follow(
    node: Weak<crate::node::Shared>,
    urls: Urls,
    mut events: NodeEvents,
    counter: LinkCounter,
    tx: watch::Sender<Arc<Snapshot>>,
    stop: CancellationToken,
) {
    let mut roles = Roles::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: (tokio::time::Instant, HashMap<NodeId, LinkCalls>) =
        (tokio::time::Instant::now(), HashMap::new());
    let mut rates: HashMap<NodeId, f64> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => match event {
                None => return,
                Some(NodeEvent::ServiceDiscovered { peer, service, role }) => {
                    roles.entry(peer).or_default().insert(service, role);
                }
                Some(_) => {}
            },
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let calls = counter.snapshot();
                let secs = now.duration_since(previous.0).as_secs_f64().max(1e-3);
                rates = calls
                    .iter()
                    .map(|(id, c)| {
                        let before = previous.1.get(id).copied().unwrap_or_default();
                        let delta = (c.made + c.served).saturating_sub(before.made + before.served);
                        (*id, delta as f64 / secs)
                    })
                    .collect();
                previous = (now, calls);
            }
        }
        let Some(shared) = node.upgrade() else { return };
        let next = snapshot(&shared, &urls, &roles, &counter.snapshot(), &rates);
        tx.send_if_modified(|cur| {
            if **cur == next {
                false
            } else {
                *cur = Arc::new(next);
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_count_both_directions_and_failures() {
        let counter = LinkCounter::default();
        let peer = NodeId(7);
        counter.bump(peer, |c| c.made += 1);
        counter.bump(peer, |c| c.served += 2);
        let snap = counter.snapshot();
        assert_eq!(
            snap.get(&peer),
            Some(&LinkCalls {
                made: 1,
                served: 2,
                failed: 0
            })
        );
    }
}
