//! Unit tests: every call against a model, in one process.

use std::collections::HashMap;

use super::*;
use crate::Zones;

fn zones(size: usize) -> Zones {
    Zones::builder().dict("d", size).build().expect("zones")
}

fn int(v: i64) -> OwnedValue {
    OwnedValue::Int(v)
}

#[test]
fn values_flags_and_types_round_trip() {
    let z = zones(1 << 20);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    d.set(b"b", "bytes", 0, 3).unwrap();
    d.set(b"i", -5i64, 0, 0).unwrap();
    d.set(b"f", 2.5f64, 0, 0).unwrap();
    d.set(b"t", true, 0, u32::MAX).unwrap();
    d.set(b"e", "", 0, 0).unwrap();
    let g = |k: &[u8]| d.get(k).unwrap().unwrap();
    assert_eq!(
        (g(b"b").value, g(b"b").flags),
        (OwnedValue::Bytes(b"bytes".to_vec()), 3)
    );
    assert_eq!(g(b"i").value, int(-5));
    assert_eq!(g(b"f").value, OwnedValue::Float(2.5));
    assert_eq!(
        (g(b"t").value, g(b"t").flags),
        (OwnedValue::Bool(true), u32::MAX)
    );
    assert_eq!(g(b"e").value, OwnedValue::Bytes(vec![]));
    // Same size, other type: rewritten in place.
    d.set(b"i", 1.0f64, 0, 9).unwrap();
    assert_eq!((g(b"i").value, g(b"i").flags), (OwnedValue::Float(1.0), 9));
    // Another size.
    d.set(b"b", "a longer value than before", 0, 0).unwrap();
    assert_eq!(
        g(b"b").value.as_bytes(),
        Some(&b"a longer value than before"[..])
    );
    assert_eq!(d.len(), 5);
    d.check().unwrap();
}

#[test]
fn add_replace_delete_incr_cas() {
    let z = zones(1 << 20);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    assert_eq!(d.replace(b"k", 1i64, 0, 0), Err(DictError::NotFound));
    d.add(b"k", 1i64, 0, 0).unwrap();
    assert_eq!(d.add(b"k", 2i64, 0, 0), Err(DictError::Exists));
    assert_eq!(d.safe_add(b"k", 2i64, 0, 0), Err(DictError::Exists));
    d.replace(b"k", 3i64, 0, 0).unwrap();
    assert_eq!(d.incr(b"k", 4, None, 0), Ok(7));
    assert_eq!(d.incr(b"new", 4, None, 0), Err(DictError::NotFound));
    assert_eq!(d.incr(b"new", 4, Some(10), 0), Ok(14));
    assert_eq!(d.incr(b"new", i64::MAX, None, 0), Err(DictError::Overflow));
    d.set(b"s", "x", 0, 0).unwrap();
    assert_eq!(
        d.incr(b"s", 1, Some(0), 0),
        Err(DictError::WrongType { found: "bytes" })
    );
    assert_eq!(d.cas(b"k", 6i64, 8i64), Ok(false));
    assert_eq!(d.cas(b"k", 7i64, "seven"), Ok(true));
    assert_eq!(
        d.get(b"k").unwrap().unwrap().value.as_bytes(),
        Some(&b"seven"[..])
    );
    assert_eq!(d.cas(b"zz", 7i64, 8i64), Err(DictError::NotFound));
    assert_eq!(d.delete(b"k"), Ok(true));
    assert_eq!(d.delete(b"k"), Ok(false));
    assert_eq!(d.get(b"k"), Ok(None));
    d.check().unwrap();
}

