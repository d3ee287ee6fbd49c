//! The allocator proper: size-class pages and page runs, all under the
//! pool lock. Nothing here allocates, logs or panics on valid state.
//!
//! Every write to the state, the descriptors or a page's bitmap is first
//! recorded in the pool's undo journal (`crate::journal`), so that a holder
//! killed half-way through an operation is rolled back as a whole by the
//! next one. Each public operation first checks that its worst case fits in
//! what is left of the journal (the `*_BUDGET` constants, in words) and
//! fails cleanly if not, so no record is ever refused half-way.

use super::error::FreeError;
use super::layout::{
    chunk_at, class_size, count, pages_for, uncount, ClassState, Classes, Desc, Header, Link,
    State, FIRST_DESC_BITMAP_CLASS, INTERNAL, JOURNAL_OFF, NCLASSES, NIL, PAGE_SHIFT, SLAB_PAGE,
};
use crate::journal::{record_words, Journal, JournalHeader};
use crate::killpoint;

/// Journal words one chunk or run allocation may need, trimming aside.
pub(crate) const ALLOC_BUDGET: u32 = 160;
/// A new multi-page slab needs this many times its pages free.
pub(crate) const SLAB_SHARE: usize = 4;
/// Journal words one free may need.
pub(crate) const FREE_BUDGET: u32 = 128;
/// Journal words giving back one class's kept slab may need (`trim` gives
/// back as many classes' slabs as the journal has room for).
pub(crate) const TRIM_BUDGET: u32 = 80;

/// The pool's state and descriptors, borrowed exclusively: only built by a
/// holder of the pool lock.
pub(crate) struct Core<'a> {
    pub st: &'a mut State,
    pub d: &'a mut [Desc],
    /// The first data page, in this process.
    pub pages: *mut u8,
    /// The pool's undo journal (its records start at the pool's base,
    /// `offset_of!(Header, state)` before `st`).
    pub j: &'a Journal,
    /// The journal's `used`, read once when the Core is made.
    pub jat: std::cell::Cell<u32>,
    /// The operation is a section of its own (`Pool::alloc`, `Pool::free`,
    /// not a `_locked` call inside a caller's section): where its only
    /// change to the structure is one word written by one store, that
    /// store is atomic by itself and needs no record (a death before it
    /// leaves the state before, after it the state after; the counters
    /// are recomputed by the recovery's check). Inside a caller's section
    /// everything is recorded, so that the whole section rolls back.
    pub lite: bool,
    /// The pool's class table.
    pub cls: &'static Classes,
}

/// Where the state sits from the pool's base.
const STATE_OFF: usize = std::mem::offset_of!(Header, state);
const JHDR_OFF: usize = std::mem::offset_of!(Header, journal);

