//! tonic: the same contract from `proto/echo.proto`, over HTTP/2 with tonic's
//! default settings (TCP_NODELAY on, as tonic sets it).

use std::net::SocketAddr;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::BoxError;

mod pb {
    tonic::include_proto!("bench");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{DownloadRequest, Payload};

/// A tonic client on one HTTP/2 connection.
pub type Client = EchoClient<Channel>;

struct Echoing;

#[tonic::async_trait]
impl Echo for Echoing {
    async fn echo(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    type DownloadStream = BoxStream<'static, Result<Payload, Status>>;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let DownloadRequest { messages, size } = request.into_inner();
        let chunk = Payload {
            data: vec![0x5a; size as usize],
        };
        Ok(Response::new(
            futures_util::stream::iter(0..messages)
                .map(move |_| Ok(chunk.clone()))
                .boxed(),
        ))
    }
}

/// Starts a server on an ephemeral loopback port; abort the task to stop it.
pub async fn start() -> Result<(SocketAddr, JoinHandle<()>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        let served = Server::builder()
            .add_service(EchoServer::new(Echoing))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            eprintln!("tonic server stopped: {e}");
        }
    });
    Ok((addr, task))
}

/// Connects a client over one HTTP/2 connection.
pub async fn connect(addr: SocketAddr) -> Result<Client, BoxError> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(EchoClient::new(channel))
}

/// One unary echo; returns the reply's length.
pub async fn echo(client: &mut Client, payload: &[u8]) -> Result<usize, BoxError> {
    let reply = client
        .echo(Payload {
            data: payload.to_vec(),
        })
        .await?;
    Ok(reply.into_inner().data.len())
}

/// Downloads `messages` × `size` bytes; returns the bytes received.
pub async fn download(client: &mut Client, messages: u32, size: u32) -> Result<usize, BoxError> {
    let mut stream = client
        .download(DownloadRequest { messages, size })
        .await?
        .into_inner();
    let mut received = 0;
    while let Some(chunk) = stream.message().await? {
        received += chunk.data.len();
    }
    Ok(received)
}