#[test]
fn bad_input_changes_nothing() {
    let z = zones(64 << 10);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    d.set(b"k", 1i64, 0, 0).unwrap();
    assert_eq!(d.set(b"", 1i64, 0, 0), Err(DictError::EmptyKey));
    let long = vec![b'x'; MAX_KEY + 1];
    assert_eq!(
        d.set(&long, 1i64, 0, 0),
        Err(DictError::KeyTooLong { len: MAX_KEY + 1 })
    );
    assert_eq!(
        d.get(&long),
        Err(DictError::KeyTooLong { len: MAX_KEY + 1 })
    );
    let big = vec![0u8; 1 << 20];
    assert!(matches!(
        d.set(b"k", &big, 0, 0),
        Err(DictError::ValueTooLarge { .. })
    ));
    d.lpush(b"l", 1i64).unwrap();
    assert_eq!(
        d.incr(b"l", 1, None, 0),
        Err(DictError::WrongType { found: "a list" })
    );
    assert_eq!(d.get(b"l"), Err(DictError::WrongType { found: "a list" }));
    assert_eq!(
        d.lpush(b"k", 1i64),
        Err(DictError::WrongType {
            found: "an integer"
        })
    );
    assert_eq!(d.get(b"k").unwrap().unwrap().value, int(1));
    assert_eq!(d.len(), 2);
    d.check().unwrap();
}

#[test]
fn a_zone_without_a_dictionary_is_named_in_the_error() {
    let z = Zones::builder().zone("plain", 64 << 10).build().unwrap();
    let e = Dict::open(&z.get("plain").unwrap()).unwrap_err();
    assert!(
        e.to_string().contains("\"plain\" holds no dictionary"),
        "{e}"
    );
    let zone = z.get("plain").unwrap();
    let p = zone.alloc_value([7u64; 1024]).unwrap();
    zone.set_root(zone.offset_of(p.as_ptr().cast()).unwrap());
    let e = Dict::open(&zone).unwrap_err();
    assert!(e.to_string().contains("magic"), "{e}");
    assert!(matches!(Dict::init(&zone), Err(DictError::BadZone(_))));
}

#[test]
fn ttl_expire_stale_and_flushes() {
    let z = zones(1 << 20);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    d.set(b"short", 1i64, 20, 0).unwrap();
    d.set(b"long", 2i64, 60_000, 0).unwrap();
    d.set(b"ever", 3i64, 0, 0).unwrap();
    assert_eq!(d.ttl(b"ever"), Ok(None));
    let t = d.ttl(b"long").unwrap().unwrap();
    assert!(t > 59_000 && t <= 60_000, "{t}");
    d.expire(b"ever", 30).unwrap();
    assert!(d.ttl(b"ever").unwrap().is_some());
    std::thread::sleep(std::time::Duration::from_millis(40));
    assert_eq!(d.get(b"short"), Ok(None));
    assert_eq!(d.ttl(b"short"), Err(DictError::NotFound));
    let st = d.get_stale(b"short").unwrap().unwrap();
    assert!(st.stale);
    assert_eq!(st.value, int(1));
    assert_eq!(d.get(b"ever"), Ok(None));
    // add over an expired key works; replace does not.
    assert_eq!(d.replace(b"short", 5i64, 0, 0), Err(DictError::NotFound));
    d.add(b"short", 5i64, 0, 0).unwrap();
    assert_eq!(d.flush_expired(0), Ok(1)); // "ever"
    assert_eq!(d.len(), 2);
    d.flush_all().unwrap();
    assert_eq!(d.get(b"long"), Ok(None));
    assert!(d.get_stale(b"long").unwrap().unwrap().stale);
    assert_eq!(d.keys(0, 100).unwrap().keys.len(), 0);
    assert_eq!(d.flush_expired(1), Ok(1));
    assert_eq!(d.flush_expired(0), Ok(1));
    assert_eq!(d.len(), 0);
    d.set(b"after", 1i64, 0, 0).unwrap();
    assert_eq!(d.get(b"after").unwrap().unwrap().value, int(1));
    d.check().unwrap();
}

#[test]
fn lists() {
    let z = zones(1 << 20);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    assert_eq!(d.lpop(b"l"), Ok(None));
    assert_eq!(d.llen(b"l"), Ok(0));
    assert_eq!(d.rpush(b"l", 1i64), Ok(1));
    assert_eq!(d.rpush(b"l", "two"), Ok(2));
    assert_eq!(d.lpush(b"l", 0i64), Ok(3));
    assert_eq!(d.llen(b"l"), Ok(3));
    d.check().unwrap();
    assert_eq!(d.lpop(b"l"), Ok(Some(int(0))));
    assert_eq!(d.rpop(b"l"), Ok(Some(OwnedValue::Bytes(b"two".to_vec()))));
    assert_eq!(d.rpop(b"l"), Ok(Some(int(1))));
    assert_eq!(d.rpop(b"l"), Ok(None));
    assert_eq!(d.len(), 0);
    // A deleted list's nodes are reclaimed later.
    for i in 0..100 {
        d.rpush(b"m", i as i64).unwrap();
    }
    d.check().unwrap();
    assert!(d.delete(b"m").unwrap());
    assert_eq!(d.stats().garbage, 96); // the delete itself gave 4 back
    d.check().unwrap();
    d.flush_expired(0).unwrap();
    assert_eq!(d.stats().garbage, 0);
    assert_eq!(d.stats().bytes, 0);
    d.check().unwrap();
}

