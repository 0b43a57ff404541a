//! The loopback beacon through the public API: many nodes in one process
//! find each other, notice crashes and leaves, refuse strangers and garbage.
//!
//! Every test uses its own random group and port, so tests running in
//! parallel (or other processes on this host) never hear each other. Nothing
//! is sent anywhere but the group on the loopback interface.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use plexus::discovery::{
    Announcement, Beacon, Discovery, DiscoveryError, DiscoveryEvent, DiscoveryEvents,
};
use plexus::wire::key::SessionKey;
use plexus::NodeId;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

const MS: Duration = Duration::from_millis(1);

/// Scheduling slack on top of a stated bound: a debug build on a 2-core
/// machine running other tests may be late to wake by this much.
const SLACK: Duration = Duration::from_millis(250);

/// A group and port no other test uses.
fn private_multicast() -> (Ipv4Addr, u16) {
    let n: u32 = rand::random();
    let multicast = Ipv4Addr::new(239, 255, (n >> 8) as u8, (n as u8) | 1);
    let port = 20_000 + ((n >> 16) as u16 % 40_000);
    (multicast, port)
}

fn beacon(multicast: (Ipv4Addr, u16), interval: Duration) -> Beacon {
    Beacon::loopback()
        .multicast_group(multicast.0)
        .port(multicast.1)
        .interval(interval)
}

fn announcement(id: u128, incarnation: u64) -> Announcement {
    Announcement::new(NodeId(id), format!("node-{id}"))
        .group("lab-3")
        .endpoint(format!("tcp://127.0.0.1:{}", 4000 + id))
        .incarnation(incarnation)
}

