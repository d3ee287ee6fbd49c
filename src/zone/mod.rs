//! Named zones carved out of one region (nginx's `ngx_shm_zone_t`).
//!
//! The master declares zones with [`Zones::builder`], builds them before it
//! forks, and every worker finds them by name with [`Zones::get`]. Each zone
//! is a slab [`Pool`] with its own lock and a `root` offset where the user
//! keeps the entry point of its data (nginx's `shpool->data`).
//!
//! Beyond nginx: workers can make zones at run time
//! ([`Zones::get_or_create`]); a reload resizes a zone whose size changed
//! instead of refusing; and zones dropped by a reload stay mapped and intact
//! until [`Zones::release_retired`], so old workers can finish with them.
//!
//! The minimum zone size is [`Pool::MIN_SIZE`] bytes on every platform: slab
//! pages are 4 KiB whatever the OS page size, so a small zone that works on
//! x86-64 also works on a 64 KiB-page machine.

mod attach;
mod builder;
mod dir;

use std::fmt;
use std::ptr::NonNull;

pub use attach::ATTACH_LOCK_WAIT;
pub use builder::{InitFn, ZonesBuilder, DEFAULT_SLACK};
pub use dir::{validate_region, MAX_NAME, MAX_ZONES};

use builder::{round_zone, Decl};
use dir::{
    check_name, RegionHeader, ZoneEntry, FLAG_MASK, F_NOREUSE, F_PENDING, F_RETIRED, F_RUNTIME,
    F_USED, HEADER_LEN, MAGIC, OWNER_SHIFT, VERSION,
};

use crate::error::Error;
use crate::region::Region;
use crate::shmtx::ShmMutex;
use crate::slab::{CheckError, FreeError, Pool, PoolGuard, PoolStats, SLAB_PAGE};

/// How long [`Zones::get_or_create`] waits for a reload in progress that is
/// making the same name.
const PENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The name [`Zones::force_unlock_all`] gives the region's own lock.
pub const REGION_LOCK_NAME: &str = "<region>";

/// What a zone's init callback is told about the zone's past.
#[derive(Clone, Copy, Debug)]
pub enum ZoneInit<'a> {
    /// A new zone: empty, `root()` is 0.
    Fresh,
    /// A reload kept the zone (same name, size and tag): same memory, data
    /// and `root()` as before; old workers may still be using it.
    Reused,
    /// A reload changed the zone's size: this is a new, empty zone of the
    /// new size; the old one is still mapped and intact, to be copied from.
    /// It is retired (see [`Zones::release_retired`]).
    Resized(Zone<'a>),
    /// The zone is `noreuse`: made afresh on reload; the old one is passed
    /// as with `Resized`.
    Recreated(Zone<'a>),
}

/// What a reload did, by zone name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Same name, size and tag: same memory and data.
    pub kept: Vec<String>,
    /// Newly declared.
    pub created: Vec<String>,
    /// Size changed: a new zone, the old one retired.
    pub resized: Vec<String>,
    /// `noreuse`, or the tag changed: a new zone, the old one retired.
    pub recreated: Vec<String>,
    /// No longer declared: retired.
    pub dropped: Vec<String>,
}

/// One region and its zone directory, as seen by this process.
///
/// Made in the master before fork ([`Zones::builder`]); each forked worker
/// uses its inherited copy. Dropping it unmaps the region in this process.
pub struct Zones {
    region: Region,
    /// The region pool: its page runs are the zones; its lock is the
    /// region lock that guards the directory.
    pool: Pool,
}

