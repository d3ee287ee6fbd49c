//! Lists: `lpush`, `rpush`, `lpop`, `rpop`, `llen` (under the lock; a
//! list's items are nodes linked from a [`ListHead`] in the entry's value).
//! A deleted or evicted list's nodes go to a garbage chain that later
//! sections free a few at a time, so that no section has to free a whole
//! list at once.

use super::layout::bump;
use super::layout::{entry_size, hash, value_at, Entry, ListHead, Node, K_LIST};
use super::section::{Sec, ALLOC_NEED, FINISH_NEED};
use super::value::{decode, kind_name, Encoded};
use super::{Dict, DictError, OwnedValue, Value};

/// The block size of a list node holding `len` bytes.
fn node_size(len: usize) -> usize {
    std::mem::size_of::<Node>() + len
}

impl<'z> Dict<'z> {
    /// The ListHead of a list entry.
    fn list_head(e: *mut Entry) -> *mut ListHead {
        // SAFETY: a checked list entry: its 16-byte value is a ListHead
        // (value_at is 8-aligned).
        unsafe { e.cast::<u8>().add(value_at((*e).klen as usize)).cast() }
    }

    /// `lpush`/`rpush`: the list's new length.
    pub(super) fn push_inner(
        &self,
        key: &[u8],
        value: Value<'_>,
        left: bool,
    ) -> Result<usize, DictError> {
        Self::check_key(key)?;
        let v = Encoded::new(value);
        self.check_value(&v)?;
        let bytes = v.as_slice();
        if bytes.len() > u32::MAX as usize / 2 {
            return Err(DictError::ValueTooLarge {
                len: bytes.len(),
                max: u32::MAX as usize / 2,
            });
        }
        let h = hash(self.seed, key);
        self.after_gc(|first| {
            let g = self.pool.lock();
            let s = self.section(&g)?;
            let found = s.find(h, key)?;
            let live = found.filter(|f| s.live(f.e));
            if let Some(f) = live {
                // SAFETY: a checked entry.
                let kind = unsafe { u32::from((*f.e).kind) };
                if kind != K_LIST {
                    return Err(DictError::WrongType {
                        found: kind_name(kind),
                    });
                }
            }
            if first {
                bump(&self.h().sets);
            }
            self.tidy(
                &s,
                2 * ALLOC_NEED
                    + 3 * FINISH_NEED
                    + Self::max_fill(entry_size(key.len(), 16))
                    + Self::max_fill(node_size(bytes.len())),
            )?;
            s.all_or_nothing(|| {
                self.push_locked(&s, h, key, bytes, v.kind, left, found, live.map(|f| f.e))
            })
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn push_locked(
        &self,
        s: &Sec<'_, '_, 'z>,
        h: u32,
        key: &[u8],
        bytes: &[u8],
        kind: u32,
        left: bool,
        found: Option<super::section::Found>,
        live: Option<*mut Entry>,
    ) -> Result<usize, DictError> {
        let e = match live {
            Some(e) => e,
            None => {
                if let Some(f) = found {
                    // Expired: replaced by a new list.
                    s.unlink(&f)?;
                    s.free_entry(f.e)?;
                }
                let size = entry_size(key.len(), 16);
                // Keeps what the node's allocation below needs.
                let later = Self::room_need(node_size(bytes.len()));
                let (p, _) = self.room(s, size, std::ptr::null(), true, later)?;
                let e = s.insert(p, h, key, K_LIST, &[0u8; 16], 0, 0)?;
                s.totals(0, -16)?;
                e
            }
        };
        let (p, _) = self.room(s, node_size(bytes.len()), e, true, 0)?;
        let node = p.cast::<Node>();
        let lh = Self::list_head(e);
        // SAFETY: `lh` is inside a checked list entry; `node` is fresh.
        let mut l = unsafe { lh.read() };
        let me = self.off8(p);
        s.fill(p, std::mem::size_of::<Node>() + bytes.len())?;
        // SAFETY: a fresh allocation of Node + bytes (overlap with blocks
        // freed in this section saved just above).
        unsafe {
            node.write(Node {
                next: if left { l.head } else { 0 },
                prev: if left { 0 } else { l.tail },
                len: bytes.len() as u32,
                kind,
            });
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.add(16), bytes.len());
        }
        let neighbour = if left { l.head } else { l.tail };
        if neighbour != 0 {
            let n = self
                .node_at(neighbour)
                .ok_or_else(|| self.corrupt("a list links outside the zone"))?;
            // SAFETY: a checked node's link word, written under the lock.
            unsafe {
                if left {
                    s.g.write(std::ptr::addr_of_mut!((*n).prev), me)?;
                } else {
                    s.g.write(std::ptr::addr_of_mut!((*n).next), me)?;
                }
            }
        }
        if left {
            if l.head == 0 {
                l.tail = me;
            }
            l.head = me;
        } else {
            if l.tail == 0 {
                l.head = me;
            }
            l.tail = me;
        }
        l.len += 1;
        l.bytes = l.bytes.wrapping_add(bytes.len() as u32);
        // SAFETY: the ListHead is inside the checked entry, written under
        // the lock.
        unsafe { s.g.write(lh, l)? };
        s.totals(0, bytes.len() as i64)?;
        Ok(l.len as usize)
    }

    /// `lpop`/`rpop`.
    pub(super) fn pop_inner(
        &self,
        key: &[u8],
        left: bool,
    ) -> Result<Option<OwnedValue>, DictError> {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let Some(f) = s.find(h, key)?.filter(|f| s.live(f.e)) else {
            return Ok(None);
        };
        // SAFETY: a checked entry.
        let kind = unsafe { u32::from((*f.e).kind) };
        if kind != K_LIST {
            return Err(DictError::WrongType {
                found: kind_name(kind),
            });
        }
        s.all_or_nothing(|| self.pop_locked(&s, &f, left))
    }

    fn pop_locked(
        &self,
        s: &Sec<'_, '_, 'z>,
        f: &super::section::Found,
        left: bool,
    ) -> Result<Option<OwnedValue>, DictError> {
        let e = f.e;
        let lh = Self::list_head(e);
        // SAFETY: inside the checked list entry.
        let mut l = unsafe { lh.read() };
        let at = if left { l.head } else { l.tail };
        let bad = || self.corrupt("a list links outside the zone");
        let node = self.node_at(at).ok_or_else(bad)?;
        // SAFETY: a checked node: header and `len` bytes inside the zone.
        let (nd, value) = unsafe {
            let nd = node.read();
            let b = std::slice::from_raw_parts(node.cast::<u8>().add(16), nd.len as usize);
            (nd, decode(nd.kind, b))
        };
        let value = value.ok_or_else(|| self.corrupt("a list item of a bad length"))?;
        let other = if left { nd.next } else { nd.prev };
        if other != 0 {
            let o = self.node_at(other).ok_or_else(bad)?;
            // SAFETY: a checked node's link word, written under the lock.
            unsafe {
                if left {
                    s.g.write(std::ptr::addr_of_mut!((*o).prev), 0)?;
                } else {
                    s.g.write(std::ptr::addr_of_mut!((*o).next), 0)?;
                }
            }
        }
        if left {
            l.head = other;
        } else {
            l.tail = other;
        }
        if other == 0 {
            l.head = 0;
            l.tail = 0;
        }
        l.len = l.len.saturating_sub(1);
        l.bytes = if l.len == 0 {
            0
        } else {
            l.bytes.wrapping_sub(nd.len)
        };
        s.free(node.cast(), std::mem::size_of::<Node>() + nd.len as usize)?;
        s.totals(0, -(nd.len as i64))?;
        if l.len == 0 {
            // SAFETY: a write inside the checked entry, under the lock.
            unsafe { s.g.write(lh, l)? };
            s.unlink(f)?;
            s.free_entry(e)?;
        } else {
            // SAFETY: as above.
            unsafe { s.g.write(lh, l)? };
        }
        Ok(Some(value))
    }

    /// `llen`.
    pub(super) fn llen_inner(&self, key: &[u8]) -> Result<usize, DictError> {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let Some(f) = s.find(h, key)?.filter(|f| s.live(f.e)) else {
            return Ok(0);
        };
        // SAFETY: a checked entry.
        let kind = unsafe { u32::from((*f.e).kind) };
        if kind != K_LIST {
            return Err(DictError::WrongType {
                found: kind_name(kind),
            });
        }
        // SAFETY: inside the checked list entry.
        Ok(unsafe { Self::list_head(f.e).read() }.len as usize)
    }
}
