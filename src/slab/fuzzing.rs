//! A program interpreter for the `slab_ops` fuzz target, public (hidden) so
//! that `tests/slab_regressions.rs` replays saved inputs with the very same
//! decoding.
//!
//! The input bytes are a program: the first byte sizes the pool (8..=135
//! pages), then each operation is an opcode byte and two argument bytes:
//! alloc, calloc, free (of a live chunk, checking its fill pattern), double
//! free, free of an arbitrary address, a stats-against-model check, and
//! for pools big enough to cache (first byte >= 128) flushing this thread's
//! cache and turning caching off and on.
//! After every operation `check()` must pass; a refused free must leave the
//! stats unchanged. At the end everything is freed and the whole free
//! space must come back as one allocation.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use super::layout::{class_of, class_size};
use super::{FreeError, Pool, MAX_CHUNK, NCLASSES, SLAB_PAGE};

struct Buffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Buffer {
    fn new(len: usize) -> Buffer {
        let layout = Layout::from_size_align(len, SLAB_PAGE).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("out of memory");
        Buffer { ptr, layout }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

struct Live {
    addr: usize,
    size: usize,
    fill: u8,
}

/// The byte pattern of a live chunk.
fn pattern(fill: u8, i: usize) -> u8 {
    fill ^ (i as u8).wrapping_mul(31)
}

/// A size from two argument bytes: mostly small, sometimes pages, rarely
/// absurd.
pub fn decode_size(a: u8, b: u8) -> usize {
    let wide = ((a as usize) << 8) | b as usize;
    match a % 8 {
        0..=2 => b as usize % 65,
        3..=5 => wide % (MAX_CHUNK + 1),
        6 => MAX_CHUNK + 1 + wide % (6 * SLAB_PAGE),
        _ => match b {
            255 => usize::MAX,
            254 => isize::MAX as usize,
            _ => wide << 6,
        },
    }
}

/// Runs one program; panics on any misbehaviour of the pool.
pub fn run(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    // Pools of 8..=135 pages have no per-thread caches; first bytes of
    // 128..=254 give pools of 256..=319 pages, which cache; 255 gives a pool
    // of 2048 pages (8 MiB), which cuts the wide class table's slabs
    // (multi-page from 208 B on). Only one value: `check()` after every
    // step walks all its pages, so such inputs run about 50 times slower.
    let npages = match first {
        0..128 => 8 + first as usize,
        128..=254 => 256 + (first % 64) as usize,
        255 => 2048,
    };
    let len = npages * SLAB_PAGE;
    let buf = Buffer::new(len);
    // SAFETY: the buffer is ours, page-aligned and `len` long; it outlives
    // the pool handle (dropped at the end of this function).
    let pool = unsafe { Pool::init(buf.ptr, len, "fuzz") }.expect("init");
    pool.set_log_nomem(false);
    let fresh = pool.stats();
    let fresh_layout = layout_snapshot(&pool);
    let base = pool.base().as_ptr() as usize;
    let mut live: Vec<Live> = Vec::new();
    let mut freed: Vec<usize> = Vec::new();
    let mut serial = 0u8;
    while rest.len() >= 3 {
        let (op, a, b) = (rest[0], rest[1], rest[2]);
        rest = &rest[3..];
        match op % 6 {
            0 | 1 => {
                let size = decode_size(a, b);
                let p = if op % 6 == 0 {
                    pool.alloc(size)
                } else {
                    pool.calloc(size)
                };
                if let Some(p) = p {
                    let addr = p.as_ptr() as usize;
                    check_new(&pool, &live, addr, size);
                    // SAFETY: a fresh allocation of at least `size` bytes.
                    let bytes = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), size) };
                    if op % 6 == 1 {
                        assert!(bytes.iter().all(|&x| x == 0), "calloc not zeroed");
                    }
                    serial = serial.wrapping_add(1);
                    for (i, x) in bytes.iter_mut().enumerate() {
                        *x = pattern(serial, i);
                    }
                    freed.retain(|&f| f != addr);
                    live.push(Live {
                        addr,
                        size,
                        fill: serial,
                    });
                } else {
                    let s = pool.stats();
                    if size <= MAX_CHUNK {
                        let k = class_of(size);
                        let c = &s.classes[k];
                        // No slab, nor (for a multi-page class) the
                        // smaller run the request falls back to.
                        let slab =
                            (pool.cls[k].pages as usize).min(size.div_ceil(SLAB_PAGE).max(1));
                        assert!(
                            s.largest_free_run < slab,
                            "alloc({size}) failed with a free run of {} pages",
                            s.largest_free_run
                        );
                        assert_eq!(c.used, c.total, "alloc({size}) failed with free chunks");
                    } else {
                        assert!(
                            size.div_ceil(SLAB_PAGE) > s.largest_free_run,
                            "alloc({size}) failed with a free run of {} pages",
                            s.largest_free_run
                        );
                    }
                }
            }
            2 if !live.is_empty() => {
                let k = ((a as usize) << 8 | b as usize) % live.len();
                let l = live.swap_remove(k);
                // SAFETY: l.addr is a live allocation of l.size bytes.
                let bytes = unsafe { std::slice::from_raw_parts(l.addr as *const u8, l.size) };
                for (i, &x) in bytes.iter().enumerate() {
                    assert_eq!(x, pattern(l.fill, i), "chunk contents changed");
                }
                // SAFETY: a live chunk of this pool, not used again.
                unsafe { pool.free(l.addr as *mut u8) }.expect("valid free refused");
                freed.push(l.addr);
            }
            3 if !freed.is_empty() => {
                let addr = freed[((a as usize) << 8 | b as usize) % freed.len()];
                bad_free(&pool, &live, addr, None);
            }
            4 => {
                let spread = len + 2 * SLAB_PAGE;
                let off = ((a as usize) << 8 | b as usize) * 8 + (op as usize >> 3) % 8;
                let addr = (base + off % spread).wrapping_sub(SLAB_PAGE);
                let near = live
                    .iter()
                    .find(|l| l.addr < addr && addr < l.addr + l.size.max(1));
                let expect = near.map(|_| FreeError::WrongChunk);
                bad_free(&pool, &live, addr, expect.filter(|_| addr % 8 != 0));
            }
            5 if a % 2 == 0 => model_stats(&pool, &live),
            5 if a % 8 == 1 => {
                pool.flush_cache();
                assert_eq!(pool.stats().cache.chunks + pool.stats().cache.runs, 0);
            }
            5 if a % 8 == 3 => {
                pool.set_cache(b % 2 == 0);
                // This thread follows at once (else its next call does,
                // which a refused free must not: see bad_free).
                pool.flush_cache();
            }
            5 => section_rolled_back(&pool, &live, a, b),
            _ => {}
        }
        pool.check().expect("check after op");
    }
    model_stats(&pool, &live);
    for l in live.drain(..) {
        // SAFETY: a live chunk of this pool.
        unsafe { pool.free(l.addr as *mut u8) }.expect("final free");
    }
    pool.check().expect("check after freeing all");
    let whole = pool.largest_alloc();
    let s = pool.stats();
    assert_eq!(whole, s.pages_total * SLAB_PAGE, "free space not coalesced");
    assert_eq!(s.pages_free, s.pages_total);
    assert_eq!(
        s.classes,
        fresh_classes(&s, &fresh),
        "classes not back to fresh"
    );
    assert!(
        layout_snapshot(&pool) == fresh_layout,
        "pool not back to its fresh state"
    );
    let p = pool.alloc(whole).expect("whole pool as one allocation");
    pool.check().expect("check with the whole pool allocated");
    assert!(pool.alloc(1).is_none(), "alloc after the whole pool");
    // SAFETY: just allocated.
    unsafe { pool.free(p.as_ptr()) }.expect("free whole");
    pool.check().expect("final check");
}

