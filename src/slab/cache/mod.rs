//! Per-thread chunk caches ("magazines") in shared memory: most
//! allocations and frees touch only the calling thread's own cache line
//! and take no lock (issue 16).
//!
//! ```text
//! CacheDir (in the pool header area, after the journal records)
//!   epoch     even: caching on, odd: off; +2 asks every cache to flush
//!   slots[64] {pid, tid, page, npages}: who owns which slot body
//! slot body (a page run allocated from the pool by its owner)
//!   SlotHead  token (proves the body is the caller's), key (the epoch
//!             it last synced with, XOR the token)
//!   Mag[c]    word = generation << 32 | count, cap, entries[32] (u32:
//!             data offset / 8 of a cached chunk of class c)
//! ```
//!
//! A cached chunk stays *allocated* in the slab (its bit is set); only its
//! owner thread pops and pushes its magazines, without the lock:
//!
//! - **pop**: read the top entry, check it (inside the data pages, on a
//!   page of class c), then store the count minus one, then mark the entry
//!   [`EMPTY`]. The count store is the commit point: a death before it
//!   changes nothing, after it the chunk belongs to the dead process (as
//!   any block it held).
//! - **push** (free): check the pointer without the lock (a chunk of a
//!   class page whose bit is set, not already in this magazine: entries
//!   above the count are all `EMPTY`, so one vector compare of all 32
//!   tells), write the entry above the top, then store the count plus one.
//!
//! Everything else runs under the pool lock, in journaled sections, so a
//! death half-way is rolled back by the next holder: refilling an empty
//! magazine (half its capacity, from the slab), flushing a full one (down
//! to half), claiming a slot, and returning a dead owner's chunks
//! ([`Pool::reclaim_caches`], done by `prefork::recover_zones` for every
//! dead worker). Before an allocation fails for lack of memory, the caller
//! flushes its own cache, returns dead owners' caches and asks every live
//! cache to flush on its next call (the epoch).
//!
//! Bounds: a magazine holds at most [`MAG`] chunks and at most
//! `min(64 KiB, pool size / 1024)` bytes (so one thread caches at most
//! 1/1024 of the pool per class, and in all at most 1.8 MiB, reached in
//! pools of 64 MiB or more: 321 KiB in 8 MiB, 28 KiB in 1 MiB); a class
//! that would hold fewer
//! than 2 chunks is not cached; pools under [`CACHE_MIN_PAGES`] pages (or
//! over 32 GiB) have no caches; at most [`NSLOTS`] threads have a slot,
//! the others use the lock for every call.
//!
//! What caching gives up: a chunk freed twice by two *different* threads
//! while it sits in a cache is not detected at the second free (nginx
//! detects it, as does shmzone for the same thread, or with caching off);
//! it is detected when the cache is flushed, as "chunk already free".
//! Turn caching off with [`Pool::set_cache`] to hunt such a bug.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use static_assertions::{assert_eq_size, const_assert, const_assert_eq};

use super::error::FreeError;
use super::layout::{
    chunk_at as slab_chunk_at, class_size, Desc, Link, FIRST_DESC_BITMAP_CLASS, INTERNAL,
    MAX_SLAB_PAGES, NCLASSES, PAGE_SHIFT, SLAB_PAGE,
};
use super::page::{ALLOC_BUDGET, FREE_BUDGET};
use super::Pool;
use crate::killpoint;
use crate::os::process::{
    current_pid, current_tid, fork_handler_ready, on_fork_child, pid_alive, thread_alive,
};

mod slots;

/// Slots (threads with a cache) per pool.
pub const NSLOTS: usize = 64;
/// The most chunks one magazine holds.
pub const MAG: usize = 32;
/// Pools with fewer pages have no caches (1 MiB of pages).
pub const CACHE_MIN_PAGES: usize = 256;
/// The most bytes one magazine holds.
const MAG_BYTES_MAX: usize = 64 << 10;
/// Entries are data offsets / 8 in a u32: data pages up to 32 GiB (less
/// one page, so that no chunk's entry is [`EMPTY`]).
const MAX_CACHED_DATA: usize = ((u32::MAX as usize + 1) << 3) - SLAB_PAGE;
/// An entry above a magazine's count: every one of them holds this, so a
/// push finds a chunk already cached by comparing all entries at once.
const EMPTY: u32 = u32::MAX;

