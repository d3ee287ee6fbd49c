//! `PoolGuard`: the pool lock, held, and the allocator calls made under it.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::check::{self, CheckError};
use super::error::FreeError;
use super::layout::{
    class_of, class_size, pages_for, Desc, State, MAX_CHUNK, NCLASSES, NIL, SLAB_PAGE,
};
use super::page::{Core, ALLOC_BUDGET, FREE_BUDGET, TRIM_BUDGET};
use super::stats::PoolStats;
use super::Pool;
use crate::journal::{JournalFull, Rollback, MAX_RECORD};
use crate::shmtx::ShmGuard;

/// The pool lock, held: a **crash-atomic section**. The allocator's
/// `_locked` calls are its methods, and so are the calls that make the
/// caller's own writes to shared memory crash-atomic.
///
/// Every write made through [`write`](Self::write) (or after
/// [`save`](Self::save)) and every `_locked` allocation or free is
/// recorded in the zone's undo journal; dropping the guard commits them
/// all with one store. If this process dies before that (SIGKILL at any
/// instruction), the next process to take the lock undoes the whole
/// section: the zone is exactly as it was before the lock was taken.
/// Memory allocated in the section needs no recording (its allocation is
/// undone, so its bytes no longer matter) **unless the section freed it
/// first**: a block freed and allocated again within one section is
/// revived by a rollback, so save its bytes ([`save`](Self::save)) before
/// writing them (`calloc_locked` does so itself). Memory that was live
/// before the section must be changed only through the guard.
///
/// ```
/// # let zones = shmzone::Zones::builder().zone("z", 64 << 10).build()?;
/// let zone = zones.get("z").unwrap();
/// let counters = zone.alloc_value([0u64; 2]).unwrap().as_ptr();
/// {
///     let g = zone.lock();
///     // Both or neither, whatever happens to this process.
///     // SAFETY: `counters` is a live [u64; 2] inside the zone.
///     unsafe {
///         g.write(&mut (*counters)[0], 1)?;
///         g.write(&mut (*counters)[1], 1)?;
///     }
/// } // committed here
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The guard is not `Sync`: its `_locked` calls take `&self`, and must not
/// run in two threads at once.
pub struct PoolGuard<'a> {
    pool: &'a Pool,
    guard: ShmGuard<'a>,
    rolled: Option<Rollback>,
    /// This section freed something: memory it allocates may be memory
    /// that a rollback revives.
    freed: Cell<bool>,
    _not_sync: PhantomData<Cell<()>>,
}

impl Drop for PoolGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Commit only if this process still holds the lock (a guard
        // inherited across fork, or one whose lock was force-unlocked,
        // must not touch another holder's journal). The lock is released
        // after this, by the ShmGuard field.
        if self.guard.mutex().holder() == Some(crate::os::process::current_pid()) {
            self.pool.journal.commit();
        }
    }
}

