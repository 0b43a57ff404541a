//! A cap on chunks in flight shared by several downloads, and who gets the
//! next place under it: the download nearest to done.
//!
//! Owns [`DownloadLimits`] and the permits it hands out. A download holds
//! one permit per chunk call in flight. When a call ends, its download keeps
//! the permit for its next chunk unless a waiting download is nearer to done
//! (a larger share of its chunks received); then the permit goes to that
//! one. So with a tight cap, downloads finish one after another instead of
//! all crawling along together — a finished file can be used, and shared,
//! at once (LightImage's near-done scoring). It never calls a peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// A cap on chunk calls in flight across every download given it with
/// [`DownloadBuilder::limits`](super::DownloadBuilder::limits). Clones share
/// the cap.
///
/// ```
/// let limits = plexus::files::DownloadLimits::new(8);
/// assert_eq!((limits.max_in_flight(), limits.in_flight()), (8, 0));
/// ```
#[derive(Clone)]
pub struct DownloadLimits {
    inner: Arc<Mutex<State>>,
}

impl std::fmt::Debug for DownloadLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("DownloadLimits")
            .field("max_in_flight", &s.max)
            .field("in_flight", &s.in_flight)
            .field("waiting", &s.waiting.len())
            .finish()
    }
}

#[derive(Debug)]
struct State {
    max: usize,
    /// Permits out, reserved ones included.
    in_flight: usize,
    /// Downloads that want a permit: their score and arrival.
    waiting: HashMap<u64, (f64, u64)>,
    /// Permits handed to a waiting download, not taken up yet.
    reserved: HashMap<u64, usize>,
    seats: HashMap<u64, Arc<Notify>>,
    next: u64,
}

impl DownloadLimits {
    /// At most `max_in_flight` chunk calls (at least 1) at once, over every
    /// download sharing these limits.
    pub fn new(max_in_flight: usize) -> Self {
        DownloadLimits {
            inner: Arc::new(Mutex::new(State {
                max: max_in_flight.max(1),
                in_flight: 0,
                waiting: HashMap::new(),
                reserved: HashMap::new(),
                seats: HashMap::new(),
                next: 0,
            })),
        }
    }

    /// The cap.
    pub fn max_in_flight(&self) -> usize {
        self.state().max
    }

    /// Chunk calls in flight now, over every download.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section is bookkeeping; a panic cannot tear one.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one download among those sharing the cap.
    pub(crate) fn seat(&self) -> Seat {
        let mut s = self.state();
        let key = s.next;
        s.next += 1;
        let notify = Arc::new(Notify::new());
        s.seats.insert(key, notify.clone());
        Seat {
            limits: self.clone(),
            key,
            notify,
        }
    }
}

impl State {
    /// The waiting download with the best claim: highest score, then
    /// earliest arrival.
    fn best_waiting(&self) -> Option<u64> {
        self.waiting
            .iter()
            .max_by(|(_, (a, at_a)), (_, (b, at_b))| a.total_cmp(b).then(at_b.cmp(at_a)))
            .map(|(key, _)| *key)
    }

    /// A permit is free (or was just given back): hand it to the best
    /// waiting download, if any, else free it.
    fn release(&mut self) {
        match self.best_waiting() {
            Some(key) => {
                self.waiting.remove(&key);
                *self.reserved.entry(key).or_default() += 1;
                if let Some(n) = self.seats.get(&key) {
                    n.notify_one();
                }
            }
            None => self.in_flight -= 1,
        }
    }
}

/// One download's place under shared limits.
pub(crate) struct Seat {
    limits: DownloadLimits,
    key: u64,
    notify: Arc<Notify>,
}

impl Seat {
    /// A permit for a download whose `score` (share of chunks received) is
    /// this: one reserved for it, else a free one if no waiting download
    /// scores higher. Otherwise the wish is recorded and the download is
    /// woken ([`granted`](Self::granted)) when a permit is handed to it.
    pub(crate) fn take(&self, score: f64) -> Option<Permit> {
        let mut s = self.limits.state();
        if let Some(n) = s.reserved.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                s.reserved.remove(&self.key);
            }
            return Some(self.permit());
        }
        let outranked = s
            .waiting
            .iter()
            .any(|(key, (other, _))| *key != self.key && *other > score);
        if s.in_flight < s.max && !outranked {
            s.in_flight += 1;
            s.waiting.remove(&self.key);
            return Some(self.permit());
        }
        let arrival = s.next;
        s.next += 1;
        let at = s.waiting.get(&self.key).map_or(arrival, |(_, at)| *at);
        s.waiting.insert(self.key, (score, at));
        None
    }

    /// Whether a download with `score` holding a permit it no longer needs
    /// for the chunk it was for may keep it for its next one: no waiting
    /// download is nearer to done.
    pub(crate) fn may_keep(&self, score: f64) -> bool {
        let s = self.limits.state();
        !s.waiting
            .iter()
            .any(|(key, (other, _))| *key != self.key && *other > score)
    }

    /// The download has nothing to fetch now: it stops waiting, and passes
    /// on what was reserved for it.
    pub(crate) fn withdraw(&self) {
        let mut s = self.limits.state();
        s.waiting.remove(&self.key);
        let reserved = s.reserved.remove(&self.key).unwrap_or(0);
        for _ in 0..reserved {
            s.release();
        }
    }

    /// Resolves when a permit has been handed to this download.
    pub(crate) async fn granted(&self) {
        self.notify.notified().await
    }

    fn permit(&self) -> Permit {
        Permit {
            limits: self.limits.clone(),
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.withdraw();
        self.limits.state().seats.remove(&self.key);
    }
}

/// One chunk call's place under the cap; given back (to the best waiting
/// download, or freed) when dropped.
pub(crate) struct Permit {
    limits: DownloadLimits,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.state().release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_permit_goes_to_the_download_nearest_to_done() {
        let limits = DownloadLimits::new(1);
        let (far, near) = (limits.seat(), limits.seat());
        let held = far.take(0.0).expect("free");
        assert!(far.take(0.0).is_none(), "at the cap");
        assert!(near.take(0.8).is_none(), "at the cap");
        assert!(!far.may_keep(0.1), "a nearer download waits");
        drop(held);
        assert!(far.take(0.5).is_none(), "handed to the nearer one");
        let theirs = near.take(0.8).expect("reserved for it");
        assert_eq!(limits.in_flight(), 1);
        assert!(near.may_keep(0.9), "nobody waiting is nearer");
        drop(theirs);
        assert!(far.take(0.5).is_some(), "handed on to the one left");
    }

    #[test]
    fn a_download_that_withdraws_passes_its_reservation_on() {
        let limits = DownloadLimits::new(1);
        let (a, b, c) = (limits.seat(), limits.seat(), limits.seat());
        let held = a.take(0.0).expect("free");
        assert!(b.take(0.9).is_none());
        assert!(c.take(0.1).is_none());
        drop(held);
        b.withdraw();
        let permit = c.take(0.1).expect("b's reservation passed to c");
        drop(b);
        assert_eq!(limits.in_flight(), 1);
        drop(permit);
        assert_eq!(limits.in_flight(), 0);
    }

    #[test]
    fn permits_given_back_with_nobody_waiting_are_free() {
        let limits = DownloadLimits::new(2);
        let a = limits.seat();
        let (p1, p2) = (a.take(0.0).expect("one"), a.take(0.0).expect("two"));
        assert!(a.take(0.0).is_none());
        a.withdraw();
        drop((p1, p2));
        assert_eq!(limits.in_flight(), 0);
        drop(a);
        assert!(limits.seat().take(0.0).is_some());
    }
}
