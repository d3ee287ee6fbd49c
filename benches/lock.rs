//! The zone lock: ns per uncontended lock+unlock pair, and lock hand-off
//! throughput between 2 and 4 forked processes, for `ShmMutex` and, as the
//! reference, a process-shared `pthread_mutex_t` in the same shared memory;
//! then the worst waits (max and p99.9 of every `lock()` call) with 16
//! processes on the lock, holders that keep it a moment (`short`) or sleep
//! 100 µs inside (`sleeping`).
//!
//! `cargo bench --bench lock [-- --quick] [-- fair]` (`fair`: only the
//! worst-wait figures). Prints one line per figure,
//! tab-separated: `lock<TAB>param<TAB>impl<TAB>value<TAB>unit`, each value
//! the median of at least 5 repetitions.

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use shmzone::{Region, ShmMutex};

const REPS: usize = 5;

/// What the processes share, at the start of a fresh region.
#[repr(C)]
struct Shared {
    mutex: ShmMutex,
    pthread: UnsafeCell<libc::pthread_mutex_t>,
    counter: UnsafeCell<u64>,
    ready: AtomicU32,
    go: AtomicU32,
}

/// A lock under test: both live in `Shared`.
#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Shmzone,
    Pthread,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Shmzone => "shmzone",
            Impl::Pthread => "pthread_pshared",
        }
    }
}

fn setup(region: &Region) -> &Shared {
    let p = region.as_ptr().cast::<Shared>();
    // SAFETY: the region is page-aligned, zero-filled and larger than
    // `Shared`; a zeroed ShmMutex is a free lock and the pthread mutex is
    // initialised here before any use; the reference lives as long as
    // `region`.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutex_init((*p).pthread.get(), &attr);
        libc::pthread_mutexattr_destroy(&mut attr);
        &*p
    }
}

