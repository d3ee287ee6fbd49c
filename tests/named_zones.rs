//! Zones in named regions: create, attach from an unrelated process (started
//! with `std::process::Command`), two views in one process, read-only
//! snapshots, and header validation of whatever an attach finds.

mod common;

use common::named::{Fresh, KINDS};

use std::time::Duration;

use shmzone::{Error, NamedId, Region, Zones};

const CHILD_VAR: &str = "SHMZONE_NAMED_ZONES_CHILD";

fn builder() -> shmzone::ZonesBuilder {
    Zones::builder()
        .zone("z", 256 << 10)
        .zone("other", 64 << 10)
        .slack(1 << 20)
}

/// Runs `role` for `id` in a new process (this binary, re-executed).
fn run_child(role: &str, id: &NamedId) -> i32 {
    common::named::run_child(CHILD_VAR, role, id)
}

/// Reads the u64 at the root of zone `name`.
fn root_value(zones: &Zones, name: &str) -> Option<u64> {
    let zone = zones.get(name)?;
    let p = zone.value_at::<u64>(zone.root())?;
    // SAFETY: the root of these test zones is always a u64 made by
    // alloc_value.
    Some(unsafe { p.as_ptr().read() })
}

/// Allocates `v` in zone `name` and makes it the zone's root.
fn set_root_value(zones: &Zones, name: &str, v: u64) {
    let zone = match zones.get(name) {
        Some(zone) => zone,
        None => zones.get_or_create(name, 64 << 10).unwrap(),
    };
    let p = zone.alloc_value(v).unwrap();
    zone.set_root(zone.offset_of(p.as_ptr().cast()).unwrap());
}

/// The child's side; a no-op test without `SHMZONE_NAMED_ZONES_CHILD`.
#[test]
fn child_entry() {
    let Some((role, spec)) = common::named::child_request(CHILD_VAR) else {
        return;
    };
    let code = match role.as_str() {
        // Reads the parent's value, answers with its own and a new zone.
        "exchange" => {
            let zones = Zones::attach(&spec).expect("child attach");
            if root_value(&zones, "z") != Some(0x0123_4567_89ab_cdef) {
                3
            } else {
                set_root_value(&zones, "other", 0xc0ff_ee00);
                set_root_value(&zones, "made-by-child", 77);
                zones.get("z").unwrap().check().map_or(4, |_| 0)
            }
        }
        // Read-only: sees the zones and the parent's value.
        "read_only" => {
            let zones = Zones::attach(&spec.read_only(true)).expect("child attach");
            let names: Vec<String> = zones.iter().map(|z| z.name().to_string()).collect();
            if names.contains(&"z".to_string()) && root_value(&zones, "z") == Some(5) {
                0
            } else {
                5
            }
        }
        other => panic!("unknown role {other}"),
    };
    std::process::exit(code);
}

#[test]
fn attach_from_a_command_started_process_and_exchange_both_ways() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let master = Zones::create_named(builder(), &f.spec()).unwrap();
        assert_eq!(master.region().named(), Some(&f.0));
        set_root_value(&master, "z", 0x0123_4567_89ab_cdef);
        assert_eq!(run_child("exchange", &f.0), 0, "{kind}");
        assert_eq!(root_value(&master, "other"), Some(0xc0ff_ee00), "{kind}");
        assert_eq!(root_value(&master, "made-by-child"), Some(77), "{kind}");
        for z in master.iter() {
            z.check().unwrap();
        }
    }
}

#[test]
fn read_only_attach_from_a_command_started_process() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let master = Zones::create_named(builder(), &f.spec()).unwrap();
        set_root_value(&master, "z", 5);
        assert_eq!(run_child("read_only", &f.0), 0, "{kind}");
    }
}

