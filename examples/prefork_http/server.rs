//! One worker process: a tokio current-thread runtime, made here after the
//! fork, serving HTTP/1.1 with hyper on the socket the master bound.
//!
//! Every connection is a task on this one thread. What bounds a client:
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
//! waits on it ([`Worker::wait_stop`]) and tells the runtime, which stops
//! accepting, lets each connection finish its request in flight (idle ones
//! close at once) and returns.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use shmzone::prefork::Worker;

use crate::app::{App, Shared};
use crate::counters::Event;

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
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if w.wait_stop(Some(Duration::from_millis(200))) {
                    let _ = stop_tx.send(true);
                    return;
                }
            }
        });
        let local = tokio::task::LocalSet::new();
        let code = local.block_on(&rt, serve(app, listener, stop_rx));
        done.store(true, Ordering::Relaxed);
        code
    })
}

/// Live connections of this worker, and a wake-up for the accept loop
/// when one closes.
struct Live {
    count: Cell<u32>,
    closed: Notify,
}

/// Decrements the live count when a connection task ends, however it ends.
struct LiveGuard(Rc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get() - 1);
        self.0.closed.notify_one();
    }
}

async fn serve(
    app: &'static App<'static>,
    listener: StdListener,
    mut stop: watch::Receiver<bool>,
) -> i32 {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("listener: {e}");
            return shmzone::prefork::EXIT_FATAL;
        }
    };
    let max = app.shared.config.connections;
    let live = Rc::new(Live {
        count: Cell::new(0),
        closed: Notify::new(),
    });
    loop {
        if *stop.borrow() {
            break;
        }
        if live.count.get() >= max {
            tokio::select! {
                _ = live.closed.notified() => continue,
                _ = stop.changed() => break,
            }
        }
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    live.count.set(live.count.get() + 1);
                    let guard = LiveGuard(live.clone());
                    app.event(Event::Accepted);
                    tokio::task::spawn_local(connection(app, stream, stop.clone(), guard));
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Stop accepting (our copy of the socket; the others keep theirs), then
    // wait for the connections to finish what they are doing. The master
    // SIGKILLs us after its stop timeout if a client keeps one busy.
    drop(listener);
    while live.count.get() > 0 {
        live.closed.notified().await;
    }
    0
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
