//! A regular file mapped `MAP_SHARED` through memmap2 (open(2), mmap(2)).
//!
//! The region is the file's contents: it survives every process (and a
//! reboot, unless the file is on a tmpfs). Creation is
//! `O_CREAT|O_EXCL|O_NOFOLLOW` with the mode set exactly (`fchmod`, so the
//! umask does not widen or narrow it); attaching is `O_NOFOLLOW` and then
//! refuses anything but a regular file. `O_NOFOLLOW` guards the last path
//! component only: directories above it must not be writable by others.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};

use super::named::{bad, checked_len, file_id, kind, this_pid, CreateOpts, FileId, NamedId};
use crate::error::Error;

/// A shared mapping of a file; unmapped on drop (by memmap2), and the file
/// removed first if the creating process asked for it.
pub(crate) struct Map {
    map: MmapRaw,
    path: PathBuf,
    /// The pid that must drop this `Map` for the drop to remove the file.
    remove_by: Option<u32>,
    /// The file this process made (device, inode): the drop removes the
    /// path only while it still names that file, never a replacement.
    made: FileId,
    /// The uid owning the file.
    owner: u32,
}

fn os_err(call: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Os { call, source }
}

impl Map {
    /// Creates the file (it must not exist, not even as a symbolic link),
    /// sets its mode and length, and maps it. On failure after creating,
    /// the file is removed again.
    pub(crate) fn create(path: &Path, opts: &CreateOpts) -> Result<Map, Error> {
        let id = NamedId::File(path.to_path_buf());
        if opts.replace {
            match remove(path) {
                Err(Error::Os { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(opts.mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    Error::AlreadyExists {
                        name: id.to_string(),
                    }
                } else {
                    Error::Os {
                        call: format!(
                            "open({:?}, O_CREAT|O_EXCL|O_NOFOLLOW|O_RDWR, {:#o})",
                            path.display().to_string(),
                            opts.mode
                        ),
                        source,
                    }
                }
            })?;
        let shown = path.display().to_string();
        let made = (|| {
            file.set_permissions(std::fs::Permissions::from_mode(opts.mode))
                .map_err(os_err(format!("fchmod({shown:?}, {:#o})", opts.mode)))?;
            file.set_len(opts.len as u64)
                .map_err(os_err(format!("ftruncate({shown:?}, {})", opts.len)))?;
            MmapOptions::new()
                .len(opts.len)
                .map_raw(&file)
                .map_err(os_err(format!("mmap({shown:?}, MAP_SHARED, {})", opts.len)))
        })();
        match made.and_then(|map| Ok((map, file_id(&id, &file)?))) {
            Ok((map, (made, owner))) => Ok(Map {
                map,
                path: path.to_path_buf(),
                remove_by: opts.remove_on_drop.then(this_pid),
                made,
                owner,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Opens with `O_NOFOLLOW|O_NONBLOCK` (a FIFO must not block the open),
    /// checks for a regular file of a non-zero whole number of pages, maps
    /// all of it.
    pub(crate) fn attach(path: &Path, read_only: bool) -> Result<Map, Error> {
        Map::attach_as(path, read_only, false)
    }

    /// As [`Map::attach`] read-only, but mapped private and writable
    /// (`MAP_PRIVATE`, copy-on-write): pages read the file until this
    /// process writes them, which gives it a private copy of just those.
    pub(crate) fn attach_copy(path: &Path) -> Result<Map, Error> {
        Map::attach_as(path, true, true)
    }

    fn attach_as(path: &Path, read_only: bool, copy: bool) -> Result<Map, Error> {
        let id = NamedId::File(path.to_path_buf());
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| match source.raw_os_error() {
                // Linux and most BSDs say ELOOP; FreeBSD says EMLINK.
                Some(libc::ELOOP) | Some(libc::EMLINK) => bad(
                    &id,
                    "is a symbolic link: refusing to follow it (O_NOFOLLOW)".into(),
                ),
                Some(libc::EISDIR) => bad(&id, "is not a regular file (a directory)".into()),
                _ => Error::Os {
                    call: format!(
                        "open({shown:?}, {}|O_NOFOLLOW)",
                        if read_only { "O_RDONLY" } else { "O_RDWR" }
                    ),
                    source,
                },
            })?;
        let len = checked_len(&id, &file)?;
        let (made, owner) = file_id(&id, &file)?;
        let mut opts = MmapOptions::new();
        opts.len(len);
        let map = if copy {
            // SAFETY: a private mapping: nothing this process writes reaches
            // the file; what others write may show in pages this process
            // has not written, which the caller knows.
            unsafe { opts.map_copy(&file) }.map(MmapRaw::from)
        } else if read_only {
            opts.map_raw_read_only(&file)
        } else {
            opts.map_raw(&file)
        }
        .map_err(os_err(format!(
            "mmap({shown:?}, {}, {len})",
            if copy { "MAP_PRIVATE" } else { "MAP_SHARED" }
        )))?;
        Ok(Map {
            map,
            path: path.to_path_buf(),
            remove_by: None,
            made,
            owner,
        })
    }

    /// The uid that owns the file.
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
        if self.remove_by != Some(this_pid()) {
            return;
        }
        // Only the file this process made: another creator may have
        // replaced it (`replace`) since. (A replacement between this check
        // and the unlink cannot be told apart: there is no unlink-if-same.)
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.made => {
                if let Err(e) = remove(&self.path) {
                    log::error!("{e}");
                }
            }
            Ok(_) => log::warn!(
                "file {:?} was replaced by another creator: not removing it",
                self.path.display().to_string()
            ),
            Err(_) => {} // already removed
        }
    }
}

/// Unlinks the file (a symbolic link at `path` is removed itself, never
/// followed); a directory or other non-file is refused.
pub(crate) fn remove(path: &Path) -> Result<(), Error> {
    let shown = path.display().to_string();
    let meta = std::fs::symlink_metadata(path).map_err(os_err(format!("lstat({shown:?})")))?;
    if !(meta.file_type().is_file() || meta.file_type().is_symlink()) {
        return Err(bad(
            &NamedId::File(path.to_path_buf()),
            format!("is not a regular file ({}): not removed", kind(&meta)),
        ));
    }
    std::fs::remove_file(path).map_err(os_err(format!("unlink({shown:?})")))
}
