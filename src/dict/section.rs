//! A locked section of the dictionary: the zone lock held, every write
//! journaled (crash-atomic), stripes made odd before a change and left odd
//! for the next holder to publish.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use super::layout::{
    entry_size, value_at, Bucket, Entry, ListHead, Node, K_LIST, MAX_CHAIN, MAX_KEY, MAX_PENDING,
};
use super::{Dict, DictError};
use crate::journal::{JournalFull, MAX_RECORD};
use crate::os::clock;
use crate::slab::PoolGuard;

/// Journal bytes an allocation may need (the pool's worst case, 160 words,
/// and a margin).
pub(super) const ALLOC_NEED: usize = 160 * 8 + 64;
/// Journal bytes a free may need (128 words and a margin).
pub(super) const FREE_NEED: usize = 128 * 8 + 64;
/// Journal bytes kept for the records that finish an operation (links,
/// stripes, totals, list heads).
pub(super) const FINISH_NEED: usize = 512;

impl From<JournalFull> for DictError {
    fn from(_: JournalFull) -> DictError {
        DictError::TooBigForOneSection
    }
}

/// Blocks one section may free and still reuse (see [`Sec::free`]).
pub(super) const MAX_FREED: usize = 64;

/// An entry found by a walk: the link word that points at it (a bucket
/// head or the previous entry's `next`), the entry, its bucket.
#[derive(Clone, Copy)]
pub(super) struct Found {
    pub link: *const AtomicU32,
    pub e: *mut Entry,
    pub bucket: u32,
}

/// The lock, held, with the dictionary's section bookkeeping.
pub(super) struct Sec<'g, 'd, 'z> {
    pub d: &'d Dict<'z>,
    pub g: &'g PoolGuard<'d>,
    now: Cell<u64>,
    np_saved: Cell<bool>,
    totals_saved: Cell<bool>,
    garbage_saved: Cell<bool>,
    /// Blocks freed in this section: (offset, meaningful length). A
    /// rollback makes them live again with their old bytes, so memory
    /// allocated later in the section that overlaps one is not fresh: its
    /// old bytes are saved before it is written ([`Sec::fill`]).
    freed: Cell<[(u32, u32); MAX_FREED]>,
    nfreed: Cell<usize>,
}

impl<'z> Dict<'z> {
    /// A section under the lock `g` (taken by the caller with
    /// `self.pool.lock()`, so that the guard is built in place): publishes
    /// what the previous holder left pending.
    #[inline(always)]
    pub(super) fn section<'g, 'd>(
        &'d self,
        g: &'g PoolGuard<'d>,
    ) -> Result<Sec<'g, 'd, 'z>, DictError> {
        if self.pool.is_fenced() {
            return Err(self.corrupt("the zone is fenced off after a failed recovery"));
        }
        let s = Sec {
            d: self,
            g,
            now: Cell::new(0),
            np_saved: Cell::new(false),
            totals_saved: Cell::new(false),
            garbage_saved: Cell::new(false),
            freed: Cell::new([(0, 0); MAX_FREED]),
            nfreed: Cell::new(0),
        };
        s.publish_pending();
        Ok(s)
    }

    #[inline]
    pub(super) fn bucket(&self, b: u32) -> &Bucket {
        // SAFETY: `b & mask` < nbuckets; the array was checked at open.
        unsafe { &*self.buckets.add((b & self.mask) as usize) }
    }

    #[inline]
    pub(super) fn stripe(&self, b: u32) -> &AtomicU64 {
        // SAFETY: `b & smask` < nstripes; the array was checked at open.
        unsafe { &*self.stripes.add((b & self.smask) as usize) }
    }

    /// The address of the entry at `off8`, if a whole entry header fits
    /// there and its key and value lengths fit in the zone.
    #[inline]
    pub(super) fn entry_at(&self, off8: u32) -> Option<*mut Entry> {
        let off = off8 as usize * 8;
        if off8 == 0 || off + std::mem::size_of::<Entry>() > self.len {
            return None;
        }
        // SAFETY: inside the zone (checked just above), 8-aligned.
        let e = unsafe { self.base.add(off) }.cast::<Entry>();
        // SAFETY: the header is inside the zone; a racing writer may change
        // these words (volatile reads; checked below before any use).
        let (klen, vlen) = unsafe {
            (
                std::ptr::addr_of!((*e).klen).read_volatile() as usize,
                std::ptr::addr_of!((*e).vlen).read_volatile() as usize,
            )
        };
        (klen <= MAX_KEY && value_at(klen) + vlen <= self.len - off).then_some(e)
    }

    /// The off8 of a pointer into the zone.
    #[inline]
    pub(super) fn off8(&self, p: *const u8) -> u32 {
        ((p as usize - self.base as usize) / 8) as u32
    }

    /// The address of a list node at `off8`, checked like `entry_at`.
    pub(super) fn node_at(&self, off8: u32) -> Option<*mut Node> {
        let off = off8 as usize * 8;
        if off8 == 0 || off + std::mem::size_of::<Node>() > self.len {
            return None;
        }
        // SAFETY: inside the zone, aligned.
        let n = unsafe { self.base.add(off) }.cast::<Node>();
        // SAFETY: as above; only read under the lock.
        let len = unsafe { (*n).len } as usize;
        (std::mem::size_of::<Node>() + len <= self.len - off).then_some(n)
    }
}

