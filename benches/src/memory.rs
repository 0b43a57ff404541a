//! Memory accounting: resident set size from `/proc/self/status`, and heap
//! bytes and allocation counts from a counting allocator that only counts
//! inside a [`HeapWindow`] (one relaxed load otherwise, the same for every
//! system). Windows are opened only outside timed loops.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

/// The system allocator, with a live-bytes counter that can be switched on.
pub struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

/// Net heap bytes, and allocations made (reallocations included), while
/// counting was on.
pub struct HeapWindow;

/// What a [`HeapWindow`] saw.
pub struct HeapUse {
    /// Net bytes allocated (allocated minus freed).
    pub net_bytes: isize,
    /// Calls to `alloc` and `realloc`.
    pub allocations: usize,
}

impl HeapWindow {
    /// Starts counting from zero.
    pub fn open() -> HeapWindow {
        LIVE.store(0, Ordering::Relaxed);
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        HeapWindow
    }

    /// Stops counting; returns what happened since `open`.
    pub fn close(self) -> HeapUse {
        COUNTING.store(false, Ordering::Relaxed);
        HeapUse {
            net_bytes: LIVE.load(Ordering::Relaxed),
            allocations: ALLOCATIONS.load(Ordering::Relaxed),
        }
    }
}

/// This process's resident set size in bytes, from `VmRSS` in `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The resident set size of process `pid` in bytes, from `/proc/<pid>/status`
/// (`None` once the process is gone).
pub fn resident_bytes_of(pid: u32) -> Option<u64> {
    vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The `VmRSS` line of a `/proc/<pid>/status` text, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tplexus-bench\nVmPeak:\t  20000 kB\nVmRSS:\t    6144 kB\nThreads:\t3\n";
        assert_eq!(vm_rss(status), Some(6144 * 1024));
        assert_eq!(vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn a_running_process_has_a_resident_size() {
        assert!(resident_bytes_of(std::process::id()).is_some_and(|b| b > 0));
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
