//! The workloads of `WORKLOADS.md` (W1–W4), the system allocator on W1 and
//! W2, and the bare lock+unlock pair, in one run.
//!
//! ```text
//! cargo bench --bench workloads               # everything, medians of 5
//! cargo bench --bench workloads -- --quick    # N / 10, for a smoke run
//! cargo bench --bench workloads -- W2 lock    # only these
//! SHMZONE_CACHE=0 cargo bench --bench workloads  # pools without caches
//! ```
//!
//! stdout: a header row, then `workload<TAB>param<TAB>impl<TAB>value<TAB>unit
//! <TAB>min<TAB>max` lines: `value` is the median over the repetitions, `min`
//! and `max` the extremes of the same figure (the first five columns are as
//! they always were, so scripts that read those still parse). Progress goes
//! to stderr.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use shmzone::{Pool, Region};

const ZONE: usize = 64 << 20;
const REPS: usize = 5;
const W1_SIZES: [usize; 6] = [8, 64, 256, 1024, 3000, 8192];
const W3_SIZES: [usize; 8] = [8, 24, 64, 100, 256, 1000, 3000, 8192];
const W4_PROCS: [usize; 3] = [1, 2, 4];
const K: usize = 10_000;

/// The workloads' xorshift64, seeded with 42, advanced before each use.
struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (42 for everything but W4's child w: 42 + w).
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    #[inline]
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// A random size, 8..=2048 bytes.
    #[inline]
    fn size(&mut self) -> usize {
        8 + (self.next() % 2041) as usize
    }
}

/// What the workloads need from an allocator.
trait Alloc {
    const NAME: &'static str;
    fn alloc(&self, size: usize) -> *mut u8;
    /// # Safety
    /// `p` came from `alloc(size)` and is freed once.
    unsafe fn free(&self, p: *mut u8, size: usize);
}

/// A fresh 64 MiB zone: a shared region with a pool over it.
struct Zone {
    pool: Pool,
    _region: Region,
}

impl Zone {
    fn new() -> Zone {
        let region = Region::new(ZONE).expect("region");
        // SAFETY: the region is ours, page-aligned, unused, and outlives the
        // pool (both dropped together).
        let pool = unsafe { Pool::init(region.base(), region.len(), "bench") }.expect("pool");
        pool.set_log_nomem(false);
        // SHMZONE_CACHE=0: measure the pool without its per-thread caches
        // (every call through the lock and the undo journal).
        if std::env::var("SHMZONE_CACHE").is_ok_and(|v| v == "0") {
            pool.set_cache(false);
        }
        Zone {
            pool,
            _region: region,
        }
    }
}

impl Alloc for Pool {
    const NAME: &'static str = "shmzone";
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        Pool::alloc(self, size).map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, _size: usize) {
        // SAFETY: the caller's contract.
        let r = unsafe { Pool::free(self, p) };
        debug_assert!(r.is_ok());
    }
}

impl Alloc for System {
    const NAME: &'static str = "System";
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: sizes are non-zero here.
        unsafe { GlobalAlloc::alloc(self, Layout::from_size_align_unchecked(size, 8)) }
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, size: usize) {
        // SAFETY: allocated with this layout.
        unsafe { GlobalAlloc::dealloc(self, p, Layout::from_size_align_unchecked(size, 8)) }
    }
}

fn w1<A: Alloc>(a: &A, size: usize, n: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        let p = black_box(a.alloc(size));
        assert!(!p.is_null());
        // SAFETY: just allocated.
        unsafe { a.free(p, size) };
    }
    t.elapsed()
}

/// W2 on `S` slots and `n` ops with the generator seeded by `seed`; returns
/// the time of the churn phase. `S` is a constant, as `K` is in the
/// workload's definition, so `x % S` is a multiplication rather than a
/// division.
fn w2<A: Alloc, const S: usize>(
    a: &A,
    slots: &mut [(*mut u8, usize)],
    n: usize,
    seed: u64,
) -> Duration {
    let slots = &mut slots[..S];
    let mut rng = Rng::new(seed);
    for s in slots.iter_mut() {
        let size = rng.size();
        *s = (a.alloc(size), size);
        assert!(!s.0.is_null());
    }
    let t = Instant::now();
    for _ in 0..n {
        let slot = &mut slots[(rng.next() % S as u64) as usize];
        // SAFETY: every slot holds a live allocation of its size.
        unsafe { a.free(slot.0, slot.1) };
        let size = rng.size();
        *slot = (a.alloc(size), size);
        debug_assert!(!slot.0.is_null());
    }
    let el = t.elapsed();
    for s in slots.iter() {
        // SAFETY: as above.
        unsafe { a.free(s.0, s.1) };
    }
    el
}

