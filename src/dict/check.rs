//! Walking the whole table: `check()`, cursor iteration, the largest
//! entries.

use std::sync::atomic::{AtomicU32, Ordering};

use super::layout::{hash, value_at, Entry, K_LIST, MAX_CHAIN, MAX_PENDING};
use super::section::Sec;
use super::value::fixed_len;
use super::{Dict, DictError};

/// Buckets one iteration step (one lock hold) looks at, at most.
const SCAN_BUCKETS: u64 = 1024;

/// A page of keys from [`Dict::keys`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysPage {
    /// Live keys of the buckets this step covered.
    pub keys: Vec<Vec<u8>>,
    /// Where to go on, or `None` when the whole table was covered.
    pub next: Option<u64>,
}

/// One entry as [`Dict::dump`] shows it (for tests and inspection).
#[derive(Clone, Debug, PartialEq)]
pub struct DumpEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The value's type: 1 bytes, 2 i64, 3 f64, 4 bool, 5 list.
    pub kind: u32,
    /// The user flags.
    pub flags: u32,
    /// Whether it has a TTL (the expiry itself is a clock reading).
    pub has_ttl: bool,
    /// Whether it is live now.
    pub live: bool,
    /// A scalar's stored bytes.
    pub value: Vec<u8>,
    /// A list's items: (kind, bytes), head first.
    pub items: Vec<(u32, Vec<u8>)>,
}

