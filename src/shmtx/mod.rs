//! The process-shared lock (nginx's `ngx_shmtx`), with dead-owner recovery
//! that the application can see.
//!
//! A [`ShmMutex`] lives in shared memory (all-zero bytes are a free lock, so
//! a fresh zero-filled mapping already holds one; or write
//! [`ShmMutex::new()`] in place). Its word holds the pid of the process that
//! holds it, so that a master can release the lock of a worker that died
//! ([`ShmMutex::force_unlock`]), and so that a waiter can find out for itself
//! that the holder is gone (self-healing, [`ShmMutex::set_heal_after`]).
//!
//! # The shared words
//!
//! | word | value | meaning |
//! |---|---|---|
//! | `lock` | `0` | free |
//! | `lock` | `pid` (1..=`i32::MAX`) | held by process `pid` |
//! | `lock` | `u32::MAX` | free, and the last holder died holding it: the next acquirer's guard reports [`ShmGuard::recovered_from`] |
//! | `wait` | `n` | processes about to sleep or asleep in [`ShmMutex::lock`]: each counts itself before each sleep; an unlock that finds `n > 0` takes one count off and wakes one sleeper (nginx's scheme), so a sleeper costs one wake syscall |
//! | `seq` | `n` | the futex word sleepers wait on: bumped before every wake, so a wake that comes between a waiter's count and its sleep is not lost |
//! | `dead` | `pid` | the dead holder; meaningful only while `lock == u32::MAX`, cleared by the acquirer that reports it |
//! | `recoveries` | `n` | how many times the lock was taken back from a dead holder (force-unlock or self-healing) |
//! | `heal_ms` | `0` / `ms` | self-healing off / a waiter that has slept `ms` milliseconds checks whether the holder is alive |
//! | `heir` | `0` / `pid` | nobody / process `pid` has waited `FAIR_AFTER` and asks for a direct hand-off: the next unlock stores `pid` in `lock` instead of `0` |
//! | `handoffs` | `n` | how many unlocks handed the lock over that way |
//! | `spinners` | `n` | waiters spinning now (at most one per other CPU) |
//! | `spin` | `0` / `n` | the spin phase's budget: the default (`SPIN_LIMIT`) / rounds while below `n` hints ([`ShmMutex::set_spin_limit`]) |
//!
//! # Locking
//!
//! The fast path is one compare-and-swap `0 → pid` to lock. To unlock, a
//! process checks that the word holds its pid and stores `0` with a plain
//! release store, then reads `wait` with a plain load: no atomic
//! read-modify-write at all. The CPU may let that load pass the buffered
//! store, which alone could lose a wake-up; so a process about to sleep,
//! after counting itself in `wait` and before reading the word, calls
//! membarrier(2) (`MEMBARRIER_CMD_GLOBAL_EXPEDITED`), which runs a full
//! barrier on every CPU running a registered process: an asymmetric fence,
//! cheap side on the hot path, expensive side (about a microsecond) on the
//! path that is about to sleep anyway. Processes register when they first
//! use a lock (and again after `fork`). Where the kernel refuses membarrier
//! (before Linux 4.16, other unixes), unlock is a compare-and-swap
//! `pid → 0` and a sequentially consistent load of `wait`, as in nginx, and
//! a waiter that could not fence sleeps in 1 ms slices.
//! [`ShmMutex::unlock_is_a_plain_store`] says which one this process uses.
//! Measured here: an uncontended lock+unlock pair costs 9.3 ns with the
//! plain store against 13.7 ns with the compare-and-swap (nginx: 12 ns).
//!
//! When the lock is busy, [`ShmMutex::lock`] goes to a `#[cold]` slow path
//! that works like nginx's, with a longer spin: on a machine with more than
//! one CPU it spins in rounds of 1, 2, 4, … 32768 `spin_loop()` hints,
//! trying the lock after each round (nginx stops at 1024; the measurements
//! that chose ours are at `SPIN_FIRST` in the source); then it sleeps once,
//! and on waking spins again. [`ShmMutex::set_spin_limit`] shortens (or
//! lengthens) one lock's spin, for every process that uses it: a lock held
//! briefly between longer work, by more processes than there are CPUs,
//! does better with nginx's short spin (a long wait there means the holder
//! was descheduled).
//! On Linux it sleeps in a futex on the `seq` word (a process-shared futex,
//! so any process that maps the word can wake it); elsewhere it yields the
//! CPU with `sched_yield`. Unlock wakes one sleeper; the sleeper competes
//! for the lock like everyone else (no FIFO, as in nginx).
//!
//! # Bounded waits
//!
//! - **Eventual fairness.** A waiter that has waited `FAIR_AFTER`
//!   (0.5 ms, parking_lot's anchor) and slept at least once takes the
//!   `heir` slot, one waiter at a time; the next unlock hands the lock
//!   straight to it (the word goes from the holder's pid to the heir's,
//!   never through 0), so spinners and newcomers cannot keep taking it
//!   first, and wakes the next sleeper in the futex queue to take the slot
//!   after it. The rest of the time the lock is as unfair (and as fast) as
//!   nginx's. A heir that dies while it is handed the lock is recovered
//!   like any dead holder: the unlocker checks it alive again after the
//!   store, so a master whose `force_unlock` ran just before the store
//!   (and found the unlocker's pid) cannot leave the word naming a dead
//!   process.
//! - **At most one spinner per other CPU.** With more waiters than CPUs,
//!   spinners only steal the CPU that the holder (or the heir just handed
//!   the lock) needs; the others sleep at once.
//!
//!   `benches/lock.rs` measures every wait of 16 processes on this
//!   project's 2-CPU VMs (5 s each, machine shared with other builds):
//!
//!   | holders | before: max / p99.9 / calls | now: max / p99.9 / calls |
//!   |---|---|---|
//!   | short (~100 pause hints) | 4,888 ms / 370 ms / 47,606 | 819-1,126 ms / 23-34 ms / 388,125-590,256 |
//!   | sleeping 100 µs inside | 5,300 ms / 3,314 ms / 13,469 | 83-103 ms / 67-73 ms / 7,982-11,802 |
//!
//!   The remaining short-holder maximum is a holder descheduled while it
//!   holds the lock (16 processes and other load on 2 CPUs), which no
//!   lock protocol can hand over. W4 throughput is unchanged within the
//!   (large, shared-machine) noise.
//! - **No sleep is endless.** A sleeper looks at the lock again after
//!   [`MAX_SLEEP`] even if nobody woke it, so a holder killed between its
//!   store of 0 and its wake strands nobody for long;
//!   [`ShmMutex::wake_stranded`] wakes them at once.
//! - **A deadline:** [`ShmMutex::lock_for`] gives up after a given time
//!   with a [`LockTimeout`] that names the holder: for locks in a region
//!   whose other users this process does not control.
//!
//! The lock is not recursive: a process that locks it twice waits forever
//! (and [`ShmMutex::try_lock`] returns `None`). Holders are processes, not
//! threads: threads of one process share a pid, so they exclude each other
//! but any of them can release the others' lock.
//!
//! # Recovery
//!
//! A guard taken over from a dead holder says so
//! ([`ShmGuard::recovered_from`], like a robust mutex's `EOWNERDEAD`): what
//! the lock protects may be half-updated, and the caller should check it
//! before trusting it. Two ways lead there:
//!
//! - [`ShmMutex::force_unlock`]`(pid)`, called by a master that saw `pid`
//!   die. Use `waitid(WEXITED | WNOWAIT)` to see the death, force-unlock, and
//!   only then reap, so that the pid cannot be reused in between.
//! - Self-healing, for servers without a watching master: with
//!   [`ShmMutex::set_heal_after`]`(Some(d))`, a waiter that has slept `d`
//!   checks the holder with `kill(holder, 0)` (a zombie counts as dead on
//!   Linux); if it is gone, the waiter takes the lock over with a
//!   compare-and-swap from the dead pid to its own. A dead holder whose pid
//!   was already reused by a new process cannot be detected this way.
//!   [`set_process_heal_after`] turns the same check on for every wait of
//!   one process (a master's), whatever each lock says.
//!
//! # Pids: namespaces and raw clones
//!
//! The word holds a pid as the holder's own pid namespace numbers it. All
//! processes that use one lock must share one pid namespace: a pid from
//! another container names another process here, so force-unlock and
//! self-healing would act on the wrong one. Named regions record the
//! creator's namespace and refuse a read-write attach from another
//! (`Zones::attach`). A process's pid is cached and refreshed in a child by
//! a `pthread_atfork` handler, so children made by `fork` (libc's) see their
//! own pid; a child made by a raw `clone(2)` system call that bypasses
//! libc keeps its parent's cached pid and would lock and unlock as its
//! parent: do not use these locks from such children (call `fork`, or
//! `exec` first).
//!
//! A process killed while it sleeps in `lock()` (or a sleep ended by a
//! timeout or a signal) leaves `wait` one too high: the next unlock makes
//! one surplus wake syscall, which takes the count off again.

