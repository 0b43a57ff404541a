//! A hostile peer that speaks the wire protocol by hand: it completes the
//! dialer's side of the handshake and then writes whatever frames an attack
//! calls for, reading only when the attack wants to (most never do). Every
//! wait is bounded; a refusal is an outcome, not an error.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plexus::wire;
use plexus::wire::frame::{CallOpen, Frame};
use plexus::wire::handshake::{Answer, Refusal};
use plexus_tests::raw;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BoxError;

/// The longest a hostile peer waits for the victim's answer to its hello.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(15);

/// A hand-driven connection after its handshake.
pub struct RawPeer {
    stream: TcpStream,
    /// Bytes read past the welcome.
    buf: BytesMut,
    /// The peer's address as the victim names it (`tcp://127.0.0.1:port`),
    /// which is how the victim's event lines identify this connection.
    pub remote: String,
}

/// What the victim answered to a hello.
pub enum Handshake {
    Welcome(RawPeer),
    Refused(Refusal),
}

impl RawPeer {
    /// Dials `addr` (host:port) and completes the handshake; a refusal is
    /// returned as [`Handshake::Refused`].
    pub async fn dial(addr: &str) -> Result<Handshake, BoxError> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let remote = format!("tcp://{}", stream.local_addr()?);
        // The tests' hostile hello: node 7, 1 MiB frames, 64 KiB windows.
        let hello = raw::hello(wire::handshake::VERSION);
        stream.write_all(&hello).await?;
        let mut buf = BytesMut::new();
        let answer = tokio::time::timeout(HANDSHAKE_LIMIT, async {
            loop {
                if let Some(answer) = Answer::decode(&mut buf)? {
                    return Ok::<_, BoxError>(answer);
                }
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err("the victim closed the stream during the handshake".into());
                }
            }
        })
        .await
        .map_err(|_| format!("no answer to the hello within {HANDSHAKE_LIMIT:?}"))??;
        Ok(match answer {
            Answer::Welcome(_) => Handshake::Welcome(RawPeer {
                stream,
                buf,
                remote,
            }),
            Answer::Refusal(r) => Handshake::Refused(r),
        })
    }

    /// Dials and expects to be welcomed.
    pub async fn connect(addr: &str) -> Result<RawPeer, BoxError> {
        match RawPeer::dial(addr).await? {
            Handshake::Welcome(peer) => Ok(peer),
            Handshake::Refused(r) => Err(format!("refused: {:?}: {}", r.code, r.reason).into()),
        }
    }

    /// Writes `frames`, encoded back to back, in one write; returns the
    /// bytes written.
    pub async fn send(&mut self, frames: &[Frame]) -> std::io::Result<usize> {
        let mut out = BytesMut::new();
        for f in frames {
            f.encode(&mut out);
        }
        self.stream.write_all(&out).await?;
        Ok(out.len())
    }

    /// Reads every frame until the victim closes the stream or `limit`
    /// passes; returns them and whether the stream ended.
    pub async fn frames_until_closed(&mut self, limit: Duration) -> (Vec<Frame>, bool) {
        let mut got = Vec::new();
        let ended = tokio::time::timeout(limit, async {
            loop {
                while let Ok(Some(f)) = wire::frame::decode(&mut self.buf, u32::MAX) {
                    got.push(f);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok();
        while let Ok(Some(f)) = wire::frame::decode(&mut self.buf, u32::MAX) {
            got.push(f);
        }
        (got, ended)
    }
}

/// A unary call-open frame (request complete), op index `index`, defining
/// `name` when given: the tests' own.
pub use plexus_tests::raw::call;

/// A one-way call-open frame (call id 0), otherwise as [`call`].
pub fn oneway(index: u32, name: Option<&str>, body: Bytes) -> Frame {
    match call(0, index, name, body) {
        Frame::CallOpen(open) => Frame::CallOpen(CallOpen {
            oneway: true,
            ..open
        }),
        other => other,
    }
}
