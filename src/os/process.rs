//! Process identity and liveness.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

static PID: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn forget_pid() {
    PID.store(0, Ordering::Relaxed);
}

/// This process's pid, cached (glibc's `getpid` is a real syscall).
///
/// The cache is cleared in a forked child by a `pthread_atfork` handler, so
/// a child that forked through libc's `fork` sees its own pid, as nginx's
/// workers refresh `ngx_pid`.
#[inline]
pub(crate) fn current_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    current_pid_slow()
}

#[cold]
fn current_pid_slow() -> u32 {
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic, which is
        // async-signal-safe and valid in the child after fork.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
    });
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// Whether a process with this pid exists (`kill(pid, 0)`; EPERM counts as
/// existing).
#[allow(dead_code)] // used by the lock's self-healing wait
pub(crate) fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it only checks existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Gives the CPU away (`sched_yield`).
pub(crate) fn yield_now() {
    // SAFETY: no preconditions.
    unsafe { libc::sched_yield() };
}

/// Number of online CPUs.
#[allow(dead_code)] // used by the lock's spin policy
pub(crate) fn ncpu() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}
