//! `--observe`: what per-call observability costs, and that it costs
//! nothing measurable when nothing listens.
//!
//! Spans and metrics go to a process-wide `tracing` subscriber and `metrics`
//! recorder, which can be installed once and never removed, so every
//! variant runs in a process of its own: this binary again, with
//! `--only unary --system plexus` (the main table's unary figures for
//! Plexus: 64 B echo, throughput with 64 in flight on one connection, p50
//! one at a time, on the two pinned runtimes) and `PLEXUS_BENCH_OBSERVE`
//! naming what to install first. The variants take turns, one process
//! each per round, each round starting one variant later, so a drift of
//! the machine's speed hits them alike.
//!
//! "Without the instrumentation" is a build of the bench from before it
//! (`--baseline PATH`; `benches/observe-baseline.sh` builds one from a
//! commit): the same measurement, the same output line, no observe code.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{report, BoxError};

/// The environment variable that tells a child what to install.
const VARIANT_ENV: &str = "PLEXUS_BENCH_OBSERVE";

/// Options of `--observe`.
pub struct Options {
    /// Shorter windows and fewer rounds.
    pub quick: bool,
    /// Where to write the section (`None`: print only).
    pub out: Option<PathBuf>,
    /// A `plexus-bench` built without the instrumentation.
    pub baseline: Option<PathBuf>,
}

/// What a child process installs before it measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The bench built without the instrumentation (`--baseline`).
    Uninstrumented,
    /// Nothing: no subscriber, no recorder.
    Nothing,
    /// A subscriber whose filter leaves `plexus::call` out.
    FilteredOut,
    /// Spans recorded by `tracing-subscriber` (registry + fmt layer to a sink).
    Spans,
    /// Metrics recorded by `metrics-exporter-prometheus`.
    Metrics,
    /// Both.
    Both,
}

impl Variant {
    const MEASURED: [Variant; 5] = [
        Variant::Nothing,
        Variant::FilteredOut,
        Variant::Spans,
        Variant::Metrics,
        Variant::Both,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Uninstrumented => "uninstrumented",
            Variant::Nothing => "nothing",
            Variant::FilteredOut => "filtered-out",
            Variant::Spans => "spans",
            Variant::Metrics => "metrics",
            Variant::Both => "both",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::Uninstrumented => "without the instrumentation (baseline build)",
            Variant::Nothing => "instrumented, no subscriber, no recorder",
            Variant::FilteredOut => "a subscriber that filters `plexus::call` out",
            Variant::Spans => "spans: tracing-subscriber registry + fmt layer (to a sink)",
            Variant::Metrics => "metrics: metrics-exporter-prometheus recorder",
            Variant::Both => "spans and metrics",
        }
    }
}

/// Installs what `PLEXUS_BENCH_OBSERVE` names, if anything; called first
/// thing in `main`, before any runtime or call exists.
pub fn install_from_env() -> Result<(), BoxError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    let Ok(name) = std::env::var(VARIANT_ENV) else {
        return Ok(());
    };
    let variant = Variant::MEASURED
        .into_iter()
        .find(|v| v.name() == name)
        .ok_or_else(|| format!("{VARIANT_ENV}={name}: not a variant"))?;
    let spans = matches!(variant, Variant::Spans | Variant::Both);
    let metrics = matches!(variant, Variant::Metrics | Variant::Both);
    if variant == Variant::FilteredOut || spans {
        let level = if spans {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        };
        // Everything else at WARN, as a service typically runs.
        let filter = tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::WARN)
            .with_target(plexus::observe::CALL_TARGET, level);
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::sink);
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(fmt.with_filter(filter)),
        )?;
    }
    if metrics {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        // Drain histogram samples as a scraped exporter would.
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            handle.run_upkeep();
        });
    }
    Ok(())
}

/// One child's figures.
struct Figures {
    calls_per_s: f64,
    p50_us: f64,
}

/// Runs `binary --only unary --system plexus` with `variant` installed and
/// reads its unary line.
fn child(binary: &PathBuf, variant: Variant, quick: bool) -> Result<Figures, BoxError> {
    let mut command = Command::new(binary);
    command.args(["--only", "unary", "--system", "plexus"]);
    if quick {
        command.arg("--quick");
    }
    if variant != Variant::Uninstrumented {
        command.env(VARIANT_ENV, variant.name());
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{} ({}) failed: {}{}",
            binary.display(),
            variant.name(),
            text,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    parse_unary_line(&text).ok_or_else(|| {
        format!(
            "no unary line in the output of {} ({}): {text}",
            binary.display(),
            variant.name()
        )
        .into()
    })
}

/// `  plexus: unary 64 in flight: 123456 calls/s; 1 in flight: p50 18.2µs, p99 …`
fn parse_unary_line(text: &str) -> Option<Figures> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("plexus: unary"))?;
    let (_, rest) = line.split_once("in flight: ")?;
    let (rate, rest) = rest.split_once(" calls/s")?;
    let (_, rest) = rest.split_once("p50 ")?;
    let (p50, _) = rest.split_once(',')?;
    Some(Figures {
        calls_per_s: rate.trim().parse().ok()?,
        p50_us: duration_us(p50.trim())?,
    })
}

