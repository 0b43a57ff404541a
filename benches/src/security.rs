//! `--security`: what TLS, the session-key proof and interceptors cost.
//!
//! Every figure is taken on the same two pinned runtimes as the main table
//! (one server worker, one client worker), with the bench's echo contract
//! and 64-byte payloads, over loopback. Variants are measured in slices
//! taken in turns, so a drift of the machine's speed hits them alike; the
//! section lists every slice, not only the medians.
//!
//! - Connection set-up: dial, handshake (and TLS, and the key proof), one
//!   echo call, graceful close — one at a time, and from 16 dialers at once —
//!   beside a raw TCP connect + echo + close.
//! - Unary throughput (64 calls in flight on one connection) and p50 latency
//!   (one at a time) on `tcp://`, with the key, on `tls://` and on mutual
//!   TLS with the key.
//! - The same unary figures on `tcp://` with interceptors installed: none,
//!   one no-op on the server, an authorization policy, a no-op on both sides.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use plexus::access::{Permission, Policy, Rule};
use plexus::intercept::{CallInterceptor, Extensions, IncomingCall, OutgoingCall};
use plexus::wire::key::SessionKey;
use plexus::{CallError, Endpoint};
use plexus_tests::{Member, TestPki};

use crate::measure::{self, PAYLOAD};
use crate::rig::Rig;
use crate::systems::Echoer;
use crate::{on_client, on_server, plexus_side, raw, report, BoxError};

/// Options of `--security`.
pub struct Options {
    /// Shorter windows.
    pub quick: bool,
    /// Where to write the section (`None`: print only).
    pub out: Option<PathBuf>,
}

/// Dialers of the concurrent set-up figure.
const DIALERS: usize = 16;
/// Callers in flight for the throughput figure (as in the main table).
const IN_FLIGHT: usize = 64;
/// The most set-ups one slice makes, whatever its window (bounds the
/// TIME_WAIT sockets a run leaves behind).
const MAX_SETUPS: usize = 20_000;

struct Windows {
    rounds: usize,
    setup: Duration,
    warmup: Duration,
    unary: Duration,
    latency_calls: usize,
    latency_time: Duration,
}

impl Windows {
    fn new(quick: bool) -> Windows {
        if quick {
            Windows {
                rounds: 3,
                setup: Duration::from_millis(400),
                warmup: Duration::from_millis(100),
                unary: Duration::from_millis(500),
                latency_calls: 3_000,
                latency_time: Duration::from_millis(300),
            }
        } else {
            Windows {
                rounds: 5,
                setup: Duration::from_secs(1),
                warmup: Duration::from_millis(300),
                unary: Duration::from_secs(1),
                latency_calls: 10_000,
                latency_time: Duration::from_secs(1),
            }
        }
    }
}

/// How a connection is secured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Channel {
    Tcp,
    TcpKey,
    Tls,
    MutualTlsKey,
}

impl Channel {
    const ALL: [Channel; 4] = [
        Channel::Tcp,
        Channel::TcpKey,
        Channel::Tls,
        Channel::MutualTlsKey,
    ];

    fn label(self) -> &'static str {
        match self {
            Channel::Tcp => "`tcp://`",
            Channel::TcpKey => "`tcp://` + session key",
            Channel::Tls => "`tls://` (server certificate)",
            Channel::MutualTlsKey => "`tls://` mutual + session key",
        }
    }
}

/// Interceptors installed on a `tcp://` connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hooks {
    None,
    ServerNoop,
    ServerPolicy,
    BothNoop,
}

impl Hooks {
    const ALL: [Hooks; 4] = [
        Hooks::None,
        Hooks::ServerNoop,
        Hooks::ServerPolicy,
        Hooks::BothNoop,
    ];

    fn label(self) -> &'static str {
        match self {
            Hooks::None => "none",
            Hooks::ServerNoop => "one no-op server interceptor",
            Hooks::ServerPolicy => "an authorization policy (4 statements, the last allows)",
            Hooks::BothNoop => "a no-op interceptor on each side",
        }
    }
}

/// A client-side interceptor that does nothing.
struct Noop;

