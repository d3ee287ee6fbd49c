//! A program interpreter for the `dict_ops` fuzz target (public, hidden, so
//! that tests run the very same decoding).
//!
//! The first input byte sizes the zone (8..=71 pages: small, so that
//! stores evict); then each operation is four bytes: opcode, key, two
//! argument bytes. Operations run against a model; after each one the
//! touched key must read back as the model says (or be missing, once the
//! dictionary has evicted something: the model then forgets it), errors
//! must be the contract's, and `check()` must pass. TTLs are not used
//! (they depend on the clock); `expire` sets a long one. When the first
//! byte has bit 6 (0x40) set, opcodes 224..=239 are `update` (keep, set,
//! put, delete, or an increment computed from the value read); the others
//! are taken modulo 14. (Inputs found before `update` existed, whose first
//! bytes all have that bit clear, replay as they did.)

use std::collections::{HashMap, VecDeque};

use super::{Dict, DictError, OwnedValue, Update, Value};
use crate::slab::{Pool, SLAB_PAGE};

#[derive(Clone, Debug, PartialEq)]
enum M {
    V(OwnedValue),
    L(VecDeque<OwnedValue>),
}

fn value(a: u8, b: u8) -> OwnedValue {
    match a % 4 {
        0 => OwnedValue::Int(i64::from(b) - 100),
        1 => OwnedValue::Float(f64::from(b) / 4.0),
        2 => OwnedValue::Bool(b & 1 == 1),
        _ => OwnedValue::Bytes(vec![a; (b as usize) * (1 + (a as usize >> 5))]),
    }
}

