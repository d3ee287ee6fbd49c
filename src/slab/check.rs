//! `check()`: walks every descriptor, list and bitmap and names the first
//! broken invariant. No allocation, so it can run under the lock.

use std::fmt;

use super::layout::{
    Desc, Link, State, FIRST_DESC_BITMAP_CLASS, INTERNAL, NCLASSES, NIL, SLAB_PAGE,
};
use super::{Pool, PoolGuard};

/// The first broken invariant that [`Pool::check`](super::Pool::check) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckError {
    invariant: &'static str,
    page: Option<usize>,
    found: u64,
    expected: u64,
}

impl CheckError {
    fn new(invariant: &'static str, page: Option<u32>, found: u64, expected: u64) -> CheckError {
        CheckError {
            invariant,
            page: page.map(|p| p as usize),
            found,
            expected,
        }
    }

    /// A broken invariant of the per-thread caches.
    pub(crate) fn cache(invariant: &'static str) -> CheckError {
        CheckError::new(invariant, None, 0, 0)
    }

    /// The invariant that does not hold, in words.
    pub fn invariant(&self) -> &'static str {
        self.invariant
    }

    /// The page index where it was found, if it concerns one page.
    pub fn page(&self) -> Option<usize> {
        self.page
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slab pool corrupt: {}", self.invariant)?;
        if let Some(p) = self.page {
            write!(f, " at page {p}")?;
        }
        write!(f, " (found {}, expected {})", self.found, self.expected)
    }
}

impl std::error::Error for CheckError {}

fn fail(invariant: &'static str, page: u32, found: u64, expected: u64) -> Result<(), CheckError> {
    Err(CheckError::new(invariant, Some(page), found, expected))
}

fn fail_pool(invariant: &'static str, found: u64, expected: u64) -> Result<(), CheckError> {
    Err(CheckError::new(invariant, None, found, expected))
}

