//! Kill points through the per-thread caches: for every operation and
//! every step k of it (each lock-free pop and push store, each journal
//! record and commit of a refill, flush, claim and release), a forked child
//! dies by SIGKILL at exactly step k. The parent then does what the master
//! does for a dead worker (force-unlock, `reclaim_caches_of`), and asserts:
//!
//! - `check()` passes (the slab and every cache);
//! - every block the child held as a user (it lists them on a shared board
//!   right after `alloc` returns, and strikes them off right before
//!   `free`) is still allocated: the parent frees each, and each free
//!   succeeds;
//! - after that, at most one block is still in use: the one in flight at
//!   the kill (between `alloc` returning and the board entry, or between
//!   the strike and `free`'s commit). Nothing the child had cached is lost.
//!
//! Lock-free steps are not "before or after" byte for byte as the locked
//! sections of `tests/kill_points.rs` are: a chunk popped by a process that
//! dies before using it belongs to the dead, as any block it held.
//!
//! `cargo test --features kill-points --test cache_kill_points -- --nocapture`
//! prints the table: operation, points, outcomes.
#![cfg(feature = "kill-points")]

mod common;

use std::sync::atomic::Ordering;

use common::board::Board;
use common::{fork_child, wait, Exit};
use shmzone::{killpoint, Pool, Region};

const ZONE: usize = 4 << 20;
/// Board slots: 0 = count of entries used, 1.. = held blocks (0 = none).
const HELD: usize = 1;
const MAX_HELD: usize = 100;
/// Board slot of the reference run's count of points.
const POINTS: usize = 500;

struct Held<'a>(&'a Board);

impl Held<'_> {
    fn alloc(&self, p: &Pool, size: usize) -> usize {
        let a = p.alloc(size).expect("room").as_ptr() as usize;
        let n = self.0.get(0) as usize;
        assert!(n < MAX_HELD);
        self.0.at(HELD + n).store(a as u64, Ordering::SeqCst);
        self.0.at(0).store(n as u64 + 1, Ordering::SeqCst);
        a
    }
    fn free(&self, p: &Pool, a: usize) {
        let n = self.0.get(0) as usize;
        let i = (0..n)
            .find(|&i| self.0.get(HELD + i) == a as u64)
            .expect("held");
        self.0.at(HELD + i).store(0, Ordering::SeqCst);
        // SAFETY: a came from p and is not used again.
        unsafe { p.free(a as *mut u8) }.expect("valid free");
    }
}

