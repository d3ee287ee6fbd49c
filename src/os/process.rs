//! Process identity and liveness.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use super::membarrier;

/// The cached pid; 0 = not known in this process (yet).
static PID: AtomicU32 = AtomicU32::new(0);

/// This process is registered for membarrier(2) global barriers, so its
/// unlocks may be a plain store (see `os::membarrier`). Set with `PID`,
/// cleared with it in a forked child until the child registers itself.
static BARRIER: AtomicBool = AtomicBool::new(false);

/// Registration of the `pthread_atfork` handler that clears `PID`:
///
/// | value | meaning |
/// |---|---|
/// | `0` | not registered |
/// | `pid` | process `pid` is registering it right now |
/// | `u32::MAX` | registered |
///
/// Not a `std::sync::Once`: a `fork` by another thread in the middle of
/// `call_once` would leave the child a `Once` that stays "running" forever,
/// and the child's first lock would hang (it did, in the tests). Here a
/// child that finds its parent's pid in the word takes the registration
/// over, and nothing ever blocks.
static ATFORK: AtomicU32 = AtomicU32::new(0);
const ATFORK_DONE: u32 = u32::MAX;

/// A function the `pthread_atfork` child handler runs after clearing
/// `PID` (0: none), set by [`on_fork_child`]: the slab caches forget the
/// calling thread's most recently used slot there, so their fast path
/// needs no pid compare.
static CHILD_HOOK: AtomicUsize = AtomicUsize::new(0);

extern "C" fn forget_pid() {
    PID.store(0, Ordering::Relaxed);
    BARRIER.store(false, Ordering::Relaxed);
    let hook = CHILD_HOOK.load(Ordering::Relaxed);
    if hook != 0 {
        // SAFETY: only `on_fork_child` stores a non-zero value, and it
        // stores a `fn()` cast to usize.
        let f = unsafe { std::mem::transmute::<usize, fn()>(hook) };
        f();
    }
}

/// Runs `f` in the child of every later `fork` (by libc's `fork`, in the
/// forking thread, the child's only thread) once [`fork_handler_ready`]
/// says the handler exists. One hook per process: a second call replaces
/// the first. `f` must be async-signal-safe (touch only atomics and the
/// thread's own `Cell`s).
pub(crate) fn on_fork_child(f: fn()) {
    CHILD_HOOK.store(f as usize, Ordering::Relaxed);
}

/// Whether the `pthread_atfork` handler is registered in this process, so
/// that a fork from now on clears the cached pid and runs the hook of
/// [`on_fork_child`] in the child.
#[inline]
pub(crate) fn fork_handler_ready() -> bool {
    ATFORK.load(Ordering::Acquire) == ATFORK_DONE
}

/// Whether this process may unlock with a plain store: it is registered for
/// membarrier(2) global barriers. Valid after [`current_pid`] returned in
/// this process.
#[inline]
pub(crate) fn barrier_registered() -> bool {
    BARRIER.load(Ordering::Relaxed)
}

/// This process's pid, cached (glibc's `getpid` is a real syscall).
///
/// The cache is cleared in a forked child by a `pthread_atfork` handler, so
/// a child that forked through libc's `fork` sees its own pid, as nginx's
/// workers refresh `ngx_pid`. (A child made by a raw `clone` syscall that
/// bypasses libc's fork handlers would see its parent's pid.)
#[inline]
pub(crate) fn current_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    current_pid_slow()
}

/// Whether `pid` (a real pid, never 0) is this process's: the
/// [`current_pid`] test of a hot path, one load and one compare when the
/// pid is cached (a 0 in the cache, not cached yet, never equals `pid`).
#[inline]
pub(crate) fn is_current_pid(pid: u32) -> bool {
    debug_assert_ne!(pid, 0);
    PID.load(Ordering::Relaxed) == pid || current_pid_cold() == pid
}

#[cold]
#[inline(never)]
fn current_pid_cold() -> u32 {
    current_pid()
}

