//! The scale figures (`plexus-bench --scale`): many nodes in one process
//! converging on the loopback beacon, how fast they notice a crash, what a
//! broadcast costs as the peers grow, and many connections to one node.
//!
//! Unlike the side-by-side figures these measure Plexus alone, on one tokio
//! runtime with a worker per core, as an application would run it. Every
//! loop is bounded in count and time.

use std::fmt::Write as _;
use std::io::{BufRead, Write as _};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plexus::discovery::Beacon;
use plexus::{node::NodeEvent, Node};
use plexus::{NodeId, Reject};

use crate::{memory, BoxError};

/// A trivial contract every node serves.
#[plexus::service(package = "scale")]
pub trait Ping {
    /// Returns `n`.
    async fn ping(&self, n: u64) -> Result<u64, Reject>;
}

struct Pong;

impl Ping for Pong {
    async fn ping(&self, n: u64) -> Result<u64, Reject> {
        Ok(n)
    }
}

/// The scale phases, for `--only`.
pub const PHASES: [&str; 2] = ["mesh", "connections"];

/// How big each phase is.
pub struct Scale {
    pub mode: &'static str,
    pub nodes: usize,
    pub interval: Duration,
    pub broadcast_peers: Vec<usize>,
    pub broadcast_rounds: usize,
    pub broadcast_time: Duration,
    pub connections: usize,
    pub dial_concurrency: usize,
}

impl Scale {
    pub fn full() -> Scale {
        Scale {
            mode: "scale",
            nodes: 200,
            interval: Duration::from_secs(1),
            broadcast_peers: vec![1, 10, 50, 100, 199],
            broadcast_rounds: 200,
            broadcast_time: Duration::from_secs(3),
            connections: 10_000,
            dial_concurrency: 128,
        }
    }

    pub fn quick() -> Scale {
        Scale {
            mode: "scale-quick",
            nodes: 40,
            interval: Duration::from_millis(500),
            broadcast_peers: vec![1, 10, 39],
            broadcast_rounds: 50,
            broadcast_time: Duration::from_secs(1),
            connections: 1_000,
            dial_concurrency: 64,
        }
    }
}

/// What the scale phases measured.
#[derive(Default)]
pub struct Figures {
    mesh: Option<Mesh>,
    connections: Option<Connections>,
}

struct Mesh {
    nodes: usize,
    started_in: Duration,
    converged_in: Duration,
    links: usize,
    detect_median: Duration,
    detect_max: Duration,
    detect_bound: Duration,
    /// (peers, p50 of a round, p50 per peer)
    broadcast: Vec<(usize, Duration, Duration)>,
}

struct Connections {
    count: usize,
    open_in: Duration,
    rss_per_connection: f64,
    heap_per_connection: f64,
}

fn private_group() -> (Ipv4Addr, u16) {
    let n = (NodeId::random().0 >> 64) as u32;
    (
        Ipv4Addr::new(239, 255, (n >> 8) as u8, (n as u8) | 1),
        20_000 + ((n >> 16) as u16 % 40_000),
    )
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name("bench-scale")
        .enable_all()
        .build()?)
}

/// Bounded: how long any one wait of a phase may take.
const WAIT: Duration = Duration::from_secs(180);

pub fn run(scale: &Scale, only: Option<&str>) -> Result<Figures, BoxError> {
    let mut figures = Figures::default();
    if only.is_none_or(|p| p == "mesh") {
        let rt = runtime()?;
        figures.mesh = Some(rt.block_on(rt.spawn(mesh(
            scale.nodes,
            scale.interval,
            scale.broadcast_peers.clone(),
            scale.broadcast_rounds,
            scale.broadcast_time,
        )))??);
    }
    if only.is_none_or(|p| p == "connections") {
        let rt = runtime()?;
        figures.connections = Some(connections(&rt, scale.connections, scale.dial_concurrency)?);
    }
    Ok(figures)
}

