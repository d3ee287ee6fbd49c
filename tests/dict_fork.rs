//! The dictionary across real processes: concurrent writers and lock-free
//! readers (no torn value is ever returned), readers finishing while a
//! writer is killed at random moments, and one dictionary seen through two
//! mappings of a named region at two addresses.

mod common;

use std::time::Duration;

use common::named::{Fresh, KINDS};
use common::{fork_child, wait, wait_within, Exit};
use shmzone::dict::{Dict, OwnedValue};
use shmzone::Zones;

const KEYS: u64 = 64;

/// A value that says whether it is whole: `n` bytes all equal to `n % 251`,
/// stored with flags `n`.
fn value(n: u64) -> Vec<u8> {
    vec![(n % 251) as u8; (n % 700) as usize + 1]
}

fn whole(v: &OwnedValue, flags: u32) -> bool {
    match v {
        OwnedValue::Bytes(b) => *b == value(flags as u64),
        OwnedValue::Int(i) => *i as u64 == flags as u64 * 3,
        _ => false,
    }
}

fn writer(zones: &Zones, seed: u64, ops: u64) -> i32 {
    let d = Dict::open(&zones.get("d").unwrap()).unwrap();
    let mut x = seed;
    for _ in 0..ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = format!("k{}", x % KEYS);
        let n = (x >> 20) % 100_000;
        let r = match (x >> 8) % 5 {
            0 => d.set(k.as_bytes(), (n * 3) as i64, 0, n as u32).map(drop),
            1 => d.delete(k.as_bytes()).map(drop),
            _ => d.set(k.as_bytes(), &value(n), 0, n as u32).map(drop),
        };
        if r.is_err() {
            return 2;
        }
    }
    0
}

fn reader(zones: &Zones, reads: u64) -> i32 {
    let d = Dict::open(&zones.get("d").unwrap()).unwrap();
    let mut hits = 0;
    for i in 0..reads {
        match d.get(format!("k{}", i % KEYS).as_bytes()) {
            Ok(Some(g)) => {
                if !whole(&g.value, g.flags) {
                    return 1; // torn
                }
                hits += 1;
            }
            Ok(None) => {}
            Err(_) => return 3,
        }
    }
    if hits == 0 {
        4
    } else {
        0
    }
}

#[test]
fn lock_free_readers_never_see_a_torn_value() {
    let zones = Zones::builder().dict("d", 4 << 20).build().unwrap();
    let mut pids = Vec::new();
    for w in 0..2 {
        pids.push(fork_child(|| writer(&zones, 42 + w, 200_000)));
    }
    for _ in 0..2 {
        pids.push(fork_child(|| reader(&zones, 400_000)));
    }
    for pid in pids {
        assert_eq!(wait_within(pid, Duration::from_secs(120)), Exit::Code(0));
    }
    let d = Dict::open(&zones.get("d").unwrap()).unwrap();
    d.check().unwrap();
    let st = d.stats();
    assert!(st.gets >= 800_000 && st.hits > 0, "{st:?}");
}

#[test]
fn readers_finish_while_writers_are_killed_mid_operation() {
    let zones = Zones::builder().dict("d", 1 << 20).build().unwrap();
    let readers: Vec<_> = (0..2)
        .map(|_| fork_child(|| reader(&zones, 300_000)))
        .collect();
    let mut x = 9u64;
    for round in 0..40 {
        let w = fork_child(|| writer(&zones, 1000 + round, u64::MAX));
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_micros(200 + x % 2000));
        // SAFETY: our own child.
        unsafe { libc::kill(w, libc::SIGKILL) };
        assert_eq!(wait(w), Exit::Signal(libc::SIGKILL));
        // As the master would: release what the dead writer held. Readers
        // that met its odd stripe take the lock, which rolls back.
        zones.force_unlock_all(w as u32);
    }
    for pid in readers {
        assert_eq!(wait_within(pid, Duration::from_secs(120)), Exit::Code(0));
    }
    let d = Dict::open(&zones.get("d").unwrap()).unwrap();
    d.check().unwrap();
}

#[test]
fn one_dictionary_through_two_mappings_of_a_named_region() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let a = Zones::create_named(Zones::builder().dict("d", 512 << 10), &f.spec()).unwrap();
        let b = Zones::attach(&f.spec()).unwrap();
        assert_ne!(a.region().as_ptr(), b.region().as_ptr());
        let da = Dict::open(&a.get("d").unwrap()).unwrap();
        let db = Dict::open(&b.get("d").unwrap()).unwrap();
        for i in 0..500u64 {
            da.set(format!("k{i}").as_bytes(), &value(i), 0, i as u32)
                .unwrap();
        }
        da.rpush(b"list", "x").unwrap();
        for i in 0..500u64 {
            let g = db.get(format!("k{i}").as_bytes()).unwrap().unwrap();
            assert!(whole(&g.value, g.flags) && g.flags == i as u32, "{kind}");
        }
        assert_eq!(
            db.lpop(b"list").unwrap(),
            Some(OwnedValue::Bytes(b"x".to_vec()))
        );
        assert_eq!(db.incr(b"n", 2, Some(0), 0), Ok(2));
        assert_eq!(da.get(b"n").unwrap().unwrap().value, OwnedValue::Int(2));
        da.check().unwrap();
        db.check().unwrap();
    }
}
