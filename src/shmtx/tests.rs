//! Unit tests of the lock's words and paths (the multi-process ones are in
//! `tests/shmtx*.rs`).

use super::wait::Waiter;
use super::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[test]
fn zero_bytes_are_a_free_lock() {
    let m = ShmMutex::new();
    // SAFETY: ShmMutex is plain atomics; reading its bytes is fine.
    let bytes: [u8; 64] = unsafe { std::mem::transmute_copy(&m) };
    assert_eq!(&bytes[..20], &[0u8; 20]);
}

#[test]
fn recovered_state_is_reported_once() {
    let m = ShmMutex::new();
    // Pretend pid 7 died holding it.
    m.lock.store(7, Ordering::Relaxed);
    assert_eq!(m.holder(), Some(7));
    assert!(m.force_unlock(7));
    assert_eq!(m.holder(), None);
    assert_eq!(m.recoveries(), 1);
    assert!(!m.force_unlock(7));
    assert!(format!("{m:?}").contains("recovered from dead pid 7"));
    let g = m.try_lock().expect("free after recovery");
    assert_eq!(g.recovered_from(), Some(7));
    drop(g);
    assert_eq!(m.lock().recovered_from(), None);
    assert_eq!(m.recoveries(), 1);
}

#[test]
fn heal_takes_over_only_from_a_dead_pid() {
    let m = ShmMutex::new();
    let me = os::process::current_pid();
    m.lock.store(me, Ordering::Relaxed);
    assert!(m.heal(me + 1, me).is_none()); // holder alive
    assert_eq!(m.holder(), Some(me));
    // A pid above pid_max can never be alive.
    m.lock.store(i32::MAX as u32, Ordering::Relaxed);
    let g = m.heal(me, i32::MAX as u32).expect("dead holder");
    assert_eq!(g.recovered_from(), Some(i32::MAX as u32));
    assert_eq!(m.holder(), Some(me));
    assert_eq!(m.recoveries(), 1);
    assert!(g.unlock());
}

/// Regression (issue 12.10): a waiter that read a free word (0 or the
/// recovered marker) called `heal` with it and counted a recovery for
/// simply taking a free lock.
#[test]
fn heal_of_a_free_word_takes_nothing_and_counts_nothing() {
    let m = ShmMutex::new();
    let me = os::process::current_pid();
    assert!(m.heal(me, FREE).is_none());
    assert_eq!(m.holder(), None);
    m.lock.store(RECOVERED, Ordering::Relaxed);
    assert!(m.heal(me, RECOVERED).is_none());
    assert_eq!(m.recoveries(), 0);
    m.lock.store(FREE, Ordering::Relaxed);
}

#[test]
fn lock_for_times_out_naming_the_holder_then_succeeds() {
    let m = ShmMutex::new();
    // A pid above pid_max: never alive, but no self-healing is on.
    m.lock.store(i32::MAX as u32, Ordering::Relaxed);
    let e = m.lock_for(Duration::from_millis(20)).unwrap_err();
    assert_eq!(e.holder(), Some(i32::MAX as u32));
    assert!(e.waited() >= Duration::from_millis(20));
    assert!(e.to_string().contains(&format!("process {}", i32::MAX)));
    // Nothing of the waiter is left behind: no heir, no count.
    assert_eq!(m.heir.load(Ordering::Relaxed), 0);
    assert!(m.force_unlock(i32::MAX as u32));
    let g = m.lock_for(Duration::from_millis(20)).expect("free");
    assert_eq!(g.recovered_from(), Some(i32::MAX as u32));
}

#[test]
fn wake_stranded_wakes_only_sleepers_of_a_free_lock() {
    let m = ShmMutex::new();
    assert!(!m.wake_stranded());
    // Held, with a sleeper counted: not stranded.
    let g = m.lock();
    m.wait.store(1, Ordering::Relaxed);
    assert!(!m.wake_stranded());
    assert_eq!(m.waiters(), 1);
    // A holder that died between its store of 0 and its wake.
    std::mem::forget(g);
    m.lock.store(FREE, Ordering::Relaxed);
    let seq = m.seq.load(Ordering::Relaxed);
    assert!(m.wake_stranded());
    assert_eq!(m.waiters(), 0);
    assert_ne!(m.seq.load(Ordering::Relaxed), seq, "sleepers see seq move");
    // And after a force-unlock (the recovered marker).
    m.lock.store(7, Ordering::Relaxed);
    assert!(m.force_unlock(7));
    m.wait.store(2, Ordering::Relaxed);
    assert!(m.wake_stranded());
    assert_eq!(m.waiters(), 0);
}

