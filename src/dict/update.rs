//! Read-modify-write in one locked section: [`Dict::update`].
//!
//! The other writes take a value decided before the call (`set`, `incr`'s
//! delta, `cas`'s expected value). A rate limiter, a token bucket, a
//! bounded counter or a "last seen" record decide the new value from the
//! old one; with `get` + `cas` that is two lock holds per call and a retry
//! loop under contention. `update` reads the live value, hands it to a
//! closure, and applies what the closure decides, all under one hold of
//! the zone lock and in one crash-atomic section (as lua-nginx-module's
//! `incr` does for numbers, and nginx's `limit_req` does for its nodes,
//! here for any value).

use std::sync::atomic::Ordering;

use super::layout::{bump, entry_size, hash, value_at, K_BYTES, K_LIST};
use super::ops::expiry;
use super::value::{decode_small, kind_name, Encoded};
use super::{Dict, DictError, OwnedValue, Value};

/// The live value an [`update`](Dict::update) closure sees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Current<'a> {
    /// The value; bytes are borrowed from the zone (valid only inside the
    /// closure, while the lock is held).
    pub value: Value<'a>,
    /// Its user flags.
    pub flags: u32,
    /// The time it has left in ms, `None` if it never expires.
    pub ttl_ms: Option<u64>,
}

/// What an [`update`](Dict::update) closure decides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Update<'v> {
    /// Change nothing.
    Keep,
    /// Store this value. An existing entry keeps its flags and expiry; a
    /// new one gets flags 0 and no TTL.
    Set(Value<'v>),
    /// Store this value with these flags, expiring after `ttl_ms` from now
    /// (0: never).
    Put {
        /// The value.
        value: Value<'v>,
        /// Time to live in ms (0: never expires).
        ttl_ms: u64,
        /// User flags.
        flags: u32,
    },
    /// Remove the key (nothing to do if it has no entry).
    Delete,
}