#[test]
fn two_views_at_two_addresses_in_one_process() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let a = Zones::create_named(builder(), &f.spec()).unwrap();
        let b = Zones::attach(&f.spec()).unwrap();
        assert_ne!(a.region().as_ptr(), b.region().as_ptr());
        assert_eq!(a.len(), b.len());

        // Allocate through one view, read through the other, both ways.
        let za = a.get("z").unwrap();
        let zb = b.get("z").unwrap();
        let mut offsets = Vec::new();
        for i in 0..200u64 {
            let p = za.alloc_value(i * 3).unwrap();
            offsets.push(za.offset_of(p.as_ptr().cast()).unwrap());
        }
        for (i, &off) in offsets.iter().enumerate() {
            let q = zb.value_at::<u64>(off).unwrap();
            // SAFETY: a u64 written through the other view.
            assert_eq!(unsafe { q.as_ptr().read() }, i as u64 * 3, "{kind}");
            assert_ne!(
                q.as_ptr() as usize,
                za.ptr_at(off).unwrap().as_ptr() as usize
            );
        }
        // Free through the other view what the first allocated.
        for &off in &offsets {
            let q = zb.ptr_at(off).unwrap();
            // SAFETY: allocated above, freed once.
            unsafe { zb.free(q.as_ptr()) }.unwrap();
        }
        assert_eq!(za.stats(), zb.stats());
        // A zone made at run time through one is found through the other.
        set_root_value(&b, "late", 99);
        assert_eq!(root_value(&a, "late"), Some(99), "{kind}");
        za.check().unwrap();
        zb.check().unwrap();
    }
}

#[test]
fn a_read_only_attach_is_a_snapshot_and_never_waits_for_held_locks() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let master = Zones::create_named(builder(), &f.spec()).unwrap();
        set_root_value(&master, "z", 41);
        let zone = master.get("z").unwrap();
        // A lock held (by this process, as by a busy worker) while the
        // snapshot is taken must not make the reader wait for it.
        let guard = zone.lock();
        let spec = f.spec().read_only(true);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let snap = Zones::attach(&spec).unwrap();
            let names: Vec<String> = snap.iter().map(|z| z.name().to_string()).collect();
            let stats = snap.get("z").unwrap().stats();
            let root = root_value(&snap, "z");
            tx.send((names, stats, root)).unwrap();
        });
        let (names, stats, root) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the read-only attach waited for a lock held elsewhere");
        drop(guard);
        assert_eq!(names, vec!["z".to_string(), "other".to_string()], "{kind}");
        assert_eq!(root, Some(41));
        assert_eq!(stats, zone.stats());
        // The original's lock is untouched by the snapshot's release.
        assert_eq!(zone.mutex().recoveries(), 0, "{kind}");
    }
}

#[test]
fn creating_zones_over_an_existing_name_is_refused_unless_replace() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let first = Zones::create_named(builder(), &f.spec()).unwrap();
        set_root_value(&first, "z", 1);
        let e = Zones::create_named(builder(), &f.spec()).unwrap_err();
        assert!(matches!(e, Error::AlreadyExists { .. }), "{kind}: {e:?}");
        assert_eq!(root_value(&first, "z"), Some(1));
        let second = Zones::create_named(builder(), &f.spec().replace(true)).unwrap();
        assert_eq!(
            second.get("z").unwrap().root(),
            0,
            "{kind}: replace kept data"
        );
    }
}

/// The bytes of a freshly made region with zones "z" and "other", as a file.
fn region_image() -> Vec<u8> {
    let f = Fresh::new("file");
    let zones = Zones::create_named(builder(), &f.spec()).unwrap();
    set_root_value(&zones, "z", 8);
    drop(zones);
    std::fs::read(f.path()).unwrap()
}

/// Writes `bytes` to a fresh file and attaches it, read-write and read-only:
/// both must give the same kind of error.
fn attach_bytes(bytes: &[u8]) -> Result<(), Error> {
    let f = Fresh::new("file");
    std::fs::write(f.path(), bytes).unwrap();
    let rw = Zones::attach(&f.spec()).map(|_| ());
    let ro = Zones::attach(&f.spec().read_only(true)).map(|_| ());
    assert_eq!(rw.is_ok(), ro.is_ok(), "{rw:?} / {ro:?}");
    rw
}

fn bad_region(r: Result<(), Error>, needle: &str) {
    match r {
        Err(Error::BadRegion { reason }) => {
            assert!(reason.contains(needle), "expected {needle:?} in {reason:?}")
        }
        other => panic!("expected BadRegion ({needle}), got {other:?}"),
    }
}

/// Offset of a directory entry, found by its name: an entry is flags u32,
/// name_len u32, tag u64, offset u64, size u64, then the name in 64 bytes.
fn entry_of(image: &[u8], name: &str) -> usize {
    let mut padded = name.as_bytes().to_vec();
    padded.resize(64, 0);
    (32..8192 - 64)
        .find(|&p| {
            image[p..p + 64] == padded[..]
                && image[p - 28..p - 24] == (name.len() as u32).to_le_bytes()
        })
        .expect("the entry")
        - 32
}

