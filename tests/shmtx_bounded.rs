//! Bounded waits on the process-shared lock, with real processes: a
//! sleeper stranded by a holder that died inside its unlock, the
//! process-wide self-healing a master uses, `lock_for` against a holder
//! that is not ours, and the direct hand-off to a long waiter.

mod common;

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::{fork_child, wait_within, Exit};
use shmzone::{shmtx, Region, ShmMutex};

/// The lock word (offset 0 of a `ShmMutex`, asserted in `shmtx.rs`), to
/// play a holder killed between its store of 0 and its wake.
fn word(m: &ShmMutex) -> &AtomicU32 {
    // SAFETY: `ShmMutex` is `repr(C)` with the `AtomicU32` lock word first.
    unsafe { &*(m as *const ShmMutex).cast::<AtomicU32>() }
}

fn mutex(region: &Region) -> &ShmMutex {
    // SAFETY: the region is page-aligned and zero-filled: a free lock.
    unsafe { &*region.as_ptr().cast::<ShmMutex>() }
}

/// Polls `cond` every millisecond; panics after `limit`.
fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A child that blocks in `lock()` and exits 0 once it has the lock.
fn fork_sleeper(m: &ShmMutex) -> libc::pid_t {
    fork_child(|| {
        let g = m.lock();
        if m.holder() != Some(std::process::id()) {
            return 2;
        }
        drop(g);
        0
    })
}

/// Parks the calling process's hold on `m` as a holder killed inside its
/// unlock would leave it: the word is 0, the sleeper is still counted, and
/// nobody woke it.
fn die_inside_unlock(m: &ShmMutex, g: shmzone::ShmGuard<'_>) {
    std::mem::forget(g);
    word(m).store(0, SeqCst);
}

/// Regression (issue 11, item 5): a sleeper slept with no timeout, so a
/// holder killed after its store of 0 and before its wake left it asleep
/// for ever with the lock free.
#[test]
fn a_stranded_sleeper_wakes_by_itself() {
    let region = Region::new(4096).unwrap();
    let m = mutex(&region);
    let g = m.lock();
    // Two: the first to wait 0.5 ms naps as the heir (in 1 ms slices); the
    // other sleeps counted in `wait`.
    let kids = [fork_sleeper(m), fork_sleeper(m)];
    wait_until("both sleepers counted", Duration::from_secs(10), || {
        m.waiters() >= 2
    });
    std::thread::sleep(Duration::from_millis(5));
    die_inside_unlock(m, g);
    for kid in kids {
        assert_eq!(wait_within(kid, Duration::from_secs(10)), Exit::Code(0));
    }
}

/// `wake_stranded` (what a master calls for every lock after a death)
/// finds the sleeper of a free lock and wakes it.
#[test]
fn wake_stranded_wakes_the_sleeper_of_a_free_lock() {
    let region = Region::new(4096).unwrap();
    let m = mutex(&region);
    let g = m.lock();
    // Two: the first to wait 0.5 ms naps as the heir (in 1 ms slices); the
    // other sleeps counted in `wait`.
    let kids = [fork_sleeper(m), fork_sleeper(m)];
    wait_until("both sleepers counted", Duration::from_secs(10), || {
        m.waiters() >= 2
    });
    assert!(!m.wake_stranded(), "held: nobody is stranded");
    std::thread::sleep(Duration::from_millis(5));
    die_inside_unlock(m, g);
    assert!(m.wake_stranded());
    for kid in kids {
        assert_eq!(wait_within(kid, Duration::from_secs(10)), Exit::Code(0));
    }
}

/// With `set_process_heal_after`, a waiter takes over a lock whose holder
/// died and is still a zombie (its parent, this waiter, has not processed
/// the death), even though the lock's own self-healing is off.
#[test]
fn process_wide_healing_takes_over_from_a_zombie_holder() {
    let region = Region::new(4096).unwrap();
    let m = mutex(&region);
    assert_eq!(m.heal_after(), None);
    // In a child of its own: the setting is process-wide.
    let master = fork_child(|| {
        shmtx::set_process_heal_after(Some(Duration::from_millis(20)));
        let doomed = fork_child(|| {
            std::mem::forget(m.lock());
            0
        });
        // Not reaped: a zombie holding the lock.
        while m.holder() != Some(doomed as u32) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let code = match m.lock_for(Duration::from_secs(20)) {
            Ok(g) if g.recovered_from() == Some(doomed as u32) => 0,
            Ok(_) => 3,
            Err(_) => 4,
        };
        let mut status = 0;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(doomed, &mut status, 0) };
        code
    });
    assert_eq!(wait_within(master, Duration::from_secs(30)), Exit::Code(0));
    assert_eq!(m.recoveries(), 1);
}

/// Issue 12.8: a word naming a live process that is not one of ours (pid 1)
/// made a waiter wait for ever; `lock_for` gives up and names it.
#[test]
fn lock_for_gives_up_on_a_foreign_live_holder() {
    let region = Region::new(4096).unwrap();
    let m = mutex(&region);
    word(m).store(1, SeqCst);
    let e = m.lock_for(Duration::from_millis(30)).unwrap_err();
    assert_eq!(e.holder(), Some(1));
    assert!(e.to_string().contains("process 1"), "{e}");
    assert_eq!(m.holder(), Some(1), "nothing taken");
    word(m).store(0, SeqCst);
}

/// Issue 12.11: a process that waits long gets the lock handed to it, even
/// while another process keeps taking and releasing it in a tight loop (the
/// barging that starved waiters for seconds).
#[test]
fn a_long_waiter_is_handed_the_lock() {
    let region = Region::new(4096).unwrap();
    let m = mutex(&region);
    // SAFETY: the region is 4096 bytes and the mutex takes the first 64.
    let stop = unsafe { &*region.as_ptr().add(64).cast::<AtomicU32>() };
    let hog = fork_child(|| {
        while stop.load(SeqCst) == 0 {
            let _g = m.lock();
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(20) {
                std::hint::spin_loop();
            }
        }
        0
    });
    wait_until("the hog running", Duration::from_secs(10), || {
        m.holder().is_some()
    });
    let before = m.handoffs();
    let mut worst = Duration::ZERO;
    for _ in 0..200 {
        let t = Instant::now();
        let g = m.lock_for(Duration::from_secs(20)).expect("handed over");
        worst = worst.max(t.elapsed());
        drop(g);
    }
    stop.store(1, SeqCst);
    assert_eq!(wait_within(hog, Duration::from_secs(20)), Exit::Code(0));
    eprintln!("worst wait {worst:?}, {} hand-offs", m.handoffs() - before);
}
