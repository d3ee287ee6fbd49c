//! Reads without the lock: a striped seqlock, validated against the
//! pool's rollback counter.
//!
//! A reader samples the rollback counter `r0` and its bucket's stripe `v0`
//! (odd: a section changing it has not been published yet: retry), walks
//! the chain (every offset checked against the zone, at most `MAX_CHAIN`
//! steps), copies what it found, and accepts it only if the stripe still
//! reads `v0` and the counter `r0`. A rollback restores a stripe to an
//! old value (an ABA the stripe alone would miss); it bumps the counter
//! before restoring anything, so the second check catches it. After
//! [`TRIES`] failed attempts, or on anything malformed, the reader takes
//! the lock instead.
//!
//! The shared bytes are read with volatile reads while a writer may be
//! changing them: what is read is only used after validation (a torn read
//! is thrown away), and no length or offset read is used before it is
//! checked against the zone.

use std::sync::atomic::{fence, AtomicU32, Ordering};

use super::layout::{hash, value_at, Entry, K_LIST, MAX_CHAIN};
use super::value::{decode_small, fixed_len};
use super::{Dict, DictError, Got, OwnedValue};
use crate::os::clock;

#[cfg(test)]
thread_local! {
    /// Reads that took the lock (tests only).
    pub(super) static FALLBACKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Optimistic attempts before taking the lock.
pub(super) const TRIES: usize = 8;

/// What one optimistic walk saw (plain words: cheap to move; a byte
/// string's value goes to the caller's buffer).
#[derive(Clone, Copy, Default)]
struct Seen {
    /// MISSING, FOUND or ODD (malformed, or a list: let the lock decide).
    what: u32,
    kind: u32,
    flags: u32,
    gen: u32,
    expires: u64,
    /// A fixed-size value's bytes.
    small: [u8; 8],
}

const MISSING: u32 = 0;
const FOUND: u32 = 1;
const ODD: u32 = 2;

impl Seen {
    const MISSING: Seen = Seen {
        what: MISSING,
        kind: 0,
        flags: 0,
        gen: 0,
        expires: 0,
        small: [0; 8],
    };
    const ODD: Seen = Seen {
        what: ODD,
        ..Seen::MISSING
    };
}

/// What the reader wants.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Value,
    Stale,
    Ttl,
}

impl<'z> Dict<'z> {
    /// Walks bucket `b` for `key` without the lock.
    #[inline(always)]
    fn walk(&self, b: u32, h: u32, key: &[u8], want: Want, buf: &mut Vec<u8>) -> Seen {
        let mut link: *const AtomicU32 = &self.bucket(b).head;
        for _ in 0..MAX_CHAIN {
            // SAFETY: a bucket head or the `next` of an entry that
            // `entry_at` checked to be inside the zone.
            let off8 = unsafe { &*link }.load(Ordering::Acquire);
            if off8 == 0 {
                return Seen::MISSING;
            }
            let Some(e) = self.entry_at(off8) else {
                return Seen::ODD;
            };
            // SAFETY: entry_at checked that the header, the key and the
            // value (as their lengths read then) lie inside the zone. The
            // lengths are re-read below and re-checked against the key
            // before use.
            unsafe {
                let eh = std::ptr::addr_of!((*e).hash).read_volatile();
                let klen = std::ptr::addr_of!((*e).klen).read_volatile() as usize;
                if eh == h && klen == key.len() && self.key_eq(e, key) {
                    return self.copy_out(e, klen, want, buf);
                }
                link = &(*e).next;
            }
        }
        Seen::ODD
    }

