//! One watchdog task per worker for every connection's clocks: the idle
//! keep-alive timeout, the stop, and hyper's header read timeout
//! ([`TickTimer`]), checked every [`TICK`].
//!
//! Each connection used to race hyper against its own stop receiver and
//! keep-alive sleep (a `select!` polled at every wake-up, a clock read
//! per request), and hyper armed a tokio timer for every request head
//! (a boxed `Sleep` registered in tokio's timer wheel and removed again
//! once the head came: about 10 % of a request's instructions with the
//! `select!`, callgrind). Timeouts of seconds do not need that: here a
//! request costs a few `Cell` updates, and the watchdog's tick does the
//! clock work for all connections at once, 4 times a second. A timeout
//! fires up to one tick (plus the task's scheduling) late.
//!
//! Everything here lives on the worker's one runtime thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the watchdog looks.
pub const TICK: Duration = Duration::from_millis(250);

/// One connection as the watchdog sees it; the connection task updates
/// `in_flight` and `served` per request.
pub struct ConnState {
    /// Requests being answered now.
    pub in_flight: Cell<u32>,
    /// Requests answered so far.
    pub served: Cell<u64>,
    /// Set by the watchdog: shut the connection down gracefully.
    close: Cell<bool>,
    /// The connection task's waker (to act on `close` at once).
    waker: RefCell<Option<Waker>>,
    /// The watchdog's own view: `served` at its last look, and since when
    /// the connection has been idle.
    seen: Cell<u64>,
    idle_since: Cell<Instant>,
}

impl ConnState {
    /// Whether the connection must shut down (gracefully), keeping the
    /// task's waker for the watchdog to wake when that changes.
    pub fn must_close(&self, cx: &Context<'_>) -> bool {
        if self.close.get() {
            return true;
        }
        let mut w = self.waker.borrow_mut();
        match w.as_ref() {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
        false
    }

    fn shut(&self) {
        self.close.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// The worker's connections and the keep-alive timeout.
pub struct Watchdog {
    conns: RefCell<Vec<Weak<ConnState>>>,
    keepalive: Duration,
    stopping: Cell<bool>,
}

impl Watchdog {
    pub fn new(keepalive: Duration) -> Watchdog {
        Watchdog {
            conns: RefCell::new(Vec::new()),
            keepalive,
            stopping: Cell::new(false),
        }
    }

    /// Registers a new connection (told to close at once if the worker is
    /// stopping).
    pub fn watch(&self) -> Rc<ConnState> {
        let s = Rc::new(ConnState {
            in_flight: Cell::new(0),
            served: Cell::new(0),
            close: Cell::new(self.stopping.get()),
            waker: RefCell::new(None),
            seen: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
        });
        self.conns.borrow_mut().push(Rc::downgrade(&s));
        s
    }

    /// The worker stops: every connection, and every one registered from
    /// now on, shuts down gracefully (finishing a request in flight).
    pub fn stop_all(&self) {
        self.stopping.set(true);
        let conns: Vec<Rc<ConnState>> = self
            .conns
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for c in conns {
            c.shut();
        }
    }

    /// One look at `now`: drops closed connections, shuts those idle for
    /// the keep-alive timeout (calling `on_idle` for each), and fires the
    /// header timers due.
    pub fn sweep(&self, now: Instant, on_idle: impl Fn()) {
        let mut idle = Vec::new();
        self.conns.borrow_mut().retain(|w| {
            let Some(c) = w.upgrade() else {
                return false;
            };
            if c.close.get() {
                return true;
            }
            let served = c.served.get();
            if c.in_flight.get() > 0 || served != c.seen.get() {
                c.seen.set(served);
                c.idle_since.set(now);
            } else if now.saturating_duration_since(c.idle_since.get()) >= self.keepalive {
                idle.push(c);
            }
            true
        });
        for c in idle {
            on_idle();
            c.shut();
        }
        fire_timers(now);
    }

    /// The watchdog task: sweeps every [`TICK`] until the worker is done
    /// with it (the task is dropped with the runtime).
    pub async fn run(self: Rc<Self>, on_idle: impl Fn()) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep(Instant::now(), &on_idle);
        }
    }
}

/// A header timer waiting in this thread's table.
struct Entry {
    deadline: Instant,
    waker: Option<Waker>,
    /// Which timer holds the entry (a free entry: `None`).
    owner: Option<u64>,
}

#[derive(Default)]
struct Timers {
    entries: Vec<Entry>,
    free: Vec<usize>,
    next: u64,
}

thread_local! {
    static TIMERS: RefCell<Timers> = RefCell::new(Timers::default());
}

/// Wakes (and frees) every timer whose deadline is at or before `now`.
fn fire_timers(now: Instant) {
    let due: Vec<Waker> = TIMERS.with_borrow_mut(|t| {
        let mut due = Vec::new();
        let Timers { entries, free, .. } = t;
        for (i, e) in entries.iter_mut().enumerate() {
            if e.owner.is_some() && e.deadline <= now {
                e.owner = None;
                free.push(i);
                due.extend(e.waker.take());
            }
        }
        due
    });
    for w in due {
        w.wake();
    }
}

/// hyper's timer for the header read timeout: a [`TickSleep`] that the
/// watchdog's tick fires.
#[derive(Clone, Copy, Debug, Default)]
pub struct TickTimer;

impl hyper::rt::Timer for TickTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TickSleep {
            deadline,
            key: None,
        })
    }
}

