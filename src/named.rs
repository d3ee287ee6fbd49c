//! Named regions: shared memory that a process which did not fork from the
//! creator attaches to by a POSIX shm name, a SysV key or a file path.
//!
//! | kind | made by | lives until | see |
//! |---|---|---|---|
//! | [`NamedSpec::posix`] | `shm_open(O_CREAT\|O_EXCL)` + `ftruncate` + `mmap(MAP_SHARED)` | `shm_unlink` or reboot (`/dev/shm/NAME` on Linux) | shm_open(3) |
//! | [`NamedSpec::sysv_key`] | `shmget(key, IPC_CREAT\|IPC_EXCL)` + `shmat` | `IPC_RMID` and the last detach, or reboot (`ipcs -m`) | shmget(2) |
//! | [`NamedSpec::file`] | `open(O_CREAT\|O_EXCL\|O_NOFOLLOW)` + `mmap(MAP_SHARED)` | the file is removed (survives reboots off tmpfs) | mmap(2) |
//!
//! The region may be mapped at a different address in every process (and
//! twice in one): nothing in it is an absolute pointer (DESIGN.md
//! invariant 1), so [`Zone::ptr_at`](crate::Zone::ptr_at) and
//! [`Zone::offset_of`](crate::Zone::offset_of) translate between the
//! process's addresses and the offsets stored in shared memory.
//!
//! # Security defaults
//!
//! - **Mode 0600** unless [`NamedSpec::mode`] says otherwise, applied with
//!   `fchmod` after creation so the umask neither widens nor narrows it.
//!   A mode with bits outside `0o777`, or one that does not let the owner
//!   read and write, is refused. (Examples on the web use 0666: anyone on
//!   the machine could then rewrite your allocator's metadata.)
//! - **Never adopt what someone else planted.** Creation is
//!   `O_CREAT|O_EXCL` / `IPC_CREAT|IPC_EXCL`: if the name, key or path is
//!   taken, creating fails with [`Error::AlreadyExists`]. To start over on
//!   purpose, [`NamedSpec::replace`] removes the old one first.
//! - **Files: `O_NOFOLLOW` and a regular-file check.** A symbolic link, a
//!   directory, a FIFO or a device is an [`Error::BadNamed`]. `O_NOFOLLOW`
//!   covers the last component only: keep the directory writable by the
//!   owner alone.
//! - **Only your own regions.** Attach refuses an object owned by another
//!   uid than the process's effective uid ([`Error::BadNamed`]): a region
//!   planted by another user with mode 0666 is not adopted either. An
//!   inspector run by another user opts in with
//!   [`NamedSpec::allow_other_owner`].
//! - **Attach checks before it trusts.** The object must be a non-zero whole
//!   number of pages, and [`Zones::attach`] runs
//!   [`validate_region`](crate::zone::validate_region) (magic, layout
//!   version, page size, the recorded length against the mapping's real
//!   size, every directory entry in bounds, aligned, not overlapping, valid
//!   UTF-8) before it reads anything else. Garbage is an `Err`, never a
//!   crash. (If another process *shrinks* the object while it is mapped,
//!   touching the lost pages raises `SIGBUS`: that needs write access to the
//!   object, which the mode keeps to its owner.)
//!
//! # Lifetime
//!
//! Dropping the creator's handle **does not remove** the name: a named
//! region is for processes that come and go independently (an inspector, a
//! restarted master), so it outlives its creator. Remove it with
//! [`NamedSpec::remove`] / [`remove`], or ask for
//! [`NamedSpec::remove_on_drop`]; that removal happens only in the creating
//! process, never in a child that inherited the handle through `fork`, and
//! only while the name still names the object this process made (same
//! device and inode, or the same SysV id): a region another creator made
//! since under that name with [`NamedSpec::replace`] is left alone.
//! Removing the name never unmaps anyone: the memory goes when its last
//! mapping goes.

use std::path::Path;

