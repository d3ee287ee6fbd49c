//! The allocator proper: size-class pages and page runs, all under the
//! pool lock. Nothing here allocates, logs or panics on valid state.

use super::error::FreeError;
use super::layout::{
    Desc, Link, State, CLASS, FIRST_DESC_BITMAP_CLASS, MIN_SHIFT, NIL, PAGE_SHIFT, SLAB_PAGE,
};

/// The pool's state and descriptors, borrowed exclusively: only built by a
/// holder of the pool lock.
pub(crate) struct Core<'a> {
    pub st: &'a mut State,
    pub d: &'a mut [Desc],
    /// The first data page, in this process.
    pub pages: *mut u8,
}

/// Removes page `i` from the doubly linked list starting at `*head`.
#[inline]
fn unlink(head: &mut u32, d: &mut [Desc], i: u32) {
    let prev = d[i as usize].prev.idx();
    let next = d[i as usize].next;
    if prev == NIL {
        *head = next;
    } else {
        d[prev as usize].next = next;
    }
    if next != NIL {
        let n = &mut d[next as usize];
        n.prev = n.prev.with_idx(prev);
    }
    let me = &mut d[i as usize];
    me.next = NIL;
    me.prev = me.prev.with_idx(NIL);
}

/// Pushes page `i` at the front of the list starting at `*head`.
#[inline]
fn push(head: &mut u32, d: &mut [Desc], i: u32) {
    let old = *head;
    if old != NIL {
        let o = &mut d[old as usize];
        o.prev = o.prev.with_idx(i);
    }
    let me = &mut d[i as usize];
    me.next = old;
    me.prev = me.prev.with_idx(NIL);
    *head = i;
}

