//! The public calls of [`Dict`].

use super::check::KeysPage;
use super::ops::Mode;
use super::{Dict, DictError, Got, OwnedValue, Stored, Value};

impl<'z> Dict<'z> {
    /// The value of `key` and its flags, `None` if it has no live value.
    /// Never takes the lock unless a writer keeps changing the key's
    /// stripe or died while changing it.
    ///
    /// ```
    /// # let zones = shmzone::Zones::builder().dict("d", 1 << 20).build()?;
    /// # let d = shmzone::dict::Dict::open(&zones.get("d").unwrap())?;
    /// use shmzone::dict::OwnedValue;
    /// d.set(b"n", 42i64, 0, 0)?;
    /// assert_eq!(d.get(b"n")?.unwrap().value, OwnedValue::Int(42));
    /// assert_eq!(d.get(b"nope")?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// A bad key; [`DictError::WrongType`] for a list.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Result<Option<Got>, DictError> {
        self.get_inner(key, false)
    }

    /// As [`get`](Self::get), also returning an expired value (with
    /// [`Got::stale`] set) whose memory was not reused yet.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn get_stale(&self, key: &[u8]) -> Result<Option<Got>, DictError> {
        self.get_inner(key, true)
    }

    /// Stores `value` with `flags`, expiring after `ttl_ms` (0: never),
    /// evicting (expired entries first, then the least recently used) if
    /// memory is short.
    ///
    /// # Errors
    /// A bad key or value; [`DictError::NoMemory`] if 30 evictions did not
    /// make room (nothing changed: the evicted entries are back).
    #[inline]
    pub fn set<'v>(
        &self,
        key: &[u8],
        value: impl Into<Value<'v>>,
        ttl_ms: u64,
        flags: u32,
    ) -> Result<Stored, DictError> {
        self.store(key, value.into(), ttl_ms, flags, Mode::Set, true)
    }

    /// As [`set`](Self::set), never evicting a live or expired entry. If
    /// the new value does not fit, **the old value stays** (shdict deletes
    /// it).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn safe_set<'v>(
        &self,
        key: &[u8],
        value: impl Into<Value<'v>>,
        ttl_ms: u64,
        flags: u32,
    ) -> Result<Stored, DictError> {
        self.store(key, value.into(), ttl_ms, flags, Mode::Set, false)
    }

    /// As [`set`](Self::set), only if `key` has no live value.
    ///
    /// # Errors
    /// [`DictError::Exists`], or as [`set`](Self::set).
    pub fn add<'v>(
        &self,
        key: &[u8],
        value: impl Into<Value<'v>>,
        ttl_ms: u64,
        flags: u32,
    ) -> Result<Stored, DictError> {
        self.store(key, value.into(), ttl_ms, flags, Mode::Add, true)
    }

    /// As [`add`](Self::add), never evicting.
    ///
    /// # Errors
    /// As [`add`](Self::add).
    pub fn safe_add<'v>(
        &self,
        key: &[u8],
        value: impl Into<Value<'v>>,
        ttl_ms: u64,
        flags: u32,
    ) -> Result<Stored, DictError> {
        self.store(key, value.into(), ttl_ms, flags, Mode::Add, false)
    }

    /// As [`set`](Self::set), only if `key` has a live value.
    ///
    /// # Errors
    /// [`DictError::NotFound`], or as [`set`](Self::set).
    pub fn replace<'v>(
        &self,
        key: &[u8],
        value: impl Into<Value<'v>>,
        ttl_ms: u64,
        flags: u32,
    ) -> Result<Stored, DictError> {
        self.store(key, value.into(), ttl_ms, flags, Mode::Replace, true)
    }

    /// Removes `key`; whether it had a live value.
    ///
    /// # Errors
    /// A bad key.
    pub fn delete(&self, key: &[u8]) -> Result<bool, DictError> {
        self.delete_inner(key)
    }

    /// Adds `delta` to the integer at `key` and returns the sum. A key
    /// without a live value is created as `init + delta` with TTL
    /// `init_ttl_ms` (if `init` is given).
    ///
    /// ```
    /// # let zones = shmzone::Zones::builder().dict("d", 1 << 20).build()?;
    /// # let d = shmzone::dict::Dict::open(&zones.get("d").unwrap())?;
    /// assert_eq!(d.incr(b"c", 5, Some(10), 0)?, 15);
    /// assert_eq!(d.incr(b"c", -1, None, 0)?, 14);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`DictError::NotFound`] (no value, no `init`),
    /// [`DictError::WrongType`] (not an integer), [`DictError::Overflow`].
    #[inline]
    pub fn incr(
        &self,
        key: &[u8],
        delta: i64,
        init: Option<i64>,
        init_ttl_ms: u64,
    ) -> Result<i64, DictError> {
        self.incr_inner(key, delta, init, init_ttl_ms)
    }

    /// Stores `new` if the live value of `key` equals `expected` (same type
    /// and bytes); flags and expiry stay. Whether it swapped.
    ///
    /// # Errors
    /// [`DictError::NotFound`], or as [`set`](Self::set).
    pub fn cas<'a, 'b>(
        &self,
        key: &[u8],
        expected: impl Into<Value<'a>>,
        new: impl Into<Value<'b>>,
    ) -> Result<bool, DictError> {
        self.cas_inner(key, expected.into(), new.into())
    }

    /// The time `key` has left in ms, `None` if it never expires. Reads
    /// without the lock, as [`get`](Self::get).
    ///
    /// # Errors
    /// [`DictError::NotFound`] if it has no live value.
    pub fn ttl(&self, key: &[u8]) -> Result<Option<u64>, DictError> {
        self.ttl_inner(key)
    }

    /// Sets the TTL of a live `key` (0: never expires).
    ///
    /// # Errors
    /// [`DictError::NotFound`].
    pub fn expire(&self, key: &[u8], ttl_ms: u64) -> Result<(), DictError> {
        self.expire_inner(key, ttl_ms)
    }

    /// Makes every entry expired, in one store. Their memory is reused as
    /// needed (or freed by [`flush_expired`](Self::flush_expired));
    /// [`get_stale`](Self::get_stale) still sees them until then.
    ///
    /// # Errors
    /// Only if the zone is fenced.
    pub fn flush_all(&self) -> Result<(), DictError> {
        self.flush_all_inner()
    }

    /// Frees expired entries, at most `max` (0: all); how many. Holds the
    /// lock for a batch of buckets at a time, never for the whole table.
    ///
    /// # Errors
    /// A broken table.
    pub fn flush_expired(&self, max: usize) -> Result<usize, DictError> {
        self.flush_expired_inner(max)
    }

    /// One step of iteration over the live keys: start with cursor 0, go
    /// on with [`KeysPage::next`] until it is `None`. Each step holds the
    /// lock for at most 1,024 buckets and returns whole buckets' keys (at
    /// least `max` when there are that many).
    ///
    /// Guarantee (the table never resizes): a key that is live and not
    /// deleted from the first step to the last is returned exactly once;
    /// keys added or deleted meanwhile may or may not be.
    ///
    /// # Errors
    /// A broken table.
    pub fn keys(&self, cursor: u64, max: usize) -> Result<KeysPage, DictError> {
        self.keys_inner(cursor, max)
    }

    /// The `n` largest live entries (key and bytes of key + value), for
    /// inspection. Walks the table a batch at a time.
    ///
    /// # Errors
    /// A broken table.
    pub fn largest(&self, n: usize) -> Result<Vec<(Vec<u8>, usize)>, DictError> {
        self.largest_inner(n)
    }

    /// Pushes `value` at the head of the list at `key` (made if missing);
    /// the new length.
    ///
    /// # Errors
    /// [`DictError::WrongType`] if the value is not a list, or as
    /// [`set`](Self::set).
    pub fn lpush<'v>(&self, key: &[u8], value: impl Into<Value<'v>>) -> Result<usize, DictError> {
        self.push_inner(key, value.into(), true)
    }

    /// Pushes at the tail; as [`lpush`](Self::lpush).
    ///
    /// # Errors
    /// As [`lpush`](Self::lpush).
    pub fn rpush<'v>(&self, key: &[u8], value: impl Into<Value<'v>>) -> Result<usize, DictError> {
        self.push_inner(key, value.into(), false)
    }

    /// Takes the head item of the list at `key` (`None`: no list). The key
    /// goes when its last item does.
    ///
    /// # Errors
    /// [`DictError::WrongType`] if the value is not a list.
    pub fn lpop(&self, key: &[u8]) -> Result<Option<OwnedValue>, DictError> {
        self.pop_inner(key, true)
    }

    /// Takes the tail item; as [`lpop`](Self::lpop).
    ///
    /// # Errors
    /// As [`lpop`](Self::lpop).
    pub fn rpop(&self, key: &[u8]) -> Result<Option<OwnedValue>, DictError> {
        self.pop_inner(key, false)
    }

    /// The length of the list at `key` (0: none).
    ///
    /// # Errors
    /// [`DictError::WrongType`] if the value is not a list.
    pub fn llen(&self, key: &[u8]) -> Result<usize, DictError> {
        self.llen_inner(key)
    }

    /// Walks the whole table (and the zone's pool) under the lock and
    /// names the first broken invariant: chains inside the zone and
    /// bounded, hashes and buckets matching keys, kinds and lengths, lists'
    /// links and counts, the entry and byte totals, the garbage chain, no
    /// stripe left odd.
    ///
    /// # Errors
    /// [`DictError::Corrupt`].
    pub fn check(&self) -> Result<(), DictError> {
        self.check_inner()
    }
}
