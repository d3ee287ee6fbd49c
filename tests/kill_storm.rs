//! The kill storm: 4 workers under `prefork::Master` churn one zone (random
//! allocations and frees of chunks and page runs, every block filled with a
//! pattern naming its owner and checked before it is freed, and a shared
//! record of three counters updated in one crash-atomic section), while the
//! test SIGKILLs random workers at random moments, sometimes 2 or 3 at
//! once. The master's death hook is `recover_zones`.
//!
//! Asserted: no `check()` failure after any recovery, no block overlapping
//! another or outside the zone, no torn record, no hang (the zone keeps
//! serving after every burst), no fenced zone, and the zone serves at the
//! end. Printed: kills, recoveries, rollbacks, blocks leaked by the dead.
//!
//! `SHMZONE_KILLS=1000 cargo test --release --test kill_storm -- --nocapture`
//! (the default is 300 kills, for CI).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::board::Board;
use common::{fork_child, wait_within, Exit};
use shmzone::prefork::{recover_zones, Master, Worker};
use shmzone::{Zone, Zones, SLAB_PAGE};

const WORKERS: usize = 4;
const ZONE: usize = 64 << 20;

const PIDS: usize = 0; // + slot
const OPS: usize = 8;
const CORRUPT: usize = 9; // a block's pattern was overwritten
const OUTSIDE: usize = 10; // a block outside the zone
const BAD_FREE: usize = 11; // a free of a live block refused
const TORN: usize = 12; // the record's counters disagreed
const DEATHS: usize = 13;
const BROKEN: usize = 14; // recover_zones found a zone broken
const ROLLBACKS: usize = 15;
const FENCED: usize = 16;
const PANICS: usize = 17;
const STARTS: usize = 18;
const CACHES_BACK: usize = 19; // dead workers' caches returned by recover_zones

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The shared record: three counters always equal between sections.
fn record(zone: &Zone<'_>) -> *mut u64 {
    zone.ptr_at(zone.root()).expect("root").as_ptr().cast()
}

struct Block {
    p: *mut u8,
    size: usize,
    tag: u64,
}

/// The bytes a block holds: its tag, in its first and last 64 bytes.
fn fill(b: &Block) {
    let n = b.size.min(64);
    // SAFETY: the block is live and `size` bytes long.
    unsafe {
        for i in (0..n).step_by(8).take_while(|i| i + 8 <= n) {
            b.p.add(i).cast::<u64>().write_unaligned(b.tag ^ i as u64);
        }
        if b.size >= 128 {
            let end = b.size - 64;
            for i in (0..64).step_by(8) {
                b.p.add(end + i)
                    .cast::<u64>()
                    .write_unaligned(b.tag ^ !(i as u64));
            }
        }
    }
}

fn intact(b: &Block) -> bool {
    let n = b.size.min(64);
    // SAFETY: as in `fill`.
    unsafe {
        for i in (0..n).step_by(8).take_while(|i| i + 8 <= n) {
            if b.p.add(i).cast::<u64>().read_unaligned() != b.tag ^ i as u64 {
                return false;
            }
        }
        if b.size >= 128 {
            let end = b.size - 64;
            for i in (0..64).step_by(8) {
                if b.p.add(end + i).cast::<u64>().read_unaligned() != b.tag ^ !(i as u64) {
                    return false;
                }
            }
        }
    }
    true
}

