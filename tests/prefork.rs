//! The pre-fork master with real processes: graceful stop, the death hook
//! before the reap, respawn and its rate limit, reload, the stop timeout,
//! and workers outliving a dead master.
//!
//! Each test forks a child that becomes the master (single-threaded after
//! the fork) and talks to the test through a shared board of atomics.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::board::Board;
use common::{fork_child, wait_within, Exit};
use shmzone::prefork::{Master, Worker, EXIT_FATAL};

// Board slots.
const STARTS: usize = 0; // + slot index: starts of that slot
const PIDS: usize = 8; // + slot index: pid of its latest worker
const GEN1_STARTS: usize = 16; // starts of generation >= 1 workers
const HOOK_CALLS: usize = 17;
const HOOK_LAST_PID: usize = 18;
const HOOK_ZOMBIE: usize = 19; // hook calls that found the pid still there
const HOOK_TOLD: usize = 20; // hook calls for workers told to stop
const RELOADS: usize = 21;
const GRACEFUL: usize = 22; // workers that left their loop on a stop request
const R_SPAWNED: usize = 24;
const R_DEATHS: usize = 25;
const R_ABNORMAL: usize = 26;
const R_RESPAWNED: usize = 27;
const R_RELOADS: usize = 28;
const R_FAILED_RELOADS: usize = 29;
const R_KILLED: usize = 30;
const R_GAVE_UP: usize = 31;

fn alive(pid: u64) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn signal(pid: libc::pid_t, sig: i32) {
    // SAFETY: sends a signal to our own child (or grandchild).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// The usual worker: record the start, wait for the stop request, record it.
fn patient(b: &Board, w: &Worker) -> i32 {
    b.add(STARTS + w.index());
    b.at(PIDS + w.index())
        .store(std::process::id() as u64, Ordering::SeqCst);
    if w.generation() >= 1 {
        b.add(GEN1_STARTS);
    }
    while !w.wait_stop(None) {}
    b.add(GRACEFUL);
    0
}

/// Runs `master` (with the recording death hook) in a forked child; the
/// child writes the report into the board and exits 0 (3 if it gave up).
fn spawn_master(
    board: &Board,
    configure: impl FnOnce(Master<&Board>) -> Master<&Board>,
    work: impl Fn(&Board, &Worker) -> i32,
) -> MasterGuard {
    MasterGuard(fork_child(|| {
        let master = configure(Master::new(board)).on_death(|b: &&Board, d| {
            b.add(HOOK_CALLS);
            b.at(HOOK_LAST_PID).store(d.pid as u64, Ordering::SeqCst);
            if alive(d.pid as u64) {
                b.add(HOOK_ZOMBIE);
            }
            if d.told_to_stop {
                b.add(HOOK_TOLD);
            }
        });
        // SAFETY: the forked child has a single thread.
        let (b, r) = match unsafe { master.run(|b: &&Board, w: &Worker| work(b, w)) } {
            Ok(x) => x,
            Err(_) => return 9,
        };
        for (slot, v) in [
            (R_SPAWNED, r.spawned),
            (R_DEATHS, r.deaths),
            (R_ABNORMAL, r.abnormal),
            (R_RESPAWNED, r.respawned),
            (R_RELOADS, r.reloads),
            (R_FAILED_RELOADS, r.failed_reloads),
            (R_KILLED, r.killed),
            (R_GAVE_UP, r.gave_up as u64),
        ] {
            b.at(slot).store(v, Ordering::SeqCst);
        }
        if r.gave_up {
            3
        } else {
            0
        }
    }))
}

/// A master's pid; SIGKILLs the master if the test panics, so that no
/// process outlives a failed test (its workers then see their stop pipes
/// hang up and leave).
struct MasterGuard(libc::pid_t);

impl Drop for MasterGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
}

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn sigterm_stops_every_worker_gracefully() {
    let b = Board::new();
    let m = spawn_master(&b, |m| m.workers(3), patient);
    b.until("3 workers", |b| (0..3).all(|i| b.get(STARTS + i) == 1));
    let pids: Vec<u64> = (0..3).map(|i| b.get(PIDS + i)).collect();
    signal(m.0, libc::SIGTERM);
    assert_eq!(wait_within(m.0, LIMIT), Exit::Code(0));
    assert_eq!(b.get(GRACEFUL), 3, "every worker left on the stop request");
    assert_eq!(b.get(R_SPAWNED), 3);
    assert_eq!(b.get(R_DEATHS), 3);
    assert_eq!(b.get(R_ABNORMAL), 0);
    assert_eq!(b.get(HOOK_TOLD), 3);
    for pid in pids {
        assert!(!alive(pid), "worker {pid} left behind");
    }
}