/// One slot of the directory; written under the pool lock (journaled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct DirSlot {
    /// Owner process, 0 = free slot.
    pub pid: u32,
    /// Owner thread (kernel tid; 0 where threads have no id).
    pub tid: u32,
    /// First page of the slot body's run.
    pub page: u32,
    /// Pages in that run.
    pub npages: u32,
}

impl DirSlot {
    /// A free slot.
    pub const FREE: DirSlot = DirSlot {
        pid: 0,
        tid: 0,
        page: 0,
        npages: 0,
    };
}

/// The caches' directory, after the journal records.
#[repr(C, align(64))]
pub(crate) struct CacheDir {
    /// Even: caching on; odd: off. Every change adds 2 (so a changed epoch
    /// tells each cache to flush everything on its next call).
    pub epoch: AtomicU64,
    /// A random value fixed at init, mixed into slot tokens.
    pub nonce: AtomicU64,
    /// Slots claimed and reclaimed from dead owners so far.
    pub claims: AtomicU64,
    pub reclaims: AtomicU64,
    /// Flush requests (memory ran short) so far.
    pub pressure: AtomicU64,
    pub _pad: [u64; 3],
    pub slots: [DirSlot; NSLOTS],
}

assert_eq_size!(CacheDir, [u8; 64 + NSLOTS * 16]);

/// The head of a slot body, on its own line.
#[repr(C, align(64))]
pub(crate) struct SlotHead {
    /// The owner's token (see [`token`]); 0 once released.
    pub token: AtomicU64,
    /// The directory epoch this cache last synced with, XOR `token`: one
    /// compare (`key == epoch ^ the token the thread holds`) tells the
    /// fast path both that the body is still the caller's and that no
    /// flush was asked for since.
    pub key: AtomicU64,
    pub _pad: [u64; 6],
}

/// One generation in a magazine's word: a pop stores `word + GEN_ONE - 1`
/// and a push `word + GEN_ONE + 1`, one add each (the count is at least 1
/// before a pop and below `MAG` before a push, so it never borrows from
/// or carries into the generation, which wraps on its own).
const GEN_ONE: u64 = 1 << 32;

/// One class's magazine.
#[repr(C, align(32))]
pub(crate) struct Mag {
    /// generation << 32 | count.
    pub word: AtomicU64,
    /// Requests served by this cache, and the bytes they asked for.
    pub reqs: AtomicU64,
    pub bytes: AtomicU64,
    /// The most chunks this magazine holds (0: class not cached).
    pub cap: AtomicU32,
    pub _pad: u32,
    pub e: [AtomicU32; MAG],
}

assert_eq_size!(Mag, [u8; 160]);

