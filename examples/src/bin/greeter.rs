//! A service defined as a Rust trait with `#[plexus::service]`, served and
//! called over TCP in one process, or across processes over any transport.
//!
//! ```text
//! cargo run -p plexus-examples --bin greeter            # listens on tcp://127.0.0.1:<any>
//! cargo run -p plexus-examples --bin greeter -- tcp://127.0.0.1:4000
//! cargo run -p plexus-examples --bin greeter -- serve tcp://127.0.0.1:4000   # until Ctrl-C
//! cargo run -p plexus-examples --bin greeter -- serve ws://127.0.0.1:4000
//! cargo run -p plexus-examples --bin greeter -- call ws://127.0.0.1:4000
//! cargo run -p plexus-examples --bin greeter -- serve wss://127.0.0.1:4443 --tls-dir target/dev-tls
//! cargo run -p plexus-examples --bin greeter -- call wss://127.0.0.1:4443 --tls-dir target/dev-tls
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
//!
//! `tls://`, `wss://` and `quic://` need `--tls-dir DIR` on both sides: the
//! server makes a development CA and certificate there, the caller trusts it.
//! `--key HEX` on both sides gives them a session key (hex, at least 16
//! bytes) that every connection proves in its handshake; a caller without
//! it, or with another, is refused.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::StreamExt;
use plexus::wire::key::SessionKey;
use plexus::{BoxStream, CallError, Endpoint, Reject, Server};

const USAGE: &str = "\
usage: greeter [<url> | serve <url> | call <url>] [--tls-dir DIR] [--key HEX]

  (no command), <url>  serve greet.Greeter (on tcp://127.0.0.1:<any> by default)
                       and call every method in one process
  serve <url>          serve greet.Greeter until Ctrl-C
  call <url>           call every method of a greeter serving at <url>
  --tls-dir DIR        tls://, wss://, quic://: the server makes a development
                       CA and certificate in DIR, the caller trusts DIR/ca.pem
  --key HEX            a session key in hex (at least 16 bytes, e.g. 64 digits
                       from `openssl rand -hex 32`): every connection proves
                       it; give the same key to the server and its callers";

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

async fn serve(
    url: &str,
    tls_dir: Option<&Path>,
    key: Option<&SessionKey>,
) -> Result<Server, Box<dyn std::error::Error>> {
    let mut server = Server::bind(url).serve(GreeterHandler::new(Host::default()));
    if let Some(dir) = tls_dir {
        server = server.tls(plexus_examples::server_tls(dir)?);
    }
    if let Some(key) = key {
        server = server.session_key(key.clone());
    }
    let server = server.start().await?;
    println!(
        "serving {} at {}",
        GreeterClient::DESCRIPTOR.full_name,
        server.local_url()
    );
    Ok(server)
}

/// Every call kind of the contract, with a rejection on the way.
async fn call(greeter: &GreeterClient) -> Result<(), Box<dyn std::error::Error>> {
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

    let before = greeter.waves().await?;
    greeter.wave("ada".to_owned()).await?;
    let mut countdown = greeter.countdown(3).await?;
    while let Some(n) = countdown.next().await {
        println!("countdown: {}", n?);
    }
    // One-way calls are not acked: give the wave a moment to land.
    for _ in 0..100 {
        if greeter.waves().await? > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!("waves so far: {}", greeter.waves().await?);
    Ok(())
}

/// A dialing endpoint with the TLS trust and key asked for.
fn client(
    tls_dir: Option<&Path>,
    key: Option<&SessionKey>,
) -> Result<Endpoint, Box<dyn std::error::Error>> {
    let mut client = Endpoint::builder();
    if let Some(dir) = tls_dir {
        client = client.tls(plexus_examples::client_tls(dir)?);
    }
    if let Some(key) = key {
        client = client.session_key(key.clone());
    }
    Ok(client.build())
}

/// Serves and calls in one process.
async fn demo(
    bind: &str,
    tls_dir: Option<&Path>,
    key: Option<&SessionKey>,
) -> Result<(), Box<dyn std::error::Error>> {
    let server = serve(bind, tls_dir, key).await?;
    let conn = client(tls_dir, key)?.connect(server.local_url()).await?;
    call(&GreeterClient::new(conn)).await?;
    for method in GreeterClient::DESCRIPTOR.methods {
        println!("  {:<26} {}", method.op, method.kind);
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let tls_dir = plexus_examples::take_tls_dir(&mut args)?;
    let tls_dir = tls_dir.as_deref();
    let key = plexus_examples::take_session_key(&mut args)?;
    let key = key.as_ref();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", url] => {
            let server = serve(url, tls_dir, key).await?;
            tokio::signal::ctrl_c().await?;
            // Health says NOT_SERVING at once; calls in flight finish.
            server.drain(std::time::Duration::from_millis(500)).await;
        }
        ["call", url] => {
            let conn = client(tls_dir, key)?.connect(*url).await?;
            call(&GreeterClient::new(conn.clone())).await?;
            conn.close().await;
        }
        [] => demo("tcp://127.0.0.1:0", tls_dir, key).await?,
        ["--help" | "-h"] => println!("{USAGE}"),
        [url] if !["serve", "call"].contains(url) => demo(url, tls_dir, key).await?,
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
    Ok(())
}
