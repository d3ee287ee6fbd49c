//! nginx's shared-memory zones for any pre-fork server.
//!
//! A master process makes one block of shared memory before it forks,
//! carves named zones out of it ([`Zones`]), and its worker processes
//! allocate from each zone through a slab allocator ([`slab::Pool`]) guarded
//! by a process-shared spinlock ([`ShmMutex`]) whose word holds the holder's
//! pid, so that the master can release the locks of a worker that died.
//!
//! ```
//! use shmzone::Zones;
//! let zones = Zones::builder().zone("sessions", 1 << 20).build()?;
//! // ... fork workers here; each one does:
//! let zone = zones.get("sessions").expect("declared");
//! let p = zone.alloc(100).expect("room");
//! // SAFETY: `p` came from this zone and is not used after.
//! unsafe { zone.free(p.as_ptr()) }.expect("a valid free");
//! # Ok::<(), shmzone::Error>(())
//! ```
//!
//! # Implementation
//!
//! The layers, each using only those below it:
//!
//! | layer | module | knows about |
//! |---|---|---|
//! | probe | `build.rs` | which of `MAP_ANON\|MAP_SHARED`, `/dev/zero`, SysV works on the host |
//! | os | `os` (private) | every system call: mappings, futex, pids, signals |
//! | lock | [`shmtx`] | one word in shared memory holding the holder's pid |
//! | journal | [`journal`] | crash-atomic sections: what a holder wrote, how to undo it |
//! | slab | [`slab`] | 4 KiB pages, 62 size classes 8..7168 B (multi-page slabs for some), bitmaps, page runs |
//! | zone | [`zone`] | the region header, the zone directory, init and reload |
//! | structures | [`ring`] | a log ring: one single-producer ring per worker slot, any number of readers |
//! | prefork | [`prefork`] | fork, waitid, signals, respawn |
//! | metrics | [`metrics`] | zone figures in the Prometheus text format |
//!
//! A region starts with a header (magic, layout version, lengths) and a
//! directory of up to [`zone::MAX_ZONES`] zones; the rest is itself a slab
//! pool whose page runs are the zones, each a pool of its own with its own
//! lock. Nothing in shared memory is an absolute pointer: links are offsets
//! and `u32` page indices, so a region mapped at another address (a named
//! backend, another process) works the same.
//!
//! The slab follows nginx's `ngx_slab.c`, with finer classes: requests up
//! to 7 KiB round up to one of 62 size classes (8-byte steps up to 128 B,
//! then eight per power of two: at most 11 % lost to rounding) and share
//! slabs of that class (one page, or a few for sizes that do not divide a
//! page well), tracked by
//! bitmaps; larger ones take runs of whole pages, and free runs coalesce
//! with both neighbours. Frees are validated: a pointer outside the pool,
//! into the middle of a chunk, or to a chunk or page already free is an
//! error that changes nothing. The lock spins, then sleeps on a futex;
//! a lock taken over from a dead holder says so to its next holder.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_safety_doc)]

pub mod dict;
mod error;
pub mod journal;
#[doc(hidden)]
pub mod killpoint;
pub mod metrics;
pub mod named;
mod os;
pub mod prefork;
mod region;
pub mod ring;
pub mod shmtx;
pub mod slab;
pub mod zone;

pub use error::Error;
pub use named::{NamedId, NamedSpec};
pub use os::{Backend, ParseBackendError};
pub use region::{page_size, Region};
pub use shmtx::{LockTimeout, ShmGuard, ShmMutex};
pub use slab::{
    CacheStats, CheckError, ClassStats, FreeError, Pool, PoolError, PoolGuard, PoolStats, SLAB_PAGE,
};
pub use zone::{ReloadReport, Zone, ZoneInit, Zones, ZonesBuilder};

/// Helpers of the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// xorshift64 (the benchmarks' generator) from `seed`, advanced before
    /// each value.
    pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }
}
