//! Attaching to a region that another process made: validation under the
//! region's own locks (read-write), or a snapshot of its metadata
//! (read-only), never trusting what the memory holds.
//!
//! A read-write attach validates in two steps, so that it never reads a
//! half-written directory and never fails on a valid region that other
//! processes are changing:
//!
//! 1. under the region lock: the directory (every entry in bounds, aligned,
//!    not overlapping, a sound zone header), the region pool (`check`), and
//!    that the directory entries are exactly the region pool's allocated
//!    page runs (an entry placed over free space would later be handed out
//!    a second time);
//! 2. then each zone under its own lock: its whole allocator (`check`,
//!    every walk bounded by the page count). A zone that fails while the
//!    directory changed meanwhile (it was removed and its memory reused) is
//!    no corruption: the validation starts again.
//!
//! Every lock is taken with a bounded wait ([`ATTACH_LOCK_WAIT`]): a word
//! naming a live process that is not one of the region's users is an
//! [`Error::LockTimeout`] naming it, not an endless wait.

use std::time::Duration;

use super::dir::{validate_dir, validate_header, RegionHeader, F_USED, HEADER_LEN, MAX_ZONES};
use super::{Zones, REGION_LOCK_NAME};
use crate::error::Error;
use crate::region::Region;
use crate::shmtx::LockTimeout;
use crate::slab::{Pool, PoolGuard};

