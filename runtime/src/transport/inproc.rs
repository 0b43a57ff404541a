//! `inproc://`: connections between tasks of one process, without a socket.
//!
//! Owns a process-wide registry from names to live listeners. Dialing creates
//! an in-memory duplex pipe and hands one end to the listener; nothing here
//! ever leaves the process or reads the bytes it carries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::{Connected, ReadHalf, Stream, TransportError, Url, WriteHalf};

/// Bytes each direction of an inproc pipe buffers before the writer waits.
const PIPE_BUFFER: usize = 256 * 1024;

/// Dialed streams a listener holds before dialers wait for it to accept,
/// like a TCP backlog.
const BACKLOG: usize = 1024;

/// A dialed pipe end on its way to the listener, numbered for `remote`.
struct Incoming {
    stream: DuplexStream,
    dialer: u64,
}

/// Names bound in this process. The lock is held only for map lookups and
/// updates, never across an await.
static REGISTRY: LazyLock<Mutex<HashMap<String, mpsc::Sender<Incoming>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Numbers dialers so an accepted stream has a printable far end.
static NEXT_DIALER: AtomicU64 = AtomicU64::new(1);

/// Locks the registry; a panic elsewhere while holding the lock leaves the
/// map consistent (every update is a single insert or remove), so poisoning
/// is ignored.
fn registry() -> MutexGuard<'static, HashMap<String, mpsc::Sender<Incoming>>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Stream for DuplexStream {
    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        let (read, write) = tokio::io::split(*self);
        (Box::new(read), Box::new(write))
    }
}

/// A bound `inproc://` listener; its name is free again once it is dropped.
pub(crate) struct InprocListener {
    incoming: mpsc::Receiver<Incoming>,
    /// The sender registered under the name, kept to recognise our own entry.
    registered: mpsc::Sender<Incoming>,
    name: String,
    local: Url,
}

impl InprocListener {
    /// Registers the name of `url` in this process.
    pub(crate) fn bind(url: &Url) -> Result<Self, TransportError> {
        let name = inproc_name(url)?;
        let (sender, incoming) = mpsc::channel(BACKLOG);
        let mut names = registry();
        // A closed sender belongs to a listener that is being dropped.
        if names.get(name).is_some_and(|live| !live.is_closed()) {
            return Err(TransportError::InprocNameTaken {
                url: url.to_string(),
            });
        }
        names.insert(name.to_owned(), sender.clone());
        Ok(InprocListener {
            incoming,
            registered: sender,
            name: name.to_owned(),
            local: url.clone(),
        })
    }

    /// The URL this listener was bound with.
    pub(crate) fn local_url(&self) -> Url {
        self.local.clone()
    }

    /// Waits for the next dialer. Never fails while the listener exists: it
    /// holds a sender of its own channel, so the channel cannot close.
    pub(crate) async fn accept(&mut self) -> Result<Connected, TransportError> {
        match self.incoming.recv().await {
            Some(Incoming { stream, dialer }) => Ok(Connected {
                stream: Box::new(stream),
                remote: format!("{} (dialer #{dialer})", self.local),
                identity: None,
            }),
            None => Err(TransportError::InprocNotFound {
                url: self.local.to_string(),
            }),
        }
    }
}

impl Drop for InprocListener {
    fn drop(&mut self) {
        let mut names = registry();
        if names
            .get(&self.name)
            .is_some_and(|sender| sender.same_channel(&self.registered))
        {
            names.remove(&self.name);
        }
    }
}

/// Dials an `inproc://` URL: creates a pipe and queues one end for the listener.
pub(crate) async fn dial(url: &Url) -> Result<Connected, TransportError> {
    let not_found = || TransportError::InprocNotFound {
        url: url.to_string(),
    };
    let name = inproc_name(url)?;
    let sender = registry().get(name).cloned().ok_or_else(not_found)?;
    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
    let dialer = NEXT_DIALER.fetch_add(1, Ordering::Relaxed);
    sender
        .send(Incoming {
            stream: theirs,
            dialer,
        })
        .await
        .map_err(|_| not_found())?;
    Ok(Connected {
        stream: Box::new(ours),
        remote: url.to_string(),
        identity: None,
    })
}

fn inproc_name(url: &Url) -> Result<&str, TransportError> {
    url.name().ok_or_else(|| TransportError::InprocNotFound {
        url: url.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tcp::tests::listen_dial_exchange;
    use crate::transport::{dial, listen, TransportConfig};

    /// A name no other test uses, since the registry is process-wide.
    fn unique(test: &str) -> Url {
        Url::inproc(format!("{test}-{}", rand::random::<u64>())).expect("non-empty")
    }

    #[tokio::test]
    async fn inproc_carries_bytes_both_ways() {
        let url = unique("bytes");
        let local = listen_dial_exchange(&url.to_string(), &TransportConfig::new()).await;
        assert_eq!(local, url);
    }

    #[tokio::test]
    async fn binding_a_live_name_twice_is_refused() {
        let url = unique("twice");
        let _first = listen(&url, &TransportConfig::new()).await.expect("listen");
        let err = listen(&url, &TransportConfig::new())
            .await
            .expect_err("name taken");
        assert!(
            matches!(&err, TransportError::InprocNameTaken { url: u } if *u == url.to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn dialing_an_unknown_name_is_not_found() {
        let url = unique("nobody");
        let err = dial(&url, &TransportConfig::new())
            .await
            .expect_err("nothing bound");
        assert!(
            matches!(err, TransportError::InprocNotFound { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_dropped_listener_frees_its_name() {
        let url = unique("dropped");
        let listener = listen(&url, &TransportConfig::new()).await.expect("listen");
        drop(listener);
        let err = dial(&url, &TransportConfig::new())
            .await
            .expect_err("listener gone");
        assert!(
            matches!(err, TransportError::InprocNotFound { .. }),
            "{err}"
        );
        let _again = listen(&url, &TransportConfig::new())
            .await
            .expect("name can be bound again");
    }
}
