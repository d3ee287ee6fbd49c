//! Child processes for the pre-fork master: fork, waitid, pipes and poll.
//!
//! See fork(2), waitid(2), pipe(2), poll(2), _exit(2).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::error::Error;
use crate::os::last_error;

/// Which side of a `fork` this process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The parent; the child's pid.
    Parent(u32),
}

/// Forks the calling process.
///
/// # Safety
/// The caller must be single-threaded, or the child must only use what is
/// safe after `fork` in a multi-threaded process (no lock another thread may
/// have held at the fork).
pub(crate) unsafe fn fork() -> Result<Forked, Error> {
    // SAFETY: the caller meets the conditions in this function's docs.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(last_error("fork()".to_string())),
        0 => Ok(Forked::Child),
        p => Ok(Forked::Parent(p as u32)),
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit`/`_exit` with this code.
    Exited(i32),
    /// It was killed by this signal number.
    Signaled(i32),
}

/// One dead child, seen but not reaped yet.
fn status_of(info: &libc::siginfo_t) -> Option<(u32, ExitStatus)> {
    // SAFETY: after a successful waitid the pid and status fields are set
    // (si_pid is 0 when WNOHANG found nothing).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return None;
    }
    let how = if info.si_code == libc::CLD_EXITED {
        ExitStatus::Exited(status)
    } else {
        ExitStatus::Signaled(status)
    };
    Some((pid as u32, how))
}

/// `waitid(P_ALL, 0, WEXITED|WNOHANG|WNOWAIT)`: a child that has ended,
/// left unreaped (it stays a zombie, so its pid cannot be reused), or
/// `None` when no child has ended (or there are no children).
pub(crate) fn peek_dead() -> Result<Option<(u32, ExitStatus)>, Error> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return Ok(status_of(&info));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => {
                return Err(Error::Os {
                    call: "waitid(P_ALL, WEXITED|WNOHANG|WNOWAIT)".to_string(),
                    source: err,
                })
            }
        }
    }
}

/// Whether child `pid` has ended, without reaping it
/// (`waitid(P_PID, pid, WEXITED|WNOHANG|WNOWAIT)`): its status if so.
pub(crate) fn peek_dead_pid(pid: u32) -> Result<Option<ExitStatus>, Error> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return Ok(status_of(&info).map(|(_, st)| st));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => {
                return Err(Error::Os {
                    call: format!("waitid(P_PID, {pid}, WEXITED|WNOHANG|WNOWAIT)"),
                    source: err,
                })
            }
        }
    }
}

/// Reaps the ended child `pid` (`waitid(P_PID, pid, WEXITED)`).
pub(crate) fn reap(pid: u32) -> Result<(), Error> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer.
        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED) };
        if r == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::Os {
                call: format!("waitid(P_PID, {pid}, WEXITED)"),
                source: err,
            });
        }
    }
}

/// A pipe; both ends close-on-exec and non-blocking. Returns (read, write).
pub(crate) fn pipe_nonblocking() -> Result<(OwnedFd, OwnedFd), Error> {
    let (r, w) = pipe()?;
    for fd in [&r, &w] {
        set_flag(fd.as_raw_fd(), libc::O_NONBLOCK)?;
    }
    Ok((r, w))
}

/// A pipe, both ends close-on-exec, blocking. Returns (read, write).
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let r = unsafe { libc::pipe(fds.as_mut_ptr()) };
    if r != 0 {
        return Err(last_error("pipe()".to_string()));
    }
    // SAFETY: pipe() just returned these two new descriptors; each is owned
    // by exactly one OwnedFd from here on.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&rd, &wr] {
        // SAFETY: fcntl on a descriptor we own.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        if r != 0 {
            return Err(last_error("fcntl(F_SETFD, FD_CLOEXEC)".to_string()));
        }
    }
    Ok((rd, wr))
}

fn set_flag(fd: libc::c_int, flag: libc::c_int) -> Result<(), Error> {
    // SAFETY: fcntl on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | flag) } != 0 {
        return Err(last_error("fcntl(F_SETFL)".to_string()));
    }
    Ok(())
}

/// What `poll` found on one descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ready {
    /// Data (or EOF, or a pending connection) can be read.
    pub(crate) readable: bool,
    /// The other end hung up, or an error is pending.
    pub(crate) hangup: bool,
}

impl Ready {
    /// Either readable or hung up: a read would not block.
    pub(crate) fn any(self) -> bool {
        self.readable || self.hangup
    }
}

/// Waits until one of `fds` is readable or hung up, or `timeout` passes
/// (`None`: no limit). An interrupting signal returns early with nothing
/// ready. `out[i]` receives what was found on `fds[i]`.
///
/// # Panics
/// If `out` is shorter than `fds` or there are more than 8 descriptors.
pub(crate) fn poll_read(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
    out: &mut [Ready],
) -> Result<(), Error> {
    assert!(fds.len() <= 8 && out.len() >= fds.len());
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 8];
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd.as_raw_fd();
        p.events = libc::POLLIN;
    }
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(d) => d
            .as_millis()
            .saturating_add(u128::from(d.subsec_nanos() % 1_000_000 != 0))
            .min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: `pfds` holds `fds.len()` initialised pollfd entries.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    for (o, p) in out.iter_mut().zip(&pfds[..fds.len()]) {
        *o = Ready {
            readable: r > 0 && p.revents & libc::POLLIN != 0,
            hangup: r > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
        };
    }
    if r < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::Os {
                call: "poll()".to_string(),
                source: err,
            });
        }
    }
    Ok(())
}

/// Ends the calling process at once with `code`: no destructors, no atexit
/// handlers, no stdio flush (`_exit`).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// The parent process's pid (`getppid`).
pub(crate) fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 }
}
