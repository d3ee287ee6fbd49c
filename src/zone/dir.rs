//! The region header and its zone directory, at offset 0 of a region.
//!
//! ```text
//! region base
//! ├─ RegionHeader   magic, version, slab page, OS page, length, pool offset/len, pid namespace
//! │   └─ dir[MAX_ZONES]  ZoneEntry: flags, name, tag, offset, size
//! └─ region pool (from pool_offset): a slab Pool whose page runs are the zones
//!     ├─ zone "a": its own Pool (header, lock, descriptors, pages)
//!     └─ zone "b": …
//! ```
//!
//! Every link is an offset from the region base (DESIGN.md invariant 1).
//! Entries are written only under the region lock (the region pool's lock);
//! readers take the same lock, so nothing is read half-written.

use std::ptr::NonNull;

use static_assertions::{const_assert, const_assert_eq};

use crate::error::Error;
use crate::slab::{Pool, SLAB_PAGE};

/// "SHMZONE" and a NUL, little-endian.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SHMZONE\0");
/// Bumped whenever the layout of anything in shared memory changes.
pub(crate) const VERSION: u32 = 2;
/// How many zones one region can hold.
pub const MAX_ZONES: usize = 64;
/// The longest zone name, in bytes.
pub const MAX_NAME: usize = 63;

/// The entry holds a zone.
pub(crate) const F_USED: u32 = 1;
/// Recreate on every reload (nginx's `noreuse`).
pub(crate) const F_NOREUSE: u32 = 2;
/// Made at run time by `get_or_create`, not declared: kept across reloads.
pub(crate) const F_RUNTIME: u32 = 4;
/// Replaced or dropped by a reload; memory kept until `release_retired`.
pub(crate) const F_RETIRED: u32 = 8;
/// Not yet visible: made by a reload whose init callbacks are running.
/// The reloading process's pid is kept in the bits from [`OWNER_SHIFT`],
/// so that a reload that died half-way is undone by whoever finds it.
pub(crate) const F_PENDING: u32 = 16;
const F_ALL: u32 = F_USED | F_NOREUSE | F_RUNTIME | F_RETIRED | F_PENDING;
/// Where a pending entry keeps its owner's pid (22 bits are enough for
/// Linux's largest pid_max).
pub(crate) const OWNER_SHIFT: u32 = 8;
/// The flag bits proper.
pub(crate) const FLAG_MASK: u32 = (1 << OWNER_SHIFT) - 1;

/// One directory entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ZoneEntry {
    pub flags: u32,
    pub name_len: u32,
    pub tag: u64,
    /// From the region base; a multiple of `SLAB_PAGE`.
    pub offset: u64,
    /// Bytes; a multiple of `SLAB_PAGE`.
    pub size: u64,
    pub name: [u8; 64],
}

const_assert_eq!(std::mem::size_of::<ZoneEntry>(), 96);
const_assert_eq!(std::mem::align_of::<ZoneEntry>(), 8);

impl ZoneEntry {
    pub(crate) const EMPTY: ZoneEntry = ZoneEntry {
        flags: 0,
        name_len: 0,
        tag: 0,
        offset: 0,
        size: 0,
        name: [0; 64],
    };

    pub(crate) fn is_live(&self) -> bool {
        self.flags & (F_USED | F_RETIRED) == F_USED
    }

    /// The pid of the reload that made this entry, while it is pending.
    pub(crate) fn pending_owner(&self) -> Option<u32> {
        (self.flags & F_USED != 0 && self.flags & F_PENDING != 0)
            .then_some(self.flags >> OWNER_SHIFT)
    }

    pub(crate) fn name_bytes(&self) -> &[u8] {
        &self.name[..(self.name_len as usize).min(MAX_NAME)]
    }

    pub(crate) fn name_str(&self) -> &str {
        std::str::from_utf8(self.name_bytes()).unwrap_or("<invalid>")
    }
}

/// The header at offset 0 of every region.
#[repr(C)]
pub(crate) struct RegionHeader {
    pub magic: u64,
    pub version: u32,
    /// The slab page (`SLAB_PAGE`), recorded so another build can refuse.
    pub slab_page: u32,
    /// The OS page size of the creator (informational).
    pub os_page: u32,
    pub max_zones: u32,
    /// The region's whole length.
    pub len: u64,
    /// Where the region pool starts (from the region base) and its length.
    pub pool_offset: u64,
    pub pool_len: u64,
    /// Bumped on every directory change.
    pub generation: u64,
    /// The creator's pid namespace (the inode of `/proc/self/ns/pid`), 0 if
    /// unknown: lock words hold pids as that namespace numbers them, so a
    /// process of another namespace must not take the locks.
    pub pid_ns: u64,
    pub dir: [ZoneEntry; MAX_ZONES],
}

const_assert_eq!(std::mem::size_of::<RegionHeader>(), 64 + 96 * MAX_ZONES);
const_assert_eq!(std::mem::align_of::<RegionHeader>(), 8);
const_assert!(std::mem::size_of::<RegionHeader>() <= 2 * SLAB_PAGE);

/// Bytes the header takes, rounded to whole slab pages.
pub(crate) const HEADER_LEN: usize = 2 * SLAB_PAGE;

/// Checks a zone name: 1..=63 bytes of UTF-8.
pub(crate) fn check_name(name: &[u8]) -> Result<&str, Error> {
    let reason = if name.is_empty() {
        "a zone name cannot be empty"
    } else if name.len() > MAX_NAME {
        "a zone name is at most 63 bytes"
    } else {
        match std::str::from_utf8(name) {
            Ok(s) => return Ok(s),
            Err(_) => "a zone name must be UTF-8",
        }
    };
    Err(Error::ZoneName {
        name: String::from_utf8_lossy(name).into_owned(),
        reason,
    })
}