#[test]
fn iteration_returns_each_key_once() {
    let z = zones(1 << 20);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    for i in 0..3000 {
        d.set(format!("k{i}").as_bytes(), i as i64, 0, 0).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut cur = Some(0);
    let mut steps = 0;
    while let Some(c) = cur {
        let p = d.keys(c, 100).unwrap();
        for k in p.keys {
            assert!(seen.insert(k));
        }
        cur = p.next;
        steps += 1;
        assert!(steps < 10_000);
    }
    assert_eq!(seen.len(), 3000);
    let top = d.largest(3).unwrap();
    assert_eq!(top.len(), 3);
}

#[test]
fn eviction_keeps_recently_read_keys_and_reports_forcible() {
    let z = zones(256 << 10);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    let val = vec![7u8; 200];
    let mut forcible = false;
    for i in 0..5000 {
        let s = d.set(format!("k{i}").as_bytes(), &val, 0, 0).unwrap();
        forcible |= s.forcible;
        // keep k0 hot
        assert!(d.get(b"k0").unwrap().is_some(), "k0 evicted at {i}");
        if i % 97 == 0 {
            d.check().unwrap();
        }
    }
    assert!(forcible);
    let st = d.stats();
    assert!(st.evictions > 3000, "{st:?}");
    assert!(st.entries < 5000);
    // safe_set never evicts: no room, and nothing changed.
    let before = d.len();
    let big = vec![1u8; 100_000];
    assert_eq!(
        d.safe_set(b"k0", &big, 0, 0),
        Err(DictError::NoMemory { forcible: false })
    );
    assert_eq!(
        d.get(b"k0").unwrap().unwrap().value.as_bytes(),
        Some(&val[..])
    );
    assert_eq!(d.len(), before);
    // set evicts what it may (30) and, failing, restores all of it.
    let huge = vec![1u8; 120_000];
    assert!(matches!(
        d.set(b"k0", &huge, 0, 0),
        Err(DictError::NoMemory { .. })
    ));
    assert_eq!(d.len(), before);
    assert!(d.get(b"k0").unwrap().is_some());
    d.check().unwrap();
}

#[test]
fn expired_entries_are_evicted_before_live_ones() {
    let z = zones(128 << 10);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    let val = vec![1u8; 100];
    let mut n = 0;
    while d.safe_set(format!("t{n}").as_bytes(), &val, 10, 0).is_ok() {
        n += 1;
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    for i in 0..n / 2 {
        let s = d.set(format!("l{i}").as_bytes(), &val, 0, 0).unwrap();
        assert!(
            !s.forcible,
            "a live entry was evicted at {i} of {n}: {:?}",
            d.stats()
        );
    }
    assert_eq!(d.stats().evictions, 0);
    d.check().unwrap();
}

/// A random program against a HashMap model (no eviction: a big zone).
#[test]
fn model_program() {
    let z = zones(4 << 20);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    let mut model: HashMap<Vec<u8>, OwnedValue> = HashMap::new();
    let mut next = crate::testing::xorshift(42);
    for step in 0..20_000 {
        let r = next();
        let key = format!("k{}", r % 300).into_bytes();
        match (r >> 16) % 8 {
            0 | 1 => {
                let v = vec![(r >> 24) as u8; ((r >> 32) % 300) as usize];
                d.set(&key, &v, 0, 0).unwrap();
                model.insert(key, OwnedValue::Bytes(v));
            }
            2 => {
                let got = d.incr(&key, 3, Some(1), 0);
                match model.get(&key) {
                    Some(OwnedValue::Int(i)) => {
                        assert_eq!(got, Ok(i + 3));
                        model.insert(key, int(i + 3));
                    }
                    Some(_) => assert!(matches!(got, Err(DictError::WrongType { .. }))),
                    None => {
                        assert_eq!(got, Ok(4));
                        model.insert(key, int(4));
                    }
                }
            }
            3 => assert_eq!(d.delete(&key).unwrap(), model.remove(&key).is_some()),
            4 => {
                let res = d.add(&key, r as i64, 0, 0);
                match model.entry(key) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        assert_eq!(res, Err(DictError::Exists))
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        res.unwrap();
                        v.insert(int(r as i64));
                    }
                }
            }
            _ => {
                let got = d.get(&key).unwrap().map(|g| g.value);
                assert_eq!(got.as_ref(), model.get(&key), "step {step}");
            }
        }
        if step % 1000 == 0 {
            d.check().unwrap();
        }
    }
    assert_eq!(d.len(), model.len());
    d.check().unwrap();
}

