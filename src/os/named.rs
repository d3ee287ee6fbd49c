//! Named regions: memory that a process which did not fork from the
//! creator can attach to, by a POSIX shm name, a SysV key or a file path.
//!
//! This file only dispatches: each kind lives in its own file with the same
//! shape as the fork-shared backends (`posix.rs`, `sysv_key.rs`, `file.rs`;
//! `windows.rs` on Windows, a stub), each a `Map` with `create`, `attach`,
//! `as_ptr`, `len`, an unmapping `Drop`, and a `remove` function.

use std::fmt;
use std::fs::File;
use std::path::PathBuf;
use std::ptr::NonNull;

use super::Backend;
use crate::error::Error;

cfg_if::cfg_if! {
    if #[cfg(unix)] {
        use super::file as file_map;
        use super::posix as posix_map;
        use super::sysv_key as sysv_key_map;
    } else {
        use super::windows::file as file_map;
        use super::windows::posix as posix_map;
        use super::windows::sysv_key as sysv_key_map;
    }
}

/// What a named region is called: a POSIX shm name, a SysV key or a path.
///
/// ```
/// use shmzone::NamedId;
/// assert_eq!(NamedId::Posix("/cache".into()).to_string(), "POSIX shm \"/cache\"");
/// assert_eq!(NamedId::SysVKey(0x5a4d).to_string(), "SysV key 0x00005a4d");
/// assert_eq!(NamedId::File("/var/lib/x.shm".into()).to_string(), "file \"/var/lib/x.shm\"");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NamedId {
    /// A POSIX shared memory object, `shm_open(3)`: `/NAME`, one leading
    /// slash and no other (on Linux it is the file `/dev/shm/NAME`).
    Posix(String),
    /// A SysV segment with this key, `shmget(2)`; listed by `ipcs -m`.
    /// Key 0 is `IPC_PRIVATE` and cannot name anything.
    SysVKey(i32),
    /// A regular file mapped `MAP_SHARED`; it outlives every process.
    File(PathBuf),
}

impl fmt::Display for NamedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamedId::Posix(name) => write!(f, "POSIX shm {name:?}"),
            NamedId::SysVKey(key) => write!(f, "SysV key {key:#010x}"),
            NamedId::File(path) => write!(f, "file {:?}", path.display().to_string()),
        }
    }
}

impl NamedId {
    /// The form [`FromStr`](std::str::FromStr) reads back: `posix:/NAME`,
    /// `sysv:0xKEY` or `file:PATH` (what to pass to `shmzone-stat`).
    ///
    /// ```
    /// use shmzone::NamedId;
    /// let id: NamedId = "sysv:0x5a4d".parse().unwrap();
    /// assert_eq!(id.to_arg(), "sysv:0x00005a4d");
    /// assert_eq!(id.to_arg().parse::<NamedId>().unwrap(), id);
    /// ```
    pub fn to_arg(&self) -> String {
        match self {
            NamedId::Posix(name) => format!("posix:{name}"),
            NamedId::SysVKey(key) => format!("sysv:{key:#010x}"),
            NamedId::File(path) => format!("file:{}", path.display()),
        }
    }
}

/// Parses `posix:/NAME`, `sysv:KEY` (decimal, or hex with `0x`) or
/// `file:PATH`: the form command lines take (`shmzone-stat`, servers).
///
/// ```
/// use shmzone::NamedId;
/// assert_eq!("posix:/cache".parse(), Ok(NamedId::Posix("/cache".into())));
/// assert_eq!("sysv:0x5a4d".parse(), Ok(NamedId::SysVKey(0x5a4d)));
/// assert_eq!("sysv:-2".parse(), Ok(NamedId::SysVKey(-2)));
/// assert_eq!("file:/tmp/x".parse(), Ok(NamedId::File("/tmp/x".into())));
/// assert!("/cache".parse::<NamedId>().is_err());
/// ```
impl std::str::FromStr for NamedId {
    type Err = String;