/// Waits until `done()` holds, checking every 20 ms, at most [`WAIT`].
async fn until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), BoxError> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {WAIT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn mesh(
    n: usize,
    interval: Duration,
    broadcast_peers: Vec<usize>,
    rounds: usize,
    round_time: Duration,
) -> Result<Mesh, BoxError> {
    let group = private_group();
    let run = NodeId::random();
    let started = Instant::now();
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        // inproc://: 200 nodes hold 19,900 connections, two descriptors each
        // over TCP (both ends are in this process) — past the usual limit. Discovery is the real
        // beacon on loopback; linking, describing and calls are the same.
        let node = Node::builder(format!("node-{i}"))
            .listen(format!("inproc://scale-{run}-{i}"))
            .group("scale")
            .discovery(
                Beacon::loopback()
                    .multicast_group(group.0)
                    .port(group.1)
                    .interval(interval),
            )
            .reconcile_interval(interval)
            .serve(PingHandler::new(Pong))
            .start()
            .await?;
        nodes.push(node);
    }
    let started_in = started.elapsed();
    until("full mesh", || {
        nodes
            .iter()
            .all(|node| node.peers::<PingClient>().len() == n - 1)
    })
    .await?;
    let converged_in = started.elapsed();
    let links = n * (n - 1);
    println!(
        "{n} nodes: started in {started_in:?}, every one linked with every other ({links} links) {converged_in:?} after the first started: {:.0} links/s",
        links as f64 / converged_in.as_secs_f64()
    );

    // Broadcast cost as the peers grow, from one node.
    let origin = &nodes[1];
    let clients: Vec<PingClient> = origin
        .peers::<PingClient>()
        .list()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    let mut broadcast = Vec::new();
    for &k in &broadcast_peers {
        let k = k.min(clients.len());
        let some = &clients[..k];
        let mut samples = Vec::with_capacity(rounds);
        let window = Instant::now();
        for r in 0..rounds {
            if window.elapsed() > round_time {
                break;
            }
            let t = Instant::now();
            let replies =
                futures_util::future::join_all(some.iter().map(|c| c.ping(r as u64))).await;
            samples.push(t.elapsed());
            if let Some(e) = replies.into_iter().find_map(Result::err) {
                return Err(format!("broadcast to {k}: {e}").into());
            }
        }
        samples.sort_unstable();
        let p50 = samples[samples.len() / 2];
        let per_peer = p50 / k.max(1) as u32;
        println!(
            "broadcast to {k:>3} peers: p50 {p50:?} a round ({per_peer:?} a peer) over {} rounds",
            samples.len()
        );
        broadcast.push((k, p50, per_peer));
    }

    // Failure detection: node 0 crashes (dropped without stop); every other
    // node reports it lost once discovery gives up on it.
    let victim = nodes.remove(0);
    let victim_id = victim.id();
    let mut events: Vec<_> = nodes.iter().map(Node::events).collect();
    let crashed = Instant::now();
    drop(victim);
    let mut detected = Vec::with_capacity(events.len());
    let waits = events.iter_mut().map(|e| async move {
        loop {
            match e.recv().await {
                Some(NodeEvent::PeerLost(id)) if id == victim_id => break Some(Instant::now()),
                Some(_) => {}
                None => break None,
            }
        }
    });
    let all = tokio::time::timeout(WAIT, futures_util::future::join_all(waits))
        .await
        .map_err(|_| "not every node noticed the crash in time")?;
    for at in all.into_iter().flatten() {
        detected.push(at.duration_since(crashed));
    }
    detected.sort_unstable();
    let detect_median = detected[detected.len() / 2];
    let detect_max = detected[detected.len() - 1];
    let bound = plexus::discovery::LivenessConfig::for_interval(interval).detection_bound();
    println!(
        "a crash noticed by all {} others: median {detect_median:?}, last {detect_max:?} (bound {bound:?} after its last beacon)",
        detected.len()
    );
    for node in nodes {
        node.stop().await?;
    }
    Ok(Mesh {
        nodes: n,
        started_in,
        converged_in,
        links,
        detect_median,
        detect_max,
        detect_bound: bound,
        broadcast,
    })
}

