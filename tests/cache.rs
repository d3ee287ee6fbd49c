//! The per-thread chunk caches, as a user sees them: chunks come back to
//! the pool when their owner dies or exits, double frees are still caught,
//! a full zone still fills, caching can be turned off, forked children and
//! threads get caches of their own. Real processes (fork) throughout.

mod common;

use std::time::Duration;

use common::board::Board;
use common::{fork_child, wait_within, Exit};
use shmzone::{FreeError, Pool, Region, SLAB_PAGE};

const ZONE: usize = 4 << 20;

fn pool(region: &Region) -> Pool {
    // SAFETY: the region is ours, page-aligned and unused; it outlives the
    // pool handles of this test.
    let p = unsafe { Pool::init(region.base(), region.len(), "cache") }.unwrap();
    p.set_log_nomem(false);
    p
}

/// Chunks and runs in use by anyone (users and caches).
fn in_use(p: &Pool) -> (u64, usize) {
    let s = p.stats();
    (
        s.classes.iter().map(|c| c.used + c.cached).sum(),
        s.pages_in_runs,
    )
}

#[test]
fn a_cache_serves_alloc_and_free_and_check_accounts_for_it() {
    let region = Region::new(ZONE).unwrap();
    let p = pool(&region);
    assert!(p.cache_enabled());
    // The 64-byte class.
    let c64 = p.stats().classes.iter().position(|c| c.size == 64).unwrap();
    let a = p.alloc(64).unwrap();
    let s = p.stats();
    assert_eq!(s.cache.slots, 1);
    assert_eq!(s.classes[c64].used, 1, "the user's chunk");
    assert!(s.classes[c64].cached > 0, "the refill went to the cache");
    assert_eq!(
        s.classes[c64].reqs, 1,
        "one request, however many were cached"
    );
    p.check().unwrap();
    // SAFETY: a came from p.
    unsafe { p.free(a.as_ptr()) }.unwrap();
    let b = p.alloc(64).unwrap();
    assert_eq!(a, b, "LIFO: the chunk just freed comes back");
    // A run of 2 pages goes through the cache too.
    let r = p.alloc(8192).unwrap();
    // SAFETY: from p.
    unsafe { p.free(r.as_ptr()) }.unwrap();
    assert_eq!(p.alloc(8192).unwrap(), r);
    let s = p.stats();
    assert_eq!(s.classes[c64].reqs, 2);
    assert_eq!(s.page_reqs, 2);
    assert_eq!(s.bytes_requested, 64 * 2 + 8192 * 2);
    p.check().unwrap();
    // Flushing gives every cached chunk back.
    p.flush_cache();
    let s = p.stats();
    assert_eq!(s.cache.chunks + s.cache.runs, 0);
    assert_eq!(s.classes[c64].used, 1);
    p.check().unwrap();
}

#[test]
fn double_frees_are_caught_with_caches_on() {
    let region = Region::new(ZONE).unwrap();
    let p = pool(&region);
    let a = p.alloc(100).unwrap().as_ptr();
    let b = p.alloc(100).unwrap().as_ptr();
    let r = p.alloc(3 * SLAB_PAGE).unwrap().as_ptr();
    // SAFETY: from p; the second frees are the bugs under test.
    unsafe {
        p.free(a).unwrap();
        assert_eq!(p.free(a), Err(FreeError::ChunkAlreadyFree));
        p.free(b).unwrap();
        assert_eq!(p.free(a), Err(FreeError::ChunkAlreadyFree), "not on top");
        p.free(r).unwrap();
        assert_eq!(p.free(r), Err(FreeError::PageAlreadyFree));
        assert_eq!(p.free(a.add(8)), Err(FreeError::WrongChunk));
    }
    p.check().unwrap();
    // Each was given out once: the next two allocations differ.
    let x = p.alloc(100).unwrap();
    let y = p.alloc(100).unwrap();
    assert_ne!(x, y);
}

#[test]
fn a_full_zone_still_fills_with_caches_on() {
    for size in [8usize, 100, 2048, 3000, 8192] {
        let count = |cache: bool| {
            let region = Region::new(ZONE).unwrap();
            let p = pool(&region);
            p.set_cache(cache);
            let mut n = 0usize;
            while p.alloc(size).is_some() {
                n += 1;
            }
            p.check().unwrap();
            n
        };
        let (on, off) = (count(true), count(false));
        // The slot body (three pages: a magazine for each of the 62 size
        // classes and 4 run lengths) is all a cache may cost.
        let page_worth = 3 * (SLAB_PAGE / size.min(SLAB_PAGE) + 1);
        assert!(
            on + page_worth >= off && on <= off,
            "size {size}: {on} allocations with caches, {off} without"
        );
    }
}