impl<'g, 'd, 'z> Sec<'g, 'd, 'z> {
    /// Milliseconds on the shared clock, read once per section.
    #[inline]
    pub fn now(&self) -> u64 {
        let n = self.now.get();
        if n != 0 {
            return n;
        }
        let n = clock::now_ms().max(1);
        self.now.set(n);
        n
    }

    #[inline]
    pub fn hdr(&self) -> *mut super::layout::Header {
        self.d.hdr
    }

    /// Makes the stripes that committed sections left odd even again.
    #[inline]
    fn publish_pending(&self) {
        let h = self.hdr();
        let d = self.d.h();
        let gp = d.gen_pending.load(Ordering::Relaxed);
        if gp != 0 {
            // Not journaled (as below): storing the same value twice is
            // harmless.
            d.gen.store(gp, Ordering::Release);
            d.gen_pending.store(0, Ordering::Release);
        }
        // SAFETY: header words, under the lock.
        let n = unsafe { (*h).npending } as usize;
        if n == 0 {
            return;
        }
        for i in 0..n.min(MAX_PENDING) {
            // SAFETY: as above; i < MAX_PENDING.
            let s = self.d.stripe(unsafe { (*h).pending[i] });
            let v = s.load(Ordering::Relaxed);
            if v & 1 == 1 {
                s.store(v.wrapping_add(1), Ordering::Release);
            }
        }
        // Not journaled: a death before this store leaves the list to be
        // published again, which changes nothing (only odd stripes move).
        // SAFETY: as above.
        unsafe { (*h).npending = 0 };
    }

    /// Makes bucket `b`'s stripe odd (once per section): readers of it
    /// retry until the next holder publishes it, after this section is
    /// committed.
    #[inline(always)]
    pub fn touch(&self, b: u32) -> Result<(), DictError> {
        let si = b & self.d.smask;
        let s = self.d.stripe(si);
        let v = s.load(Ordering::Relaxed);
        let h = self.hdr();
        // SAFETY: header words, under the lock.
        let n = unsafe { (*h).npending } as usize;
        if v & 1 == 1 {
            // SAFETY: as above.
            if (0..n.min(MAX_PENDING)).any(|i| unsafe { (*h).pending[i] } == si) {
                return Ok(());
            }
        }
        if n >= MAX_PENDING {
            return Err(DictError::TooBigForOneSection);
        }
        if !self.np_saved.get() {
            // The count and the first slot in one aligned 8-byte record
            // (the journal's fast path); later slots need none (below).
            // SAFETY: header words inside the zone, written only under the
            // lock.
            unsafe { self.g.save(std::ptr::addr_of!((*h).npending).cast(), 8) }?;
            self.np_saved.set(true);
        }
        if v & 1 == 0 {
            // SAFETY: the stripe is inside the zone; only lock holders
            // write it.
            unsafe { self.g.save((s as *const AtomicU64).cast(), 8) }?;
            s.store(v + 1, Ordering::Relaxed);
            fence(Ordering::Release);
        }
        // Slots past the saved count need no record: a rollback restores
        // the count, and they mean nothing beyond it.
        // SAFETY: n < MAX_PENDING; under the lock.
        unsafe {
            (*h).pending[n] = si;
            (*h).npending = n as u32 + 1;
        }
        Ok(())
    }

