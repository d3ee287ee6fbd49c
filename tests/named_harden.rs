//! Attach hardening (issue 12, items 4-9): regions planted, crafted or
//! changing under the attacher. Each test is named for what it caught.

mod common;

use std::ffi::CString;
use std::time::Duration;

use common::named::Fresh;
use common::{fork_child, wait_within, Exit};
use shmzone::{Error, NamedId, NamedSpec, Pool, Region, Zones};

fn builder() -> shmzone::ZonesBuilder {
    Zones::builder()
        .zone("a", 64 << 10)
        .zone("b", 64 << 10)
        .slack(256 << 10)
}

/// Runs `attach` in a child (so a hang is a killed child, not a hung test)
/// and returns its exit code: 0 when it returned an `Err` whose text
/// contains `expect`, 1 for another error, 2 for `Ok`.
fn attach_in_child(spec: &NamedSpec, expect: &str) -> i32 {
    let spec = spec.clone();
    let expect = expect.to_string();
    let kid = fork_child(move || match Zones::attach(&spec) {
        Err(e) if e.to_string().contains(&expect) => 0,
        Err(e) => {
            eprintln!("unexpected error: {e}");
            1
        }
        Ok(_) => 2,
    });
    match wait_within(kid, Duration::from_secs(30)) {
        Exit::Code(c) => c,
        Exit::Signal(s) => 100 + s,
    }
}

/// The descriptor of the page at `p` in `pool`, as raw bytes.
fn desc_of(pool: &Pool, p: *const u8) -> *mut u8 {
    let (desc, start, npages) = pool.metadata_layout();
    let base = pool.base().as_ptr();
    let idx = (p as usize - base as usize - start) / shmzone::SLAB_PAGE;
    assert!(idx < npages);
    base.wrapping_add(desc + 16 * idx)
}

/// The byte offset of directory entry `name` in the region header (the
/// directory starts at byte 64; entries are 96 bytes: flags, name_len, tag,
/// offset at +16, size at +24, name at +32).
fn entry_of(region: &Region, name: &str) -> usize {
    (0..shmzone::zone::MAX_ZONES)
        .map(|i| 64 + 96 * i)
        .find(|&at| {
            // SAFETY: the header's 64 entries lie inside the region.
            let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr().add(at + 32), 64) };
            bytes.starts_with(name.as_bytes()) && bytes[name.len()] == 0
        })
        .expect("entry")
}

/// Regression (12.7): a cycle in a zone's free list made a read-write
/// attacher loop for ever holding the lock; now attach checks the zone.
#[test]
fn a_cycle_in_a_free_list_is_refused() {
    let f = Fresh::new("file");
    let zones = Zones::create_named(builder(), &f.spec()).unwrap();
    let a = zones.get("a").unwrap();
    let (desc, _, _) = a.pool().metadata_layout();
    // The fresh pool's one free run starts at page 0: link it to itself.
    // SAFETY: page 0's descriptor lies inside the zone; `next` at +8.
    unsafe {
        a.pool()
            .base()
            .as_ptr()
            .add(desc + 8)
            .cast::<u32>()
            .write(0)
    };
    assert_eq!(attach_in_child(&f.spec(), "zone \"a\""), 0);
    assert_eq!(attach_in_child(&f.spec().read_only(true), "zone"), 2);
}

/// Regression (12.7): a huge run length panicked a read-write attacher.
#[test]
fn a_huge_run_length_is_refused() {
    let f = Fresh::new("file");
    let zones = Zones::create_named(builder(), &f.spec()).unwrap();
    let a = zones.get("a").unwrap();
    let run = a.alloc(3 * shmzone::SLAB_PAGE - 100).unwrap();
    // SAFETY: the run's head descriptor lies inside the zone; `slab` at +0.
    unsafe { desc_of(a.pool(), run.as_ptr()).cast::<u64>().write(1 << 40) };
    assert_eq!(attach_in_child(&f.spec(), "zone \"a\""), 0);
}

/// Regression (12.7): a full page left on its class list made allocations
/// hand out chunks past the page; attach now refuses the zone.
#[test]
fn a_full_page_on_a_class_list_is_refused() {
    let f = Fresh::new("file");
    let zones = Zones::create_named(builder(), &f.spec()).unwrap();
    let b = zones.get("b").unwrap();
    let chunk = b.alloc(100).unwrap(); // a 128-byte chunk: 32 per page
                                       // SAFETY: the page's descriptor lies inside the zone; its `slab` word
                                       // is the page's bitmap: every chunk marked used, the page still listed.
    unsafe {
        desc_of(b.pool(), chunk.as_ptr())
            .cast::<u64>()
            .write(u32::MAX as u64)
    };
    assert_eq!(attach_in_child(&f.spec(), "zone \"b\""), 0);
}