#[test]
fn killed_worker_is_unlocked_before_reap_and_respawned() {
    let b = Board::new();
    let m = spawn_master(&b, |m| m.workers(2), patient);
    b.until("2 workers", |b| (0..2).all(|i| b.get(STARTS + i) == 1));
    let victim = b.get(PIDS);
    signal(victim as libc::pid_t, libc::SIGKILL);
    b.until("slot 0 respawned", |b| b.get(STARTS) == 2);
    assert_eq!(b.get(HOOK_CALLS), 1);
    assert_eq!(b.get(HOOK_LAST_PID), victim);
    assert_eq!(
        b.get(HOOK_ZOMBIE),
        1,
        "the hook ran while the dead pid was not reaped yet"
    );
    assert_ne!(b.get(PIDS), victim);
    signal(m.0, libc::SIGINT);
    assert_eq!(wait_within(m.0, LIMIT), Exit::Code(0));
    assert_eq!(b.get(R_ABNORMAL), 1);
    assert_eq!(b.get(R_RESPAWNED), 1);
    assert_eq!(b.get(R_SPAWNED), 3);
    assert_eq!(b.get(GRACEFUL), 2);
}

#[test]
fn worker_failing_at_start_is_given_up() {
    let b = Board::new();
    let m = spawn_master(
        &b,
        |m| {
            m.workers(1)
                .respawn_limit(Duration::from_secs(30), Duration::from_millis(40), 4)
        },
        |b, w| {
            b.add(STARTS + w.index());
            1
        },
    );
    // The master ends by itself: every slot given up.
    assert_eq!(wait_within(m.0, LIMIT), Exit::Code(3));
    assert_eq!(b.get(STARTS), 4, "forked exactly give_up_after times");
    assert_eq!(b.get(R_GAVE_UP), 1);
    assert_eq!(b.get(R_ABNORMAL), 4);
}

#[test]
fn fatal_exit_is_not_respawned() {
    let b = Board::new();
    let m = spawn_master(
        &b,
        // min_uptime zero: any other death would be respawned at once.
        |m| {
            m.workers(2)
                .respawn_limit(Duration::ZERO, Duration::from_millis(10), 100)
        },
        |b, w| {
            if w.index() == 1 {
                b.add(STARTS + 1);
                return EXIT_FATAL;
            }
            patient(b, w)
        },
    );
    b.until("slot 1 died", |b| {
        b.get(HOOK_CALLS) == 1 && b.get(STARTS) == 1
    });
    signal(m.0, libc::SIGTERM);
    assert_eq!(wait_within(m.0, LIMIT), Exit::Code(0));
    assert_eq!(b.get(STARTS + 1), 1);
    assert_eq!(b.get(R_SPAWNED), 2);
    assert_eq!(b.get(R_RESPAWNED), 0);
}

#[test]
fn sighup_reloads_and_replaces_the_generation() {
    let b = Board::new();
    let m = spawn_master(
        &b,
        |m| {
            m.workers(2).on_reload(|b: &mut &Board| {
                b.add(RELOADS);
                Ok(())
            })
        },
        patient,
    );
    b.until("2 workers", |b| (0..2).all(|i| b.get(STARTS + i) == 1));
    signal(m.0, libc::SIGHUP);
    b.until("new generation", |b| b.get(GEN1_STARTS) == 2);
    b.until("old generation gone", |b| b.get(HOOK_TOLD) == 2);
    assert_eq!(b.get(RELOADS), 1);
    assert_eq!(b.get(GRACEFUL), 2, "the old workers stopped gracefully");
    signal(m.0, libc::SIGTERM);
    assert_eq!(wait_within(m.0, LIMIT), Exit::Code(0));
    assert_eq!(b.get(R_RELOADS), 1);
    assert_eq!(b.get(R_SPAWNED), 4);
    assert_eq!(b.get(R_ABNORMAL), 0);
    assert_eq!(b.get(GRACEFUL), 4);
}

#[test]
fn refused_reload_keeps_the_old_workers() {
    let b = Board::new();
    let m = spawn_master(
        &b,
        |m| {
            m.workers(2).on_reload(|b: &mut &Board| {
                b.add(RELOADS);
                Err("no".into())
            })
        },
        patient,
    );
    b.until("2 workers", |b| (0..2).all(|i| b.get(STARTS + i) == 1));
    signal(m.0, libc::SIGHUP);
    b.until("reload hook ran", |b| b.get(RELOADS) == 1);
    signal(m.0, libc::SIGTERM);
    assert_eq!(wait_within(m.0, LIMIT), Exit::Code(0));
    assert_eq!(b.get(R_FAILED_RELOADS), 1);
    assert_eq!(b.get(R_RELOADS), 0);
    assert_eq!(b.get(R_SPAWNED), 2);
    assert_eq!(b.get(GEN1_STARTS), 0);
}

