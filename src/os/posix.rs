//! POSIX shared memory objects: `shm_open` + `ftruncate` + `mmap(MAP_SHARED)`
//! (shm_open(3), shm_overview(7)).
//!
//! On Linux `/NAME` is the file `/dev/shm/NAME` on a tmpfs: it lives until
//! `shm_unlink` or a reboot, and any process whose uid the mode admits can
//! map it. Creation is `O_CREAT|O_EXCL`, so an object someone else planted
//! under the name is never adopted.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};

use super::last_error;
use super::named::{bad, checked_len, file_id, this_pid, CreateOpts, FileId, NamedId};
use crate::error::Error;

/// The longest name, slash included (`NAME_MAX` is 255 for the file under
/// `/dev/shm`; some systems allow less, and the kernel then says so).
const MAX_NAME: usize = 255;

/// A mapping of a POSIX shm object; unmapped on drop (by memmap2), and
/// unlinked first if the creating process asked for it.
pub(crate) struct Map {
    map: MmapRaw,
    name: CString,
    /// The pid that must drop this `Map` for the drop to unlink the name.
    unlink_by: Option<u32>,
    /// The object this process made (device, inode): the drop unlinks the
    /// name only while it still names that object, never a replacement.
    made: FileId,
    /// The uid owning the object.
    owner: u32,
}

/// Checks `name` and makes the C string: `/` then 1..=254 bytes with no
/// `/` and no NUL, not `.` or `..`.
fn c_name(name: &str) -> Result<CString, Error> {
    let id = || NamedId::Posix(name.to_string());
    let rest = match name.strip_prefix('/') {
        Some(rest) => rest,
        None => return Err(bad(&id(), "a POSIX shm name starts with '/'".into())),
    };
    let reason = if rest.is_empty() || rest == "." || rest == ".." {
        "a POSIX shm name is '/' and a file name"
    } else if rest.contains('/') {
        "a POSIX shm name has no '/' after the first"
    } else if name.len() > MAX_NAME {
        "a POSIX shm name is at most 255 bytes"
    } else {
        return CString::new(name).map_err(|_| bad(&id(), "a name cannot contain NUL".into()));
    };
    Err(bad(&id(), reason.into()))
}

/// `shm_open(name, flags, mode)` as an owned file.
fn shm_open(name: &CString, flags: libc::c_int, mode: u32, call: &str) -> Result<File, Error> {
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::shm_open(name.as_ptr(), flags, mode as libc::mode_t) };
    if fd == -1 {
        return Err(last_error(call.to_string()));
    }
    // SAFETY: `fd` was just returned by shm_open and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

