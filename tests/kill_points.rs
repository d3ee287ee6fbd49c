//! Kill points, deterministic: for every operation, and for every step k of
//! it (every journal record, commit and undo step), a forked child dies by
//! SIGKILL at exactly step k; the parent force-unlocks what it held, takes
//! the lock (which rolls the dead child's section back), checks the pool,
//! and compares every byte of the allocation state with the state before
//! and the state after the operation: it must be one of the two.
//!
//! `cargo test --features kill-points --test kill_points -- --nocapture`
//! prints the table: operation, points, outcomes.
#![cfg(feature = "kill-points")]

mod common;

use common::{fork_child, wait, Exit};
use shmzone::slab::fuzzing::full_snapshot;
use shmzone::{killpoint, Zone, Zones, SLAB_PAGE};

const ZONE: usize = 64 * SLAB_PAGE;

thread_local! {
    /// Compare the directory by layout (entries, page runs) rather than
    /// every byte: for the reload, which is two sections (see the note at
    /// its case).
    static LAYOUT_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

type Setup = fn(&mut Zones) -> Vec<usize>;
type Op = fn(&mut Zones, &[usize]);

fn zone(zones: &Zones) -> Zone<'_> {
    zones.get("z").expect("zone z")
}

fn alloc(zones: &Zones, size: usize) -> usize {
    zone(zones).alloc(size).expect("room").as_ptr() as usize
}

fn free(zones: &Zones, p: usize) {
    // SAFETY: p came from zone z and is not used after.
    unsafe { zone(zones).free(p as *mut u8) }.expect("valid free");
}

/// Everything a rollback must restore: the zone's allocation state and
/// the region's directory state.
fn snapshot(zones: &Zones, args: &[usize]) -> Vec<u8> {
    let mut v = full_snapshot(zone(zones).pool());
    if LAYOUT_ONLY.with(|l| l.get()) {
        v.extend(zones.directory_layout());
    } else {
        v.extend(zones.directory_snapshot());
    }
    // The first block's first 24 bytes: the user section's record (the
    // allocator never writes inside a block).
    if let Some(&p) = args.first() {
        // SAFETY: a live block of at least 24 bytes... or a run: readable.
        v.extend_from_slice(unsafe { std::slice::from_raw_parts(p as *const u8, 24) });
    }
    v
}

fn fresh() -> Zones {
    Zones::builder()
        .zone("z", ZONE)
        .slack(256 * SLAB_PAGE)
        .build()
        .expect("zones")
}

#[derive(Default, Debug)]
struct Outcome {
    points: u64,
    before: u64,
    after: u64,
}

/// Runs `op` after `setup`, killed at every point in turn.
fn explore(name: &str, setup: Setup, op: Op) -> Outcome {
    // The reference run: how many points, and the state after.
    let mut zones = fresh();
    let args = setup(&mut zones);
    let before = snapshot(&zones, &args);
    let h0 = killpoint::hits();
    op(&mut zones, &args);
    let points = killpoint::hits() - h0;
    let after = snapshot(&zones, &args);
    zone(&zones)
        .check()
        .expect("the operation itself leaves a sound pool");
    drop(zones);
    assert!(points > 0, "{name}: no kill point passed");
    assert!(before != after, "{name}: the operation changed nothing");

    let mut out = Outcome {
        points,
        ..Outcome::default()
    };
    for k in 1..=points + 1 {
        let mut zones = fresh();
        let args = setup(&mut zones);
        assert!(
            snapshot(&zones, &args) == before,
            "{name}: setup is not deterministic"
        );
        let pid = fork_child(|| {
            killpoint::arm(k);
            let h = killpoint::hits();
            op(&mut zones, &args);
            // Not killed: say how many points it passed (the reference
            // count, unless something differs between processes).
            ((killpoint::hits() - h) as i32 + 100).min(255)
        });
        let exit = wait(pid);
        if k <= points {
            assert_eq!(exit, Exit::Signal(libc::SIGKILL), "{name}: point {k}");
        } else {
            assert_eq!(exit, Exit::Code(100 + points as i32), "{name}: unarmed run");
        }
        zones.force_unlock_all(pid as u32);
        let z = zone(&zones);
        if let Err(e) = z.check() {
            panic!("{name}: killed at point {k} of {points}: {e}");
        }
        assert!(!z.is_fenced(), "{name}: point {k}: fenced");
        zones
            .region_pool()
            .check()
            .unwrap_or_else(|e| panic!("{name}: point {k}: region pool: {e}"));
        let now = snapshot(&zones, &args);
        if now == before {
            out.before += 1;
        } else if now == after {
            out.after += 1;
        } else {
            panic!("{name}: killed at point {k} of {points}: state is neither before nor after");
        }
        // The zone still serves, and the directory is still attachable.
        let p = alloc(&zones, 100);
        free(&zones, p);
        // SAFETY: the mapping is live for the call.
        unsafe { shmzone::zone::validate_region(zones.region().base(), zones.len()) }
            .unwrap_or_else(|e| panic!("{name}: point {k}: {e}"));
    }
    out
}

