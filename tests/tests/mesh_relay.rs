//! Broadcasts beyond one hop and fan-out of streams, through the public
//! API: a relayed call reaches every node of a mesh (TCPPeer's test: twenty
//! nodes in a chain, all answer), each node answers once however many ways
//! the call reaches it, replies are tagged by the node that produced them,
//! a node that never answers is reported at the deadline by its neighbour,
//! and a server-stream operation fans out with its items tagged by peer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use plexus::discovery::Static;
use plexus::Node;
use plexus::{BoxStream, CallError, NodeId, Reject};
use plexus_tests::bounded;

/// Says who answered; counts how often.
#[plexus::service(package = "mesh")]
pub trait Echo {
    /// The serving node's name.
    async fn whoami(&self) -> Result<String, Reject>;
    /// A note for the log.
    #[oneway]
    async fn note(&self, text: String);
    /// `n` numbers, each tagged with the serving node's index.
    async fn count(&self, n: u32) -> Result<BoxStream<(u32, u32)>, Reject>;
}

struct Member {
    index: u32,
    name: String,
    answered: Arc<AtomicU32>,
    noted: Arc<AtomicU32>,
    hung: bool,
}

impl Echo for Member {
    async fn whoami(&self) -> Result<String, Reject> {
        self.answered.fetch_add(1, Ordering::SeqCst);
        if self.hung {
            std::future::pending::<()>().await;
        }
        Ok(self.name.clone())
    }

    async fn note(&self, _text: String) {
        self.noted.fetch_add(1, Ordering::SeqCst);
    }

    async fn count(&self, n: u32) -> Result<BoxStream<(u32, u32)>, Reject> {
        let index = self.index;
        Ok(Box::pin(futures_util::stream::iter(
            (0..n).map(move |i| (index, i)),
        )))
    }
}

struct Mesh {
    nodes: Vec<Node>,
    answered: Vec<Arc<AtomicU32>>,
    noted: Vec<Arc<AtomicU32>>,
}

/// `n` nodes; node `i` lists the nodes `links(i)` (higher indexes only, so
/// they exist when it starts). `hung` nodes never answer `whoami`.
async fn mesh(n: usize, links: impl Fn(usize) -> Vec<usize>, hung: &[usize]) -> Mesh {
    let mut nodes: Vec<Option<Node>> = (0..n).map(|_| None).collect();
    let mut answered = Vec::new();
    let mut noted = Vec::new();
    for _ in 0..n {
        answered.push(Arc::new(AtomicU32::new(0)));
        noted.push(Arc::new(AtomicU32::new(0)));
    }
    for i in (0..n).rev() {
        let listed: Vec<String> = links(i)
            .into_iter()
            .map(|j| {
                let node: &Node = nodes[j].as_ref().expect("started before");
                node.local_urls()[0].to_string()
            })
            .collect();
        let member = Member {
            index: i as u32,
            name: format!("node-{i}"),
            answered: answered[i].clone(),
            noted: noted[i].clone(),
            hung: hung.contains(&i),
        };
        let node = Node::builder(format!("node-{i}"))
            .group("mesh")
            .discovery(Static::new(listed))
            .serve(EchoHandler::new(member))
            .reconcile_interval(Duration::from_millis(100))
            .start()
            .await
            .expect("node starts");
        nodes[i] = Some(node);
    }
    let nodes: Vec<Node> = nodes.into_iter().flatten().collect();
    // Wait until every listed link is up, both ways.
    for i in 0..n {
        for j in links(i) {
            let (a, b) = (&nodes[i], &nodes[j]);
            let (a_id, b_id) = (a.id(), b.id());
            bounded(
                "a link",
                a.peers::<EchoClient>()
                    .wait_until(|ids| ids.contains(&b_id)),
            )
            .await;
            bounded(
                "a link",
                b.peers::<EchoClient>()
                    .wait_until(|ids| ids.contains(&a_id)),
            )
            .await;
        }
    }
    Mesh {
        nodes,
        answered,
        noted,
    }
}

impl Mesh {
    async fn stop(self) {
        for n in self.nodes {
            n.stop().await.expect("stop");
        }
    }

