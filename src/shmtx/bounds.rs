//! The lock's bounds a caller sets: the process-wide self-healing period
//! and the error of a wait with a deadline.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Process-wide self-healing period in ms (0: off), see
/// [`set_process_heal_after`].
static PROCESS_HEAL_MS: AtomicU32 = AtomicU32::new(0);

/// Turns self-healing on (`Some(d)`) or off (`None`) for every wait in
/// *this process*, whatever each lock's own setting: a waiter that has
/// slept `d` (rounded up to whole milliseconds) checks whether the holder is
/// alive, and takes the lock over from a dead or zombie holder (its guard
/// reports [`ShmGuard::recovered_from`](super::ShmGuard::recovered_from)). Where a lock has its own period
/// ([`ShmMutex::set_heal_after`](super::ShmMutex::set_heal_after)), the shorter one applies.
///
/// Meant for a pre-fork master: it must never block on a lock whose holder
/// died but whose death it has not processed yet (the dead worker is its
/// own child, a zombie until reaped, and counts as dead here).
///
/// ```
/// use std::time::Duration;
/// shmzone::shmtx::set_process_heal_after(Some(Duration::from_millis(100)));
/// assert_eq!(shmzone::shmtx::process_heal_after(), Some(Duration::from_millis(100)));
/// shmzone::shmtx::set_process_heal_after(None);
/// ```
pub fn set_process_heal_after(after: Option<Duration>) {
    PROCESS_HEAL_MS.store(to_ms(after), Ordering::Relaxed);
}

/// The process-wide self-healing period, if on (see
/// [`set_process_heal_after`]).
pub fn process_heal_after() -> Option<Duration> {
    from_ms(PROCESS_HEAL_MS.load(Ordering::Relaxed))
}

/// `None` → 0, else whole milliseconds rounded up, at least 1.
pub(super) fn to_ms(after: Option<Duration>) -> u32 {
    match after {
        None => 0,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.clamp(1, u32::MAX as u128) as u32
        }
    }
}

pub(super) fn from_ms(ms: u32) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms as u64))
}

/// The error of [`ShmMutex::lock_for`](super::ShmMutex::lock_for): the lock was not taken in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockTimeout {
    pub(super) holder: Option<u32>,
    pub(super) waited: Duration,
}

impl LockTimeout {
    /// The pid that held the lock when the wait ended (`None` if it was
    /// free by then: the lock was contended, not stuck).
    pub fn holder(&self) -> Option<u32> {
        self.holder
    }

    /// How long the caller waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Display for LockTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.waited.as_secs_f64() * 1e3;
        match self.holder {
            Some(pid) => write!(
                f,
                "lock still held by process {pid} after waiting {ms:.1} ms"
            ),
            None => write!(f, "lock not taken within {ms:.1} ms (contended)"),
        }
    }
}

impl std::error::Error for LockTimeout {}