impl Mag {
    /// Counts one request of `size` bytes this cache served (statistics
    /// words only its owner writes; whatever a dead owner left, added
    /// without overflow checks).
    #[inline(always)]
    pub(crate) fn count(&self, size: usize) {
        self.reqs.store(
            self.reqs.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        self.bytes.store(
            self.bytes.load(Ordering::Relaxed).wrapping_add(size as u64),
            Ordering::Relaxed,
        );
    }
}
assert_eq_size!(SlotHead, [u8; 64]);

impl SlotHead {
    /// Marks the cache as in step with directory epoch `epoch` (its owner
    /// or a lock holder acting for it): `key` becomes `epoch ^ token`.
    fn follow(&self, epoch: u64) {
        let token = self.token.load(Ordering::Relaxed);
        self.key.store(epoch ^ token, Ordering::Relaxed);
    }
}

/// Bytes of a slot body.
const BODY: usize = std::mem::size_of::<SlotHead>() + NMAGS * std::mem::size_of::<Mag>();

/// Page runs of 1..=RUN_MAGS pages are cached too, in magazines
/// `NCLASSES..NMAGS`.
pub const RUN_MAGS: usize = 4;
/// Magazines per slot: one per class, one per cached run length.
pub(crate) const NMAGS: usize = NCLASSES + RUN_MAGS;

/// The bytes one entry of magazine `m` stands for.
#[inline]
pub(crate) const fn mag_size(m: usize) -> usize {
    if m < NCLASSES {
        class_size(m)
    } else {
        (m - NCLASSES + 1) * SLAB_PAGE
    }
}

/// The magazine serving an allocation of `size` bytes, if any.
#[inline(always)]
pub(crate) const fn mag_of(size: usize) -> Option<usize> {
    if size <= super::layout::MAX_CHUNK {
        Some(super::layout::class_of(size))
    } else if size <= RUN_MAGS * SLAB_PAGE {
        Some(NCLASSES + super::layout::pages_for(size) - 1)
    } else {
        None
    }
}
/// Pages of a slot body.
pub(crate) const BODY_PAGES: usize = BODY.div_ceil(SLAB_PAGE);
const_assert!(BODY_PAGES >= 1);
const_assert_eq!(std::mem::size_of::<SlotHead>() % 32, 0);

/// The magazine capacity of class `c` in a pool of `len` bytes (0 for
/// the runs no request takes: those the size classes cover).
pub(crate) fn mag_cap(c: usize, len: usize) -> u32 {
    if c >= NCLASSES && mag_size(c) <= super::layout::MAX_CHUNK {
        return 0;
    }
    let bytes = (len / 1024).min(MAG_BYTES_MAX);
    let n = (bytes / mag_size(c)).min(MAG);
    if n < 2 {
        0
    } else {
        n as u32
    }
}

/// Whether a pool of `npages` data pages has caches.
pub(crate) fn cacheable(npages: usize) -> bool {
    npages >= CACHE_MIN_PAGES && npages * SLAB_PAGE <= MAX_CACHED_DATA
}

/// The token of slot `idx` owned by (`pid`, `tid`) in a directory with
/// `nonce`: never 0.
fn token(nonce: u64, pid: u32, tid: u32, idx: usize) -> u64 {
    let mut x = nonce
        ^ ((pid as u64) << 32 | tid as u64)
        ^ (idx as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    x | 1
}

/// A thread's hold on one pool's slot (thread-local).
#[derive(Clone, Copy)]
struct Held {
    /// The pool's base in this process (0: none).
    base: usize,
    /// The slot body's offset from base (below the pool's length, set by
    /// `claim`); `usize::MAX`: no slot could be had (all taken) at epoch
    /// `token` (never the MRU: see `set_mru`).
    slot: usize,
    token: u64,
    pid: u32,
}

impl Held {
    const NONE: Held = Held {
        base: 0,
        slot: usize::MAX,
        token: 0,
        pid: 0,
    };
}

thread_local! {
    /// The pool this thread used last.
    static MRU: Cell<Held> = const { Cell::new(Held::NONE) };
    /// Every pool this thread holds a slot of (or was refused one).
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    /// Whether HELD has a slot in it (of this process or, after a fork,
    /// of the parent's: then the slow path looks and forgets it).
    static HOLDS: Cell<bool> = const { Cell::new(false) };
}

/// Makes `h` the calling thread's most recently used slot, which
/// [`Pool::my_slot_fast`] trusts without comparing pids: only once the
/// fork handler exists, so that a child forked from now on starts with
/// an empty MRU (`forget_mru` runs in it) instead of its parent's slot.
/// Until then every call takes the slow path, which compares pids.
fn set_mru(h: Held) {
    debug_assert!(h.slot != usize::MAX);
    if fork_handler_ready() {
        on_fork_child(forget_mru);
        MRU.with(|m| m.set(h));
    }
}

/// The fork child hook: the child's only thread forgets its parent's MRU
/// slot (touches only this thread's `Cell`: async-signal-safe).
fn forget_mru() {
    MRU.with(|m| m.set(Held::NONE));
}

/// What a lock-free push did.
pub(crate) enum Push {
    Done,
    /// The magazine of this class is full: flush under the lock.
    Full(usize),
    /// The chunk (or run) is already in this cache: the error to give.
    Twice(FreeError),
    /// Not a cached class, or the pointer failed a check: take the lock
    /// (which gives the precise error, or frees a page run).
    No,
}

/// Initialises the directory of a fresh pool (no slot, caching on).
///
/// # Safety
/// `dir` points to the directory of a pool being formatted.
pub(crate) unsafe fn init_dir(dir: *mut CacheDir, npages: usize) {
    let nonce = {
        let t = crate::os::clock::now_ms();
        token(
            t ^ ((dir as usize) as u64).rotate_left(17),
            current_pid(),
            0,
            0,
        )
    };
    // Caching on (even).
    debug_assert!(cacheable(npages));
    let epoch = nonce << 1;
    // SAFETY: the caller's range; written before anyone else can look.
    unsafe {
        dir.write(CacheDir {
            epoch: AtomicU64::new(epoch),
            nonce: AtomicU64::new(nonce),
            claims: AtomicU64::new(0),
            reclaims: AtomicU64::new(0),
            pressure: AtomicU64::new(0),
            _pad: [0; 3],
            slots: [DirSlot::FREE; NSLOTS],
        })
    };
}

/// The caches' counters, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Whether the pool caches chunks per thread (see [`Pool::set_cache`]).
    pub enabled: bool,
    /// Slots in use (threads with a cache).
    pub slots: usize,
    /// Pages the slot bodies take.
    pub pages: usize,
    /// Chunks sitting in caches.
    pub chunks: u64,
    /// Page runs (of up to [`RUN_MAGS`] pages) sitting in caches.
    pub runs: u64,
    /// Their pages.
    pub run_pages: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Slots claimed so far.
    pub claims: u64,
    /// Slots of dead owners returned to the pool so far.
    pub reclaims: u64,
    /// Times memory ran short so that every cache was asked to flush.
    pub pressure: u64,
}

impl Pool {
    #[inline(always)]
    fn dir(&self) -> &CacheDir {
        // SAFETY: the directory is inside the pool (geometry) at a multiple
        // of 64 from the page-aligned base; only called when cache_ok.
        unsafe { &*self.base.as_ptr().add(self.cache_off).cast::<CacheDir>() }
    }

