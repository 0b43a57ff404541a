//! The echo demo: a byte-level service over any transport.
//!
//! ```text
//! cargo run -p plexus-examples --bin echo                      # serve and call in one process
//! cargo run -p plexus-examples --bin echo -- serve tcp://127.0.0.1:4000
//! cargo run -p plexus-examples --bin echo -- call tcp://127.0.0.1:4000 hello
//! ```
//!
//! Its operations have no contract (raw bytes), so the `plexus` command sends
//! its argument as plain text and prints the reply as text:
//!
//! ```text
//! plexus call tcp://127.0.0.1:4000 demo.Echo/shout hello     # "HELLO"
//! ```

use std::time::Duration;

use plexus::{Bytes, CallError, CallOptions, Connection, Reject, Router, Server};

const ECHO: &str = "demo.Echo/echo";
const SHOUT: &str = "demo.Echo/shout";

fn echo_service() -> Router {
    Router::new()
        .unary(ECHO, |ctx, body: Bytes| async move {
            println!(
                "[server] {} from {}: {:?}",
                ctx.op(),
                ctx.peer().remote(),
                String::from_utf8_lossy(&body)
            );
            Ok::<_, Reject>(body)
        })
        .unary(SHOUT, |_ctx, body: Bytes| async move {
            if body.is_empty() {
                return Err(Reject::new(400, "nothing to shout"));
            }
            Ok(Bytes::from(String::from_utf8_lossy(&body).to_uppercase()))
        })
}

async fn serve(url: &str) -> Result<Server, Box<dyn std::error::Error>> {
    let server = Server::bind(url).serve(echo_service()).start().await?;
    println!("[server] listening on {}", server.local_url());
    Ok(server)
}

async fn call(url: &str, text: &str) -> Result<(), Box<dyn std::error::Error>> {
    let conn = Connection::connect(url).await?;
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            let server = serve("tcp://127.0.0.1:0").await?;
            call(&server.local_url().to_string(), "hello, plexus").await?;
            server.shutdown().await;
        }
        ["serve", url] => {
            let _server = serve(url).await?;
            tokio::signal::ctrl_c().await?;
        }
        ["call", url, text @ ..] => call(url, &text.join(" ")).await?,
        _ => {
            eprintln!("usage: echo [serve <url> | call <url> <text>]");
            std::process::exit(2);
        }
    }
    Ok(())
}
