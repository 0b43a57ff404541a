//! Reconnecting connections: a [`Connection`](super::Connection) made from an
//! address that redials with jittered exponential backoff whenever its link
//! drops.
//!
//! Calls made while no link is up wait for the next one, up to their
//! deadline. A failed call is retried by the connection's [`RetryPolicy`]:
//! one the peer never ran (it was closing or overloaded) always, one cut off
//! by a dropped link only when it is marked idempotent — any other call fails
//! with `ConnectionLost`, because it may already have run.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::retry::RetryPolicy;
use super::scope::CallScope;
use super::{CallOptions, Connection, Inbound, Outbound, Reply, Shared};
use crate::error::{CallError, ConnectError};
use crate::transport::Url;

/// How a reconnecting connection waits between attempts.
///
/// The n-th wait is `initial * multiplier^n`, capped at `max`, then jittered
/// to a random point in its upper half so that many clients of one restarted
/// server do not redial in lockstep.
///
/// ```
/// use std::time::Duration;
/// let b = plexus::retry::Backoff::new().initial(Duration::from_millis(10)).max(Duration::from_secs(1));
/// let d = b.delay(3);
/// assert!(d >= Duration::from_millis(40) && d <= Duration::from_millis(80));
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: u32,
    max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            multiplier: 2,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// 50 ms doubling up to 5 s, retrying forever.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first wait.
    pub fn initial(mut self, d: Duration) -> Self {
        self.initial = d.max(Duration::from_millis(1));
        self
    }

    /// The longest wait.
    pub fn max(mut self, d: Duration) -> Self {
        self.max = d.max(self.initial);
        self
    }

    /// Growth factor per failed attempt (at least 1).
    pub fn multiplier(mut self, m: u32) -> Self {
        self.multiplier = m.max(1);
        self
    }

    /// Gives up after this many consecutive failed attempts; calls then fail
    /// with `ConnectionLost`.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// The consecutive failed attempts after which to give up, if any.
    pub fn attempts_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The wait after `attempt` consecutive failures (0-based), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .checked_pow(attempt.min(32))
            .unwrap_or(u32::MAX);
        let base = self
            .initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max);
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// What the redial task publishes.
#[derive(Clone)]
pub(crate) enum LinkState {
    Connecting,
    Up(Arc<Shared>),
    Stopped(Arc<str>),
}

/// How a reconnecting connection makes each link: its endpoint's `connect`,
/// handed in by the endpoint (which sits above connections).
pub(crate) type Dial =
    Box<dyn Fn(&Url) -> BoxFuture<'static, Result<Connection, ConnectError>> + Send + Sync>;

/// The caller-side half of a reconnecting connection.
pub(crate) struct Redial {
    pub(crate) url: Url,
    pub(crate) label: Arc<str>,
    pub(crate) state: watch::Receiver<LinkState>,
    pub(crate) stop: CancellationToken,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) local: crate::NodeId,
    retry: RetryPolicy,
}

