//! What a pool looks like in shared memory: the header, the page
//! descriptors, and the size-class tables.
//!
//! ```text
//! base ─► Header (4288 B: identity, name, the lock, the journal header and
//!                 each class on lines of their own)
//!         journal records (journal_words(len) × 8 B: the undo log of the
//!                 section open under the lock, see crate::journal)
//!         CacheDir (1088 B: the per-thread caches' directory, see cache/mod.rs)
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
/// The number of size classes: 8, 16, ... 128 bytes (8-byte steps), then
/// eight classes per power of two (144, 160, ... 256, 288, 320, ...) up to
/// 7168: a request rounds up by at most a ninth of its chunk (11 %).
pub const NCLASSES: usize = 62;
/// The largest chunk size served by a class. Larger requests take page runs.
pub const MAX_CHUNK: usize = 7168;
/// Classes below this (chunks under 64 bytes: more than 64 chunks in a page)
/// keep their bitmap in the page's first chunks (nginx's SMALL pages); the
/// others keep it in the descriptor's `slab` word (at most 64 chunks a slab).
pub(crate) const FIRST_DESC_BITMAP_CLASS: usize = 7;
/// Classes up to this size cut one-page slabs in pools of fewer than
/// [`WIDE_PAGES`] pages.
pub(crate) const MAX_NARROW_CHUNK: usize = 1024;
/// Pools of this many pages (8 MiB) or more cut the classes' slabs from
/// the wide table (see `slab_pages`).
pub(crate) const WIDE_PAGES: usize = 2048;
/// Counts one more in a statistics counter (requests, failures). The
/// counters saturate at `u64::MAX` rather than wrap: a garbage counter
/// (written over, or left by a bug) stays at the top, where `check` no
/// longer relates it to the others, instead of wrapping to a value that
/// contradicts them. No pool makes 2^64 requests.
#[inline(always)]
pub(crate) fn count(x: &mut u64) {
    *x = x.saturating_add(1);
}

/// Takes back a [`count`] (a request that turned into another kind), unless
/// the counter is saturated.
#[inline(always)]
pub(crate) fn uncount(x: &mut u64) {
    if *x != u64::MAX {
        *x = x.saturating_sub(1);
    }
}
/// The most pages one slab of a class spans.
pub(crate) const MAX_SLAB_PAGES: u32 = 8;

/// "SHMZSLAB" read as a little-endian u64.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SHMZSLAB");
/// Bumped whenever the layout below changes.
pub(crate) const VERSION: u32 = 5;
/// The longest zone name kept in the header, in bytes.
pub const NAME_MAX: usize = 63;

/// "No page": the end of a list, or no cached page.
pub(crate) const NIL: u32 = Link::IDX_MASK;
/// The `next` word of an allocated run's first page that the pool uses
/// itself (a per-thread cache's slot body): no user's free may take it.
/// Never a page index (those stay below `MAX_PAGES`).
pub(crate) const INTERNAL: u32 = NIL - 1;
/// The most pages one pool can hold (the index must fit in
/// [`Link::IDX_BITS`] = 24 bits: 16,777,214 pages, 64 GiB less 8 KiB);
/// `geometry` leaves the pages of a larger range unused.
pub(crate) const MAX_PAGES: usize = (Link::IDX_MASK - 1) as usize;

/// The chunk sizes, by class.
const SIZES: [u32; NCLASSES] = [
    8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, //
    144, 160, 176, 192, 208, 224, 240, 256, //
    288, 320, 352, 384, 416, 448, 480, 512, //
    576, 640, 704, 768, 832, 896, 960, 1024, //
    1152, 1280, 1408, 1536, 1664, 1792, 1920, 2048, //
    2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, //
    4608, 5120, 5632, 6144, 6656, 7168,
];

/// Per-class constants, indexed by class.
///
/// A class's memory comes in *slabs*: runs of `pages` pages (one for most
/// classes) cut into `chunks` chunks of `size` bytes from the slab's first
/// byte; the slab's first page's descriptor is its head (class tag, list
/// links, bitmap or used count), the others point to it. A chunk is thus
/// aligned to the largest power of two dividing its size (`1 << shift`).
pub(crate) struct ClassInfo {
    /// The chunk size.
    pub size: u32,
    /// log2 of the largest power of two dividing `size`.
    pub shift: u32,
    /// `(1 << shift) - 1`: a chunk start's low bits are clear.
    pub low: u32,
    /// The inverse of `size >> shift` (odd) modulo 2^32: for a slab offset
    /// `o` with `o & low == 0`, `((o >> shift) as u32) * inv` is the chunk
    /// index `o / size` if `size` divides `o`, and otherwise a number far
    /// above `chunks` (see [`chunk_at`]). No division on the free path.
    pub inv: u32,
    /// Pages in one slab.
    pub pages: u32,
    /// Chunks in one slab (including the bitmap's own, for small classes).
    pub chunks: u32,
    /// Chunks that hold the in-page bitmap (small classes only).
    pub reserved: u32,
    /// Usable chunks per slab: `chunks - reserved`.
    pub cap: u32,
    /// Small classes: the in-page bitmap's length in u64 words; 0 for the
    /// others.
    pub words: u32,
    /// Descriptor bitmaps: the value of `slab` when every chunk is used.
    /// Small classes: the bits of the bitmap's last word past the last
    /// chunk, always set.
    pub full: u64,
}

