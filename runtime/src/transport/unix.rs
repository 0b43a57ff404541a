//! `unix://`: Unix domain sockets on the local file system.
//!
//! Owns the socket file's life: a stale file left by a crashed process is
//! replaced at bind, a live one is never stolen, and the listener removes its
//! own file when dropped. It never reads or writes the bytes of a connection.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

use super::explain::{explain, Attempt};
use super::{Connected, ReadHalf, Stream, TransportError, Url, WriteHalf};

impl Stream for UnixStream {
    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        let (read, write) = self.into_split();
        (Box::new(read), Box::new(write))
    }
}

/// A bound `unix://` listener. Dropping it removes the socket file, unless
/// something else has replaced the file since.
pub(crate) struct UnixListener {
    socket: tokio::net::UnixListener,
    local: Url,
    /// The socket file, made absolute so a later change of working directory
    /// cannot make the drop remove the wrong file.
    file: PathBuf,
    /// Device and inode of the file this listener created.
    identity: (u64, u64),
}

impl UnixListener {
    /// Binds the socket path of `url`, replacing a stale socket file.
    pub(crate) async fn bind(url: &Url) -> Result<Self, TransportError> {
        let io_error = |source| TransportError::Io {
            url: url.to_string(),
            source,
        };
        let path = url.path().ok_or_else(|| {
            io_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a unix socket path",
            ))
        })?;
        let file = std::path::absolute(path).map_err(io_error)?;
        clear_stale_socket(&file).await.map_err(io_error)?;
        let socket = tokio::net::UnixListener::bind(&file)
            .map_err(|e| io_error(explain(Attempt::Bind, e)))?;
        let metadata = std::fs::metadata(&file).map_err(io_error)?;
        Ok(UnixListener {
            socket,
            local: url.clone(),
            file,
            identity: (metadata.dev(), metadata.ino()),
        })
    }

    /// The URL this listener was bound with.
    pub(crate) fn local_url(&self) -> Url {
        self.local.clone()
    }

    /// Waits for the next connection. An error concerns one attempt; the
    /// listener stays usable.
    pub(crate) async fn accept(&mut self) -> Result<Connected, TransportError> {
        let (stream, peer) = self
            .socket
            .accept()
            .await
            .map_err(|error| TransportError::Io {
                url: self.local.to_string(),
                source: explain(Attempt::Accept, error),
            })?;
        // Dialers rarely bind a path of their own; the process id is then the
        // most useful name for the far end.
        let remote = match peer.as_pathname() {
            Some(path) => format!("unix://{}", path.display()),
            None => match stream.peer_cred().ok().and_then(|cred| cred.pid()) {
                Some(pid) => format!("{} (peer pid {pid})", self.local),
                None => format!("{} (unnamed peer)", self.local),
            },
        };
        Ok(Connected {
            stream: Box::new(stream),
            remote,
            identity: None,
        })
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        let still_ours = std::fs::metadata(&self.file)
            .map(|m| (m.dev(), m.ino()) == self.identity)
            .unwrap_or(false);
        if still_ours {
            if let Err(error) = std::fs::remove_file(&self.file) {
                tracing::debug!(path = %self.file.display(), %error, "could not remove unix socket file");
            }
        }
    }
}

/// Makes `path` free to bind: removes a socket file nobody accepts on, and
/// refuses if the path is a live socket or not a socket at all.
async fn clear_stale_socket(path: &Path) -> io::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the path exists and is not a socket — remove it or choose another path",
        ));
    }
    // A live listener sees this probe as a connection that ends at once.
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another listener is accepting on this socket — stop it or choose another path",
        )),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::debug!(path = %path.display(), "replacing stale unix socket file");
            std::fs::remove_file(path)
        }
        Err(error) => Err(error),
    }
}

/// Dials a `unix://` URL.
pub(crate) async fn dial(url: &Url) -> Result<Connected, TransportError> {
    let io_error = |source| TransportError::Io {
        url: url.to_string(),
        source,
    };
    let path = url.path().ok_or_else(|| {
        io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a unix socket path",
        ))
    })?;
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| io_error(explain(Attempt::Connect, e)))?;
    Ok(Connected {
        stream: Box::new(stream),
        remote: url.to_string(),
        identity: None,
    })
}

#[cfg(test)]
mod tests {
    use tokio::time::timeout;

    use super::*;
    use crate::transport::tcp::tests::{listen_dial_exchange, STEP};
    use crate::transport::{listen, TransportConfig};

    /// A fresh directory for socket files, removed at the end of the test.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "plexus-unix-{test}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn url(&self, file: &str) -> Url {
            Url::unix(self.0.join(file)).expect("utf-8 temp path")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn unix_carries_bytes_both_ways() {
        let dir = TempDir::new("bytes");
        let url = dir.url("a.sock");
        let local = listen_dial_exchange(&url.to_string(), &TransportConfig::new()).await;
        assert_eq!(local, url);
    }

    #[tokio::test]
    async fn dropping_the_listener_removes_the_socket_file() {
        let dir = TempDir::new("drop");
        let url = dir.url("a.sock");
        let listener = listen(&url, &TransportConfig::new()).await.expect("listen");
        let path = url.path().expect("unix path").to_owned();
        assert!(path.exists());
        drop(listener);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn stale_socket_file_is_replaced() {
        let dir = TempDir::new("stale");
        let url = dir.url("a.sock");
        let path = url.path().expect("unix path").to_owned();
        // A std listener dropped without cleanup leaves its file behind, as a
        // crashed process would.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let _listener = timeout(STEP, listen(&url, &TransportConfig::new()))
            .await
            .expect("within the step bound")
            .expect("stale file replaced");
    }

    #[tokio::test]
    async fn live_socket_is_not_stolen() {
        let dir = TempDir::new("live");
        let url = dir.url("a.sock");
        let _first = listen(&url, &TransportConfig::new()).await.expect("listen");
        let err = timeout(STEP, listen(&url, &TransportConfig::new()))
            .await
            .expect("within the step bound")
            .expect_err("path is in use");
        match &err {
            TransportError::Io { url: named, source } => {
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
                assert_eq!(named, &url.to_string());
            }
            other => panic!("expected an AddrInUse I/O error, got {other}"),
        }
    }

    #[tokio::test]
    async fn regular_file_is_never_removed() {
        let dir = TempDir::new("file");
        let url = dir.url("data.txt");
        let path = url.path().expect("unix path").to_owned();
        std::fs::write(&path, b"keep me").expect("write");
        let err = listen(&url, &TransportConfig::new())
            .await
            .expect_err("not a socket");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"keep me");
    }

    #[tokio::test]
    async fn dialing_a_missing_path_names_the_url() {
        let dir = TempDir::new("missing");
        let url = dir.url("nobody.sock");
        let err = crate::transport::dial(&url, &TransportConfig::new())
            .await
            .expect_err("nothing there");
        assert!(err.to_string().contains(&url.to_string()), "{err}");
    }
}
