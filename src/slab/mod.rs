//! The slab pool: nginx's `ngx_slab` allocator over a byte range, with
//! offsets instead of pointers, validated frees, stats and a checker.
//!
//! ```
//! use shmzone::{Pool, Region};
//! let region = Region::new(1 << 20)?;
//! // SAFETY: the region is ours, page-aligned and unused.
//! let pool = unsafe { Pool::init(region.base(), region.len(), "demo") }.unwrap();
//! let p = pool.alloc(100).unwrap();           // a 104-byte chunk
//! assert_eq!(pool.stats().classes[12].size, 104);
//! assert_eq!(pool.stats().classes[12].used, 1);
//! // SAFETY: p came from this pool and is not used again.
//! unsafe { pool.free(p.as_ptr()) }.unwrap();
//! pool.check().unwrap();
//! # Ok::<(), shmzone::Error>(())
//! ```
//!
//! # Implementation
//!
//! The pool header (magic, version, geometry, name, root offset, the lock on
//! its own cache line, then the allocator state) sits at `base`, followed by
//! one 16-byte descriptor per data page (u32 links, see `layout.rs`), then
//! the pages, [`SLAB_PAGE`]-aligned. Requests up to [`MAX_CHUNK`] (7168
//! bytes) use [`NCLASSES`] = 62 size classes: 8-byte steps up to 128, then
//! eight classes per power of two (144, 160, ... 256, 288, 320, ... 4096,
//! 4608, ... 7168), so rounding loses at most 7 bytes up to 128 B and at
//! most a ninth of the chunk above (11 %; 4.2 % on average over the sizes
//! 129..=7168). A class's
//! memory comes in slabs: for sizes that do not divide a page well, a few
//! pages (at most 8: 3072-byte chunks come four to a 3-page slab), chosen
//! so that a slab's tail is at most 1/32 of it. In pools under 8 MiB the
//! classes up to 1024 bytes keep one-page slabs (a tail of up to 3/16, for
//! 832-byte chunks): every class in use holds a partly used slab, and in a
//! small zone with many sizes live, long slabs strand more memory than
//! their tails save. A slab's first descriptor holds its class and its
//! bitmap (in the descriptor word when the slab has at most 64 chunks; the
//! classes under 64 bytes keep it in the page's first chunks), the inner
//! pages' descriptors point to the first. A chunk starts at a multiple of
//! its size from the slab's page-aligned start, so it is aligned to the
//! largest power of two dividing its size (a 24-byte chunk to 8, a 3072-byte
//! one to 1024); the chunk of a freed pointer is found with a shift and a
//! multiply by the class's reciprocal, no division. Slabs with a free chunk
//! are on their class's list. Larger requests take runs of whole pages,
//! first fit, from the end of a free run; freed runs coalesce with both
//! neighbours (a back-tag on each run's last page finds the run before). A
//! new multi-page slab takes at most a quarter of the free pages; when it
//! cannot be had, the request takes a page run of its own size instead.
//!
//! One measured deviation from nginx: when a class's only slab becomes
//! empty, the class keeps it (at most one such slab per class) instead of
//! giving it back at once, so an alloc+free pair does not set up and tear
//! down a slab each time. Those slabs are given back as soon as a page run
//! cannot be found, and by [`Pool::largest_alloc`] and [`Pool::trim`].

mod cache;
mod check;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod guard;
mod init;
mod layout;
mod page;
mod stats;

use std::fmt;
use std::ptr::{addr_of, addr_of_mut, NonNull};
use std::sync::atomic::Ordering;

pub use cache::{CacheStats, CACHE_MIN_PAGES, MAG, NSLOTS};
pub use check::CheckError;
pub use error::{FreeError, PoolError};
pub use guard::PoolGuard;
pub use layout::{MAX_CHUNK, NAME_MAX, NCLASSES, SLAB_PAGE};
pub use stats::{ClassStats, PoolStats};

pub(crate) use layout::{class_of, class_size};
use layout::{pages_for, Desc, Header, State};

use crate::journal::{Journal, JournalStats, Rollback};
use crate::shmtx::{ShmGuard, ShmMutex};
use page::{Core, ALLOC_BUDGET, FREE_BUDGET, TRIM_BUDGET};

