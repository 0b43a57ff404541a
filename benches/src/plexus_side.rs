//! Plexus: the echo contract as a `#[plexus::service]` trait, served over tcp
//! with the default codec (MessagePack) and the default connection settings.

use futures_util::StreamExt;
use plexus::codec::Blob;
use plexus::{BoxStream, Reject, Server};

use crate::BoxError;

/// The benchmark's contract, as a Plexus user writes it.
#[plexus::service(package = "bench", version = 1)]
pub trait Echo {
    /// Returns the payload unchanged.
    async fn echo(&self, payload: Blob) -> Result<Blob, Reject>;
    /// Streams `messages` messages of `size` bytes each.
    async fn download(&self, messages: u32, size: u32) -> Result<BoxStream<Blob>, Reject>;
}

struct Echoing;

impl Echo for Echoing {
    async fn echo(&self, payload: Blob) -> Result<Blob, Reject> {
        Ok(payload)
    }

    async fn download(&self, messages: u32, size: u32) -> Result<BoxStream<Blob>, Reject> {
        let chunk = Blob::from(vec![0x5a; size as usize]);
        Ok(futures_util::stream::iter(0..messages)
            .map(move |_| chunk.clone())
            .boxed())
    }
}

/// Starts a server on an ephemeral loopback port.
pub async fn start() -> Result<Server, BoxError> {
    start_at("tcp://127.0.0.1:0").await
}

/// Starts a server listening on `url`.
pub async fn start_at(url: &str) -> Result<Server, BoxError> {
    Ok(server(url).start().await?)
}

/// A server of the echo contract on `url`, to configure further and start.
pub fn server(url: &str) -> plexus::server::ServerBuilder {
    Server::bind(url).serve(EchoHandler::new(Echoing))
}

/// Connects a typed client to `url`.
pub async fn connect(url: String) -> Result<EchoClient, BoxError> {
    Ok(EchoClient::connect(url).await?)
}

/// Downloads `messages` × `size` bytes; returns the bytes received.
pub async fn download(client: &EchoClient, messages: u32, size: u32) -> Result<usize, BoxError> {
    let mut stream = client.download(messages, size).await?;
    let mut received = 0;
    while let Some(chunk) = stream.next().await {
        received += chunk?.len();
    }
    Ok(received)
}
