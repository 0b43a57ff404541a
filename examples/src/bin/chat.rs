//! Nodes that find each other on the loopback beacon, join a session and chat.
//!
//! ```text
//! cargo run -p plexus-examples --bin chat                 # 3 nodes in this process
//! cargo run -p plexus-examples --bin chat -- --nodes 5
//! ```
//!
//! Each node serves the `Chat` service and joins the session `lobby`. Once
//! every node sees all the others, each broadcasts a message to the room and
//! prints the replies; every node prints what it receives. Then the first
//! node stops, and the others print that it left. Nothing leaves this host:
//! the beacon only multicasts on 127.0.0.1.

use std::time::Duration;

use futures_util::StreamExt;
use plexus::discovery::Beacon;
use plexus::node::{Actor, Node, NodeEvent};
use plexus::Reject;

/// A chat room every node hosts.
#[plexus::service(package = "chat")]
pub trait Chat {
    /// Delivers a message; replies with how many this room has received.
    async fn post(&self, from: String, text: String) -> Result<u64, Reject>;
}

/// One node's room. It is written on `&mut self` (the generated
/// `ChatActor`) and served inside an `Actor`, which hands it one post at a
/// time: no lock, no atomics.
struct Room {
    me: String,
    received: u64,
}

impl ChatActor for Room {
    async fn post(&mut self, from: String, text: String) -> Result<u64, Reject> {
        println!("  [{}] {from} says: {text}", self.me);
        self.received += 1;
        Ok(self.received)
    }
}

fn nodes_from_args() -> Result<usize, String> {
    let mut args = std::env::args().skip(1);
    let mut nodes = 3;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => {
                let value = args.next().ok_or("--nodes needs a number")?;
                nodes = value
                    .parse()
                    .map_err(|_| format!("--nodes {value:?} is not a number"))?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: chat [--nodes N])"
                ))
            }
        }
    }
    if !(2..=64).contains(&nodes) {
        return Err(format!("--nodes {nodes}: choose between 2 and 64"));
    }
    Ok(nodes)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count = nodes_from_args()?;
    let interval = Duration::from_millis(200);

    let mut nodes = Vec::new();
    for i in 0..count {
        let name = format!("node-{i}");
        let node = Node::builder(name.clone())
            .discovery(Beacon::loopback().interval(interval))
            .reconcile_interval(interval)
            .session("lobby")
            .serve(ChatHandler::new(Actor::spawn(Room {
                me: name,
                received: 0,
            })))
            .start()
            .await?;
        println!(
            "{} is up as {} on {:?}",
            node.name(),
            node.id(),
            node.local_urls()
        );
        nodes.push(node);
    }

    // Wait until every node is linked with every other.
    for node in &nodes {
        let peers = node.peers::<ChatClient>();
        tokio::time::timeout(
            Duration::from_secs(10),
            peers.wait_until(|ids| ids.len() == count - 1),
        )
        .await
        .map_err(|_| format!("{} found only {} peers", node.name(), peers.len()))?;
    }
    println!("all {count} nodes are in session \"lobby\" and see each other\n");

    for node in &nodes {
        let from = node.name().to_string();
        println!("{from} broadcasts:");
        let mut replies = node.broadcast(Duration::from_secs(2), |chat: ChatClient| {
            let from = from.clone();
            async move { chat.post(from.clone(), format!("hello from {from}")).await }
        });
        while let Some((peer, reply)) = replies.next().await {
            match reply {
                Ok(n) => println!("  {from} <- {peer:?}: delivered (its message #{n})"),
                Err(e) => println!("  {from} <- {peer:?}: failed: {e}"),
            }
        }
    }

    // The first node leaves; the others see it go.
    let leaver = nodes.remove(0);
    let mut watchers: Vec<_> = nodes
        .iter()
        .map(|n| (n.name().to_string(), n.events()))
        .collect();
    println!("\n{} stops", leaver.name());
    let gone = leaver.id();
    leaver.stop().await?;
    for (name, events) in &mut watchers {
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(event) = events.recv().await {
                if event == NodeEvent::PeerLeft(gone) {
                    return true;
                }
            }
            false
        })
        .await;
        match seen {
            Ok(true) => println!("  {name} saw {gone:?} leave"),
            _ => return Err(format!("{name} did not see {gone:?} leave").into()),
        }
    }
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}
