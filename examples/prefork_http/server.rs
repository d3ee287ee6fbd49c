//! One worker process: a tokio current-thread runtime, made here after the
//! fork, serving HTTP/1.1 with hyper on the socket the master bound.
//!
//! A small accept thread (`accept.rs`) takes new connections, spreading
//! them evenly over the workers, and hands each to the runtime.
//! Every connection is a task on the runtime's one thread. What bounds a
//! client:
//!
//! - **head**: hyper's header read timeout (`--header-timeout`), counted
//!   from the connection's start or the previous response (its timer is
//!   the watchdog's, [`TickTimer`]); a head larger
//!   than 8 KiB gets 431. A slowloris client dripping a head is closed when
//!   it runs out, and costs a task, not a thread, meanwhile.
//! - **idle**: a keep-alive connection with no request for `--keepalive`
//!   is closed (the worker's [`Watchdog`], which looks every 250 ms).
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

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};

use shmzone::prefork::Worker;

use crate::accept::{accept_reuseport, accept_shared, Live, LiveGuard, HANDOFF_MAX};
use crate::app::{Answer, App, Reply, Shared};
use crate::counters::Event;
use crate::watchdog::{ConnState, TickTimer, Watchdog};

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
    // Before the runtime sleeps in epoll_wait, poll --busy-poll µs,
    // yielding the CPU (sched_yield) all the while: on a busy machine the
    // next requests usually come meanwhile and are served without a sleep
    // and a wake-up, each of which is a chance to wait behind another
    // task's time slice (`perf sched`, README "Against nginx"). Yielding,
    // not spinning: a pure spin (`spin_loop()`, session 6) took the CPU
    // from whatever else was runnable on it -- the wrk thread about to
    // send the next requests, or another worker with requests waiting --
    // and with 20 µs it cut p99 only in some runs; a yield gives that task
    // the CPU at once and returns at once when nothing else wants it.
    // In the H runs of session 7 (README): -c64 p99 3.2-7.4 ms against
    // the spin's 8-10 ms and nginx's 6.7-9.6, requests/s about the same
    // as with the spin; -c256 unchanged. The whole budget, also
    // when an event comes early: ending at the first event (poll(2) on the
    // runtime's epoll descriptor, tried in session 6) served requests one
    // by one, where the full budget gathers a batch per epoll_wait.
    let budget = Duration::from_micros(shared.config.busy_poll);
    if !budget.is_zero() {
        builder.on_thread_park(move || {
            let t = std::time::Instant::now();
            while t.elapsed() < budget {
                std::thread::yield_now();
            }
        });
    }
    let rt = match builder.build() {
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
    let dog = Rc::new(Watchdog::new(app.shared.config.keepalive));
    tokio::task::spawn_local(dog.clone().run(move || app.event(Event::IdleClosed)));
    let mut open = true;
    while !*stop.borrow() {
        tokio::select! {
            s = conns.recv() => match s {
                Some(s) => start(app, s, &dog, &live),
                None => {
                    open = false;
                    break;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Stop: the accept thread sees `done` within its socket timeout and
    // ends (the others keep accepting). Every connection, and those it
    // handed over meanwhile, is told to close once its request in flight
    // is answered; then wait for every connection to finish. The master
    // SIGKILLs us after its stop timeout if a client keeps one busy.
    dog.stop_all();
    loop {
        if !open && live.count.load(Ordering::Acquire) == 0 {
            break;
        }
        tokio::select! {
            s = conns.recv(), if open => match s {
                Some(s) => start(app, s, &dog, &live),
                None => open = false,
            },
            _ = live.closed.notified() => {}
        }
    }
    0
}

/// Starts a connection task for a stream the accept thread counted.
fn start(app: &'static App<'static>, s: std::net::TcpStream, dog: &Watchdog, live: &Arc<Live>) {
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
    tokio::task::spawn_local(connection(app, stream, dog.watch(), guard));
}

/// A request's answer, counted in its connection's [`ConnState`] when
/// done.
struct Counted {
    state: Rc<ConnState>,
    answer: Answer,
}

impl Future for Counted {
    type Output = Result<Reply, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = std::task::ready!(Pin::new(&mut self.answer).poll(cx));
        let st = &self.state;
        st.in_flight.set(st.in_flight.get() - 1);
        st.served.set(st.served.get() + 1);
        Poll::Ready(Ok(r))
    }
}

/// Serves one connection until it closes, or the watchdog tells it to
/// (idle, or the worker stops).
async fn connection(
    app: &'static App<'static>,
    stream: TcpStream,
    state: Rc<ConnState>,
    _live: LiveGuard,
) {
    let _ = stream.set_nodelay(true);
    let c = &app.shared.config;
    let st = state.clone();
    let svc = service_fn(move |req| {
        st.in_flight.set(st.in_flight.get() + 1);
        Counted {
            state: st.clone(),
            answer: app.handle(req),
        }
    });
    let conn = http1::Builder::new()
        .timer(TickTimer)
        .header_read_timeout(c.header_timeout)
        .max_buf_size(8192)
        .writev(false)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = false;
    let result = std::future::poll_fn(|cx| {
        if !closing && state.must_close(cx) {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await;
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
