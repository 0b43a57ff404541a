//! Sessions, server push and streamed transfers, typed end to end.
//!
//! A depot server accepts sessions opened with a team token and rejects the
//! rest; inside a session a client uploads a file as a stream of chunks and
//! downloads it back; the server pushes notices to the client over the same
//! connection, through a typed client for the caller.
//!
//! ```text
//! cargo run -p plexus-examples --bin sessions
//! cargo run -p plexus-examples --bin sessions -- serve tcp://127.0.0.1:4002 [--tls-dir DIR]
//! ```
//!
//! `serve` runs only the depot, for clients in other processes and
//! languages: sessions need the token `token:<name>`, and after an upload the
//! depot pushes a `depot.Notices/notice` to the caller.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use plexus::{BoxStream, Bytes, CallContext, CallError, Endpoint, Reject, Streaming};

/// What the depot answers for an upload.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// The file's name.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// How many chunks it came in.
    pub chunks: u32,
}

/// A file depot.
#[plexus::service(package = "depot")]
pub trait Depot {
    /// Stores a file sent as a stream of chunks; the first chunk is its name.
    async fn upload(&self, ctx: CallContext, chunks: Streaming<Vec<u8>>)
        -> Result<Receipt, Reject>;
    /// Sends a stored file back in chunks of at most `chunk` bytes.
    async fn download(&self, name: String, chunk: u32) -> Result<BoxStream<Vec<u8>>, Reject>;
}

/// What a depot client listens to: notices pushed by the server.
#[plexus::service(package = "depot")]
pub trait Notices {
    /// A notice for humans.
    #[oneway]
    async fn notice(&self, text: String);
}

#[derive(Default)]
struct Store {
    files: Mutex<HashMap<String, Vec<u8>>>,
}

impl Depot for Arc<Store> {
    async fn upload(
        &self,
        ctx: CallContext,
        mut chunks: Streaming<Vec<u8>>,
    ) -> Result<Receipt, Reject> {
        let bad = |e: CallError| Reject::new(400, e.to_string());
        let name = match chunks.recv().await {
            Some(first) => String::from_utf8(first.map_err(bad)?)
                .map_err(|_| Reject::new(400, "name is not UTF-8"))?,
            None => return Err(Reject::new(400, "an upload starts with the file's name")),
        };
        let (mut data, mut count) = (Vec::new(), 0u32);
        while let Some(chunk) = chunks.recv().await {
            data.extend_from_slice(&chunk.map_err(bad)?);
            count += 1;
        }
        let receipt = Receipt {
            name: name.clone(),
            bytes: data.len() as u64,
            chunks: count,
        };
        self.files
            .lock()
            .map_err(|_| Reject::new(500, "store poisoned"))?
            .insert(name.clone(), data);
        // Push a notice back to the caller, on the connection the call came in on.
        let caller = NoticesClient::new(ctx.connection().clone());
        let session = ctx
            .session()
            .map(|s| s.name().to_owned())
            .unwrap_or_default();
        let _ = caller
            .notice(format!("stored {name} for session {session}"))
            .await;
        Ok(receipt)
    }

    async fn download(&self, name: String, chunk: u32) -> Result<BoxStream<Vec<u8>>, Reject> {
        let data = self
            .files
            .lock()
            .map_err(|_| Reject::new(500, "store poisoned"))?
            .get(&name)
            .cloned()
            .ok_or_else(|| Reject::new(404, format!("no file named {name}")))?;
        let chunk = chunk.max(1) as usize;
        let parts: Vec<Vec<u8>> = data.chunks(chunk).map(<[u8]>::to_vec).collect();
        Ok(futures_util::stream::iter(parts).boxed())
    }
}

struct Printer;

impl Notices for Printer {
    async fn notice(&self, text: String) {
        println!("[client] notice from the server: {text}");
    }
}

/// The depot: accepts a session whose data is `token:<its name>`.
fn depot(tls_dir: Option<&Path>) -> Result<Endpoint, Box<dyn std::error::Error>> {
    let mut server = Endpoint::builder()
        .serve(DepotHandler::new(Arc::new(Store::default())))
        .on_session(|req| async move {
            println!(
                "[server] session `{}` asked with {:?}",
                req.name(),
                String::from_utf8_lossy(req.data())
            );
            if req.data().as_ref() == format!("token:{}", req.name()).as_bytes() {
                Ok(Bytes::from(format!("welcome, {}", req.name())))
            } else {
                Err(Reject::new(403, "unknown team token"))
            }
        });
    if let Some(dir) = tls_dir {
        server = server.tls(plexus_examples::server_tls(dir)?);
    }
    Ok(server.build())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let tls_dir = plexus_examples::take_tls_dir(&mut args)?;
    if let ["serve", url] = args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        let server = depot(tls_dir.as_deref())?;
        let listening = server.listen(*url).await?;
        println!("[server] listening on {}", listening.local_url());
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let server = depot(None)?;
    let listening = server.listen("tcp://127.0.0.1:0").await?;
    println!("[server] listening on {}", listening.local_url());

    // The client serves Notices so the server can push to it.
    let client = Endpoint::builder()
        .serve(NoticesHandler::new(Printer))
        .build();
    let conn = client.connect(listening.local_url()).await?;

    match conn
        .open_session("team-b", "token:guess", Duration::from_secs(2))
        .await
    {
        Err(CallError::Rejected(r)) => println!(
            "[client] session team-b rejected: {} ({})",
            r.message(),
            r.code()
        ),
        other => println!("[client] unexpected: {other:?}"),
    }
    let session = conn
        .open_session("team-a", "token:team-a", Duration::from_secs(2))
        .await?;
    println!(
        "[client] session team-a accepted: {}",
        String::from_utf8_lossy(&session.peer_data())
    );

    // Typed calls scoped to the session.
    let depot = DepotClient::new(session.as_connection());
    let file: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut up, receipt) = depot.upload().await?;
    up.send(b"report.bin".to_vec()).await?;
    for part in file.chunks(16 * 1024) {
        up.send(part.to_vec()).await?;
    }
    up.finish().await?;
    let receipt = receipt.await?;
    println!(
        "[client] uploaded {} bytes in {} chunks as {}",
        receipt.bytes, receipt.chunks, receipt.name
    );

    let mut down = depot.download("report.bin".to_owned(), 64 * 1024).await?;
    let mut back = Vec::new();
    while let Some(part) = down.next().await {
        back.extend_from_slice(&part?);
    }
    println!(
        "[client] downloaded {} bytes, identical: {}",
        back.len(),
        back == file
    );

    // The server pushes to every connected client without being asked.
    for c in server.connections() {
        NoticesClient::new(c)
            .notice("the depot closes for maintenance".to_owned())
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    session.close("done").await;
    match depot.download("report.bin".to_owned(), 1024).await {
        Err(e @ CallError::SessionClosed { .. }) => println!("[client] after close: {e}"),
        other => println!("[client] unexpected after close: {other:?}"),
    }
    conn.close().await;
    server.shutdown().await;
    Ok(())
}