#[test]
fn a_valid_image_attaches() {
    attach_bytes(&region_image()).unwrap();
}

#[test]
fn random_and_zero_files_are_refused() {
    let page = shmzone::page_size();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..64 * page)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    bad_region(attach_bytes(&random), "magic");
    bad_region(attach_bytes(&vec![0; 64 * page]), "magic");
    // A one-page file is smaller than any region.
    bad_region(attach_bytes(&vec![0; page]), "smaller");
}

#[test]
fn another_layout_version_is_refused() {
    let mut image = region_image();
    image[8] ^= 0x40; // the u32 after the magic
    bad_region(attach_bytes(&image), "layout version");
}

#[test]
fn a_length_that_is_not_the_mapping_size_is_refused() {
    let page = shmzone::page_size();
    let image = region_image();
    // Truncated by a whole number of pages.
    bad_region(attach_bytes(&image[..image.len() - page]), "records");
    // Grown by a page.
    let mut grown = image.clone();
    grown.extend(std::iter::repeat_n(0, page));
    bad_region(attach_bytes(&grown), "records");
    // Cut mid-page: refused before any header is read.
    let e = attach_bytes(&image[..image.len() - 100]).unwrap_err();
    assert!(matches!(e, Error::BadNamed { .. }), "{e:?}");
}

#[test]
fn bad_directory_entries_are_refused() {
    let image = region_image();
    let z = entry_of(&image, "z");
    let other = entry_of(&image, "other");
    let put = |img: &mut Vec<u8>, at: usize, v: u64| {
        img[at..at + 8].copy_from_slice(&v.to_le_bytes());
    };
    // Outside the region.
    let mut img = image.clone();
    put(&mut img, z + 16, image.len() as u64);
    bad_region(attach_bytes(&img), "inside the region");
    // Not aligned.
    let mut img = image.clone();
    let off = u64::from_le_bytes(image[z + 16..z + 24].try_into().unwrap());
    put(&mut img, z + 16, off + 8);
    bad_region(attach_bytes(&img), "aligned");
    // Size overflowing.
    let mut img = image.clone();
    put(&mut img, z + 24, u64::MAX - 4095);
    bad_region(attach_bytes(&img), "inside the region");
    // Overlapping: "other" moved onto "z" with z's size.
    let mut img = image.clone();
    let size = u64::from_le_bytes(image[z + 24..z + 32].try_into().unwrap());
    put(&mut img, other + 16, off);
    put(&mut img, other + 24, size);
    bad_region(attach_bytes(&img), "overlap");
    // A name that is not UTF-8.
    let mut img = image.clone();
    img[z + 32] = 0xff;
    bad_region(attach_bytes(&img), "UTF-8");
    // A name length past the bound.
    let mut img = image.clone();
    img[z + 4..z + 8].copy_from_slice(&200u32.to_le_bytes());
    bad_region(attach_bytes(&img), "63");
}

#[test]
fn garbage_in_a_posix_or_sysv_region_is_refused() {
    for kind in ["posix", "sysv"] {
        let f = Fresh::new(kind);
        let r = Region::create_named(64 * shmzone::page_size(), &f.spec()).unwrap();
        // Never formatted: all zeroes.
        bad_region(Zones::attach(&f.spec()).map(|_| ()), "magic");
        // SAFETY: the region is mapped read-write for its whole length.
        unsafe { std::ptr::write_bytes(r.as_ptr(), 0xa5, r.len()) };
        bad_region(Zones::attach(&f.spec()).map(|_| ()), "magic");
        bad_region(
            Zones::attach(&f.spec().read_only(true)).map(|_| ()),
            "magic",
        );
    }
}

#[test]
fn from_region_refuses_a_read_only_mapping() {
    let f = Fresh::new("posix");
    let _master = Zones::create_named(builder(), &f.spec()).unwrap();
    let ro = Region::attach_named(&f.spec().read_only(true)).unwrap();
    bad_region(Zones::from_region(ro).map(|_| ()), "read-only");
    let rw = Region::attach_named(&f.spec()).unwrap();
    Zones::from_region(rw).unwrap();
}