#[test]
fn chains_stay_short() {
    let z = zones(64 << 20);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    for i in 0..10_000 {
        d.set(format!("k{i}").as_bytes(), i as i64, 0, 0).unwrap();
    }
    let g = d.pool.lock();
    let s = d.section(&g).unwrap();
    let mut longest = 0;
    let mut used = 0;
    for b in 0..=d.mask {
        let n = d.each_in_bucket(b, |_| Ok(())).unwrap();
        longest = longest.max(n);
        used += (n > 0) as usize;
    }
    let _ = s;
    drop(g);
    assert!(
        longest <= 8 && used > 9_000,
        "longest chain {longest}, {used} buckets used of {}",
        d.mask + 1
    );
}

#[test]
fn reads_do_not_take_the_lock() {
    let z = zones(1 << 20);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    for i in 0..100 {
        d.set(format!("k{i}").as_bytes(), i as i64, 0, 0).unwrap();
    }
    d.check().unwrap(); // takes the lock: publishes the last set's stripe
    let before = read::FALLBACKS.with(|c| c.get());
    for i in 0..100 {
        assert_eq!(
            d.get(format!("k{i}").as_bytes()).unwrap().unwrap().value,
            int(i)
        );
        assert_eq!(d.get(format!("x{i}").as_bytes()).unwrap(), None);
    }
    assert_eq!(read::FALLBACKS.with(|c| c.get()), before);
}

#[test]
fn churn_of_mixed_operations_does_not_leak() {
    let z = zones(1 << 20);
    let zone = z.get("d").unwrap();
    let d = Dict::open(&zone).unwrap();
    let free0 = zone.stats().pages_free;
    let mut x: u64 = 7;
    for seq in 0..100_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = format!("k{}", x % 16).into_bytes();
        let r = match (x >> 8) % 6 {
            0 => d.set(&k, seq as i64, 0, 0).map(drop),
            1 => d
                .set(&k, &vec![1u8; ((x >> 16) % 300) as usize], 0, 0)
                .map(drop),
            2 => d.incr(&k, 1, Some(0), 0).map(drop),
            3 => d.delete(&k).map(drop),
            4 => d.rpush(&k, seq as i64).map(drop),
            _ => d.lpop(&k).map(drop),
        };
        match r {
            Ok(()) | Err(DictError::WrongType { .. }) => {}
            Err(e) => panic!(
                "op {seq}: {e} {:?} {:?}",
                d.stats(),
                zone.stats().pages_free
            ),
        }
    }
    d.check().unwrap();
    for k in 0..16 {
        d.delete(format!("k{k}").as_bytes()).unwrap();
    }
    d.flush_expired(0).unwrap();
    let st = d.stats();
    assert_eq!((st.entries, st.bytes, st.garbage), (0, 0, 0));
    zone.pool().trim();
    assert_eq!(zone.stats().pages_free, free0);
}

/// The fuzz target's interpreter on pseudo-random programs.
#[test]
fn fuzz_programs() {
    let mut x: u64 = 1;
    for n in 0..150 {
        let len = 1 + (n * 37) % 2000;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fuzzing::run(&data);
    }
}