impl fmt::Debug for Zones {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zones")
            .field("region", &self.region)
            .field(
                "zones",
                &self
                    .iter()
                    .map(|z| z.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Zones {
    /// Starts declaring zones.
    pub fn builder() -> ZonesBuilder {
        ZonesBuilder::default()
    }

    /// The region the zones live in.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The region's length in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Whether the directory holds no live zone.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The region pool, whose page runs are the zones (its lock is the
    /// region lock).
    pub fn region_pool(&self) -> &Pool {
        &self.pool
    }

    fn hdr(&self) -> *mut RegionHeader {
        self.region.as_ptr().cast()
    }

    /// Formats `region`: a header, an empty directory, the region pool.
    pub(crate) fn format(region: Region) -> Result<Zones, Error> {
        let len = region.len();
        if len < HEADER_LEN + Pool::MIN_SIZE {
            return Err(Error::RegionFull {
                name: REGION_LOCK_NAME.to_string(),
                size: HEADER_LEN + Pool::MIN_SIZE,
                largest: len,
            });
        }
        let base = region.base();
        // SAFETY: the region is at least HEADER_LEN + MIN_SIZE bytes, so the
        // pool range lies inside it and is SLAB_PAGE-aligned (the mapping is
        // page-aligned and HEADER_LEN is whole slab pages).
        // The region pool's journal also covers the header before it: the
        // directory is written under the region lock, crash-atomically.
        let pool = unsafe {
            Pool::init_scoped(
                base.add(HEADER_LEN),
                len - HEADER_LEN,
                REGION_LOCK_NAME,
                HEADER_LEN as u32,
            )
        }
        .map_err(Error::Pool)?;
        pool.set_log_nomem(false);
        let hdr = base.as_ptr().cast::<RegionHeader>();
        // SAFETY: the header fits in the first HEADER_LEN bytes of the
        // mapping, which is page-aligned; nobody else sees the region yet.
        unsafe {
            hdr.write(RegionHeader {
                magic: 0,
                version: VERSION,
                slab_page: SLAB_PAGE as u32,
                os_page: crate::region::page_size() as u32,
                max_zones: MAX_ZONES as u32,
                len: len as u64,
                pool_offset: HEADER_LEN as u64,
                pool_len: (len - HEADER_LEN) as u64,
                generation: 0,
                pid_ns: crate::os::process::pid_namespace().unwrap_or(0),
                dir: [ZoneEntry::EMPTY; MAX_ZONES],
            });
            // The magic goes in last: a half-formatted region never passes.
            std::ptr::addr_of_mut!((*hdr).magic).write_volatile(MAGIC);
        }
        Ok(Zones { region, pool })
    }

    /// Wraps a region that some process already formatted (for example a
    /// named region attached by an unrelated process), after validating it
    /// without trusting any of it: the header, then under the region lock
    /// the directory ([`validate_region`]), the region pool, and that the
    /// directory entries are exactly the region pool's allocated page runs;
    /// then every zone's whole allocator under the zone's lock. Each lock is
    /// waited for at most [`ATTACH_LOCK_WAIT`]. A region changing under
    /// other processes meanwhile is validated again, never refused for it.
    ///
    /// # Errors
    /// [`Error::BadRegion`] naming what is wrong (a broken zone, a region
    /// made in another pid namespace, ...), or for a read-only mapping
    /// (every lookup takes a lock, which needs a write: a read-only reader
    /// uses [`Zones::attach`] with `NamedSpec::read_only`, a snapshot);
    /// [`Error::LockTimeout`] naming a lock's holder that did not release
    /// it in time.
    pub fn from_region(region: Region) -> Result<Zones, Error> {
        if region.is_read_only() {
            return Err(Error::BadRegion {
                reason: "a read-only mapping cannot take the zones' locks; \
                         Zones::attach with NamedSpec::read_only makes a snapshot"
                    .into(),
            });
        }
        Zones::attach_region(region)
    }

    /// Makes every declared zone (fresh region) and runs the init callbacks.
    pub(crate) fn carve_declared(&self, b: &ZonesBuilder) -> Result<(), Error> {
        let decls = b.checked()?;
        let mut made = Vec::with_capacity(decls.len());
        {
            let guard = self.pool.lock();
            for d in decls {
                let flags = if d.noreuse { F_NOREUSE } else { 0 };
                made.push(self.create_locked(&guard, &d.name, d.size, d.tag, flags)?);
            }
        }
        for (d, &slot) in decls.iter().zip(&made) {
            if let Some(init) = &d.init {
                init(&self.zone_at(slot)?, ZoneInit::Fresh)?;
            }
        }
        Ok(())
    }

    /// A copy of directory entry `slot`. Caller holds the region lock.
    fn entry(&self, slot: usize) -> ZoneEntry {
        // SAFETY: `slot < MAX_ZONES`; the header is inside the mapping; the
        // region lock serialises writers, and a copy is returned.
        unsafe { std::ptr::addr_of!((*self.hdr()).dir[slot]).read() }
    }

    /// Writes directory entry `slot` in the region lock's section (so a
    /// death half-way is rolled back with the rest of the section).
    fn set_entry(&self, guard: &PoolGuard<'_>, slot: usize, e: ZoneEntry) -> Result<(), Error> {
        // SAFETY: `slot < MAX_ZONES`: the entry and the generation are in
        // the region header, which the region pool's journal covers; the
        // guard proves the region lock is held.
        unsafe {
            let g = std::ptr::addr_of_mut!((*self.hdr()).generation);
            guard
                .write(std::ptr::addr_of_mut!((*self.hdr()).dir[slot]), e)
                .and_then(|()| guard.write(g, g.read().wrapping_add(1)))
                .map_err(|j| Error::Journal {
                    what: "the zone directory",
                    source: j,
                })
        }
    }

    /// Carves a zone from the region pool and publishes it in a free slot.
    /// Caller holds the region lock (proved by `_guard`).
    fn create_locked(
        &self,
        guard: &PoolGuard<'_>,
        name: &str,
        size: usize,
        tag: u64,
        flags: u32,
    ) -> Result<usize, Error> {
        let slot = (0..MAX_ZONES)
            .find(|&i| self.entry(i).flags == 0)
            .ok_or(Error::DirectoryFull { max: MAX_ZONES })?;
        let full = || Error::RegionFull {
            name: name.to_string(),
            size,
            largest: guard.largest_alloc_locked(),
        };
        if size > u32::MAX as usize * SLAB_PAGE {
            return Err(full());
        }
        let p = guard.alloc_locked(size).ok_or_else(full)?;
        // SAFETY: `p..p+size` is a fresh page run of the region pool,
        // SLAB_PAGE-aligned, owned by nobody else.
        let zone = match unsafe { Pool::init(p, size, name) } {
            Ok(pool) => pool,
            Err(e) => {
                // SAFETY: `p` came from this pool just above.
                let _ = unsafe { guard.free_locked(p.as_ptr()) };
                return Err(Error::Pool(e));
            }
        };
        debug_assert_eq!(zone.len(), size);
        let mut e = ZoneEntry::EMPTY;
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        e.name_len = name.len() as u32;
        e.tag = tag;
        e.offset = (p.as_ptr() as usize - self.region.as_ptr() as usize) as u64;
        e.size = size as u64;
        e.flags = F_USED | flags;
        if let Err(err) = self.set_entry(guard, slot, e) {
            // SAFETY: `p` came from this pool just above.
            let _ = unsafe { guard.free_locked(p.as_ptr()) };
            return Err(err);
        }
        Ok(slot)
    }

    /// Takes a zone out of the directory and gives its memory back.
    /// Caller holds the region lock.
    fn destroy_locked(&self, guard: &PoolGuard<'_>, slot: usize) -> usize {
        let e = self.entry(slot);
        if let Err(err) = self.set_entry(guard, slot, ZoneEntry::EMPTY) {
            log::error!("shared zone \"{}\": not removed: {err}", e.name_str());
            return 0;
        }
        // SAFETY: the entry's offset was handed out by this region pool.
        let p = unsafe { self.region.as_ptr().add(e.offset as usize) };
        // SAFETY: `p` is the start of the zone's page run in the region pool.
        if let Err(err) = unsafe { guard.free_locked(p) } {
            log::error!(
                "shared zone \"{}\": giving its memory back failed: {err}",
                e.name_str()
            );
        }
        e.size as usize
    }

    /// A handle on the zone in `slot`.
    fn zone_at(&self, slot: usize) -> Result<Zone<'_>, Error> {
        let e = self.entry(slot);
        // SAFETY: the entry's range was carved from this region's pool and
        // lies inside the mapping; `attach` validates the pool header.
        let pool =
            unsafe { Pool::attach(self.region.base().add(e.offset as usize), e.size as usize) }
                .map_err(Error::Pool)?;
        Ok(Zone {
            zones: self,
            pool,
            entry: e,
        })
    }

    fn find_live(&self, name: &str) -> Option<usize> {
        (0..MAX_ZONES).find(|&i| {
            let e = self.entry(i);
            e.is_live() && e.flags & F_PENDING == 0 && e.name_bytes() == name.as_bytes()
        })
    }

    /// The zone called `name`, if the directory has it.
    ///
    /// Takes the region lock briefly.
    pub fn get(&self, name: &str) -> Option<Zone<'_>> {
        let _guard = self.pool.lock();
        let slot = self.find_live(name)?;
        match self.zone_at(slot) {
            Ok(z) => Some(z),
            Err(e) => {
                log::error!("shared zone \"{name}\" is unusable: {e}");
                None
            }
        }
    }

    /// Every live zone, in directory order (a snapshot taken under the
    /// region lock).
    pub fn iter(&self) -> impl Iterator<Item = Zone<'_>> + '_ {
        let slots: Vec<usize> = {
            let _guard = self.pool.lock();
            (0..MAX_ZONES)
                .filter(|&i| {
                    let e = self.entry(i);
                    e.is_live() && e.flags & F_PENDING == 0
                })
                .collect()
        };
        slots.into_iter().filter_map(|i| self.zone_at(i).ok())
    }

    /// [`get_or_create_with_tag`](Self::get_or_create_with_tag) with tag 0.
    pub fn get_or_create(&self, name: &str, size: usize) -> Result<Zone<'_>, Error> {
        self.get_or_create_with(name, size, 0, |_| Ok(()))
    }

