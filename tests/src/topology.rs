//! The chat-style mesh the topology page tests look at: a few nodes on a
//! private loopback multicast group, in group `lobby`, each serving a chat
//! room, the last one serving the live topology page.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures_util::StreamExt;
use plexus::discovery::Beacon;
use plexus::Node;
use plexus::{NodeId, Reject};

/// A chat room, as in the `chat` example.
#[plexus::service(package = "topo")]
pub trait Chat {
    /// Delivers a message; replies with its length.
    async fn post(&self, from: String, text: String) -> Result<u64, Reject>;
}

struct Room;

impl Chat for Room {
    async fn post(&self, _from: String, text: String) -> Result<u64, Reject> {
        Ok(text.len() as u64)
    }
}

/// The full name of the mesh's chat service, as the page shows it.
pub const CHAT_SERVICE: &str = "topo.Chat";

/// Nodes that found and linked each other; the last serves the page.
pub struct Mesh {
    /// The nodes, in the order of the names given to [`Mesh::start`].
    pub nodes: Vec<Node>,
    /// The page's URL (`http://127.0.0.1:PORT/`).
    pub page: String,
}

/// A multicast group and port no other test uses.
fn private_multicast() -> (Ipv4Addr, u16) {
    let n = (NodeId::random().0 >> 64) as u32;
    let multicast = Ipv4Addr::new(239, 255, (n >> 8) as u8, (n as u8) | 1);
    let port = 20_000 + ((n >> 16) as u16 % 40_000);
    (multicast, port)
}

impl Mesh {
    /// Starts one node per name and waits (bounded) until each has linked
    /// every other.
    pub async fn start(names: &[&str]) -> Mesh {
        let (multicast, port) = private_multicast();
        let interval = Duration::from_millis(100);
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut builder = Node::builder(*name)
                .discovery(
                    Beacon::loopback()
                        .multicast_group(multicast)
                        .port(port)
                        .interval(interval),
                )
                .reconcile_interval(interval)
                .group("lobby")
                .serve(ChatHandler::new(Room));
            if i == names.len() - 1 {
                builder = builder.topology_page("127.0.0.1:0");
            }
            nodes.push(builder.start().await.expect("node starts"));
        }
        for node in &nodes {
            let peers = node.peers::<ChatClient>();
            crate::bounded(
                "every node links every other",
                peers.wait_until(|ids| ids.len() == names.len() - 1),
            )
            .await;
        }
        let page = nodes
            .last()
            .and_then(|n| n.topology_url())
            .expect("the last node serves the page")
            .to_owned();
        Mesh { nodes, page }
    }

    /// Every node posts `rounds` messages to every other.
    pub async fn chat(&self, rounds: usize) {
        for _ in 0..rounds {
            for node in &self.nodes {
                let from = node.id().to_string();
                let mut replies = node.broadcast(Duration::from_secs(5), |chat: ChatClient| {
                    let from = from.clone();
                    async move { chat.post(from, "hello".into()).await }
                });
                while let Some((peer, reply)) = crate::bounded("a reply", replies.next()).await {
                    reply.unwrap_or_else(|e| panic!("post to {peer:?} failed: {e}"));
                }
            }
        }
    }
}
