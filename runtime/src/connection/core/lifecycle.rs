//! Where a connection is in its life, as both sides' goaways left it
//! (PROTOCOL.md §11): open, draining after this side's goaway, closed; the
//! peer's goaway and what it said; and the highest call of the peer's this
//! side admitted, which every goaway this side sends carries (§11.4).

use super::super::CloseReason;
use crate::wire::SystemCode;

/// This side's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Calls are opened and served.
    Open,
    /// This side sent its goaway: it serves no new calls and opens none.
    Draining,
    /// The connection has ended.
    Closed,
}

/// The lifecycle of one connection.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    state: State,
    /// The smallest `last_id` any goaway of the peer's brought (`u32::MAX`
    /// until one arrives): this side's calls above it were not taken.
    peer_last_id: u32,
    /// Whether the peer sent a goaway: it takes no new calls.
    peer_draining: bool,
    /// The close reason the first goaway with an error code makes.
    peer_error: Option<CloseReason>,
    /// The highest id of the peer's calls this side admitted (0: none).
    highest_admitted: u32,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            state: State::Open,
            peer_last_id: u32::MAX,
            peer_draining: false,
            peer_error: None,
            highest_admitted: 0,
        }
    }
}

impl Lifecycle {
    /// Whether this side may open a call: it is open and the peer is not
    /// going away (§11.1, both lists).
    pub(crate) fn opens_calls(&self) -> bool {
        self.state == State::Open && !self.peer_draining
    }

    /// Whether this side takes new calls from the peer. A peer's goaway does
    /// not change it: a draining peer's late calls are served (§11.1).
    pub(crate) fn serves_new_calls(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The peer's call `id` was admitted; goaways from now on include it.
    pub(crate) fn admitted(&mut self, id: u32) {
        self.highest_admitted = self.highest_admitted.max(id);
    }

    /// The `last_id` every goaway this side sends carries (§11.4).
    pub(crate) fn last_admitted(&self) -> u32 {
        self.highest_admitted
    }

    /// This side closes gracefully: `Some(last_id)` for the goaway to send
    /// if this switched it to draining, `None` if it was draining or closed
    /// already. The switch and every admission happen under the same lock,
    /// so a call is either admitted and within `last_id`, or refused.
    pub(crate) fn drain(&mut self) -> Option<u32> {
        if self.state != State::Open {
            return None;
        }
        self.state = State::Draining;
        Some(self.highest_admitted)
    }

    /// The peer's goaway arrived (§11.1, §11.4). For a non-zero `code`,
    /// returns the reason to log and remembers what it makes the close
    /// reason (the first one wins).
    pub(crate) fn peer_goaway(
        &mut self,
        last_id: u32,
        code: u32,
        reason: String,
    ) -> Option<String> {
        self.peer_last_id = self.peer_last_id.min(last_id);
        self.peer_draining = true;
        if code == 0 {
            return None;
        }
        if self.peer_error.is_none() {
            let why = if code == SystemCode::ResourceExhausted as u32
                || code == SystemCode::PermissionDenied as u32
            {
                CloseReason::CutOff(reason.clone())
            } else {
                CloseReason::Protocol(format!("reported by the peer: {reason}"))
            };
            self.peer_error = Some(why);
        }
        Some(reason)
    }

    /// What the end of the peer's stream makes the close reason (§11.1):
    /// what an error goaway said, `Remote` after a goaway or while this side
    /// drains, `PeerGone` otherwise.
    pub(crate) fn end_of_stream(&self) -> CloseReason {
        if let Some(why) = &self.peer_error {
            why.clone()
        } else if self.state == State::Open && !self.peer_draining {
            CloseReason::PeerGone
        } else {
            CloseReason::Remote
        }
    }

    /// Whether this side's call `id`, still open as the connection ends, was
    /// never taken by the peer (above its goaway's `last_id`): safe to send
    /// again elsewhere (§11.4).
    pub(crate) fn unprocessed(&self, id: u32) -> bool {
        id > self.peer_last_id
    }

    /// The connection ends.
    pub(crate) fn close(&mut self) {
        self.state = State::Closed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graceful_close_drains_once_and_names_the_highest_admitted_call() {
        let mut life = Lifecycle::default();
        life.admitted(7);
        life.admitted(3);
        assert!(life.serves_new_calls() && life.opens_calls());
        assert_eq!(life.drain(), Some(7));
        assert_eq!(life.drain(), None, "the goaway goes out once");
        assert!(!life.serves_new_calls());
        assert!(!life.opens_calls());
        assert_eq!(life.end_of_stream(), CloseReason::Remote);
        life.close();
        assert_eq!(life.drain(), None);
        assert!(life.is_closed());
    }

    #[test]
    fn the_peers_goaway_stops_this_sides_calls_but_not_its_serving() {
        let mut life = Lifecycle::default();
        assert_eq!(life.peer_goaway(5, 0, "closing".into()), None);
        assert!(!life.opens_calls());
        assert!(
            life.serves_new_calls(),
            "a draining peer's late calls are served"
        );
        assert_eq!(life.end_of_stream(), CloseReason::Remote);
    }

    #[test]
    fn calls_above_the_smallest_last_id_were_never_taken() {
        let mut life = Lifecycle::default();
        assert!(!life.unprocessed(u32::MAX - 1), "no goaway: no limit");
        life.peer_goaway(9, 0, String::new());
        life.peer_goaway(21, 0, String::new());
        assert!(!life.unprocessed(9));
        assert!(life.unprocessed(11), "the smaller last id holds");
    }

    #[test]
    fn the_first_error_goaway_decides_the_close_reason() {
        let mut life = Lifecycle::default();
        assert_eq!(
            life.peer_goaway(0, SystemCode::ResourceExhausted as u32, "full".into()),
            Some("full".into())
        );
        life.peer_goaway(0, SystemCode::Protocol as u32, "later".into());
        assert_eq!(life.end_of_stream(), CloseReason::CutOff("full".into()));

        let mut life = Lifecycle::default();
        life.peer_goaway(0, SystemCode::Protocol as u32, "bad frame".into());
        assert_eq!(
            life.end_of_stream(),
            CloseReason::Protocol("reported by the peer: bad frame".into())
        );
        let mut life = Lifecycle::default();
        life.peer_goaway(0, SystemCode::PermissionDenied as u32, "revoked".into());
        assert_eq!(life.end_of_stream(), CloseReason::CutOff("revoked".into()));
    }

    #[test]
    fn a_stream_that_ends_without_a_goaway_is_a_peer_gone() {
        assert_eq!(Lifecycle::default().end_of_stream(), CloseReason::PeerGone);
    }
}
