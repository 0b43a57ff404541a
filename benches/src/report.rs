//! The table: absolute figures per system and the ratios of Plexus to each of
//! the others, as Markdown for the terminal and for `BENCHMARKS.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::systems::System;
use crate::transports::Local;
use crate::{rig, BoxError, Settings, IN_FLIGHT};

/// Everything one run measured, indexed like [`System::ALL`].
#[derive(Default)]
pub struct Figures {
    pub throughput: [Option<f64>; 4],
    pub p50: [Option<Duration>; 4],
    pub p99: [Option<Duration>; 4],
    pub allocations: [Option<f64>; 4],
    pub stream: [Option<f64>; 4],
    pub stream_runs: [Vec<String>; 4],
    /// Every stream run's rate, MiB/s.
    pub stream_all: [Vec<f64>; 4],
    pub stream_bytes: usize,
    pub stream_run_count: usize,
    pub broadcast: Vec<(usize, [Option<Duration>; 4])>,
    pub idle: Option<Idle>,
    /// Heap bytes per idle connection opened with `Connection::connect`.
    pub idle_endpoint_each: Option<f64>,
    /// Unary throughput with the callers spread over several connections:
    /// (connections, per system).
    pub spread: Vec<(usize, [Option<f64>; 4])>,
    /// `unix://` and `inproc://`, beside their floors.
    pub local: Vec<Local>,
}

/// The idle-connection measurement.
pub struct Idle {
    pub connections: usize,
    pub accepted: usize,
    pub rss_per_connection: f64,
    pub heap_per_connection: f64,
}

#[derive(Clone, Copy)]
enum Unit {
    CallsPerSecond,
    Micros,
    MibPerSecond,
    Bytes,
    Count,
}

struct Row {
    metric: String,
    unit: Unit,
    higher_is_better: bool,
    values: [Option<f64>; 4],
}

fn micros(d: [Option<Duration>; 4]) -> [Option<f64>; 4] {
    d.map(|d| d.map(|d| d.as_secs_f64() * 1e6))
}

fn rows(figures: &Figures) -> Vec<Row> {
    let mut rows = vec![Row {
        metric: format!("unary 64 B, {IN_FLIGHT} in flight, 1 conn"),
        unit: Unit::CallsPerSecond,
        higher_is_better: true,
        values: figures.throughput,
    }];
    for (connections, values) in &figures.spread {
        rows.push(Row {
            metric: format!("unary 64 B, {IN_FLIGHT} in flight over {connections} conns"),
            unit: Unit::CallsPerSecond,
            higher_is_better: true,
            values: *values,
        });
    }
    rows.extend([
        Row {
            metric: "unary 64 B, 1 in flight, p50".into(),
            unit: Unit::Micros,
            higher_is_better: false,
            values: micros(figures.p50),
        },
        Row {
            metric: "unary 64 B, 1 in flight, p99".into(),
            unit: Unit::Micros,
            higher_is_better: false,
            values: micros(figures.p99),
        },
        Row {
            metric: "heap allocations per unary call, both ends".into(),
            unit: Unit::Count,
            higher_is_better: false,
            values: figures.allocations,
        },
        Row {
            metric: format!(
                "server stream {} MiB in 64 KiB msgs, median of {}",
                figures.stream_bytes / (1024 * 1024),
                figures.stream_run_count
            ),
            unit: Unit::MibPerSecond,
            higher_is_better: true,
            values: figures.stream,
        },
    ]);
    for (peers, values) in &figures.broadcast {
        rows.push(Row {
            metric: format!(
                "broadcast to {peers} peer{}, all replied, p50",
                if *peers == 1 { "" } else { "s" }
            ),
            unit: Unit::Micros,
            higher_is_better: false,
            values: micros(*values),
        });
    }
    if let Some(idle) = &figures.idle {
        rows.push(Row {
            metric: format!(
                "idle conn (one Endpoint), resident (VmRSS Δ / {}), both ends",
                idle.connections
            ),
            unit: Unit::Bytes,
            higher_is_better: false,
            values: [Some(idle.rss_per_connection), None, None, None],
        });
        rows.push(Row {
            metric: "idle conn (one Endpoint), heap (allocator Δ), both ends".into(),
            unit: Unit::Bytes,
            higher_is_better: false,
            values: [Some(idle.heap_per_connection), None, None, None],
        });
    }
    if let Some(heap) = figures.idle_endpoint_each {
        rows.push(Row {
            metric: "idle conn (`Connection::connect` each), heap, both ends".into(),
            unit: Unit::Bytes,
            higher_is_better: false,
            values: [Some(heap), None, None, None],
        });
    }
    rows
}

fn show(unit: Unit, value: Option<f64>) -> String {
    let Some(v) = value else {
        return "—".into();
    };
    match unit {
        Unit::CallsPerSecond => format!("{:.1}k/s", v / 1e3),
        Unit::Micros => format!("{v:.1} µs"),
        Unit::MibPerSecond => format!("{v:.0} MiB/s"),
        Unit::Bytes => format!("{:.1} KiB", v / 1024.0),
        Unit::Count => format!("{v:.1}"),
    }
}

