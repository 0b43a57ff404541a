//! The two pinned runtimes every system is measured on.
//!
//! Fairness on a small machine comes from giving every system the same
//! threads: one server runtime and one client runtime, each a tokio
//! multi-thread runtime with exactly one worker. Work is always spawned onto a
//! runtime (never run inside `block_on` on the calling thread), so the server
//! side of every system runs on the server worker and the client side on the
//! client worker, and nothing else does any work. The two runtimes are
//! pinned to a CPU each, so no run lands with both on one CPU while the
//! other idles (which made whole runs of every system slow at random).

use std::future::Future;

use tokio::runtime::{Builder, Runtime};

use crate::BoxError;

/// How the runtimes are pinned, for the output and for `BENCHMARKS.md`.
pub const PINNING: &str =
    "two tokio runtimes, each `Builder::new_multi_thread().worker_threads(1)`: \
one runs every server, the other every client; all work is spawned onto the worker \
threads, so each side has exactly one thread, identical for every system; the server \
runtime's threads are pinned to CPU 0 and the client's to CPU 1";

/// The server runtime and the client runtime.
pub struct Rig {
    server: Runtime,
    client: Runtime,
}

impl Rig {
    pub fn new() -> Result<Rig, BoxError> {
        Ok(Rig {
            server: one_worker("bench-server", 0)?,
            client: one_worker("bench-client", 1)?,
        })
    }

    /// Runs `work` on the server runtime's worker and waits for it.
    pub fn server<F>(&self, work: F) -> Result<F::Output, BoxError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Ok(self.server.block_on(self.server.spawn(work))?)
    }

    /// Runs `work` on the client runtime's worker and waits for it.
    pub fn client<F>(&self, work: F) -> Result<F::Output, BoxError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Ok(self.client.block_on(self.client.spawn(work))?)
    }
}

fn one_worker(name: &str, cpu: usize) -> std::io::Result<Runtime> {
    Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || pin_to(cpu))
        .enable_all()
        .build()
}

/// Pins the calling thread to `cpu`, when the machine has it.
fn pin_to(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpu >= cpus {
        return;
    }
    // SAFETY: `set` is a zeroed, properly sized cpu_set_t that only the
    // libc macros touch, and pid 0 names the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
