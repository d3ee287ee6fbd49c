//! Formatting a pool (`init`) and finding one again (`attach`).

use std::ptr::{addr_of, NonNull};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::error::PoolError;
use super::layout::{
    geometry, ClassState, Desc, Geometry, Header, Link, State, JOURNAL_OFF, MAGIC, NAME_MAX,
    NCLASSES, NIL, SLAB_PAGE, VERSION,
};
use super::Pool;
use crate::journal::{Journal, JournalHeader};
use crate::shmtx::ShmMutex;

impl Pool {
    fn validate_range(base: NonNull<u8>, len: usize) -> Result<usize, PoolError> {
        let addr = base.as_ptr() as usize;
        if addr % SLAB_PAGE != 0 {
            return Err(PoolError::Misaligned { addr });
        }
        let len = len & !(SLAB_PAGE - 1);
        if len < Pool::MIN_SIZE {
            return Err(PoolError::TooSmall {
                len,
                min: Pool::MIN_SIZE,
            });
        }
        Ok(len)
    }

    /// The handle on a pool whose header is in place.
    ///
    /// # Safety
    /// `base..base+len` holds a pool of geometry `g` (validated), and the
    /// `jscope` bytes before `base` are writable memory guarded by the
    /// same lock.
    unsafe fn handle(base: NonNull<u8>, len: usize, g: &Geometry, jscope: usize) -> Pool {
        let h = base.as_ptr().cast::<Header>();
        // SAFETY: the header and the record area are inside the pool
        // (geometry); the span covers the jscope bytes before it and the
        // pool, all guarded by the pool lock (caller).
        let journal = unsafe {
            Journal::new(
                addr_of!((*h).journal),
                base.as_ptr().add(JOURNAL_OFF).cast::<u64>(),
                g.jwords as u32,
                base.as_ptr(),
                jscope,
                len,
            )
        };
        Pool {
            base,
            len,
            npages: g.npages as u32,
            start_off: g.start_off,
            // SAFETY: the data pages start inside the pool (geometry).
            data: unsafe { NonNull::new_unchecked(base.as_ptr().add(g.start_off)) },
            data_len: g.npages * SLAB_PAGE,
            desc_off: g.desc_off,
            cache_off: g.cache_off,
            cache_ok: super::cache::cacheable(g.npages),
            cls: super::layout::classes_for(g.npages),
            journal,
        }
    }

    /// Formats a fresh pool over `base..base+len`.
    ///
    /// `len` is truncated to whole [`SLAB_PAGE`]s. `name` (at most
    /// [`NAME_MAX`] bytes, longer names are cut at a character boundary) is
    /// named in every log alert, as nginx's `log_ctx`.
    ///
    /// # Safety
    /// 1. `base..base+len` is valid for reads and writes for as long as any
    ///    handle on the pool is used, and nothing else uses it.
    /// 2. No other process or thread uses a pool at this range while it is
    ///    being formatted.
    ///
    /// # Errors
    /// [`PoolError::Misaligned`] if `base` is not `SLAB_PAGE`-aligned,
    /// [`PoolError::TooSmall`] below [`Pool::MIN_SIZE`].
    pub unsafe fn init(base: NonNull<u8>, len: usize, name: &str) -> Result<Pool, PoolError> {
        // SAFETY: passed on, with no bytes before `base`.
        unsafe { Pool::init_scoped(base, len, name, 0) }
    }