/// The median, minimum and maximum of one figure over the repetitions.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        assert!(!v.is_empty());
        v.sort_by(|a, b| a.total_cmp(b));
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
    /// `f` of each figure; `f` must be monotonic (a decreasing `f`, such as
    /// a rate from a time, swaps the extremes back into order).
    fn map(self, f: impl Fn(f64) -> f64) -> Spread {
        let (a, b) = (f(self.min), f(self.max));
        Spread {
            median: f(self.median),
            min: a.min(b),
            max: a.max(b),
        }
    }
}

fn fmt(value: f64) -> String {
    if value >= 1000.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if value < 10.0 {
        // Ratios and small times: three significant digits at least.
        format!("{value:.3}")
    } else {
        format!("{value:.1}")
    }
}

fn emit(workload: &str, param: &str, imp: &str, s: Spread, unit: &str) {
    println!(
        "{workload}\t{param}\t{imp}\t{}\t{unit}\t{}\t{}",
        fmt(s.median),
        fmt(s.min),
        fmt(s.max)
    );
}

fn ns_per(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

struct Cfg {
    quick: bool,
    filters: Vec<String>,
}

impl Cfg {
    fn wants(&self, id: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| f.eq_ignore_ascii_case(id))
    }
    fn n(&self, full: usize) -> usize {
        if self.quick {
            full / 10
        } else {
            full
        }
    }
}

fn bench_lock(cfg: &Cfg) {
    let n = cfg.n(10_000_000);
    let zone = Zone::new();
    let m = zone.pool.mutex();
    let mut v = Vec::new();
    for _ in 0..REPS {
        let t = Instant::now();
        for _ in 0..n {
            drop(black_box(m.lock()));
        }
        v.push(ns_per(t.elapsed(), n));
    }
    emit("lock", "-", "shmzone", Spread::of(v), "ns/pair");
}