impl<'z> Dict<'z> {
    /// Reads the live value of `key` (`None` if it has none), calls `f`
    /// with it, and applies the [`Update`] `f` returns, all in one hold of
    /// the zone lock: no other process changes the key in between, so
    /// there is no retry loop. Returns what `f` returned beside its
    /// decision.
    ///
    /// Crash-atomic like every write: a process killed anywhere in it
    /// leaves the dictionary as before the call. `f` runs before anything
    /// is written, so if it panics the lock is released (by unwinding, or
    /// by recovery if panics abort) and nothing has changed.
    ///
    /// `f` runs with the zone lock held: keep it short, and do not call
    /// this dictionary's writing methods (or anything else that takes the
    /// same zone's lock) from it: the lock is not recursive, that call
    /// would wait forever.
    ///
    /// A leaky bucket (nginx's `limit_req`: 1 request/s, burst 5), with
    /// the excess in ms of work kept as an integer:
    ///
    /// ```
    /// # let zones = shmzone::Zones::builder().dict("d", 1 << 20).build()?;
    /// # let d = shmzone::dict::Dict::open(&zones.get("d").unwrap())?;
    /// use shmzone::dict::{Update, Value};
    /// let now_ms = 1_000_000i64;
    /// let allowed = d.update(b"bucket:me", |cur| {
    ///     // The bucket holds the time at which it will be empty again.
    ///     let empty_at = match cur.map(|c| c.value) {
    ///         Some(Value::Int(t)) => t.max(now_ms),
    ///         _ => now_ms,
    ///     };
    ///     if empty_at - now_ms > 5_000 {
    ///         (Update::Keep, false)
    ///     } else {
    ///         let v = Value::Int(empty_at + 1_000);
    ///         (Update::Put { value: v, ttl_ms: 7_000, flags: 0 }, true)
    ///     }
    /// })?;
    /// assert!(allowed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// A new byte value is borrowed for `'v`, which outlives the call: make
    /// its buffer before the call and move a `&mut` to it into `f` (or
    /// return an integer, float or boolean, which need no buffer).
    ///
    /// # Errors
    /// A bad key; [`DictError::WrongType`] if the key holds a list (`f` is
    /// not called); for a store, as [`set`](Self::set) (then nothing
    /// changed, and `f`'s result is dropped).
    pub fn update<'v, R, F>(&self, key: &[u8], f: F) -> Result<R, DictError>
    where
        F: for<'a> FnOnce(Option<Current<'a>>) -> (Update<'v>, R),
    {
        Self::check_key(key)?;
        let h = hash(self.seed, key);
        let g = self.pool.lock();
        let s = self.section(&g)?;
        let found = s.find(h, key)?;
        let live = found.filter(|f| s.live(f.e));
        let cur = match live {
            None => None,
            Some(fd) => {
                let e = fd.e;
                // SAFETY: a checked entry (its key and value lie inside the
                // zone), read under the lock; only lock holders write it,
                // and nothing is written until `f` has returned.
                let (kind, klen, vlen, flags, exp) = unsafe {
                    (
                        u32::from((*e).kind),
                        (*e).klen as usize,
                        (*e).vlen as usize,
                        (*e).flags,
                        (*e).expires,
                    )
                };
                if kind == K_LIST {
                    return Err(DictError::WrongType {
                        found: kind_name(kind),
                    });
                }
                // SAFETY: as above.
                let bytes =
                    unsafe { std::slice::from_raw_parts(e.cast::<u8>().add(value_at(klen)), vlen) };
                let value = if kind == K_BYTES {
                    Value::Bytes(bytes)
                } else {
                    match decode_small(kind, bytes) {
                        Some(OwnedValue::Int(i)) => Value::Int(i),
                        Some(OwnedValue::Float(x)) => Value::Float(x),
                        Some(OwnedValue::Bool(b)) => Value::Bool(b),
                        _ => return Err(self.corrupt("a value of a bad length")),
                    }
                };
                let ttl_ms = (exp != 0).then(|| exp.saturating_sub(s.now()));
                Some(Current {
                    value,
                    flags,
                    ttl_ms,
                })
            }
        };
        let (decision, out) = f(cur);
        let (value, flags, exp) = match decision {
            Update::Keep => {
                if let Some(fd) = live {
                    self.bucket(fd.bucket)
                        .referenced
                        .store(1, Ordering::Relaxed);
                }
                return Ok(out);
            }
            Update::Delete => {
                let Some(fd) = found else {
                    return Ok(out);
                };
                self.remove_found(&s, &fd)?;
                return Ok(out);
            }
            Update::Set(v) => match live {
                // SAFETY: a checked entry, under the lock.
                Some(fd) => (v, unsafe { (*fd.e).flags }, unsafe { (*fd.e).expires }),
                None => (v, 0, 0),
            },
            Update::Put {
                value,
                ttl_ms,
                flags,
            } => (value, flags, expiry(&s, ttl_ms)),
        };
        let v = Encoded::new(value);
        self.check_value(&v)?;
        bump(&self.h().sets);
        // `put` rolls back its own part; this also undoes what `tidy` freed.
        s.all_or_nothing(|| {
            self.tidy(
                &s,
                Self::store_need(entry_size(key.len(), v.as_slice().len())),
            )?;
            self.put(&s, h, key, &v, flags, exp, found, true)
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::{DictError, OwnedValue};
    use crate::Zones;

    fn zones(size: usize) -> Zones {
        Zones::builder().dict("d", size).build().expect("zones")
    }

    fn owned(v: Value<'_>) -> OwnedValue {
        match v {
            Value::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
            Value::Int(i) => OwnedValue::Int(i),
            Value::Float(x) => OwnedValue::Float(x),
            Value::Bool(b) => OwnedValue::Bool(b),
        }
    }

    #[test]
    fn creates_reads_sets_keeps_and_deletes() {
        let z = zones(1 << 20);
        let d = Dict::open(&z.get("d").unwrap()).unwrap();
        // A new key: the closure sees None; Put sets flags and TTL.
        let seen = d
            .update(b"k", |cur| {
                let v = Value::Int(1);
                (
                    Update::Put {
                        value: v,
                        ttl_ms: 60_000,
                        flags: 7,
                    },
                    cur.is_none(),
                )
            })
            .unwrap();
        assert!(seen);
        let g = d.get(b"k").unwrap().unwrap();
        assert_eq!((g.value, g.flags), (OwnedValue::Int(1), 7));
        // Set keeps flags and expiry; the closure sees them.
        let cur = d
            .update(b"k", |cur| {
                let c = cur.expect("live");
                let Value::Int(i) = c.value else {
                    panic!("{c:?}")
                };
                (Update::Set(Value::Int(i + 41)), (c.flags, c.ttl_ms))
            })
            .map(|(f, t)| (f, t.is_some_and(|t| t <= 60_000 && t > 50_000)))
            .unwrap();
        assert_eq!(cur, (7, true));
        let g = d.get(b"k").unwrap().unwrap();
        assert_eq!((g.value, g.flags), (OwnedValue::Int(42), 7));
        assert!(d.ttl(b"k").unwrap().is_some());
        // Another type and size, bytes from a buffer made before the call.
        let mut buf = [0u8; 32];
        let b = &mut buf;
        d.update(b"k", move |cur| {
            let Some(Value::Int(i)) = cur.map(|c| c.value) else {
                panic!()
            };
            b[..8].copy_from_slice(&i.to_le_bytes());
            (Update::Set(Value::Bytes(&b[..])), ())
        })
        .unwrap();
        let g = d.get(b"k").unwrap().unwrap();
        let mut want = vec![0u8; 32];
        want[..8].copy_from_slice(&42i64.to_le_bytes());
        assert_eq!((g.value, g.flags), (OwnedValue::Bytes(want.clone()), 7));
        // Keep changes nothing; the closure saw the bytes.
        let sets = d.stats().sets;
        let saw = d
            .update(b"k", |cur| (Update::Keep, cur.map(|c| owned(c.value))))
            .unwrap();
        assert_eq!(saw, Some(OwnedValue::Bytes(want)));
        assert_eq!(d.stats().sets, sets);
        // Delete, then the key is gone; Delete of a missing key is fine.
        d.update(b"k", |_| (Update::Delete, ())).unwrap();
        assert_eq!(d.get(b"k").unwrap(), None);
        d.update(b"k", |_| (Update::Delete, ())).unwrap();
        // Keep on a missing key makes nothing.
        d.update(b"k", |_| (Update::Keep, ())).unwrap();
        assert_eq!(d.get(b"k").unwrap(), None);
        // Set on a missing key: flags 0, no TTL.
        d.update(b"k", |_| (Update::Set(Value::Bool(true)), ()))
            .unwrap();
        let g = d.get(b"k").unwrap().unwrap();
        assert_eq!((g.value, g.flags), (OwnedValue::Bool(true), 0));
        assert_eq!(d.ttl(b"k").unwrap(), None);
        assert_eq!(d.len(), 1);
        d.check().unwrap();
    }

    #[test]
    fn an_expired_value_is_not_seen_and_is_replaced() {
        let z = zones(1 << 20);
        let d = Dict::open(&z.get("d").unwrap()).unwrap();
        d.set(b"e", 5i64, 1, 3).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let seen = d
            .update(b"e", |cur| (Update::Set(Value::Int(9)), cur.is_some()))
            .unwrap();
        assert!(!seen);
        let g = d.get(b"e").unwrap().unwrap();
        // A new value: the expired entry's flags and expiry are not kept.
        assert_eq!((g.value, g.flags), (OwnedValue::Int(9), 0));
        assert_eq!(d.ttl(b"e").unwrap(), None);
        assert_eq!(d.len(), 1);
        d.check().unwrap();
    }

    #[test]
    fn lists_and_bad_keys_are_errors_without_calling_the_closure() {
        let z = zones(1 << 20);
        let d = Dict::open(&z.get("d").unwrap()).unwrap();
        d.rpush(b"l", 1i64).unwrap();
        let mut called = false;
        let r = d.update(b"l", |_| {
            called = true;
            (Update::Delete, ())
        });
        assert!(matches!(r, Err(DictError::WrongType { .. })), "{r:?}");
        assert_eq!(d.llen(b"l").unwrap(), 1);
        assert_eq!(
            d.update(b"", |_| (Update::Keep, ())),
            Err(DictError::EmptyKey)
        );
        assert!(!called);
    }

    #[test]
    fn a_failed_store_changes_nothing() {
        let z = zones(1 << 20);
        let d = Dict::open(&z.get("d").unwrap()).unwrap();
        d.set(b"k", "old", 0, 1).unwrap();
        let big = vec![1u8; 1 << 20];
        let r = d.update(b"k", |_| (Update::Set(Value::Bytes(&big)), ()));
        assert!(matches!(r, Err(DictError::ValueTooLarge { .. })), "{r:?}");
        let g = d.get(b"k").unwrap().unwrap();
        assert_eq!(g.value, OwnedValue::Bytes(b"old".to_vec()));
        d.check().unwrap();
    }

    #[test]
    fn a_panicking_closure_releases_the_lock_and_changes_nothing() {
        let z = zones(1 << 20);
        let d = Dict::open(&z.get("d").unwrap()).unwrap();
        d.set(b"k", 1i64, 0, 0).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            d.update(b"k", |_| -> (Update<'static>, ()) {
                panic!("decided to panic")
            })
        }));
        assert!(r.is_err());
        assert_eq!(d.zone_name(), "d");
        assert_eq!(z.get("d").unwrap().mutex().holder(), None);
        // The lock is free: a write goes through, the value was unchanged.
        assert_eq!(d.incr(b"k", 1, None, 0), Ok(2));
        d.check().unwrap();
    }

    #[test]
    fn a_leaky_bucket_counts_exactly() {
        let z = zones(1 << 20);
        let d = Dict::open(&z.get("d").unwrap()).unwrap();
        // 1 request per second, burst 3, at a fixed "now": 4 pass (one
        // plus the burst), the rest are refused and leave the bucket as
        // it was.
        let now = 10_000i64;
        let mut allowed = 0;
        for _ in 0..10 {
            let ok = d
                .update(b"b", |cur| {
                    let empty_at = match cur.map(|c| c.value) {
                        Some(Value::Int(t)) => t.max(now),
                        _ => now,
                    };
                    if empty_at - now > 3_000 {
                        (Update::Keep, false)
                    } else {
                        (Update::Set(Value::Int(empty_at + 1_000)), true)
                    }
                })
                .unwrap();
            allowed += usize::from(ok);
        }
        assert_eq!(allowed, 4);
        assert_eq!(d.get(b"b").unwrap().unwrap().value, OwnedValue::Int(14_000));
    }
}