    /// Stripes this section can still make odd.
    pub fn pending_room(&self) -> usize {
        // SAFETY: a header word, under the lock.
        MAX_PENDING.saturating_sub(unsafe { (*self.hdr()).npending } as usize)
    }

    /// Adds to the entry and byte totals (saved once per section).
    pub fn totals(&self, entries: i64, bytes: i64) -> Result<(), DictError> {
        let h = self.hdr();
        if !self.totals_saved.get() {
            // SAFETY: `entries` and `bytes` are adjacent u64 header words.
            unsafe { self.g.save(std::ptr::addr_of!((*h).entries).cast(), 16) }?;
            self.totals_saved.set(true);
        }
        // SAFETY: header words under the lock, saved above.
        unsafe {
            (*h).entries = (*h).entries.wrapping_add(entries as u64);
            (*h).bytes = (*h).bytes.wrapping_add(bytes as u64);
        }
        Ok(())
    }

    /// A savepoint of this section (see [`Sec::rollback_to`]). The words
    /// this section saves once (totals, the garbage chain, the next-page
    /// word) are saved again after it, so that a rollback to it restores
    /// them too.
    pub fn savepoint(&self) -> (u32, usize) {
        self.np_saved.set(false);
        self.totals_saved.set(false);
        self.garbage_saved.set(false);
        (self.g.savepoint(), self.nfreed.get())
    }

    /// Runs `f` as a whole: if it fails, everything it did in this section
    /// is undone (a savepoint before, a rollback to it on `Err`). `f`
    /// must not leave what it allocated anywhere but in its `Ok` value.
    pub fn all_or_nothing<T>(
        &self,
        f: impl FnOnce() -> Result<T, DictError>,
    ) -> Result<T, DictError> {
        let sp = self.savepoint();
        let r = f();
        if r.is_err() {
            // SAFETY: `sp` came from this section; what `f` allocated is
            // dropped with its `Err`.
            unsafe { self.rollback_to(sp) };
        }
        r
    }

    /// Undoes everything since `sp`: the journal's records, and this
    /// section's own memory of the blocks it freed since (a rollback
    /// revives them) and of the words it saved since.
    ///
    /// # Safety
    /// `sp` came from [`Sec::savepoint`] of this section; nothing allocated
    /// since is used after.
    pub unsafe fn rollback_to(&self, sp: (u32, usize)) {
        // SAFETY: the caller's promise.
        unsafe { self.g.rollback_to(sp.0) };
        self.nfreed.set(sp.1);
        self.np_saved.set(false);
        self.totals_saved.set(false);
        self.garbage_saved.set(false);
    }

    /// Saves the garbage list's head and count (once per section).
    pub fn save_garbage(&self) -> Result<(), DictError> {
        if !self.garbage_saved.get() {
            let h = self.hdr();
            // SAFETY: `garbage` and `ngarbage` are adjacent u32 header words.
            unsafe { self.g.save(std::ptr::addr_of!((*h).garbage).cast(), 8) }?;
            self.garbage_saved.set(true);
        }
        Ok(())
    }

    /// Whether `e` is live: stored under the current flush generation and
    /// not past its expiry.
    #[inline]
    pub fn live(&self, e: *const Entry) -> bool {
        // SAFETY: `e` was checked by `entry_at`; under the lock.
        let (gen, exp) = unsafe { ((*e).gen, (*e).expires) };
        gen == self.d.h().gen.load(Ordering::Relaxed) && (exp == 0 || exp > self.now())
    }

