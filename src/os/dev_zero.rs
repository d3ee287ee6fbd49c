//! A shared mapping of `/dev/zero`: nginx's second choice (zero(4)).
//!
//! The file descriptor is closed right after mapping; the mapping keeps the
//! memory alive and `fork` shares it.

use std::fs::OpenOptions;
use std::ptr::NonNull;

use memmap2::{MmapMut, MmapOptions};

use crate::error::Error;

/// A `MAP_SHARED` mapping of `/dev/zero`; unmapped on drop (by memmap2).
pub(crate) struct Map {
    map: MmapMut,
}

impl Map {
    pub(crate) fn create(len: usize) -> Result<Map, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .map_err(|source| Error::Os {
                call: "open(\"/dev/zero\")".to_string(),
                source,
            })?;
        // SAFETY: /dev/zero has no contents another process could change
        // under us; memmap2's `map_mut` on a file is MAP_SHARED.
        let map =
            unsafe { MmapOptions::new().len(len).map_mut(&file) }.map_err(|source| Error::Os {
                call: format!("mmap(/dev/zero, MAP_SHARED, {len})"),
                source,
            })?;
        drop(file);
        Ok(Map { map })
    }

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        NonNull::new(self.map.as_ptr().cast_mut()).expect("a mapping is never at NULL")
    }
}