/// Regression (12.7): a directory entry moved over the region pool's free
/// space passed validation, and a later `get_or_create` made a second
/// zone over the same memory.
#[test]
fn a_directory_entry_over_free_space_is_refused() {
    let f = Fresh::new("file");
    let zones = Zones::create_named(builder(), &f.spec()).unwrap();
    let region = zones.region();
    let a = zones.get("a").unwrap();
    let size = a.size();
    let free = zones.region_pool().alloc(size).unwrap();
    // SAFETY: from the region pool just above, given back at once.
    unsafe { zones.region_pool().free(free.as_ptr()) }.unwrap();
    // A perfect copy of zone "a" over free space, and its entry moved there.
    // SAFETY: both ranges are `size` bytes inside the region, disjoint.
    unsafe { std::ptr::copy_nonoverlapping(a.pool().base().as_ptr(), free.as_ptr(), size) };
    let at = entry_of(region, "a");
    let off = free.as_ptr() as usize - region.as_ptr() as usize;
    // SAFETY: the entry's offset word, inside the header.
    unsafe { region.as_ptr().add(at + 16).cast::<u64>().write(off as u64) };
    assert_eq!(attach_in_child(&f.spec(), "not a page run"), 0);
    assert_eq!(
        attach_in_child(&f.spec().read_only(true), "not a page run"),
        0
    );
}

/// Regression (12.6): a read-only POSIX attach (and so `shmzone-stat`)
/// hung for ever on a FIFO planted under the name in /dev/shm.
#[cfg(target_os = "linux")]
#[test]
fn a_fifo_in_dev_shm_is_refused_without_blocking() {
    let f = Fresh::new("posix");
    let NamedId::Posix(name) = &f.0 else {
        unreachable!()
    };
    let path = CString::new(format!("/dev/shm{name}")).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    assert_eq!(
        attach_in_child(&f.spec().read_only(true), "not a regular file"),
        0
    );
    assert_eq!(attach_in_child(&f.spec(), "not a regular file"), 0);
}

/// Regression (12.5): `remove_on_drop` removed by name, so a creator's
/// drop removed the region another creator had made since with `replace`.
#[test]
fn remove_on_drop_leaves_a_replacement_alone() {
    for kind in ["posix", "file"] {
        let f = Fresh::new(kind);
        let first = Region::create_named(1 << 16, &f.spec().remove_on_drop(true)).unwrap();
        let second = Region::create_named(1 << 16, &f.spec().replace(true)).unwrap();
        // SAFETY: the second region's first byte.
        unsafe { second.as_ptr().write(0x5a) };
        drop(first);
        let again = Region::attach_named(&f.spec()).expect(kind);
        // SAFETY: the first byte of the same object.
        assert_eq!(unsafe { again.as_ptr().read() }, 0x5a, "{kind}");
        drop(again);
        // Its own object it still removes.
        let own =
            Region::create_named(1 << 16, &f.spec().replace(true).remove_on_drop(true)).unwrap();
        drop(second);
        drop(own);
        assert!(Region::attach_named(&f.spec()).is_err(), "{kind}: removed");
    }
}

/// 12.7: a region owned by another uid (planted by another user) is
/// refused unless the caller opts in. Needs root to give a file away.
#[test]
fn a_region_of_another_owner_is_refused_unless_allowed() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot chown, skipped");
        return;
    }
    for kind in ["posix", "file"] {
        let f = Fresh::new(kind);
        let zones = Zones::create_named(builder(), &f.spec().mode(0o666)).unwrap();
        let path = match &f.0 {
            NamedId::Posix(name) => format!("/dev/shm{name}"),
            NamedId::File(p) => p.display().to_string(),
            _ => unreachable!(),
        };
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        for spec in [f.spec(), f.spec().read_only(true)] {
            let e = Zones::attach(&spec).unwrap_err();
            assert!(
                matches!(e, Error::BadNamed { .. }) && e.to_string().contains("owned by uid 65534"),
                "{kind}: {e}"
            );
            let ok = Zones::attach(&spec.allow_other_owner(true)).expect(kind);
            assert!(ok.get("a").is_some());
        }
        drop(zones);
    }
}

