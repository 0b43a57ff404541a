//! `plexus bench`: load one operation with concurrent calls and report
//! calls per second and latency percentiles.
//!
//! The request is encoded once; `-c` tasks share the connections
//! (`--connections`, default one), each calling in a loop until `-n` calls
//! have been made (or `--duration` has passed). Every call's latency is kept,
//! so the percentiles are exact. The runtime has `--threads` worker threads
//! (default 1, like the client side of `plexus-bench`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use plexus::{CallOptions, Connection};
use serde::Serialize;

use crate::call::{call_options, plan};
use crate::error::CliError;
use crate::{print_line, target, Global};

/// `plexus bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A URL (`tcp://127.0.0.1:4000`) or a node name.
    pub target: String,
    /// A unary or one-way operation, `package.Service/method`.
    pub op: String,
    /// The request as JSON, sent with every call.
    #[arg(value_name = "JSON")]
    pub request: Option<String>,
    /// Calls in flight at once.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub concurrency: usize,
    /// Calls to make in all (after the warm-up).
    #[arg(short = 'n', long, default_value_t = 100_000)]
    pub calls: u64,
    /// Stop after this long even if fewer calls were made.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Untimed calls before measuring.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: u64,
    /// Connections the calls are spread over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Worker threads of this process.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Metadata sent with every call, `key:value`.
    #[arg(short = 'H', long = "header", value_name = "KEY:VALUE")]
    pub headers: Vec<String>,
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct Report {
    op: String,
    concurrency: usize,
    connections: usize,
    threads: usize,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
    calls_per_second: f64,
    latency_us: Latency,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    fn of(mut nanos: Vec<u64>) -> Latency {
        if nanos.is_empty() {
            return Latency::default();
        }
        nanos.sort_unstable();
        let at = |q: f64| {
            let rank = ((nanos.len() as f64) * q).ceil() as usize;
            nanos[rank.clamp(1, nanos.len()) - 1] as f64 / 1_000.0
        };
        let sum: u128 = nanos.iter().map(|&n| u128::from(n)).sum();
        Latency {
            mean: sum as f64 / nanos.len() as f64 / 1_000.0,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: nanos[nanos.len() - 1] as f64 / 1_000.0,
        }
    }
}