impl Drop for Redial {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Redial {
    /// Starts the redial task and returns the handle calls go through:
    /// `dial` makes each link of the endpoint whose node id is `local` and
    /// whose calls default to `default_timeout`.
    pub(crate) fn start(
        dial: Dial,
        local: crate::NodeId,
        default_timeout: Option<Duration>,
        url: Url,
        backoff: Backoff,
        retry: RetryPolicy,
    ) -> Redial {
        let (tx, rx) = watch::channel(LinkState::Connecting);
        let stop = CancellationToken::new();
        let task_stop = stop.clone();
        let task_url = url.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let attempt = tokio::select! {
                    _ = task_stop.cancelled() => break,
                    a = dial(&task_url) => a,
                };
                match attempt {
                    Ok(conn) => {
                        failures = 0;
                        let Some(shared) = conn.direct_shared() else {
                            break;
                        };
                        let _ = tx.send(LinkState::Up(shared.clone()));
                        tokio::select! {
                            _ = task_stop.cancelled() => {
                                conn.close().await;
                                break;
                            }
                            reason = conn.closed() => {
                                tracing::debug!(url = %task_url, "link lost ({reason}); redialing");
                                let _ = tx.send(LinkState::Connecting);
                            }
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if backoff.max_attempts.is_some_and(|m| failures >= m) {
                            let reason = format!("gave up after {failures} attempts: {e}");
                            let _ = tx.send(LinkState::Stopped(reason.into()));
                            return;
                        }
                        tracing::debug!(url = %task_url, "dial failed ({e}); retrying");
                        tokio::select! {
                            _ = task_stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff.delay(failures - 1)) => {}
                        }
                    }
                }
            }
            let _ = tx.send(LinkState::Stopped("closed by this side".into()));
        });
        let label: Arc<str> = format!("{url} (reconnecting)").into();
        Redial {
            url,
            label,
            state: rx,
            stop,
            default_timeout,
            local,
            retry,
        }
    }

    /// The current live link, waiting for one up to `deadline`.
    pub(crate) async fn link(
        &self,
        op: &str,
        deadline: Option<Instant>,
        after: Duration,
    ) -> Result<Arc<Shared>, CallError> {
        let mut rx = self.state.clone();
        loop {
            match &*rx.borrow_and_update() {
                LinkState::Up(s) if s.accepting_calls() => return Ok(s.clone()),
                LinkState::Stopped(reason) => {
                    return Err(CallError::ConnectionLost {
                        op: op.into(),
                        peer: self.label.clone(),
                        reason: reason.clone(),
                    })
                }
                _ => {}
            }
            let changed = rx.changed();
            let outcome = match deadline {
                Some(d) => match tokio::time::timeout_at(d, changed).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(CallError::Timeout {
                            op: op.into(),
                            peer: self.label.clone(),
                            after,
                        })
                    }
                },
                None => changed.await,
            };
            if outcome.is_err() {
                return Err(CallError::ConnectionLost {
                    op: op.into(),
                    peer: self.label.clone(),
                    reason: "the connection was closed".into(),
                });
            }
        }
    }

    /// The deadline of a call with `opts` (its own timeout, the default for
    /// unary calls, or the one it inherits from the call being served), and
    /// the served call it is a child of.
    fn deadline(
        &self,
        op: &str,
        opts: &CallOptions,
        unary: bool,
    ) -> Result<(Option<Instant>, Duration, Option<CallScope>), CallError> {
        let own = if unary {
            opts.timeout.or(self.default_timeout)
        } else {
            opts.timeout
        };
        let (t, parent) = opts.inherit(op, &self.label, own)?;
        Ok((t.map(|t| Instant::now() + t), t.unwrap_or_default(), parent))
    }

    pub(crate) async fn call(
        &self,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<Bytes, CallError> {
        let (deadline, after, parent) = self.deadline(op, &opts, true)?;
        let budget = self.retry.retry_budget();
        budget.deposit();
        let attempts = async {
            let mut retries = 0;
            loop {
                let link = self.link(op, deadline, after).await?;
                let mut attempt = opts.clone();
                if let Some(d) = deadline {
                    attempt.timeout = Some(d.saturating_duration_since(Instant::now()));
                }
                match link.call(op, body.clone(), attempt).await {
                    // Refused by a link on its way out, before it ran: the
                    // next link takes it, which is no retry.
                    Err(CallError::Closing { .. }) => {}
                    Err(e) if self.retry.retries(&e, opts.idempotent) => {
                        let Some(wait) = self.retry.admit(retries, deadline) else {
                            return Err(e);
                        };
                        retries += 1;
                        tracing::debug!(op, retries, "retrying after {wait:?}: {e}");
                        tokio::time::sleep(wait).await;
                    }
                    other => return other,
                }
            }
        };
        match parent {
            None => attempts.await,
            Some(p) => tokio::select! {
                biased;
                r = attempts => r,
                () = p.token.cancelled() => Err(CallError::Cancelled {
                    op: op.into(),
                    peer: self.label.clone(),
                }),
            },
        }
    }

    pub(crate) async fn oneway(
        &self,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<(), CallError> {
        let (deadline, after, _) = self.deadline(op, &opts, true)?;
        self.link(op, deadline, after)
            .await?
            .oneway(op, body, opts)
            .await
    }

    pub(crate) async fn server_stream(
        &self,
        op: &str,
        body: Bytes,
        opts: CallOptions,
    ) -> Result<Inbound, CallError> {
        let (deadline, after, _) = self.deadline(op, &opts, false)?;
        self.link(op, deadline, after)
            .await?
            .server_stream(op, body, opts)
            .await
    }

    pub(crate) async fn client_stream(
        &self,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Reply), CallError> {
        let (deadline, after, _) = self.deadline(op, &opts, false)?;
        self.link(op, deadline, after)
            .await?
            .client_stream(op, opts)
            .await
    }

    pub(crate) async fn bidi(
        &self,
        op: &str,
        opts: CallOptions,
    ) -> Result<(Outbound, Inbound), CallError> {
        let (deadline, after, _) = self.deadline(op, &opts, false)?;
        self.link(op, deadline, after).await?.bidi(op, opts).await
    }

    /// The live link right now, if any.
    pub(crate) fn current(&self) -> Option<Arc<Shared>> {
        match &*self.state.borrow() {
            LinkState::Up(s) if !s.closed.is_cancelled() => Some(s.clone()),
            _ => None,
        }
    }
}
