//! LightImage's node features, through the public API: the `Initialized`
//! and `PeerRenamed` events, following a local peer into its group,
//! invitations (accepted and declined), the per-peer `allow_connection`
//! hook beside the connect rules, and service traffic counting as a
//! heartbeat when discovery stops hearing a peer.
//!
//! Beacon tests use a private multicast group on loopback each; the
//! heartbeat test drives one node's discovery by script.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use plexus::discovery::{
    Announcement, Beacon, Discovery, DiscoveryError, DiscoveryEvent, DiscoveryEvents,
    DiscoveryFuture, DiscoveryStats, PeerRecord, Static,
};
use plexus::{events::Event, NodeId, Reject};
use plexus::{
    node::{NodeBuilder, NodeError, NodeEvent, NodeEvents},
    Node,
};
use plexus_tests::{bounded, eventually, until};
use tokio::sync::mpsc;

/// A chat room: says who answered.
#[plexus::service(package = "features")]
pub trait Chat {
    /// The serving node's name.
    async fn who(&self) -> Result<String, Reject>;
}

struct Named(&'static str);

impl Chat for Named {
    async fn who(&self) -> Result<String, Reject> {
        Ok(self.0.to_owned())
    }
}

fn private_multicast() -> (Ipv4Addr, u16) {
    let n = (NodeId::random().0 >> 64) as u32;
    (
        Ipv4Addr::new(239, 255, (n >> 8) as u8, (n as u8) | 1),
        20_000 + ((n >> 16) as u16 % 40_000),
    )
}

fn beacon(multicast: (Ipv4Addr, u16)) -> Beacon {
    Beacon::loopback()
        .multicast_group(multicast.0)
        .port(multicast.1)
        .interval(Duration::from_millis(100))
}

fn node(name: &'static str, multicast: (Ipv4Addr, u16)) -> NodeBuilder {
    Node::builder(name)
        .discovery(beacon(multicast))
        .reconcile_interval(Duration::from_millis(100))
        .serve(ChatHandler::new(Named(name)))
}

async fn expect(
    events: &mut NodeEvents,
    what: &str,
    mut want: impl FnMut(&NodeEvent) -> bool,
) -> NodeEvent {
    bounded(what, async {
        loop {
            match events.recv().await {
                Some(e) if want(&e) => break e,
                Some(_) => {}
                None => panic!("events ended while waiting for {what}"),
            }
        }
    })
    .await
}

async fn linked(a: &Node, b: &Node) {
    let b_id = b.id();
    bounded(
        "linked",
        a.peers::<ChatClient>()
            .wait_until(|ids| ids.contains(&b_id)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialized_is_the_first_event_and_names_where_the_node_listens() {
    let builder = node("first", private_multicast());
    let mut events = builder.events();
    let n = builder.start().await.expect("starts");
    let first = bounded("the first event", events.recv())
        .await
        .expect("an event");
    let urls: Vec<String> = n.local_urls().iter().map(|u| u.to_string()).collect();
    assert_eq!(
        first,
        NodeEvent::Initialized {
            node: n.id(),
            name: "first".into(),
            urls
        }
    );
    n.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_node_is_reported_renamed_by_itself_and_its_peers() {
    let multicast = private_multicast();
    let a = node("a", multicast).group("lab").start().await.expect("a");
    let b = node("b", multicast).group("lab").start().await.expect("b");
    linked(&a, &b).await;
    let mut a_events = a.events();
    let mut b_events = b.events();
    b.rename("bee").await.expect("renamed");
    assert_eq!(b.name(), "bee");
    let want = NodeEvent::PeerRenamed {
        peer: b.id(),
        from: "b".into(),
        to: "bee".into(),
    };
    assert_eq!(
        expect(&mut b_events, "own rename", |e| matches!(
            e,
            NodeEvent::PeerRenamed { .. }
        ))
        .await,
        want
    );
    assert_eq!(
        expect(&mut a_events, "peer's rename", |e| matches!(
            e,
            NodeEvent::PeerRenamed { .. }
        ))
        .await,
        want
    );
    let b_id = b.id();
    eventually("a knows the new name", || {
        a.known_peers()
            .into_iter()
            .find(|p| p.id == b_id && p.name == "bee")
    })
    .await;
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
}

/// Announces a node that lives elsewhere (TEST-NET-1, never dialed: it
/// shares no service with anyone here).
async fn far_away(multicast: (Ipv4Addr, u16), group: &str) -> (Beacon, NodeId) {
    let id = NodeId::random();
    let far = beacon(multicast);
    let announcement = Announcement::new(id, "far")
        .group(group)
        .endpoint("tcp://192.0.2.1:9");
    let _events = far.start(announcement).await.expect("far announces");
    (far, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_no_group_follows_a_local_peer_not_a_distant_one() {
    let multicast = private_multicast();
    let (far, far_id) = far_away(multicast, "elsewhere").await;
    let follower = node("follower", multicast).follow_locally();
    let mut events = follower.events();
    let follower = follower.start().await.expect("starts");
    let stays = node("stays", multicast).start().await.expect("starts");
    // The distant peer is heard first; it is not on this host.
    expect(
        &mut events,
        "the distant peer",
        |e| matches!(e, NodeEvent::PeerDiscovered { peer, .. } if *peer == far_id),
    )
    .await;
    let local = node("app", multicast)
        .group("lab")
        .start()
        .await
        .expect("app");
    let moved = expect(
        &mut events,
        "the move",
        |e| matches!(e, NodeEvent::GroupChanged { node, .. } if *node == follower.id()),
    )
    .await;
    assert_eq!(
        moved,
        NodeEvent::GroupChanged {
            node: follower.id(),
            from: None,
            to: Some("lab".into())
        },
        "follows the local peer, never the distant one heard before it"
    );
    linked(&follower, &local).await;
    // A node without follow_locally stays where it is.
    let local_id = local.id();
    eventually("stays hears the app", || {
        stays
            .known_peers()
            .into_iter()
            .find(|p| p.id == local_id && p.group.as_deref() == Some("lab"))
    })
    .await;
    assert_eq!(stays.group(), None);
    assert!(stays.peers::<ChatClient>().is_empty());
    for n in [follower, stays, local] {
        n.stop().await.expect("stop");
    }
    far.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_node_joins_the_inviters_group_or_declines_with_its_reason() {
    let multicast = private_multicast();
    let host = node("host", multicast)
        .group("lab")
        .start()
        .await
        .expect("host");
    let willing = node("willing", multicast)
        .group("hall")
        .accept_invites()
        .start()
        .await
        .expect("willing");
    let deaf = node("deaf", multicast)
        .group("hall")
        .start()
        .await
        .expect("deaf");
    let busy = node("busy", multicast)
        .group("hall")
        .on_invite(|invitation| {
            assert_eq!(invitation.group, "lab");
            Err(format!("{} asked, but I am busy", invitation.name))
        })
        .start()
        .await
        .expect("busy");
    for n in [&willing, &deaf, &busy] {
        let id = n.id();
        eventually("the host hears it", || {
            host.known_peers().into_iter().find(|p| p.id == id)
        })
        .await;
    }
    let mut willing_events = willing.events();
    // Not linked (other group): the invitation dials.
    host.invite(willing.id()).await.expect("accepted");
    assert_eq!(willing.group().as_deref(), Some("lab"));
    expect(
        &mut willing_events,
        "the invitation",
        |e| matches!(e, NodeEvent::Invited { accepted: true, group, .. } if group == "lab"),
    )
    .await;
    linked(&host, &willing).await;

    let err = host.invite(deaf.id()).await.expect_err("declined");
    assert!(
        matches!(&err, NodeError::InviteDeclined { reason, .. } if reason.contains("takes no invitations")),
        "{err}"
    );
    let err = host.invite(busy.id()).await.expect_err("declined");
    assert!(
        matches!(&err, NodeError::InviteDeclined { reason, .. } if reason == "host asked, but I am busy"),
        "{err}"
    );
    assert_eq!(deaf.group().as_deref(), Some("hall"));
    assert_eq!(busy.group().as_deref(), Some("hall"));

    let err = host.invite(NodeId(7)).await.expect_err("unknown");
    assert!(matches!(err, NodeError::UnknownPeer { .. }), "{err}");
    let err = deaf.leave_group().await.and(deaf.invite(host.id()).await);
    assert!(matches!(err, Err(NodeError::NotInGroup { .. })), "{err:?}");
    for n in [host, willing, deaf, busy] {
        n.stop().await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_connection_keeps_refused_peers_out_until_it_changes_its_mind() {
    let multicast = private_multicast();
    let open_door = Arc::new(AtomicBool::new(false));
    let door = open_door.clone();
    // Started first, so that its connection events are watched before
    // the picky node exists.
    let stranger = node("stranger", multicast)
        .group("lab")
        .start()
        .await
        .expect("stranger");
    let mut conns = stranger.endpoint().events();
    // The highest id: every other node dials it and describes itself first.
    let picky = node("picky", multicast)
        .node_id(NodeId(u128::MAX))
        .group("lab")
        .allow_connection(move |c| {
            assert_eq!(c.service, "features.Chat");
            assert!(c.remote.is_some(), "asked once connected");
            c.name.starts_with("friend") || door.load(Ordering::SeqCst)
        })
        .start()
        .await
        .expect("picky");
    let friend = node("friend", multicast)
        .group("lab")
        .start()
        .await
        .expect("friend");
    linked(&picky, &friend).await;
    linked(&friend, &picky).await;
    linked(&friend, &stranger).await;
    // The stranger dials the picky node, is refused in the describe
    // exchange, and drops the connection.
    let picky_id = picky.id();
    bounded("the refused connection ends", async {
        loop {
            match conns.recv().await {
                Some(Event::Disconnected { peer, .. }) if peer.node_id() == picky_id => break,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await;
    assert!(!picky.peers::<ChatClient>().ids().contains(&stranger.id()));
    assert!(!stranger.peers::<ChatClient>().ids().contains(&picky_id));
    // The hook is asked again; a declined dialer comes back after ten
    // reconcile intervals.
    open_door.store(true, Ordering::SeqCst);
    linked(&picky, &stranger).await;
    linked(&stranger, &picky).await;
    for n in [picky, friend, stranger] {
        n.stop().await.expect("stop");
    }
}

/// A discovery backend the test writes: what it reports is what the test
/// sends.
struct Scripted {
    events: Mutex<Option<DiscoveryEvents>>,
}

impl Scripted {
    fn new() -> (Scripted, mpsc::UnboundedSender<DiscoveryEvent>) {
        let (tx, events) = DiscoveryEvents::channel();
        (
            Scripted {
                events: Mutex::new(Some(events)),
            },
            tx,
        )
    }
}

impl Discovery for Scripted {
    fn backend(&self) -> &'static str {
        "scripted"
    }

    fn start(&self, _announcement: Announcement) -> DiscoveryFuture<'_, DiscoveryEvents> {
        let events = self.events.lock().expect("lock").take();
        Box::pin(async move {
            events.ok_or(DiscoveryError::AlreadyStarted {
                backend: "scripted",
            })
        })
    }

    fn update(&self, _announcement: Announcement) -> DiscoveryFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn leave(&self) -> DiscoveryFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn stats(&self) -> DiscoveryStats {
        DiscoveryStats::default()
    }
}

fn record(n: &Node) -> PeerRecord {
    PeerRecord {
        node_id: n.id(),
        name: n.name(),
        group: n.group(),
        endpoints: n.local_urls().iter().map(|u| u.to_string()).collect(),
        incarnation: n.description().incarnation,
        services: vec!["features.Chat".into()],
    }
}

/// A peer nobody can reach: its discovery is the test's marker that every
/// event sent before it was handled (the driver takes them in order).
fn marker(n: u128) -> DiscoveryEvent {
    DiscoveryEvent::Discovered(PeerRecord {
        node_id: NodeId(n),
        name: format!("marker-{n}"),
        group: Some("elsewhere".into()),
        endpoints: Vec::new(),
        incarnation: 1,
        services: Vec::new(),
    })
}

async fn after_marker(events: &mut NodeEvents, n: u128) -> Vec<NodeEvent> {
    let mut seen = Vec::new();
    bounded("the marker", async {
        loop {
            match events.recv().await {
                Some(NodeEvent::PeerDiscovered { peer, .. }) if peer == NodeId(n) => break,
                Some(e) => seen.push(e),
                None => panic!("events ended"),
            }
        }
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_traffic_keeps_a_peer_whose_announcements_are_lost() {
    for window in [Some(Duration::from_secs(3)), None] {
        // The peer: found through its connection alone (static, empty list).
        let peer = Node::builder("peer")
            .node_id(NodeId(u128::MAX))
            .group("lab")
            .discovery(Static::new(Vec::<String>::new()))
            .serve(ChatHandler::new(Named("peer")))
            .start()
            .await
            .expect("peer");
        let (script, discovery) = Scripted::new();
        let watcher = Node::builder("watcher")
            .node_id(NodeId(1))
            .group("lab")
            .discovery(script)
            .heartbeat_window(window)
            .serve(ChatHandler::new(Named("watcher")))
            .reconcile_interval(Duration::from_millis(100))
            .start()
            .await
            .expect("watcher");
        let mut events = watcher.events();
        let mut conns = watcher.endpoint().events();
        discovery
            .send(DiscoveryEvent::Discovered(record(&peer)))
            .expect("script");
        linked(&watcher, &peer).await;
        // Service traffic, all along.
        let chat = watcher.peers::<ChatClient>();
        let traffic = tokio::spawn(async move {
            loop {
                if let Some((_, c)) = chat.list().pop() {
                    let _ = c.who().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        // Announcements stop arriving: discovery reports suspect, then —
        // some intervals later — lost. Meanwhile the link hears the peer.
        discovery
            .send(DiscoveryEvent::Suspect(peer.id()))
            .expect("script");
        discovery.send(marker(2)).expect("script");
        let mut seen = after_marker(&mut events, 2).await;
        let link = watcher
            .peers::<ChatClient>()
            .list()
            .pop()
            .expect("linked")
            .1;
        let heard = link.connection().stats().frames_received;
        until("the link hears the peer again", || {
            link.connection().stats().frames_received > heard
        })
        .await;
        discovery
            .send(DiscoveryEvent::Lost(peer.id()))
            .expect("script");
        discovery.send(marker(3)).expect("script");
        seen.extend(after_marker(&mut events, 3).await);
        let lost = seen
            .iter()
            .any(|e| matches!(e, NodeEvent::PeerLost(id) if *id == peer.id()));
        let suspect = seen
            .iter()
            .any(|e| matches!(e, NodeEvent::PeerSuspect(id) if *id == peer.id()));
        match window {
            Some(_) => {
                assert!(!lost && !suspect, "traffic vouched for it: {seen:?}");
                assert!(watcher.peers::<ChatClient>().ids().contains(&peer.id()));
                // Its healthy connection stays up.
                let mut closed = false;
                while let Some(Some(e)) = conns.recv().now_or_never() {
                    closed |= matches!(e, Event::Disconnected { .. });
                }
                assert!(!closed, "the connection was not closed");
                // Judged by its link from now on: when that goes, it is lost.
                drop(peer);
                expect(&mut events, "lost with its link", |e| {
                    matches!(e, NodeEvent::PeerLost(_))
                })
                .await;
            }
            None => {
                assert!(lost && suspect, "by discovery alone: {seen:?}");
                peer.stop().await.expect("stop");
            }
        }
        traffic.abort();
        watcher.stop().await.expect("stop");
    }
}