    /// Finds `key` in its bucket.
    #[inline(always)]
    pub fn find(&self, hash: u32, key: &[u8]) -> Result<Option<Found>, DictError> {
        let b = hash & self.d.mask;
        let mut link: *const AtomicU32 = &self.d.bucket(b).head;
        for _ in 0..MAX_CHAIN {
            // SAFETY: `link` is a bucket head or the `next` of a checked
            // entry.
            let off8 = unsafe { &*link }.load(Ordering::Relaxed);
            if off8 == 0 {
                return Ok(None);
            }
            let e = self
                .d
                .entry_at(off8)
                .ok_or_else(|| self.d.corrupt("a chain links outside the zone"))?;
            // SAFETY: checked by entry_at; the key lies inside the zone.
            unsafe {
                if (*e).hash == hash
                    && (*e).klen as usize == key.len()
                    && std::slice::from_raw_parts(e.cast::<u8>().add(value_at(0)), key.len()) == key
                {
                    return Ok(Some(Found { link, e, bucket: b }));
                }
                link = &(*e).next;
            }
        }
        Err(self.d.corrupt("a chain longer than any table can hold"))
    }

    /// Unlinks a found entry from its chain (its stripe made odd first).
    pub fn unlink(&self, f: &Found) -> Result<(), DictError> {
        self.touch(f.bucket)?;
        // SAFETY: the link word is inside the zone and only lock holders
        // write it; `f.e` was checked.
        unsafe {
            self.g.save(f.link.cast(), 4)?;
            (*f.link).store((*f.e).next.load(Ordering::Relaxed), Ordering::Release);
        }
        Ok(())
    }

    /// Frees an unlinked entry (a list's nodes go to the garbage chain)
    /// and takes it off the totals.
    pub fn free_entry(&self, e: *mut Entry) -> Result<(), DictError> {
        // SAFETY: checked entry, under the lock.
        let (kind, klen, vlen, lbytes) = unsafe {
            (
                u32::from((*e).kind),
                (*e).klen,
                (*e).vlen,
                super::layout::list_bytes(e),
            )
        };
        let bytes = if kind == K_LIST {
            self.list_to_garbage(e)?;
            klen as u64 + lbytes as u64
        } else {
            klen as u64 + vlen as u64
        };
        let size = super::layout::entry_size(klen as usize, vlen as usize);
        self.free(e.cast(), size)?;
        self.totals(-1, -(bytes as i64))
    }

    /// Whether this section can free one more block (see `freed`).
    #[inline]
    pub fn can_free(&self) -> bool {
        self.nfreed.get() < MAX_FREED && self.g.journal_room() >= FREE_NEED
    }

    /// Frees a block whose first `len` bytes matter, remembering it (a
    /// rollback revives it: memory reused from it must be saved first).
    pub fn free(&self, p: *mut u8, len: usize) -> Result<(), DictError> {
        if !self.can_free() {
            return Err(DictError::TooBigForOneSection);
        }
        // SAFETY: `p` is an allocation of this pool (the callers pass
        // checked entries and nodes), no longer linked.
        unsafe { self.g.free_locked(p) }
            .map_err(|_| self.d.corrupt("an entry or node that is not an allocation"))?;
        let mut f = self.freed.get();
        f[self.nfreed.get()] = (self.d.off8(p), len as u32);
        self.freed.set(f);
        self.nfreed.set(self.nfreed.get() + 1);
        Ok(())
    }

    /// Makes `p..p+len`, just allocated in this section, safe to write
    /// without records: saves whatever part of it overlaps a block freed
    /// earlier in the section (the allocator may hand that memory out
    /// again, and a rollback makes the freed block live again).
    ///
    /// One span is saved, from the first overlapped byte to the last (in
    /// records of at most `MAX_RECORD` bytes): at most `len` bytes and a
    /// header word per record, however many freed blocks it overlaps
    /// (`Dict::max_fill`). Saving the free bytes between them too is
    /// harmless: they are inside the new block, which nothing else in the
    /// section wrote, and a rollback frees it again.
    pub fn fill(&self, p: *mut u8, len: usize) -> Result<(), DictError> {
        let start = p as usize - self.d.base as usize;
        let end = start + len;
        let f = self.freed.get();
        let (mut lo, mut hi) = (end, start);
        for &(off8, flen) in &f[..self.nfreed.get()] {
            let (fs, fe) = (off8 as usize * 8, off8 as usize * 8 + flen as usize);
            let (a, b) = (start.max(fs), end.min(fe));
            if a < b {
                (lo, hi) = (lo.min(a), hi.max(b));
            }
        }
        while lo < hi {
            let n = (hi - lo).min(MAX_RECORD);
            // SAFETY: lo..lo+n lies inside the new block, in the zone; only
            // lock holders write it.
            unsafe { self.g.save(self.d.base.add(lo), n) }?;
            lo += n;
        }
        Ok(())
    }