impl<'a> PoolGuard<'a> {
    pub(super) fn new(
        pool: &'a Pool,
        guard: ShmGuard<'a>,
        rolled: Option<Rollback>,
    ) -> PoolGuard<'a> {
        PoolGuard {
            pool,
            guard,
            rolled,
            freed: Cell::new(false),
            _not_sync: PhantomData,
        }
    }

    /// The pid of a holder that died holding the lock, if this guard took
    /// it over (see [`ShmGuard::recovered_from`]). Its open section, if
    /// any, was rolled back before this guard was handed out
    /// ([`rolled_back`](Self::rolled_back) says what was undone).
    pub fn recovered_from(&self) -> Option<u32> {
        self.guard.recovered_from()
    }

    /// What taking this lock undid: the open section of a holder that
    /// died, rolled back as a whole. `None` if there was none.
    pub fn rolled_back(&self) -> Option<Rollback> {
        self.rolled
    }

    /// Records the `len` bytes at `dst` as they are now in the section's
    /// undo journal; the caller may then write them directly. Records
    /// longer than the journal takes in one go are split.
    ///
    /// # Safety
    /// `dst..dst+len` is readable memory inside this pool that only holders
    /// of this lock write.
    ///
    /// # Errors
    /// [`JournalFull`] if the journal has no room for it (nothing was
    /// recorded, or only a prefix of a split record, which is harmless:
    /// do not write the bytes).
    pub unsafe fn save(&self, dst: *const u8, len: usize) -> Result<(), JournalFull> {
        let mut at = 0;
        while at < len {
            let n = (len - at).min(MAX_RECORD);
            // SAFETY: the caller's promise; `at + n <= len`.
            unsafe { self.pool.journal.record(dst.add(at), n) }?;
            at += n;
        }
        Ok(())
    }

    /// Writes `value` at `dst` crash-atomically: records the old bytes,
    /// then writes (see the type's docs).
    ///
    /// # Safety
    /// `dst` is valid for writes of a `T`, aligned, inside this pool, and
    /// only written by holders of this lock.
    ///
    /// # Errors
    /// [`JournalFull`]: nothing was written.
    #[inline]
    pub unsafe fn write<T: Copy>(&self, dst: *mut T, value: T) -> Result<(), JournalFull> {
        // SAFETY: the caller's promise.
        unsafe {
            self.save(dst.cast(), size_of::<T>())?;
            dst.write(value);
        }
        Ok(())
    }

    /// Copies `src` to `dst` crash-atomically (as [`write`](Self::write)).
    ///
    /// # Safety
    /// As [`write`](Self::write), for `src.len()` bytes.
    ///
    /// # Errors
    /// [`JournalFull`]: nothing was written.
    pub unsafe fn write_bytes(&self, dst: *mut u8, src: &[u8]) -> Result<(), JournalFull> {
        // SAFETY: the caller's promise.
        unsafe {
            self.save(dst, src.len())?;
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
        }
        Ok(())
    }

    /// Bytes left in this section's undo journal. Each allocator call
    /// needs room for its worst case: about 1.3 KiB for an allocation,
    /// 1 KiB for a free.
    pub fn journal_room(&self) -> usize {
        self.pool.journal.room()
    }

    /// Where the section is now, to undo back to with
    /// [`rollback_to`](Self::rollback_to).
    pub fn savepoint(&self) -> u32 {
        self.pool.journal.savepoint()
    }

    /// Undoes everything the section did since `savepoint` (writes,
    /// allocations and frees), newest first.
    ///
    /// # Safety
    /// `savepoint` came from [`savepoint`](Self::savepoint) on this guard;
    /// no pointer to memory allocated since then is used afterwards.
    pub unsafe fn rollback_to(&self, savepoint: u32) -> Rollback {
        // SAFETY: we hold the lock; the caller's promise on the savepoint.
        let r = unsafe { self.pool.journal.rollback_to(savepoint) };
        // The allocator does not record its counters (see `slab::page`):
        // recompute them from the pages the rollback restored.
        if r.records > 0 {
            let mut core = self.core();
            core.recount(self.pool.journal_ref());
        }
        r
    }

    /// The pool this guard locks.
    pub fn pool(&self) -> &Pool {
        self.pool
    }

    /// The allocator state, borrowed mutably. Callers use it within one
    /// method and never hold two at once (no callbacks run meanwhile).
    #[inline]
    pub(super) fn core(&self) -> Core<'_> {
        // SAFETY: this guard holds the lock; it is not Sync and each method
        // makes one Core and drops it before returning.
        unsafe { self.pool.core() }
    }

    #[inline]
    pub(super) fn view(&self) -> (&State, &[Desc], *const u8) {
        // SAFETY: this guard holds the lock; read-only.
        unsafe { self.pool.view() }
    }

    #[inline]
    pub(super) fn alloc_quiet(&self, size: usize) -> Option<NonNull<u8>> {
        if self.pool.is_fenced() {
            return None;
        }
        if !self.pool.journal.fits(ALLOC_BUDGET) {
            self.pool.journal_short(ALLOC_BUDGET);
            return None;
        }
        let off = if size <= MAX_CHUNK {
            self.core().alloc_class(class_of(size), size)?
        } else {
            let npages = self.pool.npages as usize;
            self.core()
                .alloc_run_checked(pages_for(size), size, npages)?
        };
        Some(self.pool.data_ptr(off))
    }

    /// [`Pool::alloc`] with the lock already held. Logs "no memory" (under
    /// the lock, as nginx) unless `log_nomem` is off.
    pub fn alloc_locked(&self, size: usize) -> Option<NonNull<u8>> {
        let r = self.alloc_quiet(size);
        if r.is_none() {
            self.pool.log_nomem(size);
        }
        r
    }

    /// [`Pool::calloc`] with the lock already held.
    ///
    /// When this section freed memory before, the block may be memory a
    /// rollback revives, so its old bytes are saved before they are zeroed
    /// (`None` if the journal has no room for them: the block is given
    /// back).
    pub fn calloc_locked(&self, size: usize) -> Option<NonNull<u8>> {
        let p = self.alloc_locked(size)?;
        // SAFETY: p is a fresh allocation of at least `size` bytes inside
        // this pool.
        if self.freed.get() && unsafe { self.save(p.as_ptr(), size) }.is_err() {
            // SAFETY: allocated just above, not used after.
            let _ = unsafe { self.free_locked(p.as_ptr()) };
            return None;
        }
        // SAFETY: p is a fresh allocation of at least `size` bytes.
        unsafe { p.as_ptr().write_bytes(0, size) };
        Some(p)
    }

    /// [`Pool::free`] with the lock already held (a refused free is logged
    /// under the lock, as nginx does).
    ///
    /// # Safety
    /// As [`Pool::free`].
    ///
    /// # Errors
    /// See [`FreeError`].
    pub unsafe fn free_locked(&self, p: *mut u8) -> Result<(), FreeError> {
        let r = match self.pool.locate(p) {
            Ok(_) if self.pool.is_fenced() || !self.pool.journal.fits(FREE_BUDGET) => {
                Err(self.pool.refused_free())
            }
            Ok((idx, off)) => {
                self.freed.set(true);
                self.core().free_at(idx, off)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.pool.log_bad_free(e, p);
        }
        r
    }

    /// [`Pool::largest_alloc`] with the lock already held.
    pub fn largest_alloc_locked(&self) -> usize {
        let mut core = self.core();
        if !self.pool.is_fenced() && core.fits(TRIM_BUDGET) {
            core.trim();
        }
        let run = core.largest_run();
        if run > 0 {
            return run * SLAB_PAGE;
        }
        (0..NCLASSES)
            .rev()
            .find(|&c| core.st.classes[c].head != NIL)
            .map_or(0, class_size)
    }

    /// The chunks of the slab holding chunk `p` (a live chunk of a size
    /// class, lock held): the address of its first chunk, the chunk size
    /// and the chunk count (in-page bitmap chunks included). `None` if `p`
    /// is not in a slab page. For the dictionary's eviction, which empties
    /// the victim's slab when no block of the needed class was found.
    pub(crate) fn slab_chunks_locked(&self, p: *const u8) -> Option<(usize, usize, usize)> {
        let (idx, _) = self.pool.locate(p).ok()?;
        let (_, d, pages) = self.view();
        let q = d.get(idx as usize)?;
        let first = if q.prev.inner_class().is_some() {
            q.prev.idx()
        } else {
            idx
        };
        let c = d.get(first as usize)?.prev.class()?;
        let info = &self.pool.cls[c];
        if first > idx || idx - first >= info.pages {
            return None;
        }
        let start = pages as usize + first as usize * SLAB_PAGE;
        Some((start, info.size as usize, info.chunks as usize))
    }

    /// [`Pool::check`] with the lock already held.
    ///
    /// # Errors
    /// The first broken invariant.
    pub fn check_locked(&self) -> Result<(), CheckError> {
        let (st, d, pages) = self.view();
        check::check(st, d, pages)?;
        self.pool.check_caches().map_err(CheckError::cache)
    }

    /// [`Pool::stats`] with the lock already held (allocates nothing).
    pub fn stats_locked(&self) -> PoolStats {
        let (st, d, _) = self.view();
        let largest = Core::largest_run_of(st, d);
        let mut s = PoolStats::from_state(st, d.len(), largest);
        let (chunks, reqs, bytes, cache) = self.pool.cached_per_class();
        for c in NCLASSES..chunks.len() {
            // Cached page runs: the runs handed out from caches are
            // requests; the runs sitting in them are no user's.
            s.page_reqs = s.page_reqs.saturating_add(reqs[c]);
            s.bytes_requested = s.bytes_requested.wrapping_add(bytes[c]);
            s.bytes_handed_out = s
                .bytes_handed_out
                .wrapping_add(reqs[c].wrapping_mul(((c - NCLASSES + 1) * SLAB_PAGE) as u64));
        }
        for (c, cs) in s.classes.iter_mut().enumerate() {
            cs.cached = chunks[c];
            cs.used = cs.used.saturating_sub(chunks[c]);
            cs.reqs = cs.reqs.saturating_add(reqs[c]);
            s.bytes_requested = s.bytes_requested.wrapping_add(bytes[c]);
            s.bytes_handed_out = s
                .bytes_handed_out
                .wrapping_add(reqs[c].wrapping_mul(cs.size as u64));
        }
        // Users' runs only: the caches' runs and slot bodies are theirs.
        s.pages_in_runs = s
            .pages_in_runs
            .saturating_sub(cache.pages + cache.run_pages);
        s.cache = cache;
        let j = self.pool.journal.stats();
        s.rollbacks = j.rollbacks;
        s.fenced = j.fenced;
        s
    }
}