    #[inline(always)]
    fn dir_slot(&self, i: usize) -> *mut DirSlot {
        // Pointer arithmetic only; callers hold the lock to read or write.
        let d = self
            .base
            .as_ptr()
            .wrapping_add(self.cache_off)
            .cast::<CacheDir>();
        // SAFETY: i < NSLOTS is asserted by callers' loops; in bounds.
        unsafe { std::ptr::addr_of_mut!((*d).slots).cast::<DirSlot>().add(i) }
    }

    #[inline(always)]
    fn mag(&self, slot: NonNull<SlotHead>, c: usize) -> &Mag {
        // SAFETY: a slot body holds a SlotHead and NMAGS Mags (BODY bytes,
        // inside its page run); c < NMAGS.
        unsafe {
            &*slot
                .as_ptr()
                .cast::<u8>()
                .add(std::mem::size_of::<SlotHead>() + c * std::mem::size_of::<Mag>())
                .cast::<Mag>()
        }
    }

    /// The calling thread's slot in this pool, if caching is on and it has
    /// one (claiming one if it can).
    #[inline(always)]
    pub(crate) fn my_slot(&self) -> Option<NonNull<SlotHead>> {
        if !self.cache_ok {
            return None;
        }
        self.my_slot_fast().or_else(|| self.my_slot_slow(true))
    }

    /// Whether this call goes through the lock without looking at caches:
    /// the pool has none, or caching is off and this thread holds no slot.
    #[inline(always)]
    pub(crate) fn cache_off_quick(&self) -> bool {
        !self.cache_ok
            || (self.dir().epoch.load(Ordering::Relaxed) & 1 == 1 && !HOLDS.with(Cell::get))
    }

    /// As [`Pool::my_slot`], without claiming a slot if the thread has
    /// none (frees use a cache only if the thread already has one).
    #[inline]
    pub(crate) fn my_slot_no_claim(&self) -> Option<NonNull<SlotHead>> {
        if !self.cache_ok {
            return None;
        }
        self.my_slot_fast().or_else(|| self.my_slot_slow(false))
    }

    /// The calling thread's slot if it is the one it used last and in
    /// sync; `None` says "ask [`Pool::my_slot`]", not "no slot".
    #[inline(always)]
    pub(crate) fn my_slot_fast(&self) -> Option<NonNull<SlotHead>> {
        let h = MRU.with(Cell::get);
        // No pid compare: a forked child starts with an empty MRU (see
        // `set_mru`), so a slot found here is this process's. The offset is
        // checked: the pool the MRU was set in may have been unmapped and
        // a smaller one mapped at the same base since.
        if h.base == self.base.as_ptr() as usize && h.slot < self.len {
            let s = self.base.as_ptr().wrapping_add(h.slot).cast::<SlotHead>();
            // SAFETY: h.slot < len: inside the pool, and 64-aligned (set from
            // a page run by `claim`).
            let sh = unsafe { &*s };
            if sh.key.load(Ordering::Relaxed) == self.dir().epoch.load(Ordering::Relaxed) ^ h.token
            {
                // SAFETY: in the pool, non-null.
                return Some(unsafe { NonNull::new_unchecked(s) });
            }
        }
        None
    }