fn ratio(plexus: Option<f64>, other: Option<f64>) -> String {
    match (plexus, other) {
        (Some(p), Some(o)) if o > 0.0 => format!("{:.2}×", p / o),
        _ => "—".into(),
    }
}

/// The table as Markdown.
pub fn table(figures: &Figures) -> String {
    let mut out = String::new();
    out.push_str(
        "| measurement | better | plexus | tonic | tarpc | raw tcp | plexus/tonic | plexus/tarpc | plexus/raw |\n",
    );
    out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|\n");
    for row in rows(figures) {
        let [p, t, r, w] = row.values;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.metric,
            if row.higher_is_better {
                "higher"
            } else {
                "lower"
            },
            show(row.unit, p),
            show(row.unit, t),
            show(row.unit, r),
            show(row.unit, w),
            ratio(p, t),
            ratio(p, r),
            ratio(p, w),
        );
    }
    out
}

/// Each target of the issue, met or not, from this run's figures.
fn targets(figures: &Figures) -> String {
    let at =
        |v: &[Option<f64>; 4], s: System| v[System::ALL.iter().position(|x| *x == s).unwrap_or(0)];
    let (p50, p99) = (micros(figures.p50), micros(figures.p99));
    let checks: Vec<(String, Option<f64>, f64, bool)> = vec![
        (
            "unary throughput ≥ 0.5× raw".into(),
            ratio_of(
                at(&figures.throughput, System::Plexus),
                at(&figures.throughput, System::Raw),
            ),
            0.5,
            true,
        ),
        (
            "p50 latency ≤ 1.1× raw".into(),
            ratio_of(at(&p50, System::Plexus), at(&p50, System::Raw)),
            1.1,
            false,
        ),
        (
            "p99 latency ≤ 1.3× raw".into(),
            ratio_of(at(&p99, System::Plexus), at(&p99, System::Raw)),
            1.3,
            false,
        ),
        (
            "streaming ≥ 0.8× raw".into(),
            ratio_of(
                at(&figures.stream, System::Plexus),
                at(&figures.stream, System::Raw),
            ),
            0.8,
            true,
        ),
        (
            "streaming ≥ 1.2× tonic".into(),
            ratio_of(
                at(&figures.stream, System::Plexus),
                at(&figures.stream, System::Tonic),
            ),
            1.2,
            true,
        ),
    ];
    let mut out = String::new();
    for (name, value, bound, at_least) in checks {
        let verdict = match value {
            Some(v) if (at_least && v >= bound) || (!at_least && v <= bound) => "met",
            Some(_) => "**missed**",
            None => "not measured",
        };
        let shown = value.map_or("—".into(), |v| format!("{v:.2}×"));
        let _ = writeln!(out, "- {name}: {shown} — {verdict}");
    }
    if let Some(idle) = &figures.idle {
        // Both ends are in the process: halve for one connection's share.
        let one_end = idle.heap_per_connection / 2.0;
        let verdict = if one_end <= 16.0 * 1024.0 {
            "met"
        } else {
            "**missed**"
        };
        let _ = writeln!(
            out,
            "- idle connection ≤ 16 KiB user-space memory: {:.1} KiB heap per end ({:.1} KiB for both ends) — {verdict}",
            one_end / 1024.0,
            idle.heap_per_connection / 1024.0
        );
    }
    out
}

/// The goals of issue 12 (the connection core), met or not.
fn goals(figures: &Figures) -> String {
    let index = |s: System| System::ALL.iter().position(|x| *x == s).unwrap_or(0);
    let (plexus, raw) = (index(System::Plexus), index(System::Raw));
    let p50 = micros(figures.p50);
    let idle_per_end = figures.idle.as_ref().map(|i| i.heap_per_connection / 2.0);
    let slowest_stream = figures.stream_all[plexus]
        .iter()
        .copied()
        .min_by(f64::total_cmp);
    let inproc_p50 = figures
        .local
        .iter()
        .find(|l| l.placement == Some(crate::transports::ONE_RUNTIME))
        .map(|l| l.plexus_p50.as_secs_f64() * 1e6);
    let checks: Vec<(&str, String, Option<bool>)> = vec![
        {
            let v = ratio_of(figures.throughput[plexus], figures.throughput[raw]);
            (
                "unary, 64 in flight, ≥ 0.8× raw",
                times(v),
                v.map(|v| v >= 0.8),
            )
        },
        {
            let v = ratio_of(p50[plexus], p50[raw]);
            (
                "p50, 1 in flight, ≤ 1.05× raw",
                times(v),
                v.map(|v| v <= 1.05),
            )
        },
        {
            let v = ratio_of(slowest_stream, figures.stream[raw]);
            (
                "server stream ≥ 0.9× raw in every run (slowest run / raw median)",
                times(v),
                v.map(|v| v >= 0.9),
            )
        },
        {
            let v = figures.allocations[plexus];
            (
                "≤ 4 heap allocations per unary call, both ends",
                v.map_or("—".into(), |v| format!("{v:.1}")),
                v.map(|v| v <= 4.0),
            )
        },
        (
            "idle connection ≤ 4 KiB heap per end",
            idle_per_end.map_or("—".into(), |v| format!("{:.1} KiB", v / 1024.0)),
            idle_per_end.map(|v| v <= 4.0 * 1024.0),
        ),
        (
            "inproc:// p50 ≤ 5 µs (both ends on one runtime)",
            inproc_p50.map_or("—".into(), |v| format!("{v:.1} µs")),
            inproc_p50.map(|v| v <= 5.0),
        ),
    ];
    let mut out = String::new();
    for (name, shown, met) in checks {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(out, "- {name}: {shown} — {verdict}");
    }
    out
}

