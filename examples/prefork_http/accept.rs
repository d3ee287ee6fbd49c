//! Accepting connections: each worker's accept thread, and how the workers
//! share new connections out between them.
//!
//! A connection's latency grows with how many others its worker serves, so
//! the busiest worker's connections set the p99: connections must go
//! evenly over the workers. Each worker publishes its open connections in
//! its slot of the counters zone ([`Live`]), and an accept thread more than
//! [`LEAD_MAX`] ahead of the least busy worker ([`Live::ahead`]) leaves new
//! connections to the others, for up to [`DEFER_MAX`] each (the least busy
//! one may be stuck, dead, or not started yet).
//!
//! - **One shared socket** ([`accept_shared`]): the thread blocks in
//!   `accept`, and the kernel wakes one blocked acceptor per connection,
//!   the longest waiting. That alone is not enough on a loaded machine: a
//!   woken acceptor that does not get a CPU at once leaves the connection
//!   queued, and the acceptor that does run takes it (wrk -c64 on 4 workers
//!   on 2 busy cores: 29/21/6/8 or 63/1/0/0). With the gauges: 16/16/16/16.
//! - **`--reuseport`** ([`accept_reuseport`]): the kernel hashes each
//!   connection to one worker's socket (wrk -c64: 2/22/19/14 for nginx
//!   with the same setting). Every worker polls every socket, takes what
//!   comes on its own unless it is ahead, and takes from another worker's
//!   socket when that worker is ahead of it: work stealing, with the
//!   sockets non-blocking so a lost race costs nothing.
//!
//! Either way the thread stops accepting at `--connections`, or while the
//! runtime has not started [`HANDOFF_MAX`] connections it was handed, and
//! sees the stop flag within 100 ms (the shared socket's receive timeout,
//! the poll's timeout).

use std::io::ErrorKind;
use std::net::{TcpListener as StdListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use crate::counters::Counters;

/// How many connections a worker may have above the least busy one
/// before its accept thread leaves new ones to the others. 0: one with
/// more than the least takes no new connection, so the workers' counts
/// differ by one at most (with 1 they went 17/15 for 64 on 4 workers: the
/// 17 answer about 6 % slower, which is the p99).
pub const LEAD_MAX: u32 = 0;

/// How long a connection may wait in a queue for a less busy worker to
/// take it before a busier one takes it anyway.
pub const DEFER_MAX: Duration = Duration::from_millis(20);

/// Connections the accept thread hands over before it waits for the
/// runtime to start them: a runtime that is stuck holds at most this many
/// connections it has not started (waiting for the runtime after each one
/// spreads connections worse: the accept thread is then often not waiting
/// in accept when a connection comes).
pub const HANDOFF_MAX: u32 = 16;

/// Live connections of this worker (counted by the accept thread, which
/// stops accepting at `max`), connections handed to the runtime and not
/// started yet, a wake-up for the runtime when one closes, and the accept
/// thread to unpark when the count falls below `max` or the runtime has
/// started what it was handed. The count is also published in this
/// worker's slot of the counters zone (`gauge`), where every worker's
/// accept thread compares it ([`Live::ahead`]).
pub struct Live {
    pub count: AtomicU32,
    pub handed: AtomicU32,
    pub max: u32,
    pub closed: Notify,
    pub acceptor: OnceLock<std::thread::Thread>,
    pub gauge: Option<Counters<'static>>,
    pub slot: usize,
    pub pid: u32,
    /// How many worker slots to balance over (1: no balancing).
    pub workers: usize,
}

impl Live {
    fn opened(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        if let Some(c) = self.gauge {
            c.open_add(self.slot, self.pid, true);
        }
    }

    /// The gauges of slots `0..workers`: this worker's and the least.
    fn mine_and_least(&self) -> Option<(u32, u32)> {
        let c = self.gauge.filter(|_| self.workers > 1)?;
        let mut mine = 0;
        let mut least = u32::MAX;
        for (i, open) in c.open(self.workers).enumerate() {
            if i == self.slot {
                mine = open;
            }
            least = least.min(open);
        }
        Some((mine, least))
    }

    /// Whether this worker has more than [`LEAD_MAX`] connections above the
    /// least busy worker's (as the workers' gauges say).
    pub fn ahead(&self) -> bool {
        self.mine_and_least()
            .is_some_and(|(mine, least)| mine > least.saturating_add(LEAD_MAX))
    }

    /// Whether this worker should take a connection waiting on worker
    /// `owner`'s socket: its own unless it is ahead; another's when that
    /// worker is more than [`LEAD_MAX`] ahead of this one.
    fn may_take(&self, owner: usize) -> bool {
        if owner == self.slot {
            return !self.ahead();
        }
        let Some(c) = self.gauge else {
            return false;
        };
        let Some(theirs) = c.open(self.workers).nth(owner) else {
            return false;
        };
        let mine = c.open(self.workers).nth(self.slot).unwrap_or(0);
        theirs > mine.saturating_add(LEAD_MAX)
    }

    /// At `--connections`, or the runtime has not started what it was
    /// handed (it is stuck): wait for a connection to close or the runtime
    /// to catch up (both unpark us). True if it waited.
    fn full(&self) -> bool {
        if self.count.load(Ordering::Acquire) >= self.max
            || self.handed.load(Ordering::Acquire) >= HANDOFF_MAX
        {
            std::thread::park_timeout(Duration::from_millis(100));
            return true;
        }
        false
    }

    /// Counts a new connection and hands it to the runtime; false when the
    /// runtime is gone.
    fn hand(&self, stream: TcpStream, tx: &mpsc::UnboundedSender<TcpStream>) -> bool {
        self.opened();
        self.handed.fetch_add(1, Ordering::AcqRel);
        tx.send(stream).is_ok()
    }
}

/// Decrements the live count when a connection task ends, however it ends.
pub struct LiveGuard(pub Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.gauge {
            c.open_add(self.0.slot, self.0.pid, false);
        }
        let before = self.0.count.fetch_sub(1, Ordering::AcqRel);
        if before >= self.0.max {
            if let Some(t) = self.0.acceptor.get() {
                t.unpark();
            }
        }
        self.0.closed.notify_one();
    }
}