/// Pages per slab for chunks of `size` bytes: the fewest pages (at most
/// [`MAX_SLAB_PAGES`]) whose tail past the last chunk is at most 1/32 of the
/// slab, or if none is, the least wasteful (3840-byte chunks: 1/16). Small
/// classes (in-page bitmaps) keep one page, and so do all classes up to
/// [`MAX_NARROW_CHUNK`] in a narrow table (`wide` false).
///
/// Every class holds a partly used slab, so long slabs strand memory in a
/// small zone with many sizes live (500 values of 1..500 bytes fill a
/// 256 KiB zone with one-page slabs, but only 411 of them fit with wide
/// slabs), while in a large zone their shorter tails win (3 % of a dict's
/// zone): pools of [`WIDE_PAGES`] pages or more use the wide table.
const fn slab_pages(size: u32, wide: bool) -> u32 {
    let page = SLAB_PAGE as u32;
    if size < 64 || (!wide && size as usize <= MAX_NARROW_CHUNK) {
        return 1;
    }
    let (mut k, mut best, mut best_waste) = (1, 1, u32::MAX);
    while k <= MAX_SLAB_PAGES {
        let mut n = k * page / size;
        if n > 64 {
            n = 64;
        }
        if n > 0 {
            let waste = k * page - n * size;
            if waste * 32 <= k * page {
                return k;
            }
            // Compare waste fractions: waste / (k * page).
            let frac = waste * 1024 / k;
            if frac < best_waste {
                best_waste = frac;
                best = k;
            }
        }
        k += 1;
    }
    best
}

/// The inverse of odd `m` modulo 2^32 (Newton's iteration: each step
/// doubles the correct low bits; `m` itself is right to 3 bits).
const fn inverse_mod_2_32(m: u32) -> u32 {
    let mut x = m;
    let mut i = 0;
    while i < 4 {
        x = x.wrapping_mul(2u32.wrapping_sub(m.wrapping_mul(x)));
        i += 1;
    }
    x
}

const fn class_info(c: usize, wide: bool) -> ClassInfo {
    let size = SIZES[c];
    let shift = size.trailing_zeros();
    let low = (1 << shift) - 1;
    let inv = inverse_mod_2_32(size >> shift);
    let pages = slab_pages(size, wide);
    let mut chunks = pages * SLAB_PAGE as u32 / size;
    if c < FIRST_DESC_BITMAP_CLASS {
        let words = chunks.div_ceil(64);
        let reserved = (words * 8).div_ceil(size);
        let full = if chunks % 64 == 0 {
            0
        } else {
            !((1u64 << (chunks % 64)) - 1)
        };
        ClassInfo {
            size,
            shift,
            low,
            inv,
            pages,
            chunks,
            reserved,
            cap: chunks - reserved,
            words,
            full,
        }
    } else {
        if chunks > 64 {
            chunks = 64;
        }
        ClassInfo {
            size,
            shift,
            low,
            inv,
            pages,
            chunks,
            reserved: 0,
            cap: chunks,
            words: 0,
            full: if chunks == 64 {
                u64::MAX
            } else {
                (1u64 << chunks) - 1
            },
        }
    }
}

const fn class_table(wide: bool) -> [ClassInfo; NCLASSES] {
    // A const array built in a loop needs an initial value of the type.
    let mut t = [const {
        ClassInfo {
            size: 0,
            shift: 0,
            low: 0,
            inv: 0,
            pages: 0,
            chunks: 0,
            reserved: 0,
            cap: 0,
            words: 0,
            full: 0,
        }
    }; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = class_info(c, wide);
        c += 1;
    }
    t
}

/// The class table of pools under [`WIDE_PAGES`] pages.
pub(crate) static CLASS: [ClassInfo; NCLASSES] = class_table(false);
/// The class table of pools of [`WIDE_PAGES`] pages or more.
pub(crate) static CLASS_WIDE: [ClassInfo; NCLASSES] = class_table(true);