fn bad(reason: String) -> Error {
    Error::BadRegion { reason }
}

/// Validates the region header and directory at `base..base+len` without
/// trusting any of it: magic, version, slab page, the recorded length
/// against `len`, the pool's place, and every entry (in bounds, aligned,
/// not overlapping, names valid UTF-8, each zone's pool header sound).
///
/// # Safety
/// `base..base+len` must be readable memory for the whole call.
pub unsafe fn validate_region(base: NonNull<u8>, len: usize) -> Result<(), Error> {
    // SAFETY: passed on from the caller.
    let h = unsafe { validate_header(base, len) }?;
    // SAFETY: as above; `h` passed `validate_header` for this range.
    unsafe { validate_dir(base, &h) }
}

/// The fixed part of [`validate_region`]: everything but the directory
/// (what `format` writes once and nobody changes). Returns a copy of the
/// header, whose directory is not validated yet.
///
/// # Safety
/// As [`validate_region`].
pub(crate) unsafe fn validate_header(base: NonNull<u8>, len: usize) -> Result<RegionHeader, Error> {
    let hlen = std::mem::size_of::<RegionHeader>();
    if len < HEADER_LEN + Pool::MIN_SIZE {
        return Err(bad(format!(
            "{len} bytes is smaller than any region ({} bytes at least)",
            HEADER_LEN + Pool::MIN_SIZE
        )));
    }
    if base.as_ptr() as usize % 8 != 0 {
        return Err(bad("the region base is not 8-aligned".into()));
    }
    debug_assert!(hlen <= len);
    // SAFETY: the caller guarantees `len` readable bytes; `len >= hlen` was
    // checked and the base is aligned for the header; a copy is taken so
    // nothing is trusted in place.
    let h = unsafe { std::ptr::read_volatile(base.as_ptr().cast::<RegionHeader>()) };
    if h.magic != MAGIC {
        return Err(bad(format!(
            "no shmzone magic number (found {:#018x})",
            h.magic
        )));
    }
    if h.version != VERSION {
        return Err(bad(format!(
            "layout version {} is not the version {VERSION} this build reads",
            h.version
        )));
    }
    if h.slab_page as usize != SLAB_PAGE {
        return Err(bad(format!("slab page {} is not {SLAB_PAGE}", h.slab_page)));
    }
    if h.max_zones as usize != MAX_ZONES {
        return Err(bad(format!(
            "directory of {} entries, expected {MAX_ZONES}",
            h.max_zones
        )));
    }
    if h.len != len as u64 {
        return Err(bad(format!(
            "the header records {} bytes but the mapping has {len}",
            h.len
        )));
    }
    let (po, pl) = (h.pool_offset, h.pool_len);
    if po != HEADER_LEN as u64 || pl < Pool::MIN_SIZE as u64 || po.checked_add(pl) != Some(h.len) {
        return Err(bad(format!(
            "the region pool at {po}+{pl} does not fit the region"
        )));
    }
    // SAFETY: the pool range lies inside the caller's readable range;
    // `attach` validates the pool header without reading outside it.
    unsafe { Pool::attach_scoped(base.add(po as usize), pl as usize, HEADER_LEN as u32) }
        .map_err(|e| bad(format!("the region pool: {e}")))?;
    Ok(h)
}

/// The directory part of [`validate_region`], on the copy `h` of the
/// header (taken under the region lock by a read-write attach).
///
/// # Safety
/// As [`validate_region`], with `h` a header of `base` that passed
/// [`validate_header`].
pub(crate) unsafe fn validate_dir(base: NonNull<u8>, h: &RegionHeader) -> Result<(), Error> {
    let po = h.pool_offset;
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (i, e) in h.dir.iter().enumerate() {
        if e.flags == 0 {
            continue;
        }
        let owner_bits_without_pending = e.flags >> OWNER_SHIFT != 0 && e.flags & F_PENDING == 0;
        if e.flags & FLAG_MASK & !F_ALL != 0 || e.flags & F_USED == 0 || owner_bits_without_pending
        {
            return Err(bad(format!("directory entry {i} has flags {:#x}", e.flags)));
        }
        if e.name_len as usize > MAX_NAME {
            return Err(bad(format!(
                "directory entry {i}: name longer than 63 bytes"
            )));
        }
        let name =
            check_name(e.name_bytes()).map_err(|err| bad(format!("directory entry {i}: {err}")))?;
        let end = e.offset.checked_add(e.size);
        if e.offset % SLAB_PAGE as u64 != 0
            || e.size % SLAB_PAGE as u64 != 0
            || e.size < Pool::MIN_SIZE as u64
            || e.offset < po
            || end.is_none_or(|end| end > h.len)
        {
            return Err(bad(format!(
                "zone \"{name}\" at {}+{} is not an aligned range inside the region pool",
                e.offset, e.size
            )));
        }
        spans.push((e.offset, e.offset + e.size));
        // SAFETY: the zone's range was just checked to lie inside the region.
        unsafe { Pool::attach(base.add(e.offset as usize), e.size as usize) }
            .map_err(|err| bad(format!("zone \"{name}\": {err}")))?;
    }
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
        return Err(bad(format!(
            "zones at {}..{} and {}..{} overlap",
            w[0].0, w[0].1, w[1].0, w[1].1
        )));
    }
    Ok(())
}
