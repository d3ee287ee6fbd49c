//! The locked operations: stores, delete, incr, cas, expire, flush_all.

use std::sync::atomic::Ordering;

use super::layout::bump;
use super::layout::{entry_size, hash, value_at, Entry, ENTRY_MUT_FROM, K_INT, K_LIST};
use super::section::{Sec, FINISH_NEED};
use super::value::{decode, kind_name, Encoded};
use super::{Dict, DictError, Got, Stored, Value};

/// How a store treats an existing key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Set,
    Add,
    Replace,
}

/// Values at most this long are rewritten in place when the size matches
/// (their old bytes fit the journal); longer ones get a fresh entry.
const IN_PLACE_MAX: usize = 1024;

/// The absolute expiry of a TTL in ms (0: none).
#[inline]
pub(super) fn expiry(s: &Sec<'_, '_, '_>, ttl_ms: u64) -> u64 {
    if ttl_ms == 0 {
        0
    } else {
        s.now().saturating_add(ttl_ms)
    }
}

impl<'z> Dict<'z> {
    pub(super) fn check_value(&self, v: &Encoded<'_>) -> Result<(), DictError> {
        let n = v.as_slice().len();
        if n > self.max_value() {
            return Err(DictError::ValueTooLarge {
                len: n,
                max: self.max_value(),
            });
        }
        Ok(())
    }

    /// The store behind set/add/replace and their safe twins.
    #[inline]
    pub(super) fn store(
        &self,
        key: &[u8],
        value: Value<'_>,
        ttl_ms: u64,
        flags: u32,
        mode: Mode,
        evict: bool,
    ) -> Result<Stored, DictError> {
        Self::check_key(key)?;
        let v = Encoded::new(value);
        self.check_value(&v)?;
        let h = hash(self.seed, key);
        self.after_gc(|first| {
            let g = self.pool.lock();
            let s = self.section(&g)?;
            let found = s.find(h, key)?;
            let live = found.is_some_and(|f| s.live(f.e));
            match mode {
                Mode::Add if live => return Err(DictError::Exists),
                Mode::Replace if !live => return Err(DictError::NotFound),
                _ => {}
            }
            let exp = expiry(&s, ttl_ms);
            if first {
                bump(&self.h().sets);
            }
            self.tidy(
                &s,
                Self::store_need(entry_size(key.len(), v.as_slice().len())),
            )?;
            self.put(&s, h, key, &v, flags, exp, found, evict)
        })
    }

