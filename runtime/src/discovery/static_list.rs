//! The static backend: a fixed list of peer URLs.
//!
//! Owns nothing but the list. It announces nothing and hears nothing: on
//! start it reports one [`DiscoveryEvent::Endpoint`] per URL, and the node
//! learns each peer's id (and liveness) from the connection it opens.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::{
    Announcement, Discovery, DiscoveryError, DiscoveryEvent, DiscoveryEvents, DiscoveryFuture,
    DiscoveryStats,
};
use crate::transport::Url;

const BACKEND: &str = "static";

/// Discovery from a fixed list of peer URLs.
///
/// ```
/// use plexus::discovery::Static;
/// let peers = Static::new(["tcp://127.0.0.1:4000", "tcp://127.0.0.1:4001"]);
/// assert_eq!(peers.endpoints().len(), 2);
/// ```
#[derive(Debug)]
pub struct Static {
    endpoints: Vec<String>,
    // Holding the sender keeps the event stream open until `leave`.
    running: Mutex<Option<mpsc::UnboundedSender<DiscoveryEvent>>>,
}

impl Static {
    /// A backend that reports these URLs (checked on start).
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Static {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            running: Mutex::new(None),
        }
    }

    /// The configured URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn lock(&self) -> MutexGuard<'_, Option<mpsc::UnboundedSender<DiscoveryEvent>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_now(&self) -> Result<DiscoveryEvents, DiscoveryError> {
        let mut running = self.lock();
        if running.is_some() {
            return Err(DiscoveryError::AlreadyStarted { backend: BACKEND });
        }
        for url in &self.endpoints {
            Url::parse(url).map_err(|e| DiscoveryError::InvalidEndpoint {
                backend: BACKEND,
                url: url.clone(),
                reason: e.to_string(),
            })?;
        }
        let (tx, events) = DiscoveryEvents::channel();
        for url in &self.endpoints {
            // The receiver is in hand, so the send cannot fail.
            let _ = tx.send(DiscoveryEvent::Endpoint(url.clone()));
        }
        *running = Some(tx);
        Ok(events)
    }
}

impl Discovery for Static {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn start(&self, _announcement: Announcement) -> DiscoveryFuture<'_, DiscoveryEvents> {
        Box::pin(async move { self.start_now() })
    }

    fn update(&self, announcement: Announcement) -> DiscoveryFuture<'_, ()> {
        // Nothing is announced; the update only has to be valid and timely.
        Box::pin(async move {
            if self.lock().is_none() {
                return Err(DiscoveryError::NotStarted { backend: BACKEND });
            }
            Ok(announcement.validate()?)
        })
    }

    fn leave(&self) -> DiscoveryFuture<'_, ()> {
        Box::pin(async move {
            self.lock()
                .take()
                .map(drop)
                .ok_or(DiscoveryError::NotStarted { backend: BACKEND })
        })
    }

    fn stats(&self) -> DiscoveryStats {
        DiscoveryStats::default()
    }
}
