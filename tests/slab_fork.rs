//! The slab pool shared by real forked processes.

mod common;

use std::time::Duration;

use common::{fork_child, wait_within, Exit};
use shmzone::{Pool, Region, SLAB_PAGE};

const CHILDREN: u64 = 4;
const LIVE: usize = 300;
const OPS: usize = 30_000;

fn pattern(seed: u64, i: usize) -> u8 {
    (seed as u8) ^ (i as u8).wrapping_mul(13) ^ ((seed >> 8) as u8)
}

/// One child's churn: random sizes, each chunk filled with its own pattern
/// and verified before it is freed. Returns 0, or a code naming the fault.
fn churn(pool: &Pool, id: u64) -> i32 {
    let mut x = 0x1234_5678_9abc_def1u64 ^ (id << 32);
    let mut live = [(0usize, 0usize, 0u64); LIVE];
    let mut n = 0usize;
    let next = |x: &mut u64| {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    };
    let verify = |&(addr, size, seed): &(usize, usize, u64)| {
        // SAFETY: a live chunk of `size` bytes that only this child writes.
        let b = unsafe { std::slice::from_raw_parts(addr as *const u8, size) };
        b.iter().enumerate().all(|(i, &v)| v == pattern(seed, i))
    };
    for op in 0..OPS {
        let r = next(&mut x);
        if n < LIVE && (n == 0 || r % 2 == 0) {
            let size = if r % 16 == 1 {
                2049 + (r >> 8) as usize % (3 * SLAB_PAGE)
            } else {
                8 + (r >> 8) as usize % 2041
            };
            let Some(p) = pool.alloc(size) else {
                continue;
            };
            let seed = (id << 40) | op as u64;
            // SAFETY: a fresh chunk of `size` bytes.
            let b = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), size) };
            for (i, v) in b.iter_mut().enumerate() {
                *v = pattern(seed, i);
            }
            live[n] = (p.as_ptr() as usize, size, seed);
            n += 1;
        } else {
            let k = (r >> 8) as usize % n;
            let e = live[k];
            if !verify(&e) {
                return 2;
            }
            // SAFETY: a live chunk of this pool, not used again.
            if unsafe { pool.free(e.0 as *mut u8) }.is_err() {
                return 3;
            }
            n -= 1;
            live[k] = live[n];
        }
    }
    for e in &live[..n] {
        if !verify(e) {
            return 2;
        }
        // SAFETY: as above.
        if unsafe { pool.free(e.0 as *mut u8) }.is_err() {
            return 3;
        }
    }
    0
}

#[test]
fn four_processes_churn_one_pool() {
    let region = Region::new(4 << 20).unwrap();
    // SAFETY: the region is ours, page-aligned and unused.
    let pool = unsafe { Pool::init(region.base(), region.len(), "forked") }.unwrap();
    pool.set_log_nomem(false);
    let pids: Vec<_> = (0..CHILDREN)
        .map(|id| fork_child(move || churn(&pool, id)))
        .collect();
    for pid in pids {
        assert_eq!(wait_within(pid, Duration::from_secs(60)), Exit::Code(0));
    }
    pool.check().unwrap();
    let s = pool.stats();
    for c in &s.classes {
        assert_eq!(c.used, 0, "class {}", c.size);
    }
    assert!(s.classes.iter().map(|c| c.reqs).sum::<u64>() > CHILDREN * OPS as u64 / 3);
    assert_eq!(pool.largest_alloc(), s.pages_total * SLAB_PAGE);
    pool.check().unwrap();
}

#[test]
fn lock_taken_over_from_a_dead_holder_is_reported_and_checked() {
    let region = Region::new(64 << 10).unwrap();
    // SAFETY: the region is ours, page-aligned and unused.
    let pool = unsafe { Pool::init(region.base(), region.len(), "dead") }.unwrap();
    let pid = fork_child(move || {
        let g = pool.lock();
        let _ = g.alloc_locked(100);
        std::mem::forget(g);
        0
    });
    assert_eq!(wait_within(pid, Duration::from_secs(10)), Exit::Code(0));
    assert_eq!(pool.mutex().holder(), Some(pid as u32));
    assert!(pool.mutex().force_unlock(pid as u32));
    let g = pool.lock();
    assert_eq!(g.recovered_from(), Some(pid as u32));
    // The dead holder's open section (its allocation) was rolled back.
    let r = g.rolled_back().expect("an open section was undone");
    assert!(r.records > 0 && !r.corrupt, "{r:?}");
    g.check_locked().unwrap();
    // The 104-byte class serves alloc(100).
    let c = g
        .stats_locked()
        .classes
        .iter()
        .position(|c| c.size == 104)
        .unwrap();
    assert_eq!(g.stats_locked().classes[c].used, 0);
    // Statistics count the rolled-back call as made.
    assert_eq!(g.stats_locked().classes[c].reqs, 1);
    assert_eq!(g.stats_locked().rollbacks, 1);
    drop(g);
    assert_eq!(pool.lock().recovered_from(), None);
}
