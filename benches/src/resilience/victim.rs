//! The victim: a Plexus server in a process of its own
//! (`plexus-bench --serve-victim URL [settings]`), so that its resident
//! memory counts the server alone and not the attacker.
//!
//! It serves an echo, a slow unary call, a slow one-way call and a pub/sub
//! topic, and talks to the attacking process through its standard streams,
//! one tab-separated line each:
//!
//! - it prints `ready URL` once listening, `closed REMOTE KIND REASON` for
//!   every connection that ends, `evicted REASON` for every subscriber its
//!   publisher drops, and the answers below;
//! - it reads `reset` (forget the peaks below), `stats` (answered `stats
//!   BUDGET_PEAK HELD_BACK CONNECTIONS SUBSCRIBERS`: the most any connection
//!   held against its memory budget since the last `reset`, whether any was
//!   held back meanwhile, and the counts now) and `publish COUNT PAD`
//!   (publishes COUNT events with PAD bytes each, answered `published COUNT
//!   MIN_REACHED LONGEST_WAIT_US`);
//! - it shuts down when its standard input ends.
//!
//! It never decides anything about the attack; the attacker measures.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use plexus::patterns::Publisher;
use plexus::{events::Event, CloseReason, ConnectionConfig, Reject, Router, Server};
use serde_bytes::ByteBuf;

use crate::BoxError;

/// The echo: the well-behaved client calls it throughout, attackers pipeline it.
pub const ECHO: &str = "bench.Victim/echo";
/// A unary call whose handler takes 20 ms and answers the body's length.
pub const SLOW: &str = "bench.Victim/slow";
/// A one-way call whose handler takes a second, holding its message
/// meanwhile as a handler working on it does.
pub const NOTE: &str = "bench.Victim/note";
/// How long [`SLOW`] takes.
pub const SLOW_HANDLER: Duration = Duration::from_millis(20);
/// How long [`NOTE`] takes.
pub const NOTE_HANDLER: Duration = Duration::from_secs(1);
/// The topic every event is published on.
pub const TOPIC: &str = "ticks";

/// An event of the pub/sub attack: its sequence number and when it was
/// published, in microseconds of the system clock (both processes are on
/// one machine, so one clock).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Tick {
    pub seq: u64,
    pub sent_us: u64,
    pub pad: ByteBuf,
}

plexus::topic! {
    /// The victim's topic.
    pub struct Ticks in "bench" => Tick;
}

/// Microseconds since the Unix epoch on the system clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the victim runs with: the defaults, or a shorter timeout where an
/// attack is decided by one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// `ConnectionConfig::stall_timeout` (default 10 s).
    pub stall: Option<Duration>,
    /// `ConnectionConfig::handshake_timeout` (default 10 s).
    pub handshake: Option<Duration>,
}

impl Tuning {
    /// The defaults a user gets.
    pub const DEFAULTS: Tuning = Tuning {
        stall: None,
        handshake: None,
    };

    /// The command-line flags that give this tuning to a victim.
    pub fn args(self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(d) = self.stall {
            args.extend(["--stall-timeout-ms".into(), d.as_millis().to_string()]);
        }
        if let Some(d) = self.handshake {
            args.extend(["--handshake-timeout-ms".into(), d.as_millis().to_string()]);
        }
        args
    }

    /// How the table names it.
    pub fn label(self) -> String {
        match (self.stall, self.handshake) {
            (None, None) => "defaults".into(),
            (stall, handshake) => {
                let mut parts = Vec::new();
                if let Some(d) = stall {
                    parts.push(format!("stall timeout {}", crate::resilience::secs(d)));
                }
                if let Some(d) = handshake {
                    parts.push(format!("handshake timeout {}", crate::resilience::secs(d)));
                }
                parts.join(", ")
            }
        }
    }

    fn config(self) -> ConnectionConfig {
        let mut config = ConnectionConfig::new();
        if let Some(d) = self.stall {
            config = config.stall_timeout(d);
        }
        if let Some(d) = self.handshake {
            config = config.handshake_timeout(d);
        }
        config
    }
}

/// Runs the victim: `args` are what follows `--serve-victim` (the URL to
/// listen on, then the flags of [`Tuning::args`]).
pub fn serve(args: Vec<String>) -> Result<(), BoxError> {
    let mut it = args.into_iter();
    let url = it.next().ok_or("--serve-victim needs a URL")?;
    let mut tuning = Tuning::DEFAULTS;
    while let Some(flag) = it.next() {
        let ms: u64 = it
            .next()
            .ok_or_else(|| format!("{flag} needs milliseconds"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))?;
        let d = Some(Duration::from_millis(ms));
        match flag.as_str() {
            "--stall-timeout-ms" => tuning.stall = d,
            "--handshake-timeout-ms" => tuning.handshake = d,
            other => return Err(format!("unknown victim flag `{other}`").into()),
        }
    }
    // A server as a user runs it: tokio's multi-thread runtime with its
    // default worker count (one per core).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("victim")
        .enable_all()
        .build()?;
    runtime.block_on(run(url, tuning))
}

/// What the stats sampler saw since the last `reset` command.
#[derive(Default)]
struct Watched {
    budget_peak: AtomicUsize,
    held_back: AtomicBool,
}

