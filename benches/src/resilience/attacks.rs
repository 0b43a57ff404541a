//! The attacks of the hardening issue (#10), each played from this process
//! against a victim process, each bounded in count and in time. Every attack
//! calls [`Victim::begin`] once its own set-up is done, so the baseline is
//! the victim with its well-behaved client and nothing of the attack yet;
//! it returns, in words, what became of the attacker.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use plexus::patterns::{Overflow, Subscriber};
use plexus::wire::frame::Frame;
use plexus::wire::SystemCode;
use plexus::{Bytes, CallOptions, ConnectError, Connection};
use plexus_tests::FreezableProxy;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::resilience::peer::{self, Handshake, RawPeer};
use crate::resilience::process::{open_files_limit, Line, Victim};
use crate::resilience::secs;
use crate::resilience::victim::{now_us, Ticks, Tuning, ECHO, NOTE, SLOW};
use crate::BoxError;

const MIB: usize = 1024 * 1024;
/// What the flooding attacks offer: the 400 MiB.
const OFFERED: usize = 400 * MIB;
/// Defaults of the runtime the outcomes are read against.
const DEFAULT_STALL: Duration = Duration::from_secs(10);
const DEFAULT_HANDSHAKE: Duration = Duration::from_secs(10);
/// How much longer than the rule that should end an attack it may run
/// before the outcome is "not cut off".
const SLACK: Duration = Duration::from_secs(20);

/// One attack of the issue.
#[derive(Clone, Copy, Debug)]
pub enum Attack {
    /// A raw peer pipelines unary echo calls with `body`-byte payloads (400
    /// MiB in all) and never reads a byte back.
    UnreadAnswers { body: usize },
    /// A Plexus client makes 256 concurrent 4 MiB calls to a handler that
    /// takes 20 ms.
    LargeCalls,
    /// A raw peer defines 4097 interned operation names.
    ManyNames,
    /// A raw peer defines 300 operation names of 1000 bytes.
    LongNames,
    /// 5000 raw connections opened and held, past the listener's 4096.
    Connections,
    /// 200 dialers that connect and never send their hello.
    SilentDialers,
    /// Pub/sub: one subscriber in `overflow` mode behind a relay that stops
    /// forwarding, while two others are served.
    FrozenSubscriber(Overflow),
    /// A raw peer floods one-way calls of 64 KiB to a handler that takes 1 s.
    OneWayFlood,
}

impl Attack {
    /// The name `--attack` selects it by.
    pub fn id(self) -> &'static str {
        match self {
            Attack::UnreadAnswers { body } if body >= 64 * 1024 => "unread-64k",
            Attack::UnreadAnswers { .. } => "unread-4k",
            Attack::LargeCalls => "large-calls",
            Attack::ManyNames => "many-names",
            Attack::LongNames => "long-names",
            Attack::Connections => "connections",
            Attack::SilentDialers => "silent-dialers",
            Attack::FrozenSubscriber(Overflow::Block) => "frozen-block",
            Attack::FrozenSubscriber(_) => "frozen-drop",
            Attack::OneWayFlood => "oneway-flood",
        }
    }

    /// What it does, for the table.
    pub fn describe(self) -> String {
        match self {
            Attack::UnreadAnswers { body } => format!(
                "pipelined {} KiB echo calls, answers never read (400 MiB offered)",
                body / 1024
            ),
            Attack::LargeCalls => "256 concurrent 4 MiB unary calls to a 20 ms handler".into(),
            Attack::ManyNames => "4097 interned operation names".into(),
            Attack::LongNames => "300 operation names of 1000 bytes".into(),
            Attack::Connections => "5000 connections opened and held".into(),
            Attack::SilentDialers => "200 dialers that never send their hello".into(),
            Attack::FrozenSubscriber(Overflow::Block) => {
                "a frozen block-mode subscriber (relay stops forwarding), 2 others served".into()
            }
            Attack::FrozenSubscriber(_) => {
                "a frozen drop-mode subscriber (relay stops forwarding), 2 others served".into()
            }
            Attack::OneWayFlood => {
                "one-way 64 KiB calls flooded to a 1 s handler (400 MiB offered)".into()
            }
        }
    }

    /// Plays the attack against `victim`, which runs with `tuning`.
    pub async fn run(self, victim: &mut Victim, tuning: Tuning) -> Result<String, BoxError> {
        match self {
            Attack::UnreadAnswers { body } => {
                unread_answers(victim, body, tuning.stall.unwrap_or(DEFAULT_STALL)).await
            }
            Attack::LargeCalls => large_calls(victim).await,
            Attack::ManyNames => names(victim, 4097, 8).await,
            Attack::LongNames => names(victim, 300, 1000).await,
            Attack::Connections => connections(victim).await,
            Attack::SilentDialers => {
                silent_dialers(victim, tuning.handshake.unwrap_or(DEFAULT_HANDSHAKE)).await
            }
            Attack::FrozenSubscriber(overflow) => frozen_subscriber(victim, overflow).await,
            Attack::OneWayFlood => oneway_flood(victim).await,
        }
    }
}

