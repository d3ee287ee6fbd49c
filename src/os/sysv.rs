//! SysV shared memory with `IPC_PRIVATE`: nginx's third choice (shmget(2)).
//!
//! The segment is marked `IPC_RMID` right after attaching, as nginx does:
//! it lives while some process has it attached and dies with the last one,
//! so nothing outlives the server.

use std::ptr::{self, NonNull};

use super::last_error;
use crate::error::Error;

/// An attached private segment; detached on drop.
pub(crate) struct Map {
    addr: NonNull<u8>,
}

impl Map {
    pub(crate) fn create(len: usize) -> Result<Map, Error> {
        // SAFETY: shmget has no memory-safety preconditions.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600) };
        if id == -1 {
            return Err(last_error(format!("shmget(IPC_PRIVATE, {len})")));
        }
        // SAFETY: attaching a segment we just made at an address of the
        // kernel's choosing aliases nothing.
        let p = unsafe { libc::shmat(id, ptr::null(), 0) };
        let attach_err = (p as isize == -1).then(|| last_error(format!("shmat({id})")));
        // SAFETY: marks our own segment for removal once detached; valid id.
        if unsafe { libc::shmctl(id, libc::IPC_RMID, ptr::null_mut()) } == -1 {
            let err = last_error(format!("shmctl({id}, IPC_RMID)"));
            if attach_err.is_none() {
                // SAFETY: `p` is the attachment made above.
                unsafe { libc::shmdt(p) };
            }
            return Err(err);
        }
        if let Some(err) = attach_err {
            return Err(err);
        }
        let addr = NonNull::new(p.cast::<u8>()).expect("shmat returned NULL");
        Ok(Map { addr })
    }

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        self.addr
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: `addr` is this process's attachment of the segment.
        if unsafe { libc::shmdt(self.addr.as_ptr().cast()) } == -1 {
            log::error!(
                "shmdt({:p}) failed: {}",
                self.addr,
                std::io::Error::last_os_error()
            );
        }
    }
}
