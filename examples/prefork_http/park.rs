//! `--busy-poll`: what a worker does before its runtime sleeps in
//! `epoll_wait`.
//!
//! On a busy machine the next request usually comes within microseconds;
//! serving it without a sleep and a wake-up saves the wake-up's latency
//! (each wake-up is a chance to wait behind another task's time slice).
//! So the runtime's park hook spins up to `--busy-poll` µs first, and
//! stops as soon as the runtime's epoll instance has an event ready: it
//! asks with `poll(2)` on the epoll descriptor itself, which reports
//! whether events are waiting without taking them, so tokio's own
//! `epoll_wait` then returns at once with them. Spinning to the end of the
//! budget regardless (as before) wasted the rest of it whenever a request
//! came early; on 2 cores shared with the load generator that CPU time is
//! taken from someone.
//!
//! The runtime's epoll descriptor is not part of tokio's API: it is found
//! as the `anon_inode:[eventpoll]` descriptors that building the runtime
//! opened (`/proc/self/fd`; two: mio's registry holds a duplicate of the
//! poll's descriptor), and the hook polls them all in one call. Where
//! that does not work (no /proc, or no new one), the hook spins the whole
//! budget.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The epoll descriptors this process has open now (none if /proc cannot
/// be read).
pub fn epoll_fds() -> HashSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (target.as_os_str() == "anon_inode:[eventpoll]").then_some(fd)
        })
        .collect()
}

/// The park hook's state: the budget, and the runtime's epoll
/// descriptors once known (none if they cannot be found).
#[derive(Clone)]
pub struct BusyPoll {
    budget: Duration,
    epoll: Arc<OnceLock<Vec<i32>>>,
}

impl BusyPoll {
    pub fn new(budget: Duration) -> BusyPoll {
        BusyPoll {
            budget,
            epoll: Arc::new(OnceLock::new()),
        }
    }

    /// Tells the hook which descriptors are the runtime's: the epoll
    /// descriptors in `after` not in `before` (at most 4). False if there
    /// is none.
    pub fn found(&self, before: &HashSet<i32>, after: &HashSet<i32>) -> bool {
        let new: Vec<i32> = after.difference(before).copied().take(4).collect();
        !new.is_empty() && self.epoll.set(new).is_ok()
    }

    /// The hook: spin until an event is ready or the budget is spent.
    pub fn park(&self) {
        let fds = self.epoll.get().map_or(&[][..], |v| &v[..]);
        let t = Instant::now();
        loop {
            if !fds.is_empty() && ready(fds) {
                return;
            }
            if t.elapsed() >= self.budget {
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// Whether any of the epoll descriptors `fds` (at most 4) has events
/// waiting (a `poll(2)` with no timeout: it reports readiness without
/// taking the events).
fn ready(fds: &[i32]) -> bool {
    let mut p = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    let n = fds.len().min(p.len());
    for (slot, &fd) in p.iter_mut().zip(fds) {
        slot.fd = fd;
    }
    // SAFETY: `n` valid pollfds in `p`, alive for the call; a timeout of 0
    // returns at once. The descriptors are the runtime's epoll ones, open
    // as long as the runtime, whose park hook this runs in.
    let r = unsafe { libc::poll(p.as_mut_ptr(), n as libc::nfds_t, 0) };
    r > 0
}
