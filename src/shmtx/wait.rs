//! The lock's slow path: spinning, sleeping, self-healing and the direct
//! hand-off to a waiter that has waited long (see the module docs of
//! [`shmtx`](super)).

use std::hint::spin_loop;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{
    process_heal_after, ShmGuard, ShmMutex, FAIR_AFTER, FREE, HEIR_NAP, MAX_SLEEP, RECOVERED,
    SPIN_FIRST,
};
use crate::os::{self, futex};

/// One waiter's state in the slow path.
pub(super) struct Waiter {
    pid: u32,
    deadline: Option<Instant>,
    /// When self-healing next checks the holder.
    heal_due: Option<Instant>,
    /// This waiter holds the `heir` slot.
    heir: bool,
    /// It has napped as the heir.
    napped: bool,
    /// It has slept at least once (only such waiters become the heir).
    slept: bool,
}

impl Waiter {
    /// A fresh waiter with no deadline, for unit tests of the phases.
    #[cfg(test)]
    pub(super) fn for_test(pid: u32) -> Waiter {
        Waiter {
            pid,
            deadline: None,
            heal_due: None,
            heir: false,
            napped: false,
            slept: false,
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The shortest of `limits` and the time left before the deadline.
    fn nap(&self, limits: [Option<Duration>; 3]) -> Duration {
        let mut t = MAX_SLEEP;
        for l in limits.into_iter().flatten() {
            t = t.min(l);
        }
        if let Some(d) = self.deadline {
            t = t.min(d.saturating_duration_since(Instant::now()));
        }
        t
    }
}

impl ShmMutex {
    #[cold]
    #[inline(never)]
    pub(super) fn lock_slow(&self, pid: u32) -> ShmGuard<'_> {
        // Without a deadline `wait_for` only returns with the lock; the
        // loop makes that total without a panic path.
        loop {
            if let Some(g) = self.wait_for(pid, None) {
                return g;
            }
        }
    }

    /// The slow path of [`lock`](Self::lock) and [`lock_for`](Self::lock_for):
    /// spin, then sleep, until the lock is taken (`Some`) or the deadline
    /// passed (`None`; never without a deadline).
    ///
    /// Eventual fairness (parking_lot's anchor): a waiter that has waited
    /// [`FAIR_AFTER`] and slept registers in `heir` (one at a time); the
    /// next unlock then hands the lock straight to it instead of freeing
    /// it, so no barging newcomer or luckier spinner can take it first, and
    /// wakes the next sleeper to take the slot.
    pub(super) fn wait_for(&self, pid: u32, deadline: Option<Instant>) -> Option<ShmGuard<'_>> {
        let start = Instant::now();
        let ncpu = os::process::ncpu() as u32;
        let spin = ncpu > 1;
        let max_spinners = ncpu.saturating_sub(1);
        let mut w = Waiter {
            pid,
            deadline,
            heal_due: None,
            heir: false,
            napped: false,
            slept: false,
        };
        loop {
            if w.heir && self.heir.load(Ordering::Acquire) != pid {
                return Some(self.take_handoff(pid));
            }
            // The heir spins once (a hand-off usually finds it spinning),
            // then only naps: it must not burn a spin budget every 1 ms.
            if spin && !w.napped {
                // At most one spinner per other CPU: with more processes
                // waiting than CPUs, spinners only steal the CPU the holder
                // (or the heir just handed the lock) needs to go on.
                let r = if self.spinners.fetch_add(1, Ordering::Relaxed) < max_spinners {
                    self.spin(&mut w)
                } else {
                    None
                };
                self.spinners.fetch_sub(1, Ordering::Relaxed);
                if r.is_some() {
                    return r;
                }
            }
            // Only a waiter that has slept: sleepers are woken in turn (the
            // futex queue is first in, first out, and each hand-off wakes
            // the next, below), so the slot goes round them; a spinner that
            // took it every time would leave sleepers waiting.
            if !w.heir && w.slept && start.elapsed() >= FAIR_AFTER {
                w.heir = self
                    .heir
                    .compare_exchange(0, pid, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok();
            }
            if let Some(g) = self.sleep_once(&mut w) {
                return Some(g);
            }
            w.slept = true;
            if w.past_deadline() {
                return self.give_up(&mut w);
            }
        }
    }

    /// The deadline passed: leave the `heir` slot, unless an unlocker
    /// already claimed it for us (then the lock is ours: take it).
    #[cold]
    pub(super) fn give_up(&self, w: &mut Waiter) -> Option<ShmGuard<'_>> {
        if w.heir
            && self
                .heir
                .compare_exchange(w.pid, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return Some(self.take_handoff(w.pid));
        }
        None
    }

