//! Nodes that find each other on the loopback beacon, join a group and chat.
//!
//! ```text
//! cargo run -p plexus-examples --bin chat                 # 3 nodes in this process
//! cargo run -p plexus-examples --bin chat -- --nodes 5
//! cargo run -p plexus-examples --bin chat -- --tls --key "our secret"
//! cargo run -p plexus-examples --features topology --bin chat -- --page 127.0.0.1:8080
//! ```
//!
//! With `--page ADDR` the last node serves the live topology page on that
//! loopback address (docs/OBSERVABILITY.md); the nodes keep chatting, the
//! first node leaves when a line is read from standard input, and the
//! program ends at its end.
//!
//! Each node serves the `Chat` service and joins the group `lobby`. Once
//! every node sees all the others, each broadcasts a message to the room and
//! prints the replies; every node prints what it receives. Then the first
//! node stops, and the others print that it left. Nothing leaves this host:
//! the beacon only multicasts on 127.0.0.1.
//!
//! `--tls` puts every node on mutual TLS (`tls://`): a development CA made in
//! memory gives each node a certificate with its name, and each node prints
//! the verified certificate of every peer it links. `--key SECRET` gives the
//! group a session key: announcements are tagged with it and every
//! connection proves it in its handshake, so a node without it can neither
//! be seen nor connect (docs/SECURITY.md). The two are independent; use both
//! on any network you do not control.

use std::time::Duration;

use futures_util::StreamExt;
use plexus::discovery::Beacon;
use plexus::Reject;
use plexus::{
    node::{Actor, NodeEvent},
    Node,
};
use plexus_examples::NodeSecurity;
use tokio::io::AsyncBufReadExt;

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

/// `--nodes N` and `--page ADDR`.
fn nodes_from_args(args: &[String]) -> Result<(usize, Option<String>), String> {
    let mut nodes = 3;
    let mut page = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => {
                let value = args.next().ok_or("--nodes needs a number")?;
                nodes = value
                    .parse()
                    .map_err(|_| format!("--nodes {value:?} is not a number"))?;
            }
            "--page" => page = Some(args.next().ok_or("--page needs host:port")?.clone()),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: chat [--nodes N] [--tls] [--key SECRET] [--page 127.0.0.1:PORT])"
                ))
            }
        }
    }
    if !(2..=64).contains(&nodes) {
        return Err(format!("--nodes {nodes}: choose between 2 and 64"));
    }
    if page.is_some() && cfg!(not(feature = "topology")) {
        return Err("--page needs the topology feature: cargo run -p plexus-examples --features topology --bin chat -- --page 127.0.0.1:8080".into());
    }
    Ok((nodes, page))
}

/// Prints each peer a node links, with its verified certificate on TLS.
fn print_links(node: &Node) {
    let name = node.name().to_string();
    let mut events = node.events();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let NodeEvent::PeerConnected { peer, identity } = event {
                match identity {
                    Some(id) => println!(
                        "  {name} linked {peer:?}: certificate {} issued by {}",
                        id.subject(),
                        id.issuer(),
                    ),
                    None => println!("  {name} linked {peer:?}"),
                }
            }
        }
    });
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let security = NodeSecurity::from_args(&mut args)?;
    let (count, page) = nodes_from_args(&args)?;
    let interval = Duration::from_millis(200);

    let mut nodes = Vec::new();
    for i in 0..count {
        let name = format!("node-{i}");
        let builder = Node::builder(name.clone())
            .discovery(Beacon::loopback().interval(interval))
            .reconcile_interval(interval)
            .group("lobby");
        #[cfg(feature = "topology")]
        let builder = match &page {
            Some(addr) if i == count - 1 => builder.topology_page(addr.clone()),
            _ => builder,
        };
        // `--tls` adds `.tls(TlsConfig::mutual(ca, cert, key))`, `--key`
        // adds `.session_key(SessionKey::new(secret))`: see plexus_examples.
        let node = security
            .apply(builder, &name)?
            .serve(ChatHandler::new(Actor::spawn(Room {
                me: name,
                received: 0,
            })))
            .start()
            .await?;
        print_links(&node);
        println!(
            "{} is up as {} on {}",
            node.name(),
            node.id(),
            node.local_urls()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
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
    println!("all {count} nodes are in group \"lobby\" and see each other\n");

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

    if page.is_some() {
        return with_page(nodes).await;
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

/// `--page`: prints the page's URL, keeps every node posting to the room
/// twice a second, stops the first node on a line of standard input and
/// the rest at its end.
async fn with_page(nodes: Vec<Node>) -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "topology")]
    if let Some(url) = nodes.last().and_then(|n| n.topology_url()) {
        println!("topology page: {url}");
    }
    let chatter: Vec<_> = nodes
        .iter()
        .map(|node| {
            let node = node.clone();
            tokio::spawn(async move {
                let from = node.name().to_string();
                let mut every = tokio::time::interval(Duration::from_millis(500));
                loop {
                    every.tick().await;
                    let mut replies = node.broadcast(Duration::from_secs(1), |chat: ChatClient| {
                        let from = from.clone();
                        async move { chat.post(from, "still here".into()).await }
                    });
                    while replies.next().await.is_some() {}
                }
            })
        })
        .collect();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut nodes = nodes.into_iter();
    let mut chatter = chatter.into_iter();
    if lines.next_line().await?.is_some() {
        if let (Some(leaver), Some(talk)) = (nodes.next(), chatter.next()) {
            talk.abort();
            leaver.stop().await?;
            println!("{} left", leaver.name());
        }
    }
    while lines.next_line().await?.is_some() {}
    for talk in chatter {
        talk.abort();
    }
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}
