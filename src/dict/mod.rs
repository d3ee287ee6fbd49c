//! A shared dictionary in a zone: OpenResty's `lua_shared_dict` for Rust
//! workers, crash-atomic, with reads that never take the lock.
//!
//! The master makes it in a zone ([`Dict::init`], or
//! [`ZonesBuilder::dict`](crate::ZonesBuilder::dict)); every worker finds
//! it by the zone's name ([`Dict::open`]). Keys are byte strings of 1 to
//! [`MAX_KEY`] bytes; values are bytes, `i64`, `f64` or `bool`
//! ([`Value`]), each with user flags (`u32`), or lists of such values.
//!
//! ```
//! use shmzone::{dict::{Dict, OwnedValue}, Zones};
//! let zones = Zones::builder().dict("cache", 1 << 20).build()?;
//! // ... fork; in each worker:
//! let zone = zones.get("cache").unwrap();
//! let d = Dict::open(&zone)?;
//! d.set(b"user:1", "alice", 0, 7)?;
//! let got = d.get(b"user:1")?.unwrap();
//! assert_eq!((got.value, got.flags), (OwnedValue::Bytes(b"alice".to_vec()), 7));
//! assert_eq!(d.incr(b"hits", 1, Some(0), 0)?, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Semantics (shdict's, and where they differ)
//!
//! - `set` stores, `add` only if the key has no live value, `replace` only
//!   if it has; `safe_set` and `safe_add` never evict. `delete` removes.
//! - TTLs are milliseconds, 0 meaning none. An expired entry is invisible
//!   to everything but [`Dict::get_stale`] until its memory is reused.
//! - When memory runs out, `set` (and `add`, `incr` creating a key,
//!   `lpush`/`rpush`) evicts: up to 30 entries, expired ones first, then
//!   the least recently used by an approximate LRU (a CLOCK: reads and
//!   updates set a bucket's reference bit with a relaxed store, the
//!   eviction hand clears it and takes buckets whose bit is clear; a new
//!   entry starts unmarked, so entries never used after being stored go
//!   first), preferring an entry whose block has the size class the new
//!   one needs (else the candidate's whole page is emptied). [`Stored::forcible`] says
//!   whether live entries were evicted.
//! - Deleting a list frees its entry at once and its nodes later: every
//!   store frees a few, and a store (`set` family, `lpush`/`rpush`) that
//!   finds no memory while such nodes remain first gives them all back,
//!   a journal's worth per lock hold, then tries once more. Making room
//!   never takes the journal bytes the rest of the store needs: a store
//!   that cannot make room says `NoMemory`, not `TooBigForOneSection`.
//! - **A call that fails changes nothing.** shdict's `safe_set` deletes the
//!   old value when the new one does not fit; here the old value stays
//!   (the section is rolled back to its savepoint), and so do the entries
//!   `set` had evicted while looking for room.
//! - [`Dict::update`] reads a key's live value, lets a closure decide
//!   (keep, set, put with TTL and flags, delete) and applies it, all in one
//!   hold of the lock: read-modify-write without a `cas` retry loop.
//! - `flush_all` makes every entry expired in one store (a generation
//!   bump); `flush_expired` frees expired entries, a batch per lock hold.
//!
//! # The clock
//!
//! TTLs run on `CLOCK_BOOTTIME` (Linux; `CLOCK_MONOTONIC` elsewhere), which
//! every process on the host shares and which never jumps with the wall
//! clock. A file-backed region outlives a boot, and that clock restarts at
//! zero: the header keeps the boot's start (wall-clock ms), and
//! [`Dict::open`] in a later boot expires every entry that has a TTL
//! (entries without one are kept) before using the dictionary.
//!
//! # Crash atomicity
//!
//! Every write is made inside the zone lock's crash-atomic section (the
//! undo journal, see [`PoolGuard`](crate::PoolGuard)): a worker killed in
//! any operation leaves the dictionary exactly as before that operation.
//!
//! # Reads without the lock
//!
//! [`Dict::get`], [`get_stale`](Dict::get_stale) and [`ttl`](Dict::ttl)
//! read optimistically: a seqlock over up to 1,024 striped version words. A writer makes its key's stripe odd before changing anything and
//! leaves it odd until its section is committed; the next lock holder
//! makes it even (publishes it), so a reader never returns data that a
//! rollback later undoes. A reader samples the pool's rollback counter and
//! the stripe, reads (every offset checked against the zone, every chain
//! walk bounded), and accepts only if both are unchanged; after a few
//! failed tries, or on anything malformed, it takes the lock instead.