/// W1 for both allocators, their repetitions alternated (ours, System,
/// ours, ...) so that a change in the machine's speed during the run (this
/// VM's is bimodal, with steps of seconds) falls on both; besides each
/// allocator's figures, the ratio of each repetition's pair is reported
/// (`shmzone/System`, median, min, max).
fn bench_w1(cfg: &Cfg) {
    let n = cfg.n(10_000_000);
    for size in W1_SIZES {
        eprintln!("W1 size {size} ...");
        let (mut ours, mut sys, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REPS {
            let zone = Zone::new();
            let a = ns_per(w1(&zone.pool, size, n), n);
            let b = ns_per(w1(&System, size, n), n);
            ours.push(a);
            sys.push(b);
            ratio.push(a / b);
        }
        let param = size.to_string();
        emit("W1", &param, Pool::NAME, Spread::of(ours), "ns/pair");
        emit("W1", &param, System::NAME, Spread::of(sys), "ns/pair");
        emit("W1", &param, RATIO, Spread::of(ratio), "x");
    }
}

/// The `impl` column of a ratio line: ours over the system allocator, per
/// alternated repetition.
const RATIO: &str = "shmzone/System";

fn bench_w2(cfg: &Cfg) {
    let n = cfg.n(5_000_000);
    eprintln!("W2 ...");
    let mut slots = vec![(std::ptr::null_mut(), 0); K];
    let (mut ours, mut sys, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    // Alternated as W1's repetitions are.
    for _ in 0..REPS {
        let zone = Zone::new();
        let a = ns_per(w2::<_, K>(&zone.pool, &mut slots, n, 42), n);
        drop(zone);
        let b = ns_per(w2::<_, K>(&System, &mut slots, n, 42), n);
        ours.push(a);
        sys.push(b);
        ratio.push(a / b);
    }
    emit("W2", "-", Pool::NAME, Spread::of(ours), "ns/op");
    emit("W2", "-", System::NAME, Spread::of(sys), "ns/op");
    emit("W2", "-", RATIO, Spread::of(ratio), "x");
}

fn bench_w3() {
    for size in W3_SIZES {
        eprintln!("W3 size {size} ...");
        let mut counts = Vec::new();
        for _ in 0..REPS {
            let zone = Zone::new();
            let mut n = 0usize;
            while zone.pool.alloc(size).is_some() {
                n += 1;
            }
            counts.push(n as f64);
        }
        let n = Spread::of(counts);
        emit("W3", &size.to_string(), Pool::NAME, n, "count");
        emit(
            "W3",
            &size.to_string(),
            Pool::NAME,
            n.map(|c| c * size as f64 / ZONE as f64),
            "fraction",
        );
    }
}

/// After W4: every child exited, so the pool must be empty, consistent and
/// its lock free with nobody waiting and nothing recovered. Checked, not
/// assumed; a failure ends the bench with the reason (the figures of a run
/// that corrupted the pool mean nothing).
fn w4_check_after(pool: &Pool, procs: usize) {
    let m = pool.mutex();
    let fail = |what: String| -> ! {
        panic!("W4 P={procs}: after every child exited, {what}");
    };
    if let Some(pid) = m.holder() {
        fail(format!("the pool's lock is still held (by pid {pid})"));
    }
    if m.waiters() != 0 {
        fail(format!(
            "{} process(es) still counted as waiting on the lock",
            m.waiters()
        ));
    }
    if m.recoveries() != 0 {
        fail(format!(
            "the lock was recovered {} time(s) from a dead holder",
            m.recoveries()
        ));
    }
    // The stats and the check take the lock: bounded, so a lock that is
    // somehow held ends the bench rather than hanging it.
    match m.lock_for(Duration::from_secs(5)) {
        Ok(g) => drop(g),
        Err(_) => fail("the pool's lock could not be taken within 5 s".to_string()),
    }
    if let Err(e) = pool.check() {
        fail(format!("the pool's check failed: {e}"));
    }
    let st = pool.stats();
    // Empty: no chunk and no page run in use. (A class may keep its last
    // empty page, as nginx's does, so free pages need not be all pages.)
    let live: u64 = st.classes.iter().map(|c| c.used + c.cached).sum();
    if live != 0 || st.pages_in_runs != 0 || st.bytes_in_use() != 0 || st.cache.slots != 0 {
        fail(format!(
            "the pool is not empty: {live} chunk(s) and {} page(s) in runs still allocated",
            st.pages_in_runs
        ));
    }
    let js = pool.journal_stats();
    if js.overflows != 0 {
        fail(format!("{} journal section(s) overflowed", js.overflows));
    }
    if st.rollbacks != 0 || st.fenced {
        fail(format!(
            "{} rollback(s), fenced: {}",
            st.rollbacks, st.fenced
        ));
    }
}

/// W4 once with `procs` processes: ns per op over all of them. With
/// `private`, each child makes its own pool after the fork and nothing is
/// shared: the same work, so its P=2/P=1 is the most this machine gives
/// at that moment (two vCPUs are not always two cores' worth).
fn w4_once(n: usize, procs: usize, private: bool) -> f64 {
    // The shared zone, made before the fork (none for private pools).
    let shared = (!private).then(Zone::new);
    // Made before the fork: each child uses its own copy.
    let mut slots = vec![(std::ptr::null_mut(), 0); K / procs];
    let t = Instant::now();
    let mut pids = Vec::new();
    for w in 0..procs {
        // SAFETY: the child only runs W2 on the shared pool and its
        // own copy of `slots`, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let seed = 42 + w as u64;
            let own = private.then(Zone::new);
            let zone = own.as_ref().or(shared.as_ref());
            let pool = &zone.expect("private, or made before the fork").pool;
            match procs {
                1 => w2::<_, K>(pool, &mut slots, n, seed),
                2 => w2::<_, { K / 2 }>(pool, &mut slots, n / 2, seed),
                _ => w2::<_, { K / 4 }>(pool, &mut slots, n / 4, seed),
            };
            // SAFETY: ends the child without running destructors.
            unsafe { libc::_exit(0) };
        }
        pids.push(pid);
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "W4 P={procs}: child {pid} failed (waitpid {r}, status {status:#x})"
        );
    }
    let ns = ns_per(t.elapsed(), n);
    let Some(zone) = shared else {
        return ns;
    };
    // The children's per-thread caches go back to the pool, as the
    // prefork master's recovery does for dead workers: one each.
    let back = zone.pool.reclaim_caches();
    if zone.pool.cache_enabled() && back != procs {
        panic!("W4 P={procs}: {back} cache(s) returned, expected one per child");
    }
    w4_check_after(&zone.pool, procs);
    ns
}