/// One lock, one increment of the plain counter, one unlock.
#[inline(always)]
fn critical(s: &Shared, which: Impl) {
    match which {
        Impl::Shmzone => {
            let _g = s.mutex.lock();
            // SAFETY: the lock is held.
            unsafe { *s.counter.get() += 1 };
        }
        Impl::Pthread => {
            // SAFETY: the mutex was initialised in `setup`; lock and unlock
            // pair up in this process; the counter is touched under it.
            unsafe {
                libc::pthread_mutex_lock(s.pthread.get());
                *s.counter.get() += 1;
                libc::pthread_mutex_unlock(s.pthread.get());
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// ns per lock+unlock pair with nobody else around.
fn uncontended(which: Impl, n: u64) -> f64 {
    let region = Region::new(4096).expect("region");
    let s = setup(&region);
    let reps = (0..REPS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                critical(black_box(s), which);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    // SAFETY: single process, no lock held.
    assert_eq!(unsafe { *s.counter.get() }, n * REPS as u64);
    median(reps)
}

/// Total lock hand-offs per second: `procs` forked processes each do `m`
/// lock/increment/unlock; timed from the common start until all exited.
fn handoff(which: Impl, procs: u32, m: u64) -> f64 {
    let reps = (0..REPS)
        .map(|_| {
            let region = Region::new(4096).expect("region");
            let s = setup(&region);
            let pids: Vec<libc::pid_t> = (0..procs)
                .map(|_| {
                    // SAFETY: the child only touches shared memory and its
                    // stack, then `_exit`s.
                    let pid = unsafe { libc::fork() };
                    assert!(pid >= 0, "fork");
                    if pid == 0 {
                        s.ready.fetch_add(1, SeqCst);
                        while s.go.load(SeqCst) == 0 {
                            std::hint::spin_loop();
                        }
                        for _ in 0..m {
                            critical(s, which);
                        }
                        // SAFETY: ends the child without unwinding.
                        unsafe { libc::_exit(0) };
                    }
                    pid
                })
                .collect();
            while s.ready.load(SeqCst) != procs {
                std::thread::yield_now();
            }
            let t = Instant::now();
            s.go.store(1, SeqCst);
            for pid in pids {
                let mut status = 0;
                // SAFETY: reaps our own child; `status` is a valid pointer.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
            let secs = t.elapsed().as_secs_f64();
            // SAFETY: every child has exited; nobody else touches it.
            let total = unsafe { *s.counter.get() };
            assert_eq!(total, procs as u64 * m, "lost updates");
            (procs as u64 * m) as f64 / secs
        })
        .collect();
    median(reps)
}

/// Buckets of the wait histogram: bucket `b` holds waits in
/// `[1.1^b, 1.1^(b+1))` ns (the first one everything below 1.1 ns); 256
/// buckets reach past 10^10 ns, 10 s.
const BUCKETS: usize = 256;

/// What the processes of the worst-wait figure share.
#[repr(C)]
struct Waits {
    mutex: ShmMutex,
    ready: AtomicU32,
    go: AtomicU32,
    stop: AtomicU32,
    max_ns: AtomicU64,
    count: AtomicU64,
    hist: [AtomicU64; BUCKETS],
}

fn bucket(ns: u64) -> usize {
    if ns <= 1 {
        return 0;
    }
    ((ns as f64).ln() / 1.1f64.ln())
        .floor()
        .min((BUCKETS - 1) as f64) as usize
}

/// How the holder behaves inside the lock.
#[derive(Clone, Copy)]
enum Hold {
    /// A few hundred ns of work (a counter bump and a short spin).
    Short,
    /// Sleeps 100 µs inside (a holder that blocks: I/O, a page fault).
    Sleeping,
}

/// 16 processes lock, hold, unlock, again, for `secs`; every wait for
/// `lock()` is recorded. Returns (max, p99.9, p50) in ms and the calls.
fn worst_waits(procs: u32, hold: Hold, secs: f64) -> (f64, f64, f64, u64) {
    let len = std::mem::size_of::<Waits>();
    let region = Region::new(len).expect("region");
    // SAFETY: zero-filled, page-aligned, large enough: a valid `Waits`
    // (a zeroed ShmMutex is a free lock), alive as long as `region`.
    let w = unsafe { &*region.as_ptr().cast::<Waits>() };
    let pids: Vec<libc::pid_t> = (0..procs)
        .map(|_| {
            // SAFETY: the child touches shared memory and its stack only,
            // then `_exit`s.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork");
            if pid == 0 {
                w.ready.fetch_add(1, SeqCst);
                while w.go.load(SeqCst) == 0 {
                    std::hint::spin_loop();
                }
                let mut local = [0u64; BUCKETS];
                let (mut max, mut n) = (0u64, 0u64);
                while w.stop.load(SeqCst) == 0 {
                    let t = Instant::now();
                    let g = w.mutex.lock();
                    let ns = t.elapsed().as_nanos() as u64;
                    match hold {
                        Hold::Short => {
                            for _ in 0..100 {
                                std::hint::spin_loop();
                            }
                        }
                        Hold::Sleeping => std::thread::sleep(Duration::from_micros(100)),
                    }
                    drop(g);
                    local[bucket(ns)] += 1;
                    max = max.max(ns);
                    n += 1;
                }
                for (h, l) in w.hist.iter().zip(local) {
                    h.fetch_add(l, SeqCst);
                }
                w.max_ns.fetch_max(max, SeqCst);
                w.count.fetch_add(n, SeqCst);
                // SAFETY: ends the child without unwinding.
                unsafe { libc::_exit(0) };
            }
            pid
        })
        .collect();
    while w.ready.load(SeqCst) != procs {
        std::thread::sleep(Duration::from_millis(1));
    }
    w.go.store(1, SeqCst);
    std::thread::sleep(Duration::from_secs_f64(secs));
    w.stop.store(1, SeqCst);
    for pid in pids {
        let mut status = 0;
        // SAFETY: reaps our own child; `status` is a valid pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    let n = w.count.load(SeqCst);
    let quantile = |q: f64| {
        let want = (n as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (b, h) in w.hist.iter().enumerate() {
            seen += h.load(SeqCst);
            if seen >= want {
                // The bucket's upper bound.
                return 1.1f64.powi(b as i32 + 1) / 1e6;
            }
        }
        f64::NAN
    };
    (
        w.max_ns.load(SeqCst) as f64 / 1e6,
        quantile(0.999),
        quantile(0.5),
        n,
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let fair_only = std::env::args().any(|a| a == "fair");
    let secs = if quick { 1.0 } else { 5.0 };
    for (hold, name) in [(Hold::Short, "short"), (Hold::Sleeping, "sleeping")] {
        let (max, p999, p50, n) = worst_waits(16, hold, secs);
        println!("lock	wait_16p_{name}	shmzone	{max:.2}	ms max");
        println!("lock	wait_16p_{name}	shmzone	{p999:.3}	ms p99.9");
        println!("lock	wait_16p_{name}	shmzone	{p50:.4}	ms p50");
        println!("lock	wait_16p_{name}	shmzone	{n}	calls");
    }
    if fair_only {
        return;
    }
    let (n, m) = if quick {
        (1_000_000, 100_000)
    } else {
        (20_000_000, 1_000_000)
    };
    for which in [Impl::Shmzone, Impl::Pthread] {
        let ns = uncontended(which, n);
        println!("lock\tuncontended\t{}\t{ns:.2}\tns/pair", which.name());
    }
    for procs in [2, 4] {
        for which in [Impl::Shmzone, Impl::Pthread] {
            let ops = handoff(which, procs, m);
            println!(
                "lock\thandoff_{procs}p\t{}\t{:.0}\tops/s",
                which.name(),
                ops
            );
        }
    }
}
