//! The etcd backend against a real `etcd` (Debian package `etcd-server`)
//! started on loopback ports with a temporary data dir, and killed at the end.
#![cfg(feature = "etcd")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use plexus::discovery::{
    Announcement, Discovery, DiscoveryEvent, DiscoveryEvents, Etcd, EtcdConfig,
};
use plexus::NodeId;
use tokio::time::{timeout, Instant};

/// Lease TTL of the nodes under test: short, so expiry is quick.
const TTL: Duration = Duration::from_secs(2);

/// etcd checks lease expiry about every 500 ms; add scheduling slack.
const EXPIRY_SLACK: Duration = Duration::from_millis(2500);

/// A running etcd on loopback; killed, and its data dir removed, on drop.
struct EtcdServer {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl EtcdServer {
    async fn start() -> EtcdServer {
        let client_port = free_port();
        let peer_port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "plexus-etcd-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("log file");
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&url)
            .arg("--advertise-client-urls")
            .arg(&url)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("`etcd` must be installed (Debian package etcd-server)");
        let server = EtcdServer { child, dir, url };
        server.wait_ready().await;
        server
    }

    /// Polls until etcd answers a request (bounded).
    async fn wait_ready(&self) {
        let ready = timeout(Duration::from_secs(20), async {
            loop {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_timeout(Duration::from_millis(500));
                if let Ok(mut client) =
                    etcd_client::Client::connect([&self.url], Some(options)).await
                {
                    if client.status().await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if ready.is_err() {
            let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
            panic!("etcd at {} not ready within 20 s; log:\n{log}", self.url);
        }
    }

    fn node(&self, prefix: &str) -> Etcd {
        Etcd::new(EtcdConfig::new([self.url.clone()]))
            .prefix(prefix)
            .ttl(TTL)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn announcement(id: u128, incarnation: u64) -> Announcement {
    Announcement::new(NodeId(id), format!("node-{id}"))
        .session("lab-3")
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
    let observer = etcd.node("/test/expiry");
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");

    let crashing = etcd.node("/test/expiry");
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
    let leaver = etcd.node("/test/leave");
    let _leaver_events = leaver.start(announcement(2, 1)).await.expect("starts");
    let observer = etcd.node("/test/leave");
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
async fn session_switch_and_restart_are_reported() {
    let etcd = EtcdServer::start().await;
    let observer = etcd.node("/test/update");
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");
    let mover = etcd.node("/test/update");
    let _mover_events = mover.start(announcement(2, 1)).await.expect("starts");
    expect(
        &mut events,
        Duration::from_secs(5),
        "discovery",
        |e| matches!(e, DiscoveryEvent::Discovered(p) if p.node_id == NodeId(2)),
    )
    .await;

    mover
        .update(announcement(2, 1).session("lab-4"))
        .await
        .expect("update");
    let updated = expect(&mut events, Duration::from_secs(5), "update", |e| {
        matches!(e, DiscoveryEvent::Updated(_))
    })
    .await;
    assert!(matches!(updated, DiscoveryEvent::Updated(p) if p.session.as_deref() == Some("lab-4")));

    // A restart (new incarnation) before the old lease expires.
    drop(mover);
    let restarted = etcd.node("/test/update");
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
    let key = plexus::discovery::SessionKey::new(b"fleet key, 32 bytes of secret!!!");
    let observer = etcd.node("/test/keyed").key(key.clone());
    let mut events = observer.start(announcement(1, 1)).await.expect("starts");

    // A node without the key, and one with another key, in the same prefix.
    let keyless = etcd.node("/test/keyed");
    let _keyless_events = keyless.start(announcement(2, 1)).await.expect("starts");
    let other = etcd
        .node("/test/keyed")
        .key(plexus::discovery::SessionKey::new(b"another key"));
    let _other_events = other.start(announcement(3, 1)).await.expect("starts");
    // A record written straight into etcd by someone who can write to the
    // prefix but has no key: a well-formed announcement, untagged.
    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(5));
    let mut client = etcd_client::Client::connect([&etcd.url], Some(options))
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
    let member = etcd.node("/test/keyed").key(key);
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
