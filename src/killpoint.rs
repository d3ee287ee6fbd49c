//! Kill points: a test-only facility (cargo feature `kill-points`, off by
//! default) that SIGKILLs this process at the k-th step of what it does in
//! shared memory: every journal record, every commit, every undo step.
//!
//! A test counts the points an operation passes ([`hits`] before and
//! after), then for every k forks a child that calls [`arm`]`(k)` and runs
//! the operation: the child dies at exactly that step, as if killed from
//! outside at that instruction, and the test checks what a survivor sees.
//! Without the feature [`point`] is an empty inline function.

#[cfg(feature = "kill-points")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};

    static HITS: AtomicU64 = AtomicU64::new(0);
    static ARMED: AtomicU64 = AtomicU64::new(0);

    #[inline]
    pub fn point() {
        let n = HITS.fetch_add(1, Ordering::Relaxed) + 1;
        let at = ARMED.load(Ordering::Relaxed);
        if at != 0 && n >= at {
            crate::os::process::kill_self();
        }
    }

    /// Dies at the `k`-th point from now (1 = the next one); 0 disarms.
    pub fn arm(k: u64) {
        let now = HITS.load(Ordering::Relaxed);
        ARMED.store(if k == 0 { 0 } else { now + k }, Ordering::Relaxed);
    }

    /// Points passed so far by this process.
    pub fn hits() -> u64 {
        HITS.load(Ordering::Relaxed)
    }
}

#[cfg(feature = "kill-points")]
pub use imp::{arm, hits, point};

/// A kill point (no-op: the `kill-points` feature is off).
#[cfg(not(feature = "kill-points"))]
#[inline(always)]
pub fn point() {}