/// Bytes a flooding peer got written, and when it last got any written.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    last_us: AtomicU64,
}

impl Progress {
    fn wrote(&self, n: usize, since: Instant) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.last_us
            .store(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn mib(&self) -> f64 {
        self.bytes.load(Ordering::Relaxed) as f64 / MIB as f64
    }

    fn last(&self) -> Duration {
        Duration::from_micros(self.last_us.load(Ordering::Relaxed))
    }
}

/// Writes `frame(i)` for `i` in `0..count`, about 1 MiB per write, until
/// the count is done, a write fails or `stop` is set.
fn flood(
    mut peer: RawPeer,
    count: usize,
    per_write: usize,
    frame: impl Fn(usize) -> Frame + Send + 'static,
    progress: Arc<Progress>,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sent = 0;
        while sent < count && !stop.load(Ordering::Relaxed) {
            let frames: Vec<Frame> = (sent..(sent + per_write).min(count)).map(&frame).collect();
            match peer.send(&frames).await {
                Ok(n) => progress.wrote(n, started),
                Err(_) => break,
            }
            sent += frames.len();
        }
    })
}

/// The victim's `closed` line for the connection from `remote`.
fn closed_from(remote: &str) -> impl Fn(&Line) -> bool + '_ {
    move |l| {
        let f = l.fields();
        f.len() == 4 && f[0] == "closed" && f[1] == remote
    }
}

async fn unread_answers(
    victim: &mut Victim,
    body_size: usize,
    stall: Duration,
) -> Result<String, BoxError> {
    let peer = RawPeer::connect(&victim.addr).await?;
    let remote = peer.remote.clone();
    let from = victim.mark();
    let started = victim.begin().await?;
    let body = Bytes::from(vec![7u8; body_size]);
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = flood(
        peer,
        OFFERED / body_size,
        (MIB / body_size).max(1),
        move |i| peer::call(2 * i as u32 + 1, 0, (i == 0).then_some(ECHO), body.clone()),
        progress.clone(),
        started,
        stop.clone(),
    );
    let limit = stall + SLACK;
    let closed = victim.wait_line(from, limit, closed_from(&remote)).await;
    stop.store(true, Ordering::Relaxed);
    // Once the victim has closed, the next write fails (reset); bounded anyway.
    if tokio::time::timeout(Duration::from_secs(10), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    let held = format!(
        "held back after {}, {:.0} of 400 MiB written",
        secs(progress.last()),
        progress.mib()
    );
    Ok(match closed {
        Some(line) => format!(
            "{held}; cut off after {}: {}",
            secs(line.at - started),
            line.fields()[3]
        ),
        None => format!("{held}; **not cut off** within {}", secs(limit)),
    })
}

async fn large_calls(victim: &mut Victim) -> Result<String, BoxError> {
    const CALLS: usize = 256;
    let conn = Connection::connect(victim.url.as_str()).await?;
    let started = victim.begin().await?;
    // One 4 MiB buffer shared by every call, so the attacker holds little.
    let body = Bytes::from(vec![1u8; 4 * MIB]);
    let calls = (0..CALLS).map(|_| {
        let (conn, body) = (conn.clone(), body.clone());
        async move {
            let opts = CallOptions::new().timeout(Duration::from_secs(120));
            conn.call(SLOW, body, opts).await
        }
    });
    let replies = tokio::time::timeout(Duration::from_secs(150), join_all(calls))
        .await
        .map_err(|_| "256 calls did not end within 150 s")?;
    let took = started.elapsed();
    conn.close().await;
    let expected = Bytes::from((4 * MIB).to_string());
    let answered = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|b| *b == expected))
        .count();
    let mut outcome = format!(
        "held back, not refused: {answered} of {CALLS} answered in {}",
        secs(took)
    );
    if let Some(e) = replies.iter().find_map(|r| r.as_ref().err()) {
        outcome.push_str(&format!("; {} failed, first: {e}", CALLS - answered));
    }
    Ok(outcome)
}

