//! A board of shared counters for fork tests: one page of `AtomicU64`s in
//! a region made before the fork, so parent, master and workers all see it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmzone::Region;

/// 512 shared counters, zero at start.
pub struct Board {
    region: Region,
}

impl Board {
    pub fn new() -> Board {
        Board {
            region: Region::new(4096).unwrap(),
        }
    }

    pub fn at(&self, i: usize) -> &AtomicU64 {
        assert!(i < 512);
        // SAFETY: the region is 4096 zero-filled, page-aligned bytes; slot
        // i < 512 is in bounds and 8-aligned; all access is atomic.
        unsafe { &*(self.region.as_ptr() as *const AtomicU64).add(i) }
    }

    pub fn get(&self, i: usize) -> u64 {
        self.at(i).load(Ordering::SeqCst)
    }

    /// Adds one.
    pub fn add(&self, i: usize) {
        self.add_n(i, 1);
    }

    pub fn add_n(&self, i: usize, n: u64) {
        self.at(i).fetch_add(n, Ordering::SeqCst);
    }

    /// Waits (at most 10 s) until `f` holds.
    pub fn until(&self, what: &str, f: impl Fn(&Board) -> bool) {
        let start = Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
