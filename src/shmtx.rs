//! The process-shared lock (nginx's `ngx_shmtx`).
//!
//! FIRST CUT (foundation): CAS on the holder's pid, bounded spin, then
//! `sched_yield`. The lock issue replaces the waiting with a futex and adds
//! dead-owner recovery; the API below is what the rest of the crate uses.

use std::sync::atomic::{AtomicU32, Ordering};

use static_assertions::{assert_eq_size, const_assert_eq};

use crate::os;

/// A lock that lives in shared memory; its word holds the holder's pid.
///
/// | word | meaning |
/// |---|---|
/// | 0 | free |
/// | pid | held by process `pid` |
#[repr(C, align(64))]
pub struct ShmMutex {
    lock: AtomicU32,
    wait: AtomicU32,
    dead: AtomicU32,
    recoveries: AtomicU32,
}

assert_eq_size!(ShmMutex, [u8; 64]);
const_assert_eq!(std::mem::align_of::<ShmMutex>(), 64);

impl Default for ShmMutex {
    fn default() -> Self {
        Self::new()
    }
}

impl ShmMutex {
    /// A free lock, to be written into shared memory.
    pub const fn new() -> ShmMutex {
        ShmMutex {
            lock: AtomicU32::new(0),
            wait: AtomicU32::new(0),
            dead: AtomicU32::new(0),
            recoveries: AtomicU32::new(0),
        }
    }

    /// Takes the lock, waiting as long as needed.
    #[inline]
    pub fn lock(&self) -> ShmGuard<'_> {
        if let Some(g) = self.try_lock() {
            return g;
        }
        self.lock_slow()
    }

    #[cold]
    fn lock_slow(&self) -> ShmGuard<'_> {
        loop {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if let Some(g) = self.try_lock() {
                return g;
            }
            os::process::yield_now();
        }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> Option<ShmGuard<'_>> {
        let pid = os::process::current_pid();
        if self.lock.load(Ordering::Relaxed) == 0
            && self
                .lock
                .compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            let dead = self.take_dead();
            return Some(ShmGuard { mutex: self, dead });
        }
        None
    }

    #[inline]
    fn take_dead(&self) -> u32 {
        if self.dead.load(Ordering::Relaxed) == 0 {
            0
        } else {
            self.dead.swap(0, Ordering::Relaxed)
        }
    }

    /// The pid holding the lock, if any.
    pub fn holder(&self) -> Option<u32> {
        match self.lock.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Releases the lock only if `pid` holds it; true if it did.
    pub fn force_unlock(&self, pid: u32) -> bool {
        if pid == 0 || self.lock.load(Ordering::Relaxed) != pid {
            return false;
        }
        self.dead.store(pid, Ordering::Relaxed);
        if self
            .lock
            .compare_exchange(pid, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            self.recoveries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// How many times the lock was taken back from a dead holder.
    pub fn recoveries(&self) -> u32 {
        self.recoveries.load(Ordering::Relaxed)
    }

    #[inline]
    fn unlock(&self) {
        let _ = self.lock.compare_exchange(
            os::process::current_pid(),
            0,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
}

/// Proof that this process holds a [`ShmMutex`]; unlocks when dropped.
pub struct ShmGuard<'a> {
    mutex: &'a ShmMutex,
    dead: u32,
}

impl ShmGuard<'_> {
    /// The pid of a dead holder whose lock this guard took over, if the
    /// previous holder died holding it: what it protects may be half-updated.
    pub fn recovered_from(&self) -> Option<u32> {
        (self.dead != 0).then_some(self.dead)
    }

    /// The lock this guard holds.
    pub fn mutex(&self) -> &ShmMutex {
        self.mutex
    }
}

impl Drop for ShmGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}