/// Waits (bounded) for the first event matching `want`; other events are
/// skipped.
async fn expect(
    events: &mut DiscoveryEvents,
    bound: Duration,
    what: &str,
    mut want: impl FnMut(&DiscoveryEvent) -> bool,
) -> DiscoveryEvent {
    let found = timeout(bound, async {
        while let Some(event) = events.recv().await {
            if want(&event) {
                return Some(event);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {bound:?}"),
    }
}

/// Collects every observer's events into one channel, tagged with the
/// observer's index and the time of arrival.
fn merge(
    streams: Vec<DiscoveryEvents>,
) -> mpsc::UnboundedReceiver<(usize, DiscoveryEvent, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, mut events) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if tx.send((i, event, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_beacons_see_each_other_then_a_leave_and_a_crash() {
    const N: usize = 50;
    let interval = 100 * MS;
    // Every beacon announces at start, so each should hear all others within
    // one interval; the bound allows one more interval plus slack.
    let discovery_bound = 2 * interval + SLACK;
    let multicast = private_multicast();

    let mut beacons = Vec::new();
    let mut streams = Vec::new();
    let started = Instant::now();
    for i in 0..N {
        let b = beacon(multicast, interval);
        let events = b
            .start(announcement(i as u128 + 1, 1))
            .await
            .expect("beacon starts");
        streams.push(events);
        beacons.push(Some(b));
    }
    let mut merged = merge(streams);

    // 1. Everyone discovers everyone.
    let mut seen: Vec<HashSet<NodeId>> = vec![HashSet::new(); N];
    let complete = timeout(discovery_bound, async {
        while seen.iter().any(|s| s.len() < N - 1) {
            let Some((i, event, _)) = merged.recv().await else {
                break;
            };
            if let DiscoveryEvent::Discovered(peer) = event {
                assert_ne!(
                    peer.node_id,
                    NodeId(i as u128 + 1),
                    "a beacon discovered itself"
                );
                assert_eq!(peer.group.as_deref(), Some("lab-3"));
                seen[i].insert(peer.node_id);
            }
        }
    })
    .await;
    let took = started.elapsed();
    let missing: usize = seen.iter().map(|s| N - 1 - s.len()).sum();
    assert!(
        complete.is_ok() && missing == 0,
        "{missing} of {} discoveries missing after {took:?}",
        N * (N - 1)
    );
    eprintln!("{N} beacons: all {} discoveries in {took:?}", N * (N - 1));

    // 2. A graceful leave is seen by all others within one interval.
    let leaver = NodeId(1);
    let left_at = Instant::now();
    beacons[0]
        .take()
        .expect("beacon 0")
        .leave()
        .await
        .expect("leave");
    let mut left: HashSet<usize> = HashSet::new();
    let mut slowest_leave = Duration::ZERO;
    let all_left = timeout(interval + SLACK, async {
        while left.len() < N - 1 {
            let Some((i, event, at)) = merged.recv().await else {
                break;
            };
            match event {
                DiscoveryEvent::Left(id) if id == leaver => {
                    left.insert(i);
                    slowest_leave = slowest_leave.max(at - left_at);
                }
                DiscoveryEvent::Lost(id) => panic!("observer {i} lost {id:?} unexpectedly"),
                _ => {}
            }
        }
    })
    .await;
    assert!(
        all_left.is_ok(),
        "only {} of {} observers saw the leave",
        left.len(),
        N - 1
    );
    assert!(
        slowest_leave <= interval,
        "leave took {slowest_leave:?}, more than one interval"
    );
    eprintln!("graceful leave seen by all {} in {slowest_leave:?}", N - 1);

    // 3. A beacon dropped without leaving is reported lost within the bound.
    let crashed = NodeId(2);
    let bound = beacons[2]
        .as_ref()
        .expect("beacon 2")
        .config()
        .liveness_config()
        .detection_bound();
    let crashed_at = Instant::now();
    drop(beacons[1].take());
    let mut lost: HashMap<usize, Duration> = HashMap::new();
    let all_lost = timeout(bound + SLACK, async {
        while lost.len() < N - 2 {
            let Some((i, event, at)) = merged.recv().await else {
                break;
            };
            match event {
                DiscoveryEvent::Lost(id) if id == crashed => {
                    lost.insert(i, at - crashed_at);
                }
                DiscoveryEvent::Lost(id) => panic!("observer {i} lost {id:?}, which is alive"),
                _ => {}
            }
        }
    })
    .await;
    assert!(
        all_lost.is_ok(),
        "only {} of {} observers reported the crash within {:?}",
        lost.len(),
        N - 2,
        bound + SLACK
    );
    let slowest = lost.values().max().copied().unwrap_or_default();
    eprintln!(
        "crash reported lost by all {} in {slowest:?} (bound {bound:?})",
        N - 2
    );

    for b in beacons.iter().flatten() {
        let stats = b.stats();
        assert_eq!(stats.dropped_malformed, 0);
        assert_eq!(stats.send_errors, 0);
    }
}

#[tokio::test]
async fn dropped_beacon_goes_suspect_then_lost_within_the_bound() {
    let interval = 50 * MS;
    let multicast = private_multicast();
    let observer = beacon(multicast, interval);
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");
    let doomed = beacon(multicast, interval);
    let _doomed_events = doomed.start(announcement(2, 1)).await.expect("starts");
    expect(
        &mut events,
        10 * interval,
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(2)),
    )
    .await;

    let config = observer.config().liveness_config();
    let dropped_at = Instant::now();
    drop(doomed);
    expect(&mut events, config.suspect_after + SLACK, "suspect", |e| {
        *e == DiscoveryEvent::Suspect(NodeId(2))
    })
    .await;
    let suspect_after = dropped_at.elapsed();
    expect(&mut events, config.detection_bound() + SLACK, "lost", |e| {
        *e == DiscoveryEvent::Lost(NodeId(2))
    })
    .await;
    let lost_after = dropped_at.elapsed();
    assert!(suspect_after < lost_after);
    assert!(
        lost_after <= config.detection_bound() + SLACK,
        "lost after {lost_after:?}; bound {:?}",
        config.detection_bound()
    );
    eprintln!(
        "suspect after {suspect_after:?}, lost after {lost_after:?} (bound {:?})",
        config.detection_bound()
    );
}

#[tokio::test]
async fn graceful_leave_is_seen_well_within_one_interval() {
    // A long interval, so a leave seen quickly cannot be a timeout.
    let interval = 1000 * MS;
    let multicast = private_multicast();
    let observer = beacon(multicast, interval);
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");
    let leaver = beacon(multicast, interval);
    let mut leaver_events = leaver.start(announcement(2, 1)).await.expect("starts");
    expect(
        &mut events,
        2 * interval,
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(2)),
    )
    .await;

    let leaving = Instant::now();
    leaver.leave().await.expect("leave");
    expect(&mut events, interval, "left", |e| {
        *e == DiscoveryEvent::Left(NodeId(2))
    })
    .await;
    let took = leaving.elapsed();
    assert!(took < interval, "leave took {took:?}");
    eprintln!("leave seen after {took:?} (interval {interval:?})");

    // The leaver's own stream has ended, and it can be started again.
    let ended = timeout(interval, async {
        while leaver_events.recv().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the leaver's event stream did not end");
    assert!(matches!(
        leaver.leave().await,
        Err(DiscoveryError::NotStarted { .. })
    ));
    let _again = leaver.start(announcement(2, 1)).await.expect("restarts");
    expect(
        &mut events,
        2 * interval,
        "return after leave",
        |e| matches!(e, DiscoveryEvent::Returned(p) if p.node_id == NodeId(2)),
    )
    .await;
}

#[tokio::test]
async fn restarted_node_is_reported_returned() {
    let interval = 50 * MS;
    let multicast = private_multicast();
    let observer = beacon(multicast, interval);
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");

    let first = beacon(multicast, interval);
    let _e1 = first.start(announcement(7, 100)).await.expect("starts");
    expect(
        &mut events,
        10 * interval,
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(7)),
    )
    .await;

    // The process "restarts" faster than the failure detector notices.
    drop(first);
    let second = beacon(multicast, interval);
    let _e2 = second.start(announcement(7, 101)).await.expect("starts");
    let returned = expect(&mut events, 10 * interval, "returned", |e| {
        matches!(e, DiscoveryEvent::Returned(_) | DiscoveryEvent::Lost(_))
    })
    .await;
    match returned {
        DiscoveryEvent::Returned(peer) => {
            assert_eq!(peer.node_id, NodeId(7));
            assert_eq!(peer.incarnation, 101);
        }
        other => panic!("expected Returned, got {other:?}"),
    }

    // And a node seen again after being lost is returned too.
    drop(second);
    let config = observer.config().liveness_config();
    expect(&mut events, config.detection_bound() + SLACK, "lost", |e| {
        *e == DiscoveryEvent::Lost(NodeId(7))
    })
    .await;
    let third = beacon(multicast, interval);
    let _e3 = third.start(announcement(7, 102)).await.expect("starts");
    expect(
        &mut events,
        10 * interval,
        "returned after lost",
        |e| matches!(e, DiscoveryEvent::Returned(p) if p.incarnation == 102),
    )
    .await;
}

#[tokio::test]
async fn group_switch_is_reported_as_updated() {
    let interval = 1000 * MS;
    let multicast = private_multicast();
    let observer = beacon(multicast, interval);
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");
    let mover = beacon(multicast, interval);
    let _e = mover.start(announcement(2, 1)).await.expect("starts");
    expect(
        &mut events,
        2 * interval,
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(2)),
    )
    .await;

    let switched = Instant::now();
    mover
        .update(announcement(2, 1).group("lab-4"))
        .await
        .expect("update");
    let updated = expect(&mut events, interval / 2, "update", |e| {
        matches!(e, DiscoveryEvent::Updated(_))
    })
    .await;
    match updated {
        DiscoveryEvent::Updated(peer) => assert_eq!(peer.group.as_deref(), Some("lab-4")),
        other => panic!("expected Updated, got {other:?}"),
    }
    eprintln!("group switch seen after {:?}", switched.elapsed());
}

#[tokio::test]
async fn beacons_without_the_session_key_are_ignored_and_counted() {
    let interval = 50 * MS;
    let multicast = private_multicast();
    let key = SessionKey::new(b"lab-3 shared secret");
    let a = beacon(multicast, interval).key(key.clone());
    let mut a_events = a.start(announcement(1, 1)).await.expect("starts");
    let b = beacon(multicast, interval).key(key);
    let mut b_events = b.start(announcement(2, 1)).await.expect("starts");
    let stranger = beacon(multicast, interval);
    let mut stranger_events = stranger.start(announcement(3, 1)).await.expect("starts");
    let impostor = beacon(multicast, interval).key(SessionKey::new(b"a guess"));
    let _impostor_events = impostor.start(announcement(4, 1)).await.expect("starts");

    expect(
        &mut a_events,
        10 * interval,
        "keyed peer",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(2)),
    )
    .await;
    expect(
        &mut b_events,
        10 * interval,
        "keyed peer",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(1)),
    )
    .await;

    // Several intervals pass: the keyed pair never reports the others.
    tokio::time::sleep(6 * interval).await;
    while let Some(event) = a_events.try_recv() {
        assert!(
            !matches!(event.node_id(), Some(NodeId(3 | 4))),
            "keyed beacon reported {event:?}"
        );
    }
    while let Some(event) = stranger_events.try_recv() {
        assert!(
            !matches!(event.node_id(), Some(NodeId(1 | 2 | 4))),
            "unkeyed beacon reported keyed {event:?}"
        );
    }
    let stats = a.stats();
    assert!(
        stats.dropped_unauthenticated >= 4,
        "keyed beacon counted only {} unauthenticated datagrams",
        stats.dropped_unauthenticated
    );
    assert!(stranger.stats().dropped_unauthenticated >= 4);
    assert_eq!(stats.dropped_malformed, 0);
    eprintln!("keyed beacon stats: {stats:?}");
}

#[tokio::test]
async fn malformed_datagrams_are_counted_and_ignored() {
    let interval = 50 * MS;
    let multicast = private_multicast();
    let target = beacon(multicast, interval);
    let mut events = target.start(announcement(1, 1)).await.expect("starts");

    // A raw sender on the loopback interface only.
    let raw = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .expect("socket");
    raw.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
        .expect("bind");
    raw.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
        .expect("multicast if");
    raw.set_multicast_ttl_v4(0).expect("ttl");
    let to = SocketAddrV4::new(multicast.0, multicast.1).into();

    let valid = plexus::discovery::datagram::seal(&announcement(9, 1), None).expect("seals");
    let mut bad_version = valid.to_vec();
    bad_version[5] = 99;
    let garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"hello".to_vec(),
        b"PLXB".to_vec(),
        b"PLXB\xff".to_vec(),
        valid[..valid.len() - 3].to_vec(),
        bad_version,
        [valid.to_vec(), vec![0]].concat(),
        vec![0xAB; 9000],
        (0..=255u8).cycle().take(1500).collect(),
    ];
    for datagram in &garbage {
        raw.send_to(datagram, &to).expect("send garbage");
    }

    let counted = timeout(20 * interval, async {
        while target.stats().dropped_malformed < garbage.len() as u64 {
            tokio::time::sleep(10 * MS).await;
        }
    })
    .await;
    let stats = target.stats();
    assert!(
        counted.is_ok(),
        "only {stats:?} after sending {} bad datagrams",
        garbage.len()
    );

    // Still alive and well: a real announcement from the same raw socket is heard.
    raw.send_to(&valid, &to).expect("send valid");
    expect(
        &mut events,
        20 * interval,
        "valid after garbage",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(9)),
    )
    .await;
    eprintln!("after garbage: {:?}", target.stats());
}

