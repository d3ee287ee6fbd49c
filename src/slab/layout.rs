//! What a pool looks like in shared memory: the header, the page
//! descriptors, and the size-class tables.
//!
//! ```text
//! base ─► Header (896 B: identity, name, the lock, the journal header and
//!                 each class on lines of their own)
//!         journal records (journal_words(len) × 8 B: the undo log of the
//!                 section open under the lock, see crate::journal)
//!         CacheDir (1088 B: the per-thread caches' directory, see cache.rs)
//!         Desc[npages]   (16 B each, u32 links)
//!         padding to a SLAB_PAGE boundary
//! start ─► page 0, page 1, ... page npages-1 (SLAB_PAGE each)
//! ```
//!
//! Everything here is `#[repr(C)]`, its size and alignment asserted, and
//! holds offsets or u32 page indices, never pointers (DESIGN.md invariant 1).

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64};

use static_assertions::{assert_eq_size, const_assert, const_assert_eq};

use crate::journal::JournalHeader;
use crate::shmtx::ShmMutex;

/// The slab page size, fixed on every platform.
pub const SLAB_PAGE: usize = 4096;
/// log2 of [`SLAB_PAGE`].
pub(crate) const PAGE_SHIFT: u32 = 12;
/// log2 of the smallest chunk (8 bytes).
pub(crate) const MIN_SHIFT: u32 = 3;
/// The number of size classes: 8, 16, ... 2048 bytes.
pub const NCLASSES: usize = 9;
/// The largest chunk size: half a page. Larger requests take whole pages.
pub const MAX_CHUNK: usize = SLAB_PAGE / 2;
/// Classes below this keep their bitmap in the page's first chunks
/// (nginx's SMALL pages); the others keep it in the descriptor's `slab` word
/// (nginx's EXACT and BIG pages).
pub(crate) const FIRST_DESC_BITMAP_CLASS: usize = 3;

/// "SHMZSLAB" read as a little-endian u64.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SHMZSLAB");
/// Bumped whenever the layout below changes.
pub(crate) const VERSION: u32 = 3;
/// The longest zone name kept in the header, in bytes.
pub const NAME_MAX: usize = 63;

/// "No page": the end of a list, or no cached page.
pub(crate) const NIL: u32 = Link::IDX_MASK;
/// The `next` word of an allocated run's first page that the pool uses
/// itself (a per-thread cache's slot body): no user's free may take it.
/// Never a page index (those stay below `MAX_PAGES`).
pub(crate) const INTERNAL: u32 = NIL - 1;
/// The most pages one pool can hold (the index must fit in 28 bits).
pub(crate) const MAX_PAGES: usize = (Link::IDX_MASK - 1) as usize;

/// Per-class constants, indexed by class.
pub(crate) struct ClassInfo {
    /// Chunks in one page (including the bitmap's own, for small classes).
    pub chunks: u32,
    /// Chunks that hold the in-page bitmap (small classes only).
    pub reserved: u32,
    /// Usable chunks per page: `chunks - reserved`.
    pub cap: u32,
    /// For descriptor bitmaps: the value of `slab` when every chunk is used.
    pub full: u64,
}

const fn class_info(c: usize) -> ClassInfo {
    let shift = MIN_SHIFT + c as u32;
    let size = 1u32 << shift;
    let chunks = (SLAB_PAGE as u32) >> shift;
    if c < FIRST_DESC_BITMAP_CLASS {
        let bitmap_bytes = chunks / 8;
        let reserved = bitmap_bytes.div_ceil(size);
        ClassInfo {
            chunks,
            reserved,
            cap: chunks - reserved,
            full: 0,
        }
    } else {
        ClassInfo {
            chunks,
            reserved: 0,
            cap: chunks,
            full: if chunks == 64 {
                u64::MAX
            } else {
                (1u64 << chunks) - 1
            },
        }
    }
}

/// The class table.
pub(crate) const CLASS: [ClassInfo; NCLASSES] = [
    class_info(0),
    class_info(1),
    class_info(2),
    class_info(3),
    class_info(4),
    class_info(5),
    class_info(6),
    class_info(7),
    class_info(8),
];