    /// We took the lock ourselves: leave the `heir` slot if we were in it.
    #[inline]
    pub(super) fn won<'a>(&self, w: &Waiter, g: ShmGuard<'a>) -> ShmGuard<'a> {
        if w.heir {
            // Only a holder claims the slot, and we hold the lock: nobody
            // else can have changed it.
            let _ = self
                .heir
                .compare_exchange(w.pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        g
    }

    /// An unlocker claimed our `heir` slot and is storing our pid in the
    /// word: wait for it (two instructions away), and take the lock.
    /// Should the unlocker die in between, the word holds its dead pid:
    /// taken over here after 1 ms (we were promised the lock), or after a
    /// master's force-unlock.
    #[cold]
    pub(super) fn take_handoff(&self, pid: u32) -> ShmGuard<'_> {
        let mut heal_at = Instant::now() + Duration::from_millis(1);
        let mut n = 0u32;
        loop {
            match self.lock.load(Ordering::Acquire) {
                cur if cur == pid => {
                    return ShmGuard {
                        mutex: self,
                        dead: 0,
                    }
                }
                FREE | RECOVERED => {
                    if let Some(g) = self.try_lock_as(pid) {
                        return g;
                    }
                }
                cur => {
                    n = n.wrapping_add(1);
                    if n % 64 == 0 {
                        let now = Instant::now();
                        if now >= heal_at {
                            if let Some(g) = self.heal(pid, cur) {
                                return g;
                            }
                            heal_at = now + Duration::from_millis(1);
                        }
                        os::process::yield_now();
                    }
                }
            }
            spin_loop();
        }
    }

    /// The spin phase (see [`SPIN_FIRST`]): rounds of `spin_loop()` hints
    /// that double in length, trying the lock after each. Probing this
    /// rarely is deliberate: a waiter that probed on every hint would keep
    /// pulling the lock's cache line away from a busy holder and hand the
    /// lock back and forth on every operation (measured: W4 with 2 processes
    /// fell from 27 to 2 M ops/s); backing off lets the holder run a long
    /// streak alone.
    pub(super) fn spin(&self, w: &mut Waiter) -> Option<ShmGuard<'_>> {
        let mut n = SPIN_FIRST;
        let limit = self.spin_limit();
        while n < limit {
            for _ in 0..n {
                spin_loop();
            }
            if w.heir && self.heir.load(Ordering::Acquire) != w.pid {
                return Some(self.take_handoff(w.pid));
            }
            if let Some(g) = self.try_lock_as(w.pid) {
                return Some(self.won(w, g));
            }
            if w.deadline.is_some() && w.past_deadline() {
                return None;
            }
            n <<= 1;
        }
        None
    }

    /// One turn of the sleep phase: read `seq`, count ourselves in `wait`,
    /// try the lock once more (and self-heal if due), else sleep on `seq`
    /// (the heir naps on `heir` instead, see [`ShmMutex::heir_nap`]).
    /// `None`: woken (or timed out) without the lock; the caller spins again.
    ///
    /// No lost wake-up: an unlocker that sees us counted takes one count
    /// off and bumps `seq` before it wakes, and we read `seq` before we
    /// count ourselves, so if the wake comes before we sleep the futex finds
    /// `seq` changed and returns at once. If the unlocker did not see us
    /// counted, its release came before our count, so our try below sees
    /// the lock free (all four accesses are sequentially consistent).
    /// Whatever else goes wrong (a holder killed between its store of 0 and
    /// its wake), no sleep lasts longer than [`MAX_SLEEP`].
    pub(super) fn sleep_once(&self, w: &mut Waiter) -> Option<ShmGuard<'_>> {
        if w.heir {
            return self.heir_nap(w);
        }
        let seq = self.seq.load(Ordering::SeqCst);
        self.wait.fetch_add(1, Ordering::SeqCst);
        // Every CPU running a registered process executes a full barrier
        // before this returns: an unlocker whose plain store of the word
        // was still buffered has now published it, or its later load of
        // `wait` sees our count. Without the barrier (refused by the
        // kernel), sleep in short slices so a missed wake costs 1 ms.
        let fenced = os::membarrier::global();
        let cur = self.lock.load(Ordering::SeqCst);
        if cur == FREE || cur == RECOVERED {
            if let Some(g) = self.try_lock_as(w.pid) {
                self.uncount();
                return Some(self.won(w, g));
            }
        }
        let heal = match self.heal_if_due(w, cur) {
            Ok(g) => {
                self.uncount();
                return Some(self.won(w, g));
            }
            Err(next) => next,
        };
        let unfenced = (!fenced).then_some(Duration::from_millis(1));
        let timeout = w.nap([heal, unfenced, Some(MAX_SLEEP)]);
        futex::wait(&self.seq, seq, Some(timeout));
        // A wake took our count off; a timeout or a signal left it, and the
        // one surplus wake it causes later takes it off. (Taking it off
        // here instead could take the count of a sleeper whose wake is on
        // its way, which would then sleep out its whole timeout.)
        None
    }

    /// The heir's sleep: like [`sleep_once`](Self::sleep_once), but on the
    /// `heir` word, which an unlocker that hands the lock over clears and
    /// wakes. An unlock that missed our registration (it read `heir`
    /// before we wrote it) frees the lock instead: the nap is short
    /// ([`HEIR_NAP`]) so that costs at most that.
    pub(super) fn heir_nap(&self, w: &mut Waiter) -> Option<ShmGuard<'_>> {
        os::membarrier::global();
        let cur = self.lock.load(Ordering::SeqCst);
        if cur == FREE || cur == RECOVERED {
            if let Some(g) = self.try_lock_as(w.pid) {
                return Some(self.won(w, g));
            }
        }
        let heal = match self.heal_if_due(w, cur) {
            Ok(g) => return Some(self.won(w, g)),
            Err(next) => next,
        };
        let timeout = w.nap([heal, Some(HEIR_NAP), None]);
        w.napped = true;
        futex::wait(&self.heir, w.pid, Some(timeout));
        None
    }

    /// Self-healing, when due: the lock taken over from a dead holder, or
    /// how long until the next check (`None`: self-healing is off).
    pub(super) fn heal_if_due(
        &self,
        w: &mut Waiter,
        cur: u32,
    ) -> Result<ShmGuard<'_>, Option<Duration>> {
        let Some(every) = self.effective_heal_after() else {
            w.heal_due = None;
            return Err(None);
        };
        let now = Instant::now();
        let due = *w.heal_due.get_or_insert(now + every);
        if now < due {
            return Err(Some(due - now));
        }
        if let Some(g) = self.heal(w.pid, cur) {
            return Ok(g);
        }
        w.heal_due = Some(now + every);
        Err(Some(every))
    }

    /// The self-healing period that applies in this process: the lock's
    /// own ([`set_heal_after`](Self::set_heal_after)) or the process-wide
    /// one ([`set_process_heal_after`]), whichever is shorter.
    pub(super) fn effective_heal_after(&self) -> Option<Duration> {
        match (self.heal_after(), process_heal_after()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes one count off `wait` if it is above zero; whether it did.
    pub(super) fn uncount(&self) -> bool {
        let mut w = self.wait.load(Ordering::SeqCst);
        while w != 0 {
            match self
                .wait
                .compare_exchange(w, w - 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
        false
    }

    /// Self-healing: takes the lock from `holder` if that process is gone.
    /// A free word (0, or the recovered marker) is no dead holder: nothing
    /// is taken and no recovery counted (the caller takes a free lock the
    /// ordinary way).
    #[cold]
    pub(super) fn heal(&self, pid: u32, holder: u32) -> Option<ShmGuard<'_>> {
        if holder == FREE || holder == RECOVERED || holder == pid || os::process::pid_alive(holder)
        {
            return None;
        }
        self.lock
            .compare_exchange(holder, pid, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        Some(ShmGuard {
            mutex: self,
            dead: holder,
        })
    }

    /// Direct hand-off, called by the holder: the waiter in `heir` gets the
    /// lock without it ever being free (the word goes from our pid to
    /// its). The slot is claimed first with a compare-and-swap, so a heir
    /// that gives up at the same moment either leaves before (no hand-off)
    /// or finds itself claimed and takes the lock. A heir that is no longer
    /// alive (or a zombie) is dropped from the slot instead. False: no
    /// hand-off, unlock the ordinary way.
    #[cold]
    #[inline(never)]
    pub(super) fn hand_off(&self) -> bool {
        let h = self.heir.load(Ordering::Acquire);
        if h == 0 {
            return false;
        }
        if h != os::process::current_pid() && !os::process::pid_alive(h) {
            let _ = self
                .heir
                .compare_exchange(h, 0, Ordering::AcqRel, Ordering::Relaxed);
            return false;
        }
        if self
            .heir
            .compare_exchange(h, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        #[cfg(test)]
        tests_hook::in_hand_off(h);
        self.lock.store(h, Ordering::SeqCst);
        futex::wake(&self.heir, u32::MAX);
        self.handoffs.fetch_add(1, Ordering::Relaxed);
        // The slot is free again: wake the next sleeper, the first in the
        // futex queue, to take it (it has slept, so it may).
        if self.wait.load(Ordering::Relaxed) != 0 {
            self.wake_one();
        }
        // The heir may have died (and been reaped, and force-unlocked by
        // the master) after the check above and before the store: the
        // master's force_unlock then found our pid in the word and did
        // nothing, and the word would name a dead process that no one
        // recovers (a hang when self-healing is off). So look again now
        // that the word names it, and recover it ourselves if it is gone.
        // A master that reaps it later finds its pid in the word and
        // recovers it then; if both try, one compare-and-swap wins.
        if !os::process::pid_alive(h) {
            self.force_unlock(h);
        }
        true
    }
}

/// Unit tests' window into a hand-off: a function run between the heir's
/// check and the store that gives it the lock (the race of the
/// `hand_off_to_a_heir_that_dies_in_the_window_is_recovered` test).
#[cfg(test)]
pub(super) mod tests_hook {
    use std::cell::Cell;

    thread_local! {
        static HOOK: Cell<Option<fn(u32)>> = const { Cell::new(None) };
    }

    pub fn set(f: Option<fn(u32)>) {
        HOOK.with(|h| h.set(f));
    }

    pub(super) fn in_hand_off(heir: u32) {
        if let Some(f) = HOOK.with(Cell::get) {
            f(heir);
        }
    }
}