#[test]
fn a_dead_workers_cache_comes_back_to_the_pool() {
    let region = Region::new(ZONE).unwrap();
    let p = pool(&region);
    let before = in_use(&p);
    let board = Board::new();
    let bref = &board;
    // One child exits normally, one is SIGKILLed while it churns.
    let quiet = fork_child(move || {
        for i in 0..2000usize {
            let a = p.alloc(8 + i % 3000).unwrap();
            let b = p.alloc(64).unwrap();
            // SAFETY: from p.
            unsafe {
                p.free(a.as_ptr()).unwrap();
                p.free(b.as_ptr()).unwrap();
            }
        }
        0
    });
    assert_eq!(wait_within(quiet, Duration::from_secs(30)), Exit::Code(0));
    let busy = fork_child(move || {
        let mut held = Vec::new();
        let mut i = 0usize;
        loop {
            if held.len() < 50 {
                held.push(p.alloc(8 + (i * 37) % 9000).unwrap());
            } else {
                let q = held.swap_remove(i % held.len());
                // SAFETY: from p.
                unsafe { p.free(q.as_ptr()) }.unwrap();
            }
            i += 1;
            if i == 20_000 {
                // Say "churning", keep going until killed.
                for q in held.drain(..) {
                    // SAFETY: from p.
                    unsafe { p.free(q.as_ptr()) }.unwrap();
                }
                bref.add(0);
            }
        }
    });
    board.until("the busy child to churn", |b| b.get(0) == 1);
    // SAFETY: our child.
    unsafe { libc::kill(busy, libc::SIGKILL) };
    assert_eq!(
        wait_within(busy, Duration::from_secs(30)),
        Exit::Signal(libc::SIGKILL)
    );
    // The master's part: force-unlock (if it held the lock) and reclaim.
    p.mutex().force_unlock(busy as u32);
    let s = p.stats();
    assert_eq!(s.cache.slots, 2, "both children's slots are still there");
    assert_eq!(p.reclaim_caches(), 2);
    p.check().unwrap();
    let s = p.stats();
    assert_eq!((s.cache.slots, s.cache.chunks, s.cache.runs), (0, 0, 0));
    let (chunks, runs) = in_use(&p);
    // The busy child held up to 50 blocks (up to 3 pages each) when it
    // was killed, and one more in flight; everything else came back
    // (nothing it cached is lost).
    assert!(
        chunks <= before.0 + 51 && runs <= before.1 + 51 * 3,
        "{chunks} chunks and {runs} run pages still in use"
    );
    assert_eq!(s.cache.reclaims, 2);
}

#[test]
fn memory_short_makes_every_cache_flush() {
    let region = Region::new(ZONE).unwrap();
    let p = pool(&region);
    let board = Board::new();
    let bref = &board;
    // A child fills its caches, then waits; when told, it makes one call
    // (which follows the epoch: it flushes), and exits.
    let child = fork_child(move || {
        let v: Vec<_> = (0..200)
            .map(|i| p.alloc(16 + (i % 8) * 256).unwrap())
            .collect();
        for q in v {
            // SAFETY: from p.
            unsafe { p.free(q.as_ptr()) }.unwrap();
        }
        bref.add(0);
        bref.until("the parent's go", |b| b.get(1) == 1);
        let q = p.alloc(64).unwrap();
        // SAFETY: from p.
        unsafe { p.free(q.as_ptr()) }.unwrap();
        bref.add(2);
        bref.until("the parent's end", |b| b.get(3) == 1);
        0
    });
    board.until("the child's cache to fill", |b| b.get(0) == 1);
    let cached_by_child = p.stats().cache.chunks;
    assert!(cached_by_child > 0);
    // Fill the zone: the last allocation that fails asks every cache to
    // flush (pressure), but the child sleeps: its chunks are not ours yet.
    let mut mine = Vec::new();
    while let Some(q) = p.alloc(256) {
        mine.push(q);
    }
    assert_eq!(p.stats().cache.pressure, 1);
    board.add(1);
    board.until("the child's call", |b| b.get(2) == 1);
    let s = p.stats();
    // It flushed everything, then its call refilled one magazine (64 B).
    assert!(
        s.cache.chunks < cached_by_child && s.cache.chunks <= 32,
        "the child flushed on its next call: {} cached, {cached_by_child} before",
        s.cache.chunks
    );
    // Its chunks are now the pool's: more 256-byte allocations succeed.
    let mut more = 0;
    while let Some(q) = p.alloc(256) {
        mine.push(q);
        more += 1;
    }
    assert!(more > 0);
    board.add(3);
    assert_eq!(wait_within(child, Duration::from_secs(30)), Exit::Code(0));
    p.check().unwrap();
}

