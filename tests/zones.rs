//! Named zones: built in a master, used by forked workers, reloaded.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{fork_child, wait, wait_ok, wait_within, Exit};
use shmzone::slab::Pool;
use shmzone::{Error, ZoneInit, Zones};

const K64: usize = 64 << 10;

/// The init callback of a "counters" zone: a root array of 8 atomics.
fn counters(zone: &shmzone::Zone<'_>, how: ZoneInit<'_>) -> Result<(), Error> {
    match how {
        ZoneInit::Reused => {
            assert_ne!(zone.root(), 0, "a reused zone keeps its root");
        }
        ZoneInit::Fresh => {
            let p = zone.alloc_value([0u64; 8]).expect("room for the root");
            zone.set_root(zone.offset_of(p.as_ptr().cast()).unwrap());
        }
        ZoneInit::Resized(old) | ZoneInit::Recreated(old) => {
            let p = zone.alloc_value([0u64; 8]).expect("room for the root");
            let from = old.value_at::<[u64; 8]>(old.root()).expect("old root");
            // SAFETY: both roots are live [u64; 8] in their zones; the old one
            // is retired, not freed.
            unsafe { p.as_ptr().write(from.as_ptr().read()) };
            zone.set_root(zone.offset_of(p.as_ptr().cast()).unwrap());
        }
    }
    Ok(())
}

fn slots<'a>(zones: &'a Zones, name: &str) -> &'a [AtomicU64; 8] {
    let zone = zones.get(name).expect("zone exists");
    let p = zone
        .value_at::<[AtomicU64; 8]>(zone.root())
        .expect("root set");
    // SAFETY: the root is a live, aligned array of 8 u64 in shared memory,
    // used only through atomics.
    unsafe { p.as_ref() }
}

#[test]
fn workers_share_zone_data_through_the_root() {
    let zones = Zones::builder()
        .zone("counters", K64)
        .init("counters", counters)
        .zone("other", K64)
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for w in 0..4 {
        let zones = &zones;
        pids.push(fork_child(move || {
            let s = slots(zones, "counters");
            s[w].store(100 + w as u64, Ordering::SeqCst);
            for _ in 0..1000 {
                s[7].fetch_add(1, Ordering::SeqCst);
            }
            // Allocate and keep something in "other" under its lock.
            let other = zones.get("other").unwrap();
            let g = other.lock();
            assert!(g.alloc_locked(100).is_some());
            0
        }));
    }
    for pid in pids {
        wait_ok(pid);
    }
    let s = slots(&zones, "counters");
    for (w, slot) in s.iter().take(4).enumerate() {
        assert_eq!(slot.load(Ordering::SeqCst), 100 + w as u64);
    }
    assert_eq!(s[7].load(Ordering::SeqCst), 4000);
    let other = zones.get("other").unwrap();
    assert_eq!(other.stats().classes.iter().map(|c| c.used).sum::<u64>(), 4);
    other.check().unwrap();
}

#[test]
fn racing_get_or_create_makes_exactly_one_zone() {
    for round in 0..5 {
        let zones = Zones::builder()
            .zone("results", K64)
            .init("results", counters)
            .build()
            .unwrap();
        let mut pids = Vec::new();
        for w in 0..2 {
            let zones = &zones;
            pids.push(fork_child(move || {
                let z = zones
                    .get_or_create_with_tag("runtime", 128 << 10, 9)
                    .unwrap();
                let off = z.pool().base().as_ptr() as usize - zones.region().as_ptr() as usize;
                slots(zones, "results")[w].store(off as u64, Ordering::SeqCst);
                0
            }));
        }
        for pid in pids {
            wait_ok(pid);
        }
        let s = slots(&zones, "results");
        let (a, b) = (s[0].load(Ordering::SeqCst), s[1].load(Ordering::SeqCst));
        assert_eq!(a, b, "round {round}: both workers see the same zone");
        assert_eq!(zones.iter().filter(|z| z.name() == "runtime").count(), 1);
        let z = zones.get("runtime").unwrap();
        assert_eq!(z.size(), 128 << 10);
        assert_eq!(z.tag(), 9);
    }
}