mod api;
mod check;
mod error;
mod evict;
#[doc(hidden)]
pub mod fuzzing;
mod layout;
mod list;
mod ops;
mod read;
mod section;
mod update;
mod value;

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub use check::{DumpEntry, KeysPage};
pub use error::{DictError, ZoneProblem};
pub use layout::MAX_KEY;
pub use update::{Current, Update};
pub use value::{OwnedValue, Value};

use layout::{Header, BYTES_PER_BUCKET, MAGIC, MAX_STRIPES, STAT_SLOTS, VERSION};

use crate::os::clock;
use crate::slab::Pool;
use crate::zone::Zone;

/// What a successful store says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// Live entries were evicted to make room (shdict's `forcible`).
    pub forcible: bool,
}

/// A value read back, with its flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Got {
    /// The value.
    pub value: OwnedValue,
    /// The user flags stored with it.
    pub flags: u32,
    /// The value has expired (only [`Dict::get_stale`] returns these).
    pub stale: bool,
}

/// The counters of one dictionary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DictStats {
    /// Entries stored (expired ones not yet reclaimed included).
    pub entries: u64,
    /// Bytes of keys and values stored.
    pub bytes: u64,
    /// The zone's size.
    pub capacity: usize,
    /// Bytes of whole free pages in the zone (shdict's `free_space`).
    pub free_space: usize,
    /// `get`/`get_stale` calls (approximate: see the layout notes).
    pub gets: u64,
    /// Gets that found a live value.
    pub hits: u64,
    /// Gets that did not.
    pub misses: u64,
    /// Stores (set, add, replace, incr, cas, push).
    pub sets: u64,
    /// Live entries evicted to make room.
    pub evictions: u64,
    /// Expired entries reclaimed.
    pub expirations: u64,
    /// List nodes of deleted lists still waiting to be freed.
    pub garbage: u64,
    /// Rollbacks of dead holders' sections the zone has seen.
    pub rollbacks: u64,
}

/// One dictionary, as seen by this process.
///
/// A handle: cheap to make with [`Dict::open`], valid while the zones it
/// was opened from are. Not `Send`: each process (and thread) opens its
/// own.
pub struct Dict<'z> {
    pool: Pool,
    name: String,
    base: *mut u8,
    hdr: *mut Header,
    buckets: *const layout::Bucket,
    stripes: *const AtomicU64,
    mask: u32,
    smask: u32,
    seed: u64,
    len: usize,
    _z: PhantomData<&'z ()>,
}

impl std::fmt::Debug for Dict<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dict")
            .field("zone", &self.name)
            .field("buckets", &(self.mask as u64 + 1))
            .field("len", &self.len())
            .finish()
    }
}