    #[cold]
    #[inline(never)]
    fn my_slot_slow(&self, claim: bool) -> Option<NonNull<SlotHead>> {
        let base = self.base.as_ptr() as usize;
        let pid = current_pid();
        let epoch = self.dir().epoch.load(Ordering::Acquire);
        if epoch & 1 == 1 && !HOLDS.with(Cell::get) {
            // Caching is off and this thread holds no slot anywhere: the
            // common case of a pool with caching off, kept cheap.
            return None;
        }
        let held = HELD.with(|v| {
            let mut v = v.borrow_mut();
            // Entries of another process (we were forked) are not ours.
            v.retain(|h| h.pid == pid);
            HOLDS.with(|x| x.set(v.iter().any(|o| o.slot != usize::MAX)));
            v.iter().find(|h| h.base == base).copied()
        });
        if let Some(h) = held {
            if h.slot == usize::MAX {
                // Refused a slot at epoch `token`: try again only after a
                // change (a release or reclaim bumps nothing, so also retry
                // now and then: every 4096th call).
                let n = MISSES.with(|m| {
                    let n = m.get().wrapping_add(1);
                    m.set(n);
                    n
                });
                if h.token == epoch && n % 4096 != 0 {
                    return None;
                }
                self.forget_held(base);
            } else if h.slot < self.len {
                let s = self.base.as_ptr().wrapping_add(h.slot).cast::<SlotHead>();
                // SAFETY: inside the pool, 64-aligned (set by `claim`).
                let sh = unsafe { &*s };
                // SAFETY: non-null (inside the pool).
                let slot = unsafe { NonNull::new_unchecked(s) };
                if sh.token.load(Ordering::Relaxed) == h.token {
                    if sh.key.load(Ordering::Relaxed) != epoch ^ h.token {
                        // Caching was turned off, or memory ran short, or
                        // the pool was re-initialised: give everything back.
                        if !self.sync_epoch(slot) {
                            return None;
                        }
                    }
                    set_mru(h);
                    return Some(slot);
                }
                // Our slot was taken from us (re-initialised pool).
                self.forget_held(base);
            } else {
                self.forget_held(base);
            }
        }
        if epoch & 1 == 1 || !claim {
            return None;
        }
        self.claim()
    }

    fn forget_held(&self, base: usize) {
        HELD.with(|v| {
            let mut v = v.borrow_mut();
            v.retain(|h| h.base != base);
            HOLDS.with(|h| h.set(v.iter().any(|o| o.slot != usize::MAX)));
        });
        MRU.with(|m| {
            if m.get().base == base {
                m.set(Held::NONE)
            }
        });
    }

    fn remember(&self, h: Held) {
        HELD.with(|v| {
            let mut v = v.borrow_mut();
            v.retain(|o| o.base != h.base);
            v.push(h);
            HOLDS.with(|x| x.set(v.iter().any(|o| o.slot != usize::MAX)));
        });
        if h.slot != usize::MAX {
            set_mru(h);
        }
    }

    /// The page and in-page offset of a cached chunk (or run) at data
    /// offset `off` of magazine `c`, if it is one: allocated, of that class
    /// (or run length). Read racily: descriptor words of pages with an
    /// allocated chunk do not change while it stays allocated.
    #[inline(always)]
    fn chunk_at(&self, off: usize, c: usize) -> Option<(u32, usize)> {
        let idx = off >> PAGE_SHIFT;
        if idx >= self.npages as usize {
            return None;
        }
        let in_page = off & (SLAB_PAGE - 1);
        if c >= NCLASSES {
            let (prev, slab) = self.desc_racy(idx);
            let run = prev.tag() == Link::RUN
                && slab == (c - NCLASSES + 1) as u64
                && self.desc_next_racy(idx) != INTERNAL;
            return (run && in_page == 0).then_some((idx as u32, 0));
        }
        let (cls, first, o, slab) = self.slab_racy(idx, in_page)?;
        if cls != c || !self.chunk_set_racy(c, first, o, slab) {
            return None;
        }
        Some((idx as u32, in_page))
    }