/// How long an attach waits for each lock of a region it did not make.
pub const ATTACH_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How many times a validation upset by a concurrent directory change (or
/// a snapshot taken mid-operation) is tried again, 0.2 ms apart.
pub(crate) const TRIES: u32 = 20;

/// How many snapshots a read-only attach takes while a zone fails its
/// check in copies taken with no lock held.
const ZONE_TRIES: u32 = 3;

/// What a snapshot's validation found (when it found no bad directory).
enum Snap {
    /// Sound, and no lock was held when it was copied.
    Clean,
    /// Some lock was held when it was copied: its holder may have been
    /// mid-operation.
    Held,
    /// A zone fails its check.
    ZoneBroken,
}

/// Why one validation did not pass.
pub(crate) enum Fail {
    /// The directory changed meanwhile: try again.
    Changed,
    /// The header, directory or region pool is bad.
    Bad(Error),
    /// A zone's allocator is bad.
    Zone(Error),
}

fn bad(reason: String) -> Error {
    Error::BadRegion { reason }
}

fn lock_err(lock: &str, source: LockTimeout) -> Error {
    Error::LockTimeout {
        lock: lock.to_string(),
        source,
    }
}

/// Refuses a region made in another pid namespace than this process's.
fn check_pid_ns(theirs: u64) -> Result<(), Error> {
    match crate::os::process::pid_namespace() {
        Some(ours) if theirs != 0 && ours != theirs => Err(bad(format!(
            "it was made in another pid namespace (pid:[{theirs}]) than this process's \
             (pid:[{ours}]): its lock words hold pids as that namespace numbers them, so \
             force-unlock and self-healing here would act on the wrong processes; attach \
             read-only (NamedSpec::read_only) to inspect it"
        ))),
        _ => Ok(()),
    }
}

impl Zones {
    /// A read-write handle on a region some other process formatted:
    /// validated as the module docs say, and refused if it was made in
    /// another pid namespace.
    pub(crate) fn attach_region(region: Region) -> Result<Zones, Error> {
        // SAFETY: the mapping is readable for its whole length while
        // `region` lives.
        let h = unsafe { validate_header(region.base(), region.len()) }?;
        check_pid_ns(h.pid_ns)?;
        // SAFETY: validated just above: the pool range is inside the region.
        let pool = unsafe {
            Pool::attach_scoped(
                region.base().add(HEADER_LEN),
                region.len() - HEADER_LEN,
                HEADER_LEN as u32,
            )
        }
        .map_err(Error::Pool)?;
        let zones = Zones { region, pool };
        let mut tries = 0;
        loop {
            tries += 1;
            match zones.validate_once() {
                Ok(()) => return Ok(zones),
                Err(Fail::Bad(e)) | Err(Fail::Zone(e)) => return Err(e),
                Err(Fail::Changed) if tries < TRIES => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(Fail::Changed) => {
                    return Err(bad(
                        "the zone directory kept changing while it was validated".into(),
                    ))
                }
            }
        }
    }

    /// A copy of the header, read under the region lock.
    fn header_locked(&self, _guard: &PoolGuard<'_>) -> RegionHeader {
        // SAFETY: the header is inside the mapping and aligned; writers
        // hold the region lock, which the caller holds; a copy is returned
        // and nothing in it is trusted before validation.
        unsafe { std::ptr::read_volatile(self.hdr()) }
    }

    /// One validation (see the module docs). Every lock waits at most
    /// [`ATTACH_LOCK_WAIT`].
    pub(crate) fn validate_once(&self) -> Result<(), Fail> {
        let (generation, used) = {
            let g = self
                .pool
                .lock_for(ATTACH_LOCK_WAIT)
                .map_err(|e| Fail::Bad(lock_err(REGION_LOCK_NAME, e)))?;
            let h = self.header_locked(&g);
            // SAFETY: the header passed `validate_header` for this mapping
            // (its fixed part never changes).
            unsafe { validate_dir(self.region.base(), &h) }.map_err(Fail::Bad)?;
            g.check_locked()
                .map_err(|e| Fail::Bad(bad(format!("the region pool: {e}"))))?;
            match_runs(&g, &h).map_err(Fail::Bad)?;
            let used: Vec<(usize, usize, String)> = h
                .dir
                .iter()
                .filter(|e| e.flags & F_USED != 0)
                .map(|e| (e.offset as usize, e.size as usize, e.name_str().to_string()))
                .collect();
            (h.generation, used)
        };
        for (offset, size, name) in used {
            // SAFETY: `validate_dir` checked the range lies inside the
            // region; the memory stays mapped while `self` lives.
            let zone = unsafe { Pool::attach(self.region.base().add(offset), size) };
            let broken = match zone {
                Err(e) => Some(e.to_string()),
                Ok(pool) => {
                    let g = pool
                        .lock_for(ATTACH_LOCK_WAIT)
                        .map_err(|e| Fail::Bad(lock_err(&name, e)))?;
                    // A fenced zone is known broken and refuses every
                    // allocation: attach anyway, so that a (restarted)
                    // master can `reinit` it.
                    if pool.is_fenced() {
                        log::warn!("zone \"{name}\" is fenced; attached for reinit only");
                        None
                    } else {
                        g.check_locked().err().map(|e| e.to_string())
                    }
                }
            };
            if let Some(e) = broken {
                let g = self
                    .pool
                    .lock_for(ATTACH_LOCK_WAIT)
                    .map_err(|e| Fail::Bad(lock_err(REGION_LOCK_NAME, e)))?;
                if self.header_locked(&g).generation != generation {
                    return Err(Fail::Changed);
                }
                return Err(Fail::Zone(bad(format!("zone \"{name}\": {e}"))));
            }
        }
        Ok(())
    }
}

/// The directory's entries must be exactly the region pool's allocated page
/// runs: an entry over free space (or over part of another run) would let
/// a later `get_or_create` hand the same memory out twice.
fn match_runs(g: &PoolGuard<'_>, h: &RegionHeader) -> Result<(), Error> {
    let po = h.pool_offset as usize;
    let mut runs = [(0usize, 0usize); MAX_ZONES];
    let mut n = 0;
    let mut extra = None;
    g.page_runs_locked(|off, len| {
        if n < MAX_ZONES {
            runs[n] = (po + off, len);
            n += 1;
        } else if extra.is_none() {
            extra = Some((po + off, len));
        }
    })
    .map_err(|e| bad(format!("the region pool: {e}")))?;
    if let Some((o, l)) = extra {
        return Err(bad(format!(
            "the region pool has more page runs than a directory holds (one at {o}+{l})"
        )));
    }
    let runs = &runs[..n];
    let mut named = 0;
    for e in h.dir.iter().filter(|e| e.flags & F_USED != 0) {
        let span = (e.offset as usize, e.size as usize);
        if !runs.contains(&span) {
            return Err(bad(format!(
                "zone \"{}\" at {}+{} is not a page run of the region pool \
                 (an entry over free space, or over part of another zone)",
                e.name_str(),
                span.0,
                span.1
            )));
        }
        named += 1;
    }
    if named != n {
        let orphan = runs
            .iter()
            .find(|r| {
                !h.dir
                    .iter()
                    .any(|e| e.flags & F_USED != 0 && (e.offset as usize, e.size as usize) == **r)
            })
            .copied()
            .unwrap_or_default();
        return Err(bad(format!(
            "the region pool has a page run at {}+{} that no directory entry names",
            orphan.0, orphan.1
        )));
    }
    Ok(())
}

/// The directory's generation in `live` (bumped on every change).
fn generation(live: &Region) -> u64 {
    let h = live.as_ptr().cast::<RegionHeader>();
    // SAFETY: the header lies inside the mapping (validated) and is
    // aligned; a plain volatile read of one word.
    unsafe { std::ptr::addr_of!((*h).generation).read_volatile() }
}

/// Whether the region lock of `live` (a read-only mapping whose header
/// passed `validate_header`) is held now.
fn region_lock_held(live: &Region) -> bool {
    // SAFETY: the region pool's range lies inside the mapping (validated);
    // attach only reads its header, and `holder` is an atomic load, which
    // a read-only mapping allows.
    let pool = unsafe {
        Pool::attach_scoped(
            live.base().add(HEADER_LEN),
            live.len() - HEADER_LEN,
            HEADER_LEN as u32,
        )
    };
    pool.is_ok_and(|p| p.mutex().holder().is_some())
}

/// Copies `len` bytes at `off` from `live` to `snap` (same length).
///
/// # Safety
/// `off + len <= live.len() == snap.len()`.
unsafe fn copy_range(live: &Region, snap: &Region, off: usize, len: usize) {
    debug_assert!(off + len <= live.len() && live.len() == snap.len());
    // SAFETY: the caller keeps the range inside both mappings, which are
    // distinct. The source may change under the copy (other processes
    // write it): the copy is validated before anything in it is trusted.
    unsafe { std::ptr::copy_nonoverlapping(live.as_ptr().add(off), snap.as_ptr().add(off), len) };
}

/// Copies a pool's metadata at `off` (header and descriptors, then the
/// bitmaps of its small-chunk pages, as the copied descriptors say) from
/// `live` to `snap`. A range that cannot hold a pool is skipped: the
/// snapshot's validation then fails and is tried again.
fn copy_pool_meta(live: &Region, snap: &Region, off: usize, size: usize, jscope: u32) {
    let page = crate::slab::SLAB_PAGE;
    if off % page != 0 || size % page != 0 || off.checked_add(size).is_none_or(|e| e > snap.len()) {
        return;
    }
    // SAFETY: the range lies inside the snapshot (checked above); its
    // header is whatever the object holds now (a copy-on-write page not
    // yet copied) or the full copy's: `attach` validates it and reads
    // nothing outside the range.
    let Ok(pool) = (unsafe { Pool::attach_scoped(snap.base().add(off), size, jscope) }) else {
        return;
    };
    // SAFETY: meta_len < size, inside both mappings.
    unsafe { copy_range(live, snap, off, pool.meta_len()) };
    // SAFETY: the descriptors were just copied into the private snapshot,
    // which nobody else writes.
    unsafe {
        pool.small_page_bitmaps(|o, l| {
            // o + l lies inside the pool (a bitmap at a page's start).
            copy_range(live, snap, off + o, l)
        })
    };
}

/// Copies the metadata an inspector reads from `live` into `snap`: the
/// region header and directory, then for the region pool and every zone
/// the pool header, the page descriptors and the small pages' bitmaps.
/// Nothing else: the cost grows with the number of pages, not their bytes.
fn copy_metadata(live: &Region, snap: &Region) {
    // SAFETY: a validated region is longer than its header.
    unsafe { copy_range(live, snap, 0, HEADER_LEN) };
    // SAFETY: the snapshot is readable for its length while it lives.
    let Ok(h) = (unsafe { validate_header(snap.base(), snap.len()) }) else {
        return;
    };
    copy_pool_meta(
        live,
        snap,
        h.pool_offset as usize,
        h.pool_len as usize,
        HEADER_LEN as u32,
    );
    for e in h.dir.iter().filter(|e| e.flags & F_USED != 0) {
        if let (Ok(off), Ok(size)) = (usize::try_from(e.offset), usize::try_from(e.size)) {
            copy_pool_meta(live, snap, off, size, 0);
        }
    }
}

impl Zones {
    /// The read-only attach's snapshot of `live` (a read-only mapping):
    /// `fresh` makes a private, writable mapping of the same object
    /// (copy-on-write: pages read the object until written) or a full
    /// private copy; the metadata (header, directory, each pool's header,
    /// descriptors and small-page bitmaps) is copied into it from `live`,
    /// and the result validated like a read-write attach, with its copied
    /// locks released first. Tried again (up to [`TRIES`], 0.2 ms apart)
    /// while the directory changed during the copy, a lock was held (its
    /// holder may have been mid-operation), or validation failed, and past
    /// that (with longer pauses) while the region lock stays held, up to
    /// [`ATTACH_LOCK_WAIT`]; after the last try a snapshot whose header,
    /// directory and region pool are sound is returned even if a zone is
    /// not (its `check()` says so).
    pub(crate) fn snapshot(
        live: &Region,
        fresh: impl Fn() -> Result<Region, Error>,
    ) -> Result<Zones, Error> {
        // SAFETY: `live` is readable for its whole length while it lives.
        unsafe { validate_header(live.base(), live.len()) }?;
        let start = std::time::Instant::now();
        let mut tries = 0;
        let mut pause = Duration::from_micros(200);
        loop {
            tries += 1;
            let before = generation(live);
            let held_before = region_lock_held(live);
            let snap = fresh()?;
            copy_metadata(live, &snap);
            let steady = generation(live) == before;
            // A copy is conclusive only if no writer could have been in the
            // directory or the region pool while it was taken: the region
            // lock free before and after, the generation unchanged (every
            // region-pool section changes the directory). Otherwise a
            // failed check may be a torn copy: wait as a read-write attach
            // would (at most ATTACH_LOCK_WAIT), not just TRIES times.
            let quiet = steady && !held_before && !region_lock_held(live);
            let last = tries >= TRIES && (start.elapsed() >= ATTACH_LOCK_WAIT || quiet);
            match Zones::check_snapshot(snap) {
                Ok((zones, Snap::Clean)) if steady => return Ok(zones),
                // A zone that fails its check in a copy taken with no lock
                // held and no directory change is most likely broken for
                // real (its holder may also have started right after its
                // lock word was copied): a few more tries, not all.
                Ok((zones, Snap::ZoneBroken)) if steady && tries >= ZONE_TRIES => return Ok(zones),
                Ok((zones, _)) if last => return Ok(zones),
                Err(e) if last => return Err(e),
                _ => {
                    std::thread::sleep(pause);
                    if tries >= TRIES {
                        pause = (pause * 2).min(Duration::from_millis(10));
                    }
                }
            }
        }
    }

    /// Validates a snapshot, and says how far it can be trusted.
    fn check_snapshot(snap: Region) -> Result<(Zones, Snap), Error> {
        // SAFETY: the snapshot is readable for its length while it lives.
        unsafe { super::validate_region(snap.base(), snap.len()) }?;
        // SAFETY: validated just above: the pool range is inside it.
        let pool = unsafe {
            Pool::attach_scoped(
                snap.base().add(HEADER_LEN),
                snap.len() - HEADER_LEN,
                HEADER_LEN as u32,
            )
        }
        .map_err(Error::Pool)?;
        let zones = Zones { region: snap, pool };
        let held = zones.release_copied_locks();
        match zones.validate_once() {
            Ok(()) if held => Ok((zones, Snap::Held)),
            Ok(()) => Ok((zones, Snap::Clean)),
            Err(Fail::Bad(e)) => Err(e),
            Err(Fail::Zone(_)) if held => Ok((zones, Snap::Held)),
            Err(Fail::Zone(_)) => Ok((zones, Snap::ZoneBroken)),
            Err(Fail::Changed) => Ok((zones, Snap::Held)),
        }
    }

    /// In a private copy, every lock that was held when the copy was taken
    /// is held by a process that will never release *this* copy: take each
    /// back (the copy's next guard reports it, as after a dead holder).
    /// Whether any was held.
    fn release_copied_locks(&self) -> bool {
        let mut held = false;
        if let Some(pid) = self.pool.mutex().holder() {
            held = true;
            self.pool.mutex().force_unlock(pid);
        }
        // SAFETY: the header lies inside the private copy, which nobody
        // else writes; a copy is read.
        let h = unsafe { std::ptr::read_volatile(self.hdr()) };
        for e in h.dir.iter().filter(|e| e.flags & F_USED != 0) {
            // SAFETY: `validate_region` checked every used entry's range
            // lies inside the region.
            let zone =
                unsafe { Pool::attach(self.region.base().add(e.offset as usize), e.size as usize) };
            if let Ok(zone) = zone {
                if let Some(pid) = zone.mutex().holder() {
                    held = true;
                    zone.mutex().force_unlock(pid);
                }
            }
        }
        held
    }
}
