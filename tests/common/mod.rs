//! Helpers for tests that fork real processes.
//!
//! A forked child holds only the forking thread: anything another test
//! thread had locked stays locked in the child. So a child touches shared
//! memory and plain stack data only, and leaves with `libc::_exit`, never by
//! returning or unwinding into the test harness.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Forks; the child runs `f` and `_exit`s with its return value (101 if it
/// panicked). Returns the child's pid in the parent.
pub fn fork_child<F: FnOnce() -> i32>(f: F) -> libc::pid_t {
    // SAFETY: the child only runs `f` and then `_exit`s; see the module docs.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's atexit handlers
        // or destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Waits for `pid` and returns how it ended.
pub fn wait(pid: libc::pid_t) -> Exit {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::EINTR), "waitpid: {err}");
    }
    if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else {
        Exit::Signal(libc::WTERMSIG(status))
    }
}

/// Waits for `pid` and asserts it exited with 0.
pub fn wait_ok(pid: libc::pid_t) {
    assert_eq!(wait(pid), Exit::Code(0), "child {pid} failed");
}

/// Waits for `pid` at most `limit`; kills it and panics if it takes longer.
pub fn wait_within(pid: libc::pid_t, limit: Duration) -> Exit {
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) {
                Exit::Code(libc::WEXITSTATUS(status))
            } else {
                Exit::Signal(libc::WTERMSIG(status))
            };
        }
        if start.elapsed() > limit {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("child {pid} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
