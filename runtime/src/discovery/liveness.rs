//! Per-peer liveness: alive → suspect → lost, graceful leave, return.
//!
//! [`Liveness`] is a plain table driven by explicit instants: a backend feeds
//! it every announcement it accepts ([`Liveness::observe`]) and calls
//! [`Liveness::tick`] on a timer; both return the [`DiscoveryEvent`]s to
//! report. It owns no clock, task or socket, so its tests need no sleeping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Announcement, DiscoveryEvent, PeerRecord};
use crate::NodeId;

/// Timing and size bounds of a [`Liveness`] table.
///
/// Silence is measured from the last accepted announcement. A peer is
/// reported [`DiscoveryEvent::Suspect`] once silent for `suspect_after` and
/// [`DiscoveryEvent::Lost`] once silent for `lost_after`, each at the first
/// tick after the bound: a crashed peer is reported lost at most
/// `lost_after + check_interval` after its last announcement was received
/// ([`LivenessConfig::detection_bound`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Silence after which a peer is suspect.
    pub suspect_after: Duration,
    /// Silence after which a peer is lost; greater than `suspect_after`.
    pub lost_after: Duration,
    /// How often the backend calls [`Liveness::tick`].
    pub check_interval: Duration,
    /// How long a lost or departed peer is remembered, so that its delayed
    /// datagrams are recognised as old and its return reported as
    /// [`DiscoveryEvent::Returned`]. After that it is forgotten; if heard again
    /// it is [`DiscoveryEvent::Discovered`] anew.
    pub forget_after: Duration,
    /// Most peers tracked at once; announcements from further new peers are
    /// dropped (and counted) so a flood of forged ids cannot grow memory.
    pub max_peers: usize,
}

impl LivenessConfig {
    /// Bounds scaled to an announcement interval: suspect after 3 intervals,
    /// lost after 5, checked every half interval, forgotten after 10 × lost,
    /// at most 1024 peers.
    pub fn for_interval(interval: Duration) -> Self {
        let lost_after = interval * 5;
        LivenessConfig {
            suspect_after: interval * 3,
            lost_after,
            check_interval: (interval / 2).max(Duration::from_millis(1)),
            forget_after: lost_after * 10,
            max_peers: 1024,
        }
    }

    /// The longest time from a peer's last received announcement to its
    /// [`DiscoveryEvent::Lost`]: `lost_after + check_interval`.
    pub fn detection_bound(&self) -> Duration {
        self.lost_after + self.check_interval
    }

    /// Checks the bounds are consistent; the error says which one to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.suspect_after.is_zero() || self.check_interval.is_zero() {
            return Err("suspect_after and check_interval must be greater than zero".into());
        }
        if self.lost_after <= self.suspect_after {
            return Err(format!(
                "lost_after ({:?}) must be greater than suspect_after ({:?})",
                self.lost_after, self.suspect_after
            ));
        }
        if self.forget_after < self.lost_after {
            return Err(format!(
                "forget_after ({:?}) must be at least lost_after ({:?})",
                self.forget_after, self.lost_after
            ));
        }
        if self.max_peers == 0 {
            return Err("max_peers must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for LivenessConfig {
    /// [`LivenessConfig::for_interval`] of one second.
    fn default() -> Self {
        LivenessConfig::for_interval(Duration::from_secs(1))
    }
}

/// Where a peer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Heard from within `suspect_after`.
    Alive,
    /// Silent for `suspect_after`.
    Suspect,
    /// Silent for `lost_after`, or its registration expired.
    Lost,
    /// Announced a graceful leave.
    Left,
}

/// What [`Liveness::observe`] made of an announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// Something to report.
    Event(DiscoveryEvent),
    /// A newer announcement with nothing new to report; the peer's silence
    /// timer was reset.
    Refreshed,
    /// Not newer than what was already seen (a duplicate, a reordered or
    /// replayed datagram, or a leave from a peer never seen); ignored.
    Stale,
    /// A new peer, but the table is full; ignored.
    TableFull,
}

