//! The process-shared lock across real forked processes: exclusion, dead
//! holders (force-unlock and self-healing), and sleeping waiters.

mod common;

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::{fork_child, wait, wait_ok, wait_within, Exit};
use shmzone::{Backend, Region, ShmMutex};

/// What the processes of one test share, at the start of a fresh region.
#[repr(C)]
struct Shared {
    mutex: ShmMutex,
    /// A plain, non-atomic counter: only safe under `mutex`.
    counter: UnsafeCell<u64>,
    /// Start barrier: children count themselves in `ready`, wait for `go`.
    ready: AtomicU32,
    go: AtomicU32,
    /// Test-specific hand-shake between parent and children.
    stage: AtomicU32,
    /// What a child reports back.
    report: AtomicU32,
    report64: AtomicU64,
}

/// The `Shared` at the start of `region` (zero-filled, so already valid:
/// a zeroed `ShmMutex` is a free lock, everything else is zero).
fn shared(region: &Region) -> &Shared {
    assert!(region.len() >= std::mem::size_of::<Shared>());
    let p = region.as_ptr().cast::<Shared>();
    assert_eq!(p as usize % std::mem::align_of::<Shared>(), 0);
    // SAFETY: the region is page-aligned, large enough, zero-filled (a valid
    // `Shared`), and lives as long as the returned reference.
    unsafe {
        p.write(Shared {
            mutex: ShmMutex::new(),
            counter: UnsafeCell::new(0),
            ready: AtomicU32::new(0),
            go: AtomicU32::new(0),
            stage: AtomicU32::new(0),
            report: AtomicU32::new(0),
            report64: AtomicU64::new(0),
        });
        &*p
    }
}

/// Children of one test: if the test fails, those still running are killed
/// and reaped, so that none is left blocked on a lock forever.
struct Kids(Vec<libc::pid_t>);

impl Kids {
    fn add(&mut self, pid: libc::pid_t) -> libc::pid_t {
        self.0.push(pid);
        pid
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for &pid in &self.0 {
            let mut status = 0;
            // SAFETY: only our own children; WNOHANG returns 0 for a child
            // that still runs (ECHILD once reaped, so no stranger is hit).
            unsafe {
                if libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
            }
        }
    }
}

/// Polls `cond` every millisecond; panics after `limit`.
fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// In a child: count in at the barrier and wait for the parent's go.
fn barrier(s: &Shared) {
    s.ready.fetch_add(1, SeqCst);
    while s.go.load(SeqCst) == 0 {
        std::hint::spin_loop();
    }
}

/// Forks `procs` children that each run `body` after the start barrier;
/// releases them together and waits for all to exit with 0.
fn run_together(s: &Shared, procs: u32, body: impl Fn() + Copy) {
    let mut kids = Kids(Vec::new());
    let pids: Vec<_> = (0..procs)
        .map(|_| {
            kids.add(fork_child(move || {
                barrier(s);
                body();
                0
            }))
        })
        .collect();
    wait_until("children at the barrier", Duration::from_secs(10), || {
        s.ready.load(SeqCst) == procs
    });
    s.go.store(1, SeqCst);
    for pid in pids {
        assert_eq!(wait_within(pid, Duration::from_secs(60)), Exit::Code(0));
    }
}

/// A child that takes the lock, reports `stage = 1`, waits for `stage = 2`
/// and then SIGKILLs itself while holding the lock.
fn fork_doomed_holder(s: &Shared) -> libc::pid_t {
    fork_child(move || {
        let g = s.mutex.lock();
        s.stage.store(1, SeqCst);
        while s.stage.load(SeqCst) != 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: kills this (child) process; nothing after it runs.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        std::mem::forget(g);
        99
    })
}

/// A child that blocks in `lock()` and reports the guard's
/// `recovered_from` (0 for none) in `report`.
fn fork_waiter(s: &Shared) -> libc::pid_t {
    fork_child(move || {
        let g = s.mutex.lock();
        s.report.store(g.recovered_from().unwrap_or(0), SeqCst);
        if s.mutex.holder() != Some(std::process::id()) {
            return 2;
        }
        0
    })
}

const PROCS: u32 = 4;
const INCREMENTS: u64 = 100_000;

