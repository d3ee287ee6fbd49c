//! The pre-fork master: fork N workers, watch them, respawn, reload, stop.
//!
//! This is the process model of nginx's master, small enough to read in one
//! sitting:
//!
//! - [`Master::run`] forks `workers` processes, each running the closure it
//!   is given with a shared `&T` (usually a [`Zones`](crate::zone::Zones)
//!   made before the fork) and a [`Worker`] handle.
//! - It watches them with `waitid(P_ALL, WEXITED|WNOWAIT)`: a dead worker is
//!   seen but left a zombie, so its pid cannot be reused while the death hook
//!   ([`Master::on_death`]) runs — the hook releases every lock the dead pid
//!   held (see [`recover_zones`]) — and only then reaped.
//! - A worker that died is respawned; one that keeps dying soon after start
//!   is respawned with a growing delay, capped (a burst of deaths never ends
//!   the service); only a worker that exits with [`EXIT_FATAL`] is not
//!   respawned (as nginx does with code 2), or, if asked for with
//!   [`Master::respawn_limit`], one that keeps failing at start.
//! - `SIGTERM`, `SIGINT` and `SIGQUIT` stop gracefully: each worker is told
//!   to stop, finishes what it is doing and exits; the master waits for all
//!   of them (at most [`Master::stop_timeout`], then `SIGKILL`) and returns.
//! - `SIGHUP` reloads: the reload hook ([`Master::on_reload`]) runs on the
//!   master's state (e.g. `Zones::reload`), a new generation of workers is
//!   forked from the new state, and the old one is stopped gracefully.
//!
//! Signal handlers only set flags and write a byte to a self-pipe that the
//! master polls. A worker learns that it should stop without busy polling:
//! the master holds the write end of one pipe per worker and closes it, so
//! the worker's read end reports hang-up to `poll`, along with whatever else
//! the worker waits on ([`Worker::wait_readable`]). The same hang-up arrives
//! if the master itself dies, so no worker outlives it for long.
//!
//! ```no_run
//! use shmzone::prefork::{Master, Worker};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! let hits = AtomicU64::new(0); // stands in for state made before fork
//! let master = Master::new(hits).workers(2);
//! // SAFETY: this program has a single thread here.
//! let (_, report) = unsafe {
//!     master.run(|_hits: &AtomicU64, w: &Worker| {
//!         while !w.wait_stop(None) {}
//!         0
//!     })
//! }?;
//! println!("spawned {} workers", report.spawned);
//! # Ok::<(), shmzone::Error>(())
//! ```

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::os::child::{self, Forked, Ready};
use crate::os::process;
use crate::os::signal;

pub use crate::os::child::ExitStatus;
pub use crate::os::signal::Signal;

mod zones;
pub use zones::{recover_zones, Recovery};

/// How soon the master's lock waits check whether the holder died.
const MASTER_HEAL: Duration = Duration::from_millis(2);

/// A worker exit code that means "do not respawn me" (nginx's fatal exit).
pub const EXIT_FATAL: i32 = 2;

/// The death hook's type.
type DeathHook<T> = Box<dyn FnMut(&T, &Death)>;
/// The reload hook's type.
type ReloadHook<T> = Box<dyn FnMut(&mut T) -> Result<(), Box<dyn std::error::Error>>>;
/// The hook run when the workers of before a reload are all gone.
type RetiredHook<T> = Box<dyn FnMut(&mut T)>;

/// One worker's end, as the death hook sees it (before the reap).
#[derive(Debug, Clone)]
pub struct Death {
    /// The dead worker's pid (still a zombie while the hook runs).
    pub pid: u32,
    /// Its slot, `0..workers`.
    pub index: usize,
    /// The generation it belonged to (0 at start, +1 per reload).
    pub generation: u64,
    /// How it ended.
    pub status: ExitStatus,
    /// How long it ran.
    pub uptime: Duration,
    /// Whether the master had told it to stop (reload or shutdown).
    pub told_to_stop: bool,
}

