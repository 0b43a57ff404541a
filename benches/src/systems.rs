//! The four systems behind one face: start a server, connect a client, make
//! an echo call. The enum costs one match per call, the same for everyone.

use std::fmt;
use std::net::SocketAddr;

use plexus::codec::Blob;
use tokio::task::JoinHandle;

use crate::{plexus_side, raw, tarpc_side, tonic_side, BoxError};

/// A system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Plexus,
    Tonic,
    Tarpc,
    Raw,
}

impl System {
    /// Every system, in table order.
    pub const ALL: [System; 4] = [System::Plexus, System::Tonic, System::Tarpc, System::Raw];
    /// The systems with a server-streaming call.
    pub const STREAMING: [System; 3] = [System::Plexus, System::Tonic, System::Raw];
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Plexus => "plexus",
            System::Tonic => "tonic",
            System::Tarpc => "tarpc",
            System::Raw => "raw tcp",
        })
    }
}

/// A running server of one system.
pub enum Served {
    Plexus(plexus::Server),
    Task {
        system: System,
        addr: SocketAddr,
        task: JoinHandle<()>,
    },
}

impl Served {
    /// Starts an echo server (with the streaming call where the system has
    /// one); must run on the server runtime.
    pub async fn start(system: System) -> Result<Served, BoxError> {
        let (addr, task) = match system {
            System::Plexus => return Ok(Served::Plexus(plexus_side::start().await?)),
            System::Tonic => tonic_side::start().await?,
            System::Tarpc => tarpc_side::start().await?,
            System::Raw => raw::start_echo().await?,
        };
        Ok(Served::Task { system, addr, task })
    }

    /// Where clients connect, and how.
    pub fn target(&self) -> Target {
        match self {
            Served::Plexus(server) => Target::Plexus(server.local_url().to_string()),
            Served::Task { system, addr, .. } => Target::Addr(*system, *addr),
        }
    }

    /// Stops the server; must run on the server runtime.
    pub async fn stop(self) {
        match self {
            Served::Plexus(server) => server.shutdown().await,
            Served::Task { task, .. } => task.abort(),
        }
    }
}

/// The address of a running server, sendable to the client runtime.
#[derive(Clone, Debug)]
pub enum Target {
    Plexus(String),
    Addr(System, SocketAddr),
}

/// A client connection of one system.
#[derive(Clone)]
pub enum Echoer {
    Plexus(plexus_side::EchoClient),
    Tonic(tonic_side::Client),
    Tarpc(tarpc_side::EchoClient),
    Raw(raw::Client),
}

impl Echoer {
    /// Opens one connection to `target`; must run on the client runtime.
    pub async fn connect(target: Target) -> Result<Echoer, BoxError> {
        Ok(match target {
            Target::Plexus(url) => Echoer::Plexus(plexus_side::connect(url).await?),
            Target::Addr(System::Tonic, addr) => Echoer::Tonic(tonic_side::connect(addr).await?),
            Target::Addr(System::Tarpc, addr) => Echoer::Tarpc(tarpc_side::connect(addr).await?),
            Target::Addr(System::Raw, addr) => Echoer::Raw(raw::Client::connect(addr).await?),
            Target::Addr(System::Plexus, addr) => {
                Echoer::Plexus(plexus_side::connect(format!("tcp://{addr}")).await?)
            }
        })
    }

    /// One echo call of `payload`, checked to come back whole.
    pub async fn echo(&mut self, payload: &'static [u8]) -> Result<(), BoxError> {
        let len = match self {
            Echoer::Plexus(client) => client.echo(Blob::from_static(payload)).await?.len(),
            Echoer::Tonic(client) => tonic_side::echo(client, payload).await?,
            Echoer::Tarpc(client) => tarpc_side::echo(client, payload).await?,
            Echoer::Raw(client) => client.echo(payload).await?,
        };
        if len != payload.len() {
            return Err(format!("echo of {} bytes came back as {len}", payload.len()).into());
        }
        Ok(())
    }
}