#[test]
fn four_processes_count_exactly_under_the_lock() {
    for &backend in Backend::available() {
        let region = Region::with_backend(4096, backend).unwrap();
        let s = shared(&region);
        run_together(s, PROCS, move || {
            for _ in 0..INCREMENTS {
                let _g = s.mutex.lock();
                // SAFETY: the lock makes this process the only one touching
                // the counter.
                unsafe { *s.counter.get() += 1 };
            }
        });
        // SAFETY: every child has exited; nobody else touches the counter.
        let total = unsafe { *s.counter.get() };
        assert_eq!(total, PROCS as u64 * INCREMENTS, "backend {backend}");
        assert_eq!(s.mutex.holder(), None);
        assert_eq!(s.mutex.recoveries(), 0);
        // A sleep that ended without its wake (the futex found `seq` moved
        // on) leaves one count, which the next unlock takes off: at most one
        // per process, and gone after as many unlocks.
        assert!(s.mutex.waiters() <= PROCS, "backend {backend}");
        for _ in 0..PROCS {
            drop(s.mutex.lock());
        }
        assert_eq!(s.mutex.waiters(), 0, "backend {backend}");
    }
}

/// On Linux the unlock path that the other tests exercise is the plain
/// store (membarrier(2) is available), in a forked child as well.
#[test]
fn unlocks_are_plain_stores_on_linux() {
    if !cfg!(target_os = "linux") {
        return;
    }
    assert!(ShmMutex::unlock_is_a_plain_store());
    let pid = fork_child(|| i32::from(!ShmMutex::unlock_is_a_plain_store()));
    wait_ok(pid);
}

/// Holders that keep the lock long enough for the waiters to exhaust their
/// spin and sleep, over and over: no sleeper is ever stranded (every child
/// finishes within a generous bound) and no count leaks.
#[test]
fn sleepers_are_always_woken() {
    let region = Region::new(4096).unwrap();
    let s = shared(&region);
    let mut kids = Kids(Vec::new());
    for p in 0..PROCS {
        kids.add(fork_child(move || {
            for i in 0..150u32 {
                let _g = s.mutex.lock();
                // Hold for 0, 1 or 2 ms: longer than the waiters' spin.
                let hold = std::time::Duration::from_micros(u64::from((i + p) % 3) * 1000);
                let t = std::time::Instant::now();
                while t.elapsed() < hold {
                    std::hint::spin_loop();
                }
                // SAFETY: under the lock.
                unsafe { *s.counter.get() += 1 };
            }
            0
        }));
    }
    for &pid in &kids.0 {
        assert_eq!(
            wait_within(pid, std::time::Duration::from_secs(60)),
            Exit::Code(0)
        );
    }
    // SAFETY: every child has exited.
    assert_eq!(unsafe { *s.counter.get() }, 150 * PROCS as u64);
    for _ in 0..PROCS {
        drop(s.mutex.lock());
    }
    assert_eq!(s.mutex.waiters(), 0);
}

#[test]
fn without_the_lock_updates_are_lost() {
    let region = Region::new(4096).unwrap();
    let s = shared(&region);
    let n = 4 * INCREMENTS;
    run_together(s, PROCS, move || {
        let p = s.counter.get();
        for _ in 0..n {
            // SAFETY: `p` is valid and aligned; the race on it is the point
            // of this test (volatile, so each access really happens).
            unsafe {
                let v = p.read_volatile();
                for _ in 0..8 {
                    std::hint::spin_loop();
                }
                p.write_volatile(v + 1);
            }
        }
    });
    // SAFETY: every child has exited.
    let total = unsafe { *s.counter.get() };
    eprintln!("unlocked: {total} of {}", PROCS as u64 * n);
    assert!(total < PROCS as u64 * n, "no update was lost: {total}");
}

