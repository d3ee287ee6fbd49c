//! What the dictionary keeps in its zone: the header, the bucket array,
//! the version stripes, entries and list nodes. Every link is an offset
//! from the zone's start in 8-byte units (`off8`, `u32`: zones up to
//! 32 GiB), 0 meaning none; nothing is an absolute pointer.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

use static_assertions::{assert_eq_align, assert_eq_size, const_assert};

/// "shmzDICT", little-endian.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"shmzDICT");
/// Bumped whenever a shared structure below changes.
pub(crate) const VERSION: u32 = 2;

/// The longest key, as shdict: 64 KiB - 1.
pub const MAX_KEY: usize = 65_535;
/// Most stripes a section may leave odd for the next holder to publish.
pub(crate) const MAX_PENDING: usize = 40;
/// Slots of the per-process read counters.
pub(crate) const STAT_SLOTS: usize = 64;
/// The most stripes (version words).
pub(crate) const MAX_STRIPES: usize = 1024;
/// The longest chain a walk follows; a longer one is corruption (with a
/// seeded hash and at most one entry per bucket on average it never
/// happens).
pub(crate) const MAX_CHAIN: usize = 4096;
/// Zone bytes per bucket.
pub(crate) const BYTES_PER_BUCKET: usize = 512;

/// Value kinds (the `kind` word of an entry, and of a list node).
pub(crate) const K_BYTES: u32 = 1;
pub(crate) const K_INT: u32 = 2;
pub(crate) const K_FLOAT: u32 = 3;
pub(crate) const K_BOOL: u32 = 4;
pub(crate) const K_LIST: u32 = 5;

/// Per-process counters of reads (written without the lock, by plain
/// relaxed load+store: two processes whose pids share a slot may lose a
/// count, never corrupt anything).
#[repr(C, align(64))]
pub(crate) struct StatSlot {
    pub gets: AtomicU64,
    pub hits: AtomicU64,
    pub _pad: [u64; 6],
}
assert_eq_size!(StatSlot, [u8; 64]);

/// The dictionary's root, at the zone's `root()` offset.
#[repr(C, align(64))]
pub(crate) struct Header {
    // Line 0: fixed at init, read by everyone.
    pub magic: u64,
    pub version: u32,
    pub nbuckets: u32,
    pub buckets: u64,
    pub stripes: u64,
    pub nstripes: u32,
    /// Flush generation: entries stored under another one are expired
    /// (`flush_all` bumps it). Written under the lock, journaled.
    pub gen: AtomicU32,
    pub seed: u64,
    pub zone_len: u64,
    /// The boot (see `os::clock::boot_epoch_ms`) the TTLs belong to.
    pub boot_ms: u64,

    // Line 1..: lock-protected, journaled.
    pub entries: u64,
    pub bytes: u64,
    /// List nodes waiting to be freed (see `list.rs`): chain head, count.
    pub garbage: u32,
    pub ngarbage: u32,
    /// Stripes left odd by committed sections: the next holder makes them
    /// even (publishes them) before anything else.
    /// (8-aligned, so that one 8-byte record saves it with `pending[0]`.)
    pub npending: u32,
    pub pending: [u32; MAX_PENDING],
    /// A flush generation committed but not yet published (0: none):
    /// readers that see it take the lock, whose next holder publishes it.
    pub gen_pending: AtomicU32,
    pub _pad1: [u32; 8],

    // Hints and counters written under the lock without the journal
    // (a rolled-back operation may have been counted).
    pub flush_hand: AtomicU32,
    pub hand: AtomicU32,
    pub sets: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub _pad2: [u64; 4],

    pub slots: [StatSlot; STAT_SLOTS],
}
const_assert!(std::mem::size_of::<Header>() % 64 == 0);
const_assert!(std::mem::offset_of!(Header, npending) % 8 == 0);
assert_eq_size!(Header, [u8; 64 * 6 + 64 * STAT_SLOTS]);

/// A bucket: the head of its chain, the CLOCK reference bit of the
/// entries in it (set by readers with a relaxed store, cleared by the
/// eviction hand) and the size classes of the blocks in the chain (bit i:
/// blocks of a slab size class whose index is i modulo 7, bit 7: page
/// runs; set by stores, recomputed by the
/// eviction hand when it walks the chain). Both are hints, never
/// journaled: the hand skips buckets with no block of the class it needs
/// without touching their entries.
#[repr(C)]
pub(crate) struct Bucket {
    pub head: AtomicU32,
    pub referenced: AtomicU8,
    pub classes: AtomicU8,
    pub _pad: [u8; 2],
}
assert_eq_size!(Bucket, [u8; 8]);