#[test]
fn get_or_create_checks_size_and_tag() {
    let zones = Zones::builder().zone("a", K64).build().unwrap();
    assert_eq!(zones.get_or_create("a", K64).unwrap().size(), K64);
    assert_eq!(
        zones.get_or_create("a", 0).unwrap().size(),
        K64,
        "size 0 looks up"
    );
    let e = zones.get_or_create("a", 2 * K64).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the size {} of shared memory zone \"a\" conflicts with already declared size {K64}",
            2 * K64
        )
    );
    let e = zones.get_or_create_with_tag("a", K64, 5).unwrap_err();
    assert_eq!(
        e.to_string(),
        "shared zone \"a\" is already declared for a different use"
    );
    let e = zones.get_or_create("nothing", 0).unwrap_err();
    assert_eq!(e.to_string(), "zero size shared memory zone \"nothing\"");
    let e = zones.get_or_create("huge", 1 << 40).unwrap_err();
    assert!(matches!(e, Error::RegionFull { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("no room for shared memory zone \"huge\""),
        "{e}"
    );
    // A failed creation leaves the region usable.
    assert!(zones.get_or_create("small", K64).is_ok());
    zones.region_pool().check().unwrap();
}

#[test]
fn builder_errors_have_nginx_grade_messages() {
    let e = Zones::builder()
        .zone("z", K64)
        .zone("z", 2 * K64)
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the size {} of shared memory zone \"z\" conflicts with already declared size {K64}",
            2 * K64
        )
    );
    let e = Zones::builder()
        .zone_with_tag("z", K64, 1)
        .zone_with_tag("z", K64, 2)
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "shared zone \"z\" is already declared for a different use"
    );
    let e = Zones::builder().zone("tiny", 4096).build().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "zone \"tiny\" is too small (4096 bytes; the minimum is {} bytes)",
            Pool::MIN_SIZE
        )
    );
    let e = Zones::builder().zone("", K64).build().unwrap_err();
    assert!(e.to_string().contains("cannot be empty"), "{e}");
    let long = "x".repeat(64);
    let e = Zones::builder().zone(&long, K64).build().unwrap_err();
    assert!(e.to_string().contains("at most 63 bytes"), "{e}");
    assert!(Zones::builder().zone(&long[..63], K64).build().is_ok());
    let e = Zones::builder().zone("ref", 0).build().unwrap_err();
    assert_eq!(e.to_string(), "zero size shared memory zone \"ref\"");
    // A reference sized by a later declaration is fine, in either order.
    let z = Zones::builder()
        .zone("ref", 0)
        .zone("ref", K64)
        .build()
        .unwrap();
    assert_eq!(z.get("ref").unwrap().size(), K64);
    let z = Zones::builder()
        .zone("ref", K64)
        .zone("ref", 0)
        .build()
        .unwrap();
    assert_eq!(z.get("ref").unwrap().size(), K64);
    let e = Zones::builder()
        .init("undeclared", |_, _| Ok(()))
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::NoSuchZone { .. }), "{e}");
    let e = Zones::builder()
        .zone("bad", K64)
        .init("bad", |_, _| {
            Err(Error::NoSuchZone {
                name: "from init".into(),
            })
        })
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("from init"), "{e}");
}

/// The minimum zone size is stated in bytes and does not depend on the OS
/// page size.
#[test]
fn minimum_zone_size_is_in_bytes() {
    let min = Pool::MIN_SIZE;
    assert_eq!(min % 4096, 0);
    let zones = Zones::builder().zone("min", min).build().unwrap();
    let z = zones.get("min").unwrap();
    assert_eq!(z.size(), min);
    assert!(z.alloc(8).is_some());
    assert!(Zones::builder().zone("below", min - 4096).build().is_err());
}