const_assert_eq!(CLASS[0].cap, 504);
const_assert_eq!(CLASS[1].cap, 254);
const_assert_eq!(CLASS[2].cap, 127);
const_assert_eq!(CLASS[3].full, u64::MAX);
const_assert_eq!(CLASS[8].full, 3);

/// The chunk size of class `c`.
#[inline]
pub(crate) const fn class_size(c: usize) -> usize {
    1 << (MIN_SHIFT as usize + c)
}

/// The class serving `size` (`size <= MAX_CHUNK`; 0 is served by class 0).
#[inline]
pub(crate) const fn class_of(size: usize) -> usize {
    if size <= 8 {
        0
    } else {
        (usize::BITS - (size - 1).leading_zeros() - MIN_SHIFT) as usize
    }
}

/// Whole pages needed for `size` bytes, without overflow.
#[inline]
pub(crate) const fn pages_for(size: usize) -> usize {
    (size >> PAGE_SHIFT) + (size & (SLAB_PAGE - 1) != 0) as usize
}

/// A descriptor's `prev` word: the page's tag in the top 4 bits, a page
/// index (or [`NIL`]) in the low 28.
///
/// | tag | page is |
/// |---|---|
/// | 0 (`FREE`) | free; `slab` = run length on a run's first page, 0 elsewhere |
/// | 1 (`RUN`) | in an allocated page run; `slab` = its length on the first page, 0 elsewhere |
/// | 2 + c | a slab page of class c |
///
/// The index is the previous element of the page's list (free runs, a
/// class's pages with free chunks), or on a free run's last page the run's
/// first page (the back-tag used to coalesce), or on an allocated run's
/// inner pages the run's first page.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Link(pub u32);

impl Link {
    pub const IDX_MASK: u32 = (1 << 28) - 1;
    pub const FREE: u32 = 0;
    pub const RUN: u32 = 1;
    pub const SLAB0: u32 = 2;

    #[inline]
    pub const fn new(tag: u32, idx: u32) -> Link {
        Link((tag << 28) | idx)
    }
    #[inline]
    pub const fn slab(class: usize, idx: u32) -> Link {
        Link::new(Link::SLAB0 + class as u32, idx)
    }
    #[inline]
    pub const fn tag(self) -> u32 {
        self.0 >> 28
    }
    #[inline]
    pub const fn idx(self) -> u32 {
        self.0 & Self::IDX_MASK
    }
    /// The class of a slab page, if this is one.
    #[inline]
    pub const fn class(self) -> Option<usize> {
        let c = self.tag().wrapping_sub(Link::SLAB0);
        if c < NCLASSES as u32 {
            Some(c as usize)
        } else {
            None
        }
    }
    #[inline]
    pub const fn with_idx(self, idx: u32) -> Link {
        Link((self.0 & !Self::IDX_MASK) | idx)
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idx = self.idx();
        let kind = match (self.tag(), self.class()) {
            (Link::FREE, _) => "free".to_string(),
            (Link::RUN, _) => "run".to_string(),
            (_, Some(c)) => format!("slab{}", class_size(c)),
            (t, None) => format!("bad-tag{t}"),
        };
        if idx == NIL {
            write!(f, "{kind}|nil")
        } else {
            write!(f, "{kind}|{idx}")
        }
    }
}

/// One page's descriptor.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Desc {
    /// Run length; or a small page's count of used chunks; or a
    /// descriptor-bitmap page's bitmap (bit i = chunk i used).
    pub slab: u64,
    /// The next element of the page's list, or [`NIL`].
    pub next: u32,
    /// Tag and previous element, see [`Link`].
    pub prev: Link,
}

assert_eq_size!(Desc, [u8; 16]);
const_assert_eq!(std::mem::align_of::<Desc>(), 8);

impl Desc {
    /// A free page that is neither first nor last of its run.
    pub const INNER_FREE: Desc = Desc {
        slab: 0,
        next: NIL,
        prev: Link::new(Link::FREE, NIL),
    };
}