/// 12.9: a read-write attach of a region made in another pid namespace is
/// refused with the reason; read-only still works. (The namespace is
/// written into the header as another namespace's creator would.)
#[test]
fn a_region_from_another_pid_namespace_is_read_only() {
    let f = Fresh::new("file");
    let zones = Zones::create_named(builder(), &f.spec()).unwrap();
    let ours = std::fs::metadata("/proc/self/ns/pid").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    let Ok(ours) = ours else {
        eprintln!("no /proc/self/ns/pid: skipped");
        return;
    };
    // The header's pid namespace word, at byte 56.
    let ns = zones.region().as_ptr().wrapping_add(56).cast::<u64>();
    // SAFETY: inside the header, aligned.
    assert_eq!(unsafe { ns.read() }, ours, "the creator's namespace");
    // SAFETY: as above.
    unsafe { ns.write(ours + 1) };
    let e = Zones::attach(&f.spec()).unwrap_err();
    assert!(e.to_string().contains("pid namespace"), "{e}");
    let ro = Zones::attach(&f.spec().read_only(true)).unwrap();
    assert!(ro.get("a").is_some());
}

/// 12.9 for real where the kernel lets us make a pid namespace (root, or
/// a kernel that allows it): a process in a new namespace is refused a
/// read-write attach and gets a read-only one.
#[cfg(target_os = "linux")]
#[test]
fn a_process_in_a_new_pid_namespace_attaches_read_only() {
    let f = Fresh::new("file");
    let _zones = Zones::create_named(builder(), &f.spec()).unwrap();
    let spec = f.spec();
    let kid = fork_child(move || {
        // SAFETY: affects only the children this process makes next.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return 77;
        }
        let inner = fork_child(|| {
            let rw = Zones::attach(&spec);
            let ro = Zones::attach(&spec.clone().read_only(true));
            match (rw, ro) {
                (Err(e), Ok(_)) if e.to_string().contains("pid namespace") => 0,
                (rw, ro) => {
                    eprintln!("rw {:?} / ro {:?}", rw.map(|_| ()), ro.map(|_| ()));
                    3
                }
            }
        });
        match common::wait(inner) {
            Exit::Code(c) => c,
            Exit::Signal(_) => 4,
        }
    });
    match wait_within(kid, Duration::from_secs(30)) {
        Exit::Code(77) => eprintln!("unshare(CLONE_NEWPID) refused: skipped"),
        other => assert_eq!(other, Exit::Code(0)),
    }
}

/// Regression (12.4): attach validated the live directory without the
/// region lock and read half-written entries while other processes made
/// zones; every attach, read-write and read-only, must succeed.
#[test]
fn attach_never_fails_while_others_make_zones() {
    let f = Fresh::new("file");
    let zones = Zones::create_named(Zones::builder().slack(8 << 20), &f.spec()).unwrap();
    let makers: Vec<_> = (0..2)
        .map(|k| {
            let spec = f.spec();
            fork_child(move || {
                let z = Zones::attach(&spec).expect("maker attach");
                for i in 0..25 {
                    z.get_or_create(&format!("m{k}-{i}"), 64 << 10)
                        .expect("make a zone");
                }
                // Then churn: a zone made and removed again (its init
                // fails), over and over, for half a second.
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_millis(500) {
                    let r = z.get_or_create_with(&format!("churn{k}"), 64 << 10, 0, |_| {
                        Err(Error::ZeroLength)
                    });
                    if r.is_ok() {
                        return 5;
                    }
                }
                0
            })
        })
        .collect();
    let mut n = 0;
    loop {
        let done = makers.iter().all(|&pid| {
            let mut st = 0;
            // SAFETY: WNOWAIT peeks at our own child without reaping it.
            unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                info.si_signo = 0;
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                );
                st |= (info.si_pid() == pid) as i32;
            }
            st == 1
        });
        for spec in [f.spec(), f.spec().read_only(true)] {
            if let Err(e) = Zones::attach(&spec) {
                panic!("attach {n} failed on a valid region: {e}");
            }
        }
        n += 1;
        if done {
            break;
        }
    }
    for pid in makers {
        assert_eq!(wait_within(pid, Duration::from_secs(30)), Exit::Code(0));
    }
    assert_eq!(zones.iter().count(), 50);
    eprintln!("{n} attaches while zones were made");
}
