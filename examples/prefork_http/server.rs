//! One worker process: a tokio current-thread runtime, made here after the
//! fork, serving HTTP/1.1 with hyper on the socket the master bound.
//!
//! A small accept thread ([`accept_loop`]) blocks in `accept` and hands
//! each connection to the runtime: the kernel wakes one blocked acceptor
//! per connection, the longest waiting, so connections on the shared socket
//! go round the workers in turn instead of piling on whichever worker runs.
//! That alone is not enough on a loaded machine: a woken acceptor that does
//! not get a CPU at once leaves the connection queued, and the acceptor
//! that does run takes it (wrk -c64 on 4 workers on 2 busy cores: 29/21/6/8
//! or 63/1/0/0). So each worker publishes its open connections in its slot
//! of the counters zone, and an acceptor more than [`LEAD_MAX`] ahead of
//! the least busy worker leaves new connections to the others for up to
//! [`DEFER_MAX`] each ([`Live::ahead`]): the same 64 go 16/16/16/16. A
//! connection's latency grows with how many others its worker serves, so
//! the busiest worker's connections set the p99.
//! Every connection is a task on the runtime's one thread. What bounds a
//! client:
//!
//! - **head**: hyper's header read timeout (`--header-timeout`), counted
//!   from the connection's start or the previous response; a head larger
//!   than 8 KiB gets 431. A slowloris client dripping a head is closed when
//!   it runs out, and costs a task, not a thread, meanwhile.
//! - **idle**: a keep-alive connection with no request for `--keepalive`
//!   is closed (the watchdog in [`connection`]).
//! - **body**: read whole within `--body-timeout` and `--max-body`
//!   ([`App::handle`](crate::app::App::handle)), else 408 or 413.
//! - **count**: at most `--connections` per worker; past it the worker stops
//!   accepting (another worker takes the connection) until one closes.
//!
//! The master says "stop" by closing this worker's pipe: a small thread
//! waits on it ([`Worker::wait_stop`]) and tells the runtime and the accept
//! thread, which stop accepting (within the socket's 100 ms receive
//! timeout), lets each connection finish its request in flight (idle ones
//! close at once) and returns.

use std::cell::Cell;
use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use shmzone::prefork::Worker;

use crate::app::{App, Shared};
use crate::counters::{Counters, Event};

/// The worker's entry point (run by the master in each forked child).
pub fn worker(shared: &Shared, w: &Worker) -> i32 {
    // SAFETY: the tasks below need 'static data. `shared` is the master's
    // state as copied into this forked process: it is never dropped here
    // (a worker leaves with _exit once this returns), and the runtime and
    // every task holding this reference are dropped before this function
    // returns anyway.
    let shared: &'static Shared = unsafe { &*(shared as *const Shared) };
    let listener = match shared.listeners[w.index() % shared.listeners.len()].try_clone() {
        Ok(l) => l,
        Err(e) => {
            log::error!("worker {}: listener: {e}", w.index());
            return shmzone::prefork::EXIT_FATAL;
        }
    };
    let app: &'static App<'static> = Box::leak(Box::new(App::new(shared, w.index())));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("worker {}: runtime: {e}", w.index());
            return shmzone::prefork::EXIT_FATAL;
        }
    };
    log::debug!("worker {} (generation {}) ready", w.index(), w.generation());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    let done = AtomicBool::new(false);
    let pid = std::process::id();
    let gauge = app.counters();
    if let Some(c) = gauge {
        c.claim(w.index(), pid);
    }
    let workers = app.shared.config.workers();
    let live = Arc::new(Live {
        count: AtomicU32::new(0),
        handed: AtomicU32::new(0),
        max: app.shared.config.connections,
        closed: Notify::new(),
        acceptor: OnceLock::new(),
        gauge,
        slot: w.index(),
        pid,
        // Only workers sharing one socket can leave a connection to
        // another; with --reuseport the kernel has chosen the socket.
        balance: (shared.listeners.len() == 1 && workers > 1).then_some(workers),
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if w.wait_stop(Some(Duration::from_millis(200))) {
                    done.store(true, Ordering::Relaxed);
                    let _ = stop_tx.send(true);
                    return;
                }
            }
        });
        let acceptor = s.spawn(|| accept_loop(&listener, &live, &done, conn_tx));
        let _ = live.acceptor.set(acceptor.thread().clone());
        let local = tokio::task::LocalSet::new();
        let code = local.block_on(&rt, serve(app, live.clone(), conn_rx, stop_rx));
        done.store(true, Ordering::Relaxed);
        code
    })
}

