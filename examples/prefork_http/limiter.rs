//! nginx's `limit_req` in a zone: a leaky bucket per key.
//!
//! The state is a hash table with an LRU list, made of chunks from the
//! zone's slab allocator and guarded by the zone lock (the pool lock doubles
//! as the table lock, as in nginx). Links are offsets from the zone's start,
//! never pointers, so every worker reads the same table.
//!
//! Per key, `excess` (thousandths of a request) leaks at the rate; a request
//! adds 1000. If the result exceeds the burst the request is refused (429)
//! and the state is left alone, as nginx does (with `nodelay`: allowed
//! requests are answered at once). When the zone is full, the least
//! recently used keys are evicted and the allocation retried.
//!
//! Inside the critical section: no allocation, no I/O, no panic: only
//! reads and writes of plain words and the `_locked` allocator calls. Loops
//! over the list and the chains are bounded by the node count, so a table
//! left half-updated by a worker killed in the middle cannot hang anyone.
//! The master's death hook calls [`repair`]: a table whose list and chains
//! disagree is emptied (its nodes leak until the zone is made anew); an
//! offset found outside the zone during a request does the same.

use std::ptr::NonNull;

use shmzone::{Zone, ZoneInit};

pub const MAX_KEY: usize = 64;
const MAGIC: u32 = 0x4c52_5131; // "LRQ1"
const NONE: u64 = 0;

/// The table's root block (at the zone's root offset).
#[repr(C)]
#[derive(Clone, Copy)]
struct Table {
    magic: u32,
    nbuckets: u32,
    /// Offset of `[u64; nbuckets]`, the chain heads.
    buckets: u64,
    /// Most recently used node, least recently used node.
    head: u64,
    tail: u64,
    count: u64,
    evicted: u64,
    expired: u64,
    rebuilt: u64,
}
static_assertions::assert_eq_size!(Table, [u8; 64]);

/// One key's state.
#[repr(C)]
#[derive(Clone, Copy)]
struct Node {
    /// Next node in the hash chain.
    chain: u64,
    /// LRU neighbours (towards head, towards tail).
    prev: u64,
    next: u64,
    hash: u64,
    /// Milliseconds since the server's epoch at the last allowed request.
    last: u64,
    /// Thousandths of a request above the rate.
    excess: u64,
    key_len: u32,
    _pad: u32,
    key: [u8; MAX_KEY],
}
static_assertions::assert_eq_size!(Node, [u8; 120]);

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the excess after it (thousandths).
    Allowed(u64),
    /// Refused: above the burst.
    Refused(u64),
    /// No room even after evicting everything (the zone is far too small).
    NoMemory,
}

/// Counters for /stats.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TableStats {
    pub keys: u64,
    pub evicted: u64,
    pub expired: u64,
    pub rebuilt: u64,
    /// The list and the chains agree (walked under the lock).
    pub consistent: bool,
}

/// The zone's init callback: a fresh table, or keep the old one on reload.
pub fn init(zone: &Zone<'_>, how: ZoneInit<'_>) -> Result<(), shmzone::Error> {
    // LRU eviction makes "no memory" normal here: do not log it.
    zone.pool().set_log_nomem(false);
    if matches!(how, ZoneInit::Reused) && table(zone).is_some() {
        return Ok(());
    }
    // Fresh, resized or recreated: start empty (rate state is short-lived).
    let nbuckets = (zone.size() / 256).next_power_of_two().clamp(64, 1 << 20) as u32;
    let guard = zone.lock();
    let buckets = guard
        .calloc_locked(nbuckets as usize * 8)
        .and_then(|p| zone.offset_of(p.as_ptr()))
        .ok_or(shmzone::Error::ZoneTooSmall {
            name: zone.name().to_string(),
            size: zone.size(),
            min: nbuckets as usize * 8 * 2,
        })?;
    let t = Table {
        magic: MAGIC,
        nbuckets,
        buckets: buckets as u64,
        head: NONE,
        tail: NONE,
        count: 0,
        evicted: 0,
        expired: 0,
        rebuilt: 0,
    };
    let p =
        guard
            .alloc_locked(std::mem::size_of::<Table>())
            .ok_or(shmzone::Error::ZoneTooSmall {
                name: zone.name().to_string(),
                size: zone.size(),
                min: nbuckets as usize * 8 * 2,
            })?;
    // SAFETY: a fresh chunk of 64 bytes (class-aligned), ours alone.
    unsafe { p.cast::<Table>().as_ptr().write(t) };
    zone.set_root(zone.offset_of(p.as_ptr()).unwrap_or(0));
    Ok(())
}

fn table(zone: &Zone<'_>) -> Option<NonNull<Table>> {
    let t = zone.value_at::<Table>(zone.root())?;
    // SAFETY: in bounds and aligned (value_at checked); a plain read of the
    // magic word.
    (unsafe { t.as_ptr().read().magic } == MAGIC).then_some(t)
}

/// FNV-1a, computed before taking the lock.
pub fn hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Table access under the zone lock. Every offset is checked against the
/// zone before it is dereferenced.
struct Locked<'z, 'g> {
    zone: &'z Zone<'z>,
    guard: &'g shmzone::slab::PoolGuard<'z>,
    t: NonNull<Table>,
}

