//! Handshakes in flight on a listener.
//!
//! Transports whose accepted connections need a handshake before they carry
//! bytes (TLS, WebSocket, QUIC) run each handshake in a task owned here, so a
//! slow or silent peer delays only itself, and at most
//! [`MAX_PENDING_HANDSHAKES`] strangers hold a slot at once. This module knows
//! nothing of what a handshake does; each transport supplies its own.

use std::future::Future;
use std::io;

use tokio::task::JoinSet;

use super::{Connected, TransportError, Url};

/// Handshakes a listener runs at once; beyond this it stops accepting new
/// connections until one finishes, bounding the memory strangers can claim.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 128;

/// The handshakes one listener has in flight. Dropping it aborts them.
pub(crate) struct PendingHandshakes {
    tasks: JoinSet<Result<Connected, TransportError>>,
}

impl PendingHandshakes {
    pub(crate) fn new() -> PendingHandshakes {
        PendingHandshakes {
            tasks: JoinSet::new(),
        }
    }

    /// Returns the next peer whose handshake finished, in completion order,
    /// accepting raw connections with `accept` and starting a handshake on
    /// each with `start` meanwhile. Finished handshakes go first, so a flood
    /// of new connections cannot starve peers that are ready.
    ///
    /// Cancel-safe as long as `accept` is: pending handshakes live here, not
    /// in the returned future.
    pub(crate) async fn next<T, A, H>(
        &mut self,
        local: &Url,
        mut accept: impl FnMut() -> A,
        mut start: impl FnMut(T) -> H,
    ) -> Result<Connected, TransportError>
    where
        A: Future<Output = Result<T, TransportError>>,
        H: Future<Output = Result<Connected, TransportError>> + Send + 'static,
    {
        loop {
            if self.tasks.len() >= MAX_PENDING_HANDSHAKES {
                if let Some(done) = self.tasks.join_next().await {
                    return finished(local, done);
                }
                continue;
            }
            tokio::select! {
                // An empty set yields `None`, which disables this branch for
                // this round.
                biased;
                Some(done) = self.tasks.join_next() => return finished(local, done),
                raw = accept() => {
                    self.tasks.spawn(start(raw?));
                }
            }
        }
    }
}

fn finished(
    local: &Url,
    done: Result<Result<Connected, TransportError>, tokio::task::JoinError>,
) -> Result<Connected, TransportError> {
    done.unwrap_or_else(|join_error| {
        Err(TransportError::Io {
            url: local.to_string(),
            source: io::Error::other(format!("a handshake task ended abnormally: {join_error}")),
        })
    })
}