/// Live connections of this worker (counted by the accept thread, which
/// stops accepting at `max`), connections handed to the runtime and not
/// started yet, a wake-up for the runtime when one closes, and the accept
/// thread to unpark when the count falls below `max` or the runtime has
/// started what it was handed. The count is also published in this
/// worker's slot of the counters zone (`gauge`), where every worker's
/// accept thread compares it ([`Live::ahead`]).
struct Live {
    count: AtomicU32,
    handed: AtomicU32,
    max: u32,
    closed: Notify,
    acceptor: OnceLock<std::thread::Thread>,
    gauge: Option<Counters<'static>>,
    slot: usize,
    pid: u32,
    /// `Some(workers)`: balance against the slots `0..workers`.
    balance: Option<usize>,
}

/// How many connections a worker may have above the least busy one
/// before its accept thread leaves new ones to the others.
const LEAD_MAX: u32 = 1;

/// How long a connection may wait in the queue for a less busy worker to
/// take it before a busier one takes it anyway (the less busy one may be
/// stuck, dead, or not started yet).
const DEFER_MAX: Duration = Duration::from_millis(20);

impl Live {
    fn opened(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        if let Some(c) = self.gauge {
            c.open_add(self.slot, self.pid, true);
        }
    }

    /// Whether this worker has more than [`LEAD_MAX`] connections above the
    /// least busy worker's (as the workers' gauges say).
    fn ahead(&self) -> bool {
        let (Some(c), Some(n)) = (self.gauge, self.balance) else {
            return false;
        };
        let mut mine = 0;
        let mut least = u32::MAX;
        for (i, open) in c.open(n).enumerate() {
            if i == self.slot {
                mine = open;
            }
            least = least.min(open);
        }
        mine > least.saturating_add(LEAD_MAX)
    }
}

/// Decrements the live count when a connection task ends, however it ends.
struct LiveGuard(Arc<Live>);

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

/// Connections the accept thread hands over before it waits for the
/// runtime to start them: a runtime that is stuck holds at most this many
/// connections it has not started (waiting for the runtime after each one
/// spreads connections worse: the accept thread is then often not waiting
/// in accept when a connection comes).
const HANDOFF_MAX: u32 = 16;

