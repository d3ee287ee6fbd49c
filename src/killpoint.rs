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
    use std::cell::Cell;

    // Per thread: a test harness runs tests on several threads, and a
    // forked child carries only the thread that forked.
    thread_local! {
        static HITS: Cell<u64> = const { Cell::new(0) };
        static ARMED: Cell<u64> = const { Cell::new(0) };
    }

    #[inline]
    pub fn point() {
        let n = HITS.with(|h| {
            h.set(h.get() + 1);
            h.get()
        });
        let at = ARMED.with(Cell::get);
        if at != 0 && n >= at {
            crate::os::process::kill_self();
        }
    }

    /// Dies at the `k`-th point from now (1 = the next one); 0 disarms.
    pub fn arm(k: u64) {
        let now = hits();
        ARMED.with(|a| a.set(if k == 0 { 0 } else { now + k }));
    }

    /// Points passed so far by this thread.
    pub fn hits() -> u64 {
        HITS.with(Cell::get)
    }
}

#[cfg(feature = "kill-points")]
pub use imp::{arm, hits, point};

/// A kill point (no-op: the `kill-points` feature is off).
#[cfg(not(feature = "kill-points"))]
#[inline(always)]
pub fn point() {}