/// A per-process handle on a slab pool in (shared) memory.
///
/// Copying it is free; every copy and every process that maps the pool
/// works on the same pool, through its lock.
#[derive(Clone, Copy)]
pub struct Pool {
    base: NonNull<u8>,
    len: usize,
    npages: u32,
    start_off: usize,
    /// `base + start_off`: the first data page, in this process.
    data: NonNull<u8>,
    /// `npages * SLAB_PAGE`: the data pages' bytes.
    data_len: usize,
    desc_off: usize,
    /// Where the per-thread caches' directory is.
    cache_off: usize,
    /// Whether the pool may cache chunks per thread (big enough).
    cache_ok: bool,
    /// The pool's class table (slab geometry by pool size, see
    /// `layout::classes_for`).
    cls: &'static layout::Classes,
    /// The undo journal of the pool lock's sections.
    journal: Journal,
}

// SAFETY: a Pool is an address range plus constants read at init/attach;
// all mutable state behind it is atomics or guarded by the pool's lock.
unsafe impl Send for Pool {}
// SAFETY: as above: `&Pool` only reaches shared state through the lock or
// atomics.
unsafe impl Sync for Pool {}

impl Pool {
    /// The smallest `len` that [`Pool::init`] accepts: 8 slab pages (the
    /// header and descriptors take the first, 7 pages remain), as nginx's
    /// minimum zone size.
    pub const MIN_SIZE: usize = 8 * SLAB_PAGE;

    #[inline]
    fn hdr(&self) -> *mut Header {
        self.base.as_ptr().cast()
    }

    /// The first byte of the pool, in this process.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The pool's length in bytes (whole slab pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a pool has at least [`Pool::MIN_SIZE`] bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The name given to [`Pool::init`] (as cut to [`NAME_MAX`] bytes).
    pub fn name(&self) -> &str {
        // SAFETY: name and name_len are written once by init and checked
        // (length, UTF-8) by init or attach.
        let (name, n) = unsafe { (&*addr_of!((*self.hdr()).name), (*self.hdr()).name_len) };
        std::str::from_utf8(&name[..n as usize]).unwrap_or("?")
    }

    /// The pool's lock (nginx's `shpool->mutex`), e.g. for
    /// [`ShmMutex::force_unlock`] by a master that saw a worker die.
    pub fn mutex(&self) -> &ShmMutex {
        // SAFETY: the lock is inside the header, valid while the pool is.
        unsafe { &*addr_of!((*self.hdr()).lock) }
    }