/// A section of allocations and frees (of blocks live before it and of
/// blocks it made) under one lock, undone with `rollback_to`: every byte
/// of the allocation state (statistics aside) must be as before it, and
/// the live blocks' contents untouched.
fn section_rolled_back(pool: &Pool, live: &[Live], a: u8, b: u8) {
    let before = full_snapshot(pool);
    {
        let g = pool.lock();
        let sp = g.savepoint();
        let mut made = Vec::new();
        for k in 0..=(b % 8) {
            let x = a.wrapping_mul(31).wrapping_add(k.wrapping_mul(17));
            if x % 3 == 0 && !live.is_empty() {
                let l = &live[(x as usize * 7 + k as usize) % live.len()];
                // SAFETY: a live chunk of this pool; the rollback revives
                // it, and nothing reads it meanwhile.
                let _ = unsafe { g.free_locked(l.addr as *mut u8) };
            } else if x % 3 == 1 && !made.is_empty() {
                let p: *mut u8 = made.swap_remove(0);
                // SAFETY: allocated in this section (a live block freed
                // above may have been handed out again and freed since).
                let _ = unsafe { g.free_locked(p) };
            } else if let Some(p) = g.alloc_locked(decode_size(x, b ^ k)) {
                made.push(p.as_ptr());
            }
        }
        // SAFETY: from this guard; the blocks made since are dropped.
        unsafe { g.rollback_to(sp) };
    }
    assert!(
        full_snapshot(pool) == before,
        "rollback_to left the pool changed"
    );
    for l in live {
        // SAFETY: l.addr is a live allocation of l.size bytes.
        let bytes = unsafe { std::slice::from_raw_parts(l.addr as *const u8, l.size) };
        for (i, &x) in bytes.iter().enumerate() {
            assert_eq!(x, pattern(l.fill, i), "live contents changed by a rollback");
        }
    }
}