async fn names(victim: &mut Victim, count: usize, len: usize) -> Result<String, BoxError> {
    let mut peer = RawPeer::connect(&victim.addr).await?;
    let remote = peer.remote.clone();
    let from = victim.mark();
    let started = victim.begin().await?;
    let frames: Vec<Frame> = (0..count)
        .map(|i| {
            let name = format!("{i:0len$}");
            peer::call(2 * i as u32 + 1, i as u32, Some(&name), Bytes::new())
        })
        .collect();
    // The victim may close before it has read everything: a failed write
    // is part of the outcome, not an error.
    let _ = peer.send(&frames).await;
    let (got, _) = peer.frames_until_closed(Duration::from_secs(20)).await;
    let refused = got
        .iter()
        .filter(|f| matches!(f, Frame::Reject { .. }))
        .count();
    let goaway = got.iter().find_map(|f| match f {
        Frame::GoAway { code, reason, .. } => Some((SystemCode::from_u32(*code), reason.clone())),
        _ => None,
    });
    let closed = victim
        .wait_line(from, Duration::from_secs(10), closed_from(&remote))
        .await;
    Ok(match (closed, goaway) {
        (Some(line), Some((code, reason))) => format!(
            "cut off after {} ms with GoAway {code:?}: \"{reason}\" ({refused} calls refused first)",
            (line.at - started).as_millis()
        ),
        (Some(line), None) => format!(
            "cut off after {} ms, no GoAway read ({refused} calls refused first): {}",
            (line.at - started).as_millis(),
            line.fields()[3]
        ),
        (None, _) => format!("**not cut off** ({refused} calls refused)"),
    })
}