/// Walks the whole pool. `pages` is the first data page in this process.
pub(crate) fn check(st: &State, d: &[Desc], pages: *const u8) -> Result<(), CheckError> {
    let npages = d.len() as u32;
    let cls = super::layout::classes_for(d.len());
    let mut free_pages = 0u64;
    let mut free_runs = 0u64;
    let mut run_pages = 0u64;
    let mut used = [0u64; NCLASSES];
    let mut total = [0u64; NCLASSES];
    let mut open = [0u64; NCLASSES];
    let mut empty = [0u64; NCLASSES];
    let mut empty_page = [NIL; NCLASSES];
    let mut prev_free = false;
    let mut i = 0u32;
    while i < npages {
        let p = d[i as usize];
        match p.prev.tag() {
            Link::FREE => {
                let len = p.slab;
                if len == 0 || len > (npages - i) as u64 {
                    return fail("free run length out of range", i, len, 1);
                }
                if prev_free {
                    return fail("adjacent free runs not coalesced", i, 1, 0);
                }
                let len = len as u32;
                for k in i + 1..i + len {
                    let q = d[k as usize];
                    let want = if k == i + len - 1 {
                        Desc {
                            slab: 0,
                            next: NIL,
                            prev: Link::new(Link::FREE, i),
                        }
                    } else {
                        Desc::INNER_FREE
                    };
                    if q != want {
                        return fail("free run page not in its canonical state", k, q.slab, 0);
                    }
                }
                free_pages += len as u64;
                free_runs += 1;
                prev_free = true;
                i += len;
            }
            Link::RUN => {
                let len = p.slab;
                if len == 0
                    || len > (npages - i) as u64
                    || p.prev.idx() != NIL
                    || (p.next != NIL && p.next != INTERNAL)
                {
                    return fail("page run head malformed", i, len, 1);
                }
                let len = len as u32;
                for k in i + 1..i + len {
                    let q = d[k as usize];
                    if q.prev != Link::new(Link::RUN, i) || q.slab != 0 || q.next != NIL {
                        return fail("page run inner page malformed", k, q.slab, 0);
                    }
                }
                run_pages += len as u64;
                prev_free = false;
                i += len;
            }
            _ => {
                let Some(c) = p.prev.class() else {
                    let what = if p.prev.inner_class().is_some() {
                        "inner slab page outside a slab"
                    } else {
                        "unknown page tag"
                    };
                    return fail(what, i, p.prev.tag() as u64, 0);
                };
                let info = &cls[c];
                if info.pages > npages - i {
                    return fail("slab past the pool's end", i, info.pages as u64, 0);
                }
                for k in i + 1..i + info.pages {
                    let q = d[k as usize];
                    let want = Desc {
                        slab: 0,
                        next: NIL,
                        prev: Link::inner(c, i),
                    };
                    if q != want {
                        return fail(
                            "inner slab page malformed",
                            k,
                            q.prev.0 as u64,
                            want.prev.0 as u64,
                        );
                    }
                }
                let n = if c < FIRST_DESC_BITMAP_CLASS {
                    let bm = pages.wrapping_add(i as usize * SLAB_PAGE).cast::<u64>();
                    let mut set = 0u64;
                    let words = info.words as usize;
                    for w in 0..words {
                        // SAFETY: page i is a small page inside the pool; its
                        // first words are its bitmap, 8-aligned.
                        let word = unsafe { *bm.add(w) };
                        let lo = (w * 64) as u32;
                        let reserved = info.reserved.saturating_sub(lo).min(64);
                        let mut rmask = if reserved == 64 {
                            u64::MAX
                        } else {
                            (1u64 << reserved) - 1
                        };
                        if w + 1 == words {
                            rmask |= info.full;
                        }
                        if word & rmask != rmask {
                            return fail("small page bitmap area marked free", i, word, rmask);
                        }
                        set += (word & !rmask).count_ones() as u64;
                    }
                    if set != p.slab {
                        return fail(
                            "small page used count disagrees with bitmap",
                            i,
                            p.slab,
                            set,
                        );
                    }
                    set
                } else {
                    if p.slab & !info.full != 0 {
                        return fail("bitmap bits beyond the slab's chunks", i, p.slab, info.full);
                    }
                    p.slab.count_ones() as u64
                };
                used[c] += n;
                total[c] += info.cap as u64;
                if n < info.cap as u64 {
                    open[c] += 1;
                } else if p.next != NIL || p.prev.idx() != NIL || st.classes[c].head == i {
                    return fail("full slab still on its class list", i, n, info.cap as u64);
                }
                if n == 0 {
                    empty[c] += 1;
                    empty_page[c] = i;
                }
                prev_free = false;
                i += info.pages;
            }
        }
    }
    if free_pages != st.pfree as u64 {
        return fail_pool("free page count", st.pfree as u64, free_pages);
    }
    if st.page_fails > st.page_reqs {
        return fail_pool(
            "page-run failures above requests",
            st.page_fails,
            st.page_reqs,
        );
    }
    if run_pages != st.run_pages as u64 {
        return fail_pool("page run count", st.run_pages as u64, run_pages);
    }
    let listed = walk(st.free_head, d, |q| {
        q.prev.tag() == Link::FREE && q.slab > 0
    })?;
    if listed != free_runs {
        return fail_pool("free runs on the list", listed, free_runs);
    }
    for c in 0..NCLASSES {
        let listed = walk(st.classes[c].head, d, |q| {
            q.prev.class() == Some(c) && {
                let n = if c < FIRST_DESC_BITMAP_CLASS {
                    q.slab
                } else {
                    q.slab.count_ones() as u64
                };
                n < cls[c].cap as u64
            }
        })?;
        if listed != open[c] {
            return fail_pool(
                "pages with free chunks on their class list",
                listed,
                open[c],
            );
        }
        let s = &st.classes[c];
        // A saturated request counter (see `count`) no longer says how many
        // requests there were: nothing to relate.
        if s.reqs != u64::MAX && (s.fails > s.reqs || s.used > s.reqs - s.fails) {
            return fail_pool(
                "class requests fewer than failures plus chunks in use",
                s.reqs,
                s.fails.saturating_add(s.used),
            );
        }
        if s.used != used[c] {
            return fail_pool("class used count", s.used, used[c]);
        }
        if s.total != total[c] {
            return fail_pool("class total count", s.total, total[c]);
        }
        // At most one empty page per class, and `cached` names it (when
        // there is none, `cached` is only a hint and may be stale).
        if empty[c] > 1 {
            return fail_pool("more than one empty page kept by a class", empty[c], 1);
        }
        let cached = st.classes[c].cached;
        if empty[c] == 1 && cached != empty_page[c] {
            return fail(
                "a class's empty page is not its kept page",
                empty_page[c],
                cached as u64,
                empty_page[c] as u64,
            );
        }
    }
    Ok(())
}

