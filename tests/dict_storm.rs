//! A kill storm: 4 worker processes run deterministic programs of
//! dictionary operations on their own keys (and read everyone's without
//! the lock) while the parent SIGKILLs one at random moments, recovers the
//! zone (force-unlock; the next lock holder rolls the dead section back),
//! and checks the dead worker's keys against a model: they must equal the
//! model after its last finished operation, or after the one it was
//! killed in. The worker is then respawned from there.
//!
//! `DICT_STORM_KILLS` sets the number of kills (default 200).
//! `cargo test --test dict_storm -- --nocapture` prints the figures.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{fork_child, wait, Exit};
use shmzone::dict::{Dict, DictError};
use shmzone::Zones;

const WORKERS: usize = 4;
const KEYS: u64 = 16;
/// The most operations one worker runs between two kills of its own.
const MAX_LEAD: u64 = 20_000;

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Scalar(u32, Vec<u8>),
    List(VecDeque<(u32, Vec<u8>)>),
}

type Model = HashMap<Vec<u8>, Val>;

#[derive(Debug)]
enum Op {
    SetInt(Vec<u8>, i64),
    SetBytes(Vec<u8>, Vec<u8>),
    Incr(Vec<u8>),
    Delete(Vec<u8>),
    Rpush(Vec<u8>, i64),
    Lpop(Vec<u8>),
    /// A read of any worker's key (changes nothing).
    Get(Vec<u8>),
}

fn key(w: usize, i: u64) -> Vec<u8> {
    format!("w{w}:{i}").into_bytes()
}

/// Worker `w`'s operation number `seq`.
fn op(w: usize, seq: u64) -> Op {
    let mut r = rng((w as u64 + 1) * 1_000_000_007 + seq);
    let k = key(w, r() % KEYS);
    match r() % 7 {
        0 => Op::SetInt(k, seq as i64),
        1 => Op::SetBytes(k, vec![(seq % 251) as u8; (r() % 300) as usize]),
        2 => Op::Incr(k),
        3 => Op::Delete(k),
        4 => Op::Rpush(k, seq as i64),
        5 => Op::Lpop(k),
        _ => Op::Get(key((r() % WORKERS as u64) as usize, r() % KEYS)),
    }
}

fn int(v: i64) -> (u32, Vec<u8>) {
    (2, v.to_le_bytes().to_vec())
}

/// What `op` does to the model (the dictionary's contract, restated).
fn apply(m: &mut Model, op: &Op) {
    match op {
        Op::SetInt(k, v) => {
            let (kind, b) = int(*v);
            m.insert(k.clone(), Val::Scalar(kind, b));
        }
        Op::SetBytes(k, b) => {
            m.insert(k.clone(), Val::Scalar(1, b.clone()));
        }
        Op::Incr(k) => match m.get(k) {
            None => {
                m.insert(k.clone(), Val::Scalar(2, 1i64.to_le_bytes().to_vec()));
            }
            Some(Val::Scalar(2, b)) => {
                let v = i64::from_le_bytes(b[..].try_into().unwrap()) + 1;
                m.insert(k.clone(), Val::Scalar(2, v.to_le_bytes().to_vec()));
            }
            Some(_) => {} // wrong type: nothing changes
        },
        Op::Delete(k) => {
            m.remove(k);
        }
        Op::Rpush(k, v) => match m.get_mut(k) {
            None => {
                m.insert(k.clone(), Val::List(VecDeque::from([int(*v)])));
            }
            Some(Val::List(l)) => l.push_back(int(*v)),
            Some(_) => {}
        },
        Op::Lpop(k) => {
            if let Some(Val::List(l)) = m.get_mut(k) {
                l.pop_front();
                if l.is_empty() {
                    m.remove(k);
                }
            }
        }
        Op::Get(_) => {}
    }
}

/// Runs `op` on the dictionary; any result but the contract's is a bug.
fn run(d: &Dict<'_>, op: &Op) {
    let wrong = |r: Result<(), DictError>| match r {
        Ok(()) | Err(DictError::WrongType { .. }) => {}
        Err(e) => panic!("{op:?}: {e}"),
    };
    match op {
        Op::SetInt(k, v) => wrong(d.set(k, *v, 0, 0).map(drop)),
        Op::SetBytes(k, b) => wrong(d.set(k, b, 0, 0).map(drop)),
        Op::Incr(k) => wrong(d.incr(k, 1, Some(0), 0).map(drop)),
        Op::Delete(k) => wrong(d.delete(k).map(drop)),
        Op::Rpush(k, v) => wrong(d.rpush(k, *v).map(drop)),
        Op::Lpop(k) => wrong(d.lpop(k).map(drop)),
        Op::Get(k) => wrong(d.get(k).map(drop)),
    }
}