    /// As [`Pool::init`], with a journal whose records may also name the
    /// `jscope` bytes before `base` (the zone layer keeps its directory
    /// there, under the region pool's lock).
    ///
    /// # Safety
    /// As [`Pool::init`]; and `base - jscope..base` is writable memory that
    /// only holders of this pool's lock write.
    pub(crate) unsafe fn init_scoped(
        base: NonNull<u8>,
        len: usize,
        name: &str,
        jscope: u32,
    ) -> Result<Pool, PoolError> {
        let len = Pool::validate_range(base, len)?;
        let g = geometry(len).ok_or(PoolError::TooSmall {
            len,
            min: Pool::MIN_SIZE,
        })?;
        let mut cut = name.len().min(NAME_MAX);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut name_buf = [0u8; 64];
        name_buf[..cut].copy_from_slice(&name.as_bytes()[..cut]);
        let npages = g.npages as u32;
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            npages,
            len: len as u64,
            desc_off: g.desc_off as u64,
            start_off: g.start_off as u64,
            root: AtomicU64::new(0),
            log_nomem: AtomicU32::new(1),
            name_len: cut as u32,
            name: name_buf,
            jscope,
            _pad: 0,
            lock: ShmMutex::new(),
            journal: JournalHeader::new(g.jwords as u32),
            state: State {
                classes: [ClassState::EMPTY; NCLASSES],
                free_head: 0,
                pfree: npages,
                run_pages: 0,
                _pad: 0,
                page_reqs: 0,
                page_fails: 0,
                run_bytes_requested: 0,
                run_bytes: 0,
            },
        };
        // SAFETY: (1) the range is ours and at least MIN_SIZE long; base is
        // page-aligned, so the header (align 64) and the descriptors (align
        // 8, at desc_off = 640) are aligned and end before start_off <= len.
        unsafe {
            base.as_ptr().cast::<Header>().write(header);
            if super::cache::cacheable(g.npages) {
                super::cache::init_dir(base.as_ptr().add(g.cache_off).cast(), g.npages);
            }
            let d = base.as_ptr().add(g.desc_off).cast::<Desc>();
            for i in 0..g.npages {
                d.add(i).write(Desc::INNER_FREE);
            }
            d.write(Desc {
                slab: npages as u64,
                next: NIL,
                prev: Link::new(Link::FREE, NIL),
            });
            if npages > 1 {
                d.add(g.npages - 1).write(Desc {
                    slab: 0,
                    next: NIL,
                    prev: Link::new(Link::FREE, 0),
                });
            }
        }
        // SAFETY: formatted just above; the caller vouches for the scope.
        Ok(unsafe { Pool::handle(base, len, &g, jscope as usize) })
    }

    /// A handle on a pool that [`Pool::init`] already formatted at `base`
    /// (perhaps mapped at another address in this process).
    ///
    /// Checks the header (magic, version, length, geometry, name, root) and
    /// reads nothing outside `base..base+len`.
    ///
    /// ```
    /// # use shmzone::{Pool, Region};
    /// # let region = Region::new(1 << 20)?;
    /// # // SAFETY: the region is ours, page-aligned and unused.
    /// # let pool = unsafe { Pool::init(region.base(), region.len(), "doc") }.unwrap();
    /// // SAFETY: the range holds the pool formatted above.
    /// let again = unsafe { Pool::attach(region.base(), region.len()) }.unwrap();
    /// assert_eq!(again.name(), "doc");
    /// // SAFETY: as above, but attached with the wrong length.
    /// assert!(unsafe { Pool::attach(region.base(), 1 << 16) }.is_err());
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    ///
    /// # Safety
    /// `base..base+len` is valid for reads and writes for as long as the
    /// handle is used, and is only used as a pool by the pool's own code.
    ///
    /// # Errors
    /// As [`Pool::init`], plus [`PoolError::BadHeader`] naming what does
    /// not match.
    pub unsafe fn attach(base: NonNull<u8>, len: usize) -> Result<Pool, PoolError> {
        // SAFETY: passed on; a zone's journal names nothing before it.
        unsafe { Pool::attach_scoped(base, len, 0) }
    }

    /// As [`Pool::attach`], for a pool made by [`Pool::init_scoped`] with
    /// this `jscope` (anything else recorded in the header is refused).
    ///
    /// # Safety
    /// As [`Pool::attach`], and as [`Pool::init_scoped`] for the scope.
    pub(crate) unsafe fn attach_scoped(
        base: NonNull<u8>,
        len: usize,
        jscope: u32,
    ) -> Result<Pool, PoolError> {
        let len = Pool::validate_range(base, len)?;
        let h = base.as_ptr().cast::<Header>();
        let bad = |s: String| Err(PoolError::BadHeader(s));
        // SAFETY: len >= MIN_SIZE > size_of::<Header>() and base is aligned,
        // so every field read is inside the range; these fields are written
        // once by init and never change.
        let (magic, version, hlen, npages, desc_off, start_off, name_len) = unsafe {
            (
                addr_of!((*h).magic).read(),
                addr_of!((*h).version).read(),
                addr_of!((*h).len).read(),
                addr_of!((*h).npages).read(),
                addr_of!((*h).desc_off).read(),
                addr_of!((*h).start_off).read(),
                addr_of!((*h).name_len).read(),
            )
        };
        if magic != MAGIC {
            return bad(format!("magic {magic:#x}"));
        }
        if version != VERSION {
            return bad(format!(
                "layout version {version}, this build knows {VERSION}"
            ));
        }
        if hlen != len as u64 {
            return bad(format!("formatted for {hlen} bytes, attached with {len}"));
        }
        let g = geometry(len).ok_or_else(|| PoolError::BadHeader("no pages".into()))?;
        if npages as usize != g.npages
            || desc_off != g.desc_off as u64
            || start_off != g.start_off as u64
        {
            return bad(format!(
                "geometry {npages} pages at {start_off}, expected {} at {}",
                g.npages, g.start_off
            ));
        }
        if name_len as usize > NAME_MAX {
            return bad(format!("name length {name_len}"));
        }
        // SAFETY: inside the header, see above.
        let name = unsafe { &*addr_of!((*h).name) };
        if std::str::from_utf8(&name[..name_len as usize]).is_err() {
            return bad("name is not UTF-8".into());
        }
        // SAFETY: an atomic inside the header.
        let root = unsafe { &*addr_of!((*h).root) }.load(Ordering::Acquire);
        if root >= len as u64 {
            return bad(format!("root offset {root} outside the pool"));
        }
        // SAFETY: inside the header, see above.
        let (scope, jcap) = unsafe {
            (
                addr_of!((*h).jscope).read(),
                (*addr_of!((*h).journal)).cap(),
            )
        };
        if scope != jscope {
            return bad(format!(
                "journal scope {scope} bytes before the pool, expected {jscope}"
            ));
        }
        if jcap as usize != g.jwords {
            return bad(format!(
                "journal of {jcap} words, expected {} for this size",
                g.jwords
            ));
        }
        // SAFETY: the header matches a pool of geometry `g`; the scope was
        // checked against what the caller vouches for.
        Ok(unsafe { Pool::handle(base, len, &g, jscope as usize) })
    }
}
