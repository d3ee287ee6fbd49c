//! Signals for the pre-fork master and its workers: handlers that only set
//! flags, plus a self-pipe so a process waiting in `poll` wakes up.
//!
//! A handler does two async-signal-safe things: it stores `true` into the
//! signal's flag and writes one byte into the non-blocking write end of the
//! wake pipe (saving and restoring `errno`). The waiting code polls the read
//! end of that pipe along with its other descriptors, then asks [`take`] or
//! [`pending`] which signals arrived. See signal(7), sigaction(2), pipe(2).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::error::Error;
use crate::os::last_error;

/// The signals the pre-fork layer deals with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `SIGTERM`: stop (gracefully, in this crate).
    Term,
    /// `SIGINT`: Ctrl-C; stop gracefully.
    Int,
    /// `SIGQUIT`: stop gracefully (nginx's graceful-shutdown signal).
    Quit,
    /// `SIGHUP`: reload.
    Hup,
    /// `SIGCHLD`: a child changed state.
    Chld,
    /// `SIGKILL`: cannot be caught; only sent.
    Kill,
    /// `SIGPIPE`: a write to a closed pipe or socket.
    Pipe,
}

impl Signal {
    /// The platform's number for this signal.
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Quit => libc::SIGQUIT,
            Signal::Hup => libc::SIGHUP,
            Signal::Chld => libc::SIGCHLD,
            Signal::Kill => libc::SIGKILL,
            Signal::Pipe => libc::SIGPIPE,
        }
    }

    /// The conventional name, e.g. `SIGTERM`, for a platform signal number.
    pub fn name_of(number: i32) -> &'static str {
        match number {
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            libc::SIGQUIT => "SIGQUIT",
            libc::SIGHUP => "SIGHUP",
            libc::SIGCHLD => "SIGCHLD",
            libc::SIGKILL => "SIGKILL",
            libc::SIGPIPE => "SIGPIPE",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            libc::SIGFPE => "SIGFPE",
            libc::SIGUSR1 => "SIGUSR1",
            libc::SIGUSR2 => "SIGUSR2",
            _ => "signal",
        }
    }
}

/// Flags set by the handler, indexed by signal number.
const NSIG: usize = 65;
#[allow(clippy::declare_interior_mutable_const)]
const UNSET: AtomicBool = AtomicBool::new(false);
static PENDING: [AtomicBool; NSIG] = [UNSET; NSIG];
/// Write end of the wake pipe, or -1.
static WAKE_W: AtomicI32 = AtomicI32::new(-1);
/// Read end of the wake pipe, or -1.
static WAKE_R: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    if let Some(flag) = PENDING.get(sig as usize) {
        flag.store(true, Ordering::SeqCst);
    }
    let fd = WAKE_W.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: errno is thread-local; reading and restoring it around the
        // write keeps the interrupted code's errno intact. write(2) is
        // async-signal-safe; a full pipe (EAGAIN) is fine: the reader will
        // wake up anyway.
        unsafe {
            let errno = errno_location();
            let saved = *errno;
            let byte = 1u8;
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *errno = saved;
        }
    }
}

cfg_if::cfg_if! {
    if #[cfg(any(target_os = "linux", target_os = "android", target_os = "emscripten",
                 target_os = "fuchsia", target_os = "redox", target_os = "hurd"))] {
        unsafe fn errno_location() -> *mut libc::c_int {
            // SAFETY: always valid for the calling thread.
            unsafe { libc::__errno_location() }
        }
    } else if #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd",
                        target_os = "dragonfly"))] {
        unsafe fn errno_location() -> *mut libc::c_int {
            // SAFETY: always valid for the calling thread.
            unsafe { libc::__error() }
        }
    } else if #[cfg(any(target_os = "netbsd", target_os = "openbsd"))] {
        unsafe fn errno_location() -> *mut libc::c_int {
            // SAFETY: always valid for the calling thread.
            unsafe { libc::__errno() }
        }
    } else {
        unsafe fn errno_location() -> *mut libc::c_int {
            // SAFETY: always valid for the calling thread.
            unsafe { libc::__errno_location() }
        }
    }
}

