//! The zone lock: ns per uncontended lock+unlock pair, and lock hand-off
//! throughput between 2 and 4 forked processes, for `ShmMutex` and, as the
//! reference, a process-shared `pthread_mutex_t` in the same shared memory.
//!
//! `cargo bench --bench lock [-- --quick]`. Prints one line per figure,
//! tab-separated: `lock<TAB>param<TAB>impl<TAB>value<TAB>unit`, each value
//! the median of at least 5 repetitions.

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Instant;

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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
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
