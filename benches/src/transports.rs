//! The figures that are not one TCP connection, each beside its own floor:
//! `unix://` against the raw echo over a Unix socket, `inproc://` (nothing to
//! put beside it in one process but its goal, in microseconds), and unary
//! throughput with the same 64 callers spread over 8 and over 64 connections
//! from one client, for every system.
//!
//! Like the unary phase, the lanes take turns in short slices, several
//! rounds over, so noise from the machine lands on all of them.

use std::path::PathBuf;
use std::time::Duration;

use crate::systems::{Echoer, Served, System, Target};
use crate::{measure, on_client, on_server, plexus_side, raw, stop, BoxError, Settings, IN_FLIGHT};
use crate::{report::Figures, rig::Rig};

/// Connection counts of the spread figure.
pub const CONNECTIONS: [usize; 2] = [8, 64];

/// One local transport's figures, and its floor's where there is one.
pub struct Local {
    /// The URL scheme, e.g. `unix://`.
    pub scheme: &'static str,
    /// Where the two ends run, when that is what sets the figure.
    pub placement: Option<&'static str>,
    /// What the floor is, e.g. "raw echo over a Unix socket".
    pub floor: Option<&'static str>,
    pub plexus_rate: f64,
    pub plexus_p50: Duration,
    pub floor_rate: Option<f64>,
    pub floor_p50: Option<Duration>,
}

/// One measured lane: connections under load, an optional connection of its
/// own for latency, and what they saw. The unary phase uses it too.
pub(crate) struct Lane {
    loaded: Vec<Echoer>,
    single: Option<Echoer>,
    calls: u64,
    elapsed: Duration,
    samples: Vec<Duration>,
}

impl Lane {
    pub(crate) fn new(loaded: Vec<Echoer>, single: Option<Echoer>) -> Lane {
        Lane {
            loaded,
            single,
            calls: 0,
            elapsed: Duration::ZERO,
            samples: Vec::new(),
        }
    }

    pub(crate) fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn p50(&mut self) -> Option<Duration> {
        self.percentile(0.50)
    }

    pub(crate) fn p99(&mut self) -> Option<Duration> {
        self.percentile(0.99)
    }

    /// How many latency samples were taken.
    pub(crate) fn latency_calls(&self) -> usize {
        self.samples.len()
    }

    fn percentile(&mut self, p: f64) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        self.samples.sort_unstable();
        Some(measure::percentile(&self.samples, p))
    }
}

/// Runs every lane's throughput (and latency, where it has a connection for
/// it) in turns, `settings.unary_rounds` times over.
pub(crate) fn run_lanes(
    rig: &Rig,
    settings: &Settings,
    lanes: &mut [Lane],
) -> Result<(), BoxError> {
    let rounds = settings.unary_rounds.max(1);
    let window = settings.throughput_window / rounds;
    let latency_calls = settings.latency_calls / rounds as usize;
    let latency_time = settings.latency_time / rounds;
    for round in 0..rounds {
        for lane in lanes.iter_mut() {
            let warmup = if round == 0 {
                settings.throughput_warmup
            } else {
                settings.throughput_warmup / 4
            };
            let clients = lane.loaded.clone();
            let (n, took) = on_client(
                rig,
                measure::throughput_spread(clients, IN_FLIGHT, warmup, window),
            )?;
            lane.calls += n;
            lane.elapsed += took;
            if let Some(mut client) = lane.single.take() {
                let warmup_calls = if round == 0 { 1_000 } else { 100 };
                let (client, more) = on_client(rig, async move {
                    let more =
                        measure::latency(&mut client, warmup_calls, latency_calls, latency_time)
                            .await?;
                    Ok((client, more))
                })?;
                lane.single = Some(client);
                lane.samples.extend(more);
            }
        }
    }
    Ok(())
}

/// Opens `count` connections to `target`; Plexus ones from one client
/// `Endpoint`, as a client process holding several connections does.
async fn connect_many(target: Target, count: usize) -> Result<Vec<Echoer>, BoxError> {
    let mut clients = Vec::with_capacity(count);
    match &target {
        Target::Plexus(url) => {
            let endpoint = plexus::Endpoint::builder().build();
            for _ in 0..count {
                let connection = endpoint.connect(url.clone()).await?;
                clients.push(Echoer::Plexus(plexus_side::EchoClient::new(connection)));
            }
        }
        Target::Addr(..) => {
            for _ in 0..count {
                clients.push(Echoer::connect(target.clone()).await?);
            }
        }
    }
    Ok(clients)
}