#[cold]
fn current_pid_slow() -> u32 {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let mut state = ATFORK.load(Ordering::Acquire);
    loop {
        if state == ATFORK_DONE {
            // The handler exists, so a fork after these stores clears them.
            BARRIER.store(membarrier::register(), Ordering::Relaxed);
            PID.store(pid, Ordering::Relaxed);
            return pid;
        }
        if state == pid {
            // Another thread of ours is registering: answer without caching.
            return pid;
        }
        // Nobody registered yet, or a fork interrupted our parent's
        // registration: ours to do.
        match ATFORK.compare_exchange(state, pid, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                // SAFETY: registers a handler that only stores to an atomic,
                // which is async-signal-safe and valid in the child.
                unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
                ATFORK.store(ATFORK_DONE, Ordering::Release);
                state = ATFORK_DONE;
            }
            Err(now) => state = now,
        }
    }
}

/// Whether the process `pid` exists and can still run: `kill(pid, 0)`
/// succeeds or fails with `EPERM` (it exists but belongs to someone else),
/// and — on Linux — `/proc/PID/stat` does not show it as a zombie.
///
/// A zombie has died but is not yet reaped; it can never run again and its
/// pid cannot be reused until it is reaped, so for the lock's self-healing it
/// counts as dead. Where `/proc` is missing, existence alone decides.
pub(crate) fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it only checks existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    let exists = r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

cfg_if::cfg_if! {
    if #[cfg(any(target_os = "linux", target_os = "android"))] {
        /// Whether `/proc/PID/stat` shows state `Z` (zombie) or `X` (dead).
        /// False when it cannot be read. Uses only stack buffers.
        fn is_zombie(pid: u32) -> bool {
            task_is_zombie(pid, None)
        }

        /// Whether `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) shows
        /// state `Z` or `X`. False when it cannot be read. Stack buffers only.
        fn task_is_zombie(pid: u32, tid: Option<u32>) -> bool {
            // "/proc/" + 10 digits + "/task/" + 10 digits + "/stat" + NUL < 48.
            let mut path = [0u8; 48];
            let mut n = 0;
            let mut put = |bytes: &[u8], n: &mut usize| {
                for &b in bytes {
                    path[*n] = b;
                    *n += 1;
                }
            };
            let digits = |mut v: u32| {
                let mut d = [0u8; 10];
                let mut i = 10;
                loop {
                    i -= 1;
                    d[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                (d, i)
            };
            put(b"/proc/", &mut n);
            let (d, i) = digits(pid);
            put(&d[i..], &mut n);
            if let Some(tid) = tid {
                put(b"/task/", &mut n);
                let (d, i) = digits(tid);
                put(&d[i..], &mut n);
            }
            put(b"/stat", &mut n);
            // SAFETY: `path` is NUL-terminated (zero-filled past `n`).
            let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return false;
            }
            let mut buf = [0u8; 512];
            // SAFETY: `buf` is writable for its whole length; `fd` is ours.
            let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            // SAFETY: closes the descriptor opened above, once.
            unsafe { libc::close(fd) };
            if got <= 0 {
                return false;
            }
            let text = &buf[..got as usize];
            // "pid (comm) S ...": comm may hold ')' itself, so use the last one.
            match text.iter().rposition(|&b| b == b')') {
                Some(i) => matches!(text.get(i + 2), Some(b'Z') | Some(b'X')),
                None => false,
            }
        }
    } else {
        /// Not knowable without `/proc`: existence alone decides.
        fn is_zombie(_pid: u32) -> bool {
            false
        }
    }
}

/// This process's effective uid (`geteuid`).
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The inode of this process's pid namespace (`stat("/proc/self/ns/pid")`),
/// which names the namespace on this machine; `None` where there is no
/// such file (not Linux, or no `/proc`).
pub(crate) fn pid_namespace() -> Option<u64> {
    cfg_if::cfg_if! {
        if #[cfg(any(target_os = "linux", target_os = "android"))] {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
        } else {
            None
        }
    }
}

