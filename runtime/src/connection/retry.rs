//! Retrying calls: which failures are worth another attempt, how long to
//! wait before it, and a budget that keeps retries from multiplying load.
//!
//! Owns [`RetryPolicy`] and [`RetryBudget`]. The policy is pure decisions
//! (is this failure retryable, how long to wait, is there time left); the
//! budget is a token bucket shared by every call made through one client,
//! balancer or reconnecting connection. The loops that act on them live
//! with their callers: the reconnecting connection (`redial`) and the
//! balancer of a peer set (`patterns::Balancer`), which also hedges.
//!
//! Plexus can retry where tonic and volo cannot: a request is a `Bytes`
//! (or a closure that makes the call again), so resending it costs a
//! reference count, not a copy.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::redial::Backoff;
use crate::error::CallError;

/// How a call that failed in a retryable way is tried again.
///
/// A failure is retried when
/// - the peer never ran the call ([`CallError::Closing`],
///   [`CallError::Overloaded`]) — whatever the operation; or
/// - the operation is idempotent and the failure may be passing: the
///   connection was lost under it ([`CallError::ConnectionLost`]), or the
///   handler rejected it with one of the codes given to
///   [`retry_rejects`](Self::retry_rejects).
///
/// Each retry waits the [`Backoff`]'s jittered delay first, is refused if
/// that wait would pass the call's deadline (the call's own, or the one it
/// inherited), and must take a token from the [`RetryBudget`]. A call gets at
/// most [`attempts`](Self::attempts) tries in all.
///
/// ```
/// use std::time::Duration;
/// use plexus::retry::{Backoff, RetryBudget, RetryPolicy};
///
/// let policy = RetryPolicy::new()
///     .attempts(4)
///     .backoff(Backoff::new().initial(Duration::from_millis(20)).max(Duration::from_millis(500)))
///     .budget(RetryBudget::new(0.1, 5))
///     .retry_rejects(&[503]);
/// assert_eq!(policy.max_attempts(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    attempts: u32,
    backoff: Backoff,
    budget: RetryBudget,
    rejects: Vec<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Backoff::new()
                .initial(Duration::from_millis(10))
                .max(Duration::from_secs(1)),
            budget: RetryBudget::default(),
            rejects: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Three attempts in all, 10 ms doubling to 1 s between them (jittered),
    /// the default [`RetryBudget`] (20 % of calls plus 10 a second), no
    /// rejection codes retried.
    pub fn new() -> Self {
        Self::default()
    }

    /// No retries at all: one attempt.
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..Self::default()
        }
    }

    /// Attempts in all, the first included (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The wait before each retry: the n-th retry waits `backoff.delay(n)`.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The budget retries draw from. Policies cloned from one share it; give
    /// every client of one service the same budget so that together they
    /// cannot multiply the load on it.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Also retries idempotent operations the handler rejected with one of
    /// `codes` (say, an application's "unavailable, try again").
    pub fn retry_rejects(mut self, codes: &[u32]) -> Self {
        self.rejects = codes.to_vec();
        self
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The budget retries draw from.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Whether `error` is worth another attempt for an operation that is
    /// (or is not) idempotent. Says nothing about attempts, time or budget.
    pub fn retries(&self, error: &CallError, idempotent: bool) -> bool {
        match error {
            CallError::Closing { .. } | CallError::Overloaded { .. } => true,
            CallError::ConnectionLost { .. } => idempotent,
            CallError::Rejected(r) => idempotent && self.rejects.contains(&r.code()),
            _ => false,
        }
    }

    /// The wait before retry number `retry` (0-based).
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        self.backoff.delay(retry)
    }

    /// Whether retry number `retry` may go: attempts left, its wait ends
    /// before `deadline`, and the budget has a token (taken if so). Returns
    /// the wait.
    pub(crate) fn admit(&self, retry: u32, deadline: Option<Instant>) -> Option<Duration> {
        if retry + 1 >= self.attempts {
            return None;
        }
        let wait = self.delay(retry);
        if deadline.is_some_and(|d| Instant::now() + wait >= d) {
            return None;
        }
        self.budget.withdraw().then_some(wait)
    }
}

/// A token bucket limiting retries to a share of the calls made: over any
/// stretch of time, retries (and hedged attempts) are at most `ratio` times
/// the calls made plus `min_per_second` per second, with at most
/// `min_per_second + 100 × ratio` of unused allowance saved up.
///
/// So when a service fails every call, its callers add at most `ratio`
/// more load instead of multiplying it by the attempts; when it is healthy,
/// occasional failures are always retried. Clones share one bucket.
///
/// ```
/// let budget = plexus::retry::RetryBudget::new(0.2, 10);
/// assert_eq!(budget.stats().retries, 0);
/// ```
#[derive(Clone, Debug)]
pub struct RetryBudget {
    inner: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    ratio: f64,
    per_second: f64,
    cap: f64,
    tokens: f64,
    refilled: Instant,
    stats: RetryStats,
}

