//! Making room: list garbage first, then expired entries, then the least
//! recently used (a CLOCK over buckets); and the batch sweeps
//! (`flush_expired`, the reboot expiry).

use std::sync::atomic::{AtomicU32, Ordering};

use super::layout::bump;
use super::layout::{Entry, MAX_CHAIN};
use super::section::{Found, Sec, ALLOC_NEED, FINISH_NEED, FREE_NEED};
use super::{Dict, DictError};

/// The most entries one store evicts (shdict's 30).
pub(super) const MAX_EVICT: usize = 30;
/// Non-empty buckets the hand looks at for an expired entry once it has a
/// least-recently-used candidate.
const SAMPLE: usize = 8;
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
                if s.g.journal_room() < FREE_NEED + ALLOC_NEED + 2 * FINISH_NEED {
                    break;
                }
                let Some(f) = self.victim(s, protect)? else {
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

    /// Frees up to `max` garbage list nodes while the journal has room;
    /// how many it freed.
    pub(super) fn reclaim(&self, s: &Sec<'_, '_, 'z>, max: usize) -> Result<usize, DictError> {
        let h = s.hdr();
        let mut n = 0;
        // SAFETY: header words, under the lock.
        while n < max && unsafe { (*h).garbage } != 0 {
            if s.g.journal_room() < FREE_NEED + 2 * FINISH_NEED {
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
            // SAFETY: `node` is an allocation of this pool, now unlinked.
            unsafe { s.g.free_locked(node.cast()) }
                .map_err(|_| self.corrupt("a garbage node that is not an allocation"))?;
            n += 1;
        }
        Ok(n)
    }

    /// The entry to evict next: the first expired one the hand meets in
    /// [`SAMPLE`] non-empty buckets after it has a candidate, else the
    /// candidate: the last entry of the first bucket whose reference bit
    /// was clear (bits found set are cleared on the way: a second chance).
    fn victim(
        &self,
        s: &Sec<'_, '_, 'z>,
        protect: *const Entry,
    ) -> Result<Option<Found>, DictError> {
        // SAFETY: a header word, under the lock.
        if unsafe { (*s.hdr()).entries } == 0 {
            return Ok(None);
        }
        let nb = self.mask as usize + 1;
        let hand = self.h().hand.load(Ordering::Relaxed);
        let mut cand: Option<Found> = None;
        let mut looked = 0;
        let mut step = 0;
        let mut result = None;
        while step < 2 * nb {
            let b = hand.wrapping_add(step as u32) & self.mask;
            step += 1;
            let bucket = self.bucket(b);
            let mut link: *const AtomicU32 = &bucket.head;
            let mut last: Option<Found> = None;
            let mut expired = None;
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
                    let f = Found { link, e, bucket: b };
                    if !s.live(e) {
                        expired = Some(f);
                        break;
                    }
                    last = Some(f);
                }
                // SAFETY: checked entry.
                link = unsafe { &(*e).next };
            }
            if expired.is_some() {
                result = expired;
                break;
            }
            if last.is_none() {
                continue;
            }
            looked += 1;
            if cand.is_none() {
                if bucket.referenced.load(Ordering::Relaxed) != 0 {
                    bucket.referenced.store(0, Ordering::Relaxed);
                } else {
                    cand = last;
                }
            }
            if cand.is_some() && looked >= SAMPLE {
                break;
            }
        }
        let result = result.or(cand);
        if let Some(f) = &result {
            self.h()
                .hand
                .store(f.bucket.wrapping_add(1), Ordering::Relaxed);
        } else {
            self.h()
                .hand
                .store(hand.wrapping_add(step as u32), Ordering::Relaxed);
        }
        Ok(result)
    }

    /// Frees expired entries, up to `max` (0: all), a batch of buckets per
    /// lock hold; how many it freed.
    pub(super) fn flush_expired_inner(&self, max: usize) -> Result<usize, DictError> {
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
                if s.g.journal_room() < FREE_NEED + 2 * FINISH_NEED || s.pending_room() < 2 {
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
