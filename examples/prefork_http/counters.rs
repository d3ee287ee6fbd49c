//! The counters zone: the request counters (`/hit`'s counter is in the
//! dictionary, `kv`).
//!
//! The request counters are per worker slot (a cache line pair per
//! slot), so counting a request never contends with another worker; a
//! scrape sums the slots. All of it is atomics in shared memory: nothing
//! takes the zone lock after init, so a worker killed at any point leaves
//! nothing half-done.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use shmzone::{Zone, ZoneInit};

const MAGIC: u64 = 0x5348_4d5a_4354_5232; // "SHMZCTR2"

/// Worker slots; worker `i` counts in slot `i % SLOTS`.
pub const SLOTS: usize = 32;

/// What a request is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Hit = 0,
    Limit = 1,
    Kv = 2,
    Stats = 3,
    Metrics = 4,
    Index = 5,
    Other = 6,
}

impl Route {
    pub const ALL: [Route; 7] = [
        Route::Hit,
        Route::Limit,
        Route::Kv,
        Route::Stats,
        Route::Metrics,
        Route::Index,
        Route::Other,
    ];

    /// The label used in /metrics and /stats.
    pub fn name(self) -> &'static str {
        match self {
            Route::Hit => "hit",
            Route::Limit => "limit",
            Route::Kv => "kv",
            Route::Stats => "stats",
            Route::Metrics => "metrics",
            Route::Index => "index",
            Route::Other => "other",
        }
    }
}

/// Connection events counted per slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Connections accepted.
    Accepted = 0,
    /// Closed by the idle keep-alive timeout.
    IdleClosed = 1,
    /// Closed because a request head did not arrive in time.
    HeaderTimeout = 2,
    /// Closed because a request body did not arrive in time.
    BodyTimeout = 3,
    /// Closed on a malformed request (hyper answered 400/431 or closed).
    BadRequest = 4,
    /// Other connection errors (reset, broken pipe).
    IoError = 5,
}

impl Event {
    pub const ALL: [Event; 6] = [
        Event::Accepted,
        Event::IdleClosed,
        Event::HeaderTimeout,
        Event::BodyTimeout,
        Event::BadRequest,
        Event::IoError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Accepted => "accepted",
            Event::IdleClosed => "idle_closed",
            Event::HeaderTimeout => "header_timeout",
            Event::BodyTimeout => "body_timeout",
            Event::BadRequest => "bad_request",
            Event::IoError => "io_error",
        }
    }
}

/// One worker slot: two cache lines.
#[repr(C, align(64))]
struct Slot {
    /// Requests per [`Route`].
    routes: [AtomicU64; 8],
    /// Responses per status class: index 1..=5 for 1xx..5xx.
    status: [AtomicU64; 6],
    /// The connections open in this slot's worker: its pid in the high
    /// 32 bits, the count in the low 32 (see [`Counters::claim`]).
    open: AtomicU64,
    _pad: [u64; 1],
    /// Per [`Event`].
    events: [AtomicU64; 8],
    _pad2: [u64; 8],
}
static_assertions::assert_eq_size!(Slot, [u8; 256]);

/// The zone's root block.
#[repr(C, align(64))]
struct Root {
    magic: AtomicU64,
    _pad: [u64; 7],
    /// Was `/hit`'s counter (now in the dictionary); kept so the layout
    /// and a reused zone stay as they were.
    _was_hits: u64,
    _pad2: [u64; 7],
    slots: [Slot; SLOTS],
}
static_assertions::assert_eq_size!(Root, [u8; 128 + 256 * SLOTS]);

/// A handle on the counters in this process.
#[derive(Clone, Copy)]
pub struct Counters<'a> {
    root: &'a Root,
}

/// Sums over every slot.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub routes: [u64; Route::ALL.len()],
    /// Index 1..=5: responses with status 1xx..5xx.
    pub status: [u64; 6],
    pub events: [u64; Event::ALL.len()],
}

impl Totals {
    pub fn requests(&self) -> u64 {
        self.routes.iter().sum()
    }
}

fn root(zone: &Zone<'_>) -> Option<NonNull<Root>> {
    let p = zone.value_at::<Root>(zone.root())?;
    // SAFETY: in bounds and aligned (value_at checked); an atomic load.
    let magic = unsafe { &(*p.as_ptr()).magic }.load(Ordering::Acquire);
    (magic == MAGIC).then_some(p)
}

