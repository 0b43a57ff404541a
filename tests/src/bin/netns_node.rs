//! A node for the multi-host test (`tests/tests/multi_host.rs`): run inside
//! a network namespace with `ip netns exec`, it announces itself by beacon
//! on one interface, serves a symmetric service and a role-based one, and
//! reports on stdout, one line each, what it sees:
//!
//! ```text
//! READY <node id> <name>
//! DISCOVERED <id> <name>     LOST <id>     LEFT <id>     LINKED <service> <id>
//! REPLY <id> <name>          BROADCAST <replies> <failures>
//! FEED <id> <id> …           DIALED <node id>     DIAL-FAILED <error>
//! ```
//!
//! It takes commands on stdin: `broadcast`, `feed`, `dial <url>`, `quit`.
//!
//! Options: `--name`, `--ip` (the interface address to announce on),
//! `--multicast-group`, `--port` (the beacon's), `--role publisher|subscriber`,
//! `--listen <url>` (repeatable; default `tcp://<ip>:0`).

use std::net::Ipv4Addr;
use std::time::Duration;

use futures_util::StreamExt;
use plexus::discovery::Beacon;
use plexus::{node::NodeEvent, Node};
use plexus::{Connection, Reject};
use tokio::io::AsyncBufReadExt;

/// Which host answers.
#[plexus::service(package = "multihost")]
pub trait Site {
    /// The serving node's name.
    async fn name(&self) -> Result<String, Reject>;
}

/// A feed with roles: subscribers link to publishers only.
#[plexus::service(package = "multihost", roles = ["subscriber", "publisher"])]
pub trait Feed {
    /// The serving node's name.
    async fn name(&self) -> Result<String, Reject>;
}

struct Named(String);

impl Site for Named {
    async fn name(&self) -> Result<String, Reject> {
        Ok(self.0.clone())
    }
}

impl Feed for Named {
    async fn name(&self) -> Result<String, Reject> {
        Ok(self.0.clone())
    }
}

struct Options {
    name: String,
    ip: Ipv4Addr,
    multicast_group: Ipv4Addr,
    port: u16,
    role: String,
    listen: Vec<String>,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        name: "node".into(),
        ip: Ipv4Addr::LOCALHOST,
        multicast_group: plexus::discovery::DEFAULT_MULTICAST_GROUP,
        port: plexus::discovery::DEFAULT_PORT,
        role: "subscriber".into(),
        listen: Vec::new(),
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: std::net::AddrParseError| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--name" => o.name = value,
            "--ip" => o.ip = value.parse().map_err(bad)?,
            "--multicast-group" => o.multicast_group = value.parse().map_err(bad)?,
            "--port" => o.port = value.parse().map_err(|e| format!("--port: {e}"))?,
            "--role" => o.role = value,
            "--listen" => o.listen.push(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

fn say(line: String) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("plexus-netns-node: {e}");
            std::process::exit(2);
        }
    };
    let beacon = Beacon::new(plexus::discovery::BeaconConfig::on_interface(o.ip))
        .multicast_group(o.multicast_group)
        .port(o.port)
        .interval(Duration::from_millis(200));
    let mut builder = Node::builder(o.name.clone())
        .group("hosts")
        .discovery(beacon)
        .reconcile_interval(Duration::from_millis(200))
        .serve(SiteHandler::new(Named(o.name.clone())))
        .serve_as(FeedHandler::new(Named(o.name.clone())), o.role.clone())
        .connect_rule::<FeedClient>("subscriber", "publisher");
    let listen = if o.listen.is_empty() {
        vec![format!("tcp://{}:0", o.ip)]
    } else {
        o.listen.clone()
    };
    for url in listen {
        builder = builder.listen(url);
    }
    let mut events = builder.events();
    let node = match builder.start().await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("plexus-netns-node: {e}");
            std::process::exit(1);
        }
    };
    say(format!("READY {} {}", node.id(), node.name()));
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                NodeEvent::PeerDiscovered { peer, name, .. } => {
                    say(format!("DISCOVERED {peer} {name}"))
                }
                NodeEvent::PeerLost(peer) => say(format!("LOST {peer}")),
                NodeEvent::PeerLeft(peer) => say(format!("LEFT {peer}")),
                NodeEvent::ServiceLinked { peer, service } => {
                    say(format!("LINKED {service} {peer}"))
                }
                _ => {}
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("broadcast") => {
                let mut replies = node
                    .broadcast(Duration::from_secs(3), |site: SiteClient| async move {
                        site.name().await
                    });
                let (mut ok, mut failed) = (0, 0);
                while let Some((peer, reply)) = replies.next().await {
                    match reply {
                        Ok(name) => {
                            ok += 1;
                            say(format!("REPLY {peer} {name}"));
                        }
                        Err(_) => failed += 1,
                    }
                }
                say(format!("BROADCAST {ok} {failed}"));
            }
            Some("feed") => {
                let ids: Vec<String> = node
                    .peers::<FeedClient>()
                    .ids()
                    .iter()
                    .map(|id| id.to_string())
                    .collect();
                say(format!("FEED {}", ids.join(" ")));
            }
            Some("dial") => {
                let url = words.next().unwrap_or_default().to_owned();
                match Connection::connect(url.as_str()).await {
                    Ok(conn) => {
                        say(format!("DIALED {}", conn.peer().node_id()));
                        conn.close().await;
                    }
                    Err(e) => say(format!("DIAL-FAILED {e}")),
                }
            }
            Some("quit") | None => break,
            Some(other) => say(format!("UNKNOWN {other}")),
        }
    }
    let _ = node.stop().await;
}
