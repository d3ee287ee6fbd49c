//! SysV shared memory with a key: `shmget(key, len, IPC_CREAT|IPC_EXCL|mode)`
//! + `shmat` (shmget(2), shmat(2), shmctl(2)).
//!
//! Unlike the private segment of `sysv.rs`, a keyed segment is not marked
//! `IPC_RMID` at once: it stays (listed by `ipcs -m`) until someone removes
//! it, so that processes which know the key can attach. `IPC_EXCL` makes
//! creating over a segment someone else planted an error.

use std::ptr::{self, NonNull};

use super::last_error;
use super::named::{bad, this_pid, CreateOpts, NamedId};
use crate::error::Error;

/// An attachment of a keyed segment; detached on drop, and marked for
/// removal first if the creating process asked for it.
pub(crate) struct Map {
    addr: NonNull<u8>,
    len: usize,
    shmid: libc::c_int,
    /// The pid that must drop this `Map` for the drop to remove the segment.
    remove_by: Option<u32>,
    /// The uid owning the segment (`shm_perm.uid`).
    owner: u32,
}

fn check_key(key: i32) -> Result<(), Error> {
    if key == libc::IPC_PRIVATE {
        return Err(bad(
            &NamedId::SysVKey(key),
            "key 0 is IPC_PRIVATE and names nothing; choose another (ftok(3) makes one from a path)"
                .into(),
        ));
    }
    Ok(())
}

/// `shmat(shmid)`, read-only or not.
fn shmat(shmid: libc::c_int, read_only: bool) -> Result<NonNull<u8>, Error> {
    let flags = if read_only { libc::SHM_RDONLY } else { 0 };
    // SAFETY: attaching at an address of the kernel's choosing aliases
    // nothing in this process.
    let p = unsafe { libc::shmat(shmid, ptr::null(), flags) };
    if p as isize == -1 {
        return Err(last_error(format!(
            "shmat({shmid}{})",
            if read_only { ", SHM_RDONLY" } else { "" }
        )));
    }
    Ok(NonNull::new(p.cast::<u8>()).expect("shmat returned NULL"))
}

/// `shmctl(shmid, IPC_RMID)`.
fn rmid(shmid: libc::c_int) -> Result<(), Error> {
    // SAFETY: IPC_RMID takes no buffer; a stale id is an EINVAL, not UB.
    if unsafe { libc::shmctl(shmid, libc::IPC_RMID, ptr::null_mut()) } == -1 {
        return Err(last_error(format!("shmctl({shmid}, IPC_RMID)")));
    }
    Ok(())
}

/// The id of the segment with `key`, if there is one.
fn lookup(key: i32) -> Result<libc::c_int, Error> {
    // SAFETY: shmget has no memory-safety preconditions.
    let id = unsafe { libc::shmget(key, 0, 0) };
    if id == -1 {
        return Err(last_error(format!("shmget({key:#010x}, 0, 0)")));
    }
    Ok(id)
}

fn is_errno(e: &Error, errno: i32) -> bool {
    matches!(e, Error::Os { source, .. } if source.raw_os_error() == Some(errno))
}

impl Map {
    /// `shmget(key, len, IPC_CREAT|IPC_EXCL|mode)` + `shmat`; on a failed
    /// attach the new segment is removed again.
    pub(crate) fn create(key: i32, opts: &CreateOpts) -> Result<Map, Error> {
        check_key(key)?;
        if opts.replace {
            match remove(key) {
                Err(e) if !is_errno(&e, libc::ENOENT) => return Err(e),
                _ => {}
            }
        }
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | opts.mode as libc::c_int;
        // SAFETY: shmget has no memory-safety preconditions.
        let shmid = unsafe { libc::shmget(key, opts.len, flags) };
        if shmid == -1 {
            let e = last_error(format!(
                "shmget({key:#010x}, {}, IPC_CREAT|IPC_EXCL|{:#o})",
                opts.len, opts.mode
            ));
            if is_errno(&e, libc::EEXIST) {
                return Err(Error::AlreadyExists {
                    name: NamedId::SysVKey(key).to_string(),
                });
            }
            return Err(e);
        }
        let addr = match shmat(shmid, false) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = rmid(shmid);
                return Err(e);
            }
        };
        Ok(Map {
            addr,
            len: opts.len,
            shmid,
            remove_by: opts.remove_on_drop.then(this_pid),
            owner: crate::os::process::euid(),
        })
    }

    /// `shmget(key, 0, 0)`, `shmctl(IPC_STAT)` for the size (a non-zero
    /// whole number of pages), `shmat` (with `SHM_RDONLY` if asked).
    pub(crate) fn attach(key: i32, read_only: bool) -> Result<Map, Error> {
        check_key(key)?;
        let shmid = lookup(key)?;
        // SAFETY: shmid_ds is plain old data; all zeroes is a valid value.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid, writable shmid_ds for IPC_STAT to fill.
        if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } == -1 {
            return Err(last_error(format!("shmctl({shmid}, IPC_STAT)")));
        }
        let id = NamedId::SysVKey(key);
        let len = ds.shm_segsz as usize;
        let page = super::page_size();
        if len == 0 || len % page != 0 {
            return Err(bad(
                &id,
                format!("its size {len} is not a whole number of {page}-byte pages: not a region"),
            ));
        }
        let addr = shmat(shmid, read_only)?;
        Ok(Map {
            addr,
            len,
            shmid,
            remove_by: None,
            owner: ds.shm_perm.uid,
        })
    }

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        self.addr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The uid that owns the segment.
    pub(crate) fn owner(&self) -> u32 {
        self.owner
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.remove_by == Some(this_pid()) {
            if let Err(e) = rmid(self.shmid) {
                log::error!("{e}");
            }
        }
        // SAFETY: `addr` is this process's attachment of the segment,
        // detached only here.
        if unsafe { libc::shmdt(self.addr.as_ptr().cast()) } == -1 {
            log::error!(
                "shmdt({:p}) failed: {}",
                self.addr,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// `shmctl(shmget(key), IPC_RMID)`: the key is free at once; the memory
/// goes when the last process detaches.
pub(crate) fn remove(key: i32) -> Result<(), Error> {
    check_key(key)?;
    rmid(lookup(key)?)
}
