//! A snapshot of a pool's counters (what nginx exposes per slot, and more).

use super::cache::CacheStats;
use super::layout::{class_size, State, NCLASSES, SLAB_PAGE};

/// Counters of one size class, as nginx's `ngx_slab_stat_t`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// The chunk size of the class, in bytes.
    pub size: usize,
    /// Usable chunks in the pages the class holds.
    pub total: u64,
    /// Chunks in use by callers (not counting those in per-thread caches).
    pub used: u64,
    /// Chunks sitting in per-thread caches (allocated in the slab, free
    /// for their owner thread to hand out without the lock).
    pub cached: u64,
    /// Allocation requests (including failed ones).
    pub reqs: u64,
    /// Failed requests.
    pub fails: u64,
}

/// A snapshot of a pool's counters, taken under its lock.
///
/// `largest_free_run` against `pages_free` shows page fragmentation (nginx's
/// "no memory" while space looks free), `bytes_handed_out` against
/// `bytes_requested` shows the rounding to size classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Per size class, from 8 bytes up to [`MAX_CHUNK`](super::MAX_CHUNK)
    /// (7168): 8-byte steps up to 128, then eight classes per power of two
    /// (144, 160, ... 256, 288, 320, ...). Classes whose size does not divide
    /// a page well (1280, 3072, ...; and in pools of 8 MiB or more also
    /// 208, 320, 832, ...) cut slabs of several pages.
    pub classes: [ClassStats; NCLASSES],
    /// Data pages in the pool.
    pub pages_total: usize,
    /// Pages on no class and in no allocation.
    pub pages_free: usize,
    /// Pages in page-run allocations (requests above
    /// [`MAX_CHUNK`](super::MAX_CHUNK), and a multi-page class's requests
    /// when no new slab could be had).
    pub pages_in_runs: usize,
    /// The longest run of free pages (the largest allocation possible).
    pub largest_free_run: usize,
    /// Page-run requests (see `pages_in_runs`).
    pub page_reqs: u64,
    /// Those that failed.
    pub page_fails: u64,
    /// Sum of the sizes asked for by all successful allocations so far.
    pub bytes_requested: u64,
    /// Sum of the chunk and run sizes those allocations were given.
    pub bytes_handed_out: u64,
    /// Open sections of dead lock holders rolled back so far.
    pub rollbacks: u64,
    /// The pool is fenced: inconsistent after a recovery, allocations fail
    /// until it is re-initialised.
    pub fenced: bool,
    /// The per-thread caches (their chunks are counted in each class's
    /// `cached`; their runs and slot bodies are not in `pages_in_runs`,
    /// nor in [`PoolStats::bytes_in_use`]).
    pub cache: CacheStats,
}

impl PoolStats {
    pub(crate) fn from_state(st: &State, pages_total: usize, largest: usize) -> PoolStats {
        let mut classes = [ClassStats::default(); NCLASSES];
        for (c, out) in classes.iter_mut().enumerate() {
            let s = &st.classes[c];
            *out = ClassStats {
                size: class_size(c),
                total: s.total,
                used: s.used,
                cached: 0,
                reqs: s.reqs.saturating_sub(s.to_caches),
                fails: s.fails,
            };
        }
        PoolStats {
            classes,
            pages_total,
            pages_free: st.pfree as usize,
            pages_in_runs: st.run_pages as usize,
            largest_free_run: largest,
            page_reqs: st.page_reqs,
            page_fails: st.page_fails,
            bytes_requested: st.run_bytes_requested.wrapping_add(
                st.classes
                    .iter()
                    .map(|c| c.bytes_requested)
                    .fold(0u64, u64::wrapping_add),
            ),
            bytes_handed_out: st.run_bytes.wrapping_add(
                classes
                    .iter()
                    .map(|c| c.reqs.saturating_sub(c.fails).wrapping_mul(c.size as u64))
                    .fold(0u64, u64::wrapping_add),
            ),
            rollbacks: 0,
            fenced: false,
            cache: CacheStats::default(),
        }
    }

    /// Bytes in live chunks and page runs now.
    pub fn bytes_in_use(&self) -> usize {
        self.classes
            .iter()
            .map(|c| (c.used as usize).saturating_mul(c.size))
            .fold(0usize, usize::saturating_add)
            .saturating_add(self.pages_in_runs.saturating_mul(SLAB_PAGE))
    }
}