#[tokio::test]
async fn lifecycle_misuse_is_a_typed_error() {
    let multicast = private_multicast();
    let b = beacon(multicast, 100 * MS);
    assert!(matches!(
        b.update(announcement(1, 1)).await,
        Err(DiscoveryError::NotStarted { .. })
    ));
    let _events = b.start(announcement(1, 1)).await.expect("starts");
    assert!(matches!(
        b.start(announcement(1, 1)).await,
        Err(DiscoveryError::AlreadyStarted { .. })
    ));
    let too_long = Announcement::new(NodeId(1), "x".repeat(300));
    assert!(matches!(
        b.update(too_long).await,
        Err(DiscoveryError::Announcement(_))
    ));

    let unicast = Beacon::loopback().multicast_group(Ipv4Addr::new(127, 0, 0, 1));
    let err = unicast
        .start(announcement(1, 1))
        .await
        .expect_err("unicast multicast refused");
    assert!(matches!(err, DiscoveryError::Config { .. }), "{err}");
    assert!(err.to_string().contains("multicast"), "{err}");
}

#[tokio::test]
async fn works_through_a_boxed_trait_object() {
    let interval = 50 * MS;
    let multicast = private_multicast();
    let backends: Vec<Box<dyn Discovery>> = vec![
        Box::new(beacon(multicast, interval)),
        Box::new(beacon(multicast, interval)),
    ];
    assert_eq!(backends[0].backend(), "beacon");
    let mut first = backends[0].start(announcement(1, 1)).await.expect("starts");
    let _second = backends[1].start(announcement(2, 1)).await.expect("starts");
    expect(
        &mut first,
        10 * interval,
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(2)),
    )
    .await;
    assert!(backends[0].stats().sent >= 1);
}