#[test]
fn d2_like_fill_never_runs_out() {
    let z = zones(4 << 20);
    let zone = z.get("d").unwrap();
    let d = Dict::open(&zone).unwrap();
    let val = [0x5au8; 512];
    let mut x: u64 = 42;
    for i in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 8 + (x % 505) as usize;
        if let Err(e) = d.set(format!("k{}", x % 100_000).as_bytes(), &val[..len], 0, 0) {
            let ps = zone.stats();
            let cl: Vec<_> = ps
                .classes
                .iter()
                .map(|c| (c.size, c.used, c.total))
                .collect();
            panic!(
                "op {i} len {len}: {e} {:?} free pages {} {cl:?}",
                d.stats(),
                ps.pages_free
            );
        }
    }
    d.check().unwrap();
}

/// Eviction takes the oldest entries first: stores link new entries at the
/// head of their bucket's chain, so the hand takes a bucket's last
/// candidate (it took the first, the newest: 48 of the first 50 keys
/// outlived the fill below, and 3 to 5 of the last 50 were evicted; now
/// none or one of each, with any hash seed seen).
#[test]
fn eviction_takes_the_oldest_first() {
    let z = zones(256 << 10);
    let zone = z.get("d").unwrap();
    let d = Dict::open(&zone).unwrap();
    let key = |i: u64| format!("key:{i:05}");
    for i in 0..6000 {
        d.set(key(i).as_bytes(), &[7u8; 16][..], 0, 0).unwrap();
    }
    assert!(d.stats().evictions > 2000, "{:?}", d.stats());
    let kept = |r: std::ops::Range<u64>| {
        r.filter(|&i| d.get(key(i).as_bytes()).unwrap().is_some())
            .count()
    };
    // A CLOCK over buckets is not an exact LRU: with some hash seeds a
    // bucket's only candidates are new, so a few new keys may go.
    let (first, last) = (kept(0..50), kept(5950..6000));
    assert!(last >= 45, "{} of the 50 newest keys evicted", 50 - last);
    assert!(first <= 5, "{first} of the 50 oldest keys kept");
    d.check().unwrap();
}

/// A dictionary whose memory is all held by deleted lists' nodes (freed a
/// few per store, and a journal's worth inside a store's own section,
/// which a failed store undoes): a store that finds no memory gives the
/// garbage back in sections of its own and tries again, so stores succeed
/// at once (without that, all 400 said `NoMemory`), and none
/// says `TooBigForOneSection`. (The fuzz inputs
/// `fuzz/regressions/dict_ops/*-overflows-section` replay the section
/// overflow itself.)
#[test]
fn stores_into_a_dictionary_full_of_deleted_lists_give_the_garbage_back() {
    let z = zones(1 << 20);
    let d = Dict::open(&z.get("d").unwrap()).unwrap();
    // Lists of small nodes until the zone is full, then all deleted: the
    // memory is held by garbage nodes, freed a journal's worth at a time.
    // The nodes (16 + 40 bytes) are of the class of the new lists' entries
    // (32 + 8 + 16), so making a new list frees garbage for its entry too.
    let mut lists = 0;
    let small = [1u8; 40];
    'fill: for l in 0..1000 {
        let key = format!("l{l}");
        for _ in 0..500 {
            match d.rpush(key.as_bytes(), &small[..]) {
                Ok(_) => {}
                Err(DictError::NoMemory { .. }) => break 'fill,
                Err(e) => panic!("rpush: {e}"),
            }
        }
        lists += 1;
    }
    assert!(lists > 10, "only {lists} lists fit");
    for l in 0..=lists {
        d.delete(format!("l{l}").as_bytes()).unwrap();
    }
    assert!(d.stats().garbage > 10_000, "{:?}", d.stats());
    d.check().unwrap();
    let big = vec![7u8; 1900];
    let (mut stored, mut refused) = (0, 0);
    for k in 0..400 {
        match d.rpush(format!("n{k}").as_bytes(), &big[..]) {
            Ok(1) => stored += 1,
            Err(DictError::NoMemory { .. }) => refused += 1,
            other => panic!("push {k}: {other:?} ({:?})", d.stats()),
        }
        d.check().unwrap();
    }
    assert!(stored > 200, "stored {stored}, refused {refused}");
}
