//! Everything that calls the kernel (DESIGN.md invariant 5).
//!
//! One file per backend, each with the same shape: a `Map` type with
//! `create(len)`, `as_ptr()`, `len()` and an unmapping `Drop`. This file is
//! the one place that chooses between them, on the cfgs that `build.rs`
//! emits after probing the host.

use std::fmt;
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Error;

#[cfg(shmzone_dev_zero)]
mod dev_zero;
#[cfg(shmzone_map_anon)]
mod map_anon;
#[cfg(shmzone_sysv)]
mod sysv;

pub(crate) mod child;
pub(crate) mod clock;
#[cfg(unix)]
mod file;
mod named;
#[cfg(unix)]
mod posix;
#[cfg(unix)]
mod sysv_key;
#[cfg(windows)]
mod windows;

pub use named::NamedId;
pub(crate) use named::{remove as remove_named, CreateOpts, NamedMap};

pub(crate) mod futex;
pub(crate) mod membarrier;
pub(crate) mod process;
pub(crate) mod signal;

/// A way of making memory that a process shares with the children it forks.
///
/// The three methods nginx knows, in its order of preference. Which of them
/// this build supports was decided by `build.rs` (it tries each one on the
/// build host, as nginx's `configure` does); [`Backend::default()`] is the
/// first that worked, or the one named by `SHMZONE_BACKEND` at build time.
///
/// ```
/// use shmzone::Backend;
/// let all = Backend::available();
/// assert!(all.contains(&Backend::default()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `mmap(NULL, len, RW, MAP_ANON|MAP_SHARED, -1, 0)` — see mmap(2).
    MapAnon,
    /// `open("/dev/zero", O_RDWR)` + `mmap(MAP_SHARED)`, fd closed at once — see zero(4).
    DevZero,
    /// `shmget(IPC_PRIVATE)` + `shmat` + `shmctl(IPC_RMID)` at once, so the
    /// segment dies with its last user — see shmget(2).
    SysV,
}

/// Every backend, in nginx's order of preference.
const ALL: [Backend; 3] = [Backend::MapAnon, Backend::DevZero, Backend::SysV];

/// The backends this build supports, in order of preference.
const AVAILABLE: &[Backend] = &[
    #[cfg(shmzone_map_anon)]
    Backend::MapAnon,
    #[cfg(shmzone_dev_zero)]
    Backend::DevZero,
    #[cfg(shmzone_sysv)]
    Backend::SysV,
];

cfg_if::cfg_if! {
    if #[cfg(shmzone_default = "map_anon")] {
        const DEFAULT: Option<Backend> = Some(Backend::MapAnon);
    } else if #[cfg(shmzone_default = "dev_zero")] {
        const DEFAULT: Option<Backend> = Some(Backend::DevZero);
    } else if #[cfg(shmzone_default = "sysv")] {
        const DEFAULT: Option<Backend> = Some(Backend::SysV);
    } else {
        const DEFAULT: Option<Backend> = None;
    }
}

impl Backend {
    /// The backends this build supports, in nginx's order of preference.
    ///
    /// Empty on a target with none of them (then every region creation
    /// fails with [`Error::Unsupported`]).
    pub fn available() -> &'static [Backend] {
        AVAILABLE
    }

    /// Whether this build supports `self`.
    pub fn is_available(self) -> bool {
        AVAILABLE.contains(&self)
    }

    /// The name used by `SHMZONE_BACKEND` and in messages: `map_anon`,
    /// `dev_zero` or `sysv`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::MapAnon => "map_anon",
            Backend::DevZero => "dev_zero",
            Backend::SysV => "sysv",
        }
    }
}

impl Default for Backend {
    /// The probed (or `SHMZONE_BACKEND`-forced) default. On a target where
    /// nothing is supported this is `MapAnon`, and using it fails with
    /// [`Error::Unsupported`].
    fn default() -> Self {
        DEFAULT.unwrap_or(Backend::MapAnon)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of [`Backend::from_str`]: the text named no backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseBackendError(String);

impl fmt::Display for ParseBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown backend {:?}; valid: map_anon, dev_zero, sysv",
            self.0
        )
    }
}

impl std::error::Error for ParseBackendError {}

impl FromStr for Backend {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| ParseBackendError(s.to_string()))
    }
}

/// One live mapping of some backend; unmapped when dropped.
///
/// Held only for its `Drop`: the base address is returned by `create`.
#[allow(dead_code)]
pub(crate) enum Mapping {
    #[cfg(shmzone_map_anon)]
    MapAnon(map_anon::Map),
    #[cfg(shmzone_dev_zero)]
    DevZero(dev_zero::Map),
    #[cfg(shmzone_sysv)]
    SysV(sysv::Map),
    /// A POSIX shm object, keyed SysV segment or file (`named.rs`).
    Named(NamedMap),
}

impl Mapping {
    /// Maps `len` bytes (already a whole number of pages, not zero) with
    /// `backend`. Returns the mapping and its base address.
    pub(crate) fn create(backend: Backend, len: usize) -> Result<(Mapping, NonNull<u8>), Error> {
        debug_assert!(len > 0 && len % page_size() == 0);
        match backend {
            #[cfg(shmzone_map_anon)]
            Backend::MapAnon => map_anon::Map::create(len).map(|m| {
                let p = m.as_ptr();
                (Mapping::MapAnon(m), p)
            }),
            #[cfg(shmzone_dev_zero)]
            Backend::DevZero => dev_zero::Map::create(len).map(|m| {
                let p = m.as_ptr();
                (Mapping::DevZero(m), p)
            }),
            #[cfg(shmzone_sysv)]
            Backend::SysV => sysv::Map::create(len).map(|m| {
                let p = m.as_ptr();
                (Mapping::SysV(m), p)
            }),
            #[allow(unreachable_patterns)]
            other => Err(Error::Unsupported { backend: other }),
        }
    }
}

/// The OS page size (`sysconf(_SC_PAGESIZE)`), read once.
pub(crate) fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let n = if n > 0 { n as usize } else { 4096 };
    PAGE.store(n, Ordering::Relaxed);
    n
}

/// `Error::Os` for the call described by `call`, from `errno`.
pub(crate) fn last_error(call: String) -> Error {
    Error::Os {
        call,
        source: std::io::Error::last_os_error(),
    }
}

/// Asks the kernel to map every page of `len` bytes from `p` into this
/// process now (`MADV_POPULATE_WRITE` for memory it will write,
/// `MADV_POPULATE_READ` for memory it will only read; Linux 5.14 and
/// later), so that the first pass over it takes no page faults: for a log
/// ring, a producer's first lap and a reader's first read of each page
/// (about a microsecond each on a VM: a 32 MiB slot has 8,192 pages).
/// The bytes are not changed. Best effort: where the kernel or the
/// platform has no such call, or refuses it, nothing happens (the pages
/// are then mapped on first touch, as before).
pub(crate) fn populate(p: *const u8, len: usize, write: bool) {
    #[cfg(target_os = "linux")]
    {
        let page = page_size();
        let start = p as usize & !(page - 1);
        let end = (p as usize).saturating_add(len);
        let advice = if write {
            libc::MADV_POPULATE_WRITE
        } else {
            libc::MADV_POPULATE_READ
        };
        // SAFETY: madvise with a populate advice only maps pages of the
        // caller's mapping (the range starts at the page holding `p`, which
        // lies in it, as do the `len` bytes after it); it reads and writes
        // no byte of them.
        let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
        if r != 0 {
            log::debug!(
                "madvise(populate) of {len} bytes: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len, write);
}