impl<'z> Dict<'z> {
    /// Makes a new, empty dictionary in `zone` and returns it. For the
    /// master (or a zone init callback) on a fresh zone.
    ///
    /// # Errors
    /// [`DictError::BadZone`] if the zone already has a root, is too small
    /// or larger than 32 GiB.
    pub fn init(zone: &Zone<'z>) -> Result<Dict<'z>, DictError> {
        // SAFETY: the zone's pool is valid while `'z` is.
        unsafe { Self::init_pool(*zone.pool()) }
    }

    /// [`Dict::init`] with a fixed hash seed instead of a random one: the
    /// table's layout (and so which entries eviction picks) is then the
    /// same on every run. For tests; a fixed seed lets whoever knows it
    /// make keys that collide.
    ///
    /// # Errors
    /// As [`Dict::init`].
    #[doc(hidden)]
    pub fn init_seeded(zone: &Zone<'z>, seed: u64) -> Result<Dict<'z>, DictError> {
        // SAFETY: the zone's pool is valid while `'z` is.
        unsafe { Self::init_with(*zone.pool(), Some(seed)) }
    }

    /// Finds the dictionary that [`Dict::init`] made in `zone`.
    ///
    /// # Errors
    /// [`DictError::NotADict`] naming the zone if it holds none.
    pub fn open(zone: &Zone<'z>) -> Result<Dict<'z>, DictError> {
        // SAFETY: as in `init`.
        unsafe { Self::open_pool(*zone.pool()) }
    }

    /// [`Dict::init`] on a bare pool.
    ///
    /// # Safety
    /// `pool` stays mapped for `'z`.
    ///
    /// # Errors
    /// As [`Dict::init`].
    pub unsafe fn init_pool(pool: Pool) -> Result<Dict<'z>, DictError> {
        // SAFETY: the caller's promise.
        unsafe { Self::init_with(pool, None) }
    }

    /// # Safety
    /// As [`Dict::init_pool`].
    unsafe fn init_with(pool: Pool, seed: Option<u64>) -> Result<Dict<'z>, DictError> {
        let bad = |reason: String| DictError::bad_zone(pool.name(), reason);
        if pool.root() != 0 {
            return Err(bad("it already has a root structure".into()));
        }
        let len = pool.len();
        if len > (u32::MAX as usize) * 8 {
            return Err(bad(format!("{len} bytes: at most 32 GiB")));
        }
        let nb = (len / BYTES_PER_BUCKET)
            .next_power_of_two()
            .clamp(64, 1 << 30);
        let nb = if nb > len / BYTES_PER_BUCKET && nb > 64 {
            nb / 2
        } else {
            nb
        };
        let ns = nb.min(MAX_STRIPES);
        let hsz = std::mem::size_of::<Header>();
        let bsz = nb * std::mem::size_of::<layout::Bucket>();
        let ssz = ns * 8;
        let no_room = || bad(format!("no room for the table ({nb} buckets)"));
        let h = pool.calloc(hsz).ok_or_else(no_room)?;
        let b = match pool.calloc(bsz) {
            Some(b) => b,
            None => {
                // SAFETY: `h` came from this pool just above.
                let _ = unsafe { pool.free(h.as_ptr()) };
                return Err(no_room());
            }
        };
        let s = match pool.calloc(ssz) {
            Some(s) => s,
            None => {
                // SAFETY: both came from this pool just above.
                unsafe {
                    let _ = pool.free(h.as_ptr());
                    let _ = pool.free(b.as_ptr());
                }
                return Err(no_room());
            }
        };
        let off = |p: std::ptr::NonNull<u8>| pool.offset_of(p.as_ptr()).expect("inside") as u64;
        let hdr = h.as_ptr().cast::<Header>();
        let seed = seed.unwrap_or_else(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(off(h) ^ len as u64)
        });
        // SAFETY: `hdr` is a fresh, zeroed, page-aligned allocation of a
        // Header's size that no other process knows yet (the root is set
        // last).
        unsafe {
            (*hdr).version = VERSION;
            (*hdr).nbuckets = nb as u32;
            (*hdr).buckets = off(b);
            (*hdr).stripes = off(s);
            (*hdr).nstripes = ns as u32;
            (*hdr).seed = seed;
            (*hdr).zone_len = len as u64;
            (*hdr).boot_ms = clock::boot_epoch_ms();
            (*hdr).gen = AtomicU32::new(1);
            std::sync::atomic::fence(Ordering::Release);
            std::ptr::addr_of_mut!((*hdr).magic).write_volatile(MAGIC);
        }
        pool.set_root(off(h) as usize);
        pool.set_log_nomem(false);
        // SAFETY: just made; the caller's promise on the lifetime.
        unsafe { Self::open_pool(pool) }
    }

