//! The echo demo: a byte-level service over any transport.
//!
//! ```text
//! cargo run -p plexus-examples --bin echo                      # serve and call in one process
//! cargo run -p plexus-examples --bin echo -- serve tcp://127.0.0.1:4000
//! cargo run -p plexus-examples --bin echo -- call tcp://127.0.0.1:4000 hello
//! cargo run -p plexus-examples --bin echo -- serve ws://127.0.0.1:4001
//! cargo run -p plexus-examples --bin echo -- serve quic://127.0.0.1:4433 --tls-dir target/dev-tls
//! cargo run -p plexus-examples --bin echo -- call quic://127.0.0.1:4433 hi --tls-dir target/dev-tls
//! ```
//!
//! `tls://`, `wss://` and `quic://` need `--tls-dir DIR` on both sides: the
//! server makes a development CA and certificate there, the caller trusts it.
//! `--key HEX` on both sides gives them a session key (hex, at least 16
//! bytes) that every connection proves in its handshake; a caller without
//! it, or with another, is refused. `serve --quiet` does not log every call
//! (for load tests).
//!
//! Its operations have no contract (raw bytes), so the `plexus` command sends
//! its argument as plain text and prints the reply as text:
//!
//! ```text
//! plexus call tcp://127.0.0.1:4000 demo.Echo/shout hello     # "HELLO"
//! ```

use std::path::Path;
use std::time::Duration;

use plexus::wire::key::SessionKey;
use plexus::{Bytes, CallError, CallOptions, Endpoint, Reject, Router, Server};

const USAGE: &str = "\
usage: echo [serve <url> [--quiet] | call <url> <text>] [--tls-dir DIR] [--key HEX]

  (no command)      serve on tcp://127.0.0.1:<any> and call it in one process
  serve <url>       serve demo.Echo until Ctrl-C (--quiet: no line per call)
  call <url> <text> call echo and shout with <text>
  --tls-dir DIR     tls://, wss://, quic://: the server makes a development CA
                    and certificate in DIR, the caller trusts DIR/ca.pem
  --key HEX         a session key in hex (at least 16 bytes, e.g. 64 digits
                    from `openssl rand -hex 32`): every connection proves it;
                    give the same key to the server and its callers";

const ECHO: &str = "demo.Echo/echo";
const SHOUT: &str = "demo.Echo/shout";

fn echo_service(quiet: bool) -> Router {
    Router::new()
        .unary(ECHO, move |ctx, body: Bytes| async move {
            if !quiet {
                println!(
                    "[server] {} from {}: {:?}",
                    ctx.op(),
                    ctx.peer().remote(),
                    String::from_utf8_lossy(&body)
                );
            }
            Ok::<_, Reject>(body)
        })
        .unary(SHOUT, |_ctx, body: Bytes| async move {
            if body.is_empty() {
                return Err(Reject::new(400, "nothing to shout"));
            }
            Ok(Bytes::from(String::from_utf8_lossy(&body).to_uppercase()))
        })
}

async fn serve(
    url: &str,
    tls_dir: Option<&Path>,
    key: Option<&SessionKey>,
    quiet: bool,
) -> Result<Server, Box<dyn std::error::Error>> {
    let mut server = Server::bind(url).serve(echo_service(quiet));
    if let Some(dir) = tls_dir {
        server = server.tls(plexus_examples::server_tls(dir)?);
    }
    if let Some(key) = key {
        server = server.session_key(key.clone());
    }
    let server = server.start().await?;
    println!("[server] listening on {}", server.local_url());
    Ok(server)
}

async fn call(
    url: &str,
    text: &str,
    tls_dir: Option<&Path>,
    key: Option<&SessionKey>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = Endpoint::builder();
    if let Some(dir) = tls_dir {
        client = client.tls(plexus_examples::client_tls(dir)?);
    }
    if let Some(key) = key {
        client = client.session_key(key.clone());
    }
    let conn = client.build().connect(url).await?;
    let opts = CallOptions::new().timeout(Duration::from_secs(5));
    let reply = conn
        .call(ECHO, Bytes::from(text.to_owned()), opts.clone())
        .await?;
    println!("[client] echo   -> {}", String::from_utf8_lossy(&reply));
    let reply = conn
        .call(SHOUT, Bytes::from(text.to_owned()), opts.clone())
        .await?;
    println!("[client] shout  -> {}", String::from_utf8_lossy(&reply));
    match conn.call(SHOUT, Bytes::new(), opts.clone()).await {
        Err(CallError::Rejected(r)) => println!(
            "[client] shout(\"\") rejected: code {} ({})",
            r.code(),
            r.message()
        ),
        other => println!("[client] shout(\"\") unexpectedly gave {other:?}"),
    }
    match conn.call("demo.Echo/missing", Bytes::new(), opts).await {
        Err(e @ CallError::NoSuchOperation { .. }) => println!("[client] missing  -> {e}"),
        other => println!("[client] missing unexpectedly gave {other:?}"),
    }
    conn.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let tls_dir = plexus_examples::take_tls_dir(&mut args)?;
    let tls_dir = tls_dir.as_deref();
    let key = plexus_examples::take_session_key(&mut args)?;
    let key = key.as_ref();
    let quiet = plexus_examples::take_flag(&mut args, "--quiet");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            let server = serve("tcp://127.0.0.1:0", None, key, quiet).await?;
            call(&server.local_url().to_string(), "hello, plexus", None, key).await?;
            server.shutdown().await;
        }
        ["serve", url] => {
            let _server = serve(url, tls_dir, key, quiet).await?;
            tokio::signal::ctrl_c().await?;
        }
        ["call", url, text @ ..] => call(url, &text.join(" "), tls_dir, key).await?,
        ["--help" | "-h"] => println!("{USAGE}"),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
    Ok(())
}
