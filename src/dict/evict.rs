//! Making room: list garbage first, then expired entries, then the least
//! recently used (a CLOCK over buckets); and the batch sweeps
//! (`flush_expired`, the reboot expiry).

use std::sync::atomic::{AtomicU32, Ordering};

use super::layout::bump;
use super::layout::{Entry, MAX_CHAIN};
use super::section::{Found, Sec, ALLOC_NEED, FINISH_NEED, FREE_NEED};
use super::{Dict, DictError};

/// The slab's block size for a request of `size` bytes (a power of two
/// from 8 up to half a page; 0 for page runs: no class to match).
fn size_class(size: usize) -> usize {
    if size > crate::SLAB_PAGE / 2 {
        0
    } else {
        size.max(8).next_power_of_two()
    }
}

/// The block size of a checked entry.
fn block_class(e: *const Entry) -> usize {
    // SAFETY: a checked entry, under the lock.
    let (k, v) = unsafe { ((*e).klen as usize, (*e).vlen as usize) };
    size_class(super::layout::entry_size(k, v))
}

/// The most entries one store evicts (shdict's 30).
pub(super) const MAX_EVICT: usize = 30;
/// Non-empty buckets the hand looks at for an expired entry once it has a
/// least-recently-used candidate.
const SAMPLE: usize = 8;
/// Garbage nodes each store frees.
const TIDY: usize = 4;
/// Buckets one sweep batch (one lock hold) looks at.
const SWEEP_BATCH: u32 = 256;

impl<'z> Dict<'z> {
    /// An allocation of `size` bytes, making room if needed: garbage list
    /// nodes are freed first, then (when `evict`) up to [`MAX_EVICT`]
    /// entries other than `protect`, expired ones first. Returns whether a
    /// live entry was evicted.
    pub(super) fn room(
        &self,
        s: &Sec<'_, '_, 'z>,
        size: usize,
        protect: *const Entry,
        evict: bool,
    ) -> Result<(*mut u8, bool), DictError> {
        if let Some(p) = s.try_alloc(size)? {
            return Ok((p, false));
        }
        if self.reclaim(s, usize::MAX)? > 0 {
            if let Some(p) = s.try_alloc(size)? {
                return Ok((p, false));
            }
        }
        let mut forcible = false;
        if evict {
            for _ in 0..MAX_EVICT {
                if s.g.journal_room()
                    < FREE_NEED + ALLOC_NEED + 2 * FINISH_NEED + self.max_fill(size)
                    || !s.can_free()
                {
                    break;
                }
                let Some(f) = self.victim(s, protect, size_class(size))? else {
                    break;
                };
                if s.live(f.e) {
                    forcible = true;
                    bump(&self.h().evictions);
                } else {
                    bump(&self.h().expirations);
                }
                s.unlink(&f)?;
                s.free_entry(f.e)?;
                if let Some(p) = s.try_alloc(size)? {
                    return Ok((p, forcible));
                }
            }
        }
        Err(DictError::NoMemory { forcible })
    }

    /// Journal room kept for saving what a new block of `size` bytes may
    /// overlap of the blocks freed to make room for it.
    fn max_fill(&self, size: usize) -> usize {
        size + 256
    }

    /// Frees up to `max` garbage list nodes while the journal has room;
    /// how many it freed.
    pub(super) fn reclaim(&self, s: &Sec<'_, '_, 'z>, max: usize) -> Result<usize, DictError> {
        let h = s.hdr();
        let mut n = 0;
        // SAFETY: header words, under the lock.
        while n < max && unsafe { (*h).garbage } != 0 {
            if s.g.journal_room() < FREE_NEED + 2 * FINISH_NEED || !s.can_free() {
                break;
            }
            // SAFETY: as above.
            let off8 = unsafe { (*h).garbage };
            let Some(node) = self.node_at(off8) else {
                return Err(self.corrupt("the garbage chain links outside the zone"));
            };
            s.save_garbage()?;
            // SAFETY: header words (saved above) and a checked node.
            unsafe {
                (*h).garbage = (*node).next;
                (*h).ngarbage = (*h).ngarbage.saturating_sub(1);
            }
            // SAFETY: a checked node.
            let len = std::mem::size_of::<super::layout::Node>() + unsafe { (*node).len } as usize;
            s.free(node.cast(), len)?;
            n += 1;
        }
        Ok(n)
    }