/// The fresh classes with this run's request counters.
fn fresh_classes(
    now: &super::PoolStats,
    fresh: &super::PoolStats,
) -> [super::ClassStats; NCLASSES] {
    let mut c = fresh.classes;
    for (x, n) in c.iter_mut().zip(now.classes.iter()) {
        x.reqs = n.reqs;
        x.fails = n.fails;
    }
    c
}

fn check_new(pool: &Pool, live: &[Live], addr: usize, size: usize) {
    let base = pool.base().as_ptr() as usize;
    assert!(
        addr >= base && addr + size <= base + pool.len(),
        "outside pool"
    );
    let align = if size <= MAX_CHUNK {
        // The largest power of two dividing the chunk size.
        1 << class_size(class_of(size)).trailing_zeros()
    } else {
        SLAB_PAGE
    };
    assert_eq!(addr % align, 0, "misaligned chunk");
    let end = addr + size.max(1);
    for l in live {
        assert!(
            end <= l.addr || l.addr + l.size.max(1) <= addr,
            "overlap {addr:#x}+{size} with {:#x}+{}",
            l.addr,
            l.size
        );
    }
}

/// Frees `addr`, which is not a live chunk's start, and checks it was
/// refused (with `expect` if given) and changed nothing.
fn bad_free(pool: &Pool, live: &[Live], addr: usize, expect: Option<FreeError>) {
    if live.iter().any(|l| l.addr == addr) {
        return;
    }
    let before = pool.stats();
    // SAFETY: the pool must refuse it; nothing is used afterwards.
    let r = unsafe { pool.free(addr as *mut u8) };
    let err = r.expect_err("bad free accepted");
    if let Some(e) = expect {
        assert_eq!(err, e, "free({addr:#x})");
    }
    assert_eq!(pool.stats(), before, "refused free changed the pool");
}

fn model_stats(pool: &Pool, live: &[Live]) {
    let s = pool.stats();
    let mut used = [0u64; NCLASSES];
    let mut run_pages = 0;
    for l in live {
        if l.size <= MAX_CHUNK && !is_run(pool, l.addr) {
            used[class_of(l.size)] += 1;
        } else {
            // A page run (a multi-page class's request falls back to one
            // when no slab can be had).
            run_pages += l.size.div_ceil(SLAB_PAGE).max(1);
        }
    }
    for (c, u) in used.iter().enumerate() {
        assert_eq!(s.classes[c].used, *u, "class {c} used");
    }
    assert_eq!(s.pages_in_runs, run_pages, "pages in runs");
}