/// A class table (the same for every class but the slab geometry).
pub(crate) type Classes = [ClassInfo; NCLASSES];

/// The class table of a pool of `npages` data pages.
#[inline]
pub(crate) fn classes_for(npages: usize) -> &'static Classes {
    if npages >= WIDE_PAGES {
        &CLASS_WIDE
    } else {
        &CLASS
    }
}

const NARROW: Classes = class_table(false);
const WIDE: Classes = class_table(true);

const_assert_eq!(NARROW[0].cap, 504);
const_assert_eq!(NARROW[1].cap, 254);
const_assert_eq!(NARROW[2].cap, 169);
const_assert_eq!(NARROW[3].cap, 127);
const_assert_eq!(NARROW[FIRST_DESC_BITMAP_CLASS].size, 64);
const_assert_eq!(NARROW[FIRST_DESC_BITMAP_CLASS].full, u64::MAX);
const_assert_eq!(NARROW[FIRST_DESC_BITMAP_CLASS - 1].chunks, 73);
const_assert_eq!(NARROW[NCLASSES - 1].size as usize, MAX_CHUNK);
const_assert_eq!(NARROW[51].size, 3072);
const_assert_eq!(NARROW[51].pages, 3);
const_assert_eq!(NARROW[51].full, 0b1111);
const_assert_eq!(NARROW[25].pages, 1);
const_assert_eq!(WIDE[25].size, 320);
const_assert_eq!(WIDE[25].pages, 2);
const_assert_eq!(WIDE[25].chunks, 25);
const_assert_eq!(WIDE[0].cap, 504);

/// The chunk size of class `c`.
#[inline]
pub(crate) const fn class_size(c: usize) -> usize {
    CLASS[c].size as usize
}

/// The class serving `size` (`size <= MAX_CHUNK`; 0 is served by class 0):
/// one load from a table of a byte per 8 bytes of size.
#[inline]
pub(crate) const fn class_of(size: usize) -> usize {
    CLASS_OF[(size + 7) >> 3] as usize
}

/// `class_of` by 8-byte steps of size.
const CLASS_OF: [u8; MAX_CHUNK / 8 + 1] = {
    let mut t = [0u8; MAX_CHUNK / 8 + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = class_of_size(i * 8) as u8;
        i += 1;
    }
    t
};

/// The class serving `size`, computed.
///
/// Up to 128 bytes the classes step by 8; above, each power-of-two range
/// `(2^k, 2^(k+1)]` has eight classes stepping by `2^(k-3)`.
const fn class_of_size(size: usize) -> usize {
    let s = size.saturating_sub(1);
    if s < 128 {
        s >> 3
    } else {
        // k = floor(log2(s)) >= 7; the three bits below the top one pick
        // the class within the range.
        let k = (usize::BITS - 1 - s.leading_zeros()) as usize;
        16 + (k - 7) * 8 + ((s >> (k - 3)) & 7)
    }
}

/// The index of the chunk of a class-`info` slab that starts at byte `off`
/// of the slab, or `None` if no chunk starts there (also for any `off`
/// past the slab's pages, below 2^32): a mask, a shift and a multiply, no
/// division.
///
/// With `size = m << shift` (m odd) and `x = off >> shift`: if m divides
/// x, `x * inv = x / m` modulo 2^32 (at least `chunks` past the slab's
/// chunks); if not, `q = x * inv` is at least `chunks`, because
/// `q < chunks` would give `m * q = x` (both sides are below 2^32 and
/// equal modulo 2^32), so m would divide x. The unit test
/// `chunk_at_is_exact` checks every offset of every class up to
/// [`MAX_SLAB_PAGES`] + 1 pages (the lock-free free path passes offsets
/// that far).
#[inline(always)]
pub(crate) const fn chunk_at(info: &ClassInfo, off: usize) -> Option<u32> {
    if off as u32 & info.low != 0 {
        return None;
    }
    let q = ((off >> info.shift) as u32).wrapping_mul(info.inv);
    if q < info.chunks {
        Some(q)
    } else {
        None
    }
}

/// Whole pages needed for `size` bytes, without overflow.
#[inline]
pub(crate) const fn pages_for(size: usize) -> usize {
    (size >> PAGE_SHIFT) + (size & (SLAB_PAGE - 1) != 0) as usize
}