#[test]
fn reload_keeps_resizes_drops_and_recreates() {
    let declare = |counter_size: usize| {
        Zones::builder()
            .zone("kept", K64)
            .init("kept", counters)
            .zone("grown", counter_size)
            .init("grown", counters)
            .zone("fresh_each_time", K64)
            .noreuse("fresh_each_time")
            .init("fresh_each_time", counters)
    };
    let mut zones = declare(K64).zone("dropped", K64).build().unwrap();
    slots(&zones, "kept")[0].store(11, Ordering::SeqCst);
    slots(&zones, "grown")[0].store(22, Ordering::SeqCst);
    slots(&zones, "fresh_each_time")[0].store(33, Ordering::SeqCst);
    let kept_base = zones.get("kept").unwrap().pool().base();
    let noreuse_base = zones.get("fresh_each_time").unwrap().pool().base();
    zones.get_or_create("made_at_runtime", K64).unwrap();

    let report = zones.reload(declare(4 * K64).zone("new", K64)).unwrap();
    assert_eq!(report.kept, ["kept"]);
    assert_eq!(report.resized, ["grown"]);
    assert_eq!(report.recreated, ["fresh_each_time"]);
    assert_eq!(report.created, ["new"]);
    assert_eq!(report.dropped, ["dropped"]);

    // Kept: same memory, same data.
    assert_eq!(zones.get("kept").unwrap().pool().base(), kept_base);
    assert_eq!(slots(&zones, "kept")[0].load(Ordering::SeqCst), 11);
    // Resized: the new size, the data copied by the init callback.
    assert_eq!(zones.get("grown").unwrap().size(), 4 * K64);
    assert_eq!(slots(&zones, "grown")[0].load(Ordering::SeqCst), 22);
    // noreuse: a new zone, whose init adopted the old data.
    assert_ne!(
        zones.get("fresh_each_time").unwrap().pool().base(),
        noreuse_base
    );
    assert_eq!(
        slots(&zones, "fresh_each_time")[0].load(Ordering::SeqCst),
        33
    );
    // Dropped: gone from the directory; run-time zones stay.
    assert!(zones.get("dropped").is_none());
    assert!(zones.get("made_at_runtime").is_some());
    assert!(zones.get("new").is_some());

    // Old zones are retired until released.
    let retired = zones.retired_bytes();
    assert_eq!(retired, K64 + K64 + K64);
    assert_eq!(zones.release_retired(), retired);
    assert_eq!(zones.retired_bytes(), 0);
    for z in zones.iter() {
        z.check().unwrap();
    }
    zones.region_pool().check().unwrap();
}

#[test]
fn a_failed_reload_changes_nothing() {
    let mut zones = Zones::builder()
        .slack(4 * K64)
        .zone("a", K64)
        .init("a", counters)
        .build()
        .unwrap();
    slots(&zones, "a")[1].store(5, Ordering::SeqCst);
    let before: Vec<String> = zones.iter().map(|z| z.name().to_string()).collect();
    // No room for a zone this big.
    let e = zones
        .reload(
            Zones::builder()
                .zone("a", K64)
                .init("a", counters)
                .zone("big", 64 << 20),
        )
        .unwrap_err();
    assert!(matches!(e, Error::RegionFull { .. }), "{e}");
    // An init callback that fails.
    let e = zones
        .reload(
            Zones::builder()
                .zone("a", 2 * K64)
                .init("a", |_, _| Err(Error::ZeroSizeZone { name: "x".into() })),
        )
        .unwrap_err();
    assert!(matches!(e, Error::ZeroSizeZone { .. }), "{e}");
    let after: Vec<String> = zones.iter().map(|z| z.name().to_string()).collect();
    assert_eq!(before, after);
    assert_eq!(zones.get("a").unwrap().size(), K64);
    assert_eq!(slots(&zones, "a")[1].load(Ordering::SeqCst), 5);
    assert_eq!(zones.retired_bytes(), 0);
    zones.region_pool().check().unwrap();
}