/// The accept thread: a blocking `accept` on the listening socket, handing
/// each connection to the runtime. The kernel wakes one blocked acceptor
/// per connection, the one that has waited longest: with one socket shared
/// by all workers, new connections go round the workers in turn (what
/// nginx gets from EPOLLEXCLUSIVE and one accept per wake-up), instead of
/// the running worker taking every connection queued when it looks. The
/// socket's receive timeout (set by the master) bounds each wait, so the
/// thread sees `done` within it.
fn accept_loop(
    listener: &StdListener,
    live: &Live,
    done: &AtomicBool,
    tx: mpsc::UnboundedSender<std::net::TcpStream>,
) {
    while !done.load(Ordering::Relaxed) {
        // At the cap, or while the runtime has not started HANDOFF_MAX
        // connections it was handed (it is stuck): leave new connections to
        // the other workers until one of ours closes or the runtime takes
        // what it was handed (both unpark us).
        if live.count.load(Ordering::Acquire) >= live.max
            || live.handed.load(Ordering::Acquire) >= HANDOFF_MAX
        {
            std::thread::park_timeout(Duration::from_millis(100));
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
                live.opened();
                live.handed.fetch_add(1, Ordering::AcqRel);
                if tx.send(stream).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// For an accept thread that is ahead ([`Live::ahead`]): waits up to
/// 100 ms for a connection to arrive, then gives the other workers
/// [`DEFER_MAX`] to take it. True: accept now (no longer ahead, or the
/// connection is still waiting); false: nothing to accept (none came, or
/// another worker took it).
fn take_anyway(listener: &StdListener, live: &Live) -> bool {
    if !pending(listener, 100) {
        return false;
    }
    let since = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(1));
        if !live.ahead() {
            return true;
        }
        if !pending(listener, 0) {
            return false;
        }
        if since.elapsed() >= DEFER_MAX {
            return true;
        }
    }
}

/// Whether a connection waits in the listening socket's queue, waiting up
/// to `ms` for one (a poll(2) for readability; errors count as none).
fn pending(listener: &StdListener, ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the call's duration; the descriptor is
    // the listener's, open while `listener` is borrowed.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 && p.revents & libc::POLLIN != 0
}

async fn serve(
    app: &'static App<'static>,
    live: Arc<Live>,
    mut conns: mpsc::UnboundedReceiver<std::net::TcpStream>,
    mut stop: watch::Receiver<bool>,
) -> i32 {
    let mut open = true;
    while !*stop.borrow() {
        tokio::select! {
            s = conns.recv() => match s {
                Some(s) => start(app, s, &stop, &live),
                None => {
                    open = false;
                    break;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Stop: the accept thread sees `done` within its socket timeout and
    // ends (the others keep accepting). Connections it handed over
    // meanwhile are started closing; then wait for every connection to
    // finish what it is doing. The master SIGKILLs us after its stop
    // timeout if a client keeps one busy.
    loop {
        if !open && live.count.load(Ordering::Acquire) == 0 {
            break;
        }
        tokio::select! {
            s = conns.recv(), if open => match s {
                Some(s) => start(app, s, &stop, &live),
                None => open = false,
            },
            _ = live.closed.notified() => {}
        }
    }
    0
}

/// Starts a connection task for a stream the accept thread counted.
fn start(
    app: &'static App<'static>,
    s: std::net::TcpStream,
    stop: &watch::Receiver<bool>,
    live: &Arc<Live>,
) {
    let guard = LiveGuard(live.clone());
    if live.handed.fetch_sub(1, Ordering::AcqRel) == HANDOFF_MAX {
        if let Some(t) = live.acceptor.get() {
            t.unpark();
        }
    }
    app.event(Event::Accepted);
    let stream = match s
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(s))
    {
        Ok(s) => s,
        Err(e) => {
            log::warn!("connection: {e}");
            return;
        }
    };
    tokio::task::spawn_local(connection(app, stream, stop.clone(), guard));
}

/// What the watchdog needs to know about a connection.
struct ConnState {
    /// Requests being answered now.
    in_flight: Cell<u32>,
    /// When the last request was answered (or the connection accepted).
    last_done: Cell<Instant>,
}

/// Serves one connection until it closes, times out idle, or the worker
/// stops.
async fn connection(
    app: &'static App<'static>,
    stream: TcpStream,
    mut stop: watch::Receiver<bool>,
    _live: LiveGuard,
) {
    let _ = stream.set_nodelay(true);
    let c = &app.shared.config;
    let state = Rc::new(ConnState {
        in_flight: Cell::new(0),
        last_done: Cell::new(Instant::now()),
    });
    let st = state.clone();
    let svc = service_fn(move |req| {
        let st = st.clone();
        st.in_flight.set(st.in_flight.get() + 1);
        async move {
            let r = app.handle(req).await;
            st.in_flight.set(st.in_flight.get() - 1);
            st.last_done.set(Instant::now());
            Ok::<_, Infallible>(r)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(c.header_timeout)
        .max_buf_size(8192)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = *stop.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let keepalive = c.keepalive;
    let mut deadline = Instant::now() + keepalive;
    let result = loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => break r,
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(deadline), if !closing => {
                let idle_since = state.last_done.get();
                if state.in_flight.get() == 0 && idle_since + keepalive <= Instant::now() {
                    app.event(Event::IdleClosed);
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    deadline = idle_since.max(Instant::now()) + keepalive;
                }
            }
        }
    };
    if let Err(e) = result {
        let event = if e.is_timeout() {
            Event::HeaderTimeout
        } else if e.is_parse() || e.is_parse_too_large() {
            Event::BadRequest
        } else {
            Event::IoError
        };
        app.event(event);
        log::debug!("connection: {e}");
    }
}