/// A sleep until `deadline`: registered in the thread's table when first
/// polled, done once the watchdog fired it (its entry no longer ours).
/// Polled on another thread (never, here), it is done at once.
struct TickSleep {
    deadline: Instant,
    /// Our entry and our owner mark in it, once registered.
    key: Option<(usize, u64)>,
}

impl Future for TickSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let key = self.key;
        let (pending, key) = TIMERS.with_borrow_mut(|t| match key {
            Some((i, me)) => match t.entries.get_mut(i) {
                Some(e) if e.owner == Some(me) => {
                    match e.waker.as_ref() {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => e.waker = Some(cx.waker().clone()),
                    }
                    (true, key)
                }
                _ => (false, key),
            },
            None => {
                let me = t.next;
                t.next += 1;
                let e = Entry {
                    deadline,
                    waker: Some(cx.waker().clone()),
                    owner: Some(me),
                };
                let i = match t.free.pop() {
                    Some(i) => {
                        t.entries[i] = e;
                        i
                    }
                    None => {
                        t.entries.push(e);
                        t.entries.len() - 1
                    }
                };
                (true, Some((i, me)))
            }
        });
        self.key = key;
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

impl hyper::rt::Sleep for TickSleep {}

impl Drop for TickSleep {
    fn drop(&mut self) {
        let Some((i, me)) = self.key else {
            return;
        };
        // (try_with: the thread's table may be gone at thread exit.)
        let _ = TIMERS.try_with(|t| {
            let mut t = t.borrow_mut();
            if let Some(e) = t.entries.get_mut(i) {
                if e.owner == Some(me) {
                    e.owner = None;
                    e.waker = None;
                    t.free.push(i);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    fn poll(s: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        s.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn header_timers_fire_on_the_sweep_after_their_deadline() {
        let t0 = Instant::now();
        let mut a = TickTimer.sleep_until(t0 + Duration::from_secs(1));
        let mut b = TickTimer.sleep_until(t0 + Duration::from_secs(3));
        assert!(!poll(&mut a) && !poll(&mut b));
        fire_timers(t0 + Duration::from_millis(999));
        assert!(!poll(&mut a) && !poll(&mut b));
        fire_timers(t0 + Duration::from_secs(1));
        assert!(poll(&mut a) && !poll(&mut b));
        // A dropped timer frees its entry for the next one, which is not
        // fired by the old one's deadline.
        drop(b);
        let mut c = TickTimer.sleep_until(t0 + Duration::from_secs(5));
        assert!(!poll(&mut c));
        fire_timers(t0 + Duration::from_secs(4));
        assert!(!poll(&mut c));
        fire_timers(t0 + Duration::from_secs(5));
        assert!(poll(&mut c));
        TIMERS.with_borrow(|t| assert!(t.entries.iter().all(|e| e.owner.is_none())));
    }

    #[test]
    fn idle_connections_close_after_the_keepalive_and_all_on_stop() {
        let dog = Watchdog::new(Duration::from_secs(2));
        let t0 = Instant::now();
        let (idle, busy) = (dog.watch(), dog.watch());
        let cx = Context::from_waker(Waker::noop());
        let closed = Cell::new(0);
        let count = || closed.set(closed.get() + 1);
        for s in 1..=4 {
            // `busy` answers a request each second.
            busy.served.set(busy.served.get() + 1);
            dog.sweep(t0 + Duration::from_secs(s), count);
        }
        assert!(idle.must_close(&cx) && !busy.must_close(&cx));
        assert_eq!(closed.get(), 1);
        // A request in flight for long is not idle.
        busy.in_flight.set(1);
        dog.sweep(t0 + Duration::from_secs(9), count);
        assert!(!busy.must_close(&cx));
        dog.stop_all();
        assert!(busy.must_close(&cx) && dog.watch().must_close(&cx));
        assert_eq!(closed.get(), 1);
    }
}
