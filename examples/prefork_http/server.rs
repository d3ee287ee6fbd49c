//! One worker process: a tokio current-thread runtime, made here after the
//! fork, serving HTTP/1.1 with hyper on the socket the master bound.
//!
//! A small accept thread (`accept.rs`) takes new connections, spreading
//! them evenly over the workers, and hands each to the runtime.
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

use crate::accept::{accept_reuseport, accept_shared, Live, LiveGuard, HANDOFF_MAX};
use crate::app::{App, Shared};
use crate::counters::Event;
use crate::park::{epoll_fds, BusyPoll};

/// The worker's entry point (run by the master in each forked child).
pub fn worker(shared: &Shared, w: &Worker) -> i32 {
    // SAFETY: the tasks below need 'static data. `shared` is the master's
    // state as copied into this forked process: it is never dropped here
    // (a worker leaves with _exit once this returns), and the runtime and
    // every task holding this reference are dropped before this function
    // returns anyway.
    let shared: &'static Shared = unsafe { &*(shared as *const Shared) };
    let app: &'static App<'static> = Box::leak(Box::new(App::new(shared, w.index())));
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    // Before the runtime sleeps in epoll_wait, spin up to --busy-poll µs
    // or until an event is ready (`park.rs`): on a busy machine the next
    // requests usually come meanwhile and are served without a sleep and
    // a wake-up, each of which is a chance to wait behind another task's
    // time slice (`perf sched`, README "Against nginx").
    let spin = Duration::from_micros(shared.config.busy_poll);
    let busy = BusyPoll::new(spin);
    if !spin.is_zero() {
        let b = busy.clone();
        builder.on_thread_park(move || b.park());
    }
    let before = epoll_fds();
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("worker {}: runtime: {e}", w.index());
            return shmzone::prefork::EXIT_FATAL;
        }
    };
    let after = epoll_fds();
    if !spin.is_zero() && !busy.found(&before, &after) {
        log::debug!(
            "worker {}: runtime's epoll not found: --busy-poll spins its whole budget",
            w.index()
        );
    }
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
        workers,
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
        // (With --reuseport the sockets are non-blocking, even just one.)
        let acceptor = s.spawn(|| match &shared.listeners[..] {
            [one] if !shared.config.reuseport => accept_shared(one, &live, &done, conn_tx),
            all => accept_reuseport(all, &live, &done, conn_tx),
        });
        let _ = live.acceptor.set(acceptor.thread().clone());
        let local = tokio::task::LocalSet::new();
        let code = local.block_on(&rt, serve(app, live.clone(), conn_rx, stop_rx));
        done.store(true, Ordering::Relaxed);
        code
    })
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
