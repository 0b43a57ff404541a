//! tarpc: the same contract as a `#[tarpc::service]` trait over tcp with
//! bincode, TCP_NODELAY set on both ends like the other systems.

use std::net::SocketAddr;

use futures_util::StreamExt;
use serde_bytes::ByteBuf;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tarpc::{client, context, serde_transport};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::BoxError;

/// The benchmark's contract, as a tarpc user writes it.
#[tarpc::service]
pub trait Echo {
    /// Returns the payload unchanged.
    async fn echo(payload: ByteBuf) -> ByteBuf;
}

#[derive(Clone)]
struct Echoing;

impl Echo for Echoing {
    async fn echo(self, _: context::Context, payload: ByteBuf) -> ByteBuf {
        payload
    }
}

/// Starts a server on an ephemeral loopback port; abort the task to stop it.
pub async fn start() -> Result<(SocketAddr, JoinHandle<()>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if stream.set_nodelay(true).is_err() {
                continue;
            }
            let framed = Framed::new(stream, LengthDelimitedCodec::new());
            let transport = serde_transport::new(framed, Bincode::default());
            tokio::spawn(
                BaseChannel::with_defaults(transport)
                    .execute(Echoing.serve())
                    .for_each(|call| async move {
                        tokio::spawn(call);
                    }),
            );
        }
    });
    Ok((addr, task))
}

/// Connects a client over one TCP connection.
pub async fn connect(addr: SocketAddr) -> Result<EchoClient, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let framed = Framed::new(stream, LengthDelimitedCodec::new());
    let transport = serde_transport::new(framed, Bincode::default());
    Ok(EchoClient::new(client::Config::default(), transport).spawn())
}

/// One unary echo; returns the reply's length.
pub async fn echo(client: &EchoClient, payload: &[u8]) -> Result<usize, BoxError> {
    let reply = client
        .echo(context::current(), ByteBuf::from(payload.to_vec()))
        .await?;
    Ok(reply.len())
}
