//! Plexus's metrics in Prometheus's text format, on an HTTP port on loopback.
//!
//! ```text
//! cargo run -p plexus-examples --bin metrics                  # http://127.0.0.1:9464/metrics
//! cargo run -p plexus-examples --bin metrics -- --listen 127.0.0.1:0 --calls 40
//! ```
//!
//! The runtime records through the `metrics` facade (docs/OBSERVABILITY.md
//! lists every name); this program installs `metrics-exporter-prometheus`
//! as the recorder and serves its rendering on `GET /metrics` with axum.
//! A greeter serves on `tcp://127.0.0.1`, and a client calls it — greetings,
//! some rejected (an empty name), countdown streams — so the counters,
//! duration and size histograms and connection gauge have something to
//! show: every 100 ms, or `--calls N` times and then it stays up to be
//! read. Point Prometheus at it, or `curl` it. It serves until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use plexus::{BoxStream, Connection, Reject, Server};

/// A greeter with one stream.
#[plexus::service(package = "greet")]
pub trait Greeter {
    /// Greets `name`; rejects an empty one with 400.
    async fn hello(&self, name: String) -> Result<String, Reject>;
    /// Counts down from `from`.
    async fn countdown(&self, from: u32) -> Result<BoxStream<u32>, Reject>;
}

struct Host;

impl Greeter for Host {
    async fn hello(&self, name: String) -> Result<String, Reject> {
        if name.is_empty() {
            return Err(Reject::new(400, "a greeting needs a name"));
        }
        Ok(format!("hello, {name}!"))
    }

    async fn countdown(&self, from: u32) -> Result<BoxStream<u32>, Reject> {
        Ok(futures_util::stream::iter((1..=from).rev()).boxed())
    }
}

struct Args {
    listen: SocketAddr,
    calls: Option<u32>,
}

fn args() -> Result<Args, String> {
    let usage = "usage: metrics [--listen 127.0.0.1:PORT] [--calls N]";
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        calls: None,
    };
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .ok_or(format!("{arg} needs a value ({usage})"))?;
        match arg.as_str() {
            "--listen" => {
                parsed.listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value:?}: {e}"))?;
            }
            "--calls" => {
                parsed.calls = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--calls {value:?}: {e}"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?} ({usage})")),
        }
    }
    if !parsed.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {}: this example serves on loopback only (127.0.0.1 or [::1])",
            parsed.listen
        ));
    }
    Ok(parsed)
}

/// One round of calls: a greeting, a rejected one, a stream of three.
async fn round(greeter: &GreeterClient, i: u32) {
    let _ = greeter.hello(format!("caller-{i}")).await;
    let _ = greeter.hello(String::new()).await;
    if let Ok(mut numbers) = greeter.countdown(3).await {
        while numbers.next().await.is_some() {}
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    // Durations in seconds and sizes in bytes as Prometheus histograms
    // (the exporter's default for a histogram is a summary).
    let seconds = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let bytes = [
        16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
    ];
    let counts = [1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0];
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration".into()), &seconds)?
        .set_buckets_for_metric(Matcher::Suffix("size".into()), &bytes)?
        .set_buckets_for_metric(Matcher::Suffix("per_rpc".into()), &counts)?
        .install_recorder()?;

    // Histogram samples wait in the recorder until drained: drain them
    // every few seconds even if nobody scrapes.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let url = format!("http://{}/metrics", listener.local_addr()?);
    let render = prometheus.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = render.render();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(GreeterHandler::new(Host))
        .start()
        .await?;
    let greeter = GreeterClient::new(Connection::connect(&server.local_url().to_string()).await?);
    println!("greeter on {}", server.local_url());
    println!("metrics: {url}");

    match args.calls {
        Some(n) => {
            for i in 0..n {
                round(&greeter, i).await;
            }
            println!("made {n} rounds of calls; serving the metrics until Ctrl-C");
            tokio::signal::ctrl_c().await?;
        }
        None => {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            let mut i = 0;
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        round(&greeter, i).await;
                        i += 1;
                    }
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
    }
    server.shutdown().await;
    Ok(())
}
