//! `mmap(MAP_ANON|MAP_SHARED)`: nginx's first choice (mmap(2)).
//!
//! Not `memmap2::MmapMut::map_anon`: that maps `MAP_PRIVATE`, which is
//! copy-on-write after `fork` and so not shared at all.

use std::ptr::{self, NonNull};

use super::last_error;
use crate::error::Error;

/// A shared anonymous mapping; unmapped on drop.
pub(crate) struct Map {
    addr: NonNull<u8>,
    len: usize,
}

impl Map {
    pub(crate) fn create(len: usize) -> Result<Map, Error> {
        // SAFETY: a new mapping at an address of the kernel's choosing; it
        // aliases nothing in this process.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANON | libc::MAP_SHARED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_error(format!("mmap(MAP_ANON|MAP_SHARED, {len})")));
        }
        let addr = NonNull::new(p.cast::<u8>()).expect("mmap returned NULL without MAP_FIXED");
        Ok(Map { addr, len })
    }

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        self.addr
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is exactly the mapping made in `create`,
        // unmapped only here.
        if unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) } == -1 {
            log::error!(
                "munmap({:p}, {}) failed: {}",
                self.addr,
                self.len,
                std::io::Error::last_os_error()
            );
        }
    }
}