    fn index_of(&self, id: NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id() == id)
            .expect("a node of the mesh")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_in_a_chain_all_answer_a_relayed_call() {
    const N: usize = 20;
    let m = mesh(N, |i| if i + 1 < N { vec![i + 1] } else { Vec::new() }, &[]).await;
    let origin = &m.nodes[0];
    assert_eq!(
        origin.peers::<EchoClient>().len(),
        1,
        "one hop reaches one node"
    );
    let replies: Vec<(NodeId, Result<String, CallError>)> = bounded(
        "every reply",
        origin
            .relay::<EchoClient>(Duration::from_secs(10))
            .whoami()
            .collect(),
    )
    .await;
    let mut by_node = BTreeMap::new();
    for (from, reply) in replies {
        let name = reply.expect("every node answers");
        assert_eq!(
            name,
            format!("node-{}", m.index_of(from)),
            "tagged by origin"
        );
        assert!(by_node.insert(from, name).is_none(), "one reply per node");
    }
    assert_eq!(by_node.len(), N - 1, "every node but the origin");
    for (i, count) in m.answered.iter().enumerate().skip(1) {
        assert_eq!(count.load(Ordering::SeqCst), 1, "node-{i} ran it once");
    }
    assert_eq!(m.answered[0].load(Ordering::SeqCst), 0, "not the origin");

    // With a hop limit, the call stops there.
    let near: Vec<_> = bounded(
        "near replies",
        origin
            .relay_within::<EchoClient>(Duration::from_secs(10), 3)
            .whoami()
            .collect::<Vec<_>>(),
    )
    .await;
    let reached: BTreeSet<usize> = near.iter().map(|(id, _)| m.index_of(*id)).collect();
    assert_eq!(reached, BTreeSet::from([1, 2, 3]));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_mesh_with_cycles_every_node_answers_once() {
    // A ring of eight with chords: many ways round to every node.
    const N: usize = 8;
    let m = mesh(
        N,
        |i| {
            let mut to = Vec::new();
            if i + 1 < N {
                to.push(i + 1);
            }
            if i == 0 {
                to.push(N - 1);
            }
            if i + 3 < N {
                to.push(i + 3);
            }
            to
        },
        &[],
    )
    .await;
    let replies: Vec<_> = bounded(
        "replies",
        m.nodes[2]
            .relay::<EchoClient>(Duration::from_secs(10))
            .whoami()
            .collect::<Vec<_>>(),
    )
    .await;
    let from: Vec<usize> = replies.iter().map(|(id, _)| m.index_of(*id)).collect();
    let distinct: BTreeSet<usize> = from.iter().copied().collect();
    assert_eq!(from.len(), N - 1, "one reply each: {from:?}");
    assert_eq!(distinct.len(), N - 1);
    for (i, count) in m.answered.iter().enumerate() {
        let want = u32::from(i != 2);
        assert_eq!(count.load(Ordering::SeqCst), want, "node-{i}");
    }
    // One-way calls are relayed the same way.
    let sent = bounded(
        "notes",
        m.nodes[2]
            .relay::<EchoClient>(Duration::from_secs(10))
            .note("hello".into()),
    )
    .await;
    assert_eq!(sent.len(), N - 1);
    assert!(sent.iter().all(|(_, r)| r.is_ok()), "{sent:?}");
    for (i, count) in m.noted.iter().enumerate() {
        assert_eq!(count.load(Ordering::SeqCst), u32::from(i != 2), "node-{i}");
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_is_reported_by_its_neighbour_and_hides_nobody() {
    // 0 - 1 - 2(hung) - 3 - 4
    const N: usize = 5;
    let m = mesh(
        N,
        |i| if i + 1 < N { vec![i + 1] } else { Vec::new() },
        &[2],
    )
    .await;
    let replies: Vec<_> = bounded(
        "replies",
        m.nodes[0]
            .relay::<EchoClient>(Duration::from_millis(1500))
            .whoami()
            .collect::<Vec<_>>(),
    )
    .await;
    let mut ok = BTreeSet::new();
    let mut timed_out = BTreeSet::new();
    for (id, reply) in &replies {
        match reply {
            Ok(_) => ok.insert(m.index_of(*id)),
            Err(CallError::Timeout { .. }) => timed_out.insert(m.index_of(*id)),
            Err(e) => panic!("unexpected {e}"),
        };
    }
    assert_eq!(ok, BTreeSet::from([1, 3, 4]), "the nodes past it answer");
    assert_eq!(timed_out, BTreeSet::from([2]), "{replies:?}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_fans_out_with_every_item_tagged_by_its_peer() {
    const N: usize = 4;
    // A star: node 0 lists every other.
    let m = mesh(
        N,
        |i| if i == 0 { (1..N).collect() } else { Vec::new() },
        &[],
    )
    .await;
    let mut items = m.nodes[0]
        .fanout::<EchoClient>(Duration::from_secs(10))
        .count(50);
    assert_eq!(items.peers().len(), N - 1);
    let mut per_peer: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    while let Some((peer, item)) = bounded("an item", items.next()).await {
        let (index, i) = item.expect("an item");
        assert_eq!(
            m.index_of(peer),
            index as usize,
            "tagged by the peer that sent it"
        );
        per_peer.entry(index as usize).or_default().push(i);
    }
    assert_eq!(items.pending(), 0);
    assert_eq!(per_peer.len(), N - 1);
    for (peer, got) in per_peer {
        assert_eq!(
            got,
            (0..50).collect::<Vec<_>>(),
            "node-{peer}: all, in order"
        );
    }
    m.stop().await;
}