/// `count` connections to one node, dialed by a child process (each side
/// then holds `count` descriptors); memory measured on the node's side.
fn connections(
    rt: &tokio::runtime::Runtime,
    count: usize,
    concurrency: usize,
) -> Result<Connections, BoxError> {
    let server = rt.block_on(rt.spawn(async move {
        plexus::Server::bind("tcp://127.0.0.1:0")
            .serve(PingHandler::new(Pong))
            .max_connections(count + 16)
            .start()
            .await
    }))??;
    let url = server.local_url().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = memory::resident_bytes().ok_or("no VmRSS")?;
    let heap = memory::HeapWindow::open();
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--dial-swarm",
            &url,
            &count.to_string(),
            &concurrency.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = std::io::BufReader::new(child.stdout.take().ok_or("child stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let secs: f64 = line
        .strip_prefix("OPEN ")
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("the dialing process said {line:?}"))?;
    let deadline = Instant::now() + WAIT;
    while server.connections().len() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let open = server.connections().len();
    let heap_bytes = heap.close().net_bytes;
    let rss_after = memory::resident_bytes().ok_or("no VmRSS")?;
    writeln!(child.stdin.take().ok_or("child stdin")?, "done")?;
    child.wait()?;
    rt.block_on(async move { server.shutdown().await });
    if open < count {
        return Err(format!("only {open} of {count} connections arrived").into());
    }
    let open_in = Duration::from_secs_f64(secs);
    let figures = Connections {
        count,
        open_in,
        rss_per_connection: rss_after.saturating_sub(rss_before) as f64 / count as f64,
        heap_per_connection: heap_bytes as f64 / count as f64,
    };
    println!(
        "{count} connections to one node: open in {open_in:?} ({:.0} handshakes/s, {concurrency} at a time); on the node: {:.0} B resident, {:.0} B heap per connection",
        count as f64 / secs,
        figures.rss_per_connection,
        figures.heap_per_connection
    );
    Ok(figures)
}

/// The child process of the connections phase: dials `count` connections,
/// `concurrency` at a time, says `OPEN <seconds>`, holds them until a line
/// arrives on stdin.
pub fn dial_swarm(url: &str, count: usize, concurrency: usize) -> Result<(), BoxError> {
    let rt = runtime()?;
    let url = url.to_owned();
    let conns = rt.block_on(rt.spawn(async move {
        let endpoint = plexus::Endpoint::builder().build();
        let started = Instant::now();
        let mut conns = Vec::with_capacity(count);
        let mut pending = futures_util::stream::FuturesUnordered::new();
        let mut asked = 0;
        use futures_util::StreamExt;
        while conns.len() < count {
            while asked < count && pending.len() < concurrency {
                let (endpoint, url) = (endpoint.clone(), url.clone());
                pending.push(async move { endpoint.connect(url).await });
                asked += 1;
            }
            match tokio::time::timeout(WAIT, pending.next()).await {
                Ok(Some(Ok(conn))) => conns.push(conn),
                Ok(Some(Err(e))) => return Err(BoxError::from(e)),
                Ok(None) => break,
                Err(_) => return Err("a dial took too long".into()),
            }
        }
        println!("OPEN {}", started.elapsed().as_secs_f64());
        std::io::stdout().flush()?;
        Ok::<_, BoxError>((endpoint, conns))
    }))??;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    rt.block_on(async move {
        for c in conns.1 {
            c.abort();
        }
    });
    Ok(())
}

/// The `scale` section of `BENCHMARKS.md`.
pub fn section(scale: &Scale, command: &str, f: &Figures) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {} run\n", scale.mode);
    let _ = writeln!(out, "Reproduce: `{command}`\n");
    let _ = writeln!(out, "- Machine: {}", crate::report::machine());
    let _ = writeln!(
        out,
        "- One tokio runtime with a worker per core, as an application runs; Plexus alone\n"
    );
    if let Some(m) = &f.mesh {
        let _ = writeln!(out, "| mesh of {} nodes in one process | |", m.nodes);
        let _ = writeln!(out, "|---|---|");
        let pairs = m.nodes * (m.nodes - 1) / 2;
        let _ = writeln!(
            out,
            "| beacon | loopback multicast, one announcement per {:?}; links over `inproc://` ({pairs} TCP connections would need {} descriptors in one process) |",
            scale.interval,
            2 * pairs
        );
        let _ = writeln!(
            out,
            "| all nodes started | {:.2} s |",
            m.started_in.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| full mesh ({} links) after the first start | {:.2} s |",
            m.links,
            m.converged_in.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| links per second | {:.0} |",
            m.links as f64 / m.converged_in.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| a crash noticed by every other node | median {:.2} s, last {:.2} s (bound {:.2} s after its last beacon) |",
            m.detect_median.as_secs_f64(),
            m.detect_max.as_secs_f64(),
            m.detect_bound.as_secs_f64()
        );
        for (k, p50, per) in &m.broadcast {
            let _ = writeln!(
                out,
                "| broadcast to {k} peers (p50 a round) | {:.0} µs ({:.1} µs a peer) |",
                p50.as_secs_f64() * 1e6,
                per.as_secs_f64() * 1e6
            );
        }
        let _ = writeln!(out);
    }
    if let Some(c) = &f.connections {
        let _ = writeln!(out, "| {} connections to one node | |", c.count);
        let _ = writeln!(out, "|---|---|");
        let _ = writeln!(
            out,
            "| all open (TCP + handshake, {} at a time, dialed by a second process) | {:.2} s: {:.0} handshakes/s |",
            scale.dial_concurrency,
            c.open_in.as_secs_f64(),
            c.count as f64 / c.open_in.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| memory per connection on the node | {:.0} B resident, {:.0} B heap (kernel buffers not counted) |",
            c.rss_per_connection, c.heap_per_connection
        );
        let _ = writeln!(out);
    }
    out
}