#[tokio::test]
async fn an_observer_hears_every_node_and_is_heard_by_none() {
    let multicast = private_multicast();
    let interval = 50 * MS;
    let observer = beacon(multicast, interval);
    let mut observed = observer.observe().expect("observe");
    let alice = beacon(multicast, interval);
    let mut alice_events = alice.start(announcement(1, 1)).await.expect("start alice");
    let bob = beacon(multicast, interval);
    let mut bob_events = bob.start(announcement(2, 1)).await.expect("start bob");
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        let event = expect(&mut observed, 20 * interval + SLACK, "both nodes", |e| {
            matches!(e, DiscoveryEvent::Discovered(_))
        })
        .await;
        if let DiscoveryEvent::Discovered(record) = event {
            seen.insert(record.node_id);
        }
    }
    assert_eq!(seen, HashSet::from([NodeId(1), NodeId(2)]));
    expect(
        &mut alice_events,
        20 * interval + SLACK,
        "bob at alice",
        |e| matches!(e, DiscoveryEvent::Discovered(r) if r.node_id == NodeId(2)),
    )
    .await;
    // Alice and bob have announced several times by now; neither heard
    // anyone but the other, and the observer sent nothing.
    while let Some(event) = alice_events.try_recv() {
        assert_eq!(event.node_id(), Some(NodeId(2)), "alice heard {event:?}");
    }
    while let Some(event) = bob_events.try_recv() {
        assert_eq!(event.node_id(), Some(NodeId(1)), "bob heard {event:?}");
    }
    assert_eq!(observer.stats().sent, 0);
    // A leave is seen by the observer without waiting for a timeout.
    alice.leave().await.expect("alice leaves");
    expect(
        &mut observed,
        10 * interval + SLACK,
        "alice's leave",
        |e| matches!(e, DiscoveryEvent::Left(id) if *id == NodeId(1)),
    )
    .await;
    observer.leave().await.expect("observer stops");
    assert_eq!(observer.stats().sent, 0);
}