    /// Writes `v` for `key`: in place when the old entry has the same
    /// value size, else frees the old one and inserts a new entry, evicting
    /// if `evict` and memory is short. Rolls back and fails on no memory.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put(
        &self,
        s: &Sec<'_, '_, 'z>,
        h: u32,
        key: &[u8],
        v: &Encoded<'_>,
        flags: u32,
        exp: u64,
        found: Option<super::section::Found>,
        evict: bool,
    ) -> Result<Stored, DictError> {
        let bytes = v.as_slice();
        if let Some(f) = found {
            // SAFETY: a checked entry, under the lock.
            let (kind, vlen) = unsafe { (u32::from((*f.e).kind), (*f.e).vlen as usize) };
            if kind != K_LIST && vlen == bytes.len() && vlen <= IN_PLACE_MAX {
                self.rewrite(s, &f, v.kind, bytes, flags, exp)?;
                return Ok(Stored::default());
            }
        }
        s.all_or_nothing(|| {
            let size = entry_size(key.len(), bytes.len());
            // Allocate before freeing the old entry when there is room: the
            // new block then cannot reuse the old one's memory (which would
            // have to be saved first, see Sec::fill).
            let early = if found.is_some() {
                s.try_alloc(size)?
            } else {
                None
            };
            if let Some(f) = found {
                s.unlink(&f)?;
                s.free_entry(f.e)?;
            }
            let (p, forcible) = match early {
                Some(p) => (p, false),
                None => self.room(s, size, std::ptr::null(), evict, 0)?,
            };
            s.insert(p, h, key, v.kind, bytes, flags, exp)?;
            Ok(Stored { forcible })
        })
    }

    /// Rewrites an entry's kind, flags, generation, expiry and value in
    /// place (all saved first in one record).
    #[inline]
    fn rewrite(
        &self,
        s: &Sec<'_, '_, 'z>,
        f: &super::section::Found,
        kind: u32,
        bytes: &[u8],
        flags: u32,
        exp: u64,
    ) -> Result<(), DictError> {
        let e = f.e;
        // SAFETY: a checked entry, under the lock.
        let klen = unsafe { (*e).klen } as usize;
        s.touch(f.bucket)?;
        let gen = self.h().gen.load(Ordering::Relaxed);
        // SAFETY: the entry's header tail and value are inside the zone and
        // only lock holders write them; each is saved before it is written.
        unsafe {
            // Most rewrites change only the value: then one record.
            if u32::from((*e).kind) != kind
                || (*e).flags != flags
                || (*e).gen != gen
                || (*e).expires != exp
            {
                let from = e.cast::<u8>().add(ENTRY_MUT_FROM);
                s.g.save(from, std::mem::size_of::<Entry>() - ENTRY_MUT_FROM)?;
                (*e).kind = kind as u16;
                (*e).flags = flags;
                (*e).gen = gen;
                (*e).expires = exp;
            }
            let vp = e.cast::<u8>().add(value_at(klen));
            s.g.save(vp, bytes.len())?;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), vp, bytes.len());
        }
        self.bucket(f.bucket).referenced.store(1, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes `key`; whether it had a live value.
    pub(super) fn delete_inner(&self, key: &[u8]) -> Result<bool, DictError> {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let Some(f) = s.find(h, key)? else {
            return Ok(false);
        };
        let live = s.live(f.e);
        self.remove_found(&s, &f)?;
        Ok(live)
    }

    /// Unlinks and frees a found entry (and a few garbage nodes), as a
    /// whole or not at all.
    pub(super) fn remove_found(
        &self,
        s: &super::section::Sec<'_, '_, 'z>,
        f: &super::section::Found,
    ) -> Result<(), DictError> {
        s.all_or_nothing(|| {
            s.unlink(f)?;
            s.free_entry(f.e)?;
            self.tidy(s, 2 * FINISH_NEED)
        })
    }

    /// `incr`: see [`Dict::incr`].
    #[inline]
    pub(super) fn incr_inner(
        &self,
        key: &[u8],
        delta: i64,
        init: Option<i64>,
        init_ttl_ms: u64,
    ) -> Result<i64, DictError> {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let found = s.find(h, key)?;
        if let Some(f) = found.filter(|f| s.live(f.e)) {
            let e = f.e;
            // SAFETY: a checked entry, under the lock.
            let (kind, klen, vlen) =
                unsafe { (u32::from((*e).kind), (*e).klen as usize, (*e).vlen) };
            if kind != K_INT || vlen != 8 {
                return Err(DictError::WrongType {
                    found: kind_name(kind),
                });
            }
            // SAFETY: the value is 8 bytes inside the zone (checked entry).
            let vp = unsafe { e.cast::<u8>().add(value_at(klen)) }.cast::<i64>();
            // SAFETY: as above; value_at is 8-aligned.
            let old = unsafe { vp.read() };
            let new = old.checked_add(delta).ok_or(DictError::Overflow)?;
            s.touch(f.bucket)?;
            // SAFETY: as above; only lock holders write it.
            unsafe { s.g.write(vp, new) }?;
            self.bucket(f.bucket).referenced.store(1, Ordering::Relaxed);
            return Ok(new);
        }
        let Some(init) = init else {
            return Err(DictError::NotFound);
        };
        let new = init.checked_add(delta).ok_or(DictError::Overflow)?;
        let v = Encoded::new(Value::Int(new));
        let exp = super::ops::expiry(&s, init_ttl_ms);
        bump(&self.h().sets);
        self.put(&s, h, key, &v, 0, exp, found, true)?;
        Ok(new)
    }

    /// `cas`: see [`Dict::cas`].
    pub(super) fn cas_inner(
        &self,
        key: &[u8],
        expected: Value<'_>,
        new: Value<'_>,
    ) -> Result<bool, DictError> {
        Self::check_key(key)?;
        let want = Encoded::new(expected);
        let v = Encoded::new(new);
        self.check_value(&v)?;
        let h = hash(self.seed, key);
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let Some(f) = s.find(h, key)?.filter(|f| s.live(f.e)) else {
            return Err(DictError::NotFound);
        };
        let cur = self.read_locked(f.e);
        match cur {
            Some((kind, _, ref bytes)) if kind == want.kind && bytes[..] == *want.as_slice() => {}
            Some(_) => return Ok(false),
            None => return Err(DictError::WrongType { found: "a list" }),
        }
        // SAFETY: a checked entry, under the lock.
        let (flags, exp) = unsafe { ((*f.e).flags, (*f.e).expires) };
        bump(&self.h().sets);
        self.put(&s, h, key, &v, flags, exp, Some(f), true)?;
        Ok(true)
    }

    /// A scalar entry's kind, flags and value bytes (`None` for a list).
    pub(super) fn read_locked(&self, e: *const Entry) -> Option<(u32, u32, Vec<u8>)> {
        // SAFETY: a checked entry (its value lies inside the zone), read
        // under the lock.
        unsafe {
            if u32::from((*e).kind) == K_LIST {
                return None;
            }
            let klen = (*e).klen as usize;
            let vp = e.cast::<u8>().add(value_at(klen));
            Some((
                u32::from((*e).kind),
                (*e).flags,
                std::slice::from_raw_parts(vp, (*e).vlen as usize).to_vec(),
            ))
        }
    }

    /// The locked `get`: the fallback of the optimistic read.
    #[cold]
    #[inline(never)]
    pub(super) fn get_locked(
        &self,
        key: &[u8],
        h: u32,
        stale: bool,
    ) -> Result<Option<Got>, DictError> {
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let Some(f) = s.find(h, key)? else {
            return Ok(None);
        };
        let live = s.live(f.e);
        if !live && !stale {
            return Ok(None);
        }
        self.bucket(f.bucket).referenced.store(1, Ordering::Relaxed);
        let Some((kind, flags, bytes)) = self.read_locked(f.e) else {
            return Err(DictError::WrongType { found: "a list" });
        };
        let value = decode(kind, &bytes).ok_or_else(|| self.corrupt("a value of a bad length"))?;
        Ok(Some(Got {
            value,
            flags,
            stale: !live,
        }))
    }

    /// The locked `ttl`.
    pub(super) fn ttl_locked(&self, key: &[u8], h: u32) -> Result<Option<u64>, DictError> {
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let f = s
            .find(h, key)?
            .filter(|f| s.live(f.e))
            .ok_or(DictError::NotFound)?;
        // SAFETY: a checked entry, under the lock.
        let exp = unsafe { (*f.e).expires };
        Ok((exp != 0).then(|| exp - s.now()))
    }

    /// `expire`: see [`Dict::expire`].
    pub(super) fn expire_inner(&self, key: &[u8], ttl_ms: u64) -> Result<(), DictError> {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let f = s
            .find(h, key)?
            .filter(|f| s.live(f.e))
            .ok_or(DictError::NotFound)?;
        let exp = expiry(&s, ttl_ms);
        s.touch(f.bucket)?;
        // SAFETY: a checked entry's word, only written under the lock.
        unsafe { s.g.write(std::ptr::addr_of_mut!((*f.e).expires), exp) }?;
        Ok(())
    }

    /// `flush_all`: one journaled store of the flush generation.
    pub(super) fn flush_all_inner(&self) -> Result<(), DictError> {
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let next = match self.h().gen.load(Ordering::Relaxed).wrapping_add(1) {
            0 => 1,
            n => n,
        };
        // Published (made the generation readers use) by the next holder,
        // after this section is committed: no reader sees a flush that a
        // rollback undoes.
        let gp = &self.h().gen_pending;
        // SAFETY: a header word inside the zone, written under the lock.
        unsafe {
            s.g.save((gp as *const std::sync::atomic::AtomicU32).cast(), 4)
        }?;
        gp.store(next, Ordering::Release);
        Ok(())
    }
}
