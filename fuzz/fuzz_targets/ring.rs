//! A log ring whose header, slot headers and records are overwritten with
//! fuzzer bytes, then opened, read, written and read again: errors and
//! skipped records, never a panic, a hang or a read outside the zone. A
//! reader made before the damage keeps reading too.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shmzone::ring::{Ring, RingConfig, Start};
use shmzone::Zones;

#[derive(Arbitrary, Debug)]
struct Input {
    /// 1..=4 slots (low bits); bit 4: the reader made before the damage
    /// and the one from the newest record follow at a distance (1 KiB);
    /// bit 5: the readers read with `read_batch`
    /// (else `next_record`); bit 6: the producers stamp records (3-word
    /// headers); bit 7: the reader made after the damage batches.
    slots: u8,
    /// 4 KiB or 8 KiB slots.
    big: bool,
    /// Record lengths written before the damage (taken modulo 200).
    before: Vec<u8>,
    /// (where, offset, value): where % 4 picks the ring header, the slot
    /// headers, the data, or the zone's root word; the offset is taken
    /// modulo that area's length.
    patches: Vec<(u8, u16, u64)>,
    /// Record lengths written after the damage (by a new producer).
    after: Vec<u8>,
}

/// Reads at most `n` records, or `n` copies with `read_batch` (every call
/// must return: a hang is a fuzzer timeout).
fn drain(r: &mut shmzone::ring::Reader<'_>, n: usize, batch: bool) {
    let max = r.ring().max_record();
    for _ in 0..n {
        if batch {
            let mut got = 0;
            match r.read_batch(|rec| {
                assert!(rec.data.len() <= max);
                got += 1;
            }) {
                Ok(0) => {
                    assert_eq!(got, 0);
                    break;
                }
                Ok(k) => assert_eq!(k, got),
                Err(_) => {}
            }
            continue;
        }
        match r.next_record() {
            Ok(Some(rec)) => {
                assert!(rec.data.len() <= r.ring().max_record());
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let _ = r.stats();
}

fuzz_target!(|input: Input| {
    let cfg = RingConfig {
        slots: 1 + (input.slots % 4) as usize,
        slot_bytes: if input.big { 8192 } else { 4096 },
        max_record: 200,
        timestamps: false,
    };
    let zones = Zones::builder()
        .zone("log", cfg.zone_size())
        .build()
        .expect("zones");
    let zone = zones.get("log").unwrap();
    let ring = Ring::create(&zone, &cfg).expect("ring");
    let stamp = input.slots & 0x40 != 0;
    let batch = input.slots & 0x20 != 0;
    let follow = if input.slots & 0x10 != 0 { 1024 } else { 0 };
    let mut early = ring.reader(Start::Oldest);
    early.set_follow_distance(follow);
    {
        let mut p = ring.producer().expect("a slot");
        p.set_timestamps(stamp);
        for (i, &len) in input.before.iter().take(2000).enumerate() {
            let rec = vec![i as u8; (len % 200) as usize];
            p.write(&rec).expect("fits");
        }
        // Dropped without giving the slot back cleanly half the time: a
        // "dead" owner is this process, so it stays owned.
        if input.before.len() % 2 == 1 {
            std::mem::forget(p);
        }
    }
    let root = zone.root();
    let meta = cfg.ring_bytes() - cfg.slots * cfg.slot_bytes;
    let areas = [
        (root, 64),
        (root + 64, cfg.slots * 128),
        (root + meta, cfg.slots * cfg.slot_bytes),
    ];
    for &(what, off, value) in input.patches.iter().take(64) {
        match what % 4 {
            3 => zone.set_root(value as usize),
            k => {
                let (start, len) = areas[k as usize];
                let at = start + (off as usize % (len - 7));
                let p = zone.ptr_at(at).expect("inside the zone");
                // SAFETY: 8 bytes at `at` lie inside the ring's allocation
                // in the zone; this process is the only one using it.
                unsafe { p.as_ptr().cast::<u64>().write_unaligned(value) };
            }
        }
    }
    drain(&mut early, 5000, batch);
    let Ok(ring) = Ring::open(&zone) else {
        return;
    };
    let _ = ring.stats();
    let mut oldest = ring.reader(Start::Oldest);
    oldest.set_batching(input.slots & 0x80 != 0);
    let mut newest = ring.reader(Start::Newest);
    newest.set_follow_distance(follow);
    drain(&mut oldest, 5000, batch);
    if let Ok(mut p) = ring.producer() {
        p.set_timestamps(stamp);
        for (i, &len) in input.after.iter().take(2000).enumerate() {
            let _ = p.write(&vec![i as u8; (len % 201) as usize]);
        }
    }
    drain(&mut newest, 5000, batch);
    drain(&mut oldest, 5000, batch);
    drain(&mut early, 5000, batch);
    let _ = ring.stats();
});
