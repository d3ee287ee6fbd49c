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
use super::value::{decode, fixed_len};
use super::{Dict, DictError, Got};
use crate::os::clock;

/// Optimistic attempts before taking the lock.
pub(super) const TRIES: usize = 8;

/// What one optimistic walk saw.
enum Seen {
    Missing,
    /// kind, flags, expires, gen, value bytes (scalars only)
    Found(u32, u32, u64, u32, Vec<u8>, [u8; 8]),
    /// Something malformed (or a list): let the lock decide.
    Odd,
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
    #[inline]
    fn walk(&self, b: u32, h: u32, key: &[u8], want: Want) -> Seen {
        let mut link: *const AtomicU32 = &self.bucket(b).head;
        for _ in 0..MAX_CHAIN {
            // SAFETY: a bucket head or the `next` of an entry that
            // `entry_at` checked to be inside the zone.
            let off8 = unsafe { &*link }.load(Ordering::Acquire);
            if off8 == 0 {
                return Seen::Missing;
            }
            let Some(e) = self.entry_at(off8) else {
                return Seen::Odd;
            };
            // SAFETY: entry_at checked that the header, the key and the
            // value (as their lengths read then) lie inside the zone. The
            // lengths are re-read below and re-checked against the key
            // before use.
            unsafe {
                let eh = std::ptr::addr_of!((*e).hash).read_volatile();
                let klen = std::ptr::addr_of!((*e).klen).read_volatile() as usize;
                if eh == h && klen == key.len() && self.key_eq(e, key) {
                    return self.copy_out(e, klen, want);
                }
                link = &(*e).next;
            }
        }
        Seen::Odd
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
    #[inline]
    unsafe fn copy_out(&self, e: *const Entry, klen: usize, want: Want) -> Seen {
        // SAFETY: the header is inside the zone (caller).
        let (kind, flags, exp, gen, vlen) = unsafe {
            (
                std::ptr::addr_of!((*e).kind).read_volatile(),
                std::ptr::addr_of!((*e).flags).read_volatile(),
                std::ptr::addr_of!((*e).expires).read_volatile(),
                std::ptr::addr_of!((*e).gen).read_volatile(),
                std::ptr::addr_of!((*e).vlen).read_volatile() as usize,
            )
        };
        if kind == K_LIST {
            return Seen::Odd;
        }
        let vp = e.cast::<u8>().wrapping_add(value_at(klen));
        let off = vp as usize - self.base as usize;
        if off > self.len || vlen > self.len - off {
            return Seen::Odd;
        }
        if want == Want::Ttl {
            return Seen::Found(kind, flags, exp, gen, Vec::new(), [0; 8]);
        }
        match fixed_len(kind) {
            Some(n) if n == vlen => {
                let mut small = [0u8; 8];
                // SAFETY: vlen (<= 8) bytes inside the zone (checked).
                unsafe { std::ptr::copy_nonoverlapping(vp, small.as_mut_ptr(), vlen) };
                Seen::Found(kind, flags, exp, gen, Vec::new(), small)
            }
            Some(_) => Seen::Odd,
            None => {
                let mut v = Vec::with_capacity(vlen);
                // SAFETY: vlen bytes inside the zone (checked) into a buffer
                // of that capacity.
                unsafe {
                    std::ptr::copy_nonoverlapping(vp, v.as_mut_ptr(), vlen);
                    v.set_len(vlen);
                }
                Seen::Found(kind, flags, exp, gen, v, [0; 8])
            }
        }
    }

    /// One optimistic read; `None`: take the lock.
    #[inline]
    fn read_opt(&self, key: &[u8], h: u32, want: Want) -> Option<Seen> {
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
            let seen = self.walk(b, h, key, want);
            fence(Ordering::Acquire);
            if stripe.load(Ordering::Relaxed) == v0 && self.pool.rollbacks() == r0 {
                return match seen {
                    Seen::Odd => None,
                    s => Some(s),
                };
            }
        }
        None
    }

    /// `get`/`get_stale`.
    #[inline]
    pub(super) fn get_inner(&self, key: &[u8], stale: bool) -> Result<Option<Got>, DictError> {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        let slot = self.slot();
        slot.gets
            .store(slot.gets.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        let want = if stale { Want::Stale } else { Want::Value };
        let r = match self.read_opt(key, h, want) {
            Some(Seen::Missing) => Ok(None),
            Some(Seen::Found(kind, flags, exp, gen, bytes, small)) => {
                let live = gen == self.h().gen.load(Ordering::Acquire)
                    && (exp == 0 || exp > clock::now_ms());
                if !live && !stale {
                    Ok(None)
                } else {
                    let b = self.bucket(h & self.mask);
                    if b.referenced.load(Ordering::Relaxed) == 0 {
                        b.referenced.store(1, Ordering::Relaxed);
                    }
                    let value = match fixed_len(kind) {
                        Some(n) => decode(kind, &small[..n]),
                        None => decode(kind, &bytes),
                    };
                    match value {
                        Some(value) => Ok(Some(Got {
                            value,
                            flags,
                            stale: !live,
                        })),
                        None => self.get_locked(key, h, stale),
                    }
                }
            }
            Some(Seen::Odd) | None => self.get_locked(key, h, stale),
        };
        if let Ok(Some(g)) = &r {
            if !g.stale {
                slot.hits
                    .store(slot.hits.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
            }
        }
        r
    }

    /// `ttl`.
    pub(super) fn ttl_inner(&self, key: &[u8]) -> Result<Option<u64>, DictError> {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        match self.read_opt(key, h, Want::Ttl) {
            Some(Seen::Missing) => Err(DictError::NotFound),
            Some(Seen::Found(_, _, exp, gen, _, _)) => {
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
            Some(Seen::Odd) | None => self.ttl_locked(key, h),
        }
    }
}