    fn from_str(s: &str) -> Result<NamedId, String> {
        let bad = || format!("{s:?} is not posix:/NAME, sysv:KEY or file:PATH");
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "posix" if !rest.is_empty() => Ok(NamedId::Posix(rest.to_string())),
            "file" if !rest.is_empty() => Ok(NamedId::File(PathBuf::from(rest))),
            "sysv" => {
                let key = match rest.strip_prefix("0x").or_else(|| rest.strip_prefix("0X")) {
                    Some(hex) => u32::from_str_radix(hex, 16).map(|k| k as i32).ok(),
                    None => rest.parse::<i32>().ok(),
                };
                key.map(NamedId::SysVKey)
                    .ok_or_else(|| format!("{rest:?} is not a SysV key (decimal or 0x hex)"))
            }
            _ => Err(bad()),
        }
    }
}

/// How to create a named region.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CreateOpts {
    /// Bytes, a whole number of pages.
    pub len: usize,
    /// Permission bits (checked by [`check_mode`]).
    pub mode: u32,
    /// Remove an existing object of that name first.
    pub replace: bool,
    /// Remove the name when the creating process drops the mapping.
    pub remove_on_drop: bool,
}

/// A mapping of a named region; unmapped (and, if the creator asked and
/// this is the creating process, removed) on drop.
pub(crate) struct NamedMap {
    id: NamedId,
    read_only: bool,
    inner: Inner,
}

enum Inner {
    Posix(posix_map::Map),
    SysVKey(sysv_key_map::Map),
    File(file_map::Map),
}

impl NamedMap {
    /// Creates the object `id` names (it must not exist unless
    /// `opts.replace`) and maps it read-write.
    pub(crate) fn create(id: &NamedId, opts: &CreateOpts) -> Result<NamedMap, Error> {
        check_mode(id, opts.mode)?;
        debug_assert!(opts.len > 0 && opts.len % super::page_size() == 0);
        let inner = match id {
            NamedId::Posix(name) => Inner::Posix(posix_map::Map::create(name, opts)?),
            NamedId::SysVKey(key) => Inner::SysVKey(sysv_key_map::Map::create(*key, opts)?),
            NamedId::File(path) => Inner::File(file_map::Map::create(path, opts)?),
        };
        Ok(NamedMap {
            id: id.clone(),
            read_only: false,
            inner,
        })
    }

    /// Maps the existing object `id` names, all of it. Unless `any_owner`,
    /// an object owned by another uid than this process's effective uid is
    /// refused (someone else planted it, or it is someone else's).
    pub(crate) fn attach(
        id: &NamedId,
        read_only: bool,
        any_owner: bool,
    ) -> Result<NamedMap, Error> {
        let inner = match id {
            NamedId::Posix(name) => Inner::Posix(posix_map::Map::attach(name, read_only)?),
            NamedId::SysVKey(key) => Inner::SysVKey(sysv_key_map::Map::attach(*key, read_only)?),
            NamedId::File(path) => Inner::File(file_map::Map::attach(path, read_only)?),
        };
        let owner = match &inner {
            Inner::Posix(m) => m.owner(),
            Inner::SysVKey(m) => m.owner(),
            Inner::File(m) => m.owner(),
        };
        check_owner(id, owner, any_owner)?;
        Ok(NamedMap {
            id: id.clone(),
            read_only,
            inner,
        })
    }