fn times(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}×"))
}

/// `unix://` and `inproc://` beside their floors, as Markdown.
fn local_table(local: &[Local]) -> String {
    let mut out = String::new();
    out.push_str("| transport | ends | floor | plexus, 64 in flight | floor | plexus/floor | plexus p50, 1 in flight | floor | plexus/floor |\n");
    out.push_str("|---|---|---|--:|--:|--:|--:|--:|--:|\n");
    for l in local {
        let p50 = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6);
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.scheme,
            l.placement.unwrap_or(crate::transports::TWO_RUNTIMES),
            l.floor.unwrap_or("none in one process"),
            show(Unit::CallsPerSecond, Some(l.plexus_rate)),
            show(Unit::CallsPerSecond, l.floor_rate),
            ratio(Some(l.plexus_rate), l.floor_rate),
            show(Unit::Micros, p50(Some(l.plexus_p50))),
            show(Unit::Micros, p50(l.floor_p50)),
            ratio(p50(Some(l.plexus_p50)), p50(l.floor_p50)),
        );
    }
    out
}

fn ratio_of(plexus: Option<f64>, other: Option<f64>) -> Option<f64> {
    match (plexus, other) {
        (Some(p), Some(o)) if o > 0.0 => Some(p / o),
        _ => None,
    }
}

/// The machine this ran on: core count and CPU model.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores (nproc), CPU `{model}`, Linux {}",
        kernel.trim()
    )
}

/// The whole section for one mode: command, machine, pinning, table, targets
/// and the per-run details behind the medians.
pub fn section(settings: &Settings, command: &str, figures: &Figures) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {} run\n", settings.mode);
    let _ = writeln!(out, "Reproduce: `{command}`\n");
    let _ = writeln!(out, "- Machine: {}", machine());
    let _ = writeln!(out, "- Threads: {}", rig::PINNING);
    let _ = writeln!(
        out,
        "- Windows: unary throughput {:?} after {:?} warm-up and latency up to {} calls or {:?}, both cut into {} slices the systems take in turns; broadcast up to {} rounds or {:?} per peer count; stream {} runs",
        settings.throughput_window,
        settings.throughput_warmup,
        settings.latency_calls,
        settings.latency_time,
        settings.unary_rounds,
        settings.broadcast_rounds,
        settings.broadcast_time,
        settings.stream_runs,
    );
    if let Some(idle) = &figures.idle {
        let _ = writeln!(
            out,
            "- Idle connections: {} Plexus client connections to one server in this process ({} seen by the server), opened from one client `Endpoint`, then again each with `Connection::connect` (a new `Endpoint` per connection; heap only, as freed memory is reused and the resident figure would read low); every figure counts both ends (client and server side), none counts kernel socket buffers",
            idle.connections, idle.accepted
        );
    }
    let _ = writeln!(out);
    out.push_str(&table(figures));
    let _ = writeln!(out, "\nStream runs (MiB/s):");
    for (i, system) in System::ALL.iter().enumerate() {
        if !figures.stream_runs[i].is_empty() {
            let _ = writeln!(out, "- {system}: {}", figures.stream_runs[i].join(", "));
        }
    }
    if !figures.local.is_empty() {
        let _ = writeln!(out, "\nLocal transports (one connection each, 64 B):\n");
        out.push_str(&local_table(&figures.local));
    }
    let _ = writeln!(out, "\nGoals (issue 12, the connection core):\n");
    out.push_str(&goals(figures));
    let _ = writeln!(out, "\nEarlier targets (issue 6):\n");
    out.push_str(&targets(figures));
    out
}

fn markers(mode: &str) -> (String, String) {
    (
        format!("<!-- plexus-bench:{mode}:start -->"),
        format!("<!-- plexus-bench:{mode}:end -->"),
    )
}

/// Puts `section` between the markers of `mode` in the file at `path`,
/// leaving everything else as it is; appends it if the markers are missing.
pub fn write_section(path: &Path, mode: &str, section: &str) -> Result<(), BoxError> {
    let (start, end) = markers(mode);
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Benchmarks\n\nWritten by `plexus-bench` (`benches/`).\n".to_owned()
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display()).into()),
    };
    let block = format!("{start}\n{section}{end}");
    let updated = match (current.find(&start), current.find(&end)) {
        (Some(s), Some(e)) if s < e => {
            format!("{}{block}{}", &current[..s], &current[e + end.len()..])
        }
        _ => format!("{}\n{block}\n", current.trim_end()),
    };
    std::fs::write(path, updated).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