#[derive(Debug)]
struct Peer {
    record: PeerRecord,
    state: PeerState,
    sequence: u64,
    last_seen: Instant,
}

/// The liveness table of the peers one node has heard of.
#[derive(Debug)]
pub struct Liveness {
    config: LivenessConfig,
    // Ordered so that a tick reports peers in a stable order.
    peers: BTreeMap<NodeId, Peer>,
}

impl Liveness {
    /// An empty table with these bounds.
    pub fn new(config: LivenessConfig) -> Self {
        Liveness {
            config,
            peers: BTreeMap::new(),
        }
    }

    /// The bounds in force.
    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Takes in an announcement received at `now`.
    ///
    /// Announcements are ordered by `(incarnation, sequence)`; anything not
    /// newer than the last one seen from that node is [`Observation::Stale`].
    pub fn observe(&mut self, announcement: &Announcement, now: Instant) -> Observation {
        let Some(peer) = self.peers.get_mut(&announcement.node_id) else {
            if announcement.leaving {
                return Observation::Stale;
            }
            if self.peers.len() >= self.config.max_peers {
                return Observation::TableFull;
            }
            let record = PeerRecord::from_announcement(announcement);
            self.peers.insert(
                announcement.node_id,
                Peer {
                    record: record.clone(),
                    state: PeerState::Alive,
                    sequence: announcement.sequence,
                    last_seen: now,
                },
            );
            return Observation::Event(DiscoveryEvent::Discovered(record));
        };

        let newer = (announcement.incarnation, announcement.sequence)
            > (peer.record.incarnation, peer.sequence);
        if !newer {
            return Observation::Stale;
        }
        let restarted = announcement.incarnation > peer.record.incarnation;
        let record = PeerRecord::from_announcement(announcement);
        let changed = record != peer.record;
        let previous = peer.state;
        peer.sequence = announcement.sequence;
        peer.last_seen = now;
        peer.record = record.clone();

        if announcement.leaving {
            peer.state = PeerState::Left;
            return if previous == PeerState::Left {
                Observation::Refreshed
            } else {
                Observation::Event(DiscoveryEvent::Left(announcement.node_id))
            };
        }
        peer.state = PeerState::Alive;
        let event = match previous {
            PeerState::Lost | PeerState::Left => DiscoveryEvent::Returned(record),
            _ if restarted => DiscoveryEvent::Returned(record),
            _ if changed => DiscoveryEvent::Updated(record),
            PeerState::Suspect => DiscoveryEvent::Recovered(announcement.node_id),
            PeerState::Alive => return Observation::Refreshed,
        };
        Observation::Event(event)
    }

    /// Marks a peer lost at once (its registration expired). Returns
    /// [`DiscoveryEvent::Lost`] unless the peer is unknown, already lost, or
    /// left.
    pub fn mark_lost(&mut self, node: NodeId, now: Instant) -> Option<DiscoveryEvent> {
        let peer = self.peers.get_mut(&node)?;
        match peer.state {
            PeerState::Lost | PeerState::Left => None,
            PeerState::Alive | PeerState::Suspect => {
                peer.state = PeerState::Lost;
                peer.last_seen = now;
                Some(DiscoveryEvent::Lost(node))
            }
        }
    }

    /// Advances silence timers to `now`: reports newly suspect and lost peers
    /// (a peer silent past both bounds gets both events, in order) and
    /// forgets departed ones past `forget_after`.
    pub fn tick(&mut self, now: Instant) -> Vec<DiscoveryEvent> {
        let mut events = Vec::new();
        for (id, peer) in &mut self.peers {
            let silence = now.saturating_duration_since(peer.last_seen);
            if peer.state == PeerState::Alive && silence >= self.config.suspect_after {
                peer.state = PeerState::Suspect;
                events.push(DiscoveryEvent::Suspect(*id));
            }
            if peer.state == PeerState::Suspect && silence >= self.config.lost_after {
                peer.state = PeerState::Lost;
                events.push(DiscoveryEvent::Lost(*id));
            }
        }
        self.forget(now);
        events
    }