async fn connections(victim: &mut Victim) -> Result<String, BoxError> {
    const CONNECTIONS: usize = 5000;
    // This process holds every attacking socket, the victim every accepted one.
    let needed = CONNECTIONS as u64 + 512;
    match open_files_limit() {
        Some(n) if n >= needed => {}
        n => {
            return Ok(format!(
                "not measured: needs {needed} open files per process, the limit is {n:?} (raise `ulimit -n`)"
            ))
        }
    }
    let from = victim.mark();
    let started = victim.begin().await?;
    let mut held = Vec::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    let mut first_failure = None;
    for _ in 0..CONNECTIONS {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        match RawPeer::dial(&victim.addr).await {
            Ok(Handshake::Welcome(peer)) => held.push(peer),
            Ok(Handshake::Refused(r)) => *refusals.entry(format!("{:?}", r.code)).or_default() += 1,
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert(e.to_string());
            }
        }
    }
    let opened = started.elapsed();
    let fresh = match tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect(victim.url.as_str()),
    )
    .await
    {
        Ok(Ok(conn)) => {
            conn.close().await;
            "connected".to_string()
        }
        Ok(Err(ConnectError::Refused { code, .. })) => format!("refused, {code:?}"),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(_) => "no answer within 15 s".into(),
    };
    // Held without a word, they are dropped by the keepalive (ping after
    // 5 s of silence, lost after 15 s); wait for it, bounded.
    let ours: HashSet<String> = held.iter().map(|p| p.remote.clone()).collect();
    let mut all_gone = None;
    while started.elapsed() < opened + Duration::from_secs(45) {
        if victim.stats().await?.connections <= 1 {
            all_gone = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = victim.lines_since(from, |l| {
        let f = l.fields();
        f.len() == 4 && f[0] == "closed" && ours.contains(f[1])
    });
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &closed {
        *kinds.entry(line.fields()[2]).or_default() += 1;
    }
    let first = closed.first().map(|l| l.at - started);
    let accepted = held.len();
    drop(held);
    let refused: Vec<String> = refusals.iter().map(|(c, n)| format!("{n} {c}")).collect();
    let mut outcome = format!(
        "{accepted} accepted, refused: {} ({} in all, in {}); a new dial meanwhile: {fresh}",
        if refused.is_empty() {
            "none".into()
        } else {
            refused.join(", ")
        },
        CONNECTIONS - accepted - failed,
        secs(opened)
    );
    if failed > 0 {
        outcome.push_str(&format!(
            "; {failed} dials failed, first: {}",
            first_failure.unwrap_or_default()
        ));
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    match (all_gone, first) {
        (Some(gone), Some(first)) => outcome.push_str(&format!(
            "; the held ones dropped {}–{} after the flood began ({})",
            secs(first),
            secs(gone),
            kinds.join(", ")
        )),
        _ => outcome.push_str(&format!(
            "; **not all dropped** within {} ({} seen closed)",
            secs(opened + Duration::from_secs(45)),
            closed.len()
        )),
    }
    Ok(outcome)
}

async fn silent_dialers(victim: &mut Victim, handshake: Duration) -> Result<String, BoxError> {
    const DIALERS: usize = 200;
    let started = victim.begin().await?;
    // Each dial waits for the victim to give up on it (end of stream);
    // with 128 handshake places, the last wave goes at twice the timeout.
    let limit = 2 * handshake + SLACK;
    let mut silent = Vec::with_capacity(DIALERS);
    for _ in 0..DIALERS {
        let mut stream = TcpStream::connect(&victim.addr).await?;
        silent.push(tokio::spawn(async move {
            let mut scratch = [0u8; 64];
            let ended = tokio::time::timeout(limit, async {
                while let Ok(n) = stream.read(&mut scratch).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            ended.ok().map(|()| started.elapsed())
        }));
    }
    let dialing = Instant::now();
    let dial = tokio::time::timeout(
        Duration::from_secs(30),
        Connection::connect(victim.url.as_str()),
    )
    .await;
    let dial_took = dialing.elapsed();
    let dialed = match dial {
        Ok(Ok(conn)) => {
            let served = conn
                .call(ECHO, Bytes::from_static(b"ok"), CallOptions::new())
                .await
                .is_ok();
            conn.close().await;
            format!(
                "connected after {:.2} s{}",
                dial_took.as_secs_f64(),
                if served { "" } else { " (but its call failed)" }
            )
        }
        Ok(Err(e)) => format!("**failed** after {:.2} s: {e}", dial_took.as_secs_f64()),
        Err(_) => "**still waiting** after 30 s".into(),
    };
    let mut dropped: Vec<Duration> = Vec::new();
    let mut kept = 0;
    for s in join_all(silent).await {
        match s? {
            Some(at) => dropped.push(at),
            None => kept += 1,
        }
    }
    dropped.sort_unstable();
    // The first wave holds the handshake places; the rest wait in the
    // backlog for a place and then for their own timeout.
    let wave = handshake + handshake / 2;
    let (first, rest): (Vec<Duration>, Vec<Duration>) = dropped.iter().partition(|&&at| at <= wave);
    let mut outcome = format!("a new dial {dialed}; silent dialers dropped: ");
    let waves: Vec<String> = [first, rest]
        .iter()
        .filter(|w| !w.is_empty())
        .map(|w| format!("{} after {}", w.len(), secs(w[w.len() - 1])))
        .collect();
    outcome.push_str(&waves.join(", "));
    if kept > 0 {
        outcome.push_str(&format!(", **{kept} still open** after {}", secs(limit)));
    }
    Ok(outcome)
}

async fn frozen_subscriber(victim: &mut Victim, overflow: Overflow) -> Result<String, BoxError> {
    const EVENTS: u64 = 2_000;
    const PAD: usize = 4096;
    let wait = Duration::from_secs(10);
    let mut healthy = Vec::new();
    for _ in 0..2 {
        let conn = Connection::connect(victim.url.as_str()).await?;
        let sub = Subscriber::<Ticks>::builder()
            .overflow(Overflow::Block)
            .capacity(4096)
            .connect(conn);
        tokio::time::timeout(wait, sub.wait_publishers(1))
            .await
            .map_err(|_| "a healthy subscriber was not registered")?;
        healthy.push(sub);
    }
    let relay = FreezableProxy::start(victim.addr.clone()).await;
    let conn = Connection::connect(relay.url.as_str()).await?;
    let frozen = Subscriber::<Ticks>::builder()
        .overflow(overflow)
        .connect(conn);
    tokio::time::timeout(wait, frozen.wait_publishers(1))
        .await
        .map_err(|_| "the relayed subscriber was not registered")?;
    let registered = Instant::now();
    while victim.stats().await?.subscribers < 3 {
        if registered.elapsed() > wait {
            return Err("the publisher never saw three subscribers".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let from = victim.mark();
    let started = victim.begin().await?;
    relay.freeze();
    let readers: Vec<_> = healthy
        .into_iter()
        .map(|sub| {
            tokio::spawn(async move {
                let (mut got, mut worst_us, mut out_of_order) = (0u64, 0u64, 0u64);
                while got < EVENTS {
                    match tokio::time::timeout(Duration::from_secs(30), sub.recv()).await {
                        Ok(Some(r)) => {
                            worst_us = worst_us.max(now_us().saturating_sub(r.event.sent_us));
                            if r.event.seq != got {
                                out_of_order += 1;
                            }
                            got += 1;
                        }
                        _ => break,
                    }
                }
                (got, worst_us, out_of_order)
            })
        })
        .collect();
    victim.command(&["publish", &EVENTS.to_string(), &PAD.to_string()])?;
    let published = victim
        .wait_line(from, Duration::from_secs(60), |l| {
            l.text.starts_with("published\t")
        })
        .await
        .ok_or("publishing did not finish within 60 s")?;
    let longest_publish = Duration::from_micros(published.fields()[3].parse()?);
    let (mut fewest, mut worst, mut disorder) = (EVENTS, Duration::ZERO, 0);
    for r in join_all(readers).await {
        let (got, worst_us, out_of_order) = r?;
        fewest = fewest.min(got);
        worst = worst.max(Duration::from_micros(worst_us));
        disorder += out_of_order;
    }
    // The default send timeout (5 s) decides when the frozen one goes.
    let evicted = victim
        .wait_line(from, Duration::from_secs(30), |l| {
            l.text.starts_with("evicted\t")
        })
        .await;
    drop(frozen);
    drop(relay);
    let mut outcome = if overflow == Overflow::Block {
        format!(
            "publishing stalled {} (the longest publish, waiting for the frozen one's queue; the 2 others got nothing new meanwhile); the 2 others got {fewest} of {EVENTS} events each, at most {:.1} ms after each was published",
            secs(longest_publish),
            worst.as_secs_f64() * 1e3
        )
    } else {
        format!(
            "the 2 others got {fewest} of {EVENTS} events each, at most {:.1} ms after each was published; the longest publish took {:.1} ms",
            worst.as_secs_f64() * 1e3,
            longest_publish.as_secs_f64() * 1e3
        )
    };
    if disorder > 0 {
        outcome.push_str(&format!(" (**{disorder} out of order**)"));
    }
    match evicted {
        Some(line) => outcome.push_str(&format!(
            "; the frozen one dropped after {}: {}",
            secs(line.at - started),
            line.fields()[1]
        )),
        None => outcome.push_str("; the frozen one **not dropped** within 30 s"),
    }
    Ok(outcome)
}

async fn oneway_flood(victim: &mut Victim) -> Result<String, BoxError> {
    const BODY: usize = 64 * 1024;
    /// How long the flood goes on.
    const WINDOW: Duration = Duration::from_secs(10);
    let peer = RawPeer::connect(&victim.addr).await?;
    let remote = peer.remote.clone();
    let from = victim.mark();
    let started = victim.begin().await?;
    let body = Bytes::from(vec![5u8; BODY]);
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = flood(
        peer,
        OFFERED / BODY,
        MIB / BODY,
        move |i| peer::oneway(0, (i == 0).then_some(NOTE), body.clone()),
        progress.clone(),
        started,
        stop.clone(),
    );
    let finished = tokio::time::timeout(WINDOW, &mut writer).await.is_ok();
    let took = started.elapsed();
    let closed = victim.lines_since(from, closed_from(&remote));
    stop.store(true, Ordering::Relaxed);
    writer.abort();
    let written = progress.mib();
    Ok(match closed.first() {
        Some(line) => format!(
            "cut off after {}: {} ({written:.0} of 400 MiB written)",
            secs(line.at - started),
            line.fields()[3]
        ),
        None if finished => format!(
            "**not held back**: all 400 MiB written in {}",
            secs(took)
        ),
        None => format!(
            "held back, not cut off: {written:.0} of 400 MiB written in {} ({:.0} MiB/s, the handler's pace)",
            secs(took),
            written / took.as_secs_f64()
        ),
    })
}