// The accessors hand out `&mut` into shared memory from `&self`: the zone
// lock makes this process the only one touching the table, and each
// reference is used for one statement or one short block, never two to the
// same node or word at once (read each method: none keeps one across a call
// that can reach the same memory).
#[allow(clippy::mut_from_ref)]
impl Locked<'_, '_> {
    fn t(&self) -> &mut Table {
        // SAFETY: `t` was checked in bounds and aligned; the zone lock is
        // held, so no other process touches the table meanwhile.
        unsafe { &mut *self.t.as_ptr() }
    }
    fn node(&self, off: u64) -> Option<&mut Node> {
        let p = self.zone.value_at::<Node>(off as usize)?;
        // SAFETY: in bounds and aligned; the zone lock is held.
        Some(unsafe { &mut *p.as_ptr() })
    }
    fn bucket(&self, hash: u64) -> Option<&mut u64> {
        let t = self.t();
        let i = hash & (u64::from(t.nbuckets) - 1);
        let p = self.zone.value_at::<u64>((t.buckets + i * 8) as usize)?;
        // SAFETY: in bounds and aligned; the zone lock is held.
        Some(unsafe { &mut *p.as_ptr() })
    }

    /// Finds the node for `key`; bounded by the node count.
    fn find(&self, hash: u64, key: &[u8]) -> Option<u64> {
        let mut off = *self.bucket(hash)?;
        let mut steps = self.t().count + 1;
        while off != NONE && steps > 0 {
            let n = self.node(off)?;
            if n.hash == hash && n.key_len as usize == key.len() && n.key[..key.len()] == *key {
                return Some(off);
            }
            off = n.chain;
            steps -= 1;
        }
        None
    }

    fn lru_unlink(&self, off: u64) -> Option<()> {
        let (prev, next) = {
            let n = self.node(off)?;
            (n.prev, n.next)
        };
        match prev {
            NONE => self.t().head = next,
            p => self.node(p)?.next = next,
        }
        match next {
            NONE => self.t().tail = prev,
            n => self.node(n)?.prev = prev,
        }
        Some(())
    }

    fn lru_push_front(&self, off: u64) -> Option<()> {
        let head = self.t().head;
        {
            let n = self.node(off)?;
            n.prev = NONE;
            n.next = head;
        }
        match head {
            NONE => self.t().tail = off,
            h => self.node(h)?.prev = off,
        }
        self.t().head = off;
        Some(())
    }

    /// Removes the node from its chain and the LRU list and frees it.
    fn remove(&self, off: u64) -> Option<()> {
        let (hash, chain) = {
            let n = self.node(off)?;
            (n.hash, n.chain)
        };
        let bucket = self.bucket(hash)?;
        if *bucket == off {
            *bucket = chain;
        } else {
            let mut cur = *bucket;
            let mut steps = self.t().count + 1;
            loop {
                if cur == NONE || steps == 0 {
                    return None;
                }
                let n = self.node(cur)?;
                if n.chain == off {
                    n.chain = chain;
                    break;
                }
                cur = n.chain;
                steps -= 1;
            }
        }
        self.lru_unlink(off)?;
        let p = self.zone.ptr_at(off as usize)?;
        // SAFETY: `off` is a node this table allocated from this zone and
        // has just unlinked everywhere; the lock is held.
        unsafe { self.guard.free_locked(p.as_ptr()) }.ok()?;
        self.t().count -= 1;
        Some(())
    }

    /// nginx's expire: drops up to two idle, fully drained keys from the
    /// LRU end; with `force`, drops the LRU key unconditionally first.
    fn expire(&self, now: u64, rate: u64, force: bool) -> Option<()> {
        for i in 0..3 {
            let tail = self.t().tail;
            if tail == NONE {
                return Some(());
            }
            if !(force && i == 0) {
                let n = self.node(tail)?;
                let ms = now.saturating_sub(n.last);
                if ms < 60_000 || n.excess > rate.saturating_mul(ms) / 1000 {
                    return Some(());
                }
                self.t().expired += 1;
            } else {
                self.t().evicted += 1;
            }
            self.remove(tail)?;
        }
        Some(())
    }

    /// Whether the LRU list and the hash chains agree with `count`: every
    /// link inside the zone, the list doubly linked, both walks of length
    /// `count`. Bounded by `count + 1` steps per walk.
    fn consistent(&self) -> Option<bool> {
        let t = *self.t();
        let mut n = 0u64;
        let (mut prev, mut off) = (NONE, t.head);
        while off != NONE {
            if n > t.count {
                return Some(false);
            }
            let node = self.node(off)?;
            if node.prev != prev {
                return Some(false);
            }
            n += 1;
            prev = off;
            off = node.next;
        }
        if n != t.count || prev != t.tail {
            return Some(false);
        }
        let mut chained = 0u64;
        for i in 0..u64::from(t.nbuckets) {
            let mut off = *self
                .zone
                .value_at::<u64>((t.buckets + i * 8) as usize)
                .map(|p| {
                    // SAFETY: in bounds and aligned; the lock is held.
                    unsafe { &*p.as_ptr() }
                })?;
            while off != NONE {
                chained += 1;
                if chained > t.count {
                    return Some(false);
                }
                off = self.node(off)?.chain;
            }
        }
        Some(chained == t.count)
    }

