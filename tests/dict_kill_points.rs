//! Kill points through the dictionary: for every operation below and every
//! step k of it (every journal record, commit and undo step, in the
//! dictionary's own writes and in the allocator's under them), a forked
//! child dies by SIGKILL at exactly step k. The parent force-unlocks the
//! zone, takes the lock (which rolls the dead child's section back), and
//! requires the dictionary, its totals and the zone's whole allocation
//! state to equal either the state before the operation or the state
//! after it; `check()` must pass and the dictionary must still serve.
//!
//! `cargo test --features kill-points --test dict_kill_points -- --nocapture`
//! prints the table: operation, points, outcomes.
#![cfg(feature = "kill-points")]

mod common;

use common::{fork_child, wait, Exit};
use shmzone::dict::{Dict, DumpEntry, Update, Value};
use shmzone::slab::fuzzing::full_snapshot;
use shmzone::{killpoint, Zones};

type Setup = fn(&Dict<'_>);
type Op = fn(&Dict<'_>);

fn fresh(size: usize) -> Zones {
    Zones::builder()
        .zone("d", size)
        .init("d", |z, _| {
            Dict::init_seeded(z, 7)
                .map(drop)
                .map_err(shmzone::Error::from)
        })
        .build()
        .expect("zones")
}

#[derive(PartialEq, Debug)]
struct State {
    dump: Vec<DumpEntry>,
    totals: [u64; 3],
    pool: Vec<u8>,
}

fn state(zones: &Zones) -> State {
    let zone = zones.get("d").unwrap();
    let d = Dict::open(&zone).unwrap();
    let (dump, totals) = d.dump().expect("dump");
    State {
        dump,
        totals,
        pool: full_snapshot(zone.pool()),
    }
}

fn with_dict<R>(zones: &Zones, f: impl FnOnce(&Dict<'_>) -> R) -> R {
    let zone = zones.get("d").unwrap();
    let d = Dict::open(&zone).unwrap();
    f(&d)
}

#[derive(Debug, Default)]
struct Outcome {
    points: u64,
    before: u64,
    after: u64,
}

fn explore(name: &str, size: usize, setup: Setup, op: Op) -> Outcome {
    let zones = fresh(size);
    with_dict(&zones, setup);
    let before = state(&zones);
    let h0 = killpoint::hits();
    with_dict(&zones, op);
    let points = killpoint::hits() - h0;
    let after = state(&zones);
    with_dict(&zones, |d| d.check()).expect("the operation leaves a sound dictionary");
    drop(zones);
    assert!(points > 0, "{name}: no kill point passed");
    assert_ne!(before, after, "{name}: the operation changed nothing");

    let mut out = Outcome {
        points,
        ..Outcome::default()
    };
    for k in 1..=points + 1 {
        let zones = fresh(size);
        with_dict(&zones, setup);
        assert_eq!(state(&zones), before, "{name}: setup is not deterministic");
        let pid = fork_child(|| {
            killpoint::arm(k);
            with_dict(&zones, op);
            0
        });
        let exit = wait(pid);
        if k <= points {
            assert_eq!(exit, Exit::Signal(libc::SIGKILL), "{name}: point {k}");
        } else {
            assert_eq!(exit, Exit::Code(0), "{name}: unarmed run");
        }
        zones.force_unlock_all(pid as u32);
        let now = state(&zones);
        if name.starts_with("flush_expired") {
            // A sweep commits a batch of buckets per lock hold: a death
            // loses at most the batch it was in. What every reader sees
            // (the live entries) is the same before, after and between.
            let live = |s: &State| {
                s.dump
                    .iter()
                    .filter(|e| e.live)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(live(&now), live(&before), "{name}: point {k}");
            if now == before {
                out.before += 1;
            } else if now == after {
                out.after += 1;
            }
        } else if now == before {
            out.before += 1;
        } else if now == after {
            out.after += 1;
        } else {
            panic!(
                "{name}: killed at point {k} of {points}: neither before nor after\n\
                 dump == before: {}, == after: {}; totals before {:?} after {:?} now {:?}; \
                 pool == before: {}, == after: {}",
                now.dump == before.dump,
                now.dump == after.dump,
                before.totals,
                after.totals,
                now.totals,
                now.pool == before.pool,
                now.pool == after.pool,
            );
        }
        with_dict(&zones, |d| {
            d.check()
                .unwrap_or_else(|e| panic!("{name}: point {k}: {e}"));
            // Still serves (an in-place store: a full zone may have no block
            // of another size class left).
            d.set(b"probe", 1i64, 0, 0).expect("a set after recovery");
            assert_eq!(d.incr(b"probe", 1, None, 0), Ok(2));
            d.check().unwrap();
        });
    }
    assert!(out.before > 0 && out.after > 0, "{name}: {out:?}");
    out
}

const SMALL: usize = 64 << 10;
const MEDIUM: usize = 256 << 10;

fn base(d: &Dict<'_>) {
    d.set(b"probe", 0i64, 0, 0).unwrap();
    d.set(b"a", 1i64, 0, 0).unwrap();
    d.set(b"s", "short", 0, 5).unwrap();
    d.set(b"f", 1.5f64, 60_000, 0).unwrap();
    d.set(b"t", true, 0, 0).unwrap();
    d.rpush(b"l", "x").unwrap();
    d.rpush(b"l", 2i64).unwrap();
    d.rpush(b"one", "only").unwrap();
    for i in 0..20 {
        d.set(format!("k{i}").as_bytes(), i as i64, 0, 0).unwrap();
    }
}

fn with_expired(d: &Dict<'_>) {
    base(d);
    for i in 0..6 {
        d.set(format!("x{i}").as_bytes(), "soon gone", 1, 0)
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
}

/// Fills a small zone until a safe_set finds no room.
fn full(d: &Dict<'_>) {
    d.set(b"probe", 0i64, 0, 0).unwrap();
    let v = [9u8; 400];
    let mut i = 0;
    // Two size classes (256 and 448-byte blocks).
    while d
        .safe_set(
            format!("fill{i}").as_bytes(),
            &v[..200 + 200 * (i % 2)],
            0,
            0,
        )
        .is_ok()
    {
        i += 1;
    }
    assert!(i > 40, "{i}");
    // Then each size until it fails too: the two classes fill unevenly.
    for len in [200, 400] {
        while d
            .safe_set(format!("fill{i}").as_bytes(), &v[..len], 0, 0)
            .is_ok()
        {
            i += 1;
        }
    }
    // Some of them recently used.
    for j in (0..i).step_by(3) {
        d.get(format!("fill{j}").as_bytes()).unwrap();
    }
}

#[test]
fn every_kill_point_of_every_operation_leaves_before_or_after() {
    let cases: Vec<(&str, usize, Setup, Op)> = vec![
        ("set (new key)", MEDIUM, base, |d| {
            d.set(b"new", "a new value", 0, 3).unwrap();
        }),
        ("set (in place)", MEDIUM, base, |d| {
            d.set(b"a", 99i64, 0, 1).unwrap();
        }),
        ("set (other size)", MEDIUM, base, |d| {
            d.set(b"s", "a value longer than the old one", 0, 0)
                .unwrap();
        }),
        ("set (over a list)", MEDIUM, base, |d| {
            d.set(b"l", 5i64, 0, 0).unwrap();
        }),
        ("set with eviction", SMALL, full, |d| {
            let v = [1u8; 200];
            assert!(d.set(b"new", &v[..], 0, 0).unwrap().forcible);
        }),
        ("set with eviction (bigger class)", SMALL, full, |d| {
            let v = [1u8; 400];
            assert!(d.set(b"new", &v[..], 0, 0).unwrap().forcible);
        }),
        ("add over expired", MEDIUM, with_expired, |d| {
            d.add(b"x1", "again", 0, 0).unwrap();
        }),
        ("delete", MEDIUM, base, |d| {
            assert!(d.delete(b"s").unwrap());
        }),
        ("delete a list", MEDIUM, base, |d| {
            assert!(d.delete(b"l").unwrap());
        }),
        ("incr", MEDIUM, base, |d| {
            assert_eq!(d.incr(b"a", 5, None, 0), Ok(6));
        }),
        ("incr (creating)", MEDIUM, base, |d| {
            assert_eq!(d.incr(b"c", 5, Some(1), 0), Ok(6));
        }),
        ("cas", MEDIUM, base, |d| {
            assert_eq!(d.cas(b"s", "short", "longer than short"), Ok(true));
        }),
        ("update (in place)", MEDIUM, base, |d| {
            let r = d.update(b"a", |cur| {
                let Some(Value::Int(i)) = cur.map(|c| c.value) else {
                    return (Update::Keep, 0);
                };
                (Update::Set(Value::Int(i + 1)), i)
            });
            assert_eq!(r, Ok(1));
        }),
        ("update (creating, with a TTL)", MEDIUM, base, |d| {
            let put = Update::Put {
                value: Value::Bytes(b"made by update"),
                ttl_ms: 60_000,
                flags: 2,
            };
            d.update(b"u", |_| (put, ())).unwrap();
        }),
        ("update (other size)", MEDIUM, base, |d| {
            d.update(b"s", |_| (Update::Set(Value::Bytes(b"a longer value")), ()))
                .unwrap();
        }),
        ("update (delete)", MEDIUM, base, |d| {
            d.update(b"s", |_| (Update::Delete, ())).unwrap();
        }),
        ("update with eviction", SMALL, full, |d| {
            let v = [1u8; 200];
            d.update(b"new", |_| (Update::Set(Value::Bytes(&v[..])), ()))
                .unwrap();
        }),
        ("expire", MEDIUM, base, |d| {
            d.expire(b"a", 60_000).unwrap();
        }),
        ("lpush (new list)", MEDIUM, base, |d| {
            assert_eq!(d.lpush(b"nl", 1i64), Ok(1));
        }),
        ("rpush", MEDIUM, base, |d| {
            assert_eq!(d.rpush(b"l", "third"), Ok(3));
        }),
        ("lpop", MEDIUM, base, |d| {
            assert!(d.lpop(b"l").unwrap().is_some());
        }),
        ("rpop (last item)", MEDIUM, base, |d| {
            assert!(d.rpop(b"one").unwrap().is_some());
        }),
        ("flush_all", MEDIUM, base, |d| {
            d.flush_all().unwrap();
        }),
        ("flush_expired", MEDIUM, with_expired, |d| {
            assert_eq!(d.flush_expired(0), Ok(6));
        }),
    ];
    println!("operation\tpoints\tbefore\tafter");
    for (name, size, setup, op) in cases {
        let o = explore(name, size, setup, op);
        println!("{name}\t{}\t{}\t{}", o.points, o.before, o.after);
    }
}