/// A worker that dies holding a zone lock: the master sees the death
/// without reaping, releases every lock the pid held, learns the zone's
/// name, and the next holder is told of the recovery.
#[test]
fn force_unlock_all_names_the_zone_a_dead_worker_held() {
    let zones = Zones::builder()
        .zone("held", K64)
        .zone("free", K64)
        .build()
        .unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let zref = &zones;
    let pid = fork_child(move || {
        let z = zref.get("held").unwrap();
        let g = z.lock();
        std::mem::forget(g);
        // SAFETY: tells the parent the lock is held, then dies holding it.
        unsafe {
            libc::write(fds[1], [1u8].as_ptr().cast(), 1);
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        1
    });
    let mut b = 0u8;
    // SAFETY: reads one byte into a valid buffer.
    let n = unsafe { libc::read(fds[0], (&mut b as *mut u8).cast(), 1) };
    assert_eq!(n, 1);
    assert_eq!(
        zones.get("held").unwrap().mutex().holder(),
        Some(pid as u32)
    );
    // See the death without reaping, so the pid cannot be reused.
    assert_eq!(common::wait_dead_nowait(pid), Some(libc::SIGKILL));
    let names = zones.force_unlock_all(pid as u32);
    assert_eq!(names, ["held"]);
    assert_eq!(wait(pid), Exit::Signal(libc::SIGKILL));
    let z = zones.get("held").unwrap();
    let g = z.lock();
    assert_eq!(g.recovered_from(), Some(pid as u32));
    drop(g);
    z.check().unwrap();
    assert!(zones.force_unlock_all(pid as u32).is_empty());
    // SAFETY: closes our pipe.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

/// Four workers allocate concurrently from zones they create at run time
/// and from a declared one; the directory stays consistent.
#[test]
fn concurrent_runtime_zones_and_allocation() {
    let zones = Zones::builder()
        .zone("shared", 1 << 20)
        .slack(8 << 20)
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for w in 0..4u64 {
        let zones = &zones;
        pids.push(fork_child(move || {
            let own = zones.get_or_create(&format!("w{w}"), 256 << 10).unwrap();
            let shared = zones.get("shared").unwrap();
            for i in 0..2000u64 {
                let z = if i % 2 == 0 { own } else { shared };
                let p = z.alloc(8 + (i as usize * 37) % 600).unwrap();
                // SAFETY: a fresh block of at least 8 bytes.
                unsafe {
                    p.as_ptr().cast::<u64>().write_unaligned(w);
                    assert_eq!(p.as_ptr().cast::<u64>().read_unaligned(), w);
                    z.free(p.as_ptr()).unwrap();
                }
            }
            0
        }));
    }
    for pid in pids {
        wait_within(pid, std::time::Duration::from_secs(60));
    }
    assert_eq!(zones.iter().count(), 5);
    for z in zones.iter() {
        z.check().unwrap();
        assert_eq!(
            z.stats().classes.iter().map(|c| c.used).sum::<u64>(),
            0,
            "{}",
            z.name()
        );
    }
    // SAFETY: the region is mapped and readable.
    unsafe { shmzone::zone::validate_region(zones.region().base(), zones.region().len()) }.unwrap();
}

#[test]
fn alloc_value_and_offsets_round_trip() {
    #[derive(Clone, Copy, PartialEq, Debug)]
    #[repr(C, align(64))]
    struct Line([u8; 64]);
    let zones = Zones::builder().zone("v", K64).build().unwrap();
    let z = zones.get("v").unwrap();
    let p = z.alloc_value(Line([3; 64])).unwrap();
    assert_eq!(p.as_ptr() as usize % 64, 0);
    let off = z.offset_of(p.as_ptr().cast()).unwrap();
    assert_eq!(z.value_at::<Line>(off), Some(p));
    // SAFETY: just written.
    assert_eq!(unsafe { *p.as_ptr() }, Line([3; 64]));
    assert_eq!(z.value_at::<Line>(z.size()), None);
    assert_eq!(z.value_at::<u64>(off + 1), None, "misaligned");
    assert_eq!(z.offset_of(std::ptr::null()), None);
}

/// Issue 12.1: a reload that adds zone "new" while a worker asks for the
/// same name at run time makes exactly one zone: the worker waits for the
/// reload's pending zone to be published and gets that one.
#[test]
fn get_or_create_during_a_reload_of_the_same_name_makes_one_zone() {
    use std::time::Duration;
    let mut zones = Zones::builder().zone("z", 64 << 10).build().unwrap();
    let size = 64 << 10;
    static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    let b = Zones::builder()
        .zone("z", 64 << 10)
        .zone("new", size)
        .init("new", move |zone, _| {
            // The zone is pending (invisible) while this runs, without the
            // region lock: a worker asks for the same name now.
            let pid = fork_child(|| {
                // SAFETY of the layout: the child's handle maps the same
                // region; `get_or_create` must wait, then find the reload's.
                let z = zone.zones().get_or_create("new", size).unwrap();
                let seen = z.pool().base().as_ptr() as usize;
                (seen == zone.pool().base().as_ptr() as usize) as i32
            });
            CHILD.store(pid, Ordering::SeqCst);
            // Give the child time to find the pending entry and wait.
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        });
    let report = zones.reload(b).unwrap();
    assert_eq!(report.created, vec!["new".to_string()]);
    assert_eq!(
        wait_within(CHILD.load(Ordering::SeqCst), Duration::from_secs(20)),
        Exit::Code(1),
        "the worker got the reload's zone, not one of its own"
    );
    assert_eq!(zones.iter().filter(|z| z.name() == "new").count(), 1);
}

/// Issue 12.2: a zone made at run time and then declared by a reload with
/// another size is retired (its memory counted, released later), not left
/// live beside the new one.
#[test]
fn a_runtime_zone_replaced_by_a_reload_is_retired() {
    let mut zones = Zones::builder().zone("z", 64 << 10).build().unwrap();
    zones.get_or_create("rt", 32 << 10).unwrap();
    let report = zones
        .reload(Zones::builder().zone("z", 64 << 10).zone("rt", 48 << 10))
        .unwrap();
    assert_eq!(report.resized, vec!["rt".to_string()]);
    assert_eq!(zones.retired_bytes(), 32 << 10);
    let live: Vec<_> = zones.iter().filter(|z| z.name() == "rt").collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].size(), 48 << 10);
    assert_eq!(zones.release_retired(), 32 << 10);
    zones.region_pool().check().unwrap();
}