impl<'a> Counters<'a> {
    /// The counters of a zone made by [`init`].
    pub fn of(zone: &Zone<'a>) -> Option<Counters<'a>> {
        let p = root(zone)?;
        // SAFETY: checked in bounds, aligned and initialised (magic); only
        // atomics are touched through it; the zone's memory outlives the
        // workers (a zone dropped by a reload is retired, not unmapped,
        // until the old workers are gone).
        let root = unsafe { &*p.as_ptr() };
        Some(Counters { root })
    }

    /// A request on `route` answered with `status`, in `slot`.
    pub fn request(&self, slot: usize, route: Route, status: u16) {
        let s = &self.root.slots[slot % SLOTS];
        s.routes[route as usize].fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status / 100).min(5);
        s.status[class].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection event in `slot`.
    pub fn event(&self, slot: usize, e: Event) {
        self.root.slots[slot % SLOTS].events[e as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Makes `slot`'s open-connection gauge this process's, at 0: a
    /// worker calls it once at start. The worker that had the slot before
    /// (killed, or an old one finishing after a reload) no longer changes
    /// it: its connections are gone or no longer counted.
    pub fn claim(&self, slot: usize, pid: u32) {
        self.root.slots[slot % SLOTS]
            .open
            .store(u64::from(pid) << 32, Ordering::Relaxed);
    }

    /// One connection more (`up`) or fewer in `slot`'s gauge, if process
    /// `pid` still owns it.
    pub fn open_add(&self, slot: usize, pid: u32, up: bool) {
        let g = &self.root.slots[slot % SLOTS].open;
        let mut cur = g.load(Ordering::Relaxed);
        // Bounded: each failed exchange means another process changed the
        // word, and only the owner (us) and a claim do; a claim ends it.
        for _ in 0..64 {
            if (cur >> 32) as u32 != pid {
                return;
            }
            let n = cur as u32;
            let n = if up {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
            match g.compare_exchange_weak(
                cur,
                (cur & !0xffff_ffff) | u64::from(n),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// The open connections of slots `0..n` (a slot nobody claimed: 0).
    pub fn open(&self, n: usize) -> impl Iterator<Item = u32> + '_ {
        self.root.slots[..n.min(SLOTS)]
            .iter()
            .map(|s| s.open.load(Ordering::Relaxed) as u32)
    }

    /// Sums every slot.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in &self.root.slots {
            for (o, v) in t.routes.iter_mut().zip(&s.routes) {
                *o += v.load(Ordering::Relaxed);
            }
            for (o, v) in t.status.iter_mut().zip(&s.status) {
                *o += v.load(Ordering::Relaxed);
            }
            for (o, v) in t.events.iter_mut().zip(&s.events) {
                *o += v.load(Ordering::Relaxed);
            }
        }
        t
    }
}

/// The zone's init callback: a zeroed root block, or the old one kept on a
/// plain reload; on resize or recreate the figures are carried over.
pub fn init(zone: &Zone<'_>, how: ZoneInit<'_>) -> Result<(), shmzone::Error> {
    if matches!(how, ZoneInit::Reused) && root(zone).is_some() {
        return Ok(());
    }
    let too_small = || shmzone::Error::ZoneTooSmall {
        name: zone.name().to_string(),
        size: zone.size(),
        min: std::mem::size_of::<Root>() + 4 * shmzone::SLAB_PAGE,
    };
    let p = zone
        .lock()
        .calloc_locked(std::mem::size_of::<Root>())
        .ok_or_else(too_small)?;
    let off = zone.offset_of(p.as_ptr()).ok_or_else(too_small)?;
    // The block is a page run: page-aligned, so Root's 64-byte alignment
    // holds (value_at checks it again).
    let new = zone.value_at::<Root>(off).ok_or_else(too_small)?;
    // SAFETY: a fresh zeroed block of size_of::<Root>() bytes, aligned
    // (checked by value_at), ours alone: no worker exists during init.
    let new = unsafe { &*new.as_ptr() };
    if let ZoneInit::Resized(old) | ZoneInit::Recreated(old) = how {
        if let Some(old) = Counters::of(&old) {
            copy(old.root, new);
        }
    }
    new.magic.store(MAGIC, Ordering::Release);
    zone.set_root(off);
    Ok(())
}

fn copy(from: &Root, to: &Root) {
    for (f, t) in from.slots.iter().zip(&to.slots) {
        let pairs = f
            .routes
            .iter()
            .zip(&t.routes)
            .chain(f.status.iter().zip(&t.status))
            .chain(f.events.iter().zip(&t.events));
        for (a, b) in pairs {
            b.store(a.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}
