//! nginx's shared-memory zones for any pre-fork server.
//!
//! A master process makes one block of shared memory ([`Region`]) before it
//! forks, carves named zones out of it, and its worker processes allocate
//! from each zone through a slab allocator guarded by a process-shared
//! spinlock ([`ShmMutex`]) whose word holds the holder's pid, so that the
//! master can release the locks of a worker that died.
//!
//! ```
//! use shmzone::Region;
//! let region = Region::new(1 << 20)?;
//! assert_eq!(region.backend(), shmzone::Backend::default());
//! # Ok::<(), shmzone::Error>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_safety_doc)]

mod error;
mod os;
pub mod prefork;
mod region;
pub mod shmtx;
pub mod slab;
pub mod zone;

pub use error::Error;
pub use os::{Backend, ParseBackendError};
pub use region::{page_size, Region};
pub use shmtx::{ShmGuard, ShmMutex};
pub use slab::{
    CheckError, ClassStats, FreeError, Pool, PoolError, PoolGuard, PoolStats, SLAB_PAGE,
};