use std::fmt;
use std::sync::atomic::{compiler_fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use static_assertions::{assert_eq_size, const_assert_eq};

use crate::os::{self, futex};

mod bounds;
mod wait;

use bounds::{from_ms, to_ms};
pub use bounds::{process_heal_after, set_process_heal_after, LockTimeout};

/// `lock` value: nobody holds it.
const FREE: u32 = 0;
/// `lock` value: nobody holds it, and `dead` names the holder that died.
const RECOVERED: u32 = u32::MAX;
/// The spin phase: rounds of `SPIN_FIRST`, twice that, … `spin_loop()`
/// hints while below `SPIN_LIMIT`, trying the lock after each round (about
/// 65,000 hints in 16 rounds: 0.7 ms at the 10.7 ns a hint takes on this
/// project's Xeon VMs). nginx spins rounds of 1 … 1024 (2,047 hints, 22 µs
/// here) and then sleeps. Measured on W4 (2 cores, one zone, every op
/// locked), total M ops/s at P = 1 / 2 / 4:
///
/// | first, limit | P=1 | P=2 | P=4 |
/// |---|---|---|---|
/// | 1, 2048 (nginx) | 36.8 | 16.2 | 16.2 |
/// | 1, 65536 (ours) | 37.0 | 33.1 | 29.8 |
/// | 64, 65536 | 37.3 | 33.2 | 29.2 |
///
/// Under steady contention the cost is the handoff (the lock and the
/// pool's hot lines moving to the other core) and, after a sleep, the wake
/// syscall and a woken waiter that takes the lock at once; a waiter that
/// keeps spinning with ever sparser probes rarely sleeps and lets the
/// holder run long streaks. The price is CPU burnt by a waiter behind a
/// slow holder: at most the whole budget before each sleep.
const SPIN_FIRST: u32 = 1;
/// See [`SPIN_FIRST`].
const SPIN_LIMIT: u32 = 65536;
/// The largest budget [`ShmMutex::set_spin_limit`] takes (about 11 ms of
/// hints).
const MAX_SPIN_LIMIT: u32 = 1 << 20;
/// A waiter that has waited this long asks for a direct hand-off (it
/// registers in `heir`): parking_lot's eventual-fairness anchor, where a
/// thread that has waited about 0.5 ms gets the lock handed to it.
const FAIR_AFTER: Duration = Duration::from_micros(500);
/// How long the heir naps before it looks at the word again (an unlock
/// that read `heir` just before the heir wrote it frees the lock instead
/// of handing it over).
const HEIR_NAP: Duration = Duration::from_millis(1);
/// The longest one sleep lasts before the sleeper looks at the lock again,
/// even if nobody woke it: a holder killed between its store of 0 and its
/// wake leaves no sleeper stranded for longer than this.
pub const MAX_SLEEP: Duration = Duration::from_millis(50);

/// A lock that lives in shared memory; its word holds the holder's pid.
///
/// See the [module docs](self) for the words and the algorithm.
///
/// ```
/// use shmzone::ShmMutex;
/// let m = ShmMutex::new(); // normally written into a shmzone::Region
/// {
///     let g = m.lock();
///     assert_eq!(m.holder(), Some(std::process::id()));
///     assert!(g.recovered_from().is_none());
///     assert!(m.try_lock().is_none());
/// }
/// assert_eq!(m.holder(), None);
/// ```
#[repr(C, align(64))]
pub struct ShmMutex {
    lock: AtomicU32,
    wait: AtomicU32,
    dead: AtomicU32,
    recoveries: AtomicU32,
    heal_ms: AtomicU32,
    seq: AtomicU32,
    heir: AtomicU32,
    handoffs: AtomicU32,
    spinners: AtomicU32,
    spin: AtomicU32,
}

assert_eq_size!(ShmMutex, [u8; 64]);
const_assert_eq!(std::mem::align_of::<ShmMutex>(), 64);
const_assert_eq!(std::mem::offset_of!(ShmMutex, lock), 0);
const_assert_eq!(std::mem::offset_of!(ShmMutex, wait), 4);
const_assert_eq!(std::mem::offset_of!(ShmMutex, dead), 8);
const_assert_eq!(std::mem::offset_of!(ShmMutex, recoveries), 12);
const_assert_eq!(std::mem::offset_of!(ShmMutex, heal_ms), 16);
const_assert_eq!(std::mem::offset_of!(ShmMutex, seq), 20);
const_assert_eq!(std::mem::offset_of!(ShmMutex, heir), 24);
const_assert_eq!(std::mem::offset_of!(ShmMutex, handoffs), 28);
const_assert_eq!(std::mem::offset_of!(ShmMutex, spinners), 32);
const_assert_eq!(std::mem::offset_of!(ShmMutex, spin), 36);

impl Default for ShmMutex {
    fn default() -> Self {
        Self::new()
    }
}

impl ShmMutex {
    /// A free lock, self-healing off, to be written into shared memory.
    /// Its bytes are all zero.
    pub const fn new() -> ShmMutex {
        ShmMutex {
            lock: AtomicU32::new(FREE),
            wait: AtomicU32::new(0),
            dead: AtomicU32::new(0),
            recoveries: AtomicU32::new(0),
            heal_ms: AtomicU32::new(0),
            seq: AtomicU32::new(0),
            heir: AtomicU32::new(0),
            handoffs: AtomicU32::new(0),
            spinners: AtomicU32::new(0),
            spin: AtomicU32::new(0),
        }
    }

    /// Takes the lock, waiting as long as needed: spinning a little, then
    /// sleeping (see the [module docs](self)).
    ///
    /// The guard's [`ShmGuard::recovered_from`] is `Some(pid)` when the
    /// previous holder died holding the lock.
    #[inline]
    pub fn lock(&self) -> ShmGuard<'_> {
        let pid = os::process::current_pid();
        if self
            .lock
            .compare_exchange(FREE, pid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return ShmGuard {
                mutex: self,
                dead: 0,
            };
        }
        self.lock_slow(pid)
    }

    /// Takes the lock if it is free, without waiting.
    ///
    /// ```
    /// let m = shmzone::ShmMutex::new();
    /// let g = m.try_lock().expect("free");
    /// assert!(m.try_lock().is_none());
    /// drop(g);
    /// assert!(m.try_lock().is_some());
    /// ```
    #[inline]
    pub fn try_lock(&self) -> Option<ShmGuard<'_>> {
        self.try_lock_as(os::process::current_pid())
    }

    /// nginx's trylock: a plain load first, so that a busy lock costs no
    /// locked instruction; then the compare-and-swap.
    #[inline]
    fn try_lock_as(&self, pid: u32) -> Option<ShmGuard<'_>> {
        match self.lock.load(Ordering::Relaxed) {
            FREE => self
                .lock
                .compare_exchange(FREE, pid, Ordering::Acquire, Ordering::Relaxed)
                .ok()
                .map(|_| ShmGuard {
                    mutex: self,
                    dead: 0,
                }),
            RECOVERED => self.take_recovered(pid),
            _ => None,
        }
    }

    /// Takes a lock left free by [`ShmMutex::force_unlock`], and with it the
    /// dead holder's pid.
    #[cold]
    fn take_recovered(&self, pid: u32) -> Option<ShmGuard<'_>> {
        self.lock
            .compare_exchange(RECOVERED, pid, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // The recoverer wrote `dead` before its release-store of RECOVERED,
        // which our acquire read; holding the lock, we are the only reader.
        let dead = self.dead.swap(0, Ordering::Relaxed);
        Some(ShmGuard { mutex: self, dead })
    }

    /// Takes the lock, waiting at most `limit`: a bounded [`lock`](Self::lock)
    /// for locks whose holders this process does not trust (a region
    /// attached by name, where the word may name a live process that is not
    /// one of ours and will never unlock).
    ///
    /// ```
    /// use std::time::Duration;
    /// let m = shmzone::ShmMutex::new();
    /// let g = m.lock_for(Duration::from_millis(10)).expect("free");
    /// # #[cfg(unix)] {
    /// // The same process holds it: a second take times out, naming it.
    /// let e = m.lock_for(Duration::from_millis(5)).unwrap_err();
    /// assert_eq!(e.holder(), Some(std::process::id()));
    /// # }
    /// drop(g);
    /// ```
    ///
    /// # Errors
    /// [`LockTimeout`] naming the holder when `limit` passed first.
    pub fn lock_for(&self, limit: Duration) -> Result<ShmGuard<'_>, LockTimeout> {
        let pid = os::process::current_pid();
        if let Some(g) = self.try_lock_as(pid) {
            return Ok(g);
        }
        let start = Instant::now();
        let Some(deadline) = start.checked_add(limit) else {
            return Ok(self.lock_slow(pid));
        };
        self.wait_for(pid, Some(deadline)).ok_or(LockTimeout {
            holder: self.holder(),
            waited: start.elapsed(),
        })
    }

    /// Releases the lock if this process holds it (a compare-and-swap on
    /// the own pid, so a non-holder releases nothing); then wakes one
    /// sleeper if any are counted. When a waiter waits in `heir`, the lock
    /// goes to it instead ([`hand_off`](Self::hand_off)). Returns whether
    /// it released.
    #[inline]
    fn unlock(&self) -> bool {
        let pid = os::process::current_pid();
        if os::process::barrier_registered() {
            // Only the holder changes a held word (a force-unlock or a
            // self-heal takes it only from a dead holder), so a check and a
            // plain release store do what a compare-and-swap would. The
            // store and the load below may be reordered by the CPU; a
            // sleeper issues a membarrier(2) between counting itself and
            // reading the word, which closes that window (`sleep_once`).
            if self.lock.load(Ordering::Relaxed) != pid {
                return false;
            }
            if self.heir.load(Ordering::Relaxed) != 0 && self.hand_off() {
                return true;
            }
            self.lock.store(FREE, Ordering::Release);
            compiler_fence(Ordering::SeqCst);
            if self.wait.load(Ordering::Relaxed) != 0 {
                self.wake_one();
            }
            return true;
        }
        if self.lock.load(Ordering::Relaxed) == pid
            && self.heir.load(Ordering::Relaxed) != 0
            && self.hand_off()
        {
            return true;
        }
        if self
            .lock
            .compare_exchange(pid, FREE, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        if self.wait.load(Ordering::SeqCst) != 0 {
            self.wake_one();
        }
        true
    }

    /// nginx's wakeup: takes one sleeper's count off `wait` and wakes one,
    /// so a sleeper costs one wake syscall, not one per unlock until it runs.
    #[cold]
    #[inline(never)]
    fn wake_one(&self) {
        if self.uncount() {
            self.seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(&self.seq, 1);
        }
    }

    /// Wakes every sleeper if the lock is free (0, or free after a dead
    /// holder) while sleepers are counted (or a waiter waits for a
    /// hand-off), and says whether it did.
    ///
    /// A holder killed after its store of 0 but before its wake leaves
    /// sleepers asleep with the lock free, and [`force_unlock`](Self::force_unlock)
    /// cannot help (the dead pid no longer holds the word). A master calls
    /// this for every lock after any death. (Sleepers also look again by
    /// themselves after [`MAX_SLEEP`] at most, so none is stranded for
    /// ever; this makes it immediate.)
    ///
    /// ```
    /// let m = shmzone::ShmMutex::new();
    /// assert!(!m.wake_stranded()); // free, nobody asleep
    /// ```
    pub fn wake_stranded(&self) -> bool {
        let cur = self.lock.load(Ordering::SeqCst);
        if cur != FREE && cur != RECOVERED {
            return false;
        }
        let heir = self.heir.load(Ordering::SeqCst) != 0;
        if heir {
            futex::wake(&self.heir, u32::MAX);
        }
        if self.wait.load(Ordering::SeqCst) == 0 {
            return heir;
        }
        // All of them, as force_unlock does: those that sleep again count
        // themselves again.
        self.wait.store(0, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
        futex::wake(&self.seq, u32::MAX);
        true
    }

    /// The pid holding the lock, if any.
    ///
    /// ```
    /// let m = shmzone::ShmMutex::new();
    /// assert_eq!(m.holder(), None);
    /// let _g = m.lock();
    /// assert_eq!(m.holder(), Some(std::process::id()));
    /// ```
    pub fn holder(&self) -> Option<u32> {
        match self.lock.load(Ordering::Relaxed) {
            FREE | RECOVERED => None,
            pid => Some(pid),
        }
    }

    /// Releases the lock only if `pid` holds it; true if it did (nginx's
    /// `ngx_shmtx_force_unlock`).
    ///
    /// Meant for a master that saw worker `pid` die (see the
    /// [module docs](self)): the lock is marked "recovered from `pid`" so
    /// that the next acquirer's guard reports it, every sleeper is woken,
    /// and [`ShmMutex::recoveries`] counts one more. When `pid` does not
    /// hold the lock (or a self-healing waiter took it over first) this
    /// returns false and changes nothing.
    ///
    /// ```
    /// let m = shmzone::ShmMutex::new();
    /// assert!(!m.force_unlock(12345)); // free: nothing to release
    /// let g = m.lock();
    /// assert!(!m.force_unlock(12345)); // someone else holds it
    /// assert_eq!(m.recoveries(), 0);
    /// # drop(g);
    /// ```
    pub fn force_unlock(&self, pid: u32) -> bool {
        if pid == FREE || pid == RECOVERED {
            return false;
        }
        // A dead waiter may have been waiting for a hand-off: forget it,
        // so that no unlock hands the lock to a dead process.
        let _ = self
            .heir
            .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        if self.lock.load(Ordering::Relaxed) != pid {
            return false;
        }
        // Take it over first, so that `dead` is written while we hold the
        // lock and published by the release below.
        let me = os::process::current_pid();
        if self
            .lock
            .compare_exchange(pid, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.dead.store(pid, Ordering::Relaxed);
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        self.lock.store(RECOVERED, Ordering::SeqCst);
        if self.heir.load(Ordering::SeqCst) != 0 {
            futex::wake(&self.heir, u32::MAX);
        }
        if self.wait.swap(0, Ordering::SeqCst) != 0 {
            // All of them: a rare event, and a woken process that dies
            // before it takes the lock must not strand the others. Those
            // that sleep again count themselves again.
            self.seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(&self.seq, u32::MAX);
        }
        true
    }

    /// Whether this process's unlocks are a plain store plus a plain load
    /// (true where the kernel offers membarrier(2) global barriers: Linux
    /// 4.16 and later), rather than a compare-and-swap. See the
    /// [module docs](self).
    pub fn unlock_is_a_plain_store() -> bool {
        os::process::current_pid();
        os::process::barrier_registered()
    }

    /// How many times the lock was taken back from a dead holder, by
    /// [`ShmMutex::force_unlock`] or by self-healing.
    pub fn recoveries(&self) -> u32 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// How many processes are counted as sleeping (or about to sleep) in
    /// [`ShmMutex::lock`], the one waiting for a hand-off included. A
    /// snapshot, for diagnostics and tests.
    pub fn waiters(&self) -> u32 {
        let heir = self.heir.load(Ordering::Relaxed) != 0;
        self.wait
            .load(Ordering::Relaxed)
            .saturating_add(heir as u32)
    }

    /// How many times an unlock handed the lock straight to a waiter that
    /// had waited long (eventual fairness, see the [module docs](self)).
    pub fn handoffs(&self) -> u32 {
        self.handoffs.load(Ordering::Relaxed)
    }

    /// Turns self-healing on (`Some(d)`) or off (`None`). The setting lives
    /// in the lock, so every process that uses the lock sees it.
    ///
    /// With `Some(d)`, a waiter wakes at least every `d` (rounded up to
    /// whole milliseconds, at least 1 ms) and checks whether the holder
    /// still exists; if not, it takes the lock over and its guard reports
    /// [`ShmGuard::recovered_from`]. Keep `d` well above the longest time
    /// the lock is legitimately held, so that healthy waiters rarely wake.
    ///
    /// ```
    /// use std::time::Duration;
    /// let m = shmzone::ShmMutex::new();
    /// assert_eq!(m.heal_after(), None);
    /// m.set_heal_after(Some(Duration::from_millis(250)));
    /// assert_eq!(m.heal_after(), Some(Duration::from_millis(250)));
    /// ```
    pub fn set_heal_after(&self, after: Option<Duration>) {
        self.heal_ms.store(to_ms(after), Ordering::Relaxed);
    }

    /// The self-healing delay, if self-healing is on.
    pub fn heal_after(&self) -> Option<Duration> {
        from_ms(self.heal_ms.load(Ordering::Relaxed))
    }

    /// Sets how long a waiter spins before it sleeps: rounds of 1, 2, 4, …
    /// `spin_loop()` hints while below `hints` (`None`: the default,
    /// 65,536 hints, about 0.7 ms; `Some(2048)`: nginx's 2,047, about
    /// 22 µs; `Some(1)`: no spinning; at most 2^20, about 11 ms). The
    /// setting lives in the lock, so every process that uses the lock sees
    /// it.
    ///
    /// The long default suits a lock that processes take back to back (a
    /// waiter catches a release instead of paying a sleep and a wake).
    /// Where the lock is held briefly between longer work, and processes
    /// outnumber CPUs (a server's workers on a busy machine), a holder is
    /// sometimes descheduled while it holds the lock; a waiter then spins
    /// in vain, often on the very CPU the holder waits for. A short budget
    /// sends it to sleep, and the holder's unlock wakes it: measured on the
    /// example server (4 workers, wrk on 2 CPUs, every request one locked
    /// dictionary update), waits over 1 ms went from 3–16 to none in 2 s.
    ///
    /// ```
    /// let m = shmzone::ShmMutex::new();
    /// assert_eq!(m.spin_limit(), 65536);
    /// m.set_spin_limit(Some(2048));
    /// assert_eq!(m.spin_limit(), 2048);
    /// m.set_spin_limit(None);
    /// assert_eq!(m.spin_limit(), 65536);
    /// ```
    pub fn set_spin_limit(&self, hints: Option<u32>) {
        self.spin.store(hints.unwrap_or(0), Ordering::Relaxed);
    }

    /// The spin phase's budget in `spin_loop()` hints (see
    /// [`set_spin_limit`](Self::set_spin_limit)).
    pub fn spin_limit(&self) -> u32 {
        // Read from shared memory: whatever is there, the spin ends.
        match self.spin.load(Ordering::Relaxed) {
            0 => SPIN_LIMIT,
            n => n.min(MAX_SPIN_LIMIT),
        }
    }
}

impl fmt::Debug for ShmMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct State(u32, u32);
        impl fmt::Debug for State {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    FREE => f.write_str("free"),
                    RECOVERED => write!(f, "free, recovered from dead pid {}", self.1),
                    pid => write!(f, "held by pid {pid}"),
                }
            }
        }
        f.debug_struct("ShmMutex")
            .field(
                "state",
                &State(
                    self.lock.load(Ordering::Relaxed),
                    self.dead.load(Ordering::Relaxed),
                ),
            )
            .field("waiters", &self.waiters())
            .field("recoveries", &self.recoveries())
            .field("handoffs", &self.handoffs())
            .field("heal_after", &self.heal_after())
            .field("spin_limit", &self.spin_limit())
            .finish()
    }
}

/// Proof that this process holds a [`ShmMutex`]; unlocks when dropped.
///
/// Dropping a guard in a process that does not hold the lock (for instance
/// a copy inherited across `fork`) releases nothing.
#[must_use = "the lock is released as soon as the guard is dropped"]
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

    /// Releases the lock now; true if this process held it and released
    /// it, false if it no longer did (it was force-unlocked, or the guard
    /// was inherited across `fork`).
    ///
    /// ```
    /// let m = shmzone::ShmMutex::new();
    /// assert!(m.lock().unlock());
    /// assert_eq!(m.holder(), None);
    /// ```
    pub fn unlock(self) -> bool {
        let released = self.mutex.unlock();
        std::mem::forget(self);
        released
    }
}

impl fmt::Debug for ShmGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmGuard")
            .field("mutex", self.mutex)
            .field("recovered_from", &self.recovered_from())
            .finish()
    }
}

impl Drop for ShmGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

#[cfg(test)]
mod tests;