use crate::error::Error;
pub use crate::os::NamedId;
use crate::os::{remove_named, CreateOpts, NamedMap};
use crate::region::{round_to_pages, Region};
use crate::zone::{Zones, ZonesBuilder};

/// The mode a named region gets unless [`NamedSpec::mode`] says otherwise:
/// read and write for the owner only.
pub const DEFAULT_MODE: u32 = 0o600;

/// Which named region, and how to create or attach it.
///
/// ```
/// use shmzone::{NamedSpec, Region};
/// let name = format!("/shmzone-doc-{}", std::process::id());
/// let spec = NamedSpec::posix(&name).remove_on_drop(true);
/// let creator = Region::create_named(1 << 16, &spec)?;
/// let other = Region::attach_named(&NamedSpec::posix(&name))?;
/// // SAFETY: both are live mappings of the same 64 KiB.
/// unsafe {
///     creator.as_ptr().write(42);
///     assert_eq!(other.as_ptr().read(), 42);
/// }
/// # Ok::<(), shmzone::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedSpec {
    id: NamedId,
    mode: u32,
    replace: bool,
    read_only: bool,
    remove_on_drop: bool,
    allow_other_owner: bool,
}

impl NamedSpec {
    /// A spec for `id` with the defaults: mode [`DEFAULT_MODE`], no replace,
    /// read-write, not removed on drop.
    pub fn new(id: NamedId) -> NamedSpec {
        NamedSpec {
            id,
            mode: DEFAULT_MODE,
            replace: false,
            read_only: false,
            remove_on_drop: false,
            allow_other_owner: false,
        }
    }

    /// A POSIX shm object, `/NAME`: one leading slash, no other, at most
    /// 255 bytes. On Linux it is the file `/dev/shm/NAME`.
    pub fn posix(name: &str) -> NamedSpec {
        NamedSpec::new(NamedId::Posix(name.to_string()))
    }

    /// A SysV segment with `key` (not 0, which is `IPC_PRIVATE`).
    pub fn sysv_key(key: i32) -> NamedSpec {
        NamedSpec::new(NamedId::SysVKey(key))
    }

    /// A regular file at `path`.
    pub fn file(path: impl AsRef<Path>) -> NamedSpec {
        NamedSpec::new(NamedId::File(path.as_ref().to_path_buf()))
    }

    /// The permission bits a created region gets (default
    /// [`DEFAULT_MODE`], 0600). Must lie within `0o777` and include `0o600`;
    /// checked when creating.
    pub fn mode(mut self, mode: u32) -> NamedSpec {
        self.mode = mode;
        self
    }

    /// When creating: remove an existing region of that name first, instead
    /// of failing with [`Error::AlreadyExists`] (default false). Processes
    /// still mapping the old one keep it; they do not see the new one.
    pub fn replace(mut self, yes: bool) -> NamedSpec {
        self.replace = yes;
        self
    }

    /// When attaching: map read-only (`O_RDONLY`, `PROT_READ`,
    /// `SHM_RDONLY`), so this process cannot change the region, and mode
    /// 0640/0644 readers can attach (default false). Ignored by create.
    pub fn read_only(mut self, yes: bool) -> NamedSpec {
        self.read_only = yes;
        self
    }

    /// When creating: remove the name when the creating process drops the
    /// region (default false: the region outlives its creator until
    /// [`remove`](Self::remove)). A forked child dropping its inherited
    /// copy never removes it.
    pub fn remove_on_drop(mut self, yes: bool) -> NamedSpec {
        self.remove_on_drop = yes;
        self
    }

    /// When attaching: accept a region owned by another uid than this
    /// process's effective uid (default false: such a region is refused
    /// with [`Error::BadNamed`], since another user, perhaps a hostile one,
    /// made it or can rewrite it). Opt in for an inspector run by another
    /// user (root looking at a service's region, say).
    ///
    /// ```
    /// use shmzone::NamedSpec;
    /// let spec = NamedSpec::posix("/cache").read_only(true).allow_other_owner(true);
    /// assert!(spec.allows_other_owner());
    /// ```
    pub fn allow_other_owner(mut self, yes: bool) -> NamedSpec {
        self.allow_other_owner = yes;
        self
    }

