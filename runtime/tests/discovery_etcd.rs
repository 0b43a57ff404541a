//! The etcd backend against a real `etcd` (Debian package `etcd-server`)
//! started on loopback ports with a temporary data dir, and killed at the end.
#![cfg(feature = "etcd")]

use std::time::Duration;

use plexus::discovery::{Announcement, Discovery, DiscoveryEvent, DiscoveryEvents, Etcd};
use plexus::NodeId;
use tokio::time::{timeout, Instant};

/// Lease TTL of the nodes under test: short, so expiry is quick.
const TTL: Duration = Duration::from_secs(2);

/// etcd checks lease expiry about every 500 ms; add scheduling slack.
const EXPIRY_SLACK: Duration = Duration::from_millis(2500);

mod etcd_server;

use etcd_server::EtcdServer;

/// A backend on `etcd` under `prefix`, with the short test lease.
fn node_on(etcd: &EtcdServer, prefix: &str) -> Etcd {
    etcd.discovery(prefix, TTL)
}

fn announcement(id: u128, incarnation: u64) -> Announcement {
    Announcement::new(NodeId(id), format!("node-{id}"))
        .group("lab-3")
        .endpoint(format!("tcp://127.0.0.1:{}", 5000 + id))
        .incarnation(incarnation)
}

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

#[tokio::test]
async fn a_node_appears_and_disappears_on_lease_expiry() {
    let etcd = EtcdServer::start().await;
    let observer = node_on(&etcd, "/test/expiry");
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");

    let crashing = node_on(&etcd, "/test/expiry");
    let _crashing_events = crashing.start(announcement(2, 1)).await.expect("starts");
    let appeared = expect(&mut events, Duration::from_secs(5), "discovery", |e| {
        matches!(e, DiscoveryEvent::Discovered(_))
    })
    .await;
    match appeared {
        DiscoveryEvent::Discovered(peer) => {
            assert_eq!(peer.node_id, NodeId(2));
            assert_eq!(peer.endpoints, ["tcp://127.0.0.1:5002"]);
        }
        other => panic!("expected Discovered, got {other:?}"),
    }

    // Crash: the keep-alive stops, the lease is not revoked.
    let crashed_at = Instant::now();
    drop(crashing);
    let gone = expect(&mut events, TTL + EXPIRY_SLACK, "lost", |e| {
        matches!(e, DiscoveryEvent::Lost(_) | DiscoveryEvent::Left(_))
    })
    .await;
    assert_eq!(gone, DiscoveryEvent::Lost(NodeId(2)));
    let took = crashed_at.elapsed();
    assert!(took >= Duration::from_secs(1), "lost too early ({took:?})");
    eprintln!("lease expiry reported lost after {took:?} (ttl {TTL:?})");
    assert!(observer.stats().accepted >= 1);
}

#[tokio::test]
async fn a_graceful_leave_is_seen_as_left_not_lost() {
    let etcd = EtcdServer::start().await;
    // A node already registered before the observer starts is found by the
    // initial listing.
    let leaver = node_on(&etcd, "/test/leave");
    let _leaver_events = leaver.start(announcement(2, 1)).await.expect("starts");
    let observer = node_on(&etcd, "/test/leave");
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");
    expect(
        &mut events,
        Duration::from_secs(5),
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(2)),
    )
    .await;

    let leaving = Instant::now();
    leaver.leave().await.expect("leave");
    let gone = expect(&mut events, Duration::from_secs(5), "left", |e| {
        matches!(e, DiscoveryEvent::Left(_) | DiscoveryEvent::Lost(_))
    })
    .await;
    assert_eq!(
        gone,
        DiscoveryEvent::Left(NodeId(2)),
        "a graceful leave must be Left, not Lost"
    );
    eprintln!("leave seen after {:?}", leaving.elapsed());

    // The revoke's delete that follows is not reported as a loss.
    let later = timeout(Duration::from_millis(500), events.recv()).await;
    assert!(later.is_err(), "unexpected event after leave: {later:?}");
}

