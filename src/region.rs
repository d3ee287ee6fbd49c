//! `Region`: one block of shared memory, made before `fork`.

use std::fmt;
use std::ptr::NonNull;

use crate::error::Error;
use crate::os::{self, Backend, Mapping, NamedId, NamedMap};

/// One shared mapping, made by the master before it forks.
///
/// Every process that `fork`s from the creator sees the same bytes at the
/// same address. The length is rounded up to whole OS pages. The mapping is
/// zero-filled, reserves address space rather than memory (pages become
/// resident as they are touched), and is unmapped when the `Region` is
/// dropped (in each process, for that process).
///
/// ```
/// use shmzone::Region;
/// let region = Region::new(10_000)?;
/// assert!(region.len() >= 10_000);
/// assert_eq!(region.len() % 4096, 0);
/// # Ok::<(), shmzone::Error>(())
/// ```
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    backend: Backend,
    _map: Mapping,
}

// SAFETY: a Region is just an address range; the bytes are meant to be used
// from many processes and threads at once, through atomics or a lock.
unsafe impl Send for Region {}
// SAFETY: as above: `&Region` only hands out the base address and length.
unsafe impl Sync for Region {}

impl Region {
    /// Maps at least `len` bytes with the default backend.
    ///
    /// # Errors
    /// [`Error::ZeroLength`], [`Error::LengthOverflow`], or [`Error::Os`]
    /// when the kernel refuses (e.g. a SysV size above `kernel.shmmax`).
    pub fn new(len: usize) -> Result<Region, Error> {
        Region::with_backend(len, Backend::default())
    }

    /// Maps at least `len` bytes with `backend`.
    ///
    /// ```
    /// use shmzone::{Backend, Region};
    /// for &b in Backend::available() {
    ///     let r = Region::with_backend(1, b)?;
    ///     assert_eq!(r.backend(), b);
    /// }
    /// # Ok::<(), shmzone::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Region::new`], plus [`Error::Unsupported`] when this build cannot
    /// use `backend`.
    pub fn with_backend(len: usize, backend: Backend) -> Result<Region, Error> {
        let len = round_to_pages(len)?;
        let (map, base) = Mapping::create(backend, len)?;
        Ok(Region {
            base,
            len,
            backend,
            _map: map,
        })
    }

    /// A region over a named mapping (see `src/named.rs`): its whole
    /// length, a whole number of pages.
    pub(crate) fn from_named(map: NamedMap) -> Region {
        Region {
            base: map.as_ptr(),
            len: map.len(),
            backend: map.backend(),
            _map: Mapping::Named(map),
        }
    }

    /// The name, key or path of a named region (made by
    /// [`Region::create_named`] or [`Region::attach_named`]); `None` for a
    /// region shared only with forked children.
    pub fn named(&self) -> Option<&NamedId> {
        match &self._map {
            Mapping::Named(m) => Some(m.id()),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Whether the mapping is read-only (a named region attached with
    /// `read_only`): writing through [`as_ptr`](Self::as_ptr) would fault.
    pub fn is_read_only(&self) -> bool {
        match &self._map {
            Mapping::Named(m) => m.read_only(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The first byte of the mapping, in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The first byte of the mapping, as `NonNull`.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The length in bytes: a whole number of pages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The backend that made this mapping. A named region reports the
    /// fork-shared backend with the same kind of mapping: `SysV` for a keyed
    /// segment, `DevZero` (a `MAP_SHARED` mapping of a descriptor) for POSIX
    /// shm and files; [`named`](Self::named) says which it is.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("backend", &self.backend)
            .finish()
    }
}

/// The OS page size in bytes.
pub fn page_size() -> usize {
    os::page_size()
}

/// `len` rounded up to whole pages; zero and overflow are errors.
pub(crate) fn round_to_pages(len: usize) -> Result<usize, Error> {
    if len == 0 {
        return Err(Error::ZeroLength);
    }
    let page = os::page_size();
    len.checked_add(page - 1)
        .map(|n| n & !(page - 1))
        .ok_or(Error::LengthOverflow { len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        let p = page_size();
        assert_eq!(round_to_pages(1).unwrap(), p);
        assert_eq!(round_to_pages(p).unwrap(), p);
        assert_eq!(round_to_pages(p + 1).unwrap(), 2 * p);
        assert!(matches!(round_to_pages(0), Err(Error::ZeroLength)));
        assert!(matches!(
            round_to_pages(usize::MAX),
            Err(Error::LengthOverflow { .. })
        ));
    }
}
