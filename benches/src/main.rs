//! `plexus-bench`: Plexus side by side with tonic, tarpc and a hand-written
//! tokio TCP echo (the floor), in one run on one machine with the same
//! payloads, all over loopback.
//!
//! ```text
//! cargo run --release -p plexus-bench              # full run, ~3 minutes
//! cargo run --release -p plexus-bench -- --quick   # shorter windows, < 1 minute
//! cargo run --release -p plexus-bench -- --resilience  # hostile peers vs. a server process
//! cargo run --release -p plexus-bench -- --security    # TLS, session keys, interceptors
//! cargo run --release -p plexus-bench -- --scale   # 200 nodes, 10,000 connections
//! cargo run --release -p plexus-bench -- --observe     # spans and metrics, on and off
//! ```
//!
//! Prints one table and writes it into `BENCHMARKS.md` at the workspace root
//! (`--out PATH` elsewhere, `--no-write` not at all), replacing only the
//! section of the same mode so the analysis around it stays. It is a
//! benchmark, not a test: nothing here runs in CI.

mod measure;
mod memory;
mod observe;
mod plexus_side;
mod raw;
mod report;
mod resilience;
mod rig;
mod scale;
mod security;
mod systems;
mod tarpc_side;
mod tonic_side;
mod transports;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use measure::{Downloader, PAYLOAD};
use report::{Figures, Idle};
use rig::Rig;
use systems::{Echoer, Served, System, Target};

#[global_allocator]
static ALLOC: memory::Counting = memory::Counting;

/// The error every fallible step of the benchmark returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Callers in flight for the throughput figure.
const IN_FLIGHT: usize = 64;
/// Message size of the streaming figure.
const STREAM_MESSAGE: u32 = 64 * 1024;
/// Peer counts of the broadcast figure.
const PEERS: [usize; 3] = [1, 4, 16];
/// Calls whose allocations are counted.
const ALLOCATION_CALLS: usize = 2_000;
/// The phases, in the order they run.
const PHASES: [&str; 6] = ["memory", "unary", "spread", "local", "stream", "broadcast"];
/// The longest any one phase may take before the run gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// How long and how often each figure is measured.
pub struct Settings {
    pub mode: &'static str,
    pub throughput_warmup: Duration,
    pub throughput_window: Duration,
    /// Slices the unary measurements are cut into, taken in turns.
    pub unary_rounds: u32,
    pub latency_calls: usize,
    pub latency_time: Duration,
    pub stream_bytes: usize,
    pub stream_runs: usize,
    pub broadcast_rounds: usize,
    pub broadcast_time: Duration,
    pub idle_connections: usize,
    /// The systems measured (all of them unless `--system` narrows it).
    pub systems: Vec<System>,
}

impl Settings {
    fn full() -> Settings {
        Settings {
            mode: "full",
            throughput_warmup: Duration::from_millis(500),
            throughput_window: Duration::from_secs(3),
            unary_rounds: 5,
            latency_calls: 30_000,
            latency_time: Duration::from_secs(3),
            stream_bytes: 256 * 1024 * 1024,
            stream_runs: 5,
            broadcast_rounds: 5_000,
            broadcast_time: Duration::from_secs(2),
            idle_connections: 1_000,
            systems: System::ALL.to_vec(),
        }
    }

    fn quick() -> Settings {
        Settings {
            mode: "quick",
            throughput_warmup: Duration::from_millis(200),
            throughput_window: Duration::from_secs(1),
            unary_rounds: 3,
            latency_calls: 10_000,
            latency_time: Duration::from_secs(1),
            stream_bytes: 64 * 1024 * 1024,
            stream_runs: 3,
            broadcast_rounds: 1_000,
            broadcast_time: Duration::from_millis(500),
            idle_connections: 1_000,
            systems: System::ALL.to_vec(),
        }
    }
}