#[test]
fn stuck_worker_is_killed_after_the_stop_timeout() {
    let b = Board::new();
    let m = spawn_master(
        &b,
        |m| m.workers(1).stop_timeout(Duration::from_millis(200)),
        |b, w| {
            b.add(STARTS + w.index());
            // Ignores the stop request (but not the master's death).
            while shmzone::prefork::parent_pid() == w.master_pid() {
                std::thread::sleep(Duration::from_millis(20));
            }
            1
        },
    );
    b.until("1 worker", |b| b.get(STARTS) == 1);
    signal(m.0, libc::SIGTERM);
    assert_eq!(wait_within(m.0, LIMIT), Exit::Code(0));
    assert_eq!(b.get(R_KILLED), 1);
    assert_eq!(b.get(R_ABNORMAL), 1);
}

#[test]
fn workers_stop_when_the_master_dies() {
    let b = Board::new();
    let m = spawn_master(&b, |m| m.workers(2), patient);
    b.until("2 workers", |b| (0..2).all(|i| b.get(STARTS + i) == 1));
    signal(m.0, libc::SIGKILL);
    assert_eq!(wait_within(m.0, LIMIT), Exit::Signal(libc::SIGKILL));
    b.until("orphaned workers stopped", |b| b.get(GRACEFUL) == 2);
}

const LOCKED_BY: usize = 40; // pid of the worker that took the zone lock
const UNLOCKED_Z: usize = 41; // hook: recoveries that released zone "z"
const BROKEN: usize = 42; // hook: zones found inconsistent
const RECOVERED_FROM: usize = 43; // 1 + the dead pid the next locker was told of

#[test]
fn worker_killed_holding_a_zone_lock_is_recovered_before_reap() {
    use shmzone::prefork::recover_zones;
    use shmzone::Zones;
    let b = Board::new();
    let zones = Zones::builder().zone("z", 64 << 10).build().unwrap();
    let m = MasterGuard(fork_child(|| {
        let master = Master::new((zones, &b))
            .workers(1)
            .on_death(|(zones, b), d| {
                let r = recover_zones(zones, d.pid);
                if r.unlocked == ["z"] {
                    b.add(UNLOCKED_Z);
                }
                b.at(BROKEN).store(r.broken.len() as u64, Ordering::SeqCst);
            });
        // SAFETY: the forked child has a single thread.
        let run = unsafe {
            master.run(|(zones, b), w| {
                let zone = zones.get("z").unwrap();
                let first = b.get(STARTS) == 0;
                b.add(STARTS);
                let guard = zone.lock();
                if first {
                    // Hold the lock until killed.
                    b.at(LOCKED_BY)
                        .store(std::process::id() as u64, Ordering::SeqCst);
                    while shmzone::prefork::parent_pid() == w.master_pid() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return 1;
                }
                // The master's check took the recovery notice; this worker
                // just gets a free lock.
                let notice = guard.recovered_from().map_or(0, |p| p as u64);
                drop(guard);
                b.at(RECOVERED_FROM).store(1 + notice, Ordering::SeqCst);
                while !w.wait_stop(None) {}
                0
            })
        };
        match run {
            Ok(_) => 0,
            Err(_) => 9,
        }
    }));
    b.until("the lock taken", |b| b.get(LOCKED_BY) != 0);
    let holder = b.get(LOCKED_BY);
    signal(holder as libc::pid_t, libc::SIGKILL);
    b.until("the respawned worker got the lock", |b| {
        b.get(RECOVERED_FROM) != 0
    });
    assert_eq!(b.get(UNLOCKED_Z), 1, "the hook released zone z");
    assert_eq!(b.get(BROKEN), 0, "the pool was consistent");
    assert_eq!(b.get(RECOVERED_FROM), 1, "the notice went to the master");
    signal(m.0, libc::SIGTERM);
    assert_eq!(wait_within(m.0, LIMIT), Exit::Code(0));
}

/// A burst of deaths (16 kills in quick succession, 2 workers, the default
/// respawn limit) never ends the service: respawn backs off, capped, and
/// never gives up.
#[test]
fn a_burst_of_deaths_does_not_end_the_service() {
    let b = Board::new();
    let m = spawn_master(&b, |m| m.workers(2), patient);
    b.until("both workers up", |b| {
        b.get(STARTS) >= 1 && b.get(STARTS + 1) >= 1
    });
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kills < 16 {
        assert!(
            Instant::now() < deadline,
            "respawn stalled after {kills} kills"
        );
        for slot in 0..2 {
            let pid = b.get(PIDS + slot);
            if pid != 0 && alive(pid) {
                signal(pid as libc::pid_t, libc::SIGKILL);
                b.at(PIDS + slot).store(0, Ordering::SeqCst);
                kills += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both slots come back (the capped delay is 5 s at most).
    b.until("a worker in each slot again", |b| {
        (0..2).all(|s| b.get(PIDS + s) != 0 && alive(b.get(PIDS + s)))
    });
    assert!(alive(m.0 as u64), "the master is still serving");
    signal(m.0, libc::SIGTERM);
    assert_eq!(wait_within(m.0, LIMIT), Exit::Code(0));
    assert_eq!(b.get(R_GAVE_UP), 0);
    assert!(b.get(R_RESPAWNED) >= 16);
}