impl Core<'_> {
    /// This Core runs one standalone operation (see [`Core::lite`]).
    #[inline(always)]
    pub fn lite(mut self) -> Self {
        self.lite = true;
        self
    }

    /// Records `n` bytes at `p` in the journal. The operation's budget was
    /// checked on entry, so this fits; if a budget is wrong the section is
    /// counted as an overflow (and is not crash-atomic) rather than stopped
    /// half-way.
    #[inline(always)]
    fn save<const W: usize>(&self, p: *const u64) {
        let mut at = self.jat.get();
        // The pool's base, header and journal records, from the state's
        // place (fixed offsets): cheaper than carrying a handle.
        let base = (self.st as *const State)
            .cast::<u8>()
            .wrapping_sub(STATE_OFF);
        // SAFETY: the journal header is at JHDR_OFF of the pool header.
        let hdr = unsafe { &*base.wrapping_add(JHDR_OFF).cast::<JournalHeader>() };
        let recs = base.wrapping_add(JOURNAL_OFF).cast::<u64>().cast_mut();
        // SAFETY: we hold the lock (Core exists only under it); `p` points
        // to W aligned words in the pool's header, descriptors or pages
        // (all in the journal's range); `jat` is the journal's `used`.
        if unsafe { record_words::<W>(hdr, recs, base, &mut at, p) } {
            self.jat.set(at);
        } else {
            self.j.overflowed();
        }
    }

    /// Records the `W` words at `p` (inside the pool) before the caller
    /// changes them, in this operation's section.
    #[inline]
    pub(crate) fn save_words<const W: usize>(&self, p: *const u64) {
        self.save::<W>(p);
    }

    /// Marks the allocated run at page `i` as the pool's own (`on`), or a
    /// plain run again; journaled.
    pub(crate) fn mark_internal(&mut self, i: u32, on: bool) {
        if (i as usize) < self.d.len() {
            self.save_links(i);
            self.d[i as usize].next = if on { INTERNAL } else { NIL };
        }
    }

    #[inline(always)]
    fn save_desc(&self, i: u32) {
        if let Some(q) = self.d.get(i as usize) {
            self.save::<2>((q as *const Desc).cast());
        }
    }

    /// Descriptor `i`'s `slab` word only.
    #[inline(always)]
    fn save_slab(&self, i: u32) {
        if let Some(q) = self.d.get(i as usize) {
            self.save::<1>(&q.slab);
        }
    }

    /// Descriptor `i`'s links word only (`next` and `prev`).
    #[inline(always)]
    fn save_links(&self, i: u32) {
        if let Some(q) = self.d.get(i as usize) {
            const _: () = assert!(std::mem::offset_of!(Desc, next) == 8);
            self.save::<1>((&q.next as *const u32).cast());
        }
    }

    /// The word holding a list's head: a class's `head` and `cached`, or
    /// the free runs' `free_head` and `pfree`.
    #[inline(always)]
    fn save_head(&self, c: Option<usize>) {
        const _: () = assert!(std::mem::offset_of!(ClassState, head) == 0);
        const _: () = assert!(std::mem::offset_of!(State, free_head) % 8 == 0);
        let p: *const u32 = match c {
            Some(c) => &self.st.classes[c].head,
            None => &self.st.free_head,
        };
        self.save::<1>(p.cast());
    }

    /// The class's list head, kept page, counters: 48 bytes.
    #[inline(always)]
    fn save_class(&self, c: usize) {
        const _: () = assert!(std::mem::offset_of!(ClassState, to_caches) == 48);
        self.save::<6>((&self.st.classes[c] as *const ClassState).cast());
    }

    /// The pool-wide words after the classes: free list head, page counts,
    /// run counters (48 bytes).
    #[inline(always)]
    fn save_pool(&self) {
        const _: () = assert!(
            std::mem::offset_of!(State, run_bytes) + 8 - std::mem::offset_of!(State, free_head)
                == 48
        );
        self.save::<6>((&self.st.free_head as *const u32).cast());
    }

    /// Records a fill (see `Journal::record_fill`) of `count` descriptors
    /// from `first`, all equal to `q` now.
    fn save_fill(&self, first: u32, count: usize, q: Desc) {
        let pattern = [q.slab, (q.next as u64) | ((q.prev.0 as u64) << 32)];
        let Some(at) = self.d.get(first as usize) else {
            return;
        };
        // SAFETY: we hold the lock; `count` descriptors from `first` are in
        // the pool (the callers' run lengths were checked).
        if unsafe {
            self.j
                .record_fill((at as *const Desc).cast(), count, &pattern)
        }
        .is_err()
        {
            self.j.overflowed();
        }
        self.jat.set(self.j.used());
    }

    /// Whether `words` more journal words fit.
    #[inline(always)]
    pub fn fits(&self, words: u32) -> bool {
        self.jat.get().saturating_add(words) <= self.j.cap()
    }

    /// Removes page `i` from the doubly linked list starting at `head`
    /// (class `c`'s list, or the free runs' for `None`). The head word
    /// itself was saved by the caller.
    #[inline]
    fn unlink(&mut self, c: Option<usize>, i: u32) {
        let prev = self.d[i as usize].prev.idx();
        let next = self.d[i as usize].next;
        self.save_links(i);
        if prev == NIL {
            self.save_head(c);
            *self.head_mut(c) = next;
        } else {
            self.save_links(prev);
            self.d[prev as usize].next = next;
        }
        if next != NIL {
            self.save_links(next);
            let n = &mut self.d[next as usize];
            n.prev = n.prev.with_idx(prev);
        }
        let me = &mut self.d[i as usize];
        me.next = NIL;
        me.prev = me.prev.with_idx(NIL);
    }

    /// Pushes page `i` at the front of the list (as `unlink`).
    #[inline(always)]
    fn push(&mut self, c: Option<usize>, i: u32) {
        let old = *self.head_mut(c);
        if old != NIL {
            self.save_links(old);
            let o = &mut self.d[old as usize];
            o.prev = o.prev.with_idx(i);
        }
        self.save_head(c);
        self.save_links(i);
        let me = &mut self.d[i as usize];
        me.next = old;
        me.prev = me.prev.with_idx(NIL);
        *self.head_mut(c) = i;
    }

    #[inline(always)]
    fn head_mut(&mut self, c: Option<usize>) -> &mut u32 {
        match c {
            Some(c) => &mut self.st.classes[c].head,
            None => &mut self.st.free_head,
        }
    }

    /// The in-page bitmap of small page `idx`.
    #[inline]
    fn small_bitmap(&self, idx: u32) -> *mut u64 {
        // Pointer arithmetic only; the caller dereferences it.
        self.pages
            .wrapping_add(idx as usize * SLAB_PAGE)
            .cast::<u64>()
    }

    /// A chunk of class `c`, as an offset from the first page. The caller
    /// checked that [`ALLOC_BUDGET`] journal words fit.
    #[inline(always)]
    pub fn alloc_chunk(&mut self, c: usize, size: usize) -> Option<usize> {
        self.alloc_in::<false>(c, size)
    }

    /// A block for a request of `size` bytes of class `c`: a chunk, or
    /// when a multi-page class can have no new slab, a page run of the
    /// request's own size (see [`Core::no_slab`]). The caller checked that
    /// [`ALLOC_BUDGET`] journal words fit.
    #[inline(always)]
    pub fn alloc_class(&mut self, c: usize, size: usize) -> Option<usize> {
        self.alloc_in::<true>(c, size)
    }

    /// `alloc_chunk` (`RUN` false) or `alloc_class` (`RUN` true).
    #[inline(always)]
    fn alloc_in<const RUN: bool>(&mut self, c: usize, size: usize) -> Option<usize> {
        let pages = self.pages;
        let info = &self.cls[c];
        // Counters are not recorded: the structural ones (used, total,
        // free and run pages, small pages' used counts) are recomputed
        // from the pages after a rollback, and the statistics (requests,
        // failures, bytes asked for) count a rolled-back call as made.
        let cs = &mut self.st.classes[c];
        count(&mut cs.reqs);
        let head = cs.head;
        // NIL (like any index out of range) is past the descriptors' end,
        // and so is any slab that would not fit (one compare for both).
        let fits = head as usize + info.pages as usize <= self.d.len();
        let (idx, bit) = match fits {
            true => {
                // SAFETY: head < head + pages <= the descriptors' count.
                let slab = unsafe { self.d.get_unchecked(head as usize) }.slab;
                let (bit, full) = if c < FIRST_DESC_BITMAP_CLASS {
                    let bm = pages.wrapping_add(head as usize * SLAB_PAGE).cast::<u64>();
                    let words = info.words as usize;
                    let mut w = 0;
                    // SAFETY: page `head` is a small page of class c (it is
                    // on c's list, and we hold the lock); its first `words`
                    // u64s are its bitmap, 8-aligned; w < words.
                    while w < words && unsafe { *bm.add(w) } == u64::MAX {
                        w += 1;
                    }
                    if w == words || slab >= info.cap as u64 {
                        // A full page on the list: only a corrupt pool.
                        return self.alloc_chunk_slow::<RUN>(c, size);
                    }
                    // SAFETY: as above, w < words.
                    let word = unsafe { *bm.add(w) };
                    let b = (!word).trailing_zeros();
                    // A small page's `slab` is its used count: recomputed.
                    let full = slab + 1 == info.cap as u64;
                    if !self.lite || full {
                        self.save::<1>(bm.wrapping_add(w));
                    } else {
                        killpoint::point();
                    }
                    // SAFETY: as above.
                    unsafe { *bm.add(w) = word | (1 << b) };
                    killpoint::point();
                    self.d[head as usize].slab = slab + 1;
                    (w as u32 * 64 + b, full)
                } else {
                    let b = (!slab).trailing_zeros();
                    if b >= info.chunks {
                        // A full slab on the list: only a corrupt pool.
                        return self.alloc_chunk_slow::<RUN>(c, size);
                    }
                    let full = slab | 1 << b == info.full;
                    if !self.lite || full {
                        self.save_slab(head);
                    } else {
                        killpoint::point();
                    }
                    self.d[head as usize].slab = slab | 1 << b;
                    killpoint::point();
                    (b, full)
                };
                if full {
                    self.unlink(Some(c), head);
                }
                (head, bit)
            }
            false => match self.new_slab(c) {
                Some(x) => x,
                None => return self.no_slab::<RUN>(c, size),
            },
        };
        let cs = &mut self.st.classes[c];
        cs.used += 1;
        cs.bytes_requested = cs.bytes_requested.wrapping_add(size as u64);
        Some(((idx as usize) << PAGE_SHIFT) + bit as usize * info.size as usize)
    }

    /// No slab of class `c` could be had for a request of `size` bytes. If
    /// `RUN` and the class's slabs span more pages than the request needs,
    /// the request becomes a page-run request (a small pool may have room
    /// for a 2-page run and not for a 5-page slab); otherwise it fails.
    #[cold]
    #[inline(never)]
    fn no_slab<const RUN: bool>(&mut self, c: usize, size: usize) -> Option<usize> {
        let n = pages_for(size).max(1);
        if RUN && n < self.cls[c].pages as usize {
            let cs = &mut self.st.classes[c];
            uncount(&mut cs.reqs);
            return self.alloc_run(n, size);
        }
        let cs = &mut self.st.classes[c];
        count(&mut cs.fails);
        None
    }

    /// `alloc_chunk` when the head slab of the class list turned out full
    /// (which `check()` reports): take it off the list and use a new slab.
    #[cold]
    #[inline(never)]
    fn alloc_chunk_slow<const RUN: bool>(&mut self, c: usize, size: usize) -> Option<usize> {
        let head = self.st.classes[c].head;
        self.unlink(Some(c), head);
        let Some((idx, bit)) = self.new_slab(c) else {
            return self.no_slab::<RUN>(c, size);
        };
        let cs = &mut self.st.classes[c];
        cs.used += 1;
        cs.bytes_requested = cs.bytes_requested.wrapping_add(size as u64);
        Some(((idx as usize) << PAGE_SHIFT) + bit as usize * class_size(c))
    }

    /// Takes free pages for a slab of class `c` (one page, or
    /// `self.cls[c].pages` for a multi-page slab), sets it up with its first
    /// chunk used, and puts it on the class list unless that chunk filled
    /// it. Returns the slab's first page and the chunk's index; `None`
    /// (counting nothing) if there are no pages for it.
    #[cold]
    #[inline(never)]
    fn new_slab(&mut self, c: usize) -> Option<(u32, u32)> {
        let info = &self.cls[c];
        let n = info.pages;
        if n > 1 && (self.st.pfree as usize) < SLAB_SHARE * n as usize {
            // A multi-page slab takes at most a quarter of the free pages
            // (in a small pool a 5-page slab for one 4.5 KiB request would
            // leave nothing else): the request takes a page run instead.
            return None;
        }
        let idx = self.alloc_pages_or_trim(n as usize)?;
        let slab = if c < FIRST_DESC_BITMAP_CLASS {
            let bm = self.small_bitmap(idx);
            let words = info.words as usize;
            // A free page's bytes usually mean nothing, but this page may
            // have held live chunks freed earlier in this very section: a
            // rollback revives them, so their bytes are saved too.
            // SAFETY: we hold the lock; the page is inside the pool.
            if unsafe { self.j.record(bm.cast(), words * 8) }.is_err() {
                self.j.overflowed();
            }
            self.jat.set(self.j.used());
            let mut used = info.reserved + 1;
            for w in 0..words {
                let bits = used.min(64);
                used -= bits;
                let mut word = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                if w + 1 == words {
                    // The bits past the last chunk: always "used".
                    word |= info.full;
                }
                // SAFETY: page `idx` was just taken from the free runs, so it
                // is ours under the lock; `words` u64s fit in a page.
                unsafe { *bm.add(w) = word };
            }
            1
        } else {
            1
        };
        // alloc_pages saved these descriptors already.
        self.d[idx as usize] = Desc {
            slab,
            next: NIL,
            prev: Link::slab(c, NIL),
        };
        for k in idx + 1..idx + n {
            self.d[k as usize] = Desc {
                slab: 0,
                next: NIL,
                prev: Link::inner(c, idx),
            };
        }
        if info.cap > 1 {
            self.push(Some(c), idx);
        }
        self.st.classes[c].total += info.cap as u64;
        Some((idx, info.reserved))
    }

    /// A run of `n` pages (counted as a request, and as a failure if the
    /// pool has fewer than `n` pages at all), as an offset from the first
    /// page. The caller checked that [`ALLOC_BUDGET`] journal words fit.
    #[inline]
    pub fn alloc_run_checked(&mut self, n: usize, size: usize, npages: usize) -> Option<usize> {
        if n > npages {
            count(&mut self.st.page_reqs);
            count(&mut self.st.page_fails);
            return None;
        }
        self.alloc_run(n, size)
    }

    /// A run of `n` pages, as an offset from the first page.
    #[inline]
    fn alloc_run(&mut self, n: usize, size: usize) -> Option<usize> {
        count(&mut self.st.page_reqs);
        let Some(first) = self.alloc_pages_or_trim(n) else {
            count(&mut self.st.page_fails);
            return None;
        };
        let n32 = n as u32;
        self.d[first as usize] = Desc {
            slab: n as u64,
            next: NIL,
            prev: Link::new(Link::RUN, NIL),
        };
        for k in first + 1..first + n32 {
            self.d[k as usize] = Desc {
                slab: 0,
                next: NIL,
                prev: Link::new(Link::RUN, first),
            };
        }
        let st = &mut *self.st;
        st.run_pages += n32;
        st.run_bytes_requested = st.run_bytes_requested.wrapping_add(size as u64);
        st.run_bytes = st.run_bytes.wrapping_add((n * SLAB_PAGE) as u64);
        Some(first as usize * SLAB_PAGE)
    }

    /// `alloc_pages`, and if that fails, give back the classes' cached empty
    /// pages and try once more.
    #[inline]
    fn alloc_pages_or_trim(&mut self, n: usize) -> Option<u32> {
        if let Some(i) = self.alloc_pages(n) {
            return Some(i);
        }
        self.alloc_pages_after_trim(n)
    }

    #[cold]
    #[inline(never)]
    fn alloc_pages_after_trim(&mut self, n: usize) -> Option<u32> {
        // Trimming needs journal room of its own; without it the request
        // fails as if there were no room (the caller logs no memory).
        if self.fits(TRIM_BUDGET + ALLOC_BUDGET / 2) && self.trim_keeping(ALLOC_BUDGET / 2) {
            self.alloc_pages(n)
        } else {
            None
        }
    }

    /// First fit on the list of free runs; the pages are taken from the end
    /// of the run, so the run keeps its place. The descriptors of the pages
    /// taken are saved in the journal; the caller writes all `n`.
    #[inline(always)]
    fn alloc_pages(&mut self, n: usize) -> Option<u32> {
        if n == 0 || n > self.st.pfree as usize {
            return None;
        }
        let npages = self.d.len();
        let n = n as u32;
        let mut i = self.st.free_head;
        let mut steps = 0;
        while let Some(q) = self.d.get(i as usize) {
            if q.slab >= n as u64 {
                break;
            }
            i = q.next;
            steps += 1;
            if steps > npages {
                // A cycle: only a corrupt pool (check() names it).
                return None;
            }
        }
        let len = self.d.get(i as usize)?.slab;
        if len > (npages - i as usize) as u64 {
            return None;
        }
        let len = len as u32;
        let first = if len == n {
            self.unlink(None, i);
            i
        } else {
            let rest = len - n;
            self.save_desc(i);
            self.d[i as usize].slab = rest as u64;
            if rest > 1 {
                self.save_desc(i + rest - 1);
                self.d[(i + rest - 1) as usize] = Desc {
                    slab: 0,
                    next: NIL,
                    prev: Link::new(Link::FREE, i),
                };
            }
            i + rest
        };
        // The pages taken: the first and last may be a run head or back
        // tag, the ones between are canonical inner free pages.
        self.save_desc(first);
        if n > 2 {
            self.save_fill(first + 1, (n - 2) as usize, Desc::INNER_FREE);
        }
        if n > 1 {
            self.save_desc(first + n - 1);
        }
        self.st.pfree -= n;
        Some(first)
    }

    /// Frees pages `idx..idx+n` (descriptors in any state, already saved
    /// by the caller) and coalesces them with free neighbours on both
    /// sides.
    #[inline(always)]
    fn free_pages(&mut self, idx: u32, n: u32) {
        let npages = self.d.len() as u32;
        self.st.pfree += n;
        for k in idx..idx + n {
            self.d[k as usize] = Desc::INNER_FREE;
        }
        let mut len = n;
        let after = idx + n;
        if after < npages {
            let a = self.d[after as usize];
            if a.prev.tag() == Link::FREE && a.slab > 0 {
                self.save_slab(after);
                self.unlink(None, after);
                self.d[after as usize] = Desc::INNER_FREE;
                len += a.slab as u32;
            }
        }
        let mut first = idx;
        let mut merged = false;
        if idx > 0 {
            let b = self.d[(idx - 1) as usize];
            if b.prev.tag() == Link::FREE {
                let h = if b.slab > 0 { idx - 1 } else { b.prev.idx() };
                if h as usize >= self.d.len() {
                    // A back tag out of range: only a corrupt pool. Leave
                    // the pages as a run of their own.
                } else {
                    if h != idx - 1 {
                        self.save_desc(idx - 1);
                        self.d[(idx - 1) as usize] = Desc::INNER_FREE;
                    }
                    self.save_desc(h);
                    let hd = &mut self.d[h as usize];
                    hd.slab += len as u64;
                    len = hd.slab as u32;
                    first = h;
                    merged = true;
                }
            }
        }
        if !merged {
            self.d[first as usize].slab = len as u64;
            self.push(None, first);
        }
        if len > 1 {
            let last = first + len - 1;
            self.save_desc(last);
            if let Some(q) = self.d.get_mut(last as usize) {
                *q = Desc {
                    slab: 0,
                    next: NIL,
                    prev: Link::new(Link::FREE, first),
                };
            }
        }
    }

    /// Gives slab `first` of class `c` back to the free runs (out of line:
    /// the hot free path stays small). Its first descriptor was saved by
    /// the caller; a multi-page slab's inner ones are saved here.
    #[inline(never)]
    fn release_slab(&mut self, c: usize, first: u32) {
        let n = self.cls[c].pages;
        if c < FIRST_DESC_BITMAP_CLASS {
            // The in-page bitmap is about to become free bytes that a later
            // allocation in this section may hand out and its caller write
            // without a record (fresh memory): a rollback that revives the
            // page must find its bitmap whole, so every word is saved (the
            // free saved only the word it changed).
            let bm = self.small_bitmap(first);
            // SAFETY: we hold the lock; page `first` is a small page of
            // class c whose first `words` u64s are its bitmap.
            if unsafe { self.j.record(bm.cast(), self.cls[c].words as usize * 8) }.is_err() {
                self.j.overflowed();
            }
            self.jat.set(self.j.used());
        }
        if n > 1 {
            let inner = Desc {
                slab: 0,
                next: NIL,
                prev: Link::inner(c, first),
            };
            self.save_fill(first + 1, (n - 1) as usize, inner);
        }
        self.free_pages(first, n);
    }

    /// Gives back every class's kept empty slab; true if there was one.
    /// The caller checked that [`TRIM_BUDGET`] journal words fit (enough
    /// for one class); the classes after the journal runs short keep
    /// their slabs.
    pub fn trim(&mut self) -> bool {
        self.trim_keeping(0)
    }

    /// As [`Core::trim`], stopping while `reserve` journal words are left
    /// beyond what one more class needs.
    ///
    /// `cached` is a hint: it names the class's empty slab if the class
    /// has one (`free_at` sets it when it keeps a slab), but allocations
    /// do not clear it, so it may name a slab that is no longer empty.
    fn trim_keeping(&mut self, reserve: u32) -> bool {
        let mut any = false;
        let cls = self.cls;
        for (c, info) in cls.iter().enumerate() {
            let idx = self.st.classes[c].cached;
            if idx == NIL {
                continue;
            }
            if !self.fits(TRIM_BUDGET + reserve) {
                break;
            }
            self.save_head(Some(c));
            self.st.classes[c].cached = NIL;
            let kept = self.d.get(idx as usize).is_some_and(|q| {
                q.prev.class() == Some(c)
                    && q.slab == 0
                    && idx as usize + info.pages as usize <= self.d.len()
            });
            if kept {
                self.save_slab(idx);
                self.unlink(Some(c), idx);
                self.st.classes[c].total -= info.cap as u64;
                self.release_slab(c, idx);
                any = true;
            }
        }
        any
    }

    /// Frees the chunk or run at byte `off` of page `idx`; on error nothing
    /// is changed. The caller checked that [`FREE_BUDGET`] journal words
    /// fit.
    #[inline(always)]
    pub fn free_at(&mut self, idx: u32, off: usize) -> Result<(), FreeError> {
        let desc = self.d[idx as usize];
        let Some(c) = desc.prev.class() else {
            return self.free_other(idx, off, desc);
        };
        self.free_chunk(c, idx, off, desc)
    }

    /// Frees the chunk at byte `off` of slab `first` of class `c`, whose
    /// first descriptor is `desc`.
    #[inline(always)]
    fn free_chunk(
        &mut self,
        c: usize,
        first: u32,
        off: usize,
        desc: Desc,
    ) -> Result<(), FreeError> {
        let info = &self.cls[c];
        let Some(bit) = chunk_at(info, off) else {
            return Err(FreeError::WrongChunk);
        };
        if first as usize + info.pages as usize > self.d.len() {
            // A slab past the pool's end: only a corrupt pool.
            return Err(FreeError::WrongPage);
        }
        let (was_full, empty) = if c < FIRST_DESC_BITMAP_CLASS {
            if bit < info.reserved {
                return Err(FreeError::BitmapArea);
            }
            // SAFETY: page `first` is a small page of class c, so its first
            // words are its bitmap; bit < chunks, so word bit/64 is one of them.
            let w = unsafe { self.small_bitmap(first).add((bit / 64) as usize) };
            let mask = 1u64 << (bit % 64);
            // SAFETY: as above; we hold the lock.
            let word = unsafe { *w };
            if word & mask == 0 {
                return Err(FreeError::ChunkAlreadyFree);
            }
            if desc.slab == 0 {
                // Counter disagrees with the bitmap: only a corrupt pool.
                return Err(FreeError::ChunkAlreadyFree);
            }
            let was_full = desc.slab == info.cap as u64;
            let empty = desc.slab == 1;
            if !self.lite || was_full || empty {
                self.save::<1>(w);
            } else {
                killpoint::point();
            }
            // SAFETY: as above.
            unsafe { *w = word & !mask };
            killpoint::point();
            self.d[first as usize].slab = desc.slab - 1;
            (was_full, empty)
        } else {
            let mask = 1u64 << bit;
            if desc.slab & mask == 0 {
                return Err(FreeError::ChunkAlreadyFree);
            }
            let (was_full, empty) = (desc.slab == info.full, desc.slab & !mask == 0);
            if !self.lite || was_full || empty {
                self.save_slab(first);
            } else {
                killpoint::point();
            }
            self.d[first as usize].slab = desc.slab & !mask;
            killpoint::point();
            (was_full, empty)
        };
        self.st.classes[c].used = self.st.classes[c].used.wrapping_sub(1);
        if was_full {
            self.push(Some(c), first);
        }
        if empty {
            if self.st.classes[c].head == first && self.d[first as usize].next == NIL {
                // The class's only slab: keep it, so that an alloc+free
                // pair does not take and give back pages every time.
                if self.st.classes[c].cached != first {
                    self.save_head(Some(c));
                    self.st.classes[c].cached = first;
                }
            } else {
                self.save_slab(first);
                self.unlink(Some(c), first);
                self.st.classes[c].total -= info.cap as u64;
                self.release_slab(c, first);
            }
        }
        Ok(())
    }

    /// `free_at` on a page that is not a slab's first: an inner page of a
    /// multi-page slab, or a page run, or a free page.
    #[inline(never)]
    fn free_other(&mut self, idx: u32, off: usize, desc: Desc) -> Result<(), FreeError> {
        if desc.prev.inner_class().is_some() {
            return self.free_inner(idx, off, desc);
        }
        self.free_run(idx, off, desc)
    }

    /// `free_at` on an inner page of a multi-page slab: the chunk is found
    /// from the slab's first page.
    #[inline(never)]
    fn free_inner(&mut self, idx: u32, off: usize, desc: Desc) -> Result<(), FreeError> {
        let first = desc.prev.idx();
        let Some(&head) = self.d.get(first as usize) else {
            return Err(FreeError::WrongPage);
        };
        let Some(c) = head.prev.class() else {
            return Err(FreeError::WrongPage);
        };
        let k = idx.wrapping_sub(first);
        if desc.prev.inner_class() != Some(c) || first >= idx || k >= self.cls[c].pages {
            // An inner page not inside its slab: only a corrupt pool.
            return Err(FreeError::WrongPage);
        }
        self.free_chunk(c, first, k as usize * SLAB_PAGE + off, head)
    }

    #[inline(always)]
    fn free_run(&mut self, idx: u32, off: usize, desc: Desc) -> Result<(), FreeError> {
        match desc.prev.tag() {
            Link::RUN if off != 0 => Err(FreeError::WrongChunk),
            // The pool's own (a cache's slot body): never a user's block.
            Link::RUN if desc.next == INTERNAL => Err(FreeError::WrongPage),
            Link::RUN if desc.slab == 0 => Err(FreeError::WrongPage),
            Link::RUN if desc.slab > (self.d.len() - idx as usize) as u64 => {
                // A run length past the pool's end: only a corrupt pool.
                Err(FreeError::WrongPage)
            }
            Link::RUN => {
                let n = desc.slab as u32;
                self.save_desc(idx);
                if n > 1 {
                    let inner = Desc {
                        slab: 0,
                        next: NIL,
                        prev: Link::new(Link::RUN, idx),
                    };
                    self.save_fill(idx + 1, (n - 1) as usize, inner);
                }
                self.st.run_pages = self.st.run_pages.wrapping_sub(n);
                self.free_pages(idx, n);
                Ok(())
            }
            _ if off == 0 => Err(FreeError::PageAlreadyFree),
            _ => Err(FreeError::WrongChunk),
        }
    }

    /// Recomputes the counters that the descriptors and bitmaps determine
    /// (per class chunks used and total, free pages, pages in runs) and
    /// makes the request counters agree with them; journaled. Returns how
    /// many counters were changed. Used after a recovery whose check found
    /// only counters wrong.
    pub fn recount(&mut self, _j: &Journal) -> usize {
        let npages = self.d.len();
        let mut used = [0u64; NCLASSES];
        let mut total = [0u64; NCLASSES];
        let (mut free, mut runs) = (0u32, 0u32);
        let mut fixed = 0;
        let mut i = 0usize;
        while i < npages {
            let q = self.d[i];
            let step = match (q.prev.tag(), q.prev.class()) {
                (Link::FREE, _) if q.slab > 0 => {
                    let n = (q.slab as usize).min(npages - i);
                    free += n as u32;
                    n
                }
                (Link::RUN, _) if q.slab > 0 => {
                    let n = (q.slab as usize).min(npages - i);
                    runs += n as u32;
                    n
                }
                (_, Some(c)) => {
                    used[c] += if c < FIRST_DESC_BITMAP_CLASS {
                        // A small page's count, from its bitmap (the
                        // reserved chunks' bits and those past the last
                        // chunk are always set).
                        let bm = self.small_bitmap(i as u32);
                        let set: u32 = (0..self.cls[c].words as usize)
                            // SAFETY: page i is a small page of the pool;
                            // its first words are its bitmap.
                            .map(|w| unsafe { *bm.add(w) }.count_ones())
                            .sum();
                        let fixed_bits = self.cls[c].reserved + self.cls[c].full.count_ones();
                        let n = set.saturating_sub(fixed_bits) as u64;
                        if self.d[i].slab != n {
                            self.save_slab(i as u32);
                            self.d[i].slab = n;
                            fixed += 1;
                        }
                        n
                    } else {
                        q.slab.count_ones() as u64
                    };
                    total[c] += self.cls[c].cap as u64;
                    (self.cls[c].pages as usize).min(npages - i)
                }
                _ => 1,
            };
            i += step;
        }
        for c in 0..NCLASSES {
            let s = self.st.classes[c];
            // fails <= reqs - used (what check wants).
            let fails = s.fails.min(u64::MAX - used[c]);
            let reqs = s.reqs.max(fails + used[c]);
            if (s.used, s.total, s.reqs, s.fails) != (used[c], total[c], reqs, fails) {
                self.save_class(c);
                let s = &mut self.st.classes[c];
                fixed += (s.used != used[c]) as usize
                    + (s.total != total[c]) as usize
                    + (s.reqs != reqs) as usize
                    + (s.fails != fails) as usize;
                s.used = used[c];
                s.total = total[c];
                s.reqs = reqs;
                s.fails = fails;
            }
        }
        let page_reqs = self.st.page_reqs.max(self.st.page_fails);
        if (self.st.pfree, self.st.run_pages, self.st.page_reqs) != (free, runs, page_reqs) {
            self.save_pool();
            fixed += (self.st.pfree != free) as usize
                + (self.st.run_pages != runs) as usize
                + (self.st.page_reqs != page_reqs) as usize;
            self.st.pfree = free;
            self.st.run_pages = runs;
            self.st.page_reqs = page_reqs;
        }
        fixed
    }

    /// Formats the state and descriptors afresh: one free run of every
    /// page, no classes. Not journaled (see `Pool::reinit`).
    pub fn reformat(&mut self) {
        let npages = self.d.len() as u32;
        let keep_fails: [u64; NCLASSES] = std::array::from_fn(|c| self.st.classes[c].fails);
        for (c, cs) in self.st.classes.iter_mut().enumerate() {
            *cs = ClassState::EMPTY;
            cs.fails = keep_fails[c];
            cs.reqs = keep_fails[c];
        }
        self.st.free_head = 0;
        self.st.pfree = npages;
        self.st.run_pages = 0;
        self.st.run_bytes = 0;
        self.st.run_bytes_requested = 0;
        self.st.page_reqs = self.st.page_fails;
        for q in self.d.iter_mut() {
            *q = Desc::INNER_FREE;
        }
        self.d[0] = Desc {
            slab: npages as u64,
            next: NIL,
            prev: Link::new(Link::FREE, NIL),
        };
        if npages > 1 {
            self.d[npages as usize - 1] = Desc {
                slab: 0,
                next: NIL,
                prev: Link::new(Link::FREE, 0),
            };
        }
    }

    /// The longest free run, in pages.
    pub fn largest_run(&self) -> usize {
        Core::largest_run_of(self.st, self.d)
    }

    /// The longest free run, in pages, from a read-only view.
    pub fn largest_run_of(st: &State, d: &[Desc]) -> usize {
        let mut best = 0;
        let mut i = st.free_head;
        let mut steps = 0;
        while let Some(q) = d.get(i as usize) {
            if steps > d.len() {
                break;
            }
            best = best.max(q.slab as usize);
            i = q.next;
            steps += 1;
        }
        best
    }
}