    /// A private, copy-on-write mapping of the existing object (for a
    /// snapshot that copies only what it must): `None` for a SysV segment,
    /// which cannot be mapped that way. The owner is checked as by
    /// [`NamedMap::attach`].
    pub(crate) fn attach_copy(id: &NamedId, any_owner: bool) -> Result<Option<NamedMap>, Error> {
        let inner = match id {
            NamedId::Posix(name) => Inner::Posix(posix_map::Map::attach_copy(name)?),
            NamedId::File(path) => Inner::File(file_map::Map::attach_copy(path)?),
            NamedId::SysVKey(_) => return Ok(None),
        };
        let owner = match &inner {
            Inner::Posix(m) => m.owner(),
            Inner::SysVKey(m) => m.owner(),
            Inner::File(m) => m.owner(),
        };
        check_owner(id, owner, any_owner)?;
        Ok(Some(NamedMap {
            id: id.clone(),
            read_only: false,
            inner,
        }))
    }

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        match &self.inner {
            Inner::Posix(m) => m.as_ptr(),
            Inner::SysVKey(m) => m.as_ptr(),
            Inner::File(m) => m.as_ptr(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match &self.inner {
            Inner::Posix(m) => m.len(),
            Inner::SysVKey(m) => m.len(),
            Inner::File(m) => m.len(),
        }
    }

    pub(crate) fn id(&self) -> &NamedId {
        &self.id
    }

    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// The fork-shared backend with the same kind of mapping: `SysV` for a
    /// keyed segment, `DevZero` (a `MAP_SHARED` mapping of a descriptor)
    /// for POSIX shm and files.
    pub(crate) fn backend(&self) -> Backend {
        match self.inner {
            Inner::SysVKey(_) => Backend::SysV,
            Inner::Posix(_) | Inner::File(_) => Backend::DevZero,
        }
    }
}

/// Refuses an object owned by another uid than this process's effective
/// uid, unless `any_owner`.
fn check_owner(id: &NamedId, owner: u32, any_owner: bool) -> Result<(), Error> {
    let me = super::process::euid();
    if owner != me && !any_owner {
        return Err(bad(
            id,
            format!(
                "is owned by uid {owner}, not by this process's effective uid {me}: \
                 refusing to trust it (NamedSpec::allow_other_owner(true) to attach anyway)"
            ),
        ));
    }
    Ok(())
}

/// Removes the name: `shm_unlink`, `shmctl(IPC_RMID)`, `unlink`. Processes
/// that have it mapped keep their mapping.
pub(crate) fn remove(id: &NamedId) -> Result<(), Error> {
    match id {
        NamedId::Posix(name) => posix_map::remove(name),
        NamedId::SysVKey(key) => sysv_key_map::remove(*key),
        NamedId::File(path) => file_map::remove(path),
    }
}

/// A mode is permission bits only (no set-id, sticky or file-type bits) and
/// lets the owner read and write.
pub(crate) fn check_mode(id: &NamedId, mode: u32) -> Result<(), Error> {
    let reason = if mode & !0o777 != 0 {
        format!("mode {mode:#o} has bits outside 0o777")
    } else if mode & 0o600 != 0o600 {
        format!("mode {mode:#o} does not let the owner read and write the region")
    } else {
        return Ok(());
    };
    Err(bad(id, reason))
}

/// `Error::BadNamed` for `id`.
pub(crate) fn bad(id: &NamedId, reason: String) -> Error {
    Error::BadNamed {
        name: id.to_string(),
        reason,
    }
}

/// The length of an object about to be attached: it must be a regular file
/// (POSIX shm objects are), not empty, and a whole number of pages (every
/// region is; anything else was truncated or is not a region).
#[allow(dead_code)] // unused by the Windows stub
pub(crate) fn checked_len(id: &NamedId, file: &File) -> Result<usize, Error> {
    let meta = file.metadata().map_err(|source| Error::Os {
        call: format!("fstat({id})"),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(bad(id, format!("is not a regular file ({})", kind(&meta))));
    }
    let len = meta.len();
    if len == 0 {
        return Err(bad(id, "is empty: not a region".into()));
    }
    let page = super::page_size() as u64;
    if len % page != 0 {
        return Err(bad(
            id,
            format!("its size {len} is not a whole number of {page}-byte pages: truncated, or not a region"),
        ));
    }
    usize::try_from(len).map_err(|_| bad(id, format!("its size {len} does not fit in memory")))
}

/// A file's identity: (device, inode).
pub(crate) type FileId = (u64, u64);

/// The identity and owner uid of an open object (`fstat`).
#[cfg(unix)]
pub(crate) fn file_id(id: &NamedId, file: &File) -> Result<(FileId, u32), Error> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(|source| Error::Os {
        call: format!("fstat({id})"),
        source,
    })?;
    Ok(((meta.dev(), meta.ino()), meta.uid()))
}

/// What kind of file `meta` describes, for messages.
pub(crate) fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a device, FIFO or socket"
    }
}

/// This process's id, to tell the creator from its forked children.
#[allow(dead_code)] // unused by the Windows stub
pub(crate) fn this_pid() -> u32 {
    std::process::id()
}