/// An entry: this header, the key, padding to 8, the value.
#[repr(C)]
pub(crate) struct Entry {
    /// Next entry in the bucket's chain (off8), 0 at the end.
    pub next: AtomicU32,
    pub hash: u32,
    /// The key's length (at most [`MAX_KEY`]).
    pub klen: u16,
    /// The value's kind (`K_*`).
    pub kind: u16,
    pub vlen: u32,
    pub flags: u32,
    /// The flush generation it was stored under.
    pub gen: u32,
    /// Expiry, ms on the shared clock; 0 never.
    pub expires: u64,
}
assert_eq_size!(Entry, [u8; 32]);
assert_eq_align!(Entry, u64);
const_assert!(MAX_KEY <= u16::MAX as usize);

/// Offsets of the entry words a section saves before rewriting a value in
/// place: the `klen`/`kind` word to the end of the header.
pub(crate) const ENTRY_MUT_FROM: usize = 8;
const_assert!(std::mem::offset_of!(Entry, kind) >= ENTRY_MUT_FROM);
const_assert!(std::mem::offset_of!(Entry, kind) < 16);

/// The total bytes of a list entry's items (its [`ListHead`]'s `bytes`);
/// 0 for other kinds.
///
/// # Safety
/// `e` is a checked entry whose value (16 bytes for a list) lies inside
/// the zone, read under the lock.
#[inline]
pub(crate) unsafe fn list_bytes(e: *const Entry) -> u32 {
    // SAFETY: the caller's promise.
    unsafe {
        if u32::from((*e).kind) != K_LIST || ((*e).vlen as usize) < std::mem::size_of::<ListHead>()
        {
            return 0;
        }
        let lh = e
            .cast::<u8>()
            .add(value_at((*e).klen as usize))
            .cast::<ListHead>();
        std::ptr::addr_of!((*lh).bytes).read()
    }
}

/// A list entry's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ListHead {
    pub head: u32,
    pub tail: u32,
    pub len: u32,
    /// The total bytes of the items.
    pub bytes: u32,
}
assert_eq_size!(ListHead, [u8; 16]);

/// A list item: this header then the item's bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Node {
    pub next: u32,
    pub prev: u32,
    pub len: u32,
    pub kind: u32,
}
assert_eq_size!(Node, [u8; 16]);

/// Adds one to a counter that only lock holders write (a plain load and
/// store: no locked instruction on the hot path).
#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.store(
        c.load(std::sync::atomic::Ordering::Relaxed).wrapping_add(1),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Rounds up to 8.
#[inline]
pub(crate) const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Offset of the value from the entry's start.
#[inline]
pub(crate) const fn value_at(klen: usize) -> usize {
    std::mem::size_of::<Entry>() + pad8(klen)
}

/// An entry's allocation size.
#[inline]
pub(crate) const fn entry_size(klen: usize, vlen: usize) -> usize {
    value_at(klen) + vlen
}

/// The key hash: a seeded multiply-xorshift over 8-byte words (the seed is
/// random per dictionary, so chains cannot be flooded from outside).
#[inline]
pub(crate) fn hash(seed: u64, key: &[u8]) -> u32 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = seed ^ (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    let n = rest.len();
    // The tail in at most two loads (no byte copies through the stack):
    // 4..=7 bytes as two overlapping u32s, 1..=3 as three bytes.
    let t = if n >= 4 {
        let lo = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as u64;
        let hi = u32::from_le_bytes(rest[n - 4..].try_into().expect("4 bytes")) as u64;
        lo | hi << 32
    } else if n > 0 {
        (rest[0] as u64) << 16 | (rest[n / 2] as u64) << 8 | rest[n - 1] as u64
    } else {
        0
    };
    if n > 0 {
        h = (h ^ t ^ (n as u64) << 59).wrapping_mul(K).rotate_left(29);
    }
    h ^= h >> 32;
    h = h.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h ^= h >> 32;
    h as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_spreads_and_depends_on_the_seed() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            seen.insert(hash(1, format!("k{i}").as_bytes()) & 0xffff);
        }
        assert!(seen.len() > 8_500, "{}", seen.len());
        assert_ne!(hash(1, b"abc"), hash(2, b"abc"));
        assert_ne!(hash(1, b"abc"), hash(1, b"abd"));
        assert_ne!(hash(1, b""), hash(1, b"\0"));
    }

    #[test]
    fn sizes() {
        // A 32-byte header, the key padded to 8, the value.
        assert_eq!(entry_size(2, 8), 48);
        assert_eq!(value_at(9), 48);
    }
}