    /// The zone `name` if it exists with this size and tag, else a new one
    /// carved from the region's free space. Any process may call it; two
    /// racing for one name make exactly one zone. Size 0 only looks up.
    ///
    /// # Errors
    /// The same name with another size or tag, a bad name, a zone too
    /// small, or no room left ([`Error::RegionFull`]).
    pub fn get_or_create_with_tag(
        &self,
        name: &str,
        size: usize,
        tag: u64,
    ) -> Result<Zone<'_>, Error> {
        self.get_or_create_with(name, size, tag, |_| Ok(()))
    }

    /// As [`get_or_create_with_tag`](Self::get_or_create_with_tag), running
    /// `init` on a zone this call creates before any other process can see
    /// it (it runs under the region lock: it must not call back into these
    /// `Zones`). If `init` fails the zone is removed again.
    ///
    /// ```
    /// # let zones = shmzone::Zones::builder().build()?;
    /// let z = zones.get_or_create_with("cache", 64 << 10, 1, |z| {
    ///     let root = z.alloc_value([0u64; 4]).expect("room");
    ///     z.set_root(z.offset_of(root.as_ptr().cast()).unwrap());
    ///     Ok(())
    /// })?;
    /// assert_ne!(z.root(), 0);
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`get_or_create_with_tag`](Self::get_or_create_with_tag), or
    /// `init`'s error.
    pub fn get_or_create_with<F>(
        &self,
        name: &str,
        size: usize,
        tag: u64,
        init: F,
    ) -> Result<Zone<'_>, Error>
    where
        F: FnOnce(&Zone<'_>) -> Result<(), Error>,
    {
        check_name(name.as_bytes())?;
        let want = if size == 0 { 0 } else { round_zone(size) };
        // A reload in progress may be making this very name: wait until it
        // publishes (or is found dead and undone), so there is always
        // exactly one zone per name.
        let deadline = std::time::Instant::now() + PENDING_WAIT;
        let guard = loop {
            let guard = self.pool.lock();
            self.reap_pending(&guard, None);
            if self.find_pending(name).is_none() {
                break guard;
            }
            drop(guard);
            if std::time::Instant::now() >= deadline {
                return Err(Error::ZoneBusy {
                    name: name.to_string(),
                    waited: PENDING_WAIT,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        if let Some(slot) = self.find_live(name) {
            let e = self.entry(slot);
            if e.tag != tag {
                return Err(Error::ZoneTagConflict {
                    name: name.to_string(),
                });
            }
            if want != 0 && e.size as usize != want {
                return Err(Error::ZoneSizeConflict {
                    name: name.to_string(),
                    size: want,
                    declared: e.size as usize,
                });
            }
            return self.zone_at(slot);
        }
        if want == 0 {
            return Err(Error::ZeroSizeZone {
                name: name.to_string(),
            });
        }
        if want < Pool::MIN_SIZE {
            return Err(Error::ZoneTooSmall {
                name: name.to_string(),
                size: want,
                min: Pool::MIN_SIZE,
            });
        }
        let slot = self.create_locked(&guard, name, want, tag, F_RUNTIME)?;
        let zone = self.zone_at(slot)?;
        if let Err(e) = init(&zone) {
            self.destroy_locked(&guard, slot);
            return Err(e);
        }
        Ok(zone)
    }

    /// Releases every lock that `pid` holds — the region lock and each
    /// zone's — and names what it released ([`REGION_LOCK_NAME`] for the
    /// region lock), so the caller can `check()` those zones. This is
    /// nginx's `ngx_unlock_mutexes`, for a master that has seen `pid` die
    /// (call it before reaping, so the pid cannot be reused meanwhile).
    ///
    /// The next holder of each released lock is told through
    /// [`ShmGuard::recovered_from`](crate::ShmGuard::recovered_from).
    pub fn force_unlock_all(&self, pid: u32) -> Vec<String> {
        let mut names = Vec::new();
        if self.pool.mutex().force_unlock(pid) {
            log::warn!("the region lock was held by dead process {pid}: released");
            names.push(REGION_LOCK_NAME.to_string());
        }
        let _guard = self.pool.lock();
        for slot in 0..MAX_ZONES {
            let e = self.entry(slot);
            if e.flags & F_USED == 0 {
                continue;
            }
            if let Ok(zone) = self.zone_at(slot) {
                if zone.mutex().force_unlock(pid) {
                    log::warn!(
                        "shared memory zone \"{}\" was locked by {pid}",
                        e.name_str()
                    );
                    names.push(e.name_str().to_string());
                }
                // A holder killed between its unlock's store and its wake
                // leaves sleepers asleep on a free lock: wake them.
                zone.mutex().wake_stranded();
            }
        }
        // A reload that `pid` had under way dies with it: its pending
        // zones are undone (the directory is as before that reload).
        self.reap_pending(&_guard, Some(pid));
        drop(_guard);
        self.pool.mutex().wake_stranded();
        names
    }

    /// Removes the pending entries of a reload that died: those of `pid`,
    /// or (`None`) of any process that no longer exists. Caller holds the
    /// region lock. Returns how many.
    fn reap_pending(&self, guard: &PoolGuard<'_>, pid: Option<u32>) -> usize {
        let me = crate::os::process::current_pid();
        let mut n = 0;
        for slot in 0..MAX_ZONES {
            let Some(owner) = self.entry(slot).pending_owner() else {
                continue;
            };
            let dead = match pid {
                Some(p) => owner == p,
                None => owner != me && !crate::os::process::pid_alive(owner),
            };
            if dead {
                log::warn!(
                    "zone \"{}\": made by a reload of process {owner}, which died before \
                     publishing it; removed",
                    self.entry(slot).name_str()
                );
                self.destroy_locked(guard, slot);
                n += 1;
            }
        }
        n
    }

    /// A pending entry (a reload in progress in a live process) named
    /// `name`. Caller holds the region lock.
    fn find_pending(&self, name: &str) -> Option<usize> {
        (0..MAX_ZONES).find(|&i| {
            let e = self.entry(i);
            e.pending_owner().is_some() && e.name_bytes() == name.as_bytes()
        })
    }

    /// Applies a new set of declarations, as nginx's reload does:
    ///
    /// - same name, size and tag (and not `noreuse`): **kept** — same
    ///   memory and data; its init callback gets [`ZoneInit::Reused`];
    /// - size changed: **resized** — a new zone of the new size; the init
    ///   callback gets [`ZoneInit::Resized`] with the old zone, still
    ///   intact, to copy from (nginx refuses this instead);
    /// - `noreuse`, or another tag: **recreated** ([`ZoneInit::Recreated`],
    ///   or `Fresh` for another tag: it belongs to another user);
    /// - new name: **created** ([`ZoneInit::Fresh`]);
    /// - declared before but not now: **dropped**.
    ///
    /// Zones made at run time by [`get_or_create`](Self::get_or_create) are
    /// not declarations and are kept. Replaced and dropped zones are
    /// *retired*: invisible to [`get`](Self::get) but mapped and intact,
    /// because old workers may still be using them (as nginx's old workers
    /// keep their mappings). Call [`release_retired`](Self::release_retired)
    /// once those workers have exited.
    ///
    /// All or nothing: if any zone cannot be made or an init callback
    /// fails, the directory is left exactly as it was.
    ///
    /// # Errors
    /// Declaration errors as in [`ZonesBuilder::build`],
    /// [`Error::RegionFull`] when the region has no room for the new zones
    /// (the old ones are still held), or an init callback's error.
    pub fn reload(&mut self, b: ZonesBuilder) -> Result<ReloadReport, Error> {
        let decls = b.checked()?;
        let mut report = ReloadReport::default();
        // (decl, new slot or None when kept, old slot, how it is told)
        let mut plan: Vec<(&Decl, Option<usize>, Option<usize>, Kind)> = Vec::new();
        {
            let guard = self.pool.lock();
            let made = |plan: &Vec<(&Decl, Option<usize>, Option<usize>, Kind)>| {
                plan.iter().filter_map(|p| p.1).collect::<Vec<_>>()
            };
            for d in decls {
                let old = self.find_live(&d.name);
                let kind = match old.map(|s| self.entry(s)) {
                    None => Kind::Fresh,
                    Some(e) if e.tag != d.tag => Kind::Retagged,
                    Some(_) if d.noreuse => Kind::Recreated,
                    Some(e) if e.size as usize != d.size => Kind::Resized,
                    Some(_) => Kind::Kept,
                };
                let new = if kind == Kind::Kept {
                    None
                } else {
                    let owner = crate::os::process::current_pid() << OWNER_SHIFT;
                    let flags = F_PENDING | owner | if d.noreuse { F_NOREUSE } else { 0 };
                    match self.create_locked(&guard, &d.name, d.size, d.tag, flags) {
                        Ok(slot) => Some(slot),
                        Err(e) => {
                            for slot in made(&plan) {
                                self.destroy_locked(&guard, slot);
                            }
                            return Err(e);
                        }
                    }
                };
                plan.push((d, new, old, kind));
            }
        }

        // Init callbacks run without the region lock held.
        let mut failed = None;
        for &(d, new, old, kind) in &plan {
            let Some(init) = &d.init else { continue };
            let result = (|| {
                let old_zone = old.map(|s| self.zone_at(s)).transpose()?;
                match (kind, new, old_zone) {
                    (Kind::Kept, _, Some(z)) => init(&z, ZoneInit::Reused),
                    (Kind::Resized, Some(n), Some(o)) => {
                        init(&self.zone_at(n)?, ZoneInit::Resized(o))
                    }
                    (Kind::Recreated, Some(n), Some(o)) => {
                        init(&self.zone_at(n)?, ZoneInit::Recreated(o))
                    }
                    (_, Some(n), _) => init(&self.zone_at(n)?, ZoneInit::Fresh),
                    _ => Ok(()),
                }
            })();
            if let Err(e) = result {
                failed = Some(e);
                break;
            }
        }

        let guard = self.pool.lock();
        if let Some(e) = failed {
            for &(_, new, _, _) in &plan {
                if let Some(slot) = new {
                    self.destroy_locked(&guard, slot);
                }
            }
            return Err(e);
        }
        let mut keep = [false; MAX_ZONES];
        for &(d, new, old, kind) in &plan {
            let name = d.name.clone();
            if let Some(slot) = new {
                let mut e = self.entry(slot);
                e.flags &= FLAG_MASK & !F_PENDING;
                self.set_entry(&guard, slot, e)?;
                keep[slot] = true;
            }
            if let Some(slot) = old {
                if kind == Kind::Kept {
                    let mut e = self.entry(slot);
                    e.flags &= !F_RUNTIME;
                    self.set_entry(&guard, slot, e)?;
                    keep[slot] = true;
                }
            }
            match kind {
                Kind::Kept => report.kept.push(name),
                Kind::Fresh => report.created.push(name),
                Kind::Resized => report.resized.push(name),
                Kind::Recreated | Kind::Retagged => report.recreated.push(name),
            }
        }
        for (slot, &kept) in keep.iter().enumerate() {
            let mut e = self.entry(slot);
            let replaced = plan.iter().any(|p| p.2 == Some(slot) && p.3 != Kind::Kept);
            // A zone made at run time is kept, unless a declaration of the
            // same name replaced it (then it is retired like any other).
            if kept || !e.is_live() || e.flags & F_PENDING != 0 {
                continue;
            }
            if e.flags & F_RUNTIME != 0 && !replaced {
                continue;
            }
            if !replaced {
                report.dropped.push(e.name_str().to_string());
            }
            e.flags |= F_RETIRED;
            self.set_entry(&guard, slot, e)?;
        }
        drop(guard);
        Ok(report)
    }

    /// Gives back the memory of zones that reloads retired, and returns how
    /// many bytes that was. Call it once no process uses them any more
    /// (the workers of before the reload have exited).
    pub fn release_retired(&mut self) -> usize {
        let guard = self.pool.lock();
        (0..MAX_ZONES)
            .filter(|&i| self.entry(i).flags & F_RETIRED != 0)
            .map(|i| self.destroy_locked(&guard, i))
            .sum()
    }

    /// Every byte of the region's directory state: the region header
    /// (directory, generation) and the region pool's allocation state (see
    /// `slab::fuzzing::full_snapshot`). For the kill-point tests; takes
    /// the region lock.
    #[doc(hidden)]
    pub fn directory_snapshot(&self) -> Vec<u8> {
        let mut v = crate::slab::fuzzing::full_snapshot(&self.pool);
        let _guard = self.pool.lock();
        // SAFETY: the header is the region's first bytes, written only
        // under the region lock, which we hold.
        let hdr = unsafe {
            std::slice::from_raw_parts(
                self.hdr().cast::<u8>().cast_const(),
                std::mem::size_of::<RegionHeader>(),
            )
        };
        v.extend_from_slice(hdr);
        v
    }

    /// The directory's entries and the region pool's page layout, without
    /// the counters (generation, request counts) that a reload undone by
    /// [`force_unlock_all`](Self::force_unlock_all) leaves advanced. For
    /// the kill-point tests; takes the region lock.
    #[doc(hidden)]
    pub fn directory_layout(&self) -> Vec<u8> {
        let mut v = crate::slab::fuzzing::layout_snapshot(&self.pool);
        let _guard = self.pool.lock();
        for slot in 0..MAX_ZONES {
            let e = self.entry(slot);
            v.extend_from_slice(&e.flags.to_le_bytes());
            v.extend_from_slice(e.name_bytes());
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.offset.to_le_bytes());
            v.extend_from_slice(&e.size.to_le_bytes());
        }
        v
    }

    /// Bytes held by retired zones.
    pub fn retired_bytes(&self) -> usize {
        let _guard = self.pool.lock();
        (0..MAX_ZONES)
            .map(|i| self.entry(i))
            .filter(|e| e.flags & F_RETIRED != 0)
            .map(|e| e.size as usize)
            .sum()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Fresh,
    Kept,
    Resized,
    Recreated,
    Retagged,
}

/// A handle on one zone: its slab pool, lock, root and stats.
#[derive(Clone, Copy)]
pub struct Zone<'a> {
    zones: &'a Zones,
    pool: Pool,
    entry: ZoneEntry,
}

impl fmt::Debug for Zone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zone")
            .field("name", &self.name())
            .field("size", &self.size())
            .field("tag", &self.tag())
            .field("offset", &self.entry.offset)
            .finish()
    }
}

impl<'a> Zone<'a> {
    /// The zone's name.
    pub fn name(&self) -> &str {
        self.entry.name_str()
    }

    /// The zone's size in bytes (the declared size rounded up to 4 KiB).
    pub fn size(&self) -> usize {
        self.entry.size as usize
    }

    /// The tag it was declared with.
    pub fn tag(&self) -> u64 {
        self.entry.tag
    }

    /// The zones this zone belongs to.
    pub fn zones(&self) -> &'a Zones {
        self.zones
    }

    /// The zone's slab pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The zone's lock (the pool's).
    pub fn mutex(&self) -> &ShmMutex {
        self.pool.mutex()
    }

    /// Allocates `size` bytes under the zone lock; `None` when full.
    pub fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        self.pool.alloc(size)
    }

    /// As [`alloc`](Self::alloc), zeroing the `size` bytes.
    pub fn calloc(&self, size: usize) -> Option<NonNull<u8>> {
        self.pool.calloc(size)
    }

    /// Frees memory from [`alloc`](Self::alloc). A bad pointer is an `Err`
    /// and changes nothing.
    ///
    /// # Safety
    /// If `p` is a live allocation of this zone, nothing may use it after.
    pub unsafe fn free(&self, p: *mut u8) -> Result<(), FreeError> {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.pool.free(p) }
    }

    /// Takes the zone lock; the guard carries the `_locked` operations, so
    /// the user's own structures and the allocator change in one critical
    /// section (as nginx modules do).
    pub fn lock(&self) -> PoolGuard<'_> {
        self.pool.lock()
    }

    /// The allocator's statistics.
    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Walks the allocator's structures; the first broken invariant.
    ///
    /// # Errors
    /// The first invariant found broken.
    pub fn check(&self) -> Result<(), CheckError> {
        self.pool.check()
    }

    /// Whether the zone is fenced: still inconsistent after a dead
    /// worker's section was rolled back, so its allocations fail (see
    /// [`Pool::is_fenced`]) until [`reinit`](Self::reinit).
    pub fn is_fenced(&self) -> bool {
        self.pool.is_fenced()
    }

    /// Re-initialises the zone in place: empty, root 0, fence lifted (see
    /// [`Pool::reinit`]). For the master, once no process uses the zone's
    /// old contents.
    pub fn reinit(&self) {
        self.pool.reinit()
    }

    /// The offset (from the zone's start) of the user's root structure, or
    /// 0 (nginx's `shpool->data`).
    pub fn root(&self) -> usize {
        self.pool.root()
    }

    /// Sets the root offset (see [`root`](Self::root)).
    pub fn set_root(&self, offset: usize) {
        self.pool.set_root(offset)
    }

    /// The offset of `p` from the zone's start, if `p` is inside the zone.
    /// Offsets, unlike pointers, mean the same in every process.
    pub fn offset_of(&self, p: *const u8) -> Option<usize> {
        self.pool.offset_of(p)
    }

    /// The address of `offset` in this process, if inside the zone.
    pub fn ptr_at(&self, offset: usize) -> Option<NonNull<u8>> {
        self.pool.ptr_at(offset)
    }

    /// The address of a `T` at `offset`, if the whole `T` is inside the
    /// zone and the offset is aligned for it.
    pub fn value_at<T>(&self, offset: usize) -> Option<NonNull<T>> {
        let end = offset.checked_add(std::mem::size_of::<T>())?;
        if end > self.size() || offset == 0 {
            return None;
        }
        let p = self.ptr_at(offset)?;
        (p.as_ptr() as usize % std::mem::align_of::<T>() == 0).then(|| p.cast())
    }

    /// Allocates room for `value`, aligned for `T`, and moves it there.
    /// `T: Copy + 'static`: plain data with no destructor and no borrowed
    /// references (pointers inside it would mean nothing in another
    /// process; store offsets instead).
    ///
    /// ```
    /// # let zones = shmzone::Zones::builder().zone("z", 64 << 10).build()?;
    /// let zone = zones.get("z").unwrap();
    /// let p = zone.alloc_value([7u32; 3]).unwrap();
    /// // SAFETY: just allocated and initialised.
    /// assert_eq!(unsafe { *p.as_ptr() }, [7, 7, 7]);
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    pub fn alloc_value<T: Copy + 'static>(&self, value: T) -> Option<NonNull<T>> {
        let align = std::mem::align_of::<T>();
        if align > SLAB_PAGE {
            return None;
        }
        // A chunk is aligned to the largest power of two dividing its class
        // size, pages to 4 KiB; a request that is a multiple of `align` (as
        // every type's size is) gets a class size that is one too (checked
        // by a slab unit test), so the block is aligned.
        let size = std::mem::size_of::<T>().max(align).max(1);
        let p = self.alloc(size)?.cast::<T>();
        debug_assert_eq!(p.as_ptr() as usize % align, 0);
        // SAFETY: `p` is a fresh block of at least size_of::<T>() bytes,
        // aligned for T.
        unsafe { p.as_ptr().write(value) };
        Some(p)
    }
}
