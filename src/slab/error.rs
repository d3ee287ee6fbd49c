//! What can go wrong with a pool: making or attaching it, and bad frees.

use std::fmt;

/// Why a `free` was refused. The pool is left exactly as it was.
///
/// The messages follow nginx's `ngx_slab_free()` alerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FreeError {
    /// The pointer is not inside the pool's pages (including exactly at the
    /// pool's end, which nginx lets through).
    OutsidePool,
    /// The pointer is not at the start of a chunk (or of a page, for a page
    /// allocation).
    WrongChunk,
    /// The chunk is already free.
    ChunkAlreadyFree,
    /// The page is already free.
    PageAlreadyFree,
    /// The pointer is to an inner page of a multi-page allocation.
    WrongPage,
    /// The pointer is to the chunks of a small-class page that hold the
    /// page's own bitmap (nginx accepts this silently and corrupts the page).
    BitmapArea,
    /// The pool is fenced: inconsistent after a dead worker's recovery,
    /// so nothing is freed until it is re-initialised
    /// ([`Pool::reinit`](super::Pool::reinit)).
    Fenced,
    /// Called inside a locked section whose undo journal has no room left
    /// for a free: unlock (commit) first.
    JournalFull,
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FreeError::OutsidePool => "outside of pool",
            FreeError::WrongChunk => "pointer to wrong chunk",
            FreeError::ChunkAlreadyFree => "chunk is already free",
            FreeError::PageAlreadyFree => "page is already free",
            FreeError::WrongPage => "pointer to wrong page",
            FreeError::BitmapArea => "pointer to the page's own bitmap",
            FreeError::Fenced => "the zone is fenced (inconsistent after a recovery)",
            FreeError::JournalFull => "the section's undo journal is full",
        })
    }
}

impl std::error::Error for FreeError {}

/// Why a pool could not be made or attached.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// Fewer bytes than [`Pool::MIN_SIZE`](super::Pool::MIN_SIZE).
    TooSmall {
        /// The length given.
        len: usize,
        /// The smallest length accepted.
        min: usize,
    },
    /// More pages than one pool can index (2^28 - 2).
    TooLarge {
        /// The length given.
        len: usize,
    },
    /// The base address is not [`SLAB_PAGE`](super::SLAB_PAGE)-aligned.
    Misaligned {
        /// The address given.
        addr: usize,
    },
    /// `attach` found no valid pool header; the text says what is wrong.
    BadHeader(String),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::TooSmall { len, min } => {
                write!(f, "slab pool of {len} bytes is too small (minimum {min})")
            }
            PoolError::TooLarge { len } => write!(f, "slab pool of {len} bytes is too large"),
            PoolError::Misaligned { addr } => write!(
                f,
                "slab pool base {addr:#x} is not aligned to {} bytes",
                super::SLAB_PAGE
            ),
            PoolError::BadHeader(why) => write!(f, "not a valid slab pool: {why}"),
        }
    }
}

impl std::error::Error for PoolError {}