    /// Whether an attach accepts a region owned by another uid.
    pub fn allows_other_owner(&self) -> bool {
        self.allow_other_owner
    }

    /// The name, key or path.
    pub fn id(&self) -> &NamedId {
        &self.id
    }

    /// The mode a create would use.
    pub fn get_mode(&self) -> u32 {
        self.mode
    }

    /// Whether an attach maps read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Removes the named region: see [`remove`].
    ///
    /// # Errors
    /// As [`remove`].
    pub fn remove(&self) -> Result<(), Error> {
        remove(&self.id)
    }
}

/// Removes a named region: `shm_unlink`, `shmctl(IPC_RMID)` or `unlink`.
/// Processes that have it mapped keep using it; the memory goes with the
/// last mapping. A file path that is a symbolic link has the link removed,
/// never its target; a directory is refused.
///
/// # Errors
/// [`Error::Os`] naming the call (e.g. `ENOENT` when there is no such
/// region), [`Error::BadNamed`] for an unusable name or a non-file path.
pub fn remove(id: &NamedId) -> Result<(), Error> {
    remove_named(id)
}

impl Region {
    /// Creates the named region `spec` of at least `len` bytes (rounded up
    /// to whole pages), zero-filled, mapped read-write.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] if the name, key or path is taken (unless
    /// [`NamedSpec::replace`]); [`Error::BadNamed`] for an unusable name,
    /// key 0 or a bad mode; [`Error::ZeroLength`], [`Error::LengthOverflow`];
    /// [`Error::Os`] naming the call the kernel refused.
    pub fn create_named(len: usize, spec: &NamedSpec) -> Result<Region, Error> {
        let opts = CreateOpts {
            len: round_to_pages(len)?,
            mode: spec.mode,
            replace: spec.replace,
            remove_on_drop: spec.remove_on_drop,
        };
        NamedMap::create(&spec.id, &opts).map(Region::from_named)
    }

    /// Maps the whole of an existing named region, read-only if
    /// [`NamedSpec::read_only`]. Nothing in it is checked but its owner
    /// (this process's effective uid, unless
    /// [`NamedSpec::allow_other_owner`]), its size (a non-zero whole number
    /// of pages) and, for POSIX objects and files, that it is a regular file
    /// (a FIFO does not block the open) reached without following a
    /// symbolic link: use [`Zones::attach`] to check a zone directory.
    ///
    /// # Errors
    /// [`Error::BadNamed`] for what cannot be a region; [`Error::Os`]
    /// naming the call (e.g. `ENOENT`, `EACCES`).
    pub fn attach_named(spec: &NamedSpec) -> Result<Region, Error> {
        NamedMap::attach(&spec.id, spec.read_only, spec.allow_other_owner).map(Region::from_named)
    }

    /// A private, writable, copy-on-write mapping of the named region
    /// (`MAP_PRIVATE`): its pages read the object until this process writes
    /// them. `None` for a SysV segment, which cannot be mapped that way.
    fn attach_named_copy(spec: &NamedSpec) -> Result<Option<Region>, Error> {
        Ok(NamedMap::attach_copy(&spec.id, spec.allow_other_owner)?.map(Region::from_named))
    }

    /// A private, writable copy of this region's bytes (a fresh fork-shared
    /// mapping of the same length), for reading a region this process may
    /// not write.
    fn private_copy(&self) -> Result<Region, Error> {
        let copy = Region::new(self.len())?;
        // SAFETY: both mappings are `self.len()` bytes long and distinct.
        // The source may change under the copy (other processes write it);
        // the copy is validated again before anything in it is trusted.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr(), copy.as_ptr(), self.len()) };
        Ok(copy)
    }
}