    /// Takes the pool lock. The guard's `_locked` methods allocate and free
    /// under it, so the caller can update its own shared data in the same
    /// critical section (nginx's `ngx_slab_alloc_locked` pattern).
    ///
    /// If the previous holder died holding the lock, logs a warning naming
    /// the zone and runs [`PoolGuard::check_locked`], logging an error if
    /// the pool is inconsistent.
    ///
    /// ```
    /// # use shmzone::{Pool, Region};
    /// # let region = Region::new(1 << 20)?;
    /// # // SAFETY: the region is ours, page-aligned and unused.
    /// # let pool = unsafe { Pool::init(region.base(), region.len(), "doc") }.unwrap();
    /// let g = pool.lock();
    /// let node = g.alloc_locked(48).unwrap();
    /// // ... link `node` into a shared tree in the same critical section ...
    /// if g.alloc_locked(1 << 30).is_none() {
    ///     // evict something, retry: still under the one lock
    /// }
    /// g.check_locked().unwrap();
    /// drop(g);
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    #[inline]
    pub fn lock(&self) -> PoolGuard<'_> {
        let g = self.mutex().lock();
        let rolled = if g.recovered_from().is_some() || self.journal.needs_attention() {
            self.attention(g.recovered_from()).0
        } else {
            None
        };
        PoolGuard::new(self, g, rolled)
    }

    /// As [`Pool::lock`], waiting at most `limit` (for a pool in a region
    /// whose other users this process does not control).
    ///
    /// # Errors
    /// [`LockTimeout`](crate::LockTimeout) naming the holder.
    pub fn lock_for(
        &self,
        limit: std::time::Duration,
    ) -> Result<PoolGuard<'_>, crate::shmtx::LockTimeout> {
        let g = self.mutex().lock_for(limit)?;
        let rolled = if g.recovered_from().is_some() || self.journal.needs_attention() {
            self.attention(g.recovered_from()).0
        } else {
            None
        };
        Ok(PoolGuard::new(self, g, rolled))
    }

    /// Takes the lock for one allocator operation needing `budget` journal
    /// words: `None` if the pool is fenced (see [`Pool::is_fenced`]) or the
    /// journal is short of room (only inside a long user section).
    #[inline(always)]
    fn lock_op(&self, budget: u32) -> Option<ShmGuard<'_>> {
        let g = self.mutex().lock();
        // A healthy pool has no open section when its lock is taken, so
        // any operation's budget fits (journals hold at least 1024 words).
        if g.recovered_from().is_some() || self.journal.needs_attention() {
            return self.lock_op_slow(g, budget);
        }
        Some(g)
    }

    #[cold]
    #[inline(never)]
    fn lock_op_slow<'a>(&'a self, g: ShmGuard<'a>, budget: u32) -> Option<ShmGuard<'a>> {
        if !self.attention(g.recovered_from()).1 {
            return None;
        }
        if !self.journal.fits(budget) {
            self.journal_short(budget);
            return None;
        }
        Some(g)
    }

    /// Taken with the lock held, when the previous holder died or the
    /// journal holds an open section (a holder died without the lock
    /// telling, e.g. after a raw [`ShmMutex`] takeover) or the pool is
    /// fenced: roll the dead holder's section back, check the pool, repair
    /// counters if only they are off, and fence the pool if it is still
    /// broken. Returns the rollback and whether the pool is usable.
    #[cold]
    #[inline(never)]
    fn attention(&self, dead: Option<u32>) -> (Option<Rollback>, bool) {
        let pid = dead.unwrap_or(0);
        // SAFETY: called with the lock held (by lock/lock_op), taken over
        // from the dead holder whose section is open.
        let rolled = unsafe { self.journal.rollback(pid) };
        if dead.is_none() && rolled.is_none() {
            // Only the fence: nothing new to look at.
            return (None, !self.journal.is_fenced());
        }
        match (dead, &rolled) {
            (Some(pid), Some(r)) => log::warn!(
                "zone \"{}\": lock taken over from dead process {pid}; its open section \
                 rolled back ({} records, {} bytes)",
                self.name(),
                r.records,
                r.bytes
            ),
            (Some(pid), None) => log::warn!(
                "zone \"{}\": lock taken over from dead process {pid}; no section was open",
                self.name()
            ),
            (None, _) => log::warn!(
                "zone \"{}\": an open section of a dead holder rolled back",
                self.name()
            ),
        }
        (rolled, self.check_after_recovery())
    }

    /// Checks the pool (lock held); recomputes the counters if only they
    /// are wrong; fences the pool if it is still broken. Whether usable.
    fn check_after_recovery(&self) -> bool {
        // SAFETY: the caller holds the lock.
        let (st, d, pages) = unsafe { self.view() };
        let Err(e) = check::check(st, d, pages) else {
            return !self.journal.is_fenced();
        };
        // SAFETY: the caller holds the lock; no view borrow is alive.
        let repaired = unsafe { self.core() }.recount(&self.journal);
        // SAFETY: as above.
        let (st, d, pages) = unsafe { self.view() };
        match check::check(st, d, pages) {
            Ok(()) => {
                self.journal.commit();
                log::warn!(
                    "zone \"{}\": {e}; counters recomputed ({repaired} fixed), pool consistent",
                    self.name()
                );
                !self.journal.is_fenced()
            }
            Err(e2) => {
                // SAFETY: lock held; undo the recount too, the state stays as found.
                unsafe { self.journal.rollback_to(0) };
                self.journal.set_fenced(true);
                log::error!(
                    "zone \"{}\" is FENCED: {e2} after recovery; allocations fail until \
                     the zone is re-initialised (Zone::reinit)",
                    self.name()
                );
                false
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn journal_short(&self, budget: u32) {
        log::error!(
            "zone \"{}\": the open section's journal has {} bytes left, an allocator call \
             needs {}: unlock (commit) before more calls",
            self.name(),
            self.journal.room(),
            budget as usize * 8
        );
    }

    /// Whether the pool is fenced: a check after a dead holder's rollback
    /// still failed, so allocations return `None` and frees are refused
    /// until [`Pool::reinit`].
    pub fn is_fenced(&self) -> bool {
        self.journal.is_fenced()
    }

    pub(crate) fn journal_ref(&self) -> &Journal {
        &self.journal
    }

    /// The journal's counters (rollbacks, capacity, fence).
    pub fn journal_stats(&self) -> JournalStats {
        self.journal.stats()
    }

    /// Rollbacks of dead holders' sections begun so far. The counter is
    /// bumped before a rollback restores any byte, so a reader that reads
    /// shared data without the lock (a seqlock) and sees the same value
    /// before and after knows no rollback changed the data meanwhile.
    #[inline]
    pub fn rollbacks(&self) -> u64 {
        self.journal.rollbacks()
    }

    /// The allocator state and descriptors, borrowed mutably.
    ///
    /// # Safety
    /// The caller holds the pool lock for as long as the result lives, and
    /// makes no other `core` or `view` borrow meanwhile.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    unsafe fn core(&self) -> Core<'_> {
        // SAFETY: the caller holds the lock, so no other process touches the
        // state or the descriptors, and no other reference to them exists
        // in this process. Both are inside the pool (geometry checked by
        // init/attach) and aligned.
        unsafe {
            Core {
                st: &mut *addr_of_mut!((*self.hdr()).state),
                d: std::slice::from_raw_parts_mut(
                    self.base.as_ptr().add(self.desc_off).cast::<Desc>(),
                    self.npages as usize,
                ),
                pages: self.base.as_ptr().add(self.start_off),
                j: &self.journal,
                jat: std::cell::Cell::new(self.journal.used()),
                lite: false,
                cls: self.cls,
            }
        }
    }

    /// The allocator state and descriptors, read-only.
    ///
    /// # Safety
    /// As [`Pool::core`].
    #[inline]
    unsafe fn view(&self) -> (&State, &[Desc], *const u8) {
        // SAFETY: as in `core`, read-only.
        unsafe {
            (
                &*addr_of!((*self.hdr()).state),
                std::slice::from_raw_parts(
                    self.base.as_ptr().add(self.desc_off).cast::<Desc>(),
                    self.npages as usize,
                ),
                self.base.as_ptr().add(self.start_off),
            )
        }
    }

    /// Allocates `size` bytes, taking the lock: a chunk of the size class
    /// holding `size` (aligned to the largest power of two dividing the
    /// class size, which is a multiple of every power of two dividing
    /// `size`), or above [`MAX_CHUNK`] a run of whole pages (page-aligned).
    /// `alloc(0)` gives an 8-byte chunk, as nginx.
    ///
    /// Returns `None` when there is no memory (sizes larger than the pool
    /// included): the class's `fails` is counted and "no memory" logged
    /// unless [`Pool::set_log_nomem`] turned that off.
    ///
    /// ```
    /// # use shmzone::{Pool, Region};
    /// # let region = Region::new(1 << 20)?;
    /// # // SAFETY: the region is ours, page-aligned and unused.
    /// # let pool = unsafe { Pool::init(region.base(), region.len(), "doc") }.unwrap();
    /// let p = pool.alloc(100).unwrap();
    /// assert_eq!(p.as_ptr() as usize % 8, 0); // a 104-byte chunk: 8-aligned
    /// let q = pool.alloc(3000).unwrap();
    /// assert_eq!(q.as_ptr() as usize % 1024, 0); // a 3072-byte chunk
    /// let run = pool.alloc(10_000).unwrap(); // three whole pages
    /// assert_eq!(run.as_ptr() as usize % shmzone::SLAB_PAGE, 0);
    /// assert!(pool.alloc(usize::MAX).is_none());
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    #[inline(always)]
    pub fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        // The fast path (the calling thread's cache has a chunk) is inlined
        // into the caller; everything else is one call away.
        if self.cache_ok {
            if let (Some(slot), Some(m)) = (self.my_slot_fast(), cache::mag_of(size)) {
                if let Some(off) = self.cache_pop(slot, m, size) {
                    return Some(self.data_ptr(off));
                }
            }
        }
        self.alloc_slow(size)
    }

    #[inline(never)]
    fn alloc_slow(&self, size: usize) -> Option<NonNull<u8>> {
        if self.cache_off_quick() {
            return self.alloc_uncached(size);
        }
        if let Some(c) = cache::mag_of(size) {
            if let Some(slot) = self.my_slot() {
                if let Some(off) = self.cache_pop(slot, c, size) {
                    return Some(self.data_ptr(off));
                }
                if self.cache_has_class(slot, c) {
                    return self.alloc_refill(slot, c, size);
                }
            }
        }
        self.alloc_uncached(size)
    }

    /// [`Pool::alloc`] through the lock; when memory is short, the caches
    /// are given back first and the call tried once more.
    #[inline]
    fn alloc_uncached(&self, size: usize) -> Option<NonNull<u8>> {
        let mut r = self.alloc_plain(size);
        if r.is_none() && self.cache_ok && !self.journal.is_fenced() {
            self.relieve();
            r = self.alloc_plain(size);
        }
        if r.is_none() {
            self.log_nomem(size);
        }
        r
    }

    #[inline]
    fn alloc_plain(&self, size: usize) -> Option<NonNull<u8>> {
        if size <= MAX_CHUNK {
            // The class is computed before the lock is taken.
            let c = class_of(size);
            let g = self.lock_op(ALLOC_BUDGET)?;
            // SAFETY: `g` holds the lock until after this borrow ends.
            let off = unsafe { self.core() }.lite().alloc_class(c, size);
            self.journal.commit();
            drop(g);
            off.map(|off| self.data_ptr(off))
        } else {
            self.alloc_large(size)
        }
    }

    #[inline(never)]
    fn alloc_large(&self, size: usize) -> Option<NonNull<u8>> {
        let n = pages_for(size);
        let g = self.lock_op(ALLOC_BUDGET)?;
        // SAFETY: `g` holds the lock until after this borrow ends.
        let off = unsafe { self.core() }.alloc_run_checked(n, size, self.npages as usize);
        self.journal.commit();
        drop(g);
        off.map(|off| self.data_ptr(off))
    }

    /// The address of byte `off` of the data pages.
    #[inline]
    fn data_ptr(&self, off: usize) -> NonNull<u8> {
        debug_assert!(off < self.npages as usize * SLAB_PAGE);
        // SAFETY: off is inside the data pages (the allocator only returns
        // such offsets), so the pointer is inside the pool and non-null.
        unsafe { NonNull::new_unchecked(self.data.as_ptr().add(off)) }
    }

    /// As [`Pool::alloc`], with the `size` requested bytes zeroed.
    ///
    /// ```
    /// # use shmzone::{Pool, Region};
    /// # let region = Region::new(1 << 20)?;
    /// # // SAFETY: the region is ours, page-aligned and unused.
    /// # let pool = unsafe { Pool::init(region.base(), region.len(), "doc") }.unwrap();
    /// let p = pool.calloc(40).unwrap();
    /// // SAFETY: 40 bytes just allocated.
    /// assert!(unsafe { std::slice::from_raw_parts(p.as_ptr(), 40) }.iter().all(|&b| b == 0));
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    pub fn calloc(&self, size: usize) -> Option<NonNull<u8>> {
        let p = self.alloc(size)?;
        // SAFETY: p is a fresh allocation of at least `size` bytes.
        unsafe { p.as_ptr().write_bytes(0, size) };
        Some(p)
    }

    /// Gives back a chunk or page run, taking the lock.
    ///
    /// Every bad pointer is refused with its own [`FreeError`], logged with
    /// the zone's name, and changes nothing.
    ///
    /// ```
    /// # use shmzone::{Pool, Region};
    /// # let region = Region::new(1 << 20)?;
    /// # // SAFETY: the region is ours, page-aligned and unused.
    /// # let pool = unsafe { Pool::init(region.base(), region.len(), "doc") }.unwrap();
    /// use shmzone::FreeError;
    /// let p = pool.alloc(64).unwrap().as_ptr();
    /// // SAFETY: p came from this pool and is not used again.
    /// unsafe {
    ///     pool.free(p).unwrap();
    ///     assert_eq!(pool.free(p), Err(FreeError::ChunkAlreadyFree));
    ///     assert_eq!(pool.free(p.add(1)), Err(FreeError::WrongChunk));
    /// }
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    ///
    /// # Safety
    /// If `p` came from this pool, it is not used after this call.
    ///
    /// # Errors
    /// See [`FreeError`].
    #[inline(always)]
    pub unsafe fn free(&self, p: *mut u8) -> Result<(), FreeError> {
        // The fast path (into the calling thread's cache) is inlined into
        // the caller; everything else is one call away.
        if self.cache_ok {
            if let (Some(slot), Ok((idx, off))) = (self.my_slot_fast(), self.locate(p)) {
                if let cache::Push::Done = self.cache_push(slot, idx, off) {
                    return Ok(());
                }
            }
        }
        // SAFETY: the caller's promise, passed on.
        unsafe { self.free_slow(p) }
    }

    /// # Safety
    /// As [`Pool::free`].
    #[inline(never)]
    unsafe fn free_slow(&self, p: *mut u8) -> Result<(), FreeError> {
        let quick = self.cache_off_quick();
        let r = match self.locate(p) {
            Ok((idx, off)) if quick => self.free_uncached(idx, off),
            Ok((idx, off)) => match self.my_slot_no_claim() {
                Some(slot) => match self.cache_push(slot, idx, off) {
                    cache::Push::Done => return Ok(()),
                    cache::Push::Full(c) => self.free_flush(slot, c, idx, off),
                    cache::Push::Twice(e) => Err(e),
                    cache::Push::No => self.free_uncached(idx, off),
                },
                None => self.free_uncached(idx, off),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.log_bad_free(e, p);
        }
        r
    }

    /// Frees the chunk or run at byte `off` of page `idx` through the lock.
    #[inline]
    fn free_uncached(&self, idx: u32, off: usize) -> Result<(), FreeError> {
        match self.lock_op(FREE_BUDGET) {
            Some(g) => {
                // SAFETY: `g` holds the lock until after this borrow ends.
                let r = unsafe { self.core() }.lite().free_at(idx, off);
                self.journal.commit();
                drop(g);
                r
            }
            None => Err(self.refused_free()),
        }
    }

    /// The page index and in-page offset of `p`, if it is in a data page.
    #[inline]
    fn locate(&self, p: *const u8) -> Result<(u32, usize), FreeError> {
        let off = (p as usize).wrapping_sub(self.data.as_ptr() as usize);
        if off >= self.data_len {
            return Err(FreeError::OutsidePool);
        }
        Ok(((off / SLAB_PAGE) as u32, off % SLAB_PAGE))
    }

    /// A snapshot of the counters, taken under the lock.
    ///
    /// ```
    /// # use shmzone::{Pool, Region};
    /// # let region = Region::new(1 << 20)?;
    /// # // SAFETY: the region is ours, page-aligned and unused.
    /// # let pool = unsafe { Pool::init(region.base(), region.len(), "doc") }.unwrap();
    /// let _p = pool.alloc(24).unwrap();
    /// let s = pool.stats();
    /// // 169 chunks of 24 bytes in a page, one more holds their bitmap.
    /// assert_eq!((s.classes[2].size, s.classes[2].used, s.classes[2].total), (24, 1, 169));
    /// assert_eq!(s.bytes_requested, 24);
    /// assert_eq!(s.pages_free, s.pages_total - 1);
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.lock().stats_locked()
    }

    /// Walks every page, list and bitmap under the lock.
    ///
    /// # Errors
    /// The first broken invariant.
    pub fn check(&self) -> Result<(), CheckError> {
        self.lock().check_locked()
    }

    /// Whether "no memory" is logged (nginx's `log_nomem`, on by default).
    /// Callers that handle failure themselves (LRU eviction) turn it off.
    pub fn set_log_nomem(&self, on: bool) {
        // SAFETY: an atomic in the header.
        unsafe { &*addr_of!((*self.hdr()).log_nomem) }.store(on as u32, Ordering::Relaxed);
    }

    /// nginx's `shpool->data`: the offset from [`Pool::base`] of the user's
    /// root structure, 0 for none.
    ///
    /// ```
    /// # use shmzone::{Pool, Region};
    /// # let region = Region::new(1 << 20)?;
    /// # // SAFETY: the region is ours, page-aligned and unused.
    /// # let pool = unsafe { Pool::init(region.base(), region.len(), "doc") }.unwrap();
    /// let p = pool.alloc(256).unwrap();
    /// pool.set_root(pool.offset_of(p.as_ptr()).unwrap());
    /// // Another process finds it again at its own address:
    /// assert_eq!(pool.ptr_at(pool.root()), Some(p));
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    pub fn root(&self) -> usize {
        // SAFETY: an atomic in the header.
        unsafe { &*addr_of!((*self.hdr()).root) }.load(Ordering::Acquire) as usize
    }

    /// Stores the root offset (see [`Pool::root`]). An offset outside the
    /// pool is refused with a logged error.
    pub fn set_root(&self, offset: usize) {
        if offset >= self.len {
            log::error!(
                "slab set_root(): offset {offset} outside of pool in zone \"{}\"",
                self.name()
            );
            return;
        }
        // SAFETY: an atomic in the header.
        unsafe { &*addr_of!((*self.hdr()).root) }.store(offset as u64, Ordering::Release);
    }

    /// The offset of `p` from [`Pool::base`], or `None` outside the pool.
    pub fn offset_of(&self, p: *const u8) -> Option<usize> {
        let off = (p as usize).wrapping_sub(self.base.as_ptr() as usize);
        (off < self.len).then_some(off)
    }

    /// The address of byte `offset` of the pool in this process, or `None`
    /// outside the pool.
    pub fn ptr_at(&self, offset: usize) -> Option<NonNull<u8>> {
        // wrapping_add: no pointer is formed outside the pool.
        (offset < self.len).then(|| {
            // SAFETY: offset < len, so base + offset is inside the pool,
            // hence non-null.
            unsafe { NonNull::new_unchecked(self.base.as_ptr().wrapping_add(offset)) }
        })
    }

    /// The biggest size one allocation can get now: the longest free run,
    /// or if there is none, the largest class with a free chunk. Gives back
    /// this thread's cache and slot, dead threads' caches and the classes'
    /// kept empty pages first (see [`Pool::trim`]).
    ///
    /// ```
    /// # use shmzone::{Pool, Region};
    /// # let region = Region::new(1 << 20)?;
    /// # // SAFETY: the region is ours, page-aligned and unused.
    /// # let pool = unsafe { Pool::init(region.base(), region.len(), "doc") }.unwrap();
    /// let all = pool.largest_alloc();
    /// let p = pool.alloc(all).unwrap();
    /// assert_eq!(pool.largest_alloc(), 0);
    /// // SAFETY: p came from this pool.
    /// unsafe { pool.free(p.as_ptr()) }.unwrap();
    /// assert_eq!(pool.largest_alloc(), all);
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    pub fn largest_alloc(&self) -> usize {
        self.release_cache();
        self.reclaim_caches();
        self.lock().largest_alloc_locked()
    }

    /// Gives back this thread's cache and slot (see
    /// [`Pool::release_cache`]), dead threads' caches (see
    /// [`Pool::reclaim_caches`]) and the empty page each class keeps for
    /// speed, so that the free pages coalesce; after everything was freed, the pool is then in
    /// its freshly formatted state.
    pub fn trim(&self) {
        self.release_cache();
        self.reclaim_caches();
        let g = self.lock();
        if !g.pool().is_fenced() && self.journal.fits(TRIM_BUDGET) {
            g.core().trim();
        }
    }

    /// Why a free could not even be tried: the pool is fenced, or the
    /// journal of the open section is short of room.
    #[cold]
    fn refused_free(&self) -> FreeError {
        if self.journal.is_fenced() {
            FreeError::Fenced
        } else {
            FreeError::JournalFull
        }
    }

    /// Re-initialises a pool in place: every allocation in it is
    /// forgotten, the pool is empty, its root is 0 and the fence (if any)
    /// is lifted. Name, size, lock and the journal's counters stay. For
    /// the master, to bring a fenced zone back once no process uses its
    /// old contents. The pool is fenced while it is rewritten, so a death
    /// half-way leaves it fenced, and calling `reinit` again finishes it.
    pub fn reinit(&self) {
        let g = self.lock();
        self.journal.discard();
        self.journal.set_fenced(true);
        self.forget_caches();
        // SAFETY: `g` holds the lock until after this borrow ends.
        unsafe { self.core() }.reformat();
        self.set_root(0);
        self.journal.set_fenced(false);
        log::warn!("zone \"{}\" re-initialised: empty", self.name());
        drop(g);
    }

    #[cold]
    fn log_nomem(&self, size: usize) {
        if self.journal.is_fenced() {
            if self.journal.first_fence_report() {
                log::error!(
                    "slab alloc({size}) refused: zone \"{}\" is fenced (inconsistent after a \
                     dead worker's recovery); re-initialise it with Zone::reinit",
                    self.name()
                );
            }
            return;
        }
        // SAFETY: an atomic in the header.
        if unsafe { &*addr_of!((*self.hdr()).log_nomem) }.load(Ordering::Relaxed) != 0 {
            log::error!(
                "slab alloc({size}) failed: no memory in zone \"{}\"",
                self.name()
            );
        }
    }

    #[cold]
    fn log_bad_free(&self, e: FreeError, p: *const u8) {
        log::error!("slab free({p:p}): {e} in zone \"{}\"", self.name());
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name())
            .field("base", &self.base)
            .field("len", &self.len)
            .field("pages", &self.npages)
            .finish()
    }
}
