//! The well-behaved client: one Plexus connection, opened before the attack,
//! calling the victim's echo every 20 ms until the attack is over. Its calls,
//! failures and slowest answer say whether the victim kept serving others
//! while it was attacked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus::{Bytes, CallOptions, Connection};
use tokio::task::JoinHandle;

use crate::resilience::victim::ECHO;
use crate::BoxError;

/// Time between two calls.
const PACE: Duration = Duration::from_millis(20);
/// Each call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most calls it makes, however long the attack lasts (20 minutes' worth).
const MAX_CALLS: u64 = 60_000;

/// What the well-behaved client saw.
#[derive(Clone, Debug, Default)]
pub struct Served {
    pub calls: u64,
    pub failures: u64,
    /// The slowest successful call, and when it began.
    pub slowest: Duration,
    pub slowest_at: Option<Instant>,
    /// The first failure, in words.
    pub first_failure: Option<String>,
}

/// The running client.
pub struct Steady {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Served>,
}

impl Steady {
    /// Connects to `url` and starts calling.
    pub async fn start(url: &str) -> Result<Steady, BoxError> {
        let conn = Connection::connect(url).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut served = Served::default();
                while !stop.load(Ordering::Relaxed) && served.calls < MAX_CALLS {
                    let started = Instant::now();
                    let opts = CallOptions::new().timeout(CALL_TIMEOUT);
                    match conn.call(ECHO, Bytes::from_static(b"ok"), opts).await {
                        Ok(reply) if &reply[..] == b"ok" => {
                            if started.elapsed() > served.slowest {
                                served.slowest = started.elapsed();
                                served.slowest_at = Some(started);
                            }
                        }
                        Ok(reply) => fail(&mut served, format!("echo came back as {reply:?}")),
                        Err(e) => fail(&mut served, e.to_string()),
                    }
                    served.calls += 1;
                    tokio::time::sleep(PACE).await;
                }
                conn.close().await;
                served
            }
        });
        Ok(Steady { stop, task })
    }

    /// Stops calling and says what it saw.
    pub async fn finish(self) -> Result<Served, BoxError> {
        self.stop.store(true, Ordering::Relaxed);
        // At most one call in progress, bounded by its timeout.
        let limit = CALL_TIMEOUT + Duration::from_secs(5);
        Ok(tokio::time::timeout(limit, self.task)
            .await
            .map_err(|_| "the well-behaved client did not stop")??)
    }
}

fn fail(served: &mut Served, why: String) {
    served.failures += 1;
    served.first_failure.get_or_insert(why);
}