impl Death {
    /// Killed by a signal or exited with a nonzero code.
    pub fn abnormal(&self) -> bool {
        self.status != ExitStatus::Exited(0)
    }
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} (pid {}) ", self.index, self.pid)?;
        match self.status {
            ExitStatus::Exited(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signaled(s) => write!(f, "was killed by {}", Signal::name_of(s)),
        }
    }
}

/// What a finished [`Master::run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Workers forked, respawns and reloads included.
    pub spawned: u64,
    /// Workers reaped.
    pub deaths: u64,
    /// Of those, killed by a signal or exited nonzero.
    pub abnormal: u64,
    /// Workers respawned after an unexpected death.
    pub respawned: u64,
    /// Reloads done (the reload hook returned `Ok`).
    pub reloads: u64,
    /// Reloads refused (the reload hook returned `Err`; old workers kept).
    pub failed_reloads: u64,
    /// Workers still alive after the stop timeout, killed with `SIGKILL`.
    pub killed: u64,
    /// The master stopped because every worker slot was given up on.
    pub gave_up: bool,
}

/// The respawn rate limit (see [`Master::respawn_limit`]).
#[derive(Debug, Clone, Copy)]
struct Respawn {
    min_uptime: Duration,
    first_delay: Duration,
    max_delay: Duration,
    give_up_after: u32,
}

/// The pre-fork master; see the [module docs](self).
pub struct Master<T> {
    state: T,
    workers: usize,
    stop_timeout: Duration,
    respawn: Respawn,
    on_death: Option<DeathHook<T>>,
    on_reload: Option<ReloadHook<T>>,
    on_retired: Option<RetiredHook<T>>,
}

/// A worker's handle on its master.
pub struct Worker {
    index: usize,
    generation: u64,
    master: u32,
    /// Read end of this worker's stop pipe; hang-up means "stop".
    stop: OwnedFd,
}

/// What [`Worker::wait_readable`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The descriptor is readable (or hung up: a read will not block).
    Ready,
    /// The worker should stop.
    Stop,
    /// The timeout passed.
    Timeout,
}

impl Worker {
    /// This worker's slot, `0..workers`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The generation (0 at start, +1 per reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The master's pid.
    pub fn master_pid(&self) -> u32 {
        self.master
    }

    /// Whether the master (or a signal sent to this worker) asked this
    /// worker to stop. Does not block.
    pub fn should_stop(&self) -> bool {
        if signal::pending(Signal::Term)
            || signal::pending(Signal::Int)
            || signal::pending(Signal::Quit)
        {
            return true;
        }
        let mut out = [Ready::default(); 1];
        match child::poll_read(&[self.stop.as_fd()], Some(Duration::ZERO), &mut out) {
            Ok(()) => out[0].any(),
            Err(_) => true,
        }
    }

    /// Waits until `fd` is readable, the worker should stop, or `timeout`
    /// passes (`None`: no limit). Stop wins when both happen at once.
    pub fn wait_readable(&self, fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Wake {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.should_stop() {
                return Wake::Stop;
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(l) => Some(l),
                    None => return Wake::Timeout,
                },
            };
            let mut out = [Ready::default(); 3];
            let fds = [fd, self.stop.as_fd(), signal::wake_fd()];
            if child::poll_read(&fds, left, &mut out).is_err() {
                return Wake::Stop;
            }
            if out[1].any() || (out[2].any() && self.should_stop()) {
                return Wake::Stop;
            }
            if out[0].any() {
                return Wake::Ready;
            }
        }
    }

    /// Blocks until the worker should stop or `timeout` passes; true if it
    /// should stop.
    pub fn wait_stop(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.should_stop() {
                return true;
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(l) => Some(l),
                    None => return false,
                },
            };
            let mut out = [Ready::default(); 2];
            let fds = [self.stop.as_fd(), signal::wake_fd()];
            if child::poll_read(&fds, left, &mut out).is_err() {
                return true;
            }
        }
    }
}

/// One live worker, as the master tracks it.
struct Slot {
    index: usize,
    generation: u64,
    pid: u32,
    started: Instant,
    /// Write end of the worker's stop pipe; `None` once it was told to stop.
    stop: Option<OwnedFd>,
}