    /// [`Dict::open`] on a bare pool.
    ///
    /// # Safety
    /// `pool` stays mapped for `'z`.
    ///
    /// # Errors
    /// As [`Dict::open`].
    pub unsafe fn open_pool(pool: Pool) -> Result<Dict<'z>, DictError> {
        let not = |reason: String| DictError::not_a_dict(pool.name(), reason);
        let len = pool.len();
        let root = pool.root();
        let hsz = std::mem::size_of::<Header>();
        if root == 0 {
            return Err(not("the zone has no root structure".into()));
        }
        if root % 64 != 0 || root.checked_add(hsz).is_none_or(|e| e > len) {
            return Err(not(format!("root offset {root} cannot hold a header")));
        }
        let base = pool.base().as_ptr();
        // SAFETY: root..root+hsz is inside the pool (checked), aligned.
        let hdr = unsafe { base.add(root) }.cast::<Header>();
        // SAFETY: as above; the fixed words are written once at init.
        let (magic, version, nb, bo, so, ns, seed, zl) = unsafe {
            (
                std::ptr::addr_of!((*hdr).magic).read_volatile(),
                (*hdr).version,
                (*hdr).nbuckets as usize,
                (*hdr).buckets as usize,
                (*hdr).stripes as usize,
                (*hdr).nstripes as usize,
                (*hdr).seed,
                (*hdr).zone_len as usize,
            )
        };
        if magic != MAGIC {
            return Err(not("no dictionary magic at the zone's root".into()));
        }
        if version != VERSION {
            return Err(not(format!(
                "layout version {version}, this build reads {VERSION}"
            )));
        }
        let inside =
            |off: usize, n: usize| off % 8 == 0 && off.checked_add(n).is_some_and(|e| e <= len);
        if zl != len
            || !nb.is_power_of_two()
            || !ns.is_power_of_two()
            || ns > nb
            || ns > MAX_STRIPES
            || !inside(bo, nb.saturating_mul(8))
            || !inside(so, ns.saturating_mul(8))
        {
            return Err(not("the header's geometry does not fit the zone".into()));
        }
        let d = Dict {
            pool,
            name: pool.name().to_string(),
            base,
            hdr,
            // SAFETY: both ranges checked inside the pool just above.
            buckets: unsafe { base.add(bo) }.cast(),
            // SAFETY: as above.
            stripes: unsafe { base.add(so) }.cast(),
            mask: nb as u32 - 1,
            smask: ns as u32 - 1,
            seed,
            len,
            _z: PhantomData,
        };
        d.after_reboot()?;
        Ok(d)
    }

    /// The zone's name.
    pub fn zone_name(&self) -> &str {
        &self.name
    }

    #[inline]
    fn h(&self) -> &Header {
        // SAFETY: checked at open; shared words are atomics or read under
        // the lock by the callers that need them stable.
        unsafe { &*self.hdr }
    }

    /// Entries stored (expired ones not yet reclaimed included).
    pub fn len(&self) -> usize {
        let _g = self.pool.lock();
        self.h().entries as usize
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The zone's size in bytes (shdict's `capacity`).
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// Bytes in whole free pages of the zone (shdict's `free_space`:
    /// partly used pages are not counted, so a dictionary can be far from
    /// full while this is 0).
    pub fn free_space(&self) -> usize {
        self.pool.stats().pages_free * crate::SLAB_PAGE
    }

    /// The counters (taken under the lock).
    pub fn stats(&self) -> DictStats {
        let g = self.pool.lock();
        let h = self.h();
        let (mut gets, mut hits) = (0u64, 0u64);
        for s in &h.slots {
            gets = gets.wrapping_add(s.gets.load(Ordering::Relaxed));
            hits = hits.wrapping_add(s.hits.load(Ordering::Relaxed));
        }
        let ps = g.stats_locked();
        DictStats {
            entries: h.entries,
            bytes: h.bytes,
            capacity: self.len,
            free_space: ps.pages_free * crate::SLAB_PAGE,
            gets,
            hits,
            misses: gets.saturating_sub(hits),
            sets: h.sets.load(Ordering::Relaxed),
            evictions: h.evictions.load(Ordering::Relaxed),
            expirations: h.expirations.load(Ordering::Relaxed),
            garbage: h.ngarbage as u64,
            rollbacks: self.pool.rollbacks(),
        }
    }

    /// This process's read-counter slot.
    #[inline]
    fn slot(&self) -> &layout::StatSlot {
        let i = crate::os::process::current_pid() as usize % STAT_SLOTS;
        &self.h().slots[i]
    }

    /// Checks the key's length.
    #[inline]
    fn check_key(key: &[u8]) -> Result<(), DictError> {
        if key.is_empty() {
            return Err(DictError::EmptyKey);
        }
        if key.len() > MAX_KEY {
            return Err(DictError::KeyTooLong { len: key.len() });
        }
        Ok(())
    }

    /// The largest value the zone could hold.
    fn max_value(&self) -> usize {
        self.len / 2
    }

    #[cold]
    fn corrupt(&self, what: &'static str) -> DictError {
        log::error!(
            "dictionary in shared zone \"{}\" is broken: {what}",
            self.name
        );
        DictError::Corrupt { what }
    }

    /// A region reopened in a later boot: expire every entry with a TTL.
    fn after_reboot(&self) -> Result<(), DictError> {
        let now = clock::boot_epoch_ms();
        let then = self.h().boot_ms;
        if now == 0 || then.abs_diff(now) < 10_000 {
            return Ok(());
        }
        log::warn!(
            "dictionary in shared zone \"{}\" was made in another boot: expiring the entries that have a TTL",
            self.name
        );
        self.expire_all_ttls()?;
        let _g = self.pool.lock();
        // SAFETY: a plain word of the header, written under the lock; a
        // death before this store makes the next open redo the (idempotent)
        // expiry.
        unsafe { std::ptr::addr_of_mut!((*self.hdr).boot_ms).write(now) };
        Ok(())
    }
}

#[cfg(test)]
mod tests;