/// Whether `addr` is the start of an allocated page run.
fn is_run(pool: &Pool, addr: usize) -> bool {
    let off = addr - pool.base().as_ptr() as usize;
    let (_, start, _) = pool.metadata_layout();
    if off < start || (off - start) % SLAB_PAGE != 0 {
        return false;
    }
    let g = pool.lock();
    let (_, d, _) = g.view();
    d.get((off - start) / SLAB_PAGE)
        .is_some_and(|q| q.prev.tag() == super::layout::Link::RUN)
}

/// The pool's allocation state without its request counters: every page
/// descriptor, each class's list head, kept page, total and used count, and
/// the free list head, free and run page counts. Two pools in the same
/// state give equal snapshots.
pub fn layout_snapshot(pool: &Pool) -> Vec<u8> {
    let npages = pool.stats().pages_total;
    // Allocated before the lock is taken.
    let mut v = Vec::with_capacity(npages * 16 + NCLASSES * 24 + 12);
    let g = pool.lock();
    let (st, d, _) = g.view();
    for q in d {
        v.extend_from_slice(&q.slab.to_le_bytes());
        v.extend_from_slice(&q.next.to_le_bytes());
        v.extend_from_slice(&q.prev.0.to_le_bytes());
    }
    for c in &st.classes {
        v.extend_from_slice(&c.head.to_le_bytes());
        v.extend_from_slice(&c.cached.to_le_bytes());
        v.extend_from_slice(&c.total.to_le_bytes());
        v.extend_from_slice(&c.used.to_le_bytes());
    }
    v.extend_from_slice(&st.free_head.to_le_bytes());
    v.extend_from_slice(&st.pfree.to_le_bytes());
    v.extend_from_slice(&st.run_pages.to_le_bytes());
    v
}

/// Every byte of a pool's allocation state: the whole allocator state
/// (lists, kept pages, every counter), every descriptor, and the bitmap
/// words of every small-class page. Two pools in the same state, byte for
/// byte, give equal snapshots (the kill-point tests compare them). Takes
/// the lock (so a dead holder's section is rolled back first).
pub fn full_snapshot(pool: &Pool) -> Vec<u8> {
    use super::layout::FIRST_DESC_BITMAP_CLASS;
    let g = pool.lock();
    let (st, d, pages) = g.view();
    let mut v = Vec::new();
    // The state without its statistics (requests, failures, bytes asked
    // for and handed out): a call rolled back after a death still counts
    // as made there, by design (see `slab::page`).
    use super::layout::{ClassState, State};
    use std::mem::offset_of;
    // SAFETY: `st` is a live, initialised State; viewing it as bytes.
    let mut bytes = unsafe {
        std::slice::from_raw_parts((st as *const State).cast::<u8>(), size_of::<State>())
    }
    .to_vec();
    let mut zero = |at: usize, n: usize| bytes[at..at + n].fill(0);
    for c in 0..NCLASSES {
        let base = offset_of!(State, classes) + c * size_of::<ClassState>();
        zero(base + offset_of!(ClassState, reqs), 8);
        zero(base + offset_of!(ClassState, fails), 8);
        zero(base + offset_of!(ClassState, bytes_requested), 8);
        zero(base + offset_of!(ClassState, to_caches), 8);
    }
    zero(offset_of!(State, page_reqs), 8);
    zero(offset_of!(State, page_fails), 8);
    zero(offset_of!(State, run_bytes_requested), 8);
    zero(offset_of!(State, run_bytes), 8);
    // Padding after the last field: whatever init's temporary held.
    let end = offset_of!(State, run_bytes) + 8;
    zero(end, size_of::<State>() - end);
    v.extend_from_slice(&bytes);
    for (i, q) in d.iter().enumerate() {
        v.extend_from_slice(&q.slab.to_le_bytes());
        v.extend_from_slice(&q.next.to_le_bytes());
        v.extend_from_slice(&q.prev.0.to_le_bytes());
        if let Some(c) = q.prev.class() {
            if c < FIRST_DESC_BITMAP_CLASS {
                for w in 0..super::layout::classes_for(d.len())[c].words as usize {
                    // SAFETY: page i is a small page of the pool; its first
                    // words are its bitmap.
                    let word = unsafe { *pages.add(i * SLAB_PAGE).cast::<u64>().add(w) };
                    v.extend_from_slice(&word.to_le_bytes());
                }
            }
        }
    }
    drop(g);
    v
}