/// A descriptor's `prev` word: the page's tag in the top 8 bits, a page
/// index (or [`NIL`]) in the low 24.
///
/// | tag | page is |
/// |---|---|
/// | 0 (`FREE`) | free; `slab` = run length on a run's first page, 0 elsewhere |
/// | 1 (`RUN`) | in an allocated page run; `slab` = its length on the first page, 0 elsewhere |
/// | 2 + c (`SLAB0` + c) | the first (or only) page of a slab of class c |
/// | 41 + c (`INNER0` + c) | a later page of a multi-page slab of class c; `slab` = 0 |
///
/// The index is the previous element of the page's list (free runs, a
/// class's slabs with free chunks), or on a free run's last page the run's
/// first page (the back-tag used to coalesce), or on an allocated run's or
/// a multi-page slab's inner pages the first page.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Link(pub u32);

impl Link {
    /// Bits of the page index.
    pub const IDX_BITS: u32 = 24;
    pub const IDX_MASK: u32 = (1 << Self::IDX_BITS) - 1;
    pub const FREE: u32 = 0;
    pub const RUN: u32 = 1;
    pub const SLAB0: u32 = 2;
    pub const INNER0: u32 = Link::SLAB0 + NCLASSES as u32;

    #[inline]
    pub const fn new(tag: u32, idx: u32) -> Link {
        Link((tag << Self::IDX_BITS) | idx)
    }
    #[inline]
    pub const fn slab(class: usize, idx: u32) -> Link {
        Link::new(Link::SLAB0 + class as u32, idx)
    }
    /// An inner page of a slab of class `class` whose first page is `first`.
    #[inline]
    pub const fn inner(class: usize, first: u32) -> Link {
        Link::new(Link::INNER0 + class as u32, first)
    }
    /// The class of a multi-page slab's inner page, if this is one.
    #[inline]
    pub const fn inner_class(self) -> Option<usize> {
        let c = self.tag().wrapping_sub(Link::INNER0);
        if c < NCLASSES as u32 {
            Some(c as usize)
        } else {
            None
        }
    }
    #[inline]
    pub const fn tag(self) -> u32 {
        self.0 >> Self::IDX_BITS
    }
    #[inline]
    pub const fn idx(self) -> u32 {
        self.0 & Self::IDX_MASK
    }
    /// The class of a slab's first page, if this is one (an inner page of
    /// a multi-page slab is `None`: see [`Link::inner_class`]).
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
            (t, None) if self.inner_class().is_some() => {
                format!("inner{}", class_size((t - Link::INNER0) as usize))
            }
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

assert_eq_size!(State, [u8; 64 * (NCLASSES + 1)]);

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

assert_eq_size!(Header, [u8; 256 + 64 * (NCLASSES + 1)]);
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
/// Pools big enough for per-thread caches (see `cache/mod.rs`) hold the
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
        assert_eq!(class_size(class_of(24)), 24);
        assert_eq!(class_size(class_of(100)), 104);
        assert_eq!(class_size(class_of(129)), 144);
        assert_eq!(class_size(class_of(1000)), 1024);
        assert_eq!(class_size(class_of(2049)), 2304);
        assert_eq!(class_size(class_of(3000)), 3072);
        assert_eq!(class_size(class_of(MAX_CHUNK)), MAX_CHUNK);
        for c in 0..NCLASSES {
            assert_eq!(class_of(class_size(c)), c);
            if c > 0 {
                assert!(class_size(c) > class_size(c - 1));
                assert_eq!(class_of(class_size(c - 1) + 1), c);
            }
        }
        // Every size goes to the smallest class that holds it; the
        // rounding loses at most 7 bytes up to 128, then at most a ninth
        // of the chunk (at 2^k + 1 bytes, into 1.125 * 2^k).
        for size in 1..=MAX_CHUNK {
            let c = class_of(size);
            assert_eq!(c, class_of_size(size));
            assert!(class_size(c) >= size && (c == 0 || class_size(c - 1) < size));
            let waste = class_size(c) - size;
            if size > 128 {
                assert!(waste * 9 < class_size(c), "{size}");
            } else {
                assert!(waste < 8, "{size}");
            }
        }
        assert_eq!(pages_for(usize::MAX), (usize::MAX >> 12) + 1);
        assert_eq!(pages_for(4096), 1);
        assert_eq!(pages_for(4097), 2);
    }

    #[test]
    fn class_sizes_keep_the_request_alignment() {
        // Zone::alloc_value relies on this: a request that is a multiple of
        // a power of two (up to a page) gets a class size that is one too,
        // and chunks are aligned to the largest power of two dividing the
        // class size.
        for a in 3..=12 {
            let align = 1usize << a;
            for size in (align..=MAX_CHUNK).step_by(align) {
                assert_eq!(class_size(class_of(size)) % align, 0, "{size}");
            }
        }
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
    fn slabs() {
        for (wide, table) in [(false, &CLASS), (true, &CLASS_WIDE)] {
            for (c, info) in table.iter().enumerate() {
                assert_eq!(info.size, CLASS[c].size);
                let bytes = info.pages as usize * SLAB_PAGE;
                assert!(info.pages >= 1 && info.pages <= MAX_SLAB_PAGES);
                assert!(info.chunks as usize * info.size as usize <= bytes);
                // The tail past the last chunk and the in-page bitmap lose
                // at most 1/32 of a slab (3 %), but for 3840-byte chunks
                // (1/16) and for the narrow table's one-page slabs (832-byte
                // chunks, four to a page: 3/16).
                let lost = bytes - info.cap as usize * info.size as usize;
                if !wide && info.size as usize <= MAX_NARROW_CHUNK {
                    assert_eq!(info.pages, 1);
                    assert!(lost * 5 <= bytes, "class {c}: {lost} of {bytes}");
                } else if info.size == 3840 {
                    assert!(lost * 16 <= bytes, "class {c}: {lost} of {bytes}");
                } else {
                    assert!(lost * 32 <= bytes, "class {c}: {lost} of {bytes}");
                }
                if c < FIRST_DESC_BITMAP_CLASS {
                    assert_eq!(info.pages, 1);
                    assert!(info.chunks > 64);
                    assert!(info.reserved as usize * info.size as usize >= info.words as usize * 8);
                    assert_eq!(info.words as usize, (info.chunks as usize).div_ceil(64));
                } else {
                    assert!(info.chunks <= 64 && info.chunks >= 1);
                    assert_eq!(info.full.count_ones(), info.chunks);
                }
                assert_eq!(info.size >> info.shift << info.shift, info.size);
                assert_eq!((info.size >> info.shift) % 2, 1);
            }
        }
        assert!(std::ptr::eq(classes_for(WIDE_PAGES - 1), &CLASS));
        assert!(std::ptr::eq(classes_for(WIDE_PAGES), &CLASS_WIDE));
    }

    #[test]
    fn chunk_at_is_exact() {
        // Every offset of every class's slab, against a division.
        for info in CLASS.iter().chain(CLASS_WIDE.iter()) {
            let size = info.size as usize;
            assert_eq!((info.size >> info.shift).wrapping_mul(info.inv), 1);
            for o in 0..(MAX_SLAB_PAGES as usize + 1) * SLAB_PAGE {
                let want =
                    (o % size == 0 && o / size < info.chunks as usize).then_some((o / size) as u32);
                assert_eq!(chunk_at(info, o), want, "size {size} offset {o}");
            }
        }
    }

    #[test]
    fn max_pages_fits_the_link() {
        assert_eq!(MAX_PAGES, (1 << 24) - 2);
        let l = Link::inner(NCLASSES - 1, MAX_PAGES as u32);
        assert_eq!(l.idx(), MAX_PAGES as u32);
        assert_eq!(l.inner_class(), Some(NCLASSES - 1));
        assert!(l.tag() < 256);
        let l = Link::slab(NCLASSES - 1, 5);
        assert_eq!(l.class(), Some(NCLASSES - 1));
        assert_eq!(Link::inner(3, 5).class(), None);
        assert_eq!(Link::slab(3, 5).inner_class(), None);
        assert_eq!(
            Link::new(Link::INNER0 + NCLASSES as u32, 5).inner_class(),
            None
        );
        assert_eq!(format!("{:?}", Link::inner(51, 5)), "inner3072|5");
    }

    #[test]
    fn geometry_64mib_beats_nginx() {
        let g = geometry(64 << 20).unwrap();
        // nginx: 16288 usable pages.
        assert!(g.npages >= 16288, "{g:?}");
        assert_eq!(g.start_off % SLAB_PAGE, 0);
        // The header (4288 B: 62 classes on lines of their own), an 8 KiB
        // journal and the descriptors take 4 pages.
        assert_eq!(geometry(8 * SLAB_PAGE).unwrap().npages, 4);
        assert!(geometry(SLAB_PAGE).is_none());
    }

    #[test]
    fn link_packing() {
        let l = Link::slab(15, 77);
        assert_eq!(l.class(), Some(15));
        assert_eq!(l.idx(), 77);
        assert_eq!(l.with_idx(NIL).idx(), NIL);
        assert_eq!(Link::new(Link::FREE, 3).class(), None);
        assert_eq!(format!("{l:?}"), "slab128|77");
    }
}