#[test]
fn caching_can_be_turned_off_and_on() {
    let region = Region::new(ZONE).unwrap();
    let p = pool(&region);
    let a = p.alloc(64).unwrap();
    assert!(p.stats().cache.chunks > 0);
    p.set_cache(false);
    assert!(!p.cache_enabled());
    let s = p.stats();
    assert_eq!((s.cache.slots, s.cache.chunks), (0, 0), "{s:?}");
    // Without caches every call goes through the lock, and a double free
    // is caught as nginx does.
    // SAFETY: from p.
    unsafe {
        p.free(a.as_ptr()).unwrap();
        assert_eq!(p.free(a.as_ptr()), Err(FreeError::ChunkAlreadyFree));
    }
    assert_eq!(p.stats().cache.slots, 0);
    p.set_cache(true);
    let b = p.alloc(64).unwrap();
    assert_eq!(p.stats().cache.slots, 1);
    // SAFETY: from p.
    unsafe { p.free(b.as_ptr()) }.unwrap();
    p.check().unwrap();
    // Small pools never cache.
    let small = Region::new(512 << 10).unwrap();
    let q = pool(&small);
    assert!(!q.cache_enabled());
    let c = q.alloc(64).unwrap();
    assert_eq!(q.stats().cache, Default::default());
    // SAFETY: from q.
    unsafe { q.free(c.as_ptr()) }.unwrap();
}

#[test]
fn a_forked_child_and_a_thread_get_caches_of_their_own() {
    let region = Region::new(ZONE).unwrap();
    let p = pool(&region);
    let a = p.alloc(64).unwrap();
    // SAFETY: from p.
    unsafe { p.free(a.as_ptr()) }.unwrap();
    let board = Board::new();
    let bref = &board;
    let child = fork_child(move || {
        // The parent's slot is not the child's: it claims its own, and the
        // parent's cached chunk is not handed out here.
        let b = p.alloc(64).unwrap();
        bref.at(0)
            .store(b.as_ptr() as u64, std::sync::atomic::Ordering::SeqCst);
        0
    });
    assert_eq!(wait_within(child, Duration::from_secs(30)), Exit::Code(0));
    assert_ne!(board.get(0), a.as_ptr() as u64);
    assert_eq!(p.stats().cache.claims, 2);
    assert_eq!(p.alloc(64).unwrap(), a, "the parent's cache is intact");
    // A thread of this process: a slot of its own, given back once the
    // thread has ended.
    let a_addr = a.as_ptr() as usize;
    std::thread::spawn(move || {
        let t = p.alloc(64).unwrap();
        assert_ne!(t.as_ptr() as usize, a_addr);
    })
    .join()
    .unwrap();
    assert_eq!(p.stats().cache.slots, 3);
    // The thread and the child are gone: their caches come back. (The
    // kernel may show an ended thread a moment longer: bounded retries.)
    let mut back = p.reclaim_caches();
    for _ in 0..100 {
        if back == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        back += p.reclaim_caches();
    }
    assert_eq!(back, 2);
    assert_eq!(p.stats().cache.slots, 1);
    p.check().unwrap();
}

#[test]
fn reinit_forgets_every_cache_and_the_pool_serves_on() {
    let region = Region::new(ZONE).unwrap();
    let p = pool(&region);
    let a = p.alloc(64).unwrap();
    // SAFETY: from p.
    unsafe { p.free(a.as_ptr()) }.unwrap();
    assert!(p.stats().cache.chunks > 0);
    p.reinit();
    let s = p.stats();
    assert_eq!((s.cache.slots, s.cache.chunks), (0, 0));
    assert_eq!(s.pages_free, s.pages_total);
    // The old slot is gone: this thread claims a new one, and nothing it
    // had cached is handed out twice.
    let v: Vec<_> = (0..100).map(|_| p.alloc(64).unwrap()).collect();
    let mut sorted: Vec<usize> = v.iter().map(|q| q.as_ptr() as usize).collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 100);
    assert_eq!(p.stats().cache.slots, 1);
    p.check().unwrap();
}