impl CallInterceptor for Noop {
    fn before<'a>(&'a self, _call: &'a mut OutgoingCall) -> BoxFuture<'a, Result<(), CallError>> {
        Box::pin(async { Ok(()) })
    }
}

/// One thing to measure: a server and how to dial it.
struct Variant {
    label: String,
    server: plexus::Server,
    url: String,
    endpoint: Endpoint,
}

/// The certificates and key every TLS or keyed variant shares.
struct Credentials {
    pki: TestPki,
    key: SessionKey,
}

impl Credentials {
    fn new() -> Credentials {
        Credentials {
            pki: TestPki::new("bench CA"),
            key: SessionKey::new(b"plexus-bench session key, 32 B!!"),
        }
    }
}

async fn start_channel(channel: Channel, creds: Arc<Credentials>) -> Result<Variant, BoxError> {
    let pki = &creds.pki;
    let (mut server, mut client) = match channel {
        Channel::Tcp | Channel::TcpKey => (
            plexus_side::server("tcp://127.0.0.1:0"),
            Endpoint::builder(),
        ),
        Channel::Tls => (
            plexus_side::server("tls://127.0.0.1:0").tls(pki.server_tls()),
            Endpoint::builder().tls(pki.client_tls()),
        ),
        Channel::MutualTlsKey => {
            let server_id = pki.member(&Member::named("bench-server"));
            let client_id = pki.member(&Member::named("bench-client"));
            (
                plexus_side::server("tls://127.0.0.1:0").tls(pki.node_tls(&server_id)),
                Endpoint::builder().tls(pki.node_tls(&client_id)),
            )
        }
    };
    if matches!(channel, Channel::TcpKey | Channel::MutualTlsKey) {
        server = server.session_key(creds.key.clone());
        client = client.session_key(creds.key.clone());
    }
    let server = server.start().await?;
    Ok(Variant {
        label: channel.label().to_owned(),
        url: server.local_url().to_string(),
        server,
        endpoint: client.build(),
    })
}

async fn start_hooks(hooks: Hooks) -> Result<Variant, BoxError> {
    let mut server = plexus_side::server("tcp://127.0.0.1:0");
    let mut client = Endpoint::builder();
    match hooks {
        Hooks::None => {}
        Hooks::ServerNoop => {
            server = server.intercept(|_call: IncomingCall| async { Ok(Extensions::default()) });
        }
        Hooks::ServerPolicy => {
            // Three statements that do not cover the echo call, then one
            // that allows it: what a small real policy walks per call.
            server = server.intercept(
                Policy::deny_by_default()
                    .allow(Permission::service("plexus.Health"))
                    .deny(Permission::op("bench.Echo/admin*"))
                    .allow(Permission::service("bench.Echo").peer(Rule::new().common_name("ops")))
                    .allow(Permission::service("bench.Echo")),
            );
        }
        Hooks::BothNoop => {
            server = server.intercept(|_call: IncomingCall| async { Ok(Extensions::default()) });
            client = client.intercept_calls(Noop);
        }
    }
    let server = server.start().await?;
    Ok(Variant {
        label: hooks.label().to_owned(),
        url: server.local_url().to_string(),
        server,
        endpoint: client.build(),
    })
}