async fn run(url: String, tuning: Tuning) -> Result<(), BoxError> {
    let publisher = Publisher::<Ticks>::new();
    let router = Router::new()
        .unary(
            ECHO,
            |_ctx, body: Bytes| async move { Ok::<_, Reject>(body) },
        )
        .unary(SLOW, |_ctx, body: Bytes| async move {
            tokio::time::sleep(SLOW_HANDLER).await;
            Ok::<_, Reject>(Bytes::from(body.len().to_string()))
        })
        .oneway(NOTE, |_ctx, body: Bytes| async move {
            tokio::time::sleep(NOTE_HANDLER).await;
            drop(body);
        })
        .add(publisher.router());
    let server = Server::bind(url.as_str())
        .config(tuning.config())
        .serve(router)
        .start()
        .await?;
    let mut events = server.endpoint().events();
    let mut evictions = publisher.evictions();
    println!("ready\t{}", server.local_url());

    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::Disconnected { peer, reason } = event {
                println!(
                    "closed\t{}\t{}\t{}",
                    peer.remote(),
                    reason_kind(&reason),
                    describe(&reason)
                );
            }
        }
    });
    tokio::spawn(async move {
        while let Ok(eviction) = evictions.recv().await {
            println!("evicted\t{}", eviction.reason);
        }
    });
    let watched = Arc::new(Watched::default());
    let sampler = tokio::spawn({
        let (endpoint, watched) = (server.endpoint().clone(), watched.clone());
        async move {
            loop {
                let connections = endpoint.connections();
                for c in &connections {
                    let stats = c.stats();
                    watched
                        .budget_peak
                        .fetch_max(stats.budget_used, Ordering::Relaxed);
                    if stats.held_back {
                        watched.held_back.store(true, Ordering::Relaxed);
                    }
                }
                // Thousands of connections are sampled less often, so the
                // sampling does not crowd out the server it measures.
                let pause = if connections.len() > 256 { 100 } else { 5 };
                drop(connections);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    });

    // Commands arrive on standard input, read by a thread of its own (std's
    // stdin is blocking); the channel ends with the input.
    let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(command) = commands.recv().await {
        let words: Vec<&str> = command.split('\t').collect();
        match words.as_slice() {
            ["reset"] => {
                watched.budget_peak.store(0, Ordering::Relaxed);
                watched.held_back.store(false, Ordering::Relaxed);
            }
            ["stats"] => {
                let peak = watched.budget_peak.load(Ordering::Relaxed);
                let held = watched.held_back.load(Ordering::Relaxed);
                println!(
                    "stats\t{peak}\t{held}\t{}\t{}",
                    server.connections().len(),
                    publisher.subscribers()
                );
            }
            ["publish", count, pad] => {
                let (Ok(count), Ok(pad)) = (count.parse::<u64>(), pad.parse::<usize>()) else {
                    eprintln!("victim: bad command `{command}`");
                    continue;
                };
                let publisher = publisher.clone();
                tokio::spawn(async move {
                    let (reached, longest) = publish(&publisher, count, pad).await;
                    println!("published\t{count}\t{reached}\t{}", longest.as_micros());
                });
            }
            _ => eprintln!("victim: unknown command `{command}`"),
        }
    }
    sampler.abort();
    server.shutdown().await;
    Ok(())
}

/// Publishes `count` events of `pad` bytes, pausing a millisecond every 20
/// events as a steady producer would; returns the fewest subscribers an
/// event reached and the longest a `publish` waited.
async fn publish(publisher: &Publisher<Ticks>, count: u64, pad: usize) -> (usize, Duration) {
    let mut reached = usize::MAX;
    let mut longest = Duration::ZERO;
    let pad = ByteBuf::from(vec![0x78; pad]);
    for seq in 0..count {
        let tick = Tick {
            seq,
            sent_us: now_us(),
            pad: pad.clone(),
        };
        let started = Instant::now();
        match publisher.publish(TOPIC, &tick).await {
            Ok(n) => reached = reached.min(n),
            Err(e) => {
                eprintln!("victim: publish: {e}");
                reached = 0;
            }
        }
        longest = longest.max(started.elapsed());
        if seq % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    (if count == 0 { 0 } else { reached }, longest)
}

/// Why a connection ended, in the table's words: the runtime's own text,
/// but with rounded figures where it gives exact ones.
fn describe(reason: &CloseReason) -> String {
    match reason {
        CloseReason::PeerNotReading { queued, after } => format!(
            "PeerNotReading, {:.1} MiB queued and none of it read for {:.1} s",
            *queued as f64 / (1024.0 * 1024.0),
            after.as_secs_f64()
        ),
        CloseReason::KeepaliveTimeout(d) => {
            format!(
                "KeepaliveTimeout, nothing heard for {:.1} s",
                d.as_secs_f64()
            )
        }
        other => other.to_string(),
    }
}

/// A word for each way a connection ends, for the attacker to match on.
fn reason_kind(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Local => "local",
        CloseReason::Remote => "remote",
        CloseReason::PeerGone => "peer-gone",
        CloseReason::KeepaliveTimeout(_) => "keepalive",
        CloseReason::Protocol(_) => "protocol",
        CloseReason::Io(_) => "io",
        CloseReason::Aborted => "aborted",
        CloseReason::PeerNotReading { .. } => "not-reading",
        CloseReason::CutOff(_) => "cut-off",
        _ => "other",
    }
}