impl fmt::Debug for Desc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Desc");
        match self.prev.class() {
            Some(c) if c < FIRST_DESC_BITMAP_CLASS => d.field("used", &self.slab),
            Some(_) => d.field("bitmap", &format_args!("{:#x}", self.slab)),
            None => d.field("len", &self.slab),
        };
        if self.next == NIL {
            d.field("next", &"nil");
        } else {
            d.field("next", &self.next);
        }
        d.field("prev", &self.prev).finish()
    }
}

/// One size class's list head and counters, on a cache line of its own:
/// an allocation or free of the class touches this line (and the lock's,
/// and the page's descriptor) and no other header line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C, align(64))]
pub(crate) struct ClassState {
    /// First page of the class's list of pages with a free chunk.
    pub head: u32,
    /// An empty page the class keeps instead of freeing it (at most one),
    /// or NIL. Given back when a page run cannot be found.
    pub cached: u32,
    /// Chunks in use. `used`, `reqs` and `bytes_requested` are adjacent:
    /// an allocation's journal record saves the three in one.
    pub used: u64,
    /// Allocation requests.
    pub reqs: u64,
    /// Sum of the sizes asked for by successful allocations.
    pub bytes_requested: u64,
    /// Usable chunks in the class's pages.
    pub total: u64,
    /// Allocation requests that failed.
    pub fails: u64,
    /// Chunks moved into per-thread caches by refills (counted in `reqs`:
    /// a chunk leaving the slab is a request of the slab's; the stats
    /// subtract them and add the caches' own requests instead).
    pub to_caches: u64,
    pub _pad: u64,
}

assert_eq_size!(ClassState, [u8; 64]);

impl ClassState {
    pub const EMPTY: ClassState = ClassState {
        head: NIL,
        cached: NIL,
        total: 0,
        used: 0,
        reqs: 0,
        fails: 0,
        bytes_requested: 0,
        to_caches: 0,
        _pad: 0,
    };
}

/// The allocator's mutable state: only touched with the lock held.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C, align(64))]
pub(crate) struct State {
    pub classes: [ClassState; NCLASSES],
    /// First run on the list of free runs.
    pub free_head: u32,
    /// Free pages.
    pub pfree: u32,
    /// Pages in allocated page runs.
    pub run_pages: u32,
    pub _pad: u32,
    /// Page-run requests (over MAX_CHUNK) and their failures.
    pub page_reqs: u64,
    pub page_fails: u64,
    /// Sum of the sizes asked for by successful page-run allocations.
    pub run_bytes_requested: u64,
    /// Sum of the run sizes they were given.
    pub run_bytes: u64,
}

assert_eq_size!(State, [u8; 640]);

/// The pool header at `base`.
#[repr(C, align(64))]
pub(crate) struct Header {
    pub magic: u64,
    pub version: u32,
    pub npages: u32,
    pub len: u64,
    pub desc_off: u64,
    pub start_off: u64,
    /// nginx's `shpool->data`: offset of the user's root structure, 0 = none.
    pub root: AtomicU64,
    /// Whether "no memory" is logged (1) or not (0).
    pub log_nomem: AtomicU32,
    pub name_len: u32,
    pub name: [u8; 64],
    /// How many bytes before `base` the journal's records may name (the
    /// region pool's journal also guards the region header); 0 for zones.
    pub jscope: u32,
    pub _pad: u32,
    /// On its own cache line, away from the hot state.
    pub lock: ShmMutex,
    /// The undo journal of the section open under `lock`.
    pub journal: JournalHeader,
    pub state: State,
}

assert_eq_size!(Header, [u8; 896]);
const_assert_eq!(std::mem::align_of::<Header>(), 64);
const_assert_eq!(std::mem::offset_of!(Header, lock), 128);
const_assert_eq!(std::mem::offset_of!(Header, journal), 192);
const_assert!(std::mem::size_of::<Header>() % std::mem::align_of::<Desc>() == 0);

