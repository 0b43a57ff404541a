//! The victim process as the attacker sees it: started by re-executing this
//! binary with `--serve-victim`, its output lines kept with the instant
//! each arrived, its resident memory sampled from `/proc/<pid>/status`, and
//! always stopped (killed if it does not stop) when the handle is dropped.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::memory::resident_bytes_of;
use crate::resilience::victim::Tuning;
use crate::BoxError;

/// How often the victim's resident memory is read.
const RSS_EVERY: Duration = Duration::from_millis(2);
/// The longest the victim may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(20);
/// The longest it may take to stop once its input ends.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// One line the victim printed, and when it arrived.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

impl Line {
    /// The tab-separated fields.
    pub fn fields(&self) -> Vec<&str> {
        self.text.split('\t').collect()
    }
}

/// Everything the victim printed so far, in order.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<Line>>,
    /// The line count, for waiters.
    count: tokio::sync::watch::Sender<usize>,
}

/// A running victim.
pub struct Victim {
    child: Child,
    stdin: Option<ChildStdin>,
    log: Arc<Log>,
    rss: Rss,
    /// Its RSS when the attack began, and the instant.
    baseline: u64,
    began: Option<Instant>,
    /// Where it listens (`tcp://127.0.0.1:port`).
    pub url: String,
    /// The same as host:port, for raw dials.
    pub addr: String,
}

impl Victim {
    /// Starts a victim with `tuning` and waits until it listens.
    pub async fn start(tuning: Tuning) -> Result<Victim, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve-victim")
            .arg("tcp://127.0.0.1:0")
            .args(tuning.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("the victim has no stdout")?;
        let log = Arc::new(Log::default());
        std::thread::spawn({
            let log = log.clone();
            move || {
                for text in BufReader::new(stdout).lines() {
                    let Ok(text) = text else { break };
                    let mut lines = log.lines.lock().unwrap_or_else(|e| e.into_inner());
                    lines.push(Line {
                        at: Instant::now(),
                        text,
                    });
                    log.count.send_replace(lines.len());
                }
            }
        });
        let rss = Rss::start(child.id());
        let mut victim = Victim {
            child,
            stdin,
            log,
            rss,
            baseline: 0,
            began: None,
            url: String::new(),
            addr: String::new(),
        };
        let ready = victim
            .wait_line(0, START_LIMIT, |l| l.text.starts_with("ready\t"))
            .await
            .ok_or("the victim did not start listening")?;
        victim.url = ready.fields()[1].to_string();
        victim.addr = victim
            .url
            .strip_prefix("tcp://")
            .ok_or("the victim listens on something other than tcp")?
            .to_string();
        Ok(victim)
    }

    /// Lines printed so far: where to start a later [`wait_line`](Self::wait_line).
    pub fn mark(&self) -> usize {
        self.log
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The first line from index `from` on that `matches`, waiting at most
    /// `limit` for it.
    pub async fn wait_line(
        &self,
        from: usize,
        limit: Duration,
        matches: impl Fn(&Line) -> bool,
    ) -> Option<Line> {
        let mut count = self.log.count.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = from;
        loop {
            {
                let lines = self.log.lines.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(line) = lines.iter().skip(seen).find(|l| matches(l)) {
                    return Some(line.clone());
                }
                seen = seen.max(lines.len());
            }
            match tokio::time::timeout_at(deadline, count.changed()).await {
                Ok(Ok(())) => {}
                // The reader thread ended (the victim exited) or time is up.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Every line from index `from` on that `matches`.
    pub fn lines_since(&self, from: usize, matches: impl Fn(&Line) -> bool) -> Vec<Line> {
        let lines = self.log.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .skip(from)
            .filter(|l| matches(l))
            .cloned()
            .collect()
    }

    /// Sends one command line.
    pub fn command(&mut self, fields: &[&str]) -> Result<(), BoxError> {
        let stdin = self.stdin.as_mut().ok_or("the victim's input is closed")?;
        writeln!(stdin, "{}", fields.join("\t"))?;
        stdin.flush()?;
        Ok(())
    }

    /// Asks for the victim's counters.
    pub async fn stats(&mut self) -> Result<Stats, BoxError> {
        let from = self.mark();
        self.command(&["stats"])?;
        let line = self
            .wait_line(from, Duration::from_secs(10), |l| {
                l.text.starts_with("stats\t")
            })
            .await
            .ok_or("the victim did not answer `stats`")?;
        let f = line.fields();
        if f.len() != 5 {
            return Err(format!("a stats line with {} fields: {}", f.len(), line.text).into());
        }
        Ok(Stats {
            budget_peak: f[1].parse()?,
            held_back: f[2].parse()?,
            connections: f[3].parse()?,
            subscribers: f[4].parse()?,
        })
    }

    /// The attack starts now: takes the baseline RSS, restarts the RSS
    /// peak and the victim's own peaks from here, and returns the instant.
    pub async fn begin(&mut self) -> Result<Instant, BoxError> {
        self.command(&["reset"])?;
        // The answer to `stats` comes after the reset has been done.
        self.stats().await?;
        self.baseline = self.rss.rebase()?;
        let now = Instant::now();
        self.began = Some(now);
        Ok(now)
    }

    /// When the attack began, if it did.
    pub fn began(&self) -> Option<Instant> {
        self.began
    }

    /// How far the RSS rose above the baseline since [`begin`](Self::begin)
    /// at its peak, and where it is now (negative if below the baseline).
    pub fn rss_growth(&self) -> Result<(u64, i64), BoxError> {
        let now = resident_bytes_of(self.child.id()).ok_or("the victim is gone")?;
        let peak = self.rss.peak().max(now);
        Ok((
            peak.saturating_sub(self.baseline),
            now as i64 - self.baseline as i64,
        ))
    }

    /// Ends the victim's input, so it shuts down, and waits for it; kills it
    /// if it does not exit in time.
    pub async fn stop(mut self) -> Result<(), BoxError> {
        self.stdin = None;
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the victim exited with {status}").into())
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("the victim did not stop within {STOP_LIMIT:?}; killed").into())
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        self.rss.stop.store(true, Ordering::Relaxed);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The victim's counters; see the victim's `stats` command.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub budget_peak: usize,
    pub held_back: bool,
    pub connections: usize,
    pub subscribers: usize,
}

/// A thread reading a process's resident memory every [`RSS_EVERY`] and
/// keeping the highest it saw.
struct Rss {
    pid: u32,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Rss {
    fn start(pid: u32) -> Rss {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(now) = resident_bytes_of(pid) else {
                        break;
                    };
                    peak.fetch_max(now, Ordering::Relaxed);
                    std::thread::sleep(RSS_EVERY);
                }
            }
        });
        Rss { pid, peak, stop }
    }

    /// Restarts the peak from the current figure, which it returns.
    fn rebase(&self) -> Result<u64, BoxError> {
        let now = resident_bytes_of(self.pid).ok_or("the victim is gone")?;
        self.peak.store(now, Ordering::Relaxed);
        Ok(now)
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// The soft limit on open files of this process (which a victim inherits),
/// from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_limit_on_open_files() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