impl Zones {
    /// Creates the named region `spec` and builds `builder`'s zones in it:
    /// the named twin of [`ZonesBuilder::build`]. Unrelated processes then
    /// use [`Zones::attach`].
    ///
    /// ```
    /// use shmzone::{NamedSpec, Zones};
    /// let path = std::env::temp_dir().join(format!("shmzone-doc-{}.shm", std::process::id()));
    /// let spec = NamedSpec::file(&path).remove_on_drop(true);
    /// let master = Zones::create_named(Zones::builder().zone("counters", 64 << 10), &spec)?;
    /// let counter = master.get("counters").unwrap().alloc_value(7u64).unwrap();
    /// let off = master.get("counters").unwrap().offset_of(counter.as_ptr().cast()).unwrap();
    ///
    /// let other = Zones::attach(&NamedSpec::file(&path))?; // e.g. another process
    /// let seen = other.get("counters").unwrap().value_at::<u64>(off).unwrap();
    /// // SAFETY: the u64 written above, at the same offset in the other mapping.
    /// assert_eq!(unsafe { seen.as_ptr().read() }, 7);
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Region::create_named`] and [`ZonesBuilder::build`]. If building
    /// the zones fails, the new region is removed again.
    pub fn create_named(builder: ZonesBuilder, spec: &NamedSpec) -> Result<Zones, Error> {
        builder.checked()?;
        let region = Region::create_named(builder.region_len(), spec)?;
        builder.build_in(region).inspect_err(|_| {
            if let Err(e) = remove(&spec.id) {
                log::error!("{e}");
            }
        })
    }

    /// Attaches to a named region that [`Zones::create_named`] made,
    /// validating it first without trusting any of it (see
    /// [`Zones::from_region`]: header, directory and region pool under the
    /// region lock, every zone's allocator under its lock, each lock waited
    /// for at most [`ATTACH_LOCK_WAIT`](crate::zone::ATTACH_LOCK_WAIT)). A
    /// region owned by another uid is refused unless
    /// [`NamedSpec::allow_other_owner`]; a read-write attach of a region
    /// made in another pid namespace is refused (its lock words hold that
    /// namespace's pids).
    ///
    /// Read-write (the default) gives a handle like the creator's: `get`,
    /// `alloc`, `get_or_create` work and are seen by every process.
    ///
    /// With [`NamedSpec::read_only`] the object is opened read-only and
    /// the handle works on a private **snapshot of its metadata**: the
    /// header, the directory, and for the region pool and every zone the
    /// pool header, the page descriptors, the counters and the small pages'
    /// bitmaps are copied into a private copy-on-write mapping of the object
    /// (`MAP_PRIVATE`); everything else (the zones' data) is read from the
    /// object as it is when read. So the cost grows with the number of
    /// pages, not their bytes (a full private copy for a SysV segment, which
    /// cannot be mapped copy-on-write). What `shmzone-stat` reports (names,
    /// sizes, roots, `check()`, `stats()`) comes from the snapshot. The
    /// snapshot is taken again (up to 20 times, 0.2 ms apart) while the
    /// directory changed during the copy, a lock was held (its holder may
    /// have been mid-operation) or validation failed, so a valid region
    /// that others are changing is never refused. The locks need writes:
    /// in the snapshot any lock held when copied is released (its next
    /// guard reports `recovered_from`). Changes to the snapshot stay
    /// private.
    ///
    /// # Errors
    /// As [`Region::attach_named`] and [`Zones::from_region`], plus
    /// [`Error::BadRegion`] naming what is wrong with the header (a random
    /// file, another layout version, a recorded length that is not the
    /// object's size, ...).
    pub fn attach(spec: &NamedSpec) -> Result<Zones, Error> {
        let region = Region::attach_named(spec)?;
        if !spec.read_only {
            return Zones::from_region(region);
        }
        Zones::snapshot(&region, || match Region::attach_named_copy(spec)? {
            Some(copy) => Ok(copy),
            None => region.private_copy(),
        })
    }
}
