//! Helpers for tests that fork real processes.
//!
//! A forked child holds only the forking thread: anything another test
//! thread had locked stays locked in the child. So a child touches shared
//! memory and plain stack data only, and leaves with `libc::_exit`, never by
//! returning or unwinding into the test harness.
#![allow(dead_code)]

pub mod board;
pub mod named;

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

/// Re-executes this test binary to run only its test `child_entry` (which
/// reads its role from `var`) in a process that did not fork from this
/// one; returns the exit code, printing the child's output if it failed.
pub fn run_child_entry(var: &str, value: &str) -> i32 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(var, value)
        .output()
        .expect("start the child process");
    if !out.status.success() {
        eprintln!(
            "child stdout:\n{}\nchild stderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.code().unwrap_or(-1)
}

/// `waitid(P_PID, pid, WEXITED | WNOWAIT)`: waits for `pid` to end without
/// reaping it (so its pid cannot be reused yet); returns the signal that
/// killed it, or `None` if it exited.
pub fn wait_dead_nowait(pid: libc::pid_t) -> Option<i32> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid out-pointer; WNOWAIT leaves the child
        // waitable.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::EINTR), "waitid: {err}");
    }
    // SAFETY: waitid filled `info` for a child state change (SIGCHLD
    // layout), so the pid and status fields are the ones set.
    let (who, status) = unsafe { (info.si_pid(), info.si_status()) };
    assert_eq!(who, pid);
    (info.si_code == libc::CLD_KILLED || info.si_code == libc::CLD_DUMPED).then_some(status)
}