/// W4: each repetition runs P = 1, 2, 4 in turn (so that a change in the
/// machine's speed falls on all three), and besides each P's figures the
/// throughput ratios P=2/P=1 and P=4/P=2 of each repetition are reported
/// (impl `2/1`, `4/2`: median, min, max). Each repetition also runs the
/// same children on private pools (impl `private`: nothing shared, so no
/// lock and no line moves between processes) right after the shared run of
/// the same P: its ratios are what the machine allowed in that
/// repetition, and `shmzone/private` (ratio over ratio) is the part of it
/// the shared zone reached.
fn bench_w4(cfg: &Cfg) {
    let n = cfg.n(5_000_000);
    let np = W4_PROCS.len();
    // v[i]: shared at W4_PROCS[i]; v[np + i]: private.
    let mut v: Vec<Vec<f64>> = vec![Vec::new(); 2 * np];
    for rep in 0..REPS {
        for (i, &procs) in W4_PROCS.iter().enumerate() {
            eprintln!("W4 P={procs} (repetition {}) ...", rep + 1);
            v[i].push(w4_once(n, procs, false));
            v[np + i].push(w4_once(n, procs, true));
        }
    }
    for (off, imp) in [(0, Pool::NAME), (np, "private")] {
        for (i, &procs) in W4_PROCS.iter().enumerate() {
            let ns = Spread::of(v[off + i].clone());
            emit("W4", &procs.to_string(), imp, ns.map(|x| 1e3 / x), "Mops/s");
            emit("W4", &procs.to_string(), imp, ns, "ns/op");
        }
    }
    // Throughput ratios: time of the smaller P over time of the larger.
    for (lo, hi) in [(0, 1), (1, 2)] {
        let name = format!("{}/{}", W4_PROCS[hi], W4_PROCS[lo]);
        let ratio = |off: usize, k: usize| v[off + lo][k] / v[off + hi][k];
        let shared: Vec<f64> = (0..REPS).map(|k| ratio(0, k)).collect();
        let private: Vec<f64> = (0..REPS).map(|k| ratio(np, k)).collect();
        let rel: Vec<f64> = (0..REPS).map(|k| ratio(0, k) / ratio(np, k)).collect();
        emit("W4", &name, Pool::NAME, Spread::of(shared), "x");
        emit("W4", &name, "private", Spread::of(private), "x");
        emit("W4", &name, "shmzone/private", Spread::of(rel), "x");
    }
}

fn main() {
    let mut cfg = Cfg {
        quick: false,
        filters: Vec::new(),
    };
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => cfg.quick = true,
            s if s.starts_with('-') => {} // --bench, from cargo
            s => cfg.filters.push(s.to_string()),
        }
    }
    let t = Instant::now();
    println!("workload\tparam\timpl\tvalue\tunit");
    if cfg.wants("lock") {
        bench_lock(&cfg);
    }
    if cfg.wants("W1") {
        bench_w1(&cfg);
    }
    if cfg.wants("W2") {
        bench_w2(&cfg);
    }
    if cfg.wants("W3") {
        bench_w3();
    }
    if cfg.wants("W4") {
        bench_w4(&cfg);
    }
    eprintln!(
        "done in {:.1} s ({} reps, medians{})",
        t.elapsed().as_secs_f64(),
        REPS,
        if cfg.quick { ", --quick: N / 10" } else { "" }
    );
}