/// What a [`RetryBudget`] has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryStats {
    /// Calls made (first attempts).
    pub calls: u64,
    /// Retries and hedged attempts the budget let through.
    pub retries: u64,
    /// Retries it refused: the call returned its last failure instead.
    pub refused: u64,
}

impl Default for RetryBudget {
    /// 20 % of calls plus 10 a second.
    fn default() -> Self {
        RetryBudget::new(0.2, 10)
    }
}

impl RetryBudget {
    /// Retries may add `ratio` (0 to 1000; e.g. 0.2 = 20 %) of the calls made,
    /// plus `min_per_second` a second however few calls there are.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let per_second = f64::from(min_per_second);
        let cap = per_second + 100.0 * ratio;
        RetryBudget {
            inner: Arc::new(Mutex::new(Bucket {
                ratio,
                per_second,
                cap,
                tokens: per_second.min(cap),
                refilled: Instant::now(),
                stats: RetryStats::default(),
            })),
        }
    }

    /// No limit: every retry the policy allows goes.
    pub fn unlimited() -> Self {
        RetryBudget::new(1000.0, u32::MAX)
    }

    fn bucket(&self) -> MutexGuard<'_, Bucket> {
        // Every critical section is arithmetic; a panic cannot tear one.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call was made: it earns `ratio` of a retry.
    pub(crate) fn deposit(&self) {
        let mut b = self.bucket();
        b.refill();
        b.tokens = (b.tokens + b.ratio).min(b.cap);
        b.stats.calls += 1;
    }

    /// Takes a token for one retry, if there is one.
    pub(crate) fn withdraw(&self) -> bool {
        let mut b = self.bucket();
        b.refill();
        // Tenths added up in floating point fall a hair short of whole
        // tokens; a billionth of slack counts them as whole.
        if b.tokens + 1e-9 >= 1.0 {
            b.tokens = (b.tokens - 1.0).max(0.0);
            b.stats.retries += 1;
            true
        } else {
            b.stats.refused += 1;
            false
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> RetryStats {
        self.bucket().stats
    }
}

impl Bucket {
    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reject;

    fn lost() -> CallError {
        CallError::ConnectionLost {
            op: "t.S/op".into(),
            peer: "p".into(),
            reason: "gone".into(),
        }
    }

    #[test]
    fn only_never_ran_failures_retry_a_call_that_is_not_idempotent() {
        let p = RetryPolicy::new().retry_rejects(&[503]);
        let closing = CallError::Closing {
            op: "t.S/op".into(),
            peer: "p".into(),
        };
        assert!(p.retries(&closing, false));
        assert!(!p.retries(&lost(), false));
        assert!(p.retries(&lost(), true));
        let unavailable = CallError::Rejected(Reject::new(503, "later"));
        assert!(p.retries(&unavailable, true));
        assert!(!p.retries(&unavailable, false));
        assert!(!p.retries(&CallError::Rejected(Reject::new(400, "no")), true));
        let timeout = CallError::Timeout {
            op: "t.S/op".into(),
            peer: "p".into(),
            after: Duration::from_secs(1),
        };
        assert!(
            !p.retries(&timeout, true),
            "a timed-out call has no time left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_service_gets_at_most_ratio_more_calls() {
        let budget = RetryBudget::new(0.1, 0);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            // Every call fails and wants two retries.
            for _ in 0..2 {
                if budget.withdraw() {
                    retries += 1;
                }
            }
        }
        assert_eq!(retries, 100, "10 % of 1000 calls");
        let stats = budget.stats();
        assert_eq!((stats.calls, stats.retries), (1000, 100));
        assert_eq!(stats.refused, 2000 - 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_with_time_up_to_the_cap() {
        let budget = RetryBudget::new(0.0, 5);
        let taken = (0..20).filter(|_| budget.withdraw()).count();
        assert_eq!(taken, 5, "the saved-up floor");
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!((0..20).filter(|_| budget.withdraw()).count(), 2);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..20).filter(|_| budget.withdraw()).count(),
            5,
            "no more than the cap saved up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_never_waits_past_the_deadline_nor_beyond_the_attempts() {
        let p = RetryPolicy::new()
            .attempts(3)
            .backoff(Backoff::new().initial(Duration::from_millis(100)))
            .budget(RetryBudget::unlimited());
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(p.admit(0, Some(soon)), None, "the wait would pass it");
        let later = Instant::now() + Duration::from_secs(10);
        let wait = p.admit(0, Some(later)).expect("time and budget left");
        assert!(wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100));
        assert!(p.admit(1, None).is_some());
        assert_eq!(p.admit(2, None), None, "three attempts in all");
    }
}