    /// Compares the key bytes of a checked entry.
    ///
    /// # Safety
    /// `e` was checked by `entry_at` with a key length of `key.len()`.
    #[inline]
    unsafe fn key_eq(&self, e: *const Entry, key: &[u8]) -> bool {
        let k = e.cast::<u8>().wrapping_add(value_at(0));
        let off = k as usize - self.base as usize;
        if off + key.len() > self.len {
            return false;
        }
        // Word at a time, volatile: a racing writer may change the bytes
        // (the result is then thrown away by validation).
        let mut i = 0;
        while i + 8 <= key.len() {
            // SAFETY: k+i..k+i+8 is inside the zone (checked above).
            let w = unsafe { k.add(i).cast::<[u8; 8]>().read_volatile() };
            if w != key[i..i + 8] {
                return false;
            }
            i += 8;
        }
        while i < key.len() {
            // SAFETY: as above.
            if unsafe { k.add(i).read_volatile() } != key[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Copies a found entry's words and value.
    ///
    /// # Safety
    /// `e` was checked by `entry_at`.
    #[inline(always)]
    unsafe fn copy_out(&self, e: *const Entry, klen: usize, want: Want, buf: &mut Vec<u8>) -> Seen {
        // SAFETY: the header is inside the zone (caller).
        let (kind, flags, expires, gen, vlen) = unsafe {
            (
                u32::from(std::ptr::addr_of!((*e).kind).read_volatile()),
                std::ptr::addr_of!((*e).flags).read_volatile(),
                std::ptr::addr_of!((*e).expires).read_volatile(),
                std::ptr::addr_of!((*e).gen).read_volatile(),
                std::ptr::addr_of!((*e).vlen).read_volatile() as usize,
            )
        };
        if kind == K_LIST {
            return Seen::ODD;
        }
        let vp = e.cast::<u8>().wrapping_add(value_at(klen));
        let off = vp as usize - self.base as usize;
        if off > self.len || vlen > self.len - off {
            return Seen::ODD;
        }
        let mut seen = Seen {
            what: FOUND,
            kind,
            flags,
            gen,
            expires,
            small: [0; 8],
        };
        if want == Want::Ttl {
            return seen;
        }
        match fixed_len(kind) {
            Some(n) if n == vlen => {
                // SAFETY: vlen (<= 8) bytes inside the zone (checked).
                unsafe { std::ptr::copy_nonoverlapping(vp, seen.small.as_mut_ptr(), vlen) };
            }
            Some(_) => return Seen::ODD,
            None => {
                buf.clear();
                buf.reserve(vlen);
                // SAFETY: vlen bytes inside the zone (checked) into a buffer
                // of at least that capacity.
                unsafe {
                    std::ptr::copy_nonoverlapping(vp, buf.as_mut_ptr(), vlen);
                    buf.set_len(vlen);
                }
            }
        }
        seen
    }

    /// One optimistic read; `None`: take the lock.
    #[inline(always)]
    fn read_opt(&self, key: &[u8], h: u32, want: Want, buf: &mut Vec<u8>) -> Option<Seen> {
        let b = h & self.mask;
        let stripe = self.stripe(b);
        let hd = self.h();
        for _ in 0..TRIES {
            let r0 = self.pool.rollbacks();
            let v0 = stripe.load(Ordering::Acquire);
            if v0 & 1 == 1 || hd.gen_pending.load(Ordering::Relaxed) != 0 {
                std::hint::spin_loop();
                continue;
            }
            let seen = self.walk(b, h, key, want, buf);
            fence(Ordering::Acquire);
            if stripe.load(Ordering::Relaxed) == v0 && self.pool.rollbacks() == r0 {
                if seen.what == ODD {
                    break;
                }
                return Some(seen);
            }
        }
        #[cfg(test)]
        FALLBACKS.with(|c| c.set(c.get() + 1));
        None
    }

    /// `get`/`get_stale`.
    #[inline]
    pub(super) fn get_inner(&self, key: &[u8], stale: bool) -> Result<Option<Got>, DictError> {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        let slot = self.slot();
        slot.gets.store(
            slot.gets.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        let want = if stale { Want::Stale } else { Want::Value };
        let mut buf = Vec::new();
        let Some(seen) = self.read_opt(key, h, want, &mut buf) else {
            return self.get_locked_counted(key, h, stale);
        };
        if seen.what == MISSING {
            return Ok(None);
        }
        let live = seen.gen == self.h().gen.load(Ordering::Acquire)
            && (seen.expires == 0 || seen.expires > clock::now_ms());
        if !live && !stale {
            return Ok(None);
        }
        let b = self.bucket(h & self.mask);
        if b.referenced.load(Ordering::Relaxed) == 0 {
            b.referenced.store(1, Ordering::Relaxed);
        }
        let value = match fixed_len(seen.kind) {
            Some(n) => decode_small(seen.kind, &seen.small[..n]),
            None => Some(OwnedValue::Bytes(buf)),
        };
        let Some(value) = value else {
            return self.get_locked_counted(key, h, stale);
        };
        if live {
            slot.hits.store(
                slot.hits.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
        Ok(Some(Got {
            value,
            flags: seen.flags,
            stale: !live,
        }))
    }

    /// The locked get, counting a hit.
    #[cold]
    #[inline(never)]
    fn get_locked_counted(
        &self,
        key: &[u8],
        h: u32,
        stale: bool,
    ) -> Result<Option<Got>, DictError> {
        let r = self.get_locked(key, h, stale);
        if let Ok(Some(g)) = &r {
            if !g.stale {
                let slot = self.slot();
                slot.hits.store(
                    slot.hits.load(Ordering::Relaxed).wrapping_add(1),
                    Ordering::Relaxed,
                );
            }
        }
        r
    }

    /// `ttl`.
    pub(super) fn ttl_inner(&self, key: &[u8]) -> Result<Option<u64>, DictError> {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        let mut buf = Vec::new();
        match self.read_opt(key, h, Want::Ttl, &mut buf) {
            Some(Seen { what: MISSING, .. }) => Err(DictError::NotFound),
            Some(Seen {
                expires: exp, gen, ..
            }) => {
                if gen != self.h().gen.load(Ordering::Acquire) {
                    return Err(DictError::NotFound);
                }
                if exp == 0 {
                    return Ok(None);
                }
                let now = clock::now_ms();
                if exp <= now {
                    return Err(DictError::NotFound);
                }
                Ok(Some(exp - now))
            }
            None => self.ttl_locked(key, h),
        }
    }
}