    /// Empties the table (after a worker died mid-update): chains and list
    /// are forgotten. Nodes that were linked leak until the zone is made
    /// anew (no allocation here: the walk may be broken).
    fn rebuild(&self) -> Option<()> {
        let t = self.t();
        for i in 0..u64::from(t.nbuckets) {
            let p = self.zone.value_at::<u64>((t.buckets + i * 8) as usize)?;
            // SAFETY: in bounds and aligned; the lock is held.
            unsafe { p.as_ptr().write(NONE) };
        }
        t.head = NONE;
        t.tail = NONE;
        t.count = 0;
        t.rebuilt += 1;
        Some(())
    }
}

/// One request for `key` at `now` (ms since the server's epoch), rate in
/// thousandths of a request per second, burst in requests.
pub fn account(zone: &Zone<'_>, key: &[u8], now: u64, rate: u64, burst: u64) -> Verdict {
    debug_assert!(!key.is_empty() && key.len() <= MAX_KEY);
    let Some(t) = table(zone) else {
        return Verdict::NoMemory;
    };
    let h = hash(key);
    let mut fresh = Node {
        chain: NONE,
        prev: NONE,
        next: NONE,
        hash: h,
        last: now,
        excess: 0,
        key_len: key.len() as u32,
        _pad: 0,
        key: [0; MAX_KEY],
    };
    fresh.key[..key.len()].copy_from_slice(key);
    let burst = burst.saturating_mul(1000);

    let guard = zone.lock();
    let l = Locked {
        zone,
        guard: &guard,
        t,
    };
    // Taken over from a dead holder (self-healing, before the master's
    // hook ran): check the table first.
    if guard.recovered_from().is_some() && l.consistent() != Some(true) {
        l.rebuild();
    }
    let verdict = account_locked(&l, &fresh, now, rate, burst);
    match verdict {
        Some(v) => v,
        None => {
            // An offset pointed outside the zone: the table is corrupt.
            l.rebuild();
            Verdict::NoMemory
        }
    }
}

fn account_locked(
    l: &Locked<'_, '_>,
    fresh: &Node,
    now: u64,
    rate: u64,
    burst: u64,
) -> Option<Verdict> {
    let key = &fresh.key[..fresh.key_len as usize];
    l.expire(now, rate, false)?;
    if let Some(off) = l.find(fresh.hash, key) {
        l.lru_unlink(off)?;
        l.lru_push_front(off)?;
        let n = l.node(off)?;
        let ms = now.saturating_sub(n.last);
        let leaked = rate.saturating_mul(ms) / 1000;
        let excess = n.excess.saturating_sub(leaked) + 1000;
        if excess > burst {
            return Some(Verdict::Refused(excess));
        }
        n.excess = excess;
        n.last = now;
        return Some(Verdict::Allowed(excess));
    }
    // A new key: allocate, evicting LRU keys while the zone is full.
    let size = std::mem::size_of::<Node>();
    let p = loop {
        if let Some(p) = l.guard.alloc_locked(size) {
            break p;
        }
        if l.t().tail == NONE {
            return Some(Verdict::NoMemory);
        }
        l.expire(now, rate, true)?;
    };
    let off = l.zone.offset_of(p.as_ptr())? as u64;
    // SAFETY: a fresh chunk of size_of::<Node>() bytes, aligned to its
    // 128-byte class; ours under the lock.
    unsafe { p.cast::<Node>().as_ptr().write(*fresh) };
    let bucket = l.bucket(fresh.hash)?;
    l.node(off)?.chain = *bucket;
    *bucket = off;
    l.lru_push_front(off)?;
    l.t().count += 1;
    Some(Verdict::Allowed(0))
}

/// After a worker died holding the zone lock (called by the master's death
/// hook): keeps the table if it is consistent, else empties it. Returns
/// whether it had to.
pub fn repair(zone: &Zone<'_>) -> bool {
    let Some(t) = table(zone) else {
        return false;
    };
    let guard = zone.lock();
    let l = Locked {
        zone,
        guard: &guard,
        t,
    };
    if l.consistent() == Some(true) {
        return false;
    }
    l.rebuild();
    true
}

/// The table's counters (read under the lock).
pub fn stats(zone: &Zone<'_>) -> Option<TableStats> {
    let tp = table(zone)?;
    let guard = zone.lock();
    let l = Locked {
        zone,
        guard: &guard,
        t: tp,
    };
    let consistent = l.consistent() == Some(true);
    // SAFETY: checked by `table`; read under the lock.
    let t = unsafe { tp.as_ptr().read() };
    Some(TableStats {
        keys: t.count,
        evicted: t.evicted,
        expired: t.expired,
        rebuilt: t.rebuilt,
        consistent,
    })
}