/// Set-ups per second over `window`, `dialers` at a time: each dials,
/// makes one echo call and closes gracefully.
async fn setups(
    endpoint: Endpoint,
    url: String,
    dialers: usize,
    window: Duration,
) -> Result<f64, BoxError> {
    let started = Instant::now();
    let per_dialer = MAX_SETUPS / dialers;
    let tasks: Vec<_> = (0..dialers)
        .map(|_| {
            let (endpoint, url) = (endpoint.clone(), url.clone());
            tokio::spawn(async move {
                let mut done = 0usize;
                while done < per_dialer && started.elapsed() < window {
                    let connection = endpoint.connect(url.as_str()).await?;
                    let mut client =
                        Echoer::Plexus(plexus_side::EchoClient::new(connection.clone()));
                    client.echo(&PAYLOAD).await?;
                    connection.close().await;
                    done += 1;
                }
                Ok::<usize, BoxError>(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The floor of [`setups`]: a raw TCP connect, one echo, close.
async fn raw_setups(
    addr: std::net::SocketAddr,
    dialers: usize,
    window: Duration,
) -> Result<f64, BoxError> {
    let started = Instant::now();
    let per_dialer = MAX_SETUPS / dialers;
    let tasks: Vec<_> = (0..dialers)
        .map(|_| {
            tokio::spawn(async move {
                let mut done = 0usize;
                while done < per_dialer && started.elapsed() < window {
                    raw::connect_echo_close(addr, &PAYLOAD).await?;
                    done += 1;
                }
                Ok::<usize, BoxError>(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Slices of one figure, per row, in the order taken.
struct Rows {
    labels: Vec<String>,
    slices: Vec<Vec<f64>>,
}

impl Rows {
    fn new(labels: Vec<String>) -> Rows {
        let slices = vec![Vec::new(); labels.len()];
        Rows { labels, slices }
    }

    fn median(&self, row: usize) -> f64 {
        measure::median(&mut self.slices[row].clone())
    }

    fn slices(&self, row: usize, unit: &str) -> String {
        let digits = usize::from(!unit.is_empty());
        self.slices[row]
            .iter()
            .map(|v| format!("{v:.digits$}{unit}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs `--security` and writes its section.
pub fn run(rig: &Rig, options: Options) -> Result<(), BoxError> {
    let w = Windows::new(options.quick);
    let creds = Arc::new(Credentials::new());
    println!(
        "plexus-bench security ({} run): {}",
        if options.quick { "quick" } else { "full" },
        crate::rig::PINNING
    );

    let mut channels = Vec::new();
    for channel in Channel::ALL {
        channels.push(on_server(rig, start_channel(channel, creds.clone()))?);
    }
    let (raw_addr, raw_task) = on_server(rig, raw::start_echo())?;

    // Set-up rate, one dialer and many, raw floor first in each round.
    let mut setup_labels = vec!["raw TCP connect + echo + close (floor)".to_owned()];
    setup_labels.extend(channels.iter().map(|v| v.label.clone()));
    let mut sequential = Rows::new(setup_labels.clone());
    let mut concurrent = Rows::new(setup_labels);
    for round in 0..w.rounds {
        for (rows, dialers) in [(&mut sequential, 1), (&mut concurrent, DIALERS)] {
            rows.slices[0].push(on_client(rig, raw_setups(raw_addr, dialers, w.setup))?);
            for (i, v) in channels.iter().enumerate() {
                let rate = on_client(
                    rig,
                    setups(v.endpoint.clone(), v.url.clone(), dialers, w.setup),
                )?;
                rows.slices[i + 1].push(rate);
            }
        }
        println!("  set-up round {} of {} done", round + 1, w.rounds);
    }
    raw_task.abort();

    let unary_channels = unary_rows(rig, &w, &channels)?;
    for v in channels {
        on_server(rig, async move {
            v.server.shutdown().await;
            Ok(())
        })?;
    }

    let mut hooked = Vec::new();
    for hooks in Hooks::ALL {
        hooked.push(on_server(rig, start_hooks(hooks))?);
    }
    let unary_hooks = unary_rows(rig, &w, &hooked)?;
    for v in hooked {
        on_server(rig, async move {
            v.server.shutdown().await;
            Ok(())
        })?;
    }

    let command = if options.quick {
        "cargo run --release -p plexus-bench -- --security --quick"
    } else {
        "cargo run --release -p plexus-bench -- --security"
    };
    let section = section(
        command,
        &w,
        &sequential,
        &concurrent,
        &unary_channels,
        &unary_hooks,
    );
    println!("\n{section}");
    if let Some(path) = options.out {
        report::write_section(&path, "security", &section)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

/// Throughput (calls/s) and p50 (µs) slices of each variant, in turns.
struct Unary {
    throughput: Rows,
    p50: Rows,
}

fn unary_rows(rig: &Rig, w: &Windows, variants: &[Variant]) -> Result<Unary, BoxError> {
    let labels: Vec<String> = variants.iter().map(|v| v.label.clone()).collect();
    let mut out = Unary {
        throughput: Rows::new(labels.clone()),
        p50: Rows::new(labels),
    };
    let mut clients = Vec::new();
    for v in variants {
        let (endpoint, url) = (v.endpoint.clone(), v.url.clone());
        clients.push(on_client(rig, async move {
            let connection = endpoint.connect(url.as_str()).await?;
            Ok(Echoer::Plexus(plexus_side::EchoClient::new(connection)))
        })?);
    }
    for round in 0..w.rounds {
        for (i, client) in clients.iter().enumerate() {
            let (warmup, window) = (w.warmup, w.unary);
            let c = client.clone();
            let (calls, took) = on_client(rig, async move {
                measure::throughput(c, IN_FLIGHT, warmup, window).await
            })?;
            out.throughput.slices[i].push(calls as f64 / took.as_secs_f64());
            let (n, t) = (w.latency_calls, w.latency_time);
            let mut c = client.clone();
            let mut samples =
                on_client(
                    rig,
                    async move { measure::latency(&mut c, n / 10, n, t).await },
                )?;
            samples.sort_unstable();
            out.p50.slices[i].push(measure::percentile(&samples, 0.5).as_secs_f64() * 1e6);
        }
        println!("  unary round {} of {} done", round + 1, w.rounds);
    }
    Ok(out)
}

fn section(
    command: &str,
    w: &Windows,
    sequential: &Rows,
    concurrent: &Rows,
    channels: &Unary,
    hooks: &Unary,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### security run\n");
    let _ = writeln!(out, "Reproduce: `{command}`\n");
    let _ = writeln!(out, "- Machine: {}", report::machine());
    let _ = writeln!(out, "- Threads: {}", crate::rig::PINNING);
    let _ = writeln!(
        out,
        "- Windows: {} rounds; each round takes every variant in turn: set-up {:?} per variant, unary throughput {:?} after {:?} warm-up with {IN_FLIGHT} in flight, p50 over up to {} calls or {:?}",
        w.rounds, w.setup, w.unary, w.warmup, w.latency_calls, w.latency_time
    );
    let _ = writeln!(
        out,
        "- TLS: rustls with ring, TLS 1.3, P-256 ECDSA certificates from one test CA; `tls://` mutual presents a client certificate too\n"
    );

    let _ = writeln!(
        out,
        "Connection set-up: dial + handshake + one echo call + graceful close, per second (median of the rounds; every round after the semicolon)\n"
    );
    let _ = writeln!(
        out,
        "| channel | one dialer | × floor | {DIALERS} dialers | × floor |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let (floor_seq, floor_conc) = (sequential.median(0), concurrent.median(0));
    for row in 0..sequential.labels.len() {
        let (s, c) = (sequential.median(row), concurrent.median(row));
        let _ = writeln!(
            out,
            "| {} | {s:.0}/s | {:.2}× | {c:.0}/s | {:.2}× |",
            sequential.labels[row],
            s / floor_seq,
            c / floor_conc
        );
    }
    let _ = writeln!(out);
    for row in 0..sequential.labels.len() {
        let _ = writeln!(
            out,
            "- {}: one dialer {}; {DIALERS} dialers {}",
            sequential.labels[row],
            sequential.slices(row, ""),
            concurrent.slices(row, "")
        );
    }

    for (title, unary) in [
        ("Unary calls on one connection by channel", channels),
        (
            "Unary calls on one `tcp://` connection by interceptors installed",
            hooks,
        ),
    ] {
        let _ = writeln!(
            out,
            "\n{title} (64 B; throughput with {IN_FLIGHT} in flight, p50 one at a time; ratios against the first row)\n"
        );
        let _ = writeln!(out, "| variant | calls/s | × first | p50 | × first |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        let (t0, p0) = (unary.throughput.median(0), unary.p50.median(0));
        for row in 0..unary.throughput.labels.len() {
            let (t, p) = (unary.throughput.median(row), unary.p50.median(row));
            let _ = writeln!(
                out,
                "| {} | {t:.0} | {:.2}× | {p:.1} µs | {:.2}× |",
                unary.throughput.labels[row],
                t / t0,
                p / p0
            );
        }
        let _ = writeln!(out);
        for row in 0..unary.throughput.labels.len() {
            let _ = writeln!(
                out,
                "- {}: calls/s {}; p50 {}",
                unary.throughput.labels[row],
                unary.throughput.slices(row, ""),
                unary.p50.slices(row, " µs")
            );
        }
    }
    out
}
