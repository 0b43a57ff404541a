//! A service defined as a Rust trait with `#[plexus::service]`, served and
//! called over TCP in one process.
//!
//! ```text
//! cargo run -p plexus-examples --bin greeter            # listens on tcp://127.0.0.1:<any>
//! cargo run -p plexus-examples --bin greeter -- tcp://127.0.0.1:4000
//! cargo run -p plexus-examples --bin greeter -- serve tcp://127.0.0.1:4000   # until Ctrl-C
//! ```
//!
//! While it serves, the `plexus` command reaches it from another terminal:
//!
//! ```text
//! plexus describe tcp://127.0.0.1:4000
//! plexus call tcp://127.0.0.1:4000 greet.Greeter/hello '"ada"'
//! plexus call tcp://127.0.0.1:4000 greet.Greeter/countdown 3
//! plexus health tcp://127.0.0.1:4000 greet.Greeter
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::StreamExt;
use plexus::{BoxStream, CallError, Reject, Server};

/// Greets people. The contract: one trait, three call kinds.
#[plexus::service(package = "greet", version = 1)]
pub trait Greeter {
    /// Greets `name`; rejects an empty name with code 400.
    async fn hello(&self, name: String) -> Result<String, Reject>;
    /// Waves at the greeter; nothing comes back.
    #[oneway]
    async fn wave(&self, from: String);
    /// Counts down from `from` to 1, one number per message.
    async fn countdown(&self, from: u32) -> Result<BoxStream<u32>, Reject>;
    /// How many waves arrived so far.
    async fn waves(&self) -> Result<u32, Reject>;
}

/// The implementation: plain async methods on a plain struct.
#[derive(Default)]
struct Host {
    waves: AtomicU32,
}

impl Greeter for Host {
    async fn hello(&self, name: String) -> Result<String, Reject> {
        if name.is_empty() {
            return Err(Reject::new(400, "a greeting needs a name"));
        }
        Ok(format!("hello, {name}!"))
    }

    async fn wave(&self, _from: String) {
        self.waves.fetch_add(1, Ordering::Relaxed);
    }

    async fn countdown(&self, from: u32) -> Result<BoxStream<u32>, Reject> {
        Ok(futures_util::stream::iter((1..=from).rev()).boxed())
    }

    async fn waves(&self) -> Result<u32, Reject> {
        Ok(self.waves.load(Ordering::Relaxed))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [serve, url] = args.as_slice() {
        if serve == "serve" {
            let server = Server::bind(url.as_str())
                .serve(GreeterHandler::new(Host::default()))
                .start()
                .await?;
            println!(
                "serving {} at {} until Ctrl-C",
                GreeterClient::DESCRIPTOR.full_name,
                server.local_url()
            );
            tokio::signal::ctrl_c().await?;
            server.drain(std::time::Duration::from_millis(500)).await;
            return Ok(());
        }
    }
    let bind = args
        .first()
        .cloned()
        .unwrap_or_else(|| "tcp://127.0.0.1:0".to_owned());
    let server = Server::bind(bind)
        .serve(GreeterHandler::new(Host::default()))
        .start()
        .await?;
    println!(
        "serving {} at {}",
        GreeterClient::DESCRIPTOR.full_name,
        server.local_url()
    );

    let greeter = GreeterClient::connect(server.local_url()).await?;
    println!("{}", greeter.hello("ada".to_owned()).await?);

    match greeter.hello(String::new()).await {
        Err(CallError::Rejected(reject)) => {
            println!(
                "rejected as expected: {} ({})",
                reject.message(),
                reject.code()
            )
        }
        other => println!("unexpected: {other:?}"),
    }

    greeter.wave("ada".to_owned()).await?;
    let mut countdown = greeter.countdown(3).await?;
    while let Some(n) = countdown.next().await {
        println!("countdown: {}", n?);
    }
    // One-way calls are not acked: give the wave a moment to land.
    for _ in 0..100 {
        if greeter.waves().await? > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!("waves so far: {}", greeter.waves().await?);

    for method in GreeterClient::DESCRIPTOR.methods {
        println!("  {:<26} {}", method.op, method.kind);
    }
    server.shutdown().await;
    Ok(())
}