    /// The slab holding byte `in_page` of page `idx` (< npages), read
    /// racily: its class, its first page, the byte's offset in the slab and
    /// the first page's `slab` word; `None` if the page is in no slab.
    #[inline(always)]
    fn slab_racy(&self, idx: usize, in_page: usize) -> Option<(usize, usize, usize, u64)> {
        self.slab_of_link(idx, in_page, self.desc_racy(idx).0)
    }

    /// Whether page `idx` is a page (first or inner) of a slab of class
    /// `c`, read racily: its tag alone says. Without a branch on which of
    /// the two tags it is (with random sizes, which kind of page a chunk
    /// lies on is random; `a == x || a == y` compiles to two branches):
    /// the product of the two differences is 0 exactly when one is (tags
    /// are 8 bits, so it cannot overflow).
    #[inline(always)]
    fn in_slab_of(&self, idx: usize, c: usize) -> bool {
        let t = self.desc_racy(idx).0.tag();
        let first = t ^ (Link::SLAB0 + c as u32);
        let inner = t ^ (Link::INNER0 + c as u32);
        first * inner == 0
    }

    /// [`slab_racy`](Self::slab_racy) given page `idx`'s descriptor link.
    /// A first page and an inner page of a multi-page slab take the same
    /// path, the choices made with masks ([`pick`]): in a wide pool with
    /// random sizes, whether a freed chunk lies on its slab's first page
    /// is random, and a branch on it was mispredicted about once in two
    /// frees (callgrind's branch simulation on W2). The first page's
    /// descriptor is read again for a first page (a cache hit).
    #[inline(always)]
    fn slab_of_link(
        &self,
        idx: usize,
        in_page: usize,
        link: Link,
    ) -> Option<(usize, usize, usize, u64)> {
        let t = link.tag();
        let inner = t >= Link::INNER0;
        let c = (t as usize).wrapping_sub(pick(inner, Link::INNER0 as usize, Link::SLAB0 as usize));
        let first = pick(inner, link.idx() as usize, idx);
        // A tag below SLAB0 (free, run) wraps c.
        if c >= NCLASSES {
            return None;
        }
        // An inner page lies 1..pages pages after its first page; a first
        // page is its own (k = 0). k below the most pages any slab spans
        // keeps first <= idx < npages (a descriptor inside the pool); an
        // offset past the slab's own pages is no chunk of it
        // (`chunk_set_racy` refuses it), and an inner page that names
        // itself fails the tag compare.
        let k = idx.wrapping_sub(first);
        if k >= MAX_SLAB_PAGES as usize {
            return None;
        }
        let (l, slab) = self.desc_racy(first);
        if l.tag() != Link::SLAB0 + c as u32 {
            return None;
        }
        Some((c, first, k * SLAB_PAGE + in_page, slab))
    }

    /// Whether a chunk of class `c` starts at byte `o` of the slab at page
    /// `first` (whose `slab` word is `slab`) and is allocated (read racily).
    #[inline(always)]
    fn chunk_set_racy(&self, c: usize, first: usize, o: usize, slab: u64) -> bool {
        let info = &self.cls[c];
        let Some(bit) = slab_chunk_at(info, o) else {
            return false;
        };
        if c < FIRST_DESC_BITMAP_CLASS {
            if bit < info.reserved {
                return false;
            }
            let w = self
                .base
                .as_ptr()
                .wrapping_add(self.start_off + (first << PAGE_SHIFT) + (bit as usize / 64) * 8);
            // SAFETY: inside page `first` (a small page's bitmap words:
            // bit < chunks), aligned.
            let word = unsafe { AtomicU64::from_ptr(w.cast::<u64>()) }.load(Ordering::Relaxed);
            word & (1 << (bit % 64)) != 0
        } else {
            slab & (1 << bit) != 0
        }
    }

    /// Whether byte `in_page` of page `idx` is in what magazine `c` caches
    /// (a slab of class `c`, or an allocated run of its length), read
    /// racily.
    #[inline(always)]
    fn page_fits_mag(&self, idx: usize, c: usize) -> bool {
        if c < NCLASSES {
            self.in_slab_of(idx, c)
        } else {
            let (prev, slab) = self.desc_racy(idx);
            prev.tag() == Link::RUN
                && slab == (c - NCLASSES + 1) as u64
                && self.desc_next_racy(idx) != INTERNAL
        }
    }