fn churn(zones: &Zones, board: &Board, w: &Worker) -> i32 {
    let me = std::process::id() as u64;
    board.at(PIDS + w.index()).store(me, Ordering::SeqCst);
    board.add(STARTS);
    let zone = zones.get("churn").expect("zone");
    let lo = zone.pool().base().as_ptr() as usize;
    let hi = lo + zone.size();
    let rec = record(&zone);
    let mut rng = Rng(me.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut live: Vec<Block> = Vec::new();
    let mut serial = 0u64;
    let mut ops = 0u64;
    while !w.should_stop() {
        let r = rng.next();
        match r % 16 {
            0..=7 if live.len() < 32 => {
                let size = if r % 97 == 0 {
                    SLAB_PAGE + (r >> 8) as usize % (3 * SLAB_PAGE)
                } else {
                    8 + (r >> 8) as usize % 2041
                };
                if let Some(p) = zone.alloc(size) {
                    let p = p.as_ptr();
                    if (p as usize) < lo || p as usize + size > hi {
                        board.add(OUTSIDE);
                        continue;
                    }
                    serial += 1;
                    let b = Block {
                        p,
                        size,
                        tag: (me << 32) | serial,
                    };
                    fill(&b);
                    live.push(b);
                }
            }
            0..=11 => {
                if live.is_empty() {
                    continue;
                }
                let i = (r >> 8) as usize % live.len();
                let b = live.swap_remove(i);
                if !intact(&b) {
                    board.add(CORRUPT);
                }
                // SAFETY: a live block of this zone, not used after.
                if unsafe { zone.free(b.p) }.is_err() {
                    board.add(BAD_FREE);
                }
            }
            _ => {
                let g = zone.lock();
                // SAFETY: the record is three live u64s in the zone; we
                // hold its lock; writes go through the section.
                unsafe {
                    let v = *rec;
                    if *rec.add(1) != v || *rec.add(2) != v {
                        board.add(TORN);
                    }
                    g.write(rec, v + 1).expect("journal room");
                    // A block taken and given back inside the section.
                    let tmp = g.alloc_locked(64 + (r >> 20) as usize % 3000);
                    g.write(rec.add(1), v + 1).expect("journal room");
                    if let Some(t) = tmp {
                        if g.free_locked(t.as_ptr()).is_err() {
                            board.add(BAD_FREE);
                        }
                    }
                    g.write(rec.add(2), v + 1).expect("journal room");
                }
            }
        }
        ops += 1;
        if ops % 64 == 0 {
            board.add_n(OPS, 64);
        }
    }
    for b in live.drain(..) {
        if !intact(&b) {
            board.add(CORRUPT);
        }
        // SAFETY: a live block of this zone.
        if unsafe { zone.free(b.p) }.is_err() {
            board.add(BAD_FREE);
        }
    }
    0
}

/// SIGKILLs `pid`; whether it was there to be killed.
fn kill(pid: u64) -> bool {
    // SAFETY: a signal to a worker of our master (or a gone pid: ESRCH).
    pid != 0 && unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0
}

#[test]
fn kill_storm_under_the_master() {
    let kills: usize = std::env::var("SHMZONE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let board = Board::new();
    let zones = Zones::builder()
        .zone("churn", ZONE)
        .init("churn", |z, _| {
            let rec = z.alloc_value([0u64; 3]).expect("room");
            z.set_root(z.offset_of(rec.as_ptr().cast()).expect("inside"));
            Ok(())
        })
        .build()
        .expect("zones");

    let master = fork_child(|| {
        let m = Master::new((&zones, &board))
            .workers(WORKERS)
            .respawn_limit(Duration::ZERO, Duration::from_millis(20), 0)
            .stop_timeout(Duration::from_secs(20))
            .on_death(|&(zones, board): &(&Zones, &Board), d| {
                let r = recover_zones(zones, d.pid);
                board.add(DEATHS);
                board.add_n(BROKEN, r.broken.len() as u64);
                board.add_n(ROLLBACKS, r.rolled_back.len() as u64);
                board.add_n(
                    CACHES_BACK,
                    r.caches_returned.iter().map(|(_, n)| *n as u64).sum(),
                );
                let z = zones.get("churn").expect("zone");
                if z.is_fenced() {
                    board.add(FENCED);
                }
                let rec = record(&z);
                let _g = z.lock();
                // SAFETY: the record is three live u64s; we hold the lock.
                unsafe {
                    if *rec.add(1) != *rec || *rec.add(2) != *rec {
                        board.add(TORN);
                    }
                }
            });
        // SAFETY: the forked child has a single thread.
        match unsafe {
            m.run(|&(zones, board): &(&Zones, &Board), w: &Worker| {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    churn(zones, board, w)
                }));
                code.unwrap_or_else(|_| {
                    board.add(PANICS);
                    101
                })
            })
        } {
            Ok(_) => 0,
            Err(_) => 9,
        }
    });
    let guard = KillOnDrop(master);

    let wait_progress = |what: &str| {
        let start = Instant::now();
        let ops = board.get(OPS);
        while board.get(OPS) < ops + 64 * WORKERS as u64 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no progress for 20 s ({what}): a hang; deaths {} ops {}",
                board.get(DEATHS),
                board.get(OPS)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_progress("start");
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut done = 0usize;
    let mut last = [0u64; WORKERS];
    let mut bursts = 0usize;
    let started = Instant::now();
    while done < kills {
        let burst = match rng.next() % 10 {
            0 => 3,
            1 | 2 => 2,
            _ => 1,
        };
        // Workers not killed yet (a slot's pid changes when it respawns).
        let mut ready: Vec<usize> = (0..WORKERS)
            .filter(|&s| board.get(PIDS + s) != last[s])
            .collect();
        if ready.len() < burst {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for _ in 0..burst {
            let slot = ready.swap_remove((rng.next() % ready.len() as u64) as usize);
            let pid = board.get(PIDS + slot);
            last[slot] = pid;
            if kill(pid) {
                done += 1;
            }
        }
        bursts += 1;
        std::thread::sleep(Duration::from_micros(rng.next() % 4000));
        if bursts % 20 == 0 {
            wait_progress("after a burst");
        }
    }
    wait_progress("at the end");
    let storm = started.elapsed();
    // SAFETY: our child.
    unsafe { libc::kill(master, libc::SIGTERM) };
    assert_eq!(wait_within(master, Duration::from_secs(60)), Exit::Code(0));
    std::mem::forget(guard);

    let zone = zones.get("churn").expect("zone");
    // Workers that exited at the stop left their caches: give them back
    // (every dead worker's were given back by recover_zones already).
    let caches_at_stop = zone.pool().reclaim_caches();
    // This process made the shared record (through its own cache).
    zone.pool().release_cache();
    zone.check().expect("the zone is sound");
    assert!(!zone.is_fenced());
    let stats = zone.stats();
    let leaked = stats.bytes_in_use() - 32;
    let p = zone.alloc(64).expect("the zone still serves");
    // SAFETY: just allocated.
    unsafe { zone.free(p.as_ptr()) }.unwrap();
    println!(
        "kill storm: {done} kills in {storm:?}; {} deaths seen by the master, {} sections \
         rolled back, {} ops; leaked by the dead: {} bytes in {} chunks and {} run pages; \
         broken {}, fenced {}, corrupt {}, outside {}, bad frees {}, torn {}, panics {}; \
         caches on: {} claimed, {} returned at deaths, {caches_at_stop} at the stop",
        board.get(DEATHS),
        board.get(ROLLBACKS),
        board.get(OPS),
        leaked,
        stats.classes.iter().map(|c| c.used).sum::<u64>() - 1,
        stats.pages_in_runs,
        board.get(BROKEN),
        board.get(FENCED),
        board.get(CORRUPT),
        board.get(OUTSIDE),
        board.get(BAD_FREE),
        board.get(TORN),
        board.get(PANICS),
        stats.cache.claims,
        board.get(CACHES_BACK),
    );
    assert!(
        stats.cache.claims > 0 && board.get(CACHES_BACK) > 0,
        "the workers cached chunks, and the dead ones' caches came back"
    );
    assert_eq!(stats.cache.slots, 0, "every worker's cache came back");
    for (what, slot) in [
        ("zones broken after recovery", BROKEN),
        ("zones fenced", FENCED),
        ("blocks overwritten (overlap)", CORRUPT),
        ("blocks outside the zone", OUTSIDE),
        ("frees of live blocks refused", BAD_FREE),
        ("torn records", TORN),
        ("worker panics", PANICS),
    ] {
        assert_eq!(board.get(slot), 0, "{what}");
    }
    assert!(
        board.get(DEATHS) >= (kills / 2) as u64,
        "most kills hit a live worker"
    );
}

/// SIGKILLs the master if the test fails, so nothing outlives it (its
/// workers see their stop pipes hang up and leave).
struct KillOnDrop(libc::pid_t);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: our child.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}