/// Makes a new wake pipe (both ends non-blocking and close-on-exec),
/// replacing (and closing) any earlier one in this process, and clears
/// every pending flag.
///
/// A forked child calls this first so that its handlers no longer write
/// into the pipe it shares with its parent.
pub(crate) fn reset_wake_pipe() -> Result<(), Error> {
    let (r, w) = super::child::pipe_nonblocking()?;
    let old_w = WAKE_W.swap(w.as_raw_fd(), Ordering::SeqCst);
    let old_r = WAKE_R.swap(r.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(r);
    std::mem::forget(w);
    for fd in [old_w, old_r] {
        if fd >= 0 {
            // SAFETY: these descriptors were made by an earlier call of this
            // function, leaked into the statics, and are closed only here.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    for flag in PENDING.iter() {
        flag.store(false, Ordering::SeqCst);
    }
    Ok(())
}

/// The read end of the wake pipe (readable after a caught signal arrived).
///
/// # Panics
/// If [`reset_wake_pipe`] was never called in this process.
pub(crate) fn wake_fd() -> BorrowedFd<'static> {
    let fd: RawFd = WAKE_R.load(Ordering::SeqCst);
    assert!(fd >= 0, "signal wake pipe not made");
    // SAFETY: the descriptor stays open until the next reset_wake_pipe(),
    // which only a single-threaded master or a freshly forked child calls.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Empties the wake pipe (the flags are unaffected).
pub(crate) fn drain_wake() {
    let fd = WAKE_R.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: `buf` is a valid writable buffer of its length; the fd is
        // non-blocking so this returns -1/EAGAIN once empty.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

fn set_action(sig: Signal, handler: libc::sighandler_t) -> Result<(), Error> {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = libc::SA_RESTART;
    if sig == Signal::Chld {
        sa.sa_flags |= libc::SA_NOCLDSTOP;
    }
    // SAFETY: sa_mask is a valid sigset_t inside `sa`.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised; the handler (if any) is
    // async-signal-safe (it only stores to atomics and calls write).
    let r = unsafe { libc::sigaction(sig.number(), &sa, std::ptr::null_mut()) };
    if r != 0 {
        return Err(last_error(format!(
            "sigaction({})",
            Signal::name_of(sig.number())
        )));
    }
    Ok(())
}

/// Installs the flag-setting handler for `sig`.
pub(crate) fn catch(sig: Signal) -> Result<(), Error> {
    set_action(
        sig,
        on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
    )
}

/// Ignores `sig` (`SIG_IGN`).
pub(crate) fn ignore(sig: Signal) -> Result<(), Error> {
    set_action(sig, libc::SIG_IGN)
}

/// Restores the default action for `sig` (`SIG_DFL`).
pub(crate) fn default_action(sig: Signal) -> Result<(), Error> {
    set_action(sig, libc::SIG_DFL)
}

/// Whether `sig` arrived since its flag was last taken; clears the flag.
pub(crate) fn take(sig: Signal) -> bool {
    PENDING[sig.number() as usize].swap(false, Ordering::SeqCst)
}

/// Whether `sig` arrived since its flag was last taken; leaves it set.
pub(crate) fn pending(sig: Signal) -> bool {
    PENDING[sig.number() as usize].load(Ordering::SeqCst)
}

/// Sends `sig` to process `pid`.
pub(crate) fn kill(pid: u32, sig: Signal) -> Result<(), Error> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(Error::Os {
            call: format!("kill({pid}, {})", Signal::name_of(sig.number())),
            source: std::io::Error::from_raw_os_error(libc::ESRCH),
        });
    }
    // SAFETY: kill has no memory preconditions.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig.number()) };
    if r != 0 {
        return Err(last_error(format!(
            "kill({pid}, {})",
            Signal::name_of(sig.number())
        )));
    }
    Ok(())
}