impl<'z> Dict<'z> {
    /// Every entry (expired ones too), sorted by key, with the entry and
    /// byte totals and the garbage count: what a test compares before and
    /// after an operation. Holds the lock for the whole walk.
    ///
    /// # Errors
    /// A broken table.
    #[doc(hidden)]
    pub fn dump(&self) -> Result<(Vec<DumpEntry>, [u64; 3]), DictError> {
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let mut out = Vec::new();
        for b in 0..=self.mask {
            self.each_in_bucket(b, |e| {
                // SAFETY: a checked entry, under the lock.
                let (kind, flags, exp) =
                    unsafe { (u32::from((*e).kind), (*e).flags, (*e).expires) };
                let mut d = DumpEntry {
                    key: Self::key_of(e),
                    kind,
                    flags,
                    has_ttl: exp != 0,
                    live: s.live(e),
                    value: Vec::new(),
                    items: Vec::new(),
                };
                match self.read_locked(e) {
                    Some((_, _, v)) => d.value = v,
                    None => {
                        // SAFETY: a checked list entry.
                        let l = unsafe {
                            e.cast::<u8>()
                                .add(value_at(d.key.len()))
                                .cast::<super::layout::ListHead>()
                                .read()
                        };
                        let mut at = l.head;
                        for _ in 0..l.len {
                            let n = self
                                .node_at(at)
                                .ok_or_else(|| self.corrupt("a list links outside the zone"))?;
                            // SAFETY: a checked node.
                            unsafe {
                                let b = std::slice::from_raw_parts(
                                    n.cast::<u8>().add(16),
                                    (*n).len as usize,
                                );
                                d.items.push(((*n).kind, b.to_vec()));
                                at = (*n).next;
                            }
                        }
                    }
                }
                out.push(d);
                Ok(())
            })?;
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        let h = s.hdr();
        // SAFETY: header words, under the lock.
        let totals = unsafe { [(*h).entries, (*h).bytes, (*h).ngarbage as u64] };
        Ok((out, totals))
    }

    /// Calls `f` on every entry of bucket `b`, under the lock.
    pub(super) fn each_in_bucket(
        &self,
        b: u32,
        mut f: impl FnMut(*mut Entry) -> Result<(), DictError>,
    ) -> Result<usize, DictError> {
        let mut link: *const AtomicU32 = &self.bucket(b).head;
        for n in 0..MAX_CHAIN {
            // SAFETY: a bucket head or a checked entry's `next`.
            let off8 = unsafe { &*link }.load(Ordering::Relaxed);
            if off8 == 0 {
                return Ok(n);
            }
            let e = self
                .entry_at(off8)
                .ok_or_else(|| self.corrupt("a chain links outside the zone"))?;
            f(e)?;
            // SAFETY: checked entry.
            link = unsafe { &(*e).next };
        }
        Err(self.corrupt("a chain longer than any table can hold"))
    }

    /// The key of a checked entry.
    fn key_of(e: *const Entry) -> Vec<u8> {
        // SAFETY: checked entry: the key lies inside the zone.
        unsafe {
            std::slice::from_raw_parts(e.cast::<u8>().add(value_at(0)), (*e).klen as usize).to_vec()
        }
    }

    pub(super) fn check_inner(&self) -> Result<(), DictError> {
        let g = self.pool.lock();
        let s = self.section(&g)?;
        s.g.check_locked().map_err(|e| {
            log::error!("dictionary in shared zone \"{}\": {e}", self.name);
            self.corrupt("the zone's slab pool fails its check")
        })?;
        let h = s.hdr();
        // SAFETY: header words, under the lock.
        let (entries, bytes, np, garbage, ngarbage) = unsafe {
            (
                (*h).entries,
                (*h).bytes,
                (*h).npending,
                (*h).garbage,
                (*h).ngarbage,
            )
        };
        if np as usize > MAX_PENDING || np != 0 {
            return Err(self.corrupt("pending stripes left after a section began"));
        }
        for i in 0..=self.smask {
            if self.stripe(i).load(Ordering::Relaxed) & 1 == 1 {
                return Err(self.corrupt("an odd stripe with nothing pending"));
            }
        }
        let (mut n, mut total) = (0u64, 0u64);
        for b in 0..=self.mask {
            self.each_in_bucket(b, |e| {
                n += 1;
                total += self.check_entry(&s, e, b)?;
                Ok(())
            })?;
            if n > entries {
                return Err(self.corrupt("more entries in the table than counted"));
            }
        }
        if n != entries {
            return Err(self.corrupt("fewer entries in the table than counted"));
        }
        if total != bytes {
            return Err(self.corrupt("the byte total does not match the entries"));
        }
        let mut g = garbage;
        let mut seen = 0u64;
        while g != 0 {
            let node = self
                .node_at(g)
                .ok_or_else(|| self.corrupt("the garbage chain links outside the zone"))?;
            seen += 1;
            if seen > ngarbage as u64 {
                return Err(self.corrupt("the garbage chain is longer than counted"));
            }
            // SAFETY: a checked node.
            g = unsafe { (*node).next };
        }
        if seen != ngarbage as u64 {
            return Err(self.corrupt("the garbage chain is shorter than counted"));
        }
        Ok(())
    }

    /// Checks one entry; its counted bytes.
    fn check_entry(&self, _s: &Sec<'_, '_, 'z>, e: *mut Entry, b: u32) -> Result<u64, DictError> {
        let key = Self::key_of(e);
        // SAFETY: checked entry, under the lock.
        let (eh, kind, vlen) = unsafe { ((*e).hash, u32::from((*e).kind), (*e).vlen) };
        if hash(self.seed, &key) != eh || eh & self.mask != b {
            return Err(self.corrupt("an entry whose hash or bucket does not match its key"));
        }
        if key.is_empty() {
            return Err(self.corrupt("an entry with an empty key"));
        }
        match (kind, fixed_len(kind)) {
            (super::layout::K_BYTES, _) => {}
            (_, Some(n)) if n == vlen as usize => {}
            _ => return Err(self.corrupt("an entry of a bad kind or length")),
        }
        if kind != K_LIST {
            return Ok(key.len() as u64 + vlen as u64);
        }
        // SAFETY: a checked list entry.
        let l = unsafe {
            e.cast::<u8>()
                .add(value_at(key.len()))
                .cast::<super::layout::ListHead>()
                .read()
        };
        let lbytes = l.bytes;
        let (mut at, mut prev, mut n, mut sum) = (l.head, 0u32, 0u32, 0u64);
        while at != 0 {
            let node = self
                .node_at(at)
                .ok_or_else(|| self.corrupt("a list links outside the zone"))?;
            // SAFETY: a checked node.
            let nd = unsafe { node.read() };
            if nd.prev != prev {
                return Err(self.corrupt("a list's back link is wrong"));
            }
            n += 1;
            if n > l.len {
                return Err(self.corrupt("a list is longer than counted"));
            }
            sum += nd.len as u64;
            prev = at;
            at = nd.next;
        }
        if n != l.len || prev != l.tail || n == 0 {
            return Err(self.corrupt("a list's length or tail is wrong"));
        }
        if sum != lbytes as u64 {
            return Err(self.corrupt("a list's byte count is wrong"));
        }
        Ok(key.len() as u64 + sum)
    }

    pub(super) fn keys_inner(&self, cursor: u64, max: usize) -> Result<KeysPage, DictError> {
        let nb = self.mask as u64 + 1;
        let mut page = KeysPage::default();
        let mut b = cursor;
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let end = (cursor + SCAN_BUCKETS).min(nb);
        while b < end && page.keys.len() < max.max(1) {
            self.each_in_bucket(b as u32, |e| {
                if s.live(e) {
                    page.keys.push(Self::key_of(e));
                }
                Ok(())
            })?;
            b += 1;
        }
        page.next = (b < nb).then_some(b);
        Ok(page)
    }

    pub(super) fn largest_inner(&self, n: usize) -> Result<Vec<(Vec<u8>, usize)>, DictError> {
        let nb = self.mask as u64 + 1;
        let mut top: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut b = 0;
        while b < nb {
            let g = self.pool.lock();
            let s = self.section(&g)?;
            let end = (b + SCAN_BUCKETS).min(nb);
            while b < end {
                self.each_in_bucket(b as u32, |e| {
                    if s.live(e) {
                        // SAFETY: checked entry.
                        let (k, v, l, kind) = unsafe {
                            (
                                (*e).klen,
                                (*e).vlen,
                                super::layout::list_bytes(e),
                                u32::from((*e).kind),
                            )
                        };
                        let size = k as usize
                            + if kind == K_LIST {
                                l as usize
                            } else {
                                v as usize
                            };
                        if top.len() < n || top.last().is_some_and(|t| t.1 < size) {
                            top.push((Self::key_of(e), size));
                            top.sort_by_key(|t| std::cmp::Reverse(t.1));
                            top.truncate(n);
                        }
                    }
                    Ok(())
                })?;
                b += 1;
            }
        }
        Ok(top)
    }
}