#[test]
fn hand_off_goes_to_a_live_heir_and_skips_a_dead_one() {
    let m = ShmMutex::new();
    let me = os::process::current_pid();
    // A dead heir is dropped, and the unlock frees the lock.
    let g = m.lock();
    m.heir.store(i32::MAX as u32, Ordering::Relaxed);
    assert!(g.unlock());
    assert_eq!(m.heir.load(Ordering::Relaxed), 0);
    assert_eq!(m.holder(), None);
    assert_eq!(m.handoffs(), 0);
    // A live heir (ourselves, standing for another thread of this
    // process) is handed the lock: the word never becomes free.
    let g = m.lock();
    m.heir.store(me, Ordering::Relaxed);
    assert!(g.unlock());
    assert_eq!(m.holder(), Some(me));
    assert_eq!(m.heir.load(Ordering::Relaxed), 0);
    assert_eq!(m.handoffs(), 1);
    m.lock.store(FREE, Ordering::Relaxed);
}

#[test]
fn heal_after_rounds_up_to_milliseconds() {
    let m = ShmMutex::new();
    m.set_heal_after(Some(Duration::from_micros(1)));
    assert_eq!(m.heal_after(), Some(Duration::from_millis(1)));
    m.set_heal_after(Some(Duration::from_micros(1500)));
    assert_eq!(m.heal_after(), Some(Duration::from_millis(2)));
    m.set_heal_after(None);
    assert_eq!(m.heal_after(), None);
}

#[test]
fn spin_limit_is_bounded_whatever_the_word_holds() {
    let m = ShmMutex::new();
    assert_eq!(m.spin_limit(), SPIN_LIMIT);
    m.set_spin_limit(Some(1));
    assert_eq!(m.spin_limit(), 1);
    // Garbage in shared memory: the spin still ends (n doubles past it).
    m.spin.store(u32::MAX, Ordering::Relaxed);
    assert_eq!(m.spin_limit(), MAX_SPIN_LIMIT);
    let mut w = Waiter::for_test(os::process::current_pid());
    let g = m.lock();
    // Held by us: the spin phase gives up (bounded) instead of looping.
    m.set_spin_limit(Some(64));
    assert!(m.spin(&mut w).is_none());
    drop(g);
    assert!(m.spin(&mut w).is_some());
}

/// Regression (stop 7's CI hang in `tests/dict_storm.rs`): an unlock
/// checked its heir alive, then the heir was SIGKILLed, reaped and
/// force-unlocked by the master (which found the unlocker's pid in the
/// word and did nothing), and only then did the unlock store the heir's
/// pid: the word named a dead process that no one would recover, and with
/// self-healing off every later `lock()` slept forever.
#[test]
fn hand_off_to_a_heir_that_dies_in_the_window_is_recovered() {
    static M: ShmMutex = ShmMutex::new();
    // The window, as the master would fill it: the heir is killed and
    // reaped, and the master's force_unlock finds nothing to take.
    fn master_in_window(heir: u32) {
        // SAFETY: plain syscalls on our own child.
        unsafe {
            assert_eq!(libc::kill(heir as libc::pid_t, libc::SIGKILL), 0);
            let mut st = 0;
            assert_eq!(
                libc::waitpid(heir as libc::pid_t, &mut st, 0),
                heir as libc::pid_t
            );
        }
        assert!(!M.force_unlock(heir), "the unlocker still holds the word");
    }
    // SAFETY: the child only sleeps until it is killed (async-signal-safe).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        loop {
            // SAFETY: pause(2) is async-signal-safe.
            unsafe { libc::pause() };
        }
    }
    let g = M.lock();
    M.heir.store(child as u32, Ordering::SeqCst);
    super::wait::tests_hook::set(Some(master_in_window));
    let released = g.unlock();
    super::wait::tests_hook::set(None);
    assert!(released);
    // The unlock saw the heir gone after its store and recovered it.
    assert_eq!(M.holder(), None, "the word names no dead process");
    assert_eq!(M.recoveries(), 1);
    let g = M.try_lock().expect("free after the hand-off's recovery");
    assert_eq!(g.recovered_from(), Some(child as u32));
    assert!(g.unlock());
}
