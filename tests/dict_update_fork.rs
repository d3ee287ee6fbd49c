//! `Dict::update` across real processes: read-modify-write by several
//! workers at once loses no update and never lets a bound be passed, and a
//! worker SIGKILLed in the middle of updates leaves a whole value.

mod common;

use std::time::Duration;

use common::{fork_child, wait, wait_within, Exit};
use shmzone::dict::{Dict, OwnedValue, Update, Value};
use shmzone::Zones;

const CHILDREN: u64 = 4;
const UPDATES: u64 = 5_000;
/// The bounded counter's limit: fewer than CHILDREN * UPDATES.
const BOUND: i64 = 7_000;

/// A pair (count, sum) as 16 little-endian bytes.
fn pair(v: Option<Value<'_>>) -> Option<(u64, u64)> {
    let Some(Value::Bytes(b)) = v else {
        return None;
    };
    let b: &[u8; 16] = b.try_into().ok()?;
    Some((
        u64::from_le_bytes(b[..8].try_into().ok()?),
        u64::from_le_bytes(b[8..].try_into().ok()?),
    ))
}

/// Adds one to the pair's count and `add` to its sum; returns 0 or an
/// exit code naming what went wrong.
fn bump_pair(d: &Dict<'_>, add: u64) -> i32 {
    let mut buf = [0u8; 16];
    let b = &mut buf;
    let r = d.update(b"pair", move |cur| {
        let (n, s) = match cur.map(|c| c.value) {
            None => (0, 0),
            v => match pair(v) {
                Some(p) => p,
                None => return (Update::Keep, false),
            },
        };
        b[..8].copy_from_slice(&(n + 1).to_le_bytes());
        b[8..].copy_from_slice(&(s + add).to_le_bytes());
        (Update::Set(Value::Bytes(&b[..])), true)
    });
    match r {
        Ok(true) => 0,
        Ok(false) => 3, // torn
        Err(_) => 4,
    }
}

fn worker(zones: &Zones, id: u64) -> i32 {
    let d = Dict::open(&zones.get("d").unwrap()).unwrap();
    let mut allowed = 0i64;
    for _ in 0..UPDATES {
        let code = bump_pair(&d, id + 1);
        if code != 0 {
            return code;
        }
        // A counter that stops at BOUND.
        let ok = d.update(b"bounded", |cur| match cur.map(|c| c.value) {
            Some(Value::Int(i)) if i >= BOUND => (Update::Keep, false),
            Some(Value::Int(i)) => (Update::Set(Value::Int(i + 1)), true),
            _ => (Update::Set(Value::Int(1)), true),
        });
        match ok {
            Ok(true) => allowed += 1,
            Ok(false) => {}
            Err(_) => return 5,
        }
    }
    match d.set(format!("allowed{id}").as_bytes(), allowed, 0, 0) {
        Ok(_) => 0,
        Err(_) => 6,
    }
}

#[test]
fn concurrent_updates_lose_nothing_and_keep_the_bound() {
    let zones = Zones::builder().dict("d", 1 << 20).build().unwrap();
    let pids: Vec<_> = (0..CHILDREN)
        .map(|id| fork_child(|| worker(&zones, id)))
        .collect();
    for pid in pids {
        assert_eq!(wait_within(pid, Duration::from_secs(120)), Exit::Code(0));
    }
    let d = Dict::open(&zones.get("d").unwrap()).unwrap();
    d.check().unwrap();
    let got = d.get(b"pair").unwrap().unwrap().value;
    let (n, s) = pair(Some(got.as_value())).expect("a whole pair");
    assert_eq!(n, CHILDREN * UPDATES);
    assert_eq!(s, UPDATES * (1..=CHILDREN).sum::<u64>());
    assert_eq!(
        d.get(b"bounded").unwrap().unwrap().value,
        OwnedValue::Int(BOUND)
    );
    let allowed: i64 = (0..CHILDREN)
        .map(|id| {
            d.get(format!("allowed{id}").as_bytes())
                .unwrap()
                .and_then(|g| g.value.as_int())
                .expect("each worker's count")
        })
        .sum();
    assert_eq!(allowed, BOUND, "updates allowed past the bound");
}

#[test]
fn a_worker_killed_mid_update_leaves_a_whole_value() {
    let zones = Zones::builder().dict("d", 1 << 20).build().unwrap();
    let mut x = 5u64;
    for round in 0..30 {
        let w = fork_child(|| {
            let d = Dict::open(&zones.get("d").unwrap()).unwrap();
            loop {
                let code = bump_pair(&d, 3);
                if code != 0 {
                    return code;
                }
            }
        });
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_micros(300 + x % 3000));
        // SAFETY: our own child.
        unsafe { libc::kill(w, libc::SIGKILL) };
        assert_eq!(wait(w), Exit::Signal(libc::SIGKILL));
        // As the master would: release what the dead worker held; the
        // next lock holder rolls its section back.
        zones.force_unlock_all(w as u32);
        let d = Dict::open(&zones.get("d").unwrap()).unwrap();
        // Every update adds 1 and 3: a pair whose sum is not three times
        // its count is half of one.
        assert_eq!(bump_pair(&d, 3), 0, "round {round}");
        let got = d.get(b"pair").unwrap().unwrap().value;
        let (n, s) = pair(Some(got.as_value())).expect("a pair");
        assert_eq!(s, 3 * n, "round {round}: a half-done update");
        d.check().unwrap();
    }
}