    /// Page `idx`'s `next` word, read with an atomic load.
    #[inline(always)]
    fn desc_next_racy(&self, idx: usize) -> u32 {
        let q = self
            .base
            .as_ptr()
            .wrapping_add(self.desc_off + idx * std::mem::size_of::<Desc>() + 8);
        // SAFETY: idx < npages (callers): inside the pool, 4-aligned.
        unsafe { AtomicU32::from_ptr(q.cast::<u32>()) }.load(Ordering::Relaxed)
    }

    /// Page `idx`'s tag word and `slab` word, read with atomic loads.
    #[inline(always)]
    fn desc_racy(&self, idx: usize) -> (Link, u64) {
        let q = self
            .base
            .as_ptr()
            .wrapping_add(self.desc_off + idx * std::mem::size_of::<Desc>());
        // SAFETY: idx < npages: a descriptor inside the pool, 8-aligned;
        // atomic loads, since lock holders may write it meanwhile.
        unsafe {
            let slab = AtomicU64::from_ptr(q.cast::<u64>()).load(Ordering::Relaxed);
            let prev = AtomicU32::from_ptr(q.add(12).cast::<u32>()).load(Ordering::Relaxed);
            (Link(prev), slab)
        }
    }

    /// Whether `slot` caches class `c` at all.
    #[inline(always)]
    pub(crate) fn cache_has_class(&self, slot: NonNull<SlotHead>, c: usize) -> bool {
        self.mag(slot, c).cap.load(Ordering::Relaxed) != 0
    }

    /// Lock-free pop of a chunk of class `c` from `slot`.
    #[inline(always)]
    pub(crate) fn cache_pop(
        &self,
        slot: NonNull<SlotHead>,
        c: usize,
        size: usize,
    ) -> Option<usize> {
        let m = self.mag(slot, c);
        let w = m.word.load(Ordering::Relaxed);
        let n = w as u32;
        if n == 0 || n > MAG as u32 {
            return None;
        }
        let top = &m.e[n as usize - 1];
        let off = (top.load(Ordering::Relaxed) as usize) << 3;
        let idx = off >> PAGE_SHIFT;
        if idx >= self.npages as usize || !self.page_fits_mag(idx, c) {
            return None;
        }
        killpoint::point();
        m.word.store(w.wrapping_add(GEN_ONE - 1), Ordering::Relaxed);
        killpoint::point();
        top.store(EMPTY, Ordering::Relaxed);
        m.count(size);
        Some(off)
    }

    /// Lock-free push of the chunk at byte `in_page` of page `idx`.
    #[inline(always)]
    pub(crate) fn cache_push(&self, slot: NonNull<SlotHead>, idx: u32, in_page: usize) -> Push {
        let (prev, slab) = self.desc_racy(idx as usize);
        if prev.tag() < Link::SLAB0 {
            return self.cache_push_run(slot, idx, in_page, prev, slab);
        }
        let Some((c, first, o, slab)) = self.slab_of_link(idx as usize, in_page, prev) else {
            return Push::No;
        };
        if !self.chunk_set_racy(c, first, o, slab) {
            return Push::No;
        }
        let e = ((((idx as usize) << PAGE_SHIFT) + in_page) >> 3) as u32;
        self.mag_push(slot, c, e, FreeError::ChunkAlreadyFree)
    }

    /// Pushes entry `e` onto magazine `c`: refused as `twice` if it is
    /// already there, `Full` (or `No` for an uncached class) if no room.
    #[inline(always)]
    fn mag_push(&self, slot: NonNull<SlotHead>, c: usize, e: u32, twice: FreeError) -> Push {
        let m = self.mag(slot, c);
        let w = m.word.load(Ordering::Relaxed);
        let n = w as u32;
        let cap = m.cap.load(Ordering::Relaxed);
        // Already in this magazine? Entries above the count are EMPTY, so
        // a compare of all of them at once tells. Checked before `Full`,
        // so that a refused double free flushes nothing.
        if in_mag(&m.e, e) {
            return Push::Twice(twice);
        }
        // `cap` is at most MAG unless the word was garbled: then take the
        // flush path (which checks the magazine), never index past it.
        if n >= cap || n as usize >= MAG {
            return if cap == 0 { Push::No } else { Push::Full(c) };
        }
        m.e[n as usize].store(e, Ordering::Relaxed);
        killpoint::point();
        m.word.store(w.wrapping_add(GEN_ONE + 1), Ordering::Release);
        Push::Done
    }