    /// The entry to evict next, as the hand finds it: the first expired
    /// entry among [`SAMPLE`] non-empty buckets (and more while no
    /// candidate is found), else a live entry of a bucket whose reference
    /// bit was clear (bits found set are cleared on the way: a second
    /// chance), preferring one whose block is of `class` (the size class
    /// the allocation needs: freeing it makes room for certain).
    fn victim(
        &self,
        s: &Sec<'_, '_, 'z>,
        protect: *const Entry,
        class: usize,
    ) -> Result<Option<Found>, DictError> {
        // SAFETY: a header word, under the lock.
        if unsafe { (*s.hdr()).entries } == 0 {
            return Ok(None);
        }
        let nb = self.mask as usize + 1;
        let hand = self.h().hand.load(Ordering::Relaxed);
        let (mut same, mut any): (Option<Found>, Option<Found>) = (None, None);
        let mut looked = 0;
        let mut step = 0;
        let mut expired = None;
        while step < 2 * nb {
            let b = hand.wrapping_add(step as u32) & self.mask;
            step += 1;
            let bucket = self.bucket(b);
            let referenced = bucket.referenced.load(Ordering::Relaxed) != 0;
            let mut link: *const AtomicU32 = &bucket.head;
            let mut nonempty = false;
            for _ in 0..MAX_CHAIN {
                // SAFETY: a bucket head or a checked entry's `next`.
                let off8 = unsafe { &*link }.load(Ordering::Relaxed);
                if off8 == 0 {
                    break;
                }
                let e = self
                    .entry_at(off8)
                    .ok_or_else(|| self.corrupt("a chain links outside the zone"))?;
                if !std::ptr::eq(e, protect) {
                    nonempty = true;
                    let f = Found { link, e, bucket: b };
                    if !s.live(e) {
                        expired = Some(f);
                        break;
                    }
                    if !referenced {
                        if same.is_none() && block_class(e) == class {
                            same = Some(f);
                        } else if any.is_none() {
                            any = Some(f);
                        }
                    }
                }
                // SAFETY: checked entry.
                link = unsafe { &(*e).next };
            }
            if expired.is_some() {
                break;
            }
            if !nonempty {
                continue;
            }
            if referenced {
                bucket.referenced.store(0, Ordering::Relaxed);
            }
            looked += 1;
            if (same.is_some() && looked >= SAMPLE) || (any.is_some() && looked >= 8 * SAMPLE) {
                break;
            }
        }
        let result = expired.or(same).or(any);
        let next = match &result {
            Some(f) => f.bucket.wrapping_add(1),
            None => hand.wrapping_add(step as u32),
        };
        self.h().hand.store(next, Ordering::Relaxed);
        Ok(result)
    }

    /// Frees a few garbage list nodes, if there are any: every store does
    /// this, so that deleted lists are given back steadily.
    #[inline]
    pub(super) fn tidy(&self, s: &Sec<'_, '_, 'z>) -> Result<(), DictError> {
        // SAFETY: a header word, under the lock.
        if unsafe { (*s.hdr()).ngarbage } != 0 {
            self.reclaim(s, TIDY)?;
        }
        Ok(())
    }

    /// Frees expired entries, up to `max` (0: all), a batch of buckets per
    /// lock hold, and every garbage list node; how many entries it freed.
    pub(super) fn flush_expired_inner(&self, max: usize) -> Result<usize, DictError> {
        // The garbage first, a journal's worth per lock hold.
        loop {
            let g = self.pool.lock();
            let s = self.section(&g)?;
            if self.reclaim(&s, usize::MAX)? == 0 {
                break;
            }
        }
        let max = if max == 0 { usize::MAX } else { max };
        let nb = self.mask as u64 + 1;
        let mut freed = 0;
        let mut b: u64 = 0;
        while b < nb && freed < max {
            let g = self.pool.lock();
            let s = self.section(&g)?;
            self.reclaim(&s, usize::MAX)?;
            let end = (b + SWEEP_BATCH as u64).min(nb);
            while b < end && freed < max {
                let (n, done) = self.sweep_bucket(&s, b as u32, max - freed)?;
                freed += n;
                if !done {
                    break; // journal full: commit, go on with this bucket
                }
                b += 1;
            }
        }
        Ok(freed)
    }

    /// Frees the expired entries of bucket `b` (up to `max`); how many, and
    /// whether the bucket is done.
    fn sweep_bucket(
        &self,
        s: &Sec<'_, '_, 'z>,
        b: u32,
        max: usize,
    ) -> Result<(usize, bool), DictError> {
        let mut n = 0;
        let mut link: *const AtomicU32 = &self.bucket(b).head;
        for _ in 0..MAX_CHAIN {
            // SAFETY: a bucket head or a checked entry's `next`.
            let off8 = unsafe { &*link }.load(Ordering::Relaxed);
            if off8 == 0 {
                return Ok((n, true));
            }
            let e = self
                .entry_at(off8)
                .ok_or_else(|| self.corrupt("a chain links outside the zone"))?;
            if !s.live(e) {
                if n >= max {
                    return Ok((n, true));
                }
                if s.g.journal_room() < FREE_NEED + 2 * FINISH_NEED
                    || s.pending_room() < 2
                    || !s.can_free()
                {
                    return Ok((n, false));
                }
                s.unlink(&Found { link, e, bucket: b })?;
                s.free_entry(e)?;
                bump(&self.h().expirations);
                n += 1;
                continue; // `link` now holds the next entry
            }
            // SAFETY: checked entry.
            link = unsafe { &(*e).next };
        }
        Err(self.corrupt("a chain longer than any table can hold"))
    }

    /// After a reboot: every entry with a TTL becomes expired (expiry 1),
    /// a batch of buckets per lock hold. Idempotent.
    pub(super) fn expire_all_ttls(&self) -> Result<(), DictError> {
        let nb = self.mask as u64 + 1;
        let mut b: u64 = 0;
        while b < nb {
            let g = self.pool.lock();
            let s = self.section(&g)?;
            let end = (b + 32).min(nb);
            while b < end {
                let mut link: *const AtomicU32 = &self.bucket(b as u32).head;
                for _ in 0..MAX_CHAIN {
                    // SAFETY: a bucket head or a checked entry's `next`.
                    let off8 = unsafe { &*link }.load(Ordering::Relaxed);
                    if off8 == 0 {
                        break;
                    }
                    let e = self
                        .entry_at(off8)
                        .ok_or_else(|| self.corrupt("a chain links outside the zone"))?;
                    // SAFETY: a checked entry's word, under the lock.
                    unsafe {
                        if (*e).expires > 1 {
                            s.touch(b as u32)?;
                            s.g.write(std::ptr::addr_of_mut!((*e).expires), 1)?;
                        }
                        link = &(*e).next;
                    }
                }
                b += 1;
            }
        }
        Ok(())
    }
}
