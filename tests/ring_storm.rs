//! A kill storm on the log ring: producers SIGKILLed at random moments
//! (`SHMZONE_RING_KILLS`, default 200) while two readers read (one with
//! `next_record`, one with `read_batch`). No reader
//! hangs, no torn record is ever handed out (every record carries a check
//! word), and apart from what the readers were told they missed by falling
//! behind, at most one record is lost per kill.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{fork_child, wait_within, Exit};
use shmzone::ring::{Ring, RingConfig, Start};
use shmzone::{Region, Zones};

const PRODUCERS: usize = 4;
const READERS: usize = 2;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn check(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Fills `buf` with a record: incarnation, number, filler, check word.
fn record(buf: &mut Vec<u8>, who: u64, i: u64, rng: &mut Rng) {
    buf.clear();
    buf.extend_from_slice(&who.to_le_bytes());
    buf.extend_from_slice(&i.to_le_bytes());
    let fill = (rng.next() % 200) as usize;
    buf.extend((0..fill).map(|k| (k as u64 ^ i ^ who) as u8));
    let c = check(buf);
    buf.extend_from_slice(&c.to_le_bytes());
}

fn intact(b: &[u8]) -> bool {
    b.len() >= 24 && {
        let (body, c) = b.split_at(b.len() - 8);
        check(body) == u64::from_le_bytes(c.try_into().unwrap())
    }
}

/// Shared counters: [0] the stop flag, then per reader 8 words.
struct Board(Region);

impl Board {
    fn at(&self, i: usize) -> &AtomicU64 {
        assert!(i < 512);
        // SAFETY: a page of zeroed shared memory, 8-aligned, used only
        // through atomics, alive as long as `self`.
        unsafe { &*self.0.as_ptr().cast::<AtomicU64>().add(i) }
    }
}

/// Kills and reaps whatever children are still listed when dropped (a
/// failed assertion must not leave producers running forever).
struct Children(Vec<libc::pid_t>);

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: our own children, not reaped yet (removed from the
            // list when they are).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A producer process: claims a slot (the dead one's) and writes records
/// as fast as it can build them, with a random pause, until killed.
fn spawn_producer(ring: &Ring<'_>, who: u64) -> libc::pid_t {
    fork_child(move || {
        let Ok(mut log) = ring.producer() else {
            return 7;
        };
        let mut rng = Rng(0x9e37_79b9 ^ who.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
        let mut buf = Vec::with_capacity(256);
        for i in 0.. {
            record(&mut buf, who, i, &mut rng);
            if log.write(&buf).is_err() {
                return 8;
            }
            for _ in 0..rng.next() % 256 {
                black_box(rng.next());
            }
        }
        0
    })
}

#[test]
fn producers_killed_at_random_moments() {
    let kills: usize = std::env::var("SHMZONE_RING_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let cfg = RingConfig {
        slots: PRODUCERS,
        slot_bytes: 1 << 20,
        max_record: 256,
        timestamps: false,
    };
    let zones = Zones::builder()
        .zone("log", cfg.zone_size())
        .build()
        .unwrap();
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let board = Board(Region::new(4096).unwrap());
    let mut children = Children(Vec::new());
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (ring, board) = (&ring, &board);
            fork_child(move || {
                let mut reader = ring.reader(Start::Oldest);
                let mut last = [None::<u64>; PRODUCERS];
                let deadline = Instant::now() + Duration::from_secs(120);
                // Reader 0 reads one record a call, reader 1 a copy a call.
                let bad = std::cell::Cell::new(0);
                let mut see = |slot: usize, seq: u64, data: &[u8]| {
                    if !intact(data) {
                        bad.set(3); // a torn record handed out
                    } else if last[slot].is_some_and(|l| seq <= l) {
                        bad.set(4);
                    }
                    last[slot] = Some(seq);
                };
                loop {
                    let stop = board.at(0).load(Ordering::SeqCst) != 0;
                    let got = if r == 0 {
                        reader
                            .next_record()
                            .map(|rec| rec.map(|rec| see(rec.slot, rec.seq, rec.data)).is_some())
                    } else {
                        reader
                            .read_batch(|rec| see(rec.slot, rec.seq, rec.data))
                            .map(|n| n > 0)
                    };
                    if bad.get() != 0 {
                        return bad.get();
                    }
                    match got {
                        Ok(true) => {}
                        Ok(false) if stop => break,
                        Ok(false) => std::thread::sleep(Duration::from_micros(100)),
                        Err(_) => return 5,
                    }
                    if Instant::now() > deadline {
                        return 2;
                    }
                }
                let st = reader.stats();
                let base = 8 + r * 8;
                board.at(base).store(st.read, Ordering::SeqCst);
                board.at(base + 1).store(st.lost, Ordering::SeqCst);
                board.at(base + 2).store(st.overrun, Ordering::SeqCst);
                board.at(base + 3).store(st.corrupt, Ordering::SeqCst);
                0
            })
        })
        .collect();
    children.0.extend(&readers);
    let mut rng = Rng(std::process::id() as u64 | 1 << 40);
    eprintln!("ring storm: {kills} kills, seed {}", rng.0);
    let mut producers: Vec<_> = (0..PRODUCERS as u64)
        .map(|w| spawn_producer(&ring, w))
        .collect();
    children.0.extend(&producers);
    let start = Instant::now();
    for k in 0..kills {
        std::thread::sleep(Duration::from_micros(rng.next() % 2000));
        let victim = (rng.next() % PRODUCERS as u64) as usize;
        // SAFETY: our own child.
        unsafe { libc::kill(producers[victim], libc::SIGKILL) };
        let how = wait_within(producers[victim], Duration::from_secs(10));
        assert_eq!(
            how,
            Exit::Signal(libc::SIGKILL),
            "producer exited on its own"
        );
        producers[victim] = spawn_producer(&ring, (PRODUCERS + k) as u64);
    }
    for &pid in &producers {
        // SAFETY: our own children.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(
            wait_within(pid, Duration::from_secs(10)),
            Exit::Signal(libc::SIGKILL)
        );
    }
    let storm = start.elapsed();
    board.at(0).store(1, Ordering::SeqCst);
    for pid in readers {
        children.0.retain(|&p| p != pid);
        let how = wait_within(pid, Duration::from_secs(150));
        assert_eq!(
            how,
            Exit::Code(0),
            "a reader failed (2 hang, 3 torn record, 4 order, 5 error)"
        );
    }
    let all_kills = (kills + PRODUCERS) as u64;
    let st = ring.stats();
    let seqs: u64 = st.slots.iter().map(|s| s.next_seq).sum();
    eprintln!(
        "ring storm: {all_kills} kills in {storm:?}; written {}, seqs {seqs}, torn {}, \
         overwritten {}, repaired {}",
        st.written,
        st.torn,
        st.overwritten,
        st.slots.iter().map(|s| s.repaired).sum::<u64>()
    );
    assert!(st.torn <= all_kills);
    assert_eq!(st.slots.iter().map(|s| s.repaired).sum::<u64>(), 0);
    assert!(st.slots.iter().map(|s| s.claims as u64).sum::<u64>() <= all_kills);
    for r in 0..READERS {
        let base = 8 + r * 8;
        let [read, lost, overrun, corrupt] =
            [0, 1, 2, 3].map(|k| board.at(base + k).load(Ordering::SeqCst));
        eprintln!(
            "ring storm: reader {r}: read {read}, lost {lost} (overrun {overrun}, \
             torn {})",
            lost - overrun
        );
        assert_eq!(corrupt, 0, "reader {r}");
        assert!(
            lost - overrun <= all_kills,
            "reader {r}: more than one loss per kill"
        );
        // Every sequence number is read or counted lost, except a torn
        // last record of a slot (no later record shows its gap).
        assert!(
            read + lost <= seqs && read + lost + PRODUCERS as u64 >= seqs,
            "reader {r}: read {read} + lost {lost} vs {seqs} sequence numbers"
        );
    }
}