#[test]
fn dead_holder_force_unlock_hands_the_lock_to_a_waiter() {
    let region = Region::new(4096).unwrap();
    let s = shared(&region);
    let mut kids = Kids(Vec::new());
    let holder = kids.add(fork_doomed_holder(s));
    wait_until("the holder to lock", Duration::from_secs(10), || {
        s.stage.load(SeqCst) == 1
    });
    assert_eq!(s.mutex.holder(), Some(holder as u32));
    let waiter = kids.add(fork_waiter(s));
    wait_until("the waiter to sleep", Duration::from_secs(10), || {
        s.mutex.waiters() == 1
    });
    s.stage.store(2, SeqCst);

    // See the death without reaping, so the pid cannot be reused yet.
    assert_eq!(common::wait_dead_nowait(holder), Some(libc::SIGKILL));
    assert_eq!(
        s.mutex.holder(),
        Some(holder as u32),
        "a dead holder keeps it"
    );
    let me = std::process::id();
    assert!(!s.mutex.force_unlock(me), "not the holder");
    assert!(s.mutex.force_unlock(holder as u32));
    assert!(!s.mutex.force_unlock(holder as u32), "already released");
    assert_eq!(wait(holder), Exit::Signal(libc::SIGKILL));

    assert_eq!(wait_within(waiter, Duration::from_secs(10)), Exit::Code(0));
    assert_eq!(s.report.load(SeqCst), holder as u32, "recovered_from");
    assert_eq!(s.mutex.recoveries(), 1);
    assert_eq!(s.mutex.holder(), None);
    assert_eq!(s.mutex.waiters(), 0);
    // Reported once: the next guard is clean.
    assert_eq!(s.mutex.lock().recovered_from(), None);
}