type Op = fn(&Pool, &Held<'_>);

fn pairs(p: &Pool, h: &Held<'_>) {
    for i in 0..40 {
        let a = h.alloc(p, 8 + (i % 3) * 60);
        h.free(p, a);
    }
}

fn fill_and_flush(p: &Pool, h: &Held<'_>) {
    // 40 of one class: two refills; freeing them fills the magazine and
    // flushes it (at 32) under the lock.
    let v: Vec<usize> = (0..40).map(|_| h.alloc(p, 64)).collect();
    for a in v {
        h.free(p, a);
    }
}

fn runs(p: &Pool, h: &Held<'_>) {
    for size in [3000, 8192, 3000, 16384] {
        let a = h.alloc(p, size);
        let b = h.alloc(p, size);
        h.free(p, a);
        h.free(p, b);
    }
}

fn flush_all(p: &Pool, h: &Held<'_>) {
    let a = h.alloc(p, 100);
    let b = h.alloc(p, 5000);
    h.free(p, a);
    h.free(p, b);
    p.flush_cache();
}

fn fresh(region: &Region) -> Pool {
    // SAFETY: a fresh region per run, ours alone until the fork.
    let p = unsafe { Pool::init(region.base(), region.len(), "kp") }.expect("pool");
    p.set_log_nomem(false);
    p
}

/// Blocks in use by users: chunks, and pages of runs (caches off and
/// empty when called).
fn in_use(p: &Pool) -> (u64, usize) {
    let s = p.stats();
    assert_eq!(s.cache.slots, 0);
    (s.classes.iter().map(|c| c.used).sum(), s.pages_in_runs)
}

#[derive(Default, Debug)]
struct Outcome {
    points: u64,
    clean: u64,
    one_in_flight: u64,
}

fn explore(name: &str, op: Op) -> Outcome {
    // Reference: count the points (in a child: the parent never caches).
    let region = Region::new(ZONE).unwrap();
    let pool = fresh(&region);
    let board = Board::new();
    let b = &board;
    let pid = fork_child(|| {
        let h = killpoint::hits();
        op(&pool, &Held(b));
        b.at(POINTS).store(killpoint::hits() - h, Ordering::SeqCst);
        0
    });
    assert_eq!(wait(pid), Exit::Code(0), "{name}: the reference run failed");
    let points = board.get(POINTS);
    assert!(points > 0, "{name}: no kill point passed");
    let mut out = Outcome {
        points,
        ..Outcome::default()
    };
    for k in 1..=points + 1 {
        let region = Region::new(ZONE).unwrap();
        let pool = fresh(&region);
        let board = Board::new();
        let b = &board;
        let before = (0u64, 0usize);
        let pid = fork_child(|| {
            killpoint::arm(k);
            op(&pool, &Held(b));
            0
        });
        let exit = wait(pid);
        if k <= points {
            assert_eq!(exit, Exit::Signal(libc::SIGKILL), "{name}: point {k}");
        } else {
            assert_eq!(exit, Exit::Code(0), "{name}: unarmed run");
        }
        // The master's part.
        pool.mutex().force_unlock(pid as u32);
        let back = pool.reclaim_caches_of(pid as u32);
        assert!(back <= 1, "{name}: point {k}: {back} slots");
        if let Err(e) = pool.check() {
            panic!("{name}: killed at point {k} of {points}: {e}");
        }
        assert!(!pool.is_fenced(), "{name}: point {k}: fenced");
        pool.set_cache(false);
        // Every block on the board is still the child's: free each.
        for i in 0..board.get(0) as usize {
            let a = board.get(HELD + i) as usize;
            if a != 0 {
                // SAFETY: a block of the dead child, not used by anyone.
                unsafe { pool.free(a as *mut u8) }.unwrap_or_else(|e| {
                    panic!("{name}: point {k}: a block the child held is not allocated: {e}")
                });
            }
        }
        let now = in_use(&pool);
        let extra = (now.0 - before.0) + (now.1 - before.1).min(1) as u64;
        match extra {
            0 => out.clean += 1,
            1 => out.one_in_flight += 1,
            _ => panic!("{name}: point {k}: {now:?} in use after the child's blocks were freed"),
        }
        assert!(k <= points || extra == 0, "{name}: the unarmed run leaked");
        pool.check()
            .unwrap_or_else(|e| panic!("{name}: point {k}: {e}"));
        // The pool still serves.
        let q = pool.alloc(100).expect("serves");
        // SAFETY: just allocated.
        unsafe { pool.free(q.as_ptr()) }.unwrap();
    }
    out
}

#[test]
fn cache_operations_lose_at_most_the_block_in_flight() {
    let rows = [
        (
            "claim, refill, pops and pushes (8-128 B)",
            explore("pairs", pairs),
        ),
        (
            "refills, then a full magazine flushed",
            explore("fill", fill_and_flush),
        ),
        ("page runs of 1, 2 and 4 pages", explore("runs", runs)),
        (
            "flush_cache after a chunk and a run",
            explore("flush", flush_all),
        ),
    ];
    println!(
        "\n{:<44} {:>6} {:>8} {:>14}",
        "cache operation", "points", "clean", "1 in flight"
    );
    for (name, o) in &rows {
        println!(
            "{name:<44} {:>6} {:>8} {:>14}",
            o.points, o.clean, o.one_in_flight
        );
    }
}
