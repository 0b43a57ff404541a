//! Nodes whose discovery is a real etcd, end to end: they find each other
//! through it and link, a node that crashes is reported lost when its lease
//! expires, and a restarted node returns and links again.
#![cfg(feature = "etcd")]

use std::time::Duration;

use plexus::{
    node::{NodeEvent, NodeEvents},
    Node,
};
use plexus::{NodeId, Reject};
use tokio::time::{timeout, Instant};

mod etcd_server;

use etcd_server::EtcdServer;

/// Lease TTL of the nodes: short, so that expiry is quick.
const TTL: Duration = Duration::from_secs(2);

/// etcd checks leases about every 500 ms; plus scheduling slack.
const EXPIRY_SLACK: Duration = Duration::from_millis(2500);

const STEP: Duration = Duration::from_secs(20);

/// Says who answered.
#[plexus::service(package = "etcdnodes")]
pub trait Whoami {
    /// The serving node's name.
    async fn name(&self) -> Result<String, Reject>;
}

struct Named(&'static str);

impl Whoami for Named {
    async fn name(&self) -> Result<String, Reject> {
        Ok(self.0.to_owned())
    }
}

async fn node(etcd: &EtcdServer, prefix: &str, name: &'static str, id: NodeId) -> Node {
    Node::builder(name)
        .node_id(id)
        .group("fleet")
        .discovery(etcd.discovery(prefix, TTL))
        .serve(WhoamiHandler::new(Named(name)))
        .reconcile_interval(Duration::from_millis(100))
        .start()
        .await
        .expect("node starts")
}

async fn expect(
    events: &mut NodeEvents,
    bound: Duration,
    what: &str,
    want: impl Fn(&NodeEvent) -> bool,
) {
    let found = timeout(bound, async {
        while let Some(e) = events.recv().await {
            if want(&e) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no {what} within {bound:?}");
}

async fn answers(from: &Node, peer: NodeId, name: &str) {
    let peers = from.peers::<WhoamiClient>();
    timeout(STEP, peers.wait_until(|ids| ids.contains(&peer)))
        .await
        .expect("linked");
    let client = peers.get(peer).expect("a member");
    let said = timeout(STEP, client.name())
        .await
        .expect("bounded")
        .expect("answered");
    assert_eq!(said, name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_over_etcd_link_see_a_lease_expire_and_a_restart_return() {
    let etcd = EtcdServer::start().await;
    let prefix = format!("/plexus-test/{}", NodeId::random());
    let a = node(&etcd, &prefix, "a", NodeId(1)).await;
    let mut a_events = a.events();
    let b_id = NodeId(2);
    let b = node(&etcd, &prefix, "b", b_id).await;
    answers(&a, b_id, "b").await;
    answers(&b, a.id(), "a").await;

    // B crashes: no leave, its keep-alive stops; etcd drops its key when
    // the lease runs out, and A reports it lost.
    let crashed = Instant::now();
    drop(b);
    expect(
        &mut a_events,
        TTL + EXPIRY_SLACK + Duration::from_secs(2),
        "B lost",
        |e| matches!(e, NodeEvent::PeerLost(id) if *id == b_id),
    )
    .await;
    let took = crashed.elapsed();
    eprintln!("lease expiry reported lost {took:?} after the crash (ttl {TTL:?})");
    assert!(!a.peers::<WhoamiClient>().ids().contains(&b_id), "unlinked");

    // B comes back (a new process, the same node id): it returns.
    let b = node(&etcd, &prefix, "b", b_id).await;
    expect(
        &mut a_events,
        STEP,
        "B returned",
        |e| matches!(e, NodeEvent::PeerReturned(id) if *id == b_id),
    )
    .await;
    answers(&a, b_id, "b").await;
    b.stop().await.expect("stop");
    expect(
        &mut a_events,
        STEP,
        "B left",
        |e| matches!(e, NodeEvent::PeerLeft(id) if *id == b_id),
    )
    .await;
    a.stop().await.expect("stop");
}