/// Worker `w`'s keys as the dictionary holds them now.
fn observed(d: &Dict<'_>, w: usize) -> Model {
    let prefix = format!("w{w}:").into_bytes();
    let (dump, _) = d.dump().expect("dump");
    dump.into_iter()
        .filter(|e| e.key.starts_with(&prefix) && e.live)
        .map(|e| {
            let v = if e.kind == 5 {
                Val::List(e.items.into_iter().collect())
            } else {
                Val::Scalar(e.kind, e.value)
            };
            (e.key, v)
        })
        .collect()
}

fn spawn(zones: &Zones, w: usize, start: u64) -> libc::pid_t {
    fork_child(|| {
        let d = Dict::open(&zones.get("d").unwrap()).unwrap();
        let done = done_word(zones, w);
        let mut seq = start;
        // The parent replays every operation done since the last kill of
        // this worker: on a loaded machine an unbounded lead made each
        // recovery longer than the last (the storm ran for many minutes).
        while seq - start < MAX_LEAD {
            run(&d, &op(w, seq));
            seq += 1;
            done.store(seq, Ordering::Release);
        }
        loop {
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

fn done_word(zones: &Zones, w: usize) -> &AtomicU64 {
    let ctl = zones.get("ctl").unwrap();
    let p = ctl.ptr_at(ctl.root()).unwrap().as_ptr().cast::<AtomicU64>();
    // SAFETY: the root is a [u64; WORKERS] made below; w < WORKERS.
    unsafe { &*p.add(w) }
}

#[test]
fn a_storm_of_kills_loses_nothing_but_the_operation_in_flight() {
    let kills: usize = std::env::var("DICT_STORM_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let zones = Zones::builder()
        .dict("d", 1 << 20)
        .zone("ctl", 64 << 10)
        .init("ctl", |z, _| {
            let p = z.alloc_value([0u64; WORKERS]).expect("room");
            z.set_root(z.offset_of(p.as_ptr().cast()).unwrap());
            Ok(())
        })
        .build()
        .unwrap();
    let zone = zones.get("d").unwrap();
    let d = Dict::open(&zone).unwrap();
    let mut models: Vec<Model> = vec![Model::new(); WORKERS];
    let mut applied = [0u64; WORKERS];
    let mut pids: Vec<libc::pid_t> = (0..WORKERS).map(|w| spawn(&zones, w, 0)).collect();
    let mut r = rng(42);
    let (mut in_flight_done, mut in_flight_lost, mut rolled) = (0, 0, 0u64);
    let t = Instant::now();
    let recover = |w: usize,
                   pid: libc::pid_t,
                   models: &mut Vec<Model>,
                   applied: &mut [u64; WORKERS]|
     -> bool {
        // SAFETY: our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(
            wait(pid),
            Exit::Signal(libc::SIGKILL),
            "worker {w} died otherwise"
        );
        zones.force_unlock_all(pid as u32);
        d.check()
            .unwrap_or_else(|e| panic!("after killing worker {w}: {e}"));
        let n = done_word(&zones, w).load(Ordering::Acquire);
        let m = &mut models[w];
        for s in applied[w]..n {
            apply(m, &op(w, s));
        }
        let before = m.clone();
        let mut after = m.clone();
        let o = op(w, n);
        apply(&mut after, &o);
        let now = observed(&d, w);
        let done = if now == after && now != before {
            true
        } else if now == before {
            false
        } else {
            panic!(
                "worker {w} killed in op {n} ({o:?}): its keys are neither before nor after\n\
                 now {now:?}\nbefore {before:?}\nafter {after:?}"
            );
        };
        *m = if done { after } else { before };
        applied[w] = n + done as u64;
        done_word(&zones, w).store(applied[w], Ordering::Release);
        done
    };
    for _ in 0..kills {
        std::thread::sleep(Duration::from_micros(r() % 1000));
        let w = (r() % WORKERS as u64) as usize;
        if recover(w, pids[w], &mut models, &mut applied) {
            in_flight_done += 1;
        } else {
            in_flight_lost += 1;
        }
        pids[w] = spawn(&zones, w, applied[w]);
    }
    for (w, &pid) in pids.iter().enumerate() {
        recover(w, pid, &mut models, &mut applied);
    }
    rolled += zone.pool().rollbacks();
    d.check().unwrap();
    let ops: u64 = applied.iter().sum();
    println!(
        "kill storm: {kills} kills in {:.1} s, {ops} operations checked, \
         in-flight operation found done {in_flight_done} / undone {in_flight_lost} times, \
         {rolled} sections rolled back",
        t.elapsed().as_secs_f64()
    );
    assert!(rolled > 0, "no kill landed inside a section");
    assert!(ops > kills as u64);
}