/// A `Duration`'s `Debug` text (`18.2µs`, `1.05ms`, `950ns`) in µs.
fn duration_us(text: &str) -> Option<f64> {
    for (unit, scale) in [("ms", 1e3), ("µs", 1.0), ("ns", 1e-3), ("s", 1e6)] {
        if let Some(number) = text.strip_suffix(unit) {
            return number.parse::<f64>().ok().map(|n| n * scale);
        }
    }
    None
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `--observe` and writes its section.
pub fn run(options: Options) -> Result<(), BoxError> {
    let me = std::env::current_exe()?;
    let rounds = if options.quick { 3 } else { 7 };
    let mut variants = Vec::new();
    if options.baseline.is_some() {
        variants.push(Variant::Uninstrumented);
    }
    variants.extend(Variant::MEASURED);
    println!(
        "plexus-bench observe ({} run): {} rounds of {} processes each",
        if options.quick { "quick" } else { "full" },
        rounds,
        variants.len()
    );
    let mut slices: Vec<Vec<Figures>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        // Each round starts one variant later, so none always runs first
        // (or always right after the heaviest).
        let order = (0..variants.len()).map(|k| (k + round) % variants.len());
        for i in order {
            let variant = variants[i];
            let binary = match variant {
                Variant::Uninstrumented => options.baseline.as_ref().unwrap_or(&me),
                _ => &me,
            };
            let figures = child(binary, variant, options.quick)?;
            println!(
                "  round {}: {:<14} {:>8.0} calls/s, p50 {:.1} µs",
                round + 1,
                variant.name(),
                figures.calls_per_s,
                figures.p50_us
            );
            slices[i].push(figures);
        }
    }
    let command = match (options.quick, options.baseline.is_some()) {
        (true, true) => "cargo run --release -p plexus-bench -- --observe --quick --baseline target/observe-baseline/plexus-bench",
        (false, true) => "cargo run --release -p plexus-bench -- --observe --baseline target/observe-baseline/plexus-bench",
        (true, false) => "cargo run --release -p plexus-bench -- --observe --quick",
        (false, false) => "cargo run --release -p plexus-bench -- --observe",
    };
    let section = section(command, options.quick, rounds, &variants, &slices);
    println!("\n{section}");
    if let Some(path) = options.out {
        let mode = if options.quick {
            "observe-quick"
        } else {
            "observe"
        };
        report::write_section(&path, mode, &section)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

fn section(
    command: &str,
    quick: bool,
    rounds: usize,
    variants: &[Variant],
    slices: &[Vec<Figures>],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### observe run{}\n",
        if quick { " (quick)" } else { "" }
    );
    let _ = writeln!(out, "Reproduce: `{command}`\n");
    let _ = writeln!(out, "- Machine: {}", report::machine());
    let _ = writeln!(out, "- Threads: {}", crate::rig::PINNING);
    let _ = writeln!(
        out,
        "- Each figure: the median of {rounds} processes, one per round, the variants in turns (each round starting one later); each process runs `--only unary --system plexus{}` (64 B echo; throughput with 64 in flight on one connection, p50 one at a time)\n",
        if quick { " --quick" } else { "" }
    );
    let reference = variants.first().map_or("", |v| v.label());
    let _ = writeln!(
        out,
        "| variant | calls/s | × {reference} | p50 | × {reference} |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let rate = |i: usize| median(&slices[i].iter().map(|f| f.calls_per_s).collect::<Vec<_>>());
    let p50 = |i: usize| median(&slices[i].iter().map(|f| f.p50_us).collect::<Vec<_>>());
    let (t0, p0) = (rate(0), p50(0));
    for (i, v) in variants.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3}× | {:.1} µs | {:.3}× |",
            v.label(),
            rate(i),
            rate(i) / t0,
            p50(i),
            p50(i) / p0
        );
    }
    let _ = writeln!(out);
    for (i, v) in variants.iter().enumerate() {
        let rates: Vec<String> = slices[i]
            .iter()
            .map(|f| format!("{:.0}", f.calls_per_s))
            .collect();
        let p50s: Vec<String> = slices[i]
            .iter()
            .map(|f| format!("{:.1} µs", f.p50_us))
            .collect();
        let _ = writeln!(
            out,
            "- {}: calls/s {}; p50 {}",
            v.name(),
            rates.join(", "),
            p50s.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_unary_line() {
        let text = "plexus-bench (quick run): …\n  plexus: unary 64 in flight: 181234 calls/s; 1 in flight: p50 18.432µs, p99 40.1µs over 10000 calls\n";
        let f = parse_unary_line(text).expect("parsed");
        assert_eq!(f.calls_per_s, 181234.0);
        assert!((f.p50_us - 18.432).abs() < 1e-9);
        assert_eq!(duration_us("1.5ms"), Some(1500.0));
        assert!(duration_us("950ns").is_some_and(|us| (us - 0.95).abs() < 1e-9));
    }
}