/// An accept error that is no reason to back off.
fn transient(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// EMFILE and the like: back off instead of spinning.
fn back_off(e: &std::io::Error) {
    log::warn!("accept: {e}");
    std::thread::sleep(Duration::from_millis(100));
}

/// The accept thread with one socket shared by every worker: a blocking
/// `accept` (the socket's receive timeout, set by the master, bounds each
/// wait so the thread sees `done`), unless this worker is ahead.
pub fn accept_shared(
    listener: &StdListener,
    live: &Live,
    done: &AtomicBool,
    tx: mpsc::UnboundedSender<TcpStream>,
) {
    while !done.load(Ordering::Relaxed) {
        if live.full() {
            continue;
        }
        // Ahead of the least busy worker: leave the next connection to the
        // others (blocked in accept, they take it), unless it waits too
        // long.
        if live.ahead() && !take_anyway(listener, live) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if !live.hand(stream, &tx) {
                    return;
                }
            }
            Err(e) if transient(e.kind()) => {}
            Err(e) => back_off(&e),
        }
    }
}

/// For an accept thread that is ahead ([`Live::ahead`]): waits up to
/// 100 ms for a connection to arrive, then gives the other workers
/// [`DEFER_MAX`] to take it. True: accept now (no longer ahead, or the
/// connection is still waiting); false: nothing to accept (none came, or
/// another worker took it).
fn take_anyway(listener: &StdListener, live: &Live) -> bool {
    if !pending(&[listener], 100).first().copied().unwrap_or(false) {
        return false;
    }
    let since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(1));
        if !live.ahead() {
            return true;
        }
        if !pending(&[listener], 0).first().copied().unwrap_or(false) {
            return false;
        }
        if since.elapsed() >= DEFER_MAX {
            return true;
        }
    }
}

/// The accept thread with `--reuseport`: every worker's socket
/// (`listeners[i]` is worker slot i's, all non-blocking) is polled; a
/// waiting connection is taken by whoever [`Live::may_take`] it, by its
/// socket's worker once it has waited [`DEFER_MAX`], by anyone after five
/// times that.
pub fn accept_reuseport(
    listeners: &[StdListener],
    live: &Live,
    done: &AtomicBool,
    tx: mpsc::UnboundedSender<TcpStream>,
) {
    let all: Vec<&StdListener> = listeners.iter().collect();
    // When each socket was first seen with a connection waiting that
    // nobody took.
    let mut waiting: Vec<Option<Instant>> = vec![None; all.len()];
    while !done.load(Ordering::Relaxed) {
        if live.full() {
            continue;
        }
        let ready = pending(&all, 100);
        let mut left = false;
        for (i, l) in all.iter().enumerate() {
            if !ready.get(i).copied().unwrap_or(false) {
                waiting[i] = None;
                continue;
            }
            let since = *waiting[i].get_or_insert_with(Instant::now);
            // Left too long: its owner takes it, or after longer anyone
            // (the owner may be dead: its socket outlives it).
            let limit = if i == live.slot {
                DEFER_MAX
            } else {
                DEFER_MAX * 5
            };
            if !live.may_take(i) && since.elapsed() < limit {
                left = true;
                continue;
            }
            waiting[i] = None;
            match l.accept() {
                Ok((stream, _)) => {
                    if !live.hand(stream, &tx) {
                        return;
                    }
                }
                // Another worker took it first.
                Err(e) if transient(e.kind()) => {}
                Err(e) => back_off(&e),
            }
        }
        if left {
            // Give the worker it was left to a moment to take it (the
            // poll would return at once while it waits).
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Which listening sockets have a connection waiting, waiting up to `ms`
/// for one (a poll(2) for readability; an error counts as none).
fn pending(listeners: &[&StdListener], ms: i32) -> Vec<bool> {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call's
    // duration; each descriptor is a listener's, open while borrowed.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    fds.iter()
        .map(|p| n > 0 && p.revents & libc::POLLIN != 0)
        .collect()
}