fn table(rows: &[(&str, Outcome)]) {
    println!(
        "\n{:<44} {:>6} {:>8} {:>8}",
        "operation", "points", "before", "after"
    );
    for (name, o) in rows {
        println!("{name:<44} {:>6} {:>8} {:>8}", o.points, o.before, o.after);
    }
}

fn nothing(_: &mut Zones) -> Vec<usize> {
    Vec::new()
}

#[test]
fn slab_operations_are_all_or_nothing() {
    let cases: Vec<(&str, Setup, Op)> = vec![
        ("alloc 8 B, new page", nothing, |z, _| {
            alloc(z, 8);
        }),
        (
            "alloc 8 B, page in use",
            |z| vec![alloc(z, 8)],
            |z, _| {
                alloc(z, 8);
            },
        ),
        ("alloc 32 B, new page", nothing, |z, _| {
            alloc(z, 32);
        }),
        (
            "alloc 64 B, page in use",
            |z| vec![alloc(z, 64)],
            |z, _| {
                alloc(z, 64);
            },
        ),
        (
            "alloc 64 B, fills the page (unlink)",
            |z| (0..63).map(|_| alloc(z, 64)).collect(),
            |z, _| {
                alloc(z, 64);
            },
        ),
        ("alloc 2048 B, new page", nothing, |z, _| {
            alloc(z, 2048);
        }),
        (
            "free 16 B, page stays",
            |z| vec![alloc(z, 16), alloc(z, 16)],
            |z, a| {
                free(z, a[0]);
            },
        ),
        (
            "free 128 B, page stays",
            |z| vec![alloc(z, 128), alloc(z, 128)],
            |z, a| {
                free(z, a[0]);
            },
        ),
        (
            "free 64 B from a full page (push)",
            |z| (0..64).map(|_| alloc(z, 64)).collect(),
            |z, a| free(z, a[10]),
        ),
        (
            "free last chunk, page released + coalesced",
            |z| {
                // Two pages of 256 B; empty the second one entirely.
                let v: Vec<usize> = (0..32).map(|_| alloc(z, 256)).collect();
                for &p in &v[17..] {
                    free(z, p);
                }
                // The first page on the list too: the second is then not
                // the class's only page, and is given back when empty.
                free(z, v[0]);
                v
            },
            |z, a| free(z, a[16]),
        ),
        ("alloc run of 3 pages (split)", nothing, |z, _| {
            alloc(z, 3 * SLAB_PAGE - 100);
        }),
        (
            "alloc run taking a whole free run",
            |z| {
                let a = alloc(z, 2 * SLAB_PAGE);
                let b = alloc(z, 2 * SLAB_PAGE);
                let _c = alloc(z, SLAB_PAGE + 1);
                free(z, b);
                vec![a, b]
            },
            |z, _| {
                alloc(z, 2 * SLAB_PAGE);
            },
        ),
        (
            "free run, coalesce both sides",
            |z| {
                let v: Vec<usize> = (0..4).map(|_| alloc(z, 3 * SLAB_PAGE)).collect();
                free(z, v[0]);
                free(z, v[2]);
                v
            },
            |z, a| free(z, a[1]),
        ),
        (
            "free run, no neighbour free",
            |z| (0..3).map(|_| alloc(z, 5 * SLAB_PAGE)).collect(),
            |z, a| free(z, a[1]),
        ),
        (
            "trim: give back kept pages of 5 classes",
            |z| {
                for s in [8, 64, 256, 1024, 2048] {
                    let p = alloc(z, s);
                    free(z, p);
                }
                Vec::new()
            },
            |z, _| zone(z).pool().trim(),
        ),
        (
            "alloc 24 B, new page (bitmap tail bits)",
            nothing,
            |z, _| {
                alloc(z, 24);
            },
        ),
        ("alloc 3000 B, new 3-page slab", nothing, |z, _| {
            alloc(z, 3000);
        }),
        (
            "alloc 3000 B, fills the slab (unlink)",
            |z| (0..3).map(|_| alloc(z, 3000)).collect(),
            |z, _| {
                alloc(z, 3000);
            },
        ),
        ("alloc 4096 B, one-chunk slab", nothing, |z, _| {
            alloc(z, 4096);
        }),
        (
            "free 3000 B in a slab's inner page (push)",
            |z| (0..4).map(|_| alloc(z, 3000)).collect(),
            |z, a| free(z, a[2]),
        ),
        (
            "free last chunk of a 7-page slab, released",
            |z| {
                // Two slabs of 3584 B; empty the second one entirely.
                let v: Vec<usize> = (0..16).map(|_| alloc(z, 3500)).collect();
                for &p in &v[9..] {
                    free(z, p);
                }
                free(z, v[0]);
                v
            },
            |z, a| free(z, a[8]),
        ),
        (
            "alloc 5000 B, no room for a slab: a run",
            |z| {
                let zn = zone(z);
                let mut v = Vec::new();
                while zn.stats().pages_free >= 20 {
                    v.push(alloc(z, 4 * SLAB_PAGE));
                }
                v
            },
            |z, _| {
                alloc(z, 5000);
            },
        ),
        (
            "trim: give back kept multi-page slabs",
            |z| {
                for s in [24, 160, 3000, 7000] {
                    let p = alloc(z, s);
                    free(z, p);
                }
                Vec::new()
            },
            |z, _| zone(z).pool().trim(),
        ),
        (
            "alloc that trims to find a run",
            |z| {
                let zn = zone(z);
                for s in [8, 16, 512] {
                    let p = alloc(z, s);
                    free(z, p);
                }
                // Fill every free page (not the kept ones) with runs.
                let free = zn.stats().pages_free;
                let v: Vec<usize> = (0..free).map(|_| alloc(z, SLAB_PAGE)).collect();
                // A page run only after a trim gives back the 3 kept pages.
                v
            },
            |z, _| {
                alloc(z, SLAB_PAGE);
            },
        ),
    ];
    let mut rows = Vec::new();
    for (name, setup, op) in cases {
        rows.push((name, explore(name, setup, op)));
    }
    table(&rows);
}