impl Core<'_> {
    /// The in-page bitmap of small page `idx`.
    #[inline]
    fn small_bitmap(&self, idx: u32) -> *mut u64 {
        // Pointer arithmetic only; the caller dereferences it.
        self.pages
            .wrapping_add(idx as usize * SLAB_PAGE)
            .cast::<u64>()
    }

    /// A chunk of class `c`, as an offset from the first page.
    #[inline]
    pub fn alloc_chunk(&mut self, c: usize, size: usize) -> Option<usize> {
        let shift = MIN_SHIFT as usize + c;
        let pages = self.pages;
        let cs = &mut self.st.classes[c];
        cs.reqs += 1;
        let head = cs.head;
        // NIL (like any index out of range) is past the descriptors' end.
        let (idx, bit) = match self.d.get_mut(head as usize) {
            Some(d) => {
                let info = &CLASS[c];
                let (bit, full) = if c < FIRST_DESC_BITMAP_CLASS {
                    let bm = pages.wrapping_add(head as usize * SLAB_PAGE).cast::<u64>();
                    let words = (info.chunks / 64) as usize;
                    let mut w = 0;
                    // SAFETY: page `head` is a small page of class c (it is
                    // on c's list, and we hold the lock); its first `words`
                    // u64s are its bitmap, 8-aligned; w < words.
                    while w < words && unsafe { *bm.add(w) } == u64::MAX {
                        w += 1;
                    }
                    if w == words {
                        // A full page on the list: only a corrupt pool.
                        return self.alloc_chunk_slow(c, size);
                    }
                    // SAFETY: as above, w < words.
                    let word = unsafe { *bm.add(w) };
                    let b = (!word).trailing_zeros();
                    // SAFETY: as above.
                    unsafe { *bm.add(w) = word | (1 << b) };
                    d.slab += 1;
                    (w as u32 * 64 + b, d.slab == info.cap as u64)
                } else {
                    let b = (!d.slab).trailing_zeros();
                    d.slab |= 1 << b;
                    (b, d.slab == info.full)
                };
                if full {
                    unlink(&mut self.st.classes[c].head, self.d, head);
                }
                (head, bit)
            }
            None => self.new_slab_page(c)?,
        };
        let cs = &mut self.st.classes[c];
        cs.used += 1;
        cs.bytes_requested += size as u64;
        Some(((idx as usize) << PAGE_SHIFT) + ((bit as usize) << shift))
    }

    /// `alloc_chunk` when the head page of the class list turned out full
    /// (which `check()` reports): take it off the list and use a new page.
    #[cold]
    #[inline(never)]
    fn alloc_chunk_slow(&mut self, c: usize, size: usize) -> Option<usize> {
        let head = self.st.classes[c].head;
        unlink(&mut self.st.classes[c].head, self.d, head);
        self.st.classes[c].reqs -= 1;
        self.alloc_chunk(c, size)
    }

    /// Takes a free page for class `c`, sets it up with its first chunk
    /// used, and puts it on the class list.
    #[cold]
    #[inline(never)]
    fn new_slab_page(&mut self, c: usize) -> Option<(u32, u32)> {
        let Some(idx) = self.alloc_pages_or_trim(1) else {
            self.st.classes[c].fails += 1;
            return None;
        };
        let info = &CLASS[c];
        let (slab, bit) = if c < FIRST_DESC_BITMAP_CLASS {
            let bm = self.small_bitmap(idx);
            let words = (info.chunks / 64) as usize;
            let mut used = info.reserved + 1;
            for w in 0..words {
                let bits = used.min(64);
                used -= bits;
                let word = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                // SAFETY: page `idx` was just taken from the free runs, so it
                // is ours under the lock; `words` u64s fit in a page.
                unsafe { *bm.add(w) = word };
            }
            (1, info.reserved)
        } else {
            (1, 0)
        };
        self.d[idx as usize] = Desc {
            slab,
            next: NIL,
            prev: Link::slab(c, NIL),
        };
        push(&mut self.st.classes[c].head, self.d, idx);
        self.st.classes[c].total += info.cap as u64;
        Some((idx, bit))
    }

    /// A run of `n` pages (counted as a request, and as a failure if the
    /// pool has fewer than `n` pages at all), as an offset from the first
    /// page.
    #[inline]
    pub fn alloc_run_checked(&mut self, n: usize, size: usize, npages: usize) -> Option<usize> {
        if n > npages {
            self.st.page_reqs += 1;
            self.st.page_fails += 1;
            return None;
        }
        self.alloc_run(n, size)
    }

    /// A run of `n` pages, as an offset from the first page.
    #[inline]
    fn alloc_run(&mut self, n: usize, size: usize) -> Option<usize> {
        self.st.page_reqs += 1;
        let Some(first) = self.alloc_pages_or_trim(n) else {
            self.st.page_fails += 1;
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
        st.run_bytes_requested += size as u64;
        st.run_bytes += (n * SLAB_PAGE) as u64;
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
        if self.trim() {
            self.alloc_pages(n)
        } else {
            None
        }
    }

    /// First fit on the list of free runs; the pages are taken from the end
    /// of the run, so the run keeps its place. The caller writes all `n`
    /// descriptors.
    #[inline(always)]
    fn alloc_pages(&mut self, n: usize) -> Option<u32> {
        if n == 0 || n > self.st.pfree as usize {
            return None;
        }
        let n = n as u32;
        let mut i = self.st.free_head;
        while i != NIL {
            if self.d[i as usize].slab >= n as u64 {
                break;
            }
            i = self.d[i as usize].next;
        }
        if i == NIL {
            return None;
        }
        let len = self.d[i as usize].slab as u32;
        let first = if len == n {
            unlink(&mut self.st.free_head, self.d, i);
            i
        } else {
            let rest = len - n;
            self.d[i as usize].slab = rest as u64;
            if rest > 1 {
                self.d[(i + rest - 1) as usize] = Desc {
                    slab: 0,
                    next: NIL,
                    prev: Link::new(Link::FREE, i),
                };
            }
            i + rest
        };
        self.st.pfree -= n;
        Some(first)
    }

    /// Frees pages `idx..idx+n` (descriptors in any state) and coalesces
    /// them with free neighbours on both sides.
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
                unlink(&mut self.st.free_head, self.d, after);
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
                if h != idx - 1 {
                    self.d[(idx - 1) as usize] = Desc::INNER_FREE;
                }
                let hd = &mut self.d[h as usize];
                hd.slab += len as u64;
                len = hd.slab as u32;
                first = h;
                merged = true;
            }
        }
        if !merged {
            self.d[first as usize].slab = len as u64;
            push(&mut self.st.free_head, self.d, first);
        }
        if len > 1 {
            self.d[(first + len - 1) as usize] = Desc {
                slab: 0,
                next: NIL,
                prev: Link::new(Link::FREE, first),
            };
        }
    }

    /// Gives a slab page back to the free runs (out of line: the hot free
    /// path stays small).
    #[inline(never)]
    fn release_page(&mut self, idx: u32) {
        self.free_pages(idx, 1);
    }

    /// Gives back every class's kept empty page; true if there was one.
    ///
    /// `cached` is a hint: it names the class's empty page if the class
    /// has one (`free_at` sets it when it keeps a page), but allocations do
    /// not clear it, so it may name a page that is no longer empty.
    pub fn trim(&mut self) -> bool {
        let mut any = false;
        for (c, info) in CLASS.iter().enumerate() {
            let idx = std::mem::replace(&mut self.st.classes[c].cached, NIL);
            let kept = self
                .d
                .get(idx as usize)
                .is_some_and(|q| q.prev.class() == Some(c) && q.slab == 0);
            if kept {
                unlink(&mut self.st.classes[c].head, self.d, idx);
                self.st.classes[c].total -= info.cap as u64;
                self.release_page(idx);
                any = true;
            }
        }
        any
    }

    /// Frees the chunk or run at byte `off` of page `idx`; on error nothing
    /// is changed.
    #[inline]
    pub fn free_at(&mut self, idx: u32, off: usize) -> Result<(), FreeError> {
        let desc = self.d[idx as usize];
        let Some(c) = desc.prev.class() else {
            return self.free_run(idx, off, desc);
        };
        let info = &CLASS[c];
        let shift = MIN_SHIFT as usize + c;
        if off & ((1 << shift) - 1) != 0 {
            return Err(FreeError::WrongChunk);
        }
        let bit = (off >> shift) as u32;
        let (was_full, empty) = if c < FIRST_DESC_BITMAP_CLASS {
            if bit < info.reserved {
                return Err(FreeError::BitmapArea);
            }
            // SAFETY: page `idx` is a small page of class c, so its first
            // words are its bitmap; bit < chunks, so word bit/64 is one of them.
            let w = unsafe { self.small_bitmap(idx).add((bit / 64) as usize) };
            let mask = 1u64 << (bit % 64);
            // SAFETY: as above; we hold the lock.
            let word = unsafe { *w };
            if word & mask == 0 {
                return Err(FreeError::ChunkAlreadyFree);
            }
            // SAFETY: as above.
            unsafe { *w = word & !mask };
            let d = &mut self.d[idx as usize];
            let was_full = d.slab == info.cap as u64;
            d.slab -= 1;
            (was_full, d.slab == 0)
        } else {
            let mask = 1u64 << bit;
            if desc.slab & mask == 0 {
                return Err(FreeError::ChunkAlreadyFree);
            }
            let d = &mut self.d[idx as usize];
            d.slab &= !mask;
            (desc.slab == info.full, d.slab == 0)
        };
        self.st.classes[c].used -= 1;
        if was_full {
            push(&mut self.st.classes[c].head, self.d, idx);
        }
        if empty {
            if self.st.classes[c].head == idx && self.d[idx as usize].next == NIL {
                // The class's only page: keep it, so that an alloc+free
                // pair does not take and give back a page every time.
                self.st.classes[c].cached = idx;
            } else {
                unlink(&mut self.st.classes[c].head, self.d, idx);
                self.st.classes[c].total -= info.cap as u64;
                self.release_page(idx);
            }
        }
        Ok(())
    }

    #[inline(never)]
    fn free_run(&mut self, idx: u32, off: usize, desc: Desc) -> Result<(), FreeError> {
        match desc.prev.tag() {
            Link::RUN if off != 0 => Err(FreeError::WrongChunk),
            Link::RUN if desc.slab == 0 => Err(FreeError::WrongPage),
            Link::RUN => {
                let n = desc.slab as u32;
                self.st.run_pages -= n;
                self.free_pages(idx, n);
                Ok(())
            }
            _ if off == 0 => Err(FreeError::PageAlreadyFree),
            _ => Err(FreeError::WrongChunk),
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
