//! The measurements, each a bounded loop run on the client runtime: bounded
//! by a call count and by a time limit, whichever comes first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::time::sleep;

use crate::memory::HeapWindow;
use crate::systems::{Echoer, System, Target};
use crate::{plexus_side, raw, tonic_side, BoxError};

/// The unary payload, the same bytes for every system.
pub const PAYLOAD: [u8; 64] = [0x42; 64];
/// The most calls any one loop makes, whatever its time limit.
const MAX_CALLS: u64 = 50_000_000;

/// Calls completed, and the time they took, with `in_flight` callers sharing
/// one connection, counted over `window` after `warmup`.
pub async fn throughput(
    client: Echoer,
    in_flight: usize,
    warmup: Duration,
    window: Duration,
) -> Result<(u64, Duration), BoxError> {
    throughput_spread(vec![client], in_flight, warmup, window).await
}

/// Like [`throughput`], with the `in_flight` callers spread evenly over
/// `clients` (caller `k` uses connection `k mod n`).
pub async fn throughput_spread(
    clients: Vec<Echoer>,
    in_flight: usize,
    warmup: Duration,
    window: Duration,
) -> Result<(u64, Duration), BoxError> {
    if clients.is_empty() {
        return Err("no connections to measure".into());
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..in_flight)
        .map(|k| {
            let client = clients[k % clients.len()].clone();
            let (mut client, done, stop) = (client, done.clone(), stop.clone());
            tokio::spawn(async move {
                for _ in 0..MAX_CALLS / in_flight as u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    client.echo(&PAYLOAD).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), BoxError>(())
            })
        })
        .collect();
    sleep(warmup).await;
    let (start, before) = (Instant::now(), done.load(Ordering::Relaxed));
    sleep(window).await;
    let (elapsed, after) = (start.elapsed(), done.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await??;
    }
    Ok((after - before, elapsed))
}

/// Round-trip times of calls made one at a time, after `warmup_calls`.
pub async fn latency(
    client: &mut Echoer,
    warmup_calls: usize,
    max_calls: usize,
    max_time: Duration,
) -> Result<Vec<Duration>, BoxError> {
    for _ in 0..warmup_calls {
        client.echo(&PAYLOAD).await?;
    }
    let mut samples = Vec::with_capacity(max_calls);
    let start = Instant::now();
    while samples.len() < max_calls && start.elapsed() < max_time {
        let sent = Instant::now();
        client.echo(&PAYLOAD).await?;
        samples.push(sent.elapsed());
    }
    Ok(samples)
}

/// Heap allocations per call, both ends, over `calls` calls made one at a
/// time after a warm-up (so connection setup and lazily grown buffers are
/// not charged).
pub async fn allocations(mut client: Echoer, calls: usize) -> Result<f64, BoxError> {
    for _ in 0..calls {
        client.echo(&PAYLOAD).await?;
    }
    // Let the other side settle: the server's last reply is sent before its
    // per-call state is torn down.
    sleep(Duration::from_millis(20)).await;
    let window = HeapWindow::open();
    for _ in 0..calls {
        client.echo(&PAYLOAD).await?;
    }
    let counted = window.close();
    Ok(counted.allocations as f64 / calls as f64)
}

/// Median time for the same call to all of `clients` at once to be answered
/// by every one: (p50, rounds).
pub async fn broadcast(
    mut clients: Vec<Echoer>,
    max_rounds: usize,
    max_time: Duration,
) -> Result<(Duration, usize), BoxError> {
    for _ in 0..max_rounds.div_ceil(10) {
        round(&mut clients).await?;
    }
    let mut samples = Vec::with_capacity(max_rounds);
    let start = Instant::now();
    while samples.len() < max_rounds && start.elapsed() < max_time {
        let sent = Instant::now();
        round(&mut clients).await?;
        samples.push(sent.elapsed());
    }
    samples.sort_unstable();
    Ok((percentile(&samples, 0.50), samples.len()))
}

async fn round(clients: &mut [Echoer]) -> Result<(), BoxError> {
    for answer in join_all(clients.iter_mut().map(|c| c.echo(&PAYLOAD))).await {
        answer?;
    }
    Ok(())
}

pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A client of a system's server-streaming call.
pub enum Downloader {
    Plexus(plexus_side::EchoClient),
    Tonic(tonic_side::Client),
    /// The raw stream server; each download opens its own connection.
    Raw(SocketAddr),
}

impl Downloader {
    /// Connects to a streaming server; must run on the client runtime.
    pub async fn connect(target: Target) -> Result<Downloader, BoxError> {
        Ok(match target {
            Target::Plexus(url) => Downloader::Plexus(plexus_side::connect(url).await?),
            Target::Addr(System::Tonic, addr) => {
                Downloader::Tonic(tonic_side::connect(addr).await?)
            }
            Target::Addr(System::Raw, addr) => Downloader::Raw(addr),
            Target::Addr(system, _) => {
                return Err(format!("{system} has no streaming call here").into())
            }
        })
    }

    /// Receives `messages` × `size` bytes; returns MiB/s from the request to
    /// the last byte.
    pub async fn rate(&mut self, messages: u32, size: u32) -> Result<f64, BoxError> {
        let start = Instant::now();
        let received = match self {
            Downloader::Plexus(client) => plexus_side::download(client, messages, size).await?,
            Downloader::Tonic(client) => tonic_side::download(client, messages, size).await?,
            Downloader::Raw(addr) => raw::download(*addr, messages, size).await?,
        };
        let elapsed = start.elapsed();
        let expected = messages as usize * size as usize;
        if received != expected {
            return Err(format!("stream delivered {received} of {expected} bytes").into());
        }
        Ok(received as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64())
    }
}

/// The median of `values` (which it sorts).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