/// A reload is two sections of the region lock with the init callbacks
/// between them: the first carves the new zones as *pending* entries that
/// carry the reloader's pid, the second publishes them. A reloader killed
/// in between leaves pending entries that `force_unlock_all(pid)` (and any
/// `get_or_create` that finds them with their owner dead) removes: the
/// directory and the page runs are as before, but the generation and the
/// region pool's request counters have moved on, so this compares layouts.
#[test]
fn reload_is_all_or_nothing_in_its_layout() {
    LAYOUT_ONLY.with(|l| l.set(true));
    let cases: Vec<(&str, Setup, Op)> = vec![
        ("reload: add a zone", nothing, |z, _| {
            let b = Zones::builder()
                .zone("z", ZONE)
                .zone("added", 16 * SLAB_PAGE)
                .init("added", |_, _| Ok(()));
            z.reload(b).expect("reload");
        }),
        (
            "reload: resize a run-time zone (retires it)",
            |z| {
                z.get_or_create("rt", 8 * SLAB_PAGE).expect("room");
                Vec::new()
            },
            |z, _| {
                let b = Zones::builder().zone("z", ZONE).zone("rt", 12 * SLAB_PAGE);
                let r = z.reload(b).expect("reload");
                assert_eq!(r.resized, vec!["rt".to_string()]);
            },
        ),
    ];
    let mut rows = Vec::new();
    for (name, setup, op) in cases {
        rows.push((name, explore(name, setup, op)));
    }
    table(&rows);
}

#[test]
fn directory_and_user_sections_are_all_or_nothing() {
    let cases: Vec<(&str, Setup, Op)> = vec![
        ("get_or_create a zone", nothing, |z, _| {
            z.get_or_create("runtime", 16 * SLAB_PAGE).expect("room");
        }),
        (
            "release_retired",
            |z| {
                z.get_or_create("gone", 16 * SLAB_PAGE).expect("room");
                let b = Zones::builder().zone("z", ZONE).zone("gone", 8 * SLAB_PAGE);
                let r = z.reload(b).expect("reload");
                assert_eq!(
                    r.resized,
                    vec!["gone".to_string()],
                    "the run-time zone retired"
                );
                assert_eq!(z.retired_bytes(), 16 * SLAB_PAGE);
                Vec::new()
            },
            |z, _| {
                z.release_retired();
            },
        ),
        (
            "user section: 3 writes, an alloc and a free",
            |z| {
                let rec = alloc(z, 64);
                let old = alloc(z, 200);
                vec![rec, old]
            },
            |z, a| {
                let zn = zone(z);
                let g = zn.lock();
                let rec = a[0] as *mut u64;
                // SAFETY: rec is a live 64-byte block of the zone.
                unsafe {
                    g.write(rec, 11).unwrap();
                    g.write(rec.add(1), 22).unwrap();
                    let fresh = g.alloc_locked(300).unwrap();
                    // An offset, never a pointer (the mapping's address
                    // differs between runs of this test).
                    let off = zn.offset_of(fresh.as_ptr()).unwrap() as u64;
                    g.write(rec.add(2), off).unwrap();
                    g.free_locked(a[1] as *mut u8).unwrap();
                }
            },
        ),
    ];
    let mut rows = Vec::new();
    for (name, setup, op) in cases {
        rows.push((name, explore(name, setup, op)));
    }
    table(&rows);
}
