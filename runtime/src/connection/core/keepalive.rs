//! The keepalive rule (PROTOCOL.md §10): at every check, a peer silent for
//! the timeout is lost, one silent for the interval is pinged. The shell is
//! the keepalive in the connection's writer task: it checks on a timer,
//! measures the silence and does what [`Keepalive::check`] says.

use std::time::Duration;

/// What a keepalive check decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Beat {
    /// The peer was heard recently enough: nothing to do.
    Quiet,
    /// Send a ping carrying this value (they count up from 1).
    Ping(u64),
    /// Nothing was heard for this long: the peer is lost; close without a goaway.
    Lost(Duration),
}

/// One connection's keepalive: its interval, timeout and ping counter.
#[derive(Debug)]
pub(crate) struct Keepalive {
    interval: Duration,
    timeout: Duration,
    sent: u64,
}

impl Keepalive {
    /// Checks every `interval`; a peer silent for `timeout` is lost.
    pub(crate) fn new(interval: Duration, timeout: Duration) -> Keepalive {
        Keepalive {
            interval,
            timeout,
            sent: 0,
        }
    }

    /// How often the shell checks.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// A check, with nothing heard from the peer for `silent`. While the
    /// reader holds the peer back (`held_back`) it is not listening, so the
    /// silence says nothing about the peer and never loses it (the stall rule
    /// covers a peer that does not read); pings still go out, so the peer
    /// hears this side.
    pub(crate) fn check(&mut self, silent: Duration, held_back: bool) -> Beat {
        if silent >= self.timeout && !held_back {
            return Beat::Lost(silent);
        }
        if silent >= self.interval {
            self.sent += 1;
            return Beat::Ping(self.sent);
        }
        Beat::Quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_peer_heard_within_the_interval_is_left_alone() {
        let mut k = Keepalive::new(S(5), S(15));
        assert_eq!(k.check(S(0), false), Beat::Quiet);
        assert_eq!(k.check(Duration::from_millis(4_999), false), Beat::Quiet);
    }

    #[test]
    fn a_silent_peer_is_pinged_with_values_counting_up() {
        let mut k = Keepalive::new(S(5), S(15));
        assert_eq!(k.check(S(5), false), Beat::Ping(1));
        assert_eq!(k.check(S(10), false), Beat::Ping(2));
        assert_eq!(k.check(S(1), false), Beat::Quiet);
        assert_eq!(k.check(S(7), false), Beat::Ping(3));
    }

    #[test]
    fn a_peer_silent_for_the_timeout_is_lost() {
        let mut k = Keepalive::new(S(5), S(15));
        assert_eq!(k.check(S(15), false), Beat::Lost(S(15)));
        assert_eq!(k.check(S(40), false), Beat::Lost(S(40)));
    }

    #[test]
    fn a_peer_held_back_by_this_side_is_pinged_but_never_lost() {
        let mut k = Keepalive::new(S(5), S(15));
        assert_eq!(k.check(S(60), true), Beat::Ping(1));
        assert_eq!(k.check(S(60), false), Beat::Lost(S(60)));
    }
}