/// The journal's record area for a pool of `len` bytes, in 8-byte words:
/// `len / 128` bytes, at least 8 KiB (any one allocator operation fits,
/// with room for the caller's own records), at most 32 KiB.
pub(crate) const fn journal_words(len: usize) -> usize {
    let bytes = len / 128;
    let bytes = if bytes < JOURNAL_MIN {
        JOURNAL_MIN
    } else if bytes > JOURNAL_MAX {
        JOURNAL_MAX
    } else {
        bytes
    };
    bytes / 8
}
/// The smallest and largest journal record area, in bytes.
pub(crate) const JOURNAL_MIN: usize = 8 << 10;
pub(crate) const JOURNAL_MAX: usize = 32 << 10;

/// Where everything sits in a pool of `len` bytes (already whole pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub npages: usize,
    pub jwords: usize,
    /// Where the caches' directory sits (right after the journal records).
    pub cache_off: usize,
    pub desc_off: usize,
    pub start_off: usize,
}

/// Where the journal's records start.
pub(crate) const JOURNAL_OFF: usize = std::mem::size_of::<Header>();

/// The layout of a pool of `len` bytes, or None if it holds no page.
/// Pools big enough for per-thread caches (see `cache.rs`) hold the
/// caches' directory between the journal records and the descriptors;
/// smaller ones do not spend those bytes.
pub(crate) fn geometry(len: usize) -> Option<Geometry> {
    let g = geometry_with(len, 0)?;
    if !super::cache::cacheable(g.npages) {
        return Some(g);
    }
    let with = geometry_with(len, std::mem::size_of::<super::cache::CacheDir>())?;
    Some(if super::cache::cacheable(with.npages) {
        with
    } else {
        g
    })
}

fn geometry_with(len: usize, dir: usize) -> Option<Geometry> {
    let jwords = journal_words(len);
    // The directory is 64-aligned (its lines are the caches' hot ones).
    let cache_off = (JOURNAL_OFF + jwords * 8).next_multiple_of(64);
    let hdr = cache_off + dir;
    let per_page = SLAB_PAGE + std::mem::size_of::<Desc>();
    let mut npages = len.checked_sub(hdr)? / per_page;
    npages = npages.min(MAX_PAGES);
    loop {
        if npages == 0 {
            return None;
        }
        let descs_end = hdr + npages * std::mem::size_of::<Desc>();
        let start_off = descs_end.next_multiple_of(SLAB_PAGE);
        if start_off + npages * SLAB_PAGE <= len {
            return Some(Geometry {
                npages,
                jwords,
                cache_off,
                desc_off: hdr,
                start_off,
            });
        }
        npages -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class_of(0), 0);
        assert_eq!(class_of(8), 0);
        assert_eq!(class_of(9), 1);
        assert_eq!(class_of(64), 3);
        assert_eq!(class_of(65), 4);
        assert_eq!(class_of(2048), 8);
        for c in 0..NCLASSES {
            assert_eq!(class_of(class_size(c)), c);
        }
        assert_eq!(pages_for(usize::MAX), (usize::MAX >> 12) + 1);
        assert_eq!(pages_for(4096), 1);
        assert_eq!(pages_for(4097), 2);
    }

    #[test]
    fn cache_directory_is_aligned() {
        for pages in 250..400 {
            let g = geometry(pages * SLAB_PAGE).unwrap();
            assert_eq!(g.cache_off % 64, 0, "{pages} pages");
            assert!(g.desc_off >= g.cache_off);
        }
    }

    #[test]
    fn geometry_64mib_beats_nginx() {
        let g = geometry(64 << 20).unwrap();
        // nginx: 16288 usable pages.
        assert!(g.npages >= 16288, "{g:?}");
        assert_eq!(g.start_off % SLAB_PAGE, 0);
        // The header, an 8 KiB journal and the descriptors take 3 pages.
        assert_eq!(geometry(8 * SLAB_PAGE).unwrap().npages, 5);
        assert!(geometry(SLAB_PAGE).is_none());
    }

    #[test]
    fn link_packing() {
        let l = Link::slab(4, 77);
        assert_eq!(l.class(), Some(4));
        assert_eq!(l.idx(), 77);
        assert_eq!(l.with_idx(NIL).idx(), NIL);
        assert_eq!(Link::new(Link::FREE, 3).class(), None);
        assert_eq!(format!("{l:?}"), "slab128|77");
    }
}
