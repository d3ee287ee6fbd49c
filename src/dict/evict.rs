//! Making room: list garbage first, then expired entries, then the least
//! recently used (a CLOCK over buckets); and the batch sweeps
//! (`flush_expired`, the reboot expiry).

use std::sync::atomic::{AtomicU32, Ordering};

use super::layout::bump;
use super::layout::{Entry, MAX_CHAIN};
use super::section::{Found, Sec, ALLOC_NEED, FINISH_NEED, FREE_NEED};
use super::{Dict, DictError};
use crate::journal::MAX_RECORD;

/// The slab's block size for a request of `size` bytes (its size class's
/// chunk size; 0 for page runs: no class to match).
fn size_class(size: usize) -> usize {
    if size > crate::slab::MAX_CHUNK {
        0
    } else {
        crate::slab::class_size(crate::slab::class_of(size))
    }
}

/// A block size's bit in a bucket's `classes` hint: bit `i % 7` for the
/// slab's size class `i` (classes 7 apart share a bit: neighbours never
/// do), bit 7 for page runs (block size 0).
pub(super) fn class_bit(class: usize) -> u8 {
    if class == 0 {
        0x80
    } else {
        1 << (crate::slab::class_of(class) % 7)
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

/// The block size of a checked entry (for the store that links it).
pub(super) fn entry_class_bit(klen: usize, vlen: usize) -> u8 {
    class_bit(size_class(super::layout::entry_size(klen, vlen)))
}
/// Non-empty buckets the hand looks at for an expired entry once it has a
/// least-recently-used candidate.
const SAMPLE: usize = 8;
/// Non-empty buckets the hand looks at for an entry of the needed size
/// class before settling for another one (and then emptying its page).
const LONG_SCAN: usize = 1024;
/// Garbage nodes each store frees.
const TIDY: usize = 4;
/// Buckets one sweep batch (one lock hold) looks at.
const SWEEP_BATCH: u32 = 256;

impl<'z> Dict<'z> {
    /// An allocation of `size` bytes, making room if needed: garbage list
    /// nodes are freed first, then (when `evict`) up to [`MAX_EVICT`]
    /// entries other than `protect`, expired ones first. Returns whether a
    /// live entry was evicted.
    ///
    /// Freeing to make room stops while the section's journal still holds
    /// what the rest of the operation needs: the allocation, saving what
    /// the new block overlaps of the blocks freed ([`Dict::max_fill`]),
    /// the records that finish it, and `later` bytes for the steps after
    /// it (a new list's first node). Past that it is `NoMemory`, never
    /// `TooBigForOneSection` half-way through.
    pub(super) fn room(
        &self,
        s: &Sec<'_, '_, 'z>,
        size: usize,
        protect: *const Entry,
        evict: bool,
        later: usize,
    ) -> Result<(*mut u8, bool), DictError> {
        if let Some(p) = s.try_alloc(size)? {
            return Ok((p, false));
        }
        let keep = Self::room_need(size) + later;
        if self.reclaim(s, usize::MAX, keep)? > 0 {
            if let Some(p) = s.try_alloc(size)? {
                return Ok((p, false));
            }
        }
        let mut forcible = false;
        let mut evicted = 0;
        if evict {
            for _ in 0..MAX_EVICT {
                if s.g.journal_room() < FREE_NEED + keep || !s.can_free() {
                    break;
                }
                let class = size_class(size);
                let Some(f) = self.victim(s, protect, class)? else {
                    break;
                };

                let other = block_class(f.e);
                // The victim's slab, before freeing it may give the slab back.
                let slab = if other != class && other != 0 {
                    s.g.slab_chunks_locked(f.e.cast())
                } else {
                    None
                };
                forcible |= self.evict_one(s, &f)?;
                evicted += 1;
                if let Some(p) = s.try_alloc(size)? {
                    return Ok((p, forcible));
                }
                if let Some(slab) = slab {
                    // No block of the needed class was found to evict: empty
                    // the victim's slab instead, so that its pages can be
                    // reused for any class.
                    let (n, f2) = self.evict_slab(s, slab, protect, MAX_EVICT - evicted, keep)?;
                    evicted += n;
                    forcible |= f2;
                    if n > 0 {
                        if let Some(p) = s.try_alloc(size)? {
                            return Ok((p, forcible));
                        }
                    }
                }
                if evicted >= MAX_EVICT {
                    break;
                }
            }
        }
        Err(DictError::NoMemory { forcible })
    }

    /// Unlinks and frees one victim; whether it was live.
    fn evict_one(&self, s: &Sec<'_, '_, 'z>, f: &Found) -> Result<bool, DictError> {
        let live = s.live(f.e);
        if live {
            bump(&self.h().evictions);
        } else {
            bump(&self.h().expirations);
        }
        s.unlink(f)?;
        s.free_entry(f.e)?;
        Ok(live)
    }

    /// Evicts the entries in a slab (its first chunk's address, chunk
    /// size, chunk count, as `PoolGuard::slab_chunks_locked` gives), at
    /// most `max` (while the journal keeps `keep` bytes beyond a free):
    /// each chunk start that holds an entry the table links there is one.
    /// How many, and whether a live one was among them.
    fn evict_slab(
        &self,
        s: &Sec<'_, '_, 'z>,
        (page, class, chunks): (usize, usize, usize),
        protect: *const Entry,
        max: usize,
        keep: usize,
    ) -> Result<(usize, bool), DictError> {
        let (mut n, mut forcible) = (0, false);
        for slot in (0..chunks).map(|k| k * class) {
            if n >= max
                || !s.can_free()
                || s.pending_room() < 2
                || s.g.journal_room() < FREE_NEED + keep
            {
                break;
            }
            let p = page + slot;
            if p < self.base as usize || p >= self.base as usize + self.len {
                break;
            }
            let Some(e) = self.entry_at(self.off8(p as *const u8)) else {
                continue;
            };
            if std::ptr::eq(e, protect) {
                continue;
            }
            // SAFETY: entry_at checked that the header and key lie inside
            // the zone; whatever they hold, find() only compares them.
            let (h, key) = unsafe {
                (
                    (*e).hash,
                    std::slice::from_raw_parts(
                        e.cast::<u8>().add(super::layout::value_at(0)),
                        (*e).klen as usize,
                    ),
                )
            };
            if key.is_empty() {
                continue;
            }
            let key = key.to_vec();
            match s.find(h, &key)? {
                Some(f) if std::ptr::eq(f.e, e) => {
                    forcible |= self.evict_one(s, &f)?;
                    n += 1;
                }
                _ => {}
            }
        }
        Ok((n, forcible))
    }

    /// Journal bytes that saving what a new block of `size` bytes overlaps
    /// of blocks freed earlier in the section may take: [`Sec::fill`]
    /// saves one span inside the block, in records of at most
    /// [`MAX_RECORD`] bytes, each with a header word and padding to a word.
    pub(super) fn max_fill(size: usize) -> usize {
        size + 15 * size.div_ceil(MAX_RECORD).max(1)
    }

    /// Journal bytes an allocation of `size` bytes by [`Dict::room`] needs
    /// kept after the frees that make room for it: the allocation, the
    /// fill, the finishing records.
    pub(super) fn room_need(size: usize) -> usize {
        ALLOC_NEED + 2 * FINISH_NEED + Self::max_fill(size)
    }

    /// Journal bytes a store of a `size`-byte block may take after its
    /// start: an allocation tried before the old entry is freed, the free,
    /// a second allocation, the fill and the finishing records.
    pub(super) fn store_need(size: usize) -> usize {
        2 * ALLOC_NEED + FREE_NEED + 3 * FINISH_NEED + Self::max_fill(size)
    }

    /// Frees up to `max` garbage list nodes while the journal keeps `keep`
    /// bytes beyond a free; how many it freed.
    pub(super) fn reclaim(
        &self,
        s: &Sec<'_, '_, 'z>,
        max: usize,
        keep: usize,
    ) -> Result<usize, DictError> {
        let h = s.hdr();
        let mut n = 0;
        // SAFETY: header words, under the lock.
        while n < max && unsafe { (*h).garbage } != 0 {
            if s.g.journal_room() < FREE_NEED + keep || !s.can_free() {
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
        // Candidates: of the needed class in a bucket whose bit was clear,
        // of the needed class in a recently used bucket, and of another
        // class (the largest seen: its page has the fewest blocks to empty).
        let (mut same, mut same_used, mut any): (Option<Found>, Option<Found>, Option<Found>) =
            (None, None, None);
        let mut looked = 0;
        let mut step = 0;
        let mut expired = None;
        while step < 2 * nb {
            let b = hand.wrapping_add(step as u32) & self.mask;
            step += 1;
            let bucket = self.bucket(b);
            if bucket.head.load(Ordering::Relaxed) == 0 {
                continue;
            }
            // Once there is a fallback, a bucket without a block of the
            // needed class is passed without reading its entries.
            if (any.is_some() || same_used.is_some())
                && bucket.classes.load(Ordering::Relaxed) & class_bit(class) == 0
            {
                continue;
            }
            let referenced = bucket.referenced.load(Ordering::Relaxed) != 0;
            let mut link: *const AtomicU32 = &bucket.head;
            let mut nonempty = false;
            let mut mask = 0u8;
            for _ in 0..MAX_CHAIN {
                // SAFETY: a bucket head or a checked entry's `next`.
                let off8 = unsafe { &*link }.load(Ordering::Relaxed);
                if off8 == 0 {
                    break;
                }
                let e = self
                    .entry_at(off8)
                    .ok_or_else(|| self.corrupt("a chain links outside the zone"))?;
                mask |= class_bit(block_class(e));
                if !std::ptr::eq(e, protect) {
                    nonempty = true;
                    let f = Found { link, e, bucket: b };
                    if !s.live(e) {
                        expired = Some(f);
                        break;
                    }
                    let c = block_class(e);
                    // Stores link new entries at the head of the chain: of
                    // a bucket's candidates the last is the oldest, so a
                    // later one in the same bucket replaces an earlier one.
                    if c == class {
                        if !referenced && same.is_none_or(|x| x.bucket == b) {
                            same = Some(f);
                        } else if same_used.is_none_or(|x| x.bucket == b) {
                            same_used = Some(f);
                        }
                    } else if !referenced && any.is_none_or(|a| block_class(a.e) < c) {
                        any = Some(f);
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
            bucket.classes.store(mask, Ordering::Relaxed);
            if referenced {
                bucket.referenced.store(0, Ordering::Relaxed);
            }
            looked += 1;
            if (same.is_some() && looked >= SAMPLE)
                || ((same_used.is_some() || any.is_some()) && looked >= LONG_SCAN)
            {
                break;
            }
        }
        let result = expired.or(same).or(same_used).or(any);
        let next = match &result {
            Some(f) => f.bucket.wrapping_add(1),
            None => hand.wrapping_add(step as u32),
        };
        self.h().hand.store(next, Ordering::Relaxed);
        Ok(result)
    }

    /// Frees a few garbage list nodes, if there are any: every store does
    /// this, so that deleted lists are given back steadily. It keeps
    /// `need` journal bytes for the operation that follows.
    #[inline]
    pub(super) fn tidy(&self, s: &Sec<'_, '_, 'z>, need: usize) -> Result<(), DictError> {
        // SAFETY: a header word, under the lock.
        if unsafe { (*s.hdr()).ngarbage } != 0 {
            self.reclaim(s, TIDY, need)?;
        }
        Ok(())
    }

    /// Frees every garbage list node, a journal's worth per lock hold; how
    /// many. Each hold frees at least one node or ends the loop, and a
    /// chain that leads back to a node freed already is an error (the
    /// free is refused), so it ends.
    pub(super) fn collect_garbage(&self) -> Result<usize, DictError> {
        let mut n = 0;
        loop {
            let g = self.pool.lock();
            let s = self.section(&g)?;
            match self.reclaim(&s, usize::MAX, 2 * FINISH_NEED)? {
                0 => return Ok(n),
                k => n += k,
            }
        }
    }

    /// Runs a store (`op(first)`, `first` true on the first try). When it
    /// found no memory while deleted lists' nodes still held some, those
    /// are all given back ([`Dict::collect_garbage`], each lock hold its
    /// own section: a store's section could free only a journal's worth,
    /// and undoes it when the store fails) and the store is tried once
    /// more.
    pub(super) fn after_gc<T>(
        &self,
        mut op: impl FnMut(bool) -> Result<T, DictError>,
    ) -> Result<T, DictError> {
        match op(true) {
            Err(DictError::NoMemory { .. }) if self.collect_garbage()? > 0 => op(false),
            r => r,
        }
    }

    /// Frees expired entries, up to `max` (0: all), a batch of buckets per
    /// lock hold, and every garbage list node; how many entries it freed.
    pub(super) fn flush_expired_inner(&self, max: usize) -> Result<usize, DictError> {
        self.collect_garbage()?;
        let max = if max == 0 { usize::MAX } else { max };
        let nb = self.mask as u64 + 1;
        let mut freed = 0;
        let mut b: u64 = 0;
        while b < nb && freed < max {
            let g = self.pool.lock();
            let s = self.section(&g)?;
            self.reclaim(&s, usize::MAX, 2 * FINISH_NEED)?;
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
