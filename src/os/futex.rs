//! Sleeping on a 32-bit word in shared memory until another process changes
//! it, and waking such sleepers: the lock's waiting room.
//!
//! | target | `wait(word, expected, timeout)` | `wake(word, n)` |
//! |---|---|---|
//! | Linux, Android | `futex(FUTEX_WAIT)`: sleeps while `*word == expected` | `futex(FUTEX_WAKE, n)` |
//! | other unixes | `sched_yield()` once, then returns | nothing |
//!
//! The Linux calls deliberately leave out `FUTEX_PRIVATE_FLAG`: a private
//! futex is keyed by (address space, virtual address) and cannot be seen by
//! another process, while a shared one is keyed by the page it lives in
//! (inode and offset for `MAP_SHARED`, `/dev/zero` and SysV memory), so every
//! process that maps the word meets in the same wait queue — see futex(2).
//!
//! Both functions are hints: `wait` may return at any time (a wake, a signal,
//! the timeout, a value that already differed), so a caller always re-checks
//! its word in a loop. Neither allocates.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

cfg_if::cfg_if! {
    if #[cfg(any(target_os = "linux", target_os = "android"))] {
        /// Sleeps while `*word == expected`, at most `timeout` (forever if
        /// `None`). Returns on a wake, a signal, the timeout, or at once when
        /// the word already differs; the caller re-checks the word. True
        /// when the timeout ended the sleep (`ETIMEDOUT`).
        pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
            let ts;
            let ts_ptr: *const libc::timespec = match timeout {
                Some(d) => {
                    ts = libc::timespec {
                        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
                        tv_nsec: d.subsec_nanos() as _,
                    };
                    &ts
                }
                None => std::ptr::null(),
            };
            // SAFETY: `word` is a live, aligned u32 for the whole call (the
            // kernel only reads it); `ts_ptr` is null or points to `ts`, which
            // outlives the call; the remaining arguments are unused by
            // FUTEX_WAIT. Errors (EAGAIN, EINTR, ETIMEDOUT) all mean "look
            // again", which the caller does anyway.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word.as_ptr(),
                    libc::FUTEX_WAIT,
                    expected,
                    ts_ptr,
                    std::ptr::null::<u32>(),
                    0u32,
                )
            };
            r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT)
        }

        /// Wakes up to `n` processes sleeping in [`wait`] on `word`; returns
        /// how many the kernel woke.
        pub(crate) fn wake(word: &AtomicU32, n: u32) -> u32 {
            let n = n.min(i32::MAX as u32) as libc::c_int;
            // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE only uses it
            // as the key of the wait queue and ignores the last three
            // arguments.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word.as_ptr(),
                    libc::FUTEX_WAKE,
                    n,
                    std::ptr::null::<libc::timespec>(),
                    std::ptr::null::<u32>(),
                    0u32,
                )
            };
            if r > 0 {
                r as u32
            } else {
                0
            }
        }
    } else {
        /// No process-shared wait queue here: gives the CPU away once
        /// (`sched_yield`, as nginx does without semaphores) and returns.
        pub(crate) fn wait(_word: &AtomicU32, _expected: u32, _timeout: Option<Duration>) -> bool {
            crate::os::process::yield_now();
            false
        }

        /// Nothing sleeps in [`wait`] here, so there is nothing to wake.
        pub(crate) fn wake(_word: &AtomicU32, _n: u32) -> u32 {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn wait_returns_at_once_when_the_word_differs() {
        let w = AtomicU32::new(5);
        wait(&w, 4, None); // would hang forever if it slept
        assert_eq!(w.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(5);
        let t = Instant::now();
        assert!(wait(&w, 5, Some(Duration::from_millis(20))));
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn wake_with_no_sleeper_wakes_nobody() {
        let w = AtomicU32::new(0);
        assert_eq!(wake(&w, 1), 0);
    }
}