/// Issue 12.3: the region validates (so attach and shmzone-stat work)
/// while a reload's init callbacks run, and after a reloader died with
/// pending zones, which `force_unlock_all` then removes.
#[test]
fn the_region_validates_during_and_after_a_dead_reload() {
    use std::time::Duration;
    let zones = Zones::builder().zone("z", 64 << 10).build().unwrap();
    let pid = fork_child(|| {
        // This child reloads (on its own copy of the handle) and dies in
        // the middle, while the new zone is pending.
        // SAFETY: this forked child has its own copy of the parent's memory;
        // the bitwise copy is the only handle it uses (and `_exit` drops
        // neither).
        let mut mine: Zones = unsafe { std::ptr::read(&zones) };
        let b = Zones::builder()
            .zone("z", 64 << 10)
            .zone("half", 32 << 10)
            .init("half", |zone, _| {
                // SAFETY: validation reads the live mapping.
                let ok = unsafe {
                    shmzone::zone::validate_region(zone.zones().region().base(), zone.zones().len())
                };
                assert!(ok.is_ok(), "validates mid-reload: {ok:?}");
                // SAFETY: dies on the spot, as a SIGKILL would.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                Ok(())
            });
        let _ = mine.reload(b);
        std::mem::forget(mine);
        0
    });
    assert_eq!(
        wait_within(pid, Duration::from_secs(20)),
        Exit::Signal(libc::SIGKILL)
    );
    // SAFETY: the mapping is live.
    unsafe { shmzone::zone::validate_region(zones.region().base(), zones.len()) }
        .expect("a dead reload leaves a region that still validates");
    assert!(zones.get("half").is_none(), "pending zones are invisible");
    zones.force_unlock_all(pid as u32);
    assert!(zones.iter().all(|z| z.name() != "half"));
    // The name is free again, and the memory came back.
    zones.get_or_create("half", 32 << 10).unwrap();
    zones.region_pool().check().unwrap();
}