    /// Forgets lost and departed peers silent for `forget_after`.
    pub fn forget(&mut self, now: Instant) {
        let forget_after = self.config.forget_after;
        self.peers.retain(|_, peer| {
            let departed = matches!(peer.state, PeerState::Lost | PeerState::Left);
            !(departed && now.saturating_duration_since(peer.last_seen) >= forget_after)
        });
    }

    /// Where `node` stands, if it is in the table.
    pub fn state(&self, node: NodeId) -> Option<PeerState> {
        self.peers.get(&node).map(|p| p.state)
    }

    /// The latest record of `node`, if it is in the table.
    pub fn record(&self, node: NodeId) -> Option<&PeerRecord> {
        self.peers.get(&node).map(|p| &p.record)
    }

    /// Peers currently alive or suspect, in node-id order.
    pub fn present(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers
            .values()
            .filter(|p| matches!(p.state, PeerState::Alive | PeerState::Suspect))
            .map(|p| &p.record)
    }

    /// How many peers the table holds, departed ones included.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when the table holds no peer.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> LivenessConfig {
        LivenessConfig {
            suspect_after: 300 * MS,
            lost_after: 500 * MS,
            check_interval: 50 * MS,
            forget_after: 5000 * MS,
            max_peers: 3,
        }
    }

    fn ann(id: u128, incarnation: u64, sequence: u64) -> Announcement {
        let mut a = Announcement::new(NodeId(id), format!("n{id}")).incarnation(incarnation);
        a.sequence = sequence;
        a
    }

    fn event(o: Observation) -> DiscoveryEvent {
        match o {
            Observation::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn first_announcement_is_discovered_then_refreshed() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        assert!(matches!(
            event(l.observe(&ann(1, 1, 1), t0)),
            DiscoveryEvent::Discovered(r) if r.node_id == NodeId(1)
        ));
        assert_eq!(l.observe(&ann(1, 1, 2), t0 + MS), Observation::Refreshed);
        assert_eq!(l.state(NodeId(1)), Some(PeerState::Alive));
    }

    #[test]
    fn duplicates_and_reordered_announcements_are_stale() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        l.observe(&ann(1, 5, 10), t0);
        assert_eq!(l.observe(&ann(1, 5, 10), t0), Observation::Stale);
        assert_eq!(l.observe(&ann(1, 5, 9), t0), Observation::Stale);
        assert_eq!(l.observe(&ann(1, 4, 99), t0), Observation::Stale);
    }

    #[test]
    fn silence_goes_suspect_then_lost_at_the_bounds() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        l.observe(&ann(1, 1, 1), t0);
        assert!(l.tick(t0 + 299 * MS).is_empty());
        assert_eq!(
            l.tick(t0 + 300 * MS),
            vec![DiscoveryEvent::Suspect(NodeId(1))]
        );
        assert!(l.tick(t0 + 499 * MS).is_empty());
        assert_eq!(l.tick(t0 + 500 * MS), vec![DiscoveryEvent::Lost(NodeId(1))]);
        assert!(l.tick(t0 + 600 * MS).is_empty());
        assert_eq!(l.state(NodeId(1)), Some(PeerState::Lost));
    }

    #[test]
    fn a_long_gap_reports_suspect_and_lost_in_order() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        l.observe(&ann(1, 1, 1), t0);
        assert_eq!(
            l.tick(t0 + 2000 * MS),
            vec![
                DiscoveryEvent::Suspect(NodeId(1)),
                DiscoveryEvent::Lost(NodeId(1))
            ]
        );
    }

    #[test]
    fn suspect_peer_heard_again_recovers_or_updates() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        l.observe(&ann(1, 1, 1), t0);
        l.tick(t0 + 300 * MS);
        assert_eq!(
            event(l.observe(&ann(1, 1, 2), t0 + 350 * MS)),
            DiscoveryEvent::Recovered(NodeId(1))
        );
        l.tick(t0 + 700 * MS);
        let moved = ann(1, 1, 3).group("lab-4");
        assert!(matches!(
            event(l.observe(&moved, t0 + 710 * MS)),
            DiscoveryEvent::Updated(r) if r.group.as_deref() == Some("lab-4")
        ));
        assert_eq!(l.state(NodeId(1)), Some(PeerState::Alive));
    }

    #[test]
    fn changed_record_is_updated() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        l.observe(&ann(1, 1, 1), t0);
        let moved = ann(1, 1, 2).endpoint("tcp://127.0.0.1:5");
        assert!(matches!(
            event(l.observe(&moved, t0)),
            DiscoveryEvent::Updated(r) if r.endpoints == ["tcp://127.0.0.1:5"]
        ));
    }

    #[test]
    fn lost_peer_heard_again_has_returned() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        l.observe(&ann(1, 1, 1), t0);
        l.tick(t0 + 600 * MS);
        assert!(matches!(
            event(l.observe(&ann(1, 1, 2), t0 + 700 * MS)),
            DiscoveryEvent::Returned(_)
        ));
        assert_eq!(l.state(NodeId(1)), Some(PeerState::Alive));
    }

    #[test]
    fn new_incarnation_of_a_live_peer_has_returned() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        l.observe(&ann(1, 1, 50), t0);
        assert!(matches!(
            event(l.observe(&ann(1, 2, 0), t0 + MS)),
            DiscoveryEvent::Returned(r) if r.incarnation == 2
        ));
    }

    #[test]
    fn graceful_leave_is_reported_once_and_not_timed_out() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        l.observe(&ann(1, 1, 1), t0);
        let mut bye = ann(1, 1, 2);
        bye.leaving = true;
        assert_eq!(
            event(l.observe(&bye, t0 + MS)),
            DiscoveryEvent::Left(NodeId(1))
        );
        bye.sequence = 3;
        assert_eq!(l.observe(&bye, t0 + 2 * MS), Observation::Refreshed);
        assert!(l.tick(t0 + 1000 * MS).is_empty());
        assert_eq!(l.mark_lost(NodeId(1), t0 + 1000 * MS), None);
        assert!(matches!(
            event(l.observe(&ann(1, 2, 0), t0 + 1100 * MS)),
            DiscoveryEvent::Returned(_)
        ));
    }

    #[test]
    fn leave_from_an_unknown_peer_is_ignored() {
        let mut bye = ann(1, 1, 1);
        bye.leaving = true;
        let mut l = Liveness::new(config());
        assert_eq!(l.observe(&bye, Instant::now()), Observation::Stale);
        assert!(l.is_empty());
    }

    #[test]
    fn mark_lost_reports_once() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        l.observe(&ann(1, 1, 1), t0);
        assert_eq!(
            l.mark_lost(NodeId(1), t0),
            Some(DiscoveryEvent::Lost(NodeId(1)))
        );
        assert_eq!(l.mark_lost(NodeId(1), t0), None);
        assert_eq!(l.mark_lost(NodeId(2), t0), None);
    }

    #[test]
    fn table_is_bounded_and_departed_peers_are_forgotten() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        for id in 1..=3 {
            l.observe(&ann(id, 1, 1), t0);
        }
        assert_eq!(l.observe(&ann(4, 1, 1), t0), Observation::TableFull);
        l.tick(t0 + 600 * MS);
        assert_eq!(l.len(), 3);
        assert_eq!(l.present().count(), 0);
        l.tick(t0 + 5000 * MS);
        assert!(l.is_empty());
        assert!(matches!(
            event(l.observe(&ann(4, 1, 1), t0 + 5001 * MS)),
            DiscoveryEvent::Discovered(_)
        ));
    }

    #[test]
    fn config_validation_names_the_problem() {
        let mut c = config();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.detection_bound(), 550 * MS);
        c.lost_after = c.suspect_after;
        assert!(c.validate().unwrap_err().contains("lost_after"));
        assert_eq!(LivenessConfig::default().validate(), Ok(()));
    }
}