/// A raw socket on the group, recording what is sent there.
fn recorder(multicast: (Ipv4Addr, u16)) -> std::net::UdpSocket {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .expect("socket");
    socket.set_reuse_address(true).expect("reuse address");
    socket.set_reuse_port(true).expect("reuse port");
    socket
        .bind(
            &std::net::SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, multicast.1))
                .into(),
        )
        .expect("bind");
    socket
        .join_multicast_v4(&multicast.0, &Ipv4Addr::LOCALHOST)
        .expect("join");
    socket.set_multicast_loop_v4(true).expect("loop");
    // What it sends (the replay) stays on this host's loopback.
    socket
        .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
        .expect("loopback interface");
    socket.set_multicast_ttl_v4(0).expect("ttl 0");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    socket.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_keyed_announcement_replayed_later_is_ignored() {
    let multicast = private_multicast();
    let key = SessionKey::new(b"lab key");
    let interval = 50 * MS;
    // Forgets departed peers fast, so only the replay window stands between
    // a replay and a resurrected node.
    let mut liveness = plexus::discovery::LivenessConfig::for_interval(interval);
    liveness.forget_after = liveness.lost_after;
    let window = 400 * MS;
    let observer = beacon(multicast, interval)
        .key(key.clone())
        .liveness(liveness)
        .replay_window(window);
    let mut heard = observer.observe().expect("observer");
    let tap = recorder(multicast);
    let node = beacon(multicast, interval).key(key.clone());
    node.start(announcement(7, 1)).await.expect("node");
    expect(
        &mut heard,
        interval * 4 + SLACK,
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(r) if r.node_id == NodeId(7)),
    )
    .await;
    let mut captured = vec![0u8; 4096];
    let (len, _) = tap.recv_from(&mut captured).expect("a datagram");
    captured.truncate(len);
    node.leave().await.expect("leave");
    expect(&mut heard, interval * 4 + SLACK, "leave", |e| {
        *e == DiscoveryEvent::Left(NodeId(7))
    })
    .await;
    // Past the window (and past forgetting), the recording is played back.
    tokio::time::sleep(window + 100 * MS).await;
    let before = observer.stats().dropped_unauthenticated;
    for _ in 0..3 {
        tap.send_to(&captured, SocketAddrV4::new(multicast.0, multicast.1))
            .expect("replay");
    }
    let resurrected = timeout(interval * 10, async {
        while let Some(e) = heard.recv().await {
            if e.node_id() == Some(NodeId(7)) {
                return Some(e);
            }
        }
        None
    })
    .await;
    assert!(
        !matches!(resurrected, Ok(Some(_))),
        "the replay brought the node back: {resurrected:?}"
    );
    assert!(observer.stats().dropped_unauthenticated > before);
    observer.leave().await.expect("stop");
}