#[test]
fn force_unlock_of_a_non_holder_changes_nothing() {
    let region = Region::new(4096).unwrap();
    let s = shared(&region);
    let me = std::process::id();
    assert!(!s.mutex.force_unlock(me), "free lock");
    let g = s.mutex.lock();
    let mut kids = Kids(Vec::new());
    // A live process that does not hold the lock.
    let bystander = kids.add(fork_child(move || {
        while s.stage.load(SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        i32::from(s.mutex.try_lock().is_some())
    }));
    let before = format!("{:?}", s.mutex);
    for pid in [bystander as u32, 0, u32::MAX, me + 1_000_000] {
        assert!(!s.mutex.force_unlock(pid), "pid {pid}");
    }
    assert_eq!(format!("{:?}", s.mutex), before);
    assert!(before.contains(&format!("held by pid {me}")), "{before}");
    assert_eq!(s.mutex.holder(), Some(me));
    assert_eq!(s.mutex.recoveries(), 0);
    s.stage.store(1, SeqCst); // the bystander's try_lock must fail
    wait_ok(bystander);
    assert!(g.unlock());
    assert_eq!(s.mutex.holder(), None);
}

#[test]
fn unlock_by_a_non_holder_keeps_the_lock() {
    let region = Region::new(4096).unwrap();
    let s = shared(&region);
    let me = std::process::id();
    let g = s.mutex.lock();
    let gp: *const shmzone::ShmGuard<'_> = &g;
    let child = fork_child(move || {
        // The child's copy of the parent's guard: dropping it in a process
        // that does not hold the lock must release nothing.
        // SAFETY: `gp` points to the guard in this (child) copy of the
        // parent's memory; the parent's own guard is in another process.
        let inherited = unsafe { gp.read() };
        if inherited.unlock() {
            return 1;
        }
        if s.mutex.holder() != Some(me) {
            return 2;
        }
        if s.mutex.try_lock().is_some() {
            return 3;
        }
        0
    });
    wait_ok(child);
    assert_eq!(s.mutex.holder(), Some(me));
    drop(g);
    assert_eq!(s.mutex.holder(), None);
}

#[test]
fn self_healing_waiter_takes_over_from_a_dead_holder() {
    let region = Region::new(4096).unwrap();
    let s = shared(&region);
    s.mutex.set_heal_after(Some(Duration::from_millis(50)));
    let mut kids = Kids(Vec::new());
    let holder = kids.add(fork_doomed_holder(s));
    wait_until("the holder to lock", Duration::from_secs(10), || {
        s.stage.load(SeqCst) == 1
    });
    let waiter = kids.add(fork_waiter(s));
    wait_until("the waiter to sleep", Duration::from_secs(10), || {
        s.mutex.waiters() == 1
    });
    s.stage.store(2, SeqCst);
    // No force_unlock, and the dead holder is not even reaped (a zombie):
    // the waiter must find out by itself.
    assert_eq!(wait_within(waiter, Duration::from_secs(10)), Exit::Code(0));
    assert_eq!(s.report.load(SeqCst), holder as u32, "recovered_from");
    assert_eq!(s.mutex.recoveries(), 1);
    assert_eq!(s.mutex.holder(), None);
    assert_eq!(wait(holder), Exit::Signal(libc::SIGKILL));
}

#[test]
fn self_healing_leaves_a_live_holder_alone() {
    let region = Region::new(4096).unwrap();
    let s = shared(&region);
    s.mutex.set_heal_after(Some(Duration::from_millis(5)));
    let g = s.mutex.lock();
    let mut kids = Kids(Vec::new());
    let waiter = kids.add(fork_child(move || {
        let g = s.mutex.lock();
        // Acquired only after the parent released it, and not "recovered".
        i32::from(s.stage.load(SeqCst) != 1) + 2 * i32::from(g.recovered_from().is_some())
    }));
    wait_until("the waiter to sleep", Duration::from_secs(10), || {
        s.mutex.waiters() == 1
    });
    std::thread::sleep(Duration::from_millis(100)); // ~20 heal checks
    assert_eq!(s.mutex.holder(), Some(std::process::id()));
    s.stage.store(1, SeqCst);
    drop(g);
    assert_eq!(wait_within(waiter, Duration::from_secs(10)), Exit::Code(0));
    assert_eq!(s.mutex.recoveries(), 0);
}

// Only where futex.rs has a futex; elsewhere the waiter yields in a loop.
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), ignore)]
#[test]
fn a_blocked_waiter_sleeps_instead_of_burning_cpu() {
    let region = Region::new(4096).unwrap();
    let s = shared(&region);
    let g = s.mutex.lock();
    let mut kids = Kids(Vec::new());
    let waiter = kids.add(fork_child(move || {
        let g = s.mutex.lock();
        if s.stage.load(SeqCst) != 1 {
            return 1; // got it while the parent still held it
        }
        drop(g);
        // SAFETY: `ru` is a valid out-pointer.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        s.report64.store(us(ru.ru_utime) + us(ru.ru_stime), SeqCst);
        0
    }));
    wait_until("the waiter to sleep", Duration::from_secs(10), || {
        s.mutex.waiters() == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    s.stage.store(1, SeqCst);
    drop(g);
    assert_eq!(wait_within(waiter, Duration::from_secs(10)), Exit::Code(0));
    let cpu_us = s.report64.load(SeqCst);
    eprintln!("blocked 1 s, used {cpu_us} us of CPU");
    assert!(cpu_us < 200_000, "the waiter used {cpu_us} us of CPU");
}

#[test]
fn force_unlock_wakes_all_sleepers_and_one_reports_the_recovery() {
    const WAITERS: u32 = 3;
    let region = Region::new(4096).unwrap();
    let s = shared(&region);
    let mut kids = Kids(Vec::new());
    let holder = kids.add(fork_doomed_holder(s));
    wait_until("the holder to lock", Duration::from_secs(10), || {
        s.stage.load(SeqCst) == 1
    });
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            kids.add(fork_child(move || {
                let g = s.mutex.lock();
                if g.recovered_from().is_some() {
                    s.report.fetch_add(1, SeqCst);
                }
                s.report64.fetch_add(1, SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                0
            }))
        })
        .collect();
    wait_until("every waiter to sleep", Duration::from_secs(10), || {
        s.mutex.waiters() == WAITERS
    });
    s.stage.store(2, SeqCst);
    assert_eq!(common::wait_dead_nowait(holder), Some(libc::SIGKILL));
    assert!(s.mutex.force_unlock(holder as u32));
    assert_eq!(wait(holder), Exit::Signal(libc::SIGKILL));
    for pid in waiters {
        assert_eq!(wait_within(pid, Duration::from_secs(10)), Exit::Code(0));
    }
    assert_eq!(s.report64.load(SeqCst), WAITERS as u64, "all got the lock");
    assert_eq!(s.report.load(SeqCst), 1, "exactly one guard reports it");
    assert_eq!(s.mutex.recoveries(), 1);
    assert_eq!(s.mutex.waiters(), 0);
    assert_eq!(s.mutex.holder(), None);
}