/// `unix://` beside the raw Unix-socket echo, and `inproc://` twice: with
/// both ends on one runtime, as tasks of one process use it, and with the
/// server on the server runtime and the client on the client runtime, where
/// every call crosses threads twice.
pub fn local(rig: &Rig, settings: &Settings, figures: &mut Figures) -> Result<(), BoxError> {
    let dir = std::env::temp_dir().join(format!("plexus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure_local(rig, settings, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    figures.local = result?;
    Ok(())
}

fn measure_local(
    rig: &Rig,
    settings: &Settings,
    dir: &std::path::Path,
) -> Result<Vec<Local>, BoxError> {
    let unix_url = format!("unix://{}", dir.join("plexus.sock").display());
    let raw_path: PathBuf = dir.join("raw.sock");
    let (unix_server, inproc_server, raw_task) = on_server(rig, {
        let raw_path = raw_path.clone();
        async move {
            let unix = plexus_side::start_at(&unix_url).await?;
            let inproc = plexus_side::start_at("inproc://plexus-bench").await?;
            let (_, raw) = raw::start_echo_unix(&raw_path)?;
            Ok((unix, inproc, raw))
        }
    })?;
    // The same echo server on the client runtime, so both ends of these
    // connections share its one worker thread.
    let shared_server = on_client(rig, plexus_side::start_at("inproc://plexus-bench-shared"))?;
    let unix_target = Target::Plexus(unix_server.local_url().to_string());
    let inproc_target = Target::Plexus(inproc_server.local_url().to_string());
    let shared_target = Target::Plexus(shared_server.local_url().to_string());
    let mut lanes = on_client(rig, async move {
        let mut lanes = Vec::new();
        for target in [unix_target, shared_target, inproc_target] {
            let loaded = Echoer::connect(target.clone()).await?;
            let single = Echoer::connect(target).await?;
            lanes.push(Lane::new(vec![loaded], Some(single)));
        }
        let loaded = Echoer::Raw(raw::Client::connect_unix(&raw_path).await?);
        let single = Echoer::Raw(raw::Client::connect_unix(&raw_path).await?);
        lanes.push(Lane::new(vec![loaded], Some(single)));
        Ok(lanes)
    })?;
    run_lanes(rig, settings, &mut lanes)?;
    let mut shown = Vec::new();
    for (name, lane) in [
        "plexus unix://",
        "plexus inproc:// (one runtime)",
        "plexus inproc:// (two runtimes)",
        "raw unix",
    ]
    .iter()
    .zip(lanes.iter_mut())
    {
        let (rate, p50) = (lane.rate(), lane.p50().unwrap_or_default());
        println!(
            "{name:>31}: unary {IN_FLIGHT} in flight: {rate:.0} calls/s; 1 in flight: p50 {p50:?}"
        );
        shown.push((rate, p50));
    }
    rig.client(async move {
        drop(lanes);
        shared_server.shutdown().await;
    })?;
    rig.server(async move {
        unix_server.shutdown().await;
        inproc_server.shutdown().await;
        raw_task.abort();
    })?;
    let inproc = |placement, (rate, p50): (f64, Duration)| Local {
        scheme: "inproc://",
        placement: Some(placement),
        floor: None,
        plexus_rate: rate,
        plexus_p50: p50,
        floor_rate: None,
        floor_p50: None,
    };
    Ok(vec![
        Local {
            scheme: "unix://",
            placement: None,
            floor: Some("raw echo over a Unix socket"),
            plexus_rate: shown[0].0,
            plexus_p50: shown[0].1,
            floor_rate: Some(shown[3].0),
            floor_p50: Some(shown[3].1),
        },
        inproc(ONE_RUNTIME, shown[1]),
        inproc(TWO_RUNTIMES, shown[2]),
    ])
}

/// Where the `inproc://` lane the goal is read from runs its two ends.
pub const ONE_RUNTIME: &str = "both ends on one runtime";

/// The other `inproc://` lane: every call crosses threads twice.
pub const TWO_RUNTIMES: &str = "server and client runtimes";

/// Unary throughput, 64 callers over 8 and over 64 connections, per system.
pub fn spread(rig: &Rig, settings: &Settings, figures: &mut Figures) -> Result<(), BoxError> {
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
        for count in CONNECTIONS {
            let clients = on_client(rig, connect_many(target.clone(), count))?;
            lanes.push(Lane::new(clients, None));
        }
    }
    run_lanes(rig, settings, &mut lanes)?;
    figures.spread = CONNECTIONS.iter().map(|&n| (n, [None; 4])).collect();
    for (k, lane) in lanes.iter().enumerate() {
        let (i, system) = systems[k / CONNECTIONS.len()];
        let row = k % CONNECTIONS.len();
        let rate = lane.rate();
        println!(
            "{system:>8}: unary {IN_FLIGHT} in flight over {} connections: {rate:.0} calls/s",
            CONNECTIONS[row]
        );
        figures.spread[row].1[i] = Some(rate);
    }
    rig.client(async move { drop(lanes) })?;
    stop(rig, served)?;
    Ok(())
}