/// A process that was frozen (stopped by a debugger, starved by a busy
/// machine, paged out) past the loss bound wakes to a socket full of its
/// peers' announcements. Those must count before anyone is judged silent:
/// the peer announced all along, so it is neither suspect nor lost. Before
/// the beacon heard what was waiting first, its liveness check won the race
/// with the socket about half of the time and reported the peer lost, so a
/// starved node of a mesh dropped its links to live peers.
#[tokio::test]
async fn an_observer_frozen_past_the_loss_bound_judges_no_live_peer_lost() {
    const FREEZES: usize = 4;
    let multicast = private_multicast();
    let interval = 80 * MS;
    // The peer runs on a runtime of its own, so it keeps announcing while
    // this one (and the observer's task on it) is frozen.
    let peer_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("peer runtime");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let peer = peer_runtime.spawn(async move {
        let peer = beacon(multicast, interval);
        let _events = peer.start(announcement(2, 1)).await.expect("peer starts");
        let _ = stopped.await;
        peer.leave().await.expect("peer leaves");
    });

    let observer = beacon(multicast, interval);
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");
    expect(
        &mut events,
        20 * interval + SLACK,
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(2)),
    )
    .await;
    let config = observer.config().liveness_config();
    let freeze = config.lost_after + 2 * config.check_interval;
    let mut verdicts = Vec::new();
    for _ in 0..FREEZES {
        // Blocks this runtime's only thread: no task of it runs meanwhile,
        // the observer's included, while the peer's announcements arrive.
        std::thread::sleep(freeze);
        // Then a few intervals of the observer running normally again.
        let awake = tokio::time::sleep(3 * interval);
        tokio::pin!(awake);
        loop {
            tokio::select! {
                () = &mut awake => break,
                event = events.recv() => match event {
                    Some(e @ (DiscoveryEvent::Suspect(_) | DiscoveryEvent::Lost(_))) => {
                        verdicts.push(e)
                    }
                    Some(_) => {}
                    None => panic!("the observer's events ended"),
                },
            }
        }
    }
    let _ = stop.send(());
    timeout(10 * interval + SLACK, peer)
        .await
        .expect("peer stops in time")
        .expect("peer task");
    peer_runtime.shutdown_background();
    assert!(
        verdicts.is_empty(),
        "a live peer was judged after the observer's freezes of {freeze:?}: {verdicts:?}"
    );
    assert!(observer.stats().received > 0);
}