struct Args {
    quick: bool,
    out: Option<PathBuf>,
    /// Run only this phase (`memory`, `unary`, `stream`, `broadcast`), for
    /// profiling one path; nothing is written.
    only: Option<String>,
    /// Measure only this system, for profiling; nothing is written.
    system: Option<System>,
    /// Serve the Plexus echo contract at this URL, on the bench's server
    /// runtime, until Ctrl-C (for `plexus bench` from another process).
    serve: Option<String>,
    /// Run the resilience benchmark instead of the performance one.
    resilience: bool,
    /// Run the security benchmark (TLS, keys, interceptors) instead.
    security: bool,
    /// Run the observability benchmark (spans and metrics) instead.
    observe: bool,
    /// With `--observe`: a `plexus-bench` built without the instrumentation.
    baseline: Option<PathBuf>,
    /// With `--resilience`: only these attacks; nothing is written.
    attacks: Vec<String>,
    /// Be the resilience benchmark's victim: everything after
    /// `--serve-victim` (a URL, then its settings).
    serve_victim: Option<Vec<String>>,
    /// The scale figures instead of the side-by-side ones.
    scale: bool,
    /// The scale run's dialing process: URL, connections, at a time.
    dial_swarm: Option<(String, usize, usize)>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        quick: false,
        only: None,
        system: None,
        serve: None,
        resilience: false,
        security: false,
        observe: false,
        baseline: None,
        attacks: Vec::new(),
        serve_victim: None,
        scale: false,
        dial_swarm: None,
        out: Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|root| root.join("BENCHMARKS.md")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--resilience" => args.resilience = true,
            "--security" => args.security = true,
            "--observe" => args.observe = true,
            "--baseline" => {
                args.baseline = Some(it.next().ok_or("--baseline needs a path")?.into());
            }
            "--attack" => {
                let id = it.next().ok_or("--attack needs a name")?;
                let known = resilience::attack_ids();
                if !known.contains(&id.as_str()) {
                    return Err(format!("unknown attack `{id}`: one of {known:?}").into());
                }
                args.attacks.push(id);
            }
            "--serve-victim" => {
                args.serve_victim = Some(it.by_ref().collect());
            }
            "--scale" => args.scale = true,
            "--dial-swarm" => {
                let url = it.next().ok_or("--dial-swarm needs a URL")?;
                let count = it.next().ok_or("--dial-swarm needs a count")?.parse()?;
                let at_once = it
                    .next()
                    .ok_or("--dial-swarm needs a concurrency")?
                    .parse()?;
                args.dial_swarm = Some((url, count, at_once));
            }
            "--no-write" => args.out = None,
            "--serve" => args.serve = Some(it.next().ok_or("--serve needs a URL")?),
            "--out" => args.out = Some(it.next().ok_or("--out needs a path")?.into()),
            "--only" => {
                let phase = it.next().ok_or("--only needs a phase")?;
                if !PHASES.contains(&phase.as_str()) && !scale::PHASES.contains(&phase.as_str()) {
                    return Err(format!(
                        "unknown phase `{phase}`: one of {PHASES:?}, or with --scale {:?}",
                        scale::PHASES
                    )
                    .into());
                }
                args.only = Some(phase);
            }
            "--system" => {
                let name = it.next().ok_or("--system needs a name")?;
                let system = System::ALL
                    .into_iter()
                    .find(|s| s.to_string().replace(' ', "-") == name)
                    .ok_or_else(|| {
                        format!("unknown system `{name}`: plexus, tonic, tarpc, raw-tcp")
                    })?;
                args.system = Some(system);
            }
            "-h" | "--help" => {
                println!(
                    "usage: plexus-bench [--quick] [--out PATH | --no-write] [--only {}] [--system NAME] | --serve URL\n       plexus-bench --scale [--quick] [--out PATH | --no-write] [--only {}]\n       plexus-bench --security [--quick] [--out PATH | --no-write]\n       plexus-bench --observe [--quick] [--baseline PATH] [--out PATH | --no-write]\n       plexus-bench --resilience [--out PATH | --no-write] [--attack {}]...",
                    PHASES.join("|"),
                    scale::PHASES.join("|"),
                    resilience::attack_ids().join("|")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    Ok(args)
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    observe::install_from_env()?;
    if args.observe {
        return observe::run(observe::Options {
            quick: args.quick,
            out: args.out,
            baseline: args.baseline,
        });
    }
    if let Some(victim) = args.serve_victim {
        return resilience::victim::serve(victim);
    }
    if args.resilience || !args.attacks.is_empty() {
        return resilience::run(resilience::Options {
            attacks: args.attacks,
            out: args.out,
        });
    }
    if let Some((url, count, at_once)) = &args.dial_swarm {
        return scale::dial_swarm(url, *count, *at_once);
    }
    if args.scale {
        let settings = if args.quick {
            scale::Scale::quick()
        } else {
            scale::Scale::full()
        };
        let figures = scale::run(&settings, args.only.as_deref())?;
        if args.only.is_some() {
            return Ok(());
        }
        let command = if args.quick {
            "cargo run --release -p plexus-bench -- --scale --quick"
        } else {
            "cargo run --release -p plexus-bench -- --scale"
        };
        let section = scale::section(&settings, command, &figures);
        println!("\n{section}");
        if let Some(path) = args.out {
            report::write_section(&path, settings.mode, &section)?;
            println!("written to {}", path.display());
        }
        return Ok(());
    }
    let mut settings = if args.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    if let Some(system) = args.system {
        settings.systems = vec![system];
    }
    let rig = Rig::new()?;
    if args.security {
        return security::run(
            &rig,
            security::Options {
                quick: args.quick,
                out: args.out,
            },
        );
    }
    if let Some(url) = args.serve {
        return on_server(&rig, async move {
            let server = plexus_side::start_at(&url).await?;
            println!("serving bench.Echo at {} until Ctrl-C", server.local_url());
            tokio::signal::ctrl_c().await?;
            server.shutdown().await;
            Ok(())
        });
    }
    println!("plexus-bench ({} run): {}", settings.mode, rig::PINNING);

    let runs = |phase: &str| args.only.as_deref().is_none_or(|only| only == phase);
    let mut figures = Figures::default();
    if runs("memory") {
        figures.idle = Some(idle_memory(
            &rig,
            settings.idle_connections,
            Dial::OneEndpoint,
        )?);
        let each = idle_memory(&rig, settings.idle_connections, Dial::EndpointEach)?;
        figures.idle_endpoint_each = Some(each.heap_per_connection);
    }
    if runs("unary") {
        unary(&rig, &settings, &mut figures)?;
    }
    if runs("spread") {
        transports::spread(&rig, &settings, &mut figures)?;
    }
    if runs("local") {
        transports::local(&rig, &settings, &mut figures)?;
    }
    if runs("stream") {
        streaming(&rig, &settings, &mut figures)?;
    }
    if runs("broadcast") {
        broadcast(&rig, &settings, &mut figures)?;
    }
    if args.only.is_some() || args.system.is_some() {
        return Ok(());
    }

    let command = if args.quick {
        "cargo run --release -p plexus-bench -- --quick"
    } else {
        "cargo run --release -p plexus-bench"
    };
    let section = report::section(&settings, command, &figures);
    println!("\n{section}");
    if let Some(path) = args.out {
        report::write_section(&path, settings.mode, &section)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

/// Runs `work` on the client runtime, bounded by [`PHASE_LIMIT`].
fn on_client<F, T>(rig: &Rig, work: F) -> Result<T, BoxError>
where
    F: Future<Output = Result<T, BoxError>> + Send + 'static,
    T: Send + 'static,
{
    rig.client(async move {
        tokio::time::timeout(PHASE_LIMIT, work)
            .await
            .map_err(|_| BoxError::from("a phase ran past its time limit"))?
    })?
}

/// Runs `work` on the server runtime.
fn on_server<F, T>(rig: &Rig, work: F) -> Result<T, BoxError>
where
    F: Future<Output = Result<T, BoxError>> + Send + 'static,
    T: Send + 'static,
{
    rig.server(work)?
}

fn stop(rig: &Rig, served: Vec<Served>) -> Result<(), BoxError> {
    rig.server(async move {
        for s in served {
            s.stop().await;
        }
    })
}

/// How the idle connections of the memory figure are opened.
#[derive(Clone, Copy)]
enum Dial {
    /// All from one client `Endpoint`, as a long-lived client process does.
    OneEndpoint,
    /// Each with `Connection::connect(url)` (what a generated client's
    /// `connect` uses), which builds an `Endpoint` per connection.
    EndpointEach,
}

/// Resident and heap bytes per idle Plexus connection: both ends (the client's
/// and the server's) live in this process, so each figure counts both.
/// Measured first, before other phases leave freed memory behind for the
/// allocator to reuse (which makes a later resident figure read low; the heap
/// figure, from the counting allocator, is exact either way).
fn idle_memory(rig: &Rig, count: usize, dial: Dial) -> Result<Idle, BoxError> {
    let server = on_server(rig, plexus_side::start())?;
    let url = server.local_url().to_string();
    let endpoint = plexus::Endpoint::builder().build();
    // One connection first, so lazily built state (runtime, codec tables) is
    // not charged to the measurement.
    let warm = on_client(rig, {
        let (endpoint, url) = (endpoint.clone(), url.clone());
        async move { Ok(endpoint.connect(url).await?) }
    })?;
    std::thread::sleep(Duration::from_millis(200));

    let rss_before = memory::resident_bytes().ok_or("no VmRSS in /proc/self/status")?;
    let heap = memory::HeapWindow::open();
    let connections = on_client(rig, {
        let endpoint = endpoint.clone();
        async move {
            let mut connections = Vec::with_capacity(count);
            for _ in 0..count {
                connections.push(match dial {
                    Dial::OneEndpoint => endpoint.connect(url.clone()).await?,
                    Dial::EndpointEach => plexus::Connection::connect(url.clone()).await?,
                });
            }
            Ok(connections)
        }
    })?;
    for _ in 0..500 {
        if server.connections().len() > count {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let heap_bytes = heap.close().net_bytes;
    let rss_after = memory::resident_bytes().ok_or("no VmRSS in /proc/self/status")?;
    let accepted = server.connections().len().saturating_sub(1);

    on_client(rig, async move {
        for connection in connections.into_iter().chain([warm]) {
            connection.close().await;
        }
        drop(endpoint);
        Ok(())
    })?;
    stop(rig, vec![Served::Plexus(server)])?;
    let idle = Idle {
        connections: count,
        accepted,
        rss_per_connection: rss_after.saturating_sub(rss_before) as f64 / count as f64,
        heap_per_connection: heap_bytes as f64 / count as f64,
    };
    let how = match dial {
        Dial::OneEndpoint => "from one Endpoint",
        Dial::EndpointEach => "with Connection::connect each",
    };
    println!(
        "idle connections {how}: {count} opened ({accepted} seen by the server): {:.0} B resident, {:.0} B heap per connection, both ends",
        idle.rss_per_connection, idle.heap_per_connection
    );
    Ok(idle)
}

/// Unary throughput and latency. The systems take turns in short slices,
/// `rounds` times over, so a burst of noise from the machine lands on all of
/// them rather than on whichever happened to be running.
fn unary(rig: &Rig, settings: &Settings, figures: &mut Figures) -> Result<(), BoxError> {
    let systems: Vec<(usize, System)> = System::ALL
        .into_iter()
        .enumerate()
        .filter(|(_, s)| settings.systems.contains(s))
        .collect();
    let mut served = Vec::new();
    let mut lanes = Vec::new();
    for &(_, system) in &systems {
        let server = on_server(rig, Served::start(system))?;
        let target = server.target();
        served.push(server);
        let loaded = on_client(rig, Echoer::connect(target.clone()))?;
        // A connection of its own for latency, so nothing of the load lingers.
        let single = on_client(rig, Echoer::connect(target))?;
        lanes.push(transports::Lane::new(vec![loaded], Some(single)));
    }
    transports::run_lanes(rig, settings, &mut lanes)?;
    for (&(i, system), lane) in systems.iter().zip(lanes.iter_mut()) {
        let rate = lane.rate();
        let (p50, p99) = (
            lane.p50().ok_or("no latency samples")?,
            lane.p99().ok_or("no latency samples")?,
        );
        println!(
            "{system:>8}: unary {IN_FLIGHT} in flight: {rate:.0} calls/s; 1 in flight: p50 {p50:?}, p99 {p99:?} over {} calls",
            lane.latency_calls()
        );
        figures.throughput[i] = Some(rate);
        figures.p50[i] = Some(p50);
        figures.p99[i] = Some(p99);
    }
    rig.client(async move { drop(lanes) })?;

    // Allocations per call, both ends, one call at a time; untimed.
    for (&(i, system), server) in systems.iter().zip(&served) {
        let client = on_client(rig, Echoer::connect(server.target()))?;
        let per_call = on_client(rig, measure::allocations(client, ALLOCATION_CALLS))?;
        println!("{system:>8}: {per_call:.1} heap allocations per call (both ends)");
        figures.allocations[i] = Some(per_call);
    }
    stop(rig, served)?;
    println!("payload: {} bytes each way", PAYLOAD.len());
    Ok(())
}

fn streaming(rig: &Rig, settings: &Settings, figures: &mut Figures) -> Result<(), BoxError> {
    let messages = (settings.stream_bytes / STREAM_MESSAGE as usize) as u32;
    for (i, system) in System::ALL.into_iter().enumerate() {
        if !settings.systems.contains(&system) || !System::STREAMING.contains(&system) {
            continue;
        }
        let (served, target) = on_server(rig, async move {
            if system == System::Raw {
                let (addr, task) = raw::start_stream().await?;
                let served = Served::Task { system, addr, task };
                Ok((served, Target::Addr(System::Raw, addr)))
            } else {
                let served = Served::start(system).await?;
                let target = served.target();
                Ok((served, target))
            }
        })?;
        let runs = settings.stream_runs;
        let mut rates = on_client(rig, async move {
            let mut downloader = Downloader::connect(target).await?;
            let mut rates = Vec::with_capacity(runs);
            for _ in 0..runs {
                rates.push(downloader.rate(messages, STREAM_MESSAGE).await?);
            }
            Ok(rates)
        })?;
        let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        let median = measure::median(&mut rates);
        println!(
            "{system:>8}: stream {messages} × 64 KiB: median {median:.0} MiB/s (runs: {})",
            shown.join(", ")
        );
        figures.stream[i] = Some(median);
        figures.stream_all[i] = rates;
        figures.stream_runs[i] = shown;
        stop(rig, vec![served])?;
    }
    figures.stream_bytes = settings.stream_bytes;
    figures.stream_run_count = settings.stream_runs;
    Ok(())
}

fn broadcast(rig: &Rig, settings: &Settings, figures: &mut Figures) -> Result<(), BoxError> {
    let most = PEERS[PEERS.len() - 1];
    figures.broadcast = PEERS.iter().map(|&n| (n, Default::default())).collect();
    for (i, system) in System::ALL.into_iter().enumerate() {
        if !settings.systems.contains(&system) {
            continue;
        }
        let served = on_server(rig, async move {
            let mut served = Vec::with_capacity(most);
            for _ in 0..most {
                served.push(Served::start(system).await?);
            }
            Ok(served)
        })?;
        let targets: Vec<Target> = served.iter().map(Served::target).collect();
        let clients = on_client(rig, async move {
            let mut clients = Vec::with_capacity(targets.len());
            for target in targets {
                clients.push(Echoer::connect(target).await?);
            }
            Ok(clients)
        })?;
        for (row, &peers) in PEERS.iter().enumerate() {
            let some = clients[..peers].to_vec();
            let (rounds, time) = (settings.broadcast_rounds, settings.broadcast_time);
            let (p50, n) = on_client(rig, measure::broadcast(some, rounds, time))?;
            println!("{system:>8}: broadcast to {peers:>2}: p50 {p50:?} over {n} rounds");
            figures.broadcast[row].1[i] = Some(p50);
        }
        // Dropped where they run: connection handles may touch their runtime.
        rig.client(async move { drop(clients) })?;
        stop(rig, served)?;
    }
    Ok(())
}