/// Runs one program; panics on any misbehaviour of the dictionary.
pub fn run(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let len = (8 + (first as usize % 64)) * SLAB_PAGE;
    let layout = std::alloc::Layout::from_size_align(len, SLAB_PAGE).expect("layout");
    // SAFETY: a non-zero size.
    let base = unsafe { std::alloc::alloc_zeroed(layout) };
    let Some(base) = std::ptr::NonNull::new(base) else {
        return;
    };
    // SAFETY: a fresh, page-aligned buffer of `len` bytes, used by nothing
    // else, freed after the dictionary is dropped.
    let pool = unsafe { Pool::init(base, len, "fuzz") }.expect("pool");
    // SAFETY: the buffer outlives `d` (dropped at the end of the block).
    match unsafe { Dict::init_pool(pool) } {
        Ok(d) => program(&d, rest, first & 0x40 != 0),
        Err(e) => panic!("init: {e}"),
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
}

fn program(d: &Dict<'_>, mut ops: &[u8], with_update: bool) {
    let mut model: HashMap<Vec<u8>, M> = HashMap::new();
    let mut evicted = false;
    while ops.len() >= 4 {
        let (op, k, a, b) = (ops[0], ops[1], ops[2], ops[3]);
        ops = &ops[4..];
        let key = format!("k{}", k % 48).into_bytes();
        let v = value(a, b);
        let before = d.stats().evictions;
        let mine = model.get(&key).cloned();
        if std::env::var_os("DICT_FUZZ_TRACE").is_some() {
            eprintln!("op {op} key {} a {a} b {b} mine {mine:?}", k % 48);
        }
        if with_update && (224..240).contains(&op) {
            update(d, &mut model, &key, a, &v, &mine, evicted);
        } else {
            step(d, &mut model, &key, op, a, b, v, &mine, evicted);
        }
        if d.stats().evictions != before {
            evicted = true;
        }
        check_key(d, &mut model, &key, evicted);
    }
    for k in model.keys() {
        let g = d.get_stale(k).unwrap_or(None);
        assert!(g.is_some() || evicted || matches!(model.get(k), Some(M::L(_))));
    }
}

/// One `update`: what the closure saw must be the model's value, and its
/// decision is applied to the model when the call succeeds.
fn update(
    d: &Dict<'_>,
    model: &mut HashMap<Vec<u8>, M>,
    key: &[u8],
    a: u8,
    v: &OwnedValue,
    mine: &Option<M>,
    evicted: bool,
) {
    let how = a % 5;
    let r = d.update(key, |cur| {
        let seen = cur.map(|c| match c.value {
            Value::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
            Value::Int(i) => OwnedValue::Int(i),
            Value::Float(x) => OwnedValue::Float(x),
            Value::Bool(b) => OwnedValue::Bool(b),
        });
        let next = match (how, &seen) {
            (3, Some(OwnedValue::Int(i))) => Some(OwnedValue::Int(i.wrapping_add(1))),
            (3, _) => Some(OwnedValue::Int(0)),
            (1 | 4, _) => Some(v.clone()),
            _ => None,
        };
        let decision = match how {
            0 => Update::Keep,
            1 => Update::Set(v.as_value()),
            2 => Update::Delete,
            // An integer: no borrow of the closure's own data needed.
            3 => Update::Set(Value::Int(
                next.as_ref().and_then(OwnedValue::as_int).unwrap_or(0),
            )),
            _ => Update::Put {
                value: v.as_value(),
                ttl_ms: 0,
                flags: u32::from(a),
            },
        };
        (decision, (seen, next))
    });
    match (r, mine) {
        (Ok((seen, next)), _) => {
            match (&seen, mine) {
                (Some(s), Some(M::V(m))) => assert_eq!(s, m, "update saw"),
                (None, None) => {}
                (None, Some(_)) if evicted => {}
                (s, m) => panic!("update saw {s:?}, model {m:?}"),
            }
            match how {
                0 if seen.is_none() => {
                    model.remove(key);
                }
                0 => {}
                2 => {
                    model.remove(key);
                }
                _ => {
                    model.insert(key.to_vec(), M::V(next.expect("a value")));
                }
            }
        }
        (Err(DictError::WrongType { .. }), Some(M::L(_))) => {}
        (Err(DictError::NoMemory { .. }), _) => {}
        (r, m) => panic!("update: {:?} with {m:?}", r.map(|_| ())),
    }
}

/// One of the other operations (opcode modulo 14).
#[allow(clippy::too_many_arguments)]
fn step(
    d: &Dict<'_>,
    model: &mut HashMap<Vec<u8>, M>,
    key: &[u8],
    op: u8,
    a: u8,
    b: u8,
    v: OwnedValue,
    mine: &Option<M>,
    evicted: bool,
) {
    let key = key.to_vec();
    let mine = mine.clone();
    {
        match op % 14 {
            0 | 1 => match d.set(&key, v.as_value(), 0, a as u32) {
                Ok(_) => {
                    model.insert(key.clone(), M::V(v));
                }
                Err(DictError::NoMemory { .. }) => {}
                Err(e) => panic!("set: {e}"),
            },
            2 => match d.safe_set(&key, v.as_value(), 0, 0) {
                Ok(_) => {
                    model.insert(key.clone(), M::V(v));
                }
                Err(DictError::NoMemory { forcible: false }) => {}
                Err(e) => panic!("safe_set: {e}"),
            },
            3 => match (d.add(&key, v.as_value(), 0, 0), &mine) {
                (Ok(_), None) => {
                    model.insert(key.clone(), M::V(v));
                }
                (Err(DictError::Exists), Some(_)) | (Err(DictError::NoMemory { .. }), None) => {}
                (Ok(_), Some(_)) if evicted => {
                    model.insert(key.clone(), M::V(v));
                }
                // The model's key was evicted earlier: `add` found it
                // absent and had no room.
                (Err(DictError::NoMemory { .. }), Some(_)) if evicted => {
                    model.remove(&key);
                }
                (r, m) => panic!("add: {r:?} with {m:?}"),
            },
            4 => match (d.replace(&key, v.as_value(), 0, 0), &mine) {
                (Ok(_), Some(_)) => {
                    model.insert(key.clone(), M::V(v));
                }
                (Err(DictError::NotFound), None) | (Err(DictError::NoMemory { .. }), Some(_)) => {}
                (Err(DictError::NotFound), Some(_)) if evicted => {
                    model.remove(&key);
                }
                (r, m) => panic!("replace: {r:?} with {m:?}"),
            },
            5 => {
                let r = d.delete(&key).expect("delete");
                assert!(r || mine.is_none() || evicted, "delete of {mine:?}");
                model.remove(&key);
            }
            6 => {
                let r = d.incr(&key, i64::from(a) - 128, Some(i64::from(b)), 0);
                match (&r, &mine) {
                    (Ok(n), Some(M::V(OwnedValue::Int(i)))) => assert!(
                        *n == i + i64::from(a) - 128
                            || (evicted && *n == i64::from(b) + i64::from(a) - 128)
                    ),
                    (Ok(n), _) => assert_eq!(*n, i64::from(b) + i64::from(a) - 128),
                    (Err(DictError::WrongType { .. }), Some(_)) => {}
                    (Err(DictError::NoMemory { .. }), _) => {}
                    _ => panic!("incr: {r:?} with {mine:?}"),
                }
                if let Ok(n) = r {
                    model.insert(key.clone(), M::V(OwnedValue::Int(n)));
                }
            }
            7 => {
                let r = d.cas(&key, value(b, a).as_value(), v.as_value());
                if let Ok(true) = r {
                    model.insert(key.clone(), M::V(v));
                }
            }
            8 | 9 => {
                let left = op % 14 == 8;
                let r = if left {
                    d.lpush(&key, v.as_value())
                } else {
                    d.rpush(&key, v.as_value())
                };
                match (r, model.get_mut(&key)) {
                    (Ok(n), Some(M::L(l))) => {
                        if left {
                            l.push_front(v.clone())
                        } else {
                            l.push_back(v.clone())
                        }
                        if n != l.len() {
                            // The list was evicted meanwhile: a new one.
                            assert!(evicted && n == 1, "push: {n} for {l:?}");
                            *l = VecDeque::from([v]);
                        }
                    }
                    (Ok(n), _) => {
                        assert!(n == 1 || evicted);
                        model.insert(key.clone(), M::L(VecDeque::from([v])));
                    }
                    (Err(DictError::WrongType { .. }), Some(M::V(_))) => {}
                    (Err(DictError::NoMemory { .. }), _) => {}
                    (r, m) => panic!("push: {r:?} with {m:?}"),
                }
            }
            10 => {
                let r = if a & 1 == 0 {
                    d.lpop(&key)
                } else {
                    d.rpop(&key)
                };
                match (r, model.get_mut(&key)) {
                    (Ok(Some(got)), Some(M::L(l))) => {
                        let want = if a & 1 == 0 {
                            l.pop_front()
                        } else {
                            l.pop_back()
                        };
                        assert_eq!(Some(got), want);
                        if l.is_empty() {
                            model.remove(&key);
                        }
                    }
                    (Ok(None), None) => {}
                    (Ok(None), Some(_)) if evicted => {
                        model.remove(&key);
                    }
                    (Err(DictError::WrongType { .. }), Some(M::V(_))) => {}
                    (r, m) => panic!("pop: {r:?} with {m:?}"),
                }
            }
            11 => {
                d.flush_all().expect("flush_all");
                model.clear();
                d.flush_expired(b as usize).expect("flush_expired");
            }
            12 => {
                let r = d.expire(&key, 3_600_000);
                assert!(
                    r.is_ok() == mine.is_some() || evicted,
                    "expire: {r:?} {mine:?}"
                );
            }
            _ => {
                let page = d.keys(u64::from(a) * 8, b as usize).expect("keys");
                for k in page.keys {
                    assert!(model.contains_key(&k) || evicted);
                }
            }
        }
    }
}

/// After each operation: the touched key reads back as the model says,
/// and the table checks.
fn check_key(d: &Dict<'_>, model: &mut HashMap<Vec<u8>, M>, key: &[u8], evicted: bool) {
    {
        // The key reads back as the model says.
        let got = match d.get(key) {
            Ok(g) => g.map(|g| M::V(g.value)),
            Err(DictError::WrongType { .. }) => {
                let n = d.llen(key).expect("llen");
                match model.get(key) {
                    Some(M::L(l)) => assert_eq!(n, l.len()),
                    m => panic!("a list where the model has {m:?}"),
                }
                model.get(key).cloned()
            }
            Err(e) => panic!("get: {e}"),
        };
        match (&got, model.get(key)) {
            (a, b) if a.as_ref() == b => {}
            (None, Some(_)) if evicted => {
                model.remove(key);
            }
            (a, b) => panic!(
                "{:?}: dict {a:?}, model {b:?}",
                String::from_utf8_lossy(key)
            ),
        }
        d.check().unwrap_or_else(|e| panic!("check: {e}"));
    }
}