impl<T> Master<T> {
    /// A master over `state`, with 1 worker, a 10 s stop timeout and the
    /// default respawn limit.
    pub fn new(state: T) -> Master<T> {
        Master {
            state,
            workers: 1,
            stop_timeout: Duration::from_secs(10),
            respawn: Respawn {
                min_uptime: Duration::from_secs(1),
                first_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(5),
                give_up_after: 0,
            },
            on_death: None,
            on_reload: None,
            on_retired: None,
        }
    }

    /// The number of worker processes (at least 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// How long a graceful stop (or the old generation after a reload) may
    /// take before the remaining workers get `SIGKILL`.
    pub fn stop_timeout(mut self, t: Duration) -> Self {
        self.stop_timeout = t;
        self
    }

    /// The respawn rate limit. A worker that dies less than `min_uptime`
    /// after it started counts as failing at start: its slot is respawned
    /// after a delay that starts at 100 ms and doubles with every such death
    /// in a row, up to `max_delay` (a capped backoff: a burst of deaths
    /// never ends the service). With `give_up_after` above 0, a slot whose
    /// worker failed at start that many times in a row is given up on; 0
    /// means never. A worker that lived longer resets its slot; a worker
    /// that exits with [`EXIT_FATAL`] is never respawned. Defaults: 1 s,
    /// 5 s, 0 (never give up).
    pub fn respawn_limit(
        mut self,
        min_uptime: Duration,
        max_delay: Duration,
        give_up_after: u32,
    ) -> Self {
        self.respawn.min_uptime = min_uptime;
        self.respawn.max_delay = max_delay;
        self.respawn.first_delay = self.respawn.first_delay.min(max_delay);
        self.respawn.give_up_after = give_up_after;
        self
    }

    /// The hook run in the master for every dead worker, before it is
    /// reaped (so the pid is not reused yet). For zones use [`recover_zones`].
    pub fn on_death<F>(mut self, f: F) -> Self
    where
        F: FnMut(&T, &Death) + 'static,
    {
        self.on_death = Some(Box::new(f));
        self
    }

    /// The hook run in the master on `SIGHUP`, before the new workers are
    /// forked. On `Err` the reload is refused and the old workers kept.
    pub fn on_reload<F>(mut self, f: F) -> Self
    where
        F: FnMut(&mut T) -> Result<(), Box<dyn std::error::Error>> + 'static,
    {
        self.on_reload = Some(Box::new(f));
        self
    }

    /// The hook run in the master once every worker of the generations
    /// before a reload has been reaped: nothing uses their memory any more
    /// (e.g. [`Zones::release_retired`](crate::zone::Zones::release_retired)).
    pub fn on_retired<F>(mut self, f: F) -> Self
    where
        F: FnMut(&mut T) + 'static,
    {
        self.on_retired = Some(Box::new(f));
        self
    }

    /// Forks the workers and runs the master loop until a stop signal (or
    /// until every worker slot was given up on). Returns the state and what
    /// happened. `work` runs in each worker process; its return value is
    /// the worker's exit code (101 if it panicked).
    ///
    /// The master catches `SIGTERM`, `SIGINT`, `SIGQUIT`, `SIGHUP` and
    /// `SIGCHLD` for as long as it runs and restores their default actions
    /// when it returns. A worker catches `SIGTERM`, `SIGINT` and `SIGQUIT`
    /// as "stop gracefully", ignores `SIGHUP` and `SIGPIPE`, and leaves with
    /// `_exit` (no destructors run in it).
    ///
    /// # Safety
    /// The calling process must be single-threaded (the master forks, and a
    /// child of a multi-threaded process inherits the other threads' locks
    /// held). The caller must not reap children itself while this runs.
    ///
    /// # Errors
    /// [`Error::Os`] if a signal handler, pipe or the first fork cannot be
    /// made. Later fork failures are logged and retried with the respawn
    /// delay.
    pub unsafe fn run<W>(mut self, work: W) -> Result<(T, Report), Error>
    where
        W: Fn(&T, &Worker) -> i32,
    {
        const CAUGHT: [Signal; 5] = [
            Signal::Term,
            Signal::Int,
            Signal::Quit,
            Signal::Hup,
            Signal::Chld,
        ];
        signal::reset_wake_pipe()?;
        for s in CAUGHT {
            signal::catch(s)?;
        }
        // The master never blocks on a lock whose holder died (a worker
        // whose death it has not processed yet is a zombie): its waits take
        // such a lock over after 2 ms (see shmtx::set_process_heal_after).
        // Workers get the caller's setting back (see `spawn`).
        let heal = crate::shmtx::process_heal_after();
        crate::shmtx::set_process_heal_after(Some(MASTER_HEAL));
        let result = self.run_loop(&work, heal);
        crate::shmtx::set_process_heal_after(heal);
        for s in CAUGHT {
            let _ = signal::default_action(s);
        }
        result.map(|report| (self.state, report))
    }

