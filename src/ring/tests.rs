//! Unit tests of the ring in one process.

use super::*;

fn ring_zones(cfg: &RingConfig) -> Zones {
    Zones::builder()
        .zone("log", cfg.zone_size())
        .build()
        .unwrap()
}

fn small() -> RingConfig {
    RingConfig {
        slots: 2,
        slot_bytes: 4096,
        max_record: 200,
        timestamps: false,
    }
}

#[test]
fn config_bounds() {
    assert!(RingConfig::default().validate().is_ok());
    for bad in [
        RingConfig {
            slots: 0,
            ..small()
        },
        RingConfig {
            slot_bytes: 5000,
            ..small()
        },
        RingConfig {
            slot_bytes: 2048,
            ..small()
        },
        RingConfig {
            max_record: 0,
            ..small()
        },
        RingConfig {
            max_record: 1001,
            ..small()
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(RingError::BadConfig { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn open_names_the_zone() {
    let zones = ring_zones(&small());
    let zone = zones.get("log").unwrap();
    let e = Ring::open(&zone).unwrap_err();
    assert!(matches!(e, RingError::NoRing { .. }));
    assert!(e.to_string().contains("\"log\""), "{e}");
    let v = zone.alloc_value([1u64; 8]).unwrap();
    zone.set_root(zone.offset_of(v.as_ptr().cast()).unwrap());
    let e = Ring::open(&zone).unwrap_err();
    assert!(matches!(e, RingError::BadRing { .. }), "{e}");
    assert!(matches!(
        Ring::create(&zone, &small()),
        Err(RingError::RootTaken { .. })
    ));
}

#[test]
fn write_read_wrap_and_lap() {
    let cfg = small();
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let mut oldest = ring.reader(Start::Oldest);
    let mut keeping_up = ring.reader(Start::Newest);
    let mut p = ring.producer().unwrap();
    let mut got = 0u64;
    for i in 0..1000u64 {
        let len = (i * 7 % 150) as usize;
        let rec = vec![i as u8; len];
        assert_eq!(p.write(&rec).unwrap(), i);
        let r = keeping_up.next_record().unwrap().expect("a record");
        assert_eq!(
            (r.seq, r.data, r.pid, r.time_ns),
            (i, &rec[..], p.pid(), None)
        );
        got += 1;
        assert!(keeping_up.next_record().unwrap().is_none());
    }
    assert_eq!((got, keeping_up.lost()), (1000, 0));
    // The one that waited was lapped: it reads what is left, in order,
    // and counts the rest as lost.
    let mut last = None;
    while let Some(r) = oldest.next_record().unwrap() {
        assert_eq!(r.data, &vec![r.seq as u8; (r.seq * 7 % 150) as usize][..]);
        assert!(last.is_none_or(|l| r.seq == l + 1));
        last = Some(r.seq);
    }
    assert_eq!(last, Some(999));
    assert_eq!(oldest.read() + oldest.lost(), 1000);
    assert!(oldest.lost() > 0);
    let st = ring.stats();
    assert_eq!(st.written, 1000);
    assert_eq!(st.slots[p.slot()].overwritten, oldest.lost());
    assert!(matches!(
        p.write(&[0; 201]),
        Err(RingError::TooLong { len: 201, max: 200 })
    ));
    assert_eq!(ring.stats().dropped, 1);
}

/// Every payload length from 0 to the maximum, with bytes that differ by
/// position, stamped and not, wrapping the slot's end many times: each
/// byte reads back where it was written (the SSE pieces, the 8-byte word
/// and the zero-padded last word of the payload store, and the wrapped
/// path).
#[test]
fn every_length_reads_back_byte_for_byte() {
    let cfg = small();
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let mut r = ring.reader(Start::Newest);
    let mut p = ring.producer().unwrap();
    let pattern = |seq: u64, len: usize| -> Vec<u8> {
        (0..len)
            .map(|j| (seq as usize * 31 + j * 7 + 1) as u8)
            .collect()
    };
    for round in 0..6u64 {
        for len in 0..=cfg.max_record {
            let seq = p.next_seq();
            let rec = pattern(seq, len);
            let time = if round % 2 == 1 { 1 + seq } else { 0 };
            if round < 4 {
                assert_eq!(p.write_at(&rec, time).unwrap(), seq);
            } else {
                p.set_timestamps(round == 5);
                assert_eq!(p.write(&rec).unwrap(), seq);
            }
            let got = r.next_record().unwrap().expect("a record");
            assert_eq!((got.seq, got.data), (seq, &rec[..]), "round {round}");
            assert_eq!(got.time_ns.is_some(), time != 0 || round == 5);
            if round < 4 && time != 0 {
                assert_eq!(got.time_ns, Some(time));
            }
        }
    }
    assert_eq!(r.lost(), 0);
    let st = ring.stats();
    assert_eq!(st.written, 6 * (cfg.max_record as u64 + 1));
    assert_eq!(st.bytes, 6 * (0..=cfg.max_record as u64).sum::<u64>());
}

#[test]
fn slots_are_claimed_once_and_given_back() {
    let cfg = small();
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let a = ring.producer().unwrap();
    let b = ring.producer().unwrap();
    assert_ne!(a.slot(), b.slot());
    assert!(matches!(
        ring.producer(),
        Err(RingError::NoFreeSlot { slots: 2, .. })
    ));
    drop(a);
    let c = ring.producer().unwrap();
    assert_eq!(ring.stats().producers, 2);
    drop((b, c));
    assert_eq!(ring.stats().producers, 0);
}

#[test]
fn get_or_create_makes_one_ring() {
    let zones = Zones::builder().build().unwrap();
    let cfg = small();
    let r1 = Ring::get_or_create(&zones, "access_log", &cfg).unwrap();
    r1.producer().unwrap().write(b"x").unwrap();
    let r2 = Ring::get_or_create(&zones, "access_log", &cfg).unwrap();
    assert_eq!(r2.stats().written, 1);
    let other = RingConfig { slots: 3, ..cfg };
    assert!(Ring::get_or_create(&zones, "access_log", &other).is_err());
}

/// The fuzz target's program with xorshift instead of a fuzzer: random
/// words written over the ring's header, slot headers and records, then
/// open, read, write, read. Errors only: no panic (overflow checks are on
/// in tests), no endless loop.
#[test]
fn random_corruption_gives_errors_never_panics() {
    let mut rnd = crate::testing::xorshift(42);
    let (mut opened, mut records, mut errors) = (0, 0, 0);
    for round in 0..1000 {
        let cfg = RingConfig {
            slots: 1 + round % 3,
            slot_bytes: 4096,
            max_record: 200,
            timestamps: round % 2 == 0,
        };
        let zones = ring_zones(&cfg);
        let zone = zones.get("log").unwrap();
        let ring = Ring::create(&zone, &cfg).unwrap();
        let mut early = ring.reader(Start::Oldest);
        let mut p = ring.producer().unwrap();
        for i in 0..rnd() % 200 {
            p.write(&vec![i as u8; (rnd() % 200) as usize]).unwrap();
        }
        let root = zone.root();
        let meta = cfg.ring_bytes() - cfg.slots * cfg.slot_bytes;
        let areas = [
            (root, 64),
            (root + 64, cfg.slots * 128),
            (root + meta, cfg.slots * cfg.slot_bytes),
        ];
        for _ in 0..1 + rnd() % 4 {
            let (start, len) = areas[(rnd() % 3) as usize];
            let at = start + (rnd() as usize % (len - 7)) / 8 * 8;
            let v = match rnd() % 4 {
                0 => rnd(),
                1 => rnd() % 8192,
                2 => 0,
                _ => u64::MAX - rnd() % 16,
            };
            // SAFETY: 8 aligned bytes inside the ring's allocation, used by
            // this test alone.
            unsafe { zone.ptr_at(at).unwrap().as_ptr().cast::<u64>().write(v) };
        }
        // Half the rounds read with `read_batch`.
        let batch = round % 4 >= 2;
        let mut drain = |r: &mut Reader<'_>| {
            for _ in 0..2000 {
                if batch {
                    match r.read_batch(|rec| {
                        assert!(rec.data.len() <= 200);
                        records += 1;
                    }) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => errors += 1,
                    }
                    continue;
                }
                match r.next_record() {
                    Ok(Some(rec)) => {
                        assert!(rec.data.len() <= 200);
                        records += 1;
                    }
                    Ok(None) => break,
                    Err(_) => errors += 1,
                }
            }
            let _ = r.stats();
        };
        drain(&mut early);
        let Ok(ring) = Ring::open(&zone) else {
            continue;
        };
        opened += 1;
        let _ = ring.stats();
        let mut oldest = ring.reader(Start::Oldest);
        drain(&mut oldest);
        drop(p);
        if let Ok(mut p) = ring.producer() {
            for i in 0..rnd() % 300 {
                let _ = p.write(&vec![i as u8; (rnd() % 201) as usize]);
            }
        }
        drain(&mut oldest);
        drain(&mut early);
    }
    // The damage often hits only records or counters: rings still open.
    assert!(opened > 300, "opened {opened}");
    assert!(
        records > 0 && errors > 0,
        "records {records}, errors {errors}"
    );
}

#[test]
fn find_by_zone_name() {
    let cfg = small();
    let zones = ring_zones(&cfg);
    assert!(matches!(
        Ring::find(&zones, "log"),
        Err(RingError::NoRing { .. })
    ));
    Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    assert_eq!(Ring::find(&zones, "log").unwrap().slots(), 2);
    let e = Ring::find(&zones, "nope").unwrap_err();
    assert!(e.to_string().contains("\"nope\""), "{e}");
}

#[test]
fn zone_size_is_enough() {
    for (slots, slot_bytes) in [
        (1, 4096),
        (1024, 4096),
        (16, 256 << 10),
        (3, 4 << 20),
        (1, 32 << 20),
    ] {
        let cfg = RingConfig {
            slots,
            slot_bytes,
            max_record: 100,
            timestamps: false,
        };
        let zones = ring_zones(&cfg);
        let ring = Ring::create(&zones.get("log").unwrap(), &cfg)
            .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        assert_eq!((ring.slots(), ring.slot_bytes()), (slots, slot_bytes));
    }
}

/// A one-slot ring with 10 records, and a reader that the producer laps
/// during each of its first 6 refills (a slot's worth of 64-byte records,
/// 16 of header and 48 of payload, and 3 more: the copy is always stale).
/// `read` is called until it has counted 100 calls (it says which count);
/// then at least 4 laps happened, every record was read or counted lost,
/// and some were lost. Returns the reader's stats.
fn lapped_on_every_try(mut read: impl FnMut(&mut Reader<'_>) -> bool) -> ReaderStats {
    use std::cell::RefCell;
    use std::rc::Rc;
    let cfg = RingConfig {
        slots: 1,
        ..small()
    };
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let mut reader = ring.reader(Start::Oldest);
    let p = Rc::new(RefCell::new(ring.producer().unwrap()));
    let write = |p: &Rc<RefCell<Producer<'_>>>, n: usize| {
        let mut p = p.borrow_mut();
        for _ in 0..n {
            let seq = p.next_seq();
            p.write(&[seq as u8; 48]).unwrap();
        }
    };
    write(&p, 10);
    let laps = Rc::new(RefCell::new(0));
    let (p2, laps2) = (p.clone(), laps.clone());
    reader.mid_copy = Some(Box::new(move || {
        let mut n = laps2.borrow_mut();
        if *n < 6 {
            *n += 1;
            write(&p2, (cfg.slot_bytes / 64) + 3);
        }
    }));
    let mut counted = 0;
    while counted < 100 {
        if read(&mut reader) {
            counted += 1;
        }
    }
    let written = p.borrow().next_seq();
    assert!(
        *laps.borrow() >= 4,
        "the reader was lapped {} times",
        laps.borrow()
    );
    assert_eq!(
        reader.read() + reader.lost(),
        written,
        "read {} lost {} of {written}",
        reader.read(),
        reader.lost()
    );
    assert!(reader.lost() > 0);
    reader.stats()
}

/// A reader lapped in every one of its refill's tries skips ahead; when
/// the producer then stops, every record it did not read must still be
/// counted as lost (read + lost == written), and what it reads is in order.
#[test]
fn a_reader_lapped_on_every_try_counts_what_it_skipped() {
    let mut last = None;
    // Counts the calls that find nothing.
    let stats = lapped_on_every_try(|reader| match reader.next_record().unwrap() {
        Some(r) => {
            assert_eq!(r.data, &[r.seq as u8; 48][..]);
            assert!(last.is_none_or(|l| r.seq > l), "{:?} after {last:?}", r.seq);
            last = Some(r.seq);
            false
        }
        None => true,
    });
    assert_eq!(stats.lag_records, 0);
}

/// A batching reader leaves the producer's current cache line alone while
/// the head moves (and reads nothing while less than a largest record lies
/// below it), and reads up to the head once it stops: nothing is lost or
/// repeated.
#[test]
fn a_batching_reader_stays_off_the_line_being_written() {
    let cfg = RingConfig {
        slots: 1,
        slot_bytes: 1 << 16,
        ..small()
    };
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let mut r = ring.reader(Start::Oldest);
    r.set_batching(true);
    let mut p = ring.producer().unwrap();
    let drain = |r: &mut Reader<'_>, expect: &mut u64| {
        let mut n = 0;
        while let Some(rec) = r.next_record().unwrap() {
            assert_eq!((rec.seq, rec.data), (*expect, &[*expect as u8; 48][..]));
            *expect += 1;
            n += 1;
        }
        n
    };
    let mut next = 0;
    for i in 0..3u64 {
        p.write(&[i as u8; 48]).unwrap();
    }
    // The head moved since the reader last looked: nothing yet.
    assert_eq!(drain(&mut r, &mut next), 0);
    // It did not move since: all of it.
    assert_eq!(drain(&mut r, &mut next), 3);
    // 64-byte records (one per cache line here): 200 of them, one poll, one
    // more record (the producer is still writing): the polls read all but
    // the one in the head's cache line.
    for i in 3..203u64 {
        p.write(&[i as u8; 48]).unwrap();
    }
    assert!(r.next_record().unwrap().is_some());
    next += 1;
    p.write(&[203; 48]).unwrap();
    let got = 1 + drain(&mut r, &mut next);
    let left = p.next_seq() - 3 - got;
    assert_eq!(left, 1, "read {got}");
    // The head did not move since: the rest.
    assert_eq!(drain(&mut r, &mut next), left);
    assert_eq!((r.read(), r.lost(), next), (204, 0, 204));
    r.set_batching(false);
    p.write(&[204; 48]).unwrap();
    assert_eq!(drain(&mut r, &mut next), 1, "off: at once");
}

/// Everything a reader hands out and counts, as one list.
type Seen = Vec<(usize, u64, Vec<u8>, Option<u64>)>;

/// `read_batch` hands out the same records, in the same order, with the
/// same counts as `next_record`, in random mixes of writes (some of them
/// lapping the readers, some stamped), polls of both kinds and slots.
#[test]
fn read_batch_sees_what_next_record_sees() {
    let mut rnd = crate::testing::xorshift(7);
    let (mut lossless, mut lossy) = (0, 0);
    for round in 0..200 {
        let cfg = RingConfig {
            slots: 1 + round % 3,
            slot_bytes: 4096 << (round % 2),
            max_record: 200,
            timestamps: round % 4 == 1,
        };
        let zones = ring_zones(&cfg);
        let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
        let mut one = ring.reader(Start::Oldest);
        let mut batched = ring.reader(Start::Oldest);
        let mut mixed = ring.reader(Start::Oldest);
        if round % 5 == 0 {
            batched.set_batching(true);
        }
        let mut ps: Vec<_> = (0..cfg.slots).map(|_| ring.producer().unwrap()).collect();
        let (mut s1, mut s2, mut s3) = (Seen::new(), Seen::new(), Seen::new());
        let mut batches = 0;
        let keep =
            |s: &mut Seen, r: Record<'_>| s.push((r.slot, r.seq, r.data.to_vec(), r.time_ns));
        // Odd rounds write little between polls: nothing is lost there.
        let (most, polls) = if round % 2 == 0 { (150, 0) } else { (16, 1) };
        for _ in 0..20 {
            for _ in 0..rnd() % most {
                let p = &mut ps[(rnd() % cfg.slots as u64) as usize];
                p.set_timestamps(rnd() % 3 == 0);
                let len = (rnd() % 201) as usize;
                p.write_at(&vec![p.next_seq() as u8; len], rnd() % 2)
                    .unwrap();
            }
            // Poll each a random number of times (the lapped ones lose
            // records: the same ones as long as they poll alike).
            for _ in 0..polls + rnd() % 4 {
                while let Some(r) = one.next_record().unwrap() {
                    keep(&mut s1, r);
                }
                while batched.read_batch(|r| keep(&mut s2, r)).unwrap() > 0 {
                    batches += 1;
                }
                for k in 0.. {
                    let got = if (k + round) % 3 == 0 {
                        mixed
                            .next_record()
                            .unwrap()
                            .map(|r| keep(&mut s3, r))
                            .is_some()
                    } else {
                        mixed.read_batch(|r| keep(&mut s3, r)).unwrap() > 0
                    };
                    if !got {
                        break;
                    }
                }
            }
        }
        // The batching one reads up to the heads from the second poll on.
        for _ in 0..2 {
            while batched.read_batch(|r| keep(&mut s2, r)).unwrap() > 0 {}
        }
        while let Some(r) = one.next_record().unwrap() {
            keep(&mut s1, r);
        }
        while let Some(r) = mixed.next_record().unwrap() {
            keep(&mut s3, r);
        }
        let written = ring.stats().written;
        for (name, r, s) in [
            ("next", &one, &s1),
            ("batch", &batched, &s2),
            ("mixed", &mixed, &s3),
        ] {
            assert_eq!(r.read() + r.lost(), written, "round {round} {name}");
            assert_eq!(r.read(), s.len() as u64, "round {round} {name}");
            for w in s.windows(2) {
                assert!(
                    w[0].0 != w[1].0 || w[1].1 > w[0].1,
                    "round {round} {name}: order"
                );
            }
            for (_, seq, data, _) in s {
                assert!(
                    data.iter().all(|&b| b == *seq as u8),
                    "round {round} {name}: torn"
                );
            }
        }
        if one.lost() == 0 && batched.lost() == 0 && mixed.lost() == 0 {
            // Lossless: every record, and each reader saw them alike (the
            // order of slots aside, which depends on when each polled).
            let sorted = |s: &Seen| {
                let mut s = s.clone();
                s.sort_by_key(|e| (e.0, e.1));
                s
            };
            assert_eq!(sorted(&s1), sorted(&s2), "round {round}");
            assert_eq!(sorted(&s1), sorted(&s3), "round {round}");
            assert_eq!(one.stats(), batched.stats(), "round {round}");
            lossless += 1;
        } else {
            lossy += 1;
        }
        assert!(batches > 0 || written == 0);
    }
    assert!(
        lossless > 20 && lossy > 20,
        "{lossless} lossless, {lossy} lossy"
    );
}

/// A reader lapped during every refill, reading with `read_batch`: what
/// it reads is in order and sound, and read + lost covers every record.
#[test]
fn read_batch_when_lapped_on_every_try() {
    let mut last = None;
    // Counts every call.
    let stats = lapped_on_every_try(|reader| {
        reader
            .read_batch(|r| {
                assert_eq!(r.data, &[r.seq as u8; 48][..]);
                assert!(last.is_none_or(|l| r.seq > l));
                last = Some(r.seq);
            })
            .unwrap();
        true
    });
    assert!(stats.read > 0);
}

/// The producer drops the oldest records an eighth of the slot ahead of
/// writing over them; a reader whose cursor the tail passed reads on from
/// it while its records are whole, and counts nothing lost; one whose
/// records were written over jumps to the tail and counts what it missed.
#[test]
fn a_reader_behind_the_tail_reads_what_is_not_written_over() {
    let cfg = RingConfig {
        slots: 1,
        slot_bytes: 64 << 10,
        ..small()
    };
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let mut reader = ring.reader(Start::Oldest);
    let mut stale = ring.reader(Start::Oldest);
    let mut p = ring.producer().unwrap();
    // 64 bytes a record: 1024 fill the slot, the 1025th makes room.
    let n = 1025u64;
    for i in 0..100 {
        p.write(&[i as u8; 48]).unwrap();
        assert_eq!(reader.next_record().unwrap().unwrap().seq, i);
    }
    for i in 100..n {
        p.write(&[i as u8; 48]).unwrap();
    }
    let dropped = ring.stats().slots[0].overwritten;
    assert!(dropped > 100, "the tail passed the reader: {dropped}");
    let mut next = 100u64;
    while let Some(r) = reader.next_record().unwrap() {
        assert_eq!((r.seq, r.data), (next, &[next as u8; 48][..]));
        next += 1;
    }
    assert_eq!((next, reader.read(), reader.lost()), (n, n, 0));
    while stale.next_record().unwrap().is_some() {}
    assert_eq!((stale.lost(), stale.read() + stale.lost()), (dropped, n));
}

/// Writes records `seqs` (48 bytes of the number each), one call of `r`
/// after each: every record `r` hands out is the next one (`next`), and
/// at least `behind` records behind the producer.
fn follow_while_writing(
    p: &mut Producer<'_>,
    r: &mut Reader<'_>,
    seqs: std::ops::Range<u64>,
    next: &mut u64,
    behind: u64,
) {
    for i in seqs {
        p.write(&[i as u8; 48]).unwrap();
        if let Some(rec) = r.next_record().unwrap() {
            assert_eq!((rec.seq, rec.data), (*next, &[*next as u8; 48][..]));
            assert!(
                p.next_seq() - rec.seq >= behind,
                "{} read at {}",
                rec.seq,
                p.next_seq()
            );
            *next += 1;
        }
    }
}

#[test]
fn a_reader_following_at_a_distance_keeps_it_while_the_producer_writes() {
    let cfg = RingConfig {
        slots: 1,
        slot_bytes: 256 << 10,
        ..small()
    };
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let mut r = ring.reader(Start::Oldest);
    // 16 KiB: 256 records of 48 bytes (64 in the slot).
    r.set_follow_distance(16 << 10);
    let mut p = ring.producer().unwrap();
    let mut next = 0u64;
    for i in 0..100u64 {
        p.write(&[i as u8; 48]).unwrap();
    }
    // The head moved since the reader last looked, and it is close: nothing.
    assert!(r.next_record().unwrap().is_none());
    // The head did not move since: everything.
    while let Some(rec) = r.next_record().unwrap() {
        assert_eq!((rec.seq, rec.data), (next, &[next as u8; 48][..]));
        next += 1;
    }
    assert_eq!(next, 100);
    // A producer that keeps writing: one record written per call, and
    // every record read is at least the distance (256 records) behind.
    follow_while_writing(&mut p, &mut r, 100..2100, &mut next, 256);
    assert!(next > 1000, "it read on behind the head: {next}");
    // The producer stops: the rest on the second call.
    let mut left = 0;
    for _ in 0..2 {
        while let Some(rec) = r.next_record().unwrap() {
            assert_eq!(rec.seq, next);
            next += 1;
            left += 1;
        }
    }
    assert!(left >= 256);
    assert_eq!((r.read(), r.lost(), next), (2100, 0, 2100));
    // Capped at a quarter of the slot.
    r.set_follow_distance(1 << 30);
    assert_eq!(r.distance, 64 << 10);
}

#[test]
fn a_reader_following_at_a_distance_in_a_small_slot_still_keeps_up() {
    // A 4 KiB slot: a copy is the whole slot, so the reader waits for a
    // quarter of it beyond the distance (1 KiB), not for a whole copy,
    // which would never come before the producer laps it.
    let cfg = RingConfig {
        slots: 1,
        ..small()
    };
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let mut r = ring.reader(Start::Oldest);
    r.set_follow_distance(1 << 20);
    let mut p = ring.producer().unwrap();
    let mut next = 0u64;
    follow_while_writing(&mut p, &mut r, 0..1000, &mut next, 16);
    assert!(next > 500, "read {next} while the producer wrote");
    for _ in 0..2 {
        while r.next_record().unwrap().is_some() {}
    }
    assert_eq!((r.read(), r.lost()), (1000, 0));
}
