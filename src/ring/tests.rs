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
            max_record: 1000,
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