#[tokio::test]
async fn group_switch_and_restart_are_reported() {
    let etcd = EtcdServer::start().await;
    let observer = node_on(&etcd, "/test/update");
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");
    let mover = node_on(&etcd, "/test/update");
    let _mover_events = mover.start(announcement(2, 1)).await.expect("starts");
    expect(
        &mut events,
        Duration::from_secs(5),
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(2)),
    )
    .await;

    mover
        .update(announcement(2, 1).group("lab-4"))
        .await
        .expect("update");
    let updated = expect(&mut events, Duration::from_secs(5), "update", |e| {
        matches!(e, DiscoveryEvent::Updated(_))
    })
    .await;
    assert!(matches!(updated, DiscoveryEvent::Updated(p) if p.group.as_deref() == Some("lab-4")));

    // A restart (new incarnation) before the old lease expires.
    drop(mover);
    let restarted = node_on(&etcd, "/test/update");
    let _restarted_events = restarted.start(announcement(2, 2)).await.expect("starts");
    let returned = expect(&mut events, Duration::from_secs(5), "returned", |e| {
        matches!(e, DiscoveryEvent::Returned(_))
    })
    .await;
    assert!(matches!(returned, DiscoveryEvent::Returned(p) if p.incarnation == 2));
    // The old lease's expiry does not delete the re-registered key: no loss.
    let later = timeout(TTL + Duration::from_secs(1), async {
        loop {
            match events.recv().await {
                Some(DiscoveryEvent::Lost(id)) => return id,
                Some(_) => {}
                None => std::future::pending().await,
            }
        }
    })
    .await;
    assert!(later.is_err(), "restarted node reported lost: {later:?}");
}

#[tokio::test]
async fn with_a_key_only_records_tagged_under_it_are_believed() {
    let etcd = EtcdServer::start().await;
    let key = plexus::wire::key::SessionKey::new(b"fleet key, 32 bytes of secret!!!");
    let observer = node_on(&etcd, "/test/keyed").key(key.clone());
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");

    // A node without the key, and one with another key, in the same prefix.
    let keyless = node_on(&etcd, "/test/keyed");
    let _keyless_events = keyless.start(announcement(2, 1)).await.expect("starts");
    let other =
        node_on(&etcd, "/test/keyed").key(plexus::wire::key::SessionKey::new(b"another key"));
    let _other_events = other.start(announcement(3, 1)).await.expect("starts");
    // A record written straight into etcd by someone who can write to the
    // prefix but has no key: a well-formed announcement, untagged.
    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(5));
    let mut client = etcd_client::Client::connect([etcd.url()], Some(options))
        .await
        .expect("etcd client");
    let injected = announcement(4, 1);
    let mut raw = bytes::BytesMut::new();
    injected.encode_into(&mut raw).expect("encodes");
    client
        .put(format!("/test/keyed/{}", NodeId(4)), raw.to_vec(), None)
        .await
        .expect("put");

    // The keyed peer is found; the others never are.
    let member = node_on(&etcd, "/test/keyed").key(key);
    let _member_events = member.start(announcement(5, 1)).await.expect("starts");
    let found = expect(
        &mut events,
        Duration::from_secs(5),
        "the keyed member",
        |e| matches!(e, DiscoveryEvent::Discovered(_)),
    )
    .await;
    assert!(
        matches!(&found, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(5)),
        "{found:?}"
    );
    let later = timeout(Duration::from_millis(500), async {
        loop {
            match events.recv().await {
                Some(DiscoveryEvent::Discovered(p)) => return p.node_id,
                Some(_) => {}
                None => std::future::pending().await,
            }
        }
    })
    .await;
    assert!(
        later.is_err(),
        "an untrusted record was believed: {later:?}"
    );
    let stats = observer.stats();
    assert!(
        stats.dropped_unauthenticated >= 3,
        "keyless, other-key and injected records are counted: {stats:?}"
    );
}