    /// [`Pool::cache_push`] of a page run: cached if it is an allocated run
    /// of 1..=[`RUN_MAGS`] pages freed at its start.
    #[inline(always)]
    fn cache_push_run(
        &self,
        slot: NonNull<SlotHead>,
        idx: u32,
        in_page: usize,
        prev: Link,
        slab: u64,
    ) -> Push {
        if prev.tag() != Link::RUN || in_page != 0 || slab == 0 || slab > RUN_MAGS as u64 {
            return Push::No;
        }
        if self.desc_next_racy(idx as usize) == INTERNAL {
            // A cache's slot body: the locked path refuses it.
            return Push::No;
        }
        let c = NCLASSES + slab as usize - 1;
        let e = (((idx as usize) << PAGE_SHIFT) >> 3) as u32;
        self.mag_push(slot, c, e, FreeError::PageAlreadyFree)
    }
}

/// `a` if `cond`, else `b`, with masks instead of a branch (the
/// condition is data the branch predictor cannot learn; `select_unpredictable`
/// needs Rust 1.88, above this crate's MSRV).
#[inline(always)]
fn pick(cond: bool, a: usize, b: usize) -> usize {
    let m = (cond as usize).wrapping_neg();
    (a & m) | (b & !m)
}

/// Whether `e` is one of the entries (a vector compare of all of them).
#[inline(always)]
fn in_mag(entries: &[AtomicU32; MAG], e: u32) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi32, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi32, _mm_setzero_si128,
        };
        const_assert_eq!(MAG % 4, 0);
        // SAFETY: SSE2 is part of x86_64; the loads read the MAG entries
        // (unaligned loads, inside the array). The entries are the calling
        // thread's own: nobody else writes them while it lives.
        unsafe {
            let key = _mm_set1_epi32(e as i32);
            let p = entries.as_ptr().cast::<__m128i>();
            let mut acc = _mm_setzero_si128();
            for i in 0..MAG / 4 {
                acc = _mm_or_si128(acc, _mm_cmpeq_epi32(_mm_loadu_si128(p.add(i)), key));
            }
            _mm_movemask_epi8(acc) != 0
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        entries.iter().any(|x| x.load(Ordering::Relaxed) == e)
    }
}

thread_local! {
    /// Calls refused a slot, to retry a claim now and then.
    static MISSES: Cell<u32> = const { Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        assert_eq!(mag_cap(0, 64 << 20), 32);
        assert_eq!(mag_cap(super::super::class_of(2048), 64 << 20), 32);
        assert_eq!(mag_cap(NCLASSES - 1, 64 << 20), 9);
        assert_eq!(mag_cap(NCLASSES - 1, 1 << 20), 0);
        assert_eq!(mag_cap(0, 1 << 20), 32);
        // 1-page runs are never asked for (smaller requests have classes).
        assert_eq!(mag_cap(NCLASSES, 64 << 20), 0);
        assert_eq!(mag_cap(NCLASSES + 1, 64 << 20), 8);
        assert_eq!(mag_cap(NMAGS - 1, 64 << 20), 4);
        assert_eq!(mag_cap(NCLASSES + 1, 1 << 20), 0);
        assert_eq!(mag_of(2048), Some(super::super::class_of(2048)));
        assert_eq!(mag_of(3000), Some(super::super::class_of(3000)));
        assert_eq!(mag_of(super::super::MAX_CHUNK + 1), Some(NCLASSES + 1));
        assert_eq!(mag_of(8192), Some(NCLASSES + 1));
        assert_eq!(mag_of(4 * SLAB_PAGE + 1), None);
        const { assert!(BODY_PAGES <= 3) };
    }

    #[test]
    fn one_thread_caches_a_bounded_part_of_the_pool() {
        // What the module doc promises: at most 1.8 MiB in any pool, and
        // at most 1/16 of a small one.
        for len in [1usize << 20, 8 << 20, 64 << 20, 1 << 30] {
            let total: usize = (0..NMAGS)
                .map(|c| mag_cap(c, len) as usize * mag_size(c))
                .sum();
            assert!(total <= 1900 << 10 && total <= len / 16, "{len}: {total}");
        }
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(token(1, 2, 3, 4), token(1, 2, 3, 5));
        assert_ne!(token(1, 2, 3, 4), token(1, 3, 3, 4));
        assert_ne!(token(0, 0, 0, 0), 0);
    }
}
