//! Nodes found through a static list of URLs instead of announcements: the
//! node dials each URL, learns the peer's id from the handshake and its
//! services from the description, treats the connection as the peer's life,
//! and redials a lost peer until it returns.
//!
//! Linking, redialing and the duplicate-link rule are the node's logic, not
//! the socket's: the nodes listen on `inproc://` and the tests run on
//! tokio's paused clock, so "several reconcile ticks later" is exact.

use std::time::Duration;

use plexus::discovery::Static;
use plexus::Reject;
use plexus::{node::NodeEvent, Node};
use tokio::time::timeout;

/// Says which node answered.
#[plexus::service(package = "static")]
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

const STEP: Duration = Duration::from_secs(20);

/// A fresh `inproc://` address for node `name` of test `test`.
fn inproc(test: &str, name: &str) -> String {
    format!("inproc://static-{test}-{name}-{}", std::process::id())
}

async fn node(name: &'static str, listen: &str, peers: Vec<String>) -> Node {
    Node::builder(name)
        .listen(listen)
        .group("static-room")
        .discovery(Static::new(peers))
        .serve(WhoamiHandler::new(Named(name)))
        .reconcile_interval(Duration::from_millis(50))
        .start()
        .await
        .expect("node starts")
}

async fn next_matching(
    events: &mut plexus::node::NodeEvents,
    want: impl Fn(&NodeEvent) -> bool,
) -> NodeEvent {
    timeout(STEP, async {
        loop {
            match events.recv().await {
                Some(e) if want(&e) => break e,
                Some(_) => {}
                None => panic!("event stream ended"),
            }
        }
    })
    .await
    .expect("event within the bound")
}

#[tokio::test(start_paused = true)]
async fn static_list_links_both_sides_and_redials_a_returning_peer() {
    // B lists nobody; A lists B. Both end up linked: A dials, B learns A from
    // A's description.
    let b = node("b", &inproc("redial", "b"), Vec::new()).await;
    let b_url = b.local_urls()[0].to_string();
    let b_id = b.id();
    let a = node("a", &inproc("redial", "a"), vec![b_url.clone()]).await;
    let mut a_events = a.events();
    let a_peers = a.peers::<WhoamiClient>();
    timeout(STEP, a_peers.wait_until(|ids| ids.contains(&b_id)))
        .await
        .expect("a links b");
    let b_peers = b.peers::<WhoamiClient>();
    timeout(STEP, b_peers.wait_until(|ids| ids.contains(&a.id())))
        .await
        .expect("b links a");
    let client = a_peers.get(b_id).expect("b in a's set");
    assert_eq!(
        timeout(STEP, client.name())
            .await
            .expect("bounded")
            .expect("call"),
        "b"
    );

    // B dies without a word: its connection is A's only sign of life.
    drop(b_peers);
    drop(b);
    let lost = next_matching(
        &mut a_events,
        |e| matches!(e, NodeEvent::PeerLost(id) if *id == b_id),
    )
    .await;
    assert!(matches!(lost, NodeEvent::PeerLost(_)));
    timeout(STEP, a_peers.wait_until(|ids| !ids.contains(&b_id)))
        .await
        .expect("b leaves a's set");

    // A node comes back at the same address: A redials it and links again.
    let b2 = timeout(STEP, async {
        loop {
            match Node::builder("b2")
                .listen(b_url.as_str())
                .group("static-room")
                .discovery(Static::new(Vec::<String>::new()))
                .serve(WhoamiHandler::new(Named("b2")))
                .start()
                .await
            {
                Ok(n) => break n,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("b2 binds");
    let b2_id = b2.id();
    timeout(STEP, a_peers.wait_until(|ids| ids.contains(&b2_id)))
        .await
        .expect("a links b2");
    let client = a_peers.get(b2_id).expect("b2 in a's set");
    assert_eq!(
        timeout(STEP, client.name())
            .await
            .expect("bounded")
            .expect("call"),
        "b2"
    );
    b2.stop().await.expect("stop");
    a.stop().await.expect("stop");
}

#[tokio::test(start_paused = true)]
async fn two_nodes_listing_each_other_keep_one_connection() {
    // Both sides dial: the connection the lower node id dialed is kept by both.
    let (u1, u2) = (inproc("twice", "x"), inproc("twice", "y"));
    let (x, y) = tokio::join!(
        node("x", &u1, vec![u2.clone()]),
        node("y", &u2, vec![u1.clone()])
    );
    let xs = x.peers::<WhoamiClient>();
    let ys = y.peers::<WhoamiClient>();
    timeout(STEP, xs.wait_until(|ids| ids.contains(&y.id())))
        .await
        .expect("x links y");
    timeout(STEP, ys.wait_until(|ids| ids.contains(&x.id())))
        .await
        .expect("y links x");
    // Settled: six reconcile ticks later both still hold exactly one link
    // and calls work both ways.
    tokio::time::sleep(6 * Duration::from_millis(50)).await;
    assert_eq!(
        x.endpoint().connections().len(),
        1,
        "x holds one connection"
    );
    assert_eq!(
        y.endpoint().connections().len(),
        1,
        "y holds one connection"
    );
    let to_y = xs.get(y.id()).expect("y");
    let to_x = ys.get(x.id()).expect("x");
    assert_eq!(
        timeout(STEP, to_y.name())
            .await
            .expect("bounded")
            .expect("call"),
        "y"
    );
    assert_eq!(
        timeout(STEP, to_x.name())
            .await
            .expect("bounded")
            .expect("call"),
        "x"
    );
    x.stop().await.expect("stop");
    y.stop().await.expect("stop");
}