impl Map {
    /// `shm_open(O_CREAT|O_EXCL|O_RDWR, mode)`, `fchmod(mode)` (so the umask
    /// does not change it), `ftruncate(len)`, `mmap(MAP_SHARED)`. On any
    /// failure after creating, the object is unlinked again.
    pub(crate) fn create(name: &str, opts: &CreateOpts) -> Result<Map, Error> {
        let c = c_name(name)?;
        if opts.replace {
            unlink(&c, name, true)?;
        }
        let call = format!(
            "shm_open({name:?}, O_CREAT|O_EXCL|O_RDWR, {:#o})",
            opts.mode
        );
        let file = shm_open(
            &c,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            opts.mode,
            &call,
        )
        .map_err(|e| match e {
            Error::Os { ref source, .. } if source.raw_os_error() == Some(libc::EEXIST) => {
                Error::AlreadyExists {
                    name: NamedId::Posix(name.to_string()).to_string(),
                }
            }
            e => e,
        })?;
        let made = (|| {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(opts.mode))
                .map_err(|source| Error::Os {
                    call: format!("fchmod({name:?}, {:#o})", opts.mode),
                    source,
                })?;
            file.set_len(opts.len as u64).map_err(|source| Error::Os {
                call: format!("ftruncate({name:?}, {})", opts.len),
                source,
            })?;
            MmapOptions::new()
                .len(opts.len)
                .map_raw(&file)
                .map_err(|source| Error::Os {
                    call: format!("mmap({name:?}, MAP_SHARED, {})", opts.len),
                    source,
                })
        })();
        match made.and_then(|map| Ok((map, file_id(&NamedId::Posix(name.into()), &file)?))) {
            Ok((map, (made, owner))) => Ok(Map {
                map,
                name: c,
                unlink_by: opts.remove_on_drop.then(this_pid),
                made,
                owner,
            }),
            Err(e) => {
                let _ = unlink(&c, name, true);
                Err(e)
            }
        }
    }

    /// `shm_open(O_RDWR or O_RDONLY, O_NONBLOCK)` and a map of the whole
    /// object, whose size must be a non-zero whole number of pages. A FIFO
    /// planted under the name (anyone may create one in `/dev/shm`) must
    /// not block the open: `O_NONBLOCK`, then `fstat` refuses anything but
    /// a regular file before mapping.
    pub(crate) fn attach(name: &str, read_only: bool) -> Result<Map, Error> {
        Map::attach_as(name, read_only, false)
    }

    /// As [`Map::attach`] read-only, but mapped private and writable
    /// (`MAP_PRIVATE`, copy-on-write): pages read the object until this
    /// process writes them, which gives it a private copy of just those.
    pub(crate) fn attach_copy(name: &str) -> Result<Map, Error> {
        Map::attach_as(name, true, true)
    }

    fn attach_as(name: &str, read_only: bool, copy: bool) -> Result<Map, Error> {
        let c = c_name(name)?;
        let (flags, flag_text) = if read_only {
            (libc::O_RDONLY | libc::O_NONBLOCK, "O_RDONLY|O_NONBLOCK")
        } else {
            (libc::O_RDWR | libc::O_NONBLOCK, "O_RDWR|O_NONBLOCK")
        };
        let file = shm_open(&c, flags, 0, &format!("shm_open({name:?}, {flag_text})"))?;
        let len = checked_len(&NamedId::Posix(name.to_string()), &file)?;
        let (made, owner) = file_id(&NamedId::Posix(name.to_string()), &file)?;
        let mut opts = MmapOptions::new();
        opts.len(len);
        let map = if copy {
            // SAFETY: a private mapping: nothing this process writes reaches
            // the object; what others write to it may show in pages this
            // process has not written, which the caller knows (it copies
            // what it needs consistent).
            unsafe { opts.map_copy(&file) }.map(MmapRaw::from)
        } else if read_only {
            opts.map_raw_read_only(&file)
        } else {
            opts.map_raw(&file)
        }
        .map_err(|source| Error::Os {
            call: format!(
                "mmap({name:?}, {}, {len})",
                if copy { "MAP_PRIVATE" } else { "MAP_SHARED" }
            ),
            source,
        })?;
        Ok(Map {
            map,
            name: c,
            unlink_by: None,
            made,
            owner,
        })
    }

    /// The uid that owns the object.
    pub(crate) fn owner(&self) -> u32 {
        self.owner
    }

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        NonNull::new(self.map.as_mut_ptr()).expect("a mapping is never at NULL")
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.unlink_by != Some(this_pid()) {
            return;
        }
        let name = self.name.to_string_lossy().into_owned();
        // Only the object this process made: another creator may have
        // replaced it under the same name (`replace`) since. (A replacement
        // between this check and the unlink cannot be told apart: POSIX
        // has no unlink-if-same.)
        let now = shm_open(
            &self.name,
            libc::O_RDONLY | libc::O_NONBLOCK,
            0,
            "shm_open(O_RDONLY)",
        )
        .and_then(|f| file_id(&NamedId::Posix(name.clone()), &f));
        match now {
            Ok((id, _)) if id == self.made => {
                if let Err(e) = unlink(&self.name, &name, false) {
                    log::error!("{e}");
                }
            }
            Ok(_) => {
                log::warn!("POSIX shm {name:?} was replaced by another creator: not removing it")
            }
            Err(_) => {} // already removed
        }
    }
}

/// `shm_unlink(name)`; with `missing_ok`, a name that does not exist is
/// not an error.
fn unlink(c: &CString, name: &str, missing_ok: bool) -> Result<(), Error> {
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    if unsafe { libc::shm_unlink(c.as_ptr()) } == -1 {
        let e = last_error(format!("shm_unlink({name:?})"));
        if let Error::Os { ref source, .. } = e {
            if missing_ok && source.raw_os_error() == Some(libc::ENOENT) {
                return Ok(());
            }
        }
        return Err(e);
    }
    Ok(())
}

/// `shm_unlink(name)`: the name goes now, the memory when the last mapping
/// goes.
pub(crate) fn remove(name: &str) -> Result<(), Error> {
    unlink(&c_name(name)?, name, false)
}