    // Slot indices address three parallel per-slot vectors at once.
    #[allow(clippy::needless_range_loop)]
    fn run_loop<W>(&mut self, work: &W, heal: Option<Duration>) -> Result<Report, Error>
    where
        W: Fn(&T, &Worker) -> i32,
    {
        let mut report = Report::default();
        let mut slots: Vec<Slot> = Vec::with_capacity(self.workers * 2);
        let mut generation = 0u64;
        // Per slot index: quick deaths in a row, and when its respawn is due.
        let mut fails = vec![0u32; self.workers];
        let mut due: Vec<Option<Instant>> = vec![None; self.workers];
        let mut given_up = vec![false; self.workers];
        // When stopping: the deadline after which the rest get SIGKILL.
        let mut stopping: Option<Instant> = None;
        // Old generations being stopped after a reload, with their deadline.
        let mut old_deadline: Option<Instant> = None;
        // A reload happened and its old workers are not all reaped yet.
        let mut old_pending = false;

        for i in 0..self.workers {
            let slot = self.spawn(i, generation, &slots, work, heal)?;
            slots.push(slot);
            report.spawned += 1;
        }
        log::info!(
            "master {}: started {} workers",
            process::current_pid(),
            self.workers
        );

        loop {
            // Every dead worker first (simultaneous deaths are normal):
            // each is seen but left a zombie, so no pid can be reused while
            // the hooks run; then the hooks, in order; then the reaps. A
            // hook that waits on a lock whose holder is another dead worker
            // (or one dying meanwhile) does not hang: this process takes
            // such a lock over from the zombie (process-wide healing, set
            // in `run_loop`).
            let mut dead: Vec<(usize, ExitStatus)> = Vec::new();
            for (pos, s) in slots.iter().enumerate() {
                if let Some(status) = child::peek_dead_pid(s.pid)? {
                    dead.push((pos, status));
                }
            }
            let deaths: Vec<Death> = dead
                .iter()
                .map(|&(pos, status)| {
                    let s = &slots[pos];
                    Death {
                        pid: s.pid,
                        index: s.index,
                        generation: s.generation,
                        status,
                        uptime: s.started.elapsed(),
                        told_to_stop: s.stop.is_none(),
                    }
                })
                .collect();
            for death in &deaths {
                report.deaths += 1;
                if death.abnormal() {
                    report.abnormal += 1;
                    log::warn!("{death}");
                } else {
                    log::info!("{death}");
                }
                if let Some(hook) = self.on_death.as_mut() {
                    hook(&self.state, death);
                }
            }
            for death in deaths {
                child::reap(death.pid)?;
                if let Some(pos) = slots.iter().position(|s| s.pid == death.pid) {
                    slots.swap_remove(pos);
                }
                let current = death.generation == generation;
                if current && !death.told_to_stop && stopping.is_none() {
                    let i = death.index;
                    if death.status == ExitStatus::Exited(EXIT_FATAL) {
                        log::error!("{death}: fatal exit, slot {i} not respawned");
                        given_up[i] = true;
                    } else {
                        if death.uptime < self.respawn.min_uptime {
                            fails[i] = fails[i].saturating_add(1);
                        } else {
                            fails[i] = 0;
                        }
                        let limit = self.respawn.give_up_after;
                        if limit != 0 && fails[i] >= limit {
                            log::error!(
                                "worker slot {i} died {} times in a row within {:?} of start; not respawned",
                                fails[i],
                                self.respawn.min_uptime
                            );
                            given_up[i] = true;
                        } else {
                            due[i] = Some(Instant::now() + self.delay(fails[i]));
                        }
                    }
                }
            }
            // Children that are not workers (e.g. made by the caller).
            while let Some((pid, _)) = child::peek_dead()? {
                if slots.iter().any(|s| s.pid == pid) {
                    break; // a worker that died just now: next turn
                }
                child::reap(pid)?;
            }

            let stop_signal =
                signal::take(Signal::Term) | signal::take(Signal::Int) | signal::take(Signal::Quit);
            if stop_signal && stopping.is_none() {
                log::info!("master {}: stopping gracefully", process::current_pid());
                stopping = Some(Instant::now() + self.stop_timeout);
                for s in slots.iter_mut() {
                    s.stop = None;
                }
                due.iter_mut().for_each(|d| *d = None);
            }
            if signal::take(Signal::Hup) && stopping.is_none() {
                match self.reload() {
                    Ok(()) => {
                        report.reloads += 1;
                        generation += 1;
                        log::info!("master: reloaded, starting generation {generation}");
                        for s in slots.iter_mut() {
                            s.stop = None;
                        }
                        old_deadline = Some(Instant::now() + self.stop_timeout);
                        old_pending = true;
                        fails.iter_mut().for_each(|f| *f = 0);
                        due.iter_mut().for_each(|d| *d = None);
                        given_up.iter_mut().for_each(|g| *g = false);
                        for i in 0..self.workers {
                            match self.spawn(i, generation, &slots, work, heal) {
                                Ok(slot) => {
                                    slots.push(slot);
                                    report.spawned += 1;
                                }
                                Err(e) => {
                                    log::error!("{e}");
                                    due[i] = Some(Instant::now() + self.respawn.max_delay);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        report.failed_reloads += 1;
                        log::error!("master: reload refused, keeping the old workers: {e}");
                    }
                }
            }

            let now = Instant::now();
            if stopping.is_none() {
                for i in 0..self.workers {
                    if due[i].is_some_and(|d| d <= now) {
                        due[i] = None;
                        match self.spawn(i, generation, &slots, work, heal) {
                            Ok(slot) => {
                                slots.push(slot);
                                report.spawned += 1;
                                report.respawned += 1;
                            }
                            Err(e) => {
                                log::error!("{e}");
                                fails[i] += 1;
                                due[i] = Some(now + self.delay(fails[i]));
                            }
                        }
                    }
                }
                let live = slots.iter().any(|s| s.generation == generation);
                if !live && due.iter().all(Option::is_none) && given_up.iter().all(|g| *g) {
                    log::error!("master: every worker slot was given up on; stopping");
                    report.gave_up = true;
                    stopping = Some(now + self.stop_timeout);
                    for s in slots.iter_mut() {
                        s.stop = None;
                    }
                }
            }
            if stopping.is_some() && slots.is_empty() {
                log::info!(
                    "master {}: all workers gone, exiting",
                    process::current_pid()
                );
                return Ok(report);
            }

            // Overdue workers (stopping, or an old generation) get SIGKILL.
            let kill_all = stopping.is_some_and(|d| d <= now);
            let kill_old = old_deadline.is_some_and(|d| d <= now);
            if kill_all || kill_old {
                for s in slots.iter() {
                    if s.stop.is_none() && (kill_all || s.generation < generation) {
                        log::warn!(
                            "worker {} (pid {}) did not stop in time; SIGKILL",
                            s.index,
                            s.pid
                        );
                        if signal::kill(s.pid, Signal::Kill).is_ok() {
                            report.killed += 1;
                        }
                    }
                }
                if kill_all {
                    stopping = Some(now + Duration::from_secs(3600));
                }
                old_deadline = None;
            }
            if old_pending && !slots.iter().any(|s| s.generation < generation) {
                old_pending = false;
                old_deadline = None;
                log::info!("master: the workers of before the reload are all gone");
                if let Some(hook) = self.on_retired.as_mut() {
                    hook(&mut self.state);
                }
            }

            // Sleep until a signal arrives or the next deadline.
            let mut next: Option<Instant> = due.iter().flatten().copied().min();
            for d in [stopping, old_deadline].into_iter().flatten() {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
            let timeout = next.map(|d| d.saturating_duration_since(Instant::now()));
            let mut out = [Ready::default(); 1];
            child::poll_read(&[signal::wake_fd()], timeout, &mut out)?;
            signal::drain_wake();
        }
    }

    fn delay(&self, fails: u32) -> Duration {
        if fails == 0 {
            return Duration::ZERO;
        }
        let shift = (fails - 1).min(20);
        self.respawn
            .first_delay
            .saturating_mul(1u32 << shift)
            .min(self.respawn.max_delay)
    }

    fn reload(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        match self.on_reload.as_mut() {
            Some(hook) => hook(&mut self.state),
            None => Ok(()),
        }
    }

    /// Forks worker `index` of `generation`; in the child, never returns.
    fn spawn<W>(
        &self,
        index: usize,
        generation: u64,
        slots: &[Slot],
        work: &W,
        heal: Option<Duration>,
    ) -> Result<Slot, Error>
    where
        W: Fn(&T, &Worker) -> i32,
    {
        let (r, w) = child::pipe()?;
        let master = process::current_pid();
        // SAFETY: `run`'s caller guarantees a single-threaded process.
        match unsafe { child::fork() }? {
            Forked::Child => {
                drop(w);
                crate::shmtx::set_process_heal_after(heal);
                // The other workers' stop pipes are not ours to hold: if we
                // kept their write ends they would never see hang-up.
                for s in slots {
                    if let Some(fd) = s.stop.as_ref() {
                        // SAFETY: the child owns its copies of the master's
                        // descriptors; this one is not used in the child
                        // again (the child never returns from here).
                        unsafe { close_copy(fd) };
                    }
                }
                let code = match worker_signals() {
                    Ok(()) => {
                        let worker = Worker {
                            index,
                            generation,
                            master,
                            stop: r,
                        };
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            work(&self.state, &worker)
                        }))
                        .unwrap_or(101)
                    }
                    Err(e) => {
                        log::error!("worker {index}: {e}");
                        EXIT_FATAL
                    }
                };
                child::exit_now(code)
            }
            Forked::Parent(pid) => {
                drop(r);
                log::info!("started worker {index} (pid {pid}, generation {generation})");
                Ok(Slot {
                    index,
                    generation,
                    pid,
                    started: Instant::now(),
                    stop: Some(w),
                })
            }
        }
    }
}

/// Closes this process's copy of a descriptor that an `OwnedFd` elsewhere
/// still names.
///
/// # Safety
/// The `OwnedFd` must never be used (or dropped) in this process afterwards.
unsafe fn close_copy(fd: &OwnedFd) {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: the caller promises the original OwnedFd is never used or
    // dropped in this process again, so this is the only close.
    drop(unsafe { OwnedFd::from_raw_fd(fd.as_raw_fd()) });
}

/// Signal set-up in a freshly forked worker.
fn worker_signals() -> Result<(), Error> {
    signal::reset_wake_pipe()?;
    for s in [Signal::Term, Signal::Int, Signal::Quit] {
        signal::catch(s)?;
    }
    signal::ignore(Signal::Hup)?;
    signal::ignore(Signal::Pipe)?;
    signal::default_action(Signal::Chld)?;
    Ok(())
}

/// Sends `sig` to process `pid` (e.g. to test a worker's death).
///
/// # Errors
/// [`Error::Os`] when `kill` fails (no such process, no permission).
pub fn send_signal(pid: u32, sig: Signal) -> Result<(), Error> {
    signal::kill(pid, sig)
}

/// The parent of the calling process (a worker's master, while it lives).
pub fn parent_pid() -> u32 {
    child::parent_pid()
}