    /// Moves a list entry's nodes onto the garbage chain (freed a few at a
    /// time by later sections: freeing a long list at once would not fit
    /// in one section's journal).
    fn list_to_garbage(&self, e: *mut Entry) -> Result<(), DictError> {
        // SAFETY: a checked list entry: its value is a ListHead.
        let lh = unsafe {
            e.cast::<u8>()
                .add(value_at((*e).klen as usize))
                .cast::<ListHead>()
                .read()
        };
        if lh.len == 0 {
            return Ok(());
        }
        let tail = self
            .d
            .node_at(lh.tail)
            .ok_or_else(|| self.d.corrupt("a list's tail outside the zone"))?;
        self.save_garbage()?;
        let h = self.hdr();
        // SAFETY: the tail node is inside the zone; header words; all under
        // the lock and saved first.
        unsafe {
            self.g
                .write(std::ptr::addr_of_mut!((*tail).next), (*h).garbage)?;
            (*h).garbage = lh.head;
            (*h).ngarbage = (*h).ngarbage.wrapping_add(lh.len);
        }
        Ok(())
    }

    /// An allocation, or `None` when the zone has no room.
    ///
    /// # Errors
    /// `TooBigForOneSection` when the journal has no room left for it.
    #[inline]
    pub fn try_alloc(&self, size: usize) -> Result<Option<*mut u8>, DictError> {
        if self.g.journal_room() < ALLOC_NEED + FINISH_NEED {
            return Err(DictError::TooBigForOneSection);
        }
        Ok(self.g.alloc_locked(size).map(|p| p.as_ptr()))
    }

    /// Fills a fresh entry (no journal: its allocation is undone on
    /// rollback) and links it at its bucket's head.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        p: *mut u8,
        hash: u32,
        key: &[u8],
        kind: u32,
        value: &[u8],
        flags: u32,
        expires: u64,
    ) -> Result<*mut Entry, DictError> {
        let e = p.cast::<Entry>();
        let b = hash & self.d.mask;
        let bucket = self.d.bucket(b);
        let gen = self.d.h().gen.load(Ordering::Relaxed);
        self.fill(p, entry_size(key.len(), value.len()))?;
        // SAFETY: `p` is a fresh allocation of entry_size(key, value)
        // bytes, 8-aligned (chunks are aligned to their class).
        unsafe {
            e.write(Entry {
                next: AtomicU32::new(bucket.head.load(Ordering::Relaxed)),
                hash,
                klen: key.len() as u16,
                kind: kind as u16,
                vlen: value.len() as u32,
                flags,
                gen,
                expires,
            });
            let k = p.add(value_at(0));
            std::ptr::copy_nonoverlapping(key.as_ptr(), k, key.len());
            let pad = value_at(key.len()) - value_at(0) - key.len();
            k.add(key.len()).write_bytes(0, pad);
            std::ptr::copy_nonoverlapping(value.as_ptr(), p.add(value_at(key.len())), value.len());
        }
        debug_assert!(entry_size(key.len(), value.len()) <= self.d.len);
        self.touch(b)?;
        // SAFETY: the bucket head is inside the zone, written only by lock
        // holders; the entry is complete before it is published (Release).
        unsafe { self.g.save((&bucket.head as *const AtomicU32).cast(), 4) }?;
        bucket.head.store(self.d.off8(p), Ordering::Release);
        let bit = super::evict::entry_class_bit(key.len(), value.len());
        bucket.classes.store(
            bucket.classes.load(Ordering::Relaxed) | bit,
            Ordering::Relaxed,
        );
        // A new entry is not marked used: entries never used again since
        // they were stored go first (scan resistance, as in 2Q).
        self.totals(1, (key.len() + value.len()) as i64)?;
        Ok(e)
    }
}
