//! `PoolGuard`: the pool lock, held, and the allocator calls made under it.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::check::{self, CheckError};
use super::error::FreeError;
use super::layout::{
    class_of, class_size, pages_for, Desc, State, MAX_CHUNK, NCLASSES, NIL, SLAB_PAGE,
};
use super::page::Core;
use super::stats::PoolStats;
use super::Pool;
use crate::shmtx::ShmGuard;

/// The pool lock, held; the allocator's `_locked` calls are its methods.
///
/// The guard is not `Sync`: its `_locked` calls take `&self`, and must not
/// run in two threads at once.
pub struct PoolGuard<'a> {
    pool: &'a Pool,
    guard: ShmGuard<'a>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<'a> PoolGuard<'a> {
    pub(super) fn new(pool: &'a Pool, guard: ShmGuard<'a>) -> PoolGuard<'a> {
        PoolGuard {
            pool,
            guard,
            _not_sync: PhantomData,
        }
    }

    /// The pid of a holder that died holding the lock, if this guard took
    /// it over (see [`ShmGuard::recovered_from`]).
    pub fn recovered_from(&self) -> Option<u32> {
        self.guard.recovered_from()
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
        let off = if size <= MAX_CHUNK {
            self.core().alloc_chunk(class_of(size), size)?
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
    pub fn calloc_locked(&self, size: usize) -> Option<NonNull<u8>> {
        let p = self.alloc_locked(size)?;
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
            Ok((idx, off)) => self.core().free_at(idx, off),
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
        core.trim();
        let run = core.largest_run();
        if run > 0 {
            return run * SLAB_PAGE;
        }
        (0..NCLASSES)
            .rev()
            .find(|&c| core.st.classes[c].head != NIL)
            .map_or(0, class_size)
    }

    /// [`Pool::check`] with the lock already held.
    ///
    /// # Errors
    /// The first broken invariant.
    pub fn check_locked(&self) -> Result<(), CheckError> {
        let (st, d, pages) = self.view();
        check::check(st, d, pages)
    }

    /// [`Pool::stats`] with the lock already held (allocates nothing).
    pub fn stats_locked(&self) -> PoolStats {
        let (st, d, _) = self.view();
        let largest = Core::largest_run_of(st, d);
        PoolStats::from_state(st, d.len(), largest)
    }
}