/// Walks a list from `head`: every element satisfies `ok`, back links
/// agree, no cycle. Returns its length.
fn walk(head: u32, d: &[Desc], ok: impl Fn(&Desc) -> bool) -> Result<u64, CheckError> {
    let mut n = 0u64;
    let mut prev = NIL;
    let mut i = head;
    while i != NIL {
        let Some(q) = d.get(i as usize) else {
            return fail("list link out of range", prev, i as u64, d.len() as u64).map(|_| 0);
        };
        if !ok(q) {
            return fail("list element of the wrong kind", i, q.slab, 0).map(|_| 0);
        }
        if q.prev.idx() != prev {
            return fail("list back link", i, q.prev.idx() as u64, prev as u64).map(|_| 0);
        }
        n += 1;
        if n > d.len() as u64 {
            return fail("list has a cycle", i, n, d.len() as u64).map(|_| 0);
        }
        prev = i;
        i = q.next;
    }
    Ok(n)
}

impl PoolGuard<'_> {
    /// Calls `f(offset, bytes)` for every allocated page run, in address
    /// order; `offset` is from the pool's base. The walk is bounded by the
    /// page count and a run length out of range is an `Err` (run
    /// [`check_locked`](PoolGuard::check_locked) first for the rest).
    pub(crate) fn page_runs_locked(
        &self,
        mut f: impl FnMut(usize, usize),
    ) -> Result<(), CheckError> {
        let (_, d, _) = self.view();
        let start = self.pool().start_off;
        let npages = d.len() as u32;
        let mut i = 0u32;
        while i < npages {
            let p = d[i as usize];
            let tag = p.prev.tag();
            i += if tag == Link::FREE || tag == Link::RUN {
                let len = p.slab;
                if len == 0 || len > (npages - i) as u64 {
                    return fail("page run length out of range", i, len, 1);
                }
                if tag == Link::RUN {
                    f(start + i as usize * SLAB_PAGE, len as usize * SLAB_PAGE);
                }
                len as u32
            } else {
                1
            };
        }
        Ok(())
    }
}

impl Pool {
    /// Where this pool keeps its metadata, for tests and fuzz targets that
    /// craft damaged pools: `(desc, start, npages)`, offsets from the pool's
    /// base of the descriptor array and of the first data page, and the
    /// page count. Page `i`'s descriptor is the 16 bytes at `desc + 16 * i`:
    /// `slab: u64`, `next: u32`, `prev: u32` with the page's tag in the top
    /// 8 bits of `prev` (0 free, 1 page run, 2 + c the first page of a slab
    /// of class c, 2 + NCLASSES + c a later page of a multi-page slab of
    /// class c) and a page index in the low 24. The allocator state (list heads, counters)
    /// and the journal lie before `desc`.
    #[doc(hidden)]
    pub fn metadata_layout(&self) -> (usize, usize, usize) {
        (self.desc_off, self.start_off, self.npages as usize)
    }

    /// Bytes from the pool's base to its first data page: the header and
    /// the page descriptors, the metadata an inspector reads.
    pub(crate) fn meta_len(&self) -> usize {
        self.start_off
    }

    /// Calls `f(offset, bytes)` for the rest of the allocator's metadata:
    /// the bitmap at the start of every small-chunk page (8, 16 and 32-byte
    /// classes keep it in the page), as the descriptors say; `offset` is
    /// from the pool's base.
    ///
    /// # Safety
    /// The pool's header and descriptors are readable and nobody writes
    /// them meanwhile (a private snapshot). Whatever they hold, only
    /// descriptors below the page count are read and only ranges inside
    /// the pool are reported.
    pub(crate) unsafe fn small_page_bitmaps(&self, mut f: impl FnMut(usize, usize)) {
        let d = self
            .base
            .as_ptr()
            .wrapping_add(self.desc_off)
            .cast::<Desc>();
        for i in 0..self.npages as usize {
            // SAFETY: i < npages: a descriptor inside the pool (geometry
            // checked by attach), aligned; the caller says nobody writes it.
            let p = unsafe { d.add(i).read_volatile() };
            if let Some(c) = p.prev.class() {
                if c < FIRST_DESC_BITMAP_CLASS {
                    f(
                        self.start_off + i * SLAB_PAGE,
                        self.cls[c].words as usize * 8,
                    );
                }
            }
        }
    }
}