/// Shared by the calling tasks.
struct Load {
    tickets: AtomicU64,
    limit: u64,
    until: Option<Instant>,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Load {
    fn next(&self) -> bool {
        self.until.is_none_or(|t| Instant::now() < t)
            && self.tickets.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

/// `plexus bench`.
pub async fn run(global: &Global, args: BenchArgs) -> Result<(), CliError> {
    if args.concurrency == 0 || args.connections == 0 {
        return Err(CliError::usage("-c and --connections must be at least 1"));
    }
    let first = target::connect(global, &args.target).await?;
    let mut conns = vec![first.conn.clone()];
    let endpoint = target::endpoint(&global.tls)?;
    let url = first.conn.peer().label().to_string();
    let dial_url = if args.target.contains("://") {
        args.target.clone()
    } else {
        url
    };
    for _ in 1..args.connections {
        conns.push(target::dial(&endpoint, &dial_url, global.connect_timeout).await?);
    }
    let plan = plan(global, &first.conn, &args.op, None, "unary").await?;
    let oneway = match plan.kind.as_str() {
        "unary" => false,
        "oneway" => true,
        other => {
            return Err(CliError::usage(format!(
                "{} is a {other} operation; plexus bench measures unary and one-way calls",
                plan.op
            )))
        }
    };
    let body = plan.encode(args.request.as_deref().unwrap_or(""))?;
    let opts = call_options(global, &args.headers)?;
    // One checked call first: a bad argument fails here, with its message,
    // not as a hundred thousand errors.
    if !oneway {
        let reply = first
            .conn
            .call(&plan.op, body.clone(), opts.clone())
            .await
            .map_err(|e| CliError::call(&plan.op, e, Some(&plan.shape)))?;
        plan.decode(&reply)?;
    }
    let warm = Arc::new(Load {
        tickets: AtomicU64::new(0),
        limit: args.warmup,
        until: None,
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    drive(
        &conns,
        &plan.op,
        &body,
        &opts,
        oneway,
        args.concurrency,
        &warm,
        false,
    )
    .await;
    let load = Arc::new(Load {
        tickets: AtomicU64::new(0),
        limit: args.calls,
        until: args.duration.map(|d| Instant::now() + d),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let started = Instant::now();
    let latencies = drive(
        &conns,
        &plan.op,
        &body,
        &opts,
        oneway,
        args.concurrency,
        &load,
        true,
    )
    .await;
    let elapsed = started.elapsed();
    for conn in &conns {
        conn.close().await;
    }
    let errors = load.errors.load(Ordering::Relaxed);
    let calls = latencies.len() as u64 + errors;
    let report = Report {
        op: plan.op.clone(),
        concurrency: args.concurrency,
        connections: args.connections,
        threads: args.threads,
        calls,
        errors,
        first_error: load
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        seconds: elapsed.as_secs_f64(),
        calls_per_second: calls as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_us: if oneway {
            Latency::default()
        } else {
            Latency::of(latencies)
        },
    };
    if global.json {
        print_line(&serde_json::to_string(&report).unwrap_or_default());
    } else {
        print_report(&report, oneway);
    }
    match &report.first_error {
        Some(e) => Err(CliError::Call(format!(
            "{errors} of {calls} calls failed; the first: {e}"
        ))),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    conns: &[Connection],
    op: &str,
    body: &bytes::Bytes,
    opts: &CallOptions,
    oneway: bool,
    concurrency: usize,
    load: &Arc<Load>,
    timed: bool,
) -> Vec<u64> {
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let conn = conns[i % conns.len()].clone();
            let op = op.to_owned();
            let body = body.clone();
            let opts = opts.clone();
            let load = load.clone();
            tokio::spawn(async move {
                let mut nanos = Vec::new();
                while load.next() {
                    let started = Instant::now();
                    let outcome = if oneway {
                        conn.oneway(&op, body.clone(), opts.clone()).await
                    } else {
                        conn.call(&op, body.clone(), opts.clone()).await.map(|_| ())
                    };
                    match outcome {
                        Ok(()) if timed => nanos.push(started.elapsed().as_nanos() as u64),
                        Ok(()) => {}
                        Err(e) => {
                            load.errors.fetch_add(1, Ordering::Relaxed);
                            let mut first =
                                load.first_error.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                nanos
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        if let Ok(nanos) = task.await {
            all.extend(nanos);
        }
    }
    all
}

fn print_report(r: &Report, oneway: bool) {
    print_line(&format!(
        "{}: {} calls in {:.2} s, {} in flight over {} connection(s), {} thread(s)",
        r.op, r.calls, r.seconds, r.concurrency, r.connections, r.threads
    ));
    print_line(&format!("  throughput  {:.0} calls/s", r.calls_per_second));
    if r.errors > 0 {
        print_line(&format!("  errors      {}", r.errors));
    }
    if oneway {
        print_line("  latency     not measured for one-way calls (nothing comes back)");
        return;
    }
    let l = &r.latency_us;
    print_line(&format!(
        "  latency µs  mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        l.mean, l.p50, l.p90, l.p99, l.p999, l.max
    ));
}

#[cfg(test)]
mod tests {
    use super::Latency;

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::of((1..=1000).map(|n| n * 1_000).collect());
        assert_eq!(l.p50, 500.0);
        assert_eq!(l.p99, 990.0);
        assert_eq!(l.p999, 999.0);
        assert_eq!(l.max, 1000.0);
        assert_eq!(l.mean, 500.5);
        assert_eq!(Latency::of(vec![7_000]).p50, 7.0);
    }
}