/// The calling thread's id (the kernel's tid on Linux; elsewhere 0, and
/// threads are told apart by their process only). Not cached: for slow
/// paths.
pub(crate) fn current_tid() -> u32 {
    cfg_if::cfg_if! {
        if #[cfg(any(target_os = "linux", target_os = "android"))] {
            // SAFETY: gettid has no preconditions and cannot fail.
            unsafe { libc::syscall(libc::SYS_gettid) as u32 }
        } else {
            0
        }
    }
}

/// Whether thread `tid` of process `pid` may still run: on Linux
/// `tgkill(pid, tid, 0)` succeeds or fails with `EPERM`, and the process is
/// no zombie; elsewhere (tid 0) whether the process is alive.
pub(crate) fn thread_alive(pid: u32, tid: u32) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    cfg_if::cfg_if! {
        if #[cfg(any(target_os = "linux", target_os = "android"))] {
            if tid == 0 || tid > i32::MAX as u32 {
                return true;
            }
            // SAFETY: signal 0 sends nothing; it only checks existence.
            let r = unsafe { libc::syscall(libc::SYS_tgkill, pid as libc::c_long, tid as libc::c_long, 0) };
            let exists = r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            // A thread that has ended but is not yet released shows Z or X.
            exists && !task_is_zombie(pid, Some(tid))
        } else {
            let _ = tid;
            true
        }
    }
}

/// Gives the CPU away (`sched_yield`).
pub(crate) fn yield_now() {
    // SAFETY: no preconditions.
    unsafe { libc::sched_yield() };
}

/// Number of online CPUs, read once (`sysconf` reads a file on glibc, too
/// slow for the lock's slow path) and cached.
pub(crate) fn ncpu() -> usize {
    static NCPU: AtomicU32 = AtomicU32::new(0);
    let cached = NCPU.load(Ordering::Relaxed);
    if cached != 0 {
        return cached as usize;
    }
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let n = if n > 0 {
        n.min(u32::MAX as libc::c_long) as u32
    } else {
        1
    };
    NCPU.store(n, Ordering::Relaxed);
    n as usize
}

/// SIGKILLs this process at once (the kill-point facility's end).
#[cfg(feature = "kill-points")]
pub(crate) fn kill_self() -> ! {
    // SAFETY: no preconditions; SIGKILL cannot be caught, so kill does not
    // return for the calling process.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
        libc::_exit(137)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_cached() {
        let me = current_pid();
        // SAFETY: getpid has no preconditions.
        assert_eq!(me, unsafe { libc::getpid() } as u32);
        assert!(pid_alive(me));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        assert!(ncpu() >= 1);
    }

    // Only Linux tells a zombie apart (`/proc`).
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), ignore)]
    #[test]
    fn a_zombie_and_a_reaped_child_are_not_alive() {
        // SAFETY: the child does nothing but `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: zeroed siginfo_t is valid; waitid with WNOWAIT leaves the
        // child a zombie.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0);
        assert!(!pid_alive(pid as u32), "a zombie counts as dead");
        let mut status = 0;
        // SAFETY: reaps our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(!pid_alive(pid as u32), "a reaped child is gone");
    }

    /// Regression: a fork in the middle of the first `current_pid` (then a
    /// `std::sync::Once`) left the child hung in its first `lock()`.
    #[test]
    fn registration_interrupted_by_fork_is_taken_over() {
        let me = current_pid();
        // What a child sees when its parent forked mid-registration.
        ATFORK.store(i32::MAX as u32, Ordering::SeqCst);
        PID.store(0, Ordering::SeqCst);
        assert_eq!(current_pid(), me);
        assert_eq!(ATFORK.load(Ordering::SeqCst), ATFORK_DONE);
        assert_eq!(PID.load(Ordering::SeqCst), me);
    }
}
