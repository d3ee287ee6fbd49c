//! Regions are really shared across fork, for every backend.

mod common;

use common::{fork_child, wait, wait_ok, Exit};
use shmzone::{Backend, Error, Region};

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// A child writes the pattern over `len` bytes at `p` and exits; does the
/// parent see every byte?
fn child_write_parent_sees(p: *mut u8, len: usize) -> bool {
    let addr = p as usize;
    let pid = fork_child(move || {
        let p = addr as *mut u8;
        for i in 0..len {
            // SAFETY: `p..p+len` is a live mapping in the child too.
            unsafe { p.add(i).write_volatile(pattern(i)) };
        }
        0
    });
    wait_ok(pid);
    // SAFETY: `p..p+len` is a live mapping in the parent.
    (0..len).all(|i| unsafe { p.add(i).read_volatile() } == pattern(i))
}

/// The parent writes after the fork; the child verifies and reports through
/// its exit status.
fn parent_write_child_sees(p: *mut u8, len: usize) -> bool {
    let addr = p as usize;
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = fork_child(move || {
        let p = addr as *mut u8;
        let mut b = 0u8;
        // SAFETY: blocks until the parent has written; `b` is a valid buffer.
        unsafe { libc::read(fds[0], (&mut b as *mut u8).cast(), 1) };
        // SAFETY: `p..p+len` is a live mapping in the child.
        let ok = (0..len).all(|i| unsafe { p.add(i).read_volatile() } == pattern(i));
        if ok {
            0
        } else {
            1
        }
    });
    for i in 0..len {
        // SAFETY: `p..p+len` is a live mapping.
        unsafe { p.add(i).write_volatile(pattern(i)) };
    }
    // SAFETY: writes one byte from a valid buffer to our pipe.
    unsafe {
        libc::write(fds[1], [1u8].as_ptr().cast(), 1);
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    wait(pid) == Exit::Code(0)
}

const LEN: usize = 256 * 1024;

#[test]
fn child_writes_are_seen_by_parent_for_every_backend() {
    assert!(!Backend::available().is_empty());
    for &b in Backend::available() {
        let r = Region::with_backend(LEN, b).unwrap();
        assert_eq!(r.backend(), b);
        assert!(child_write_parent_sees(r.as_ptr(), r.len()), "{b}");
    }
}

#[test]
fn parent_writes_are_seen_by_child_for_every_backend() {
    for &b in Backend::available() {
        let r = Region::with_backend(LEN, b).unwrap();
        assert!(parent_write_child_sees(r.as_ptr(), r.len()), "{b}");
    }
}

/// Evidence that the tests above can fail: memmap2's anonymous map is
/// MAP_PRIVATE, copy-on-write after fork, so neither direction shares.
#[test]
fn a_private_anonymous_map_is_not_shared() {
    let mut m = memmap2::MmapMut::map_anon(LEN).unwrap();
    assert!(!child_write_parent_sees(m.as_mut_ptr(), LEN));
    let mut m = memmap2::MmapMut::map_anon(LEN).unwrap();
    assert!(!parent_write_child_sees(m.as_mut_ptr(), LEN));
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * shmzone::page_size()
}

/// A mapping reserves address space, not memory.
#[test]
fn a_gigabyte_region_is_not_resident() {
    const GIB: usize = 1 << 30;
    for &b in Backend::available() {
        let before = resident_bytes();
        let r = Region::with_backend(GIB, b).unwrap();
        assert_eq!(r.len(), GIB);
        // Touch one byte per 64 MiB: 16 pages.
        for off in (0..GIB).step_by(64 << 20) {
            // SAFETY: inside the mapping.
            unsafe { r.as_ptr().add(off).write_volatile(1) };
        }
        let after = resident_bytes();
        assert!(
            after.saturating_sub(before) < 64 << 20,
            "{b}: resident grew by {} bytes",
            after - before
        );
        drop(r);
    }
}

#[test]
fn lengths_round_up_to_whole_pages() {
    let page = shmzone::page_size();
    for &b in Backend::available() {
        assert_eq!(Region::with_backend(1, b).unwrap().len(), page);
        assert_eq!(Region::with_backend(page + 1, b).unwrap().len(), 2 * page);
    }
}

#[test]
fn zero_length_is_an_error() {
    for &b in Backend::available() {
        let e = Region::with_backend(0, b).unwrap_err();
        assert!(matches!(e, Error::ZeroLength), "{b}: {e}");
    }
}

#[test]
fn overflowing_length_is_an_error() {
    for &b in Backend::available() {
        let e = Region::with_backend(usize::MAX - 1, b).unwrap_err();
        assert!(matches!(e, Error::LengthOverflow { .. }), "{b}: {e}");
        assert!(e.to_string().contains("overflows"), "{e}");
    }
}

/// A SysV segment larger than the kernel allows (`kernel.shmmax`, or the
/// memory the kernel will account for) is refused with a message naming the
/// call and the size.
#[test]
fn sysv_size_beyond_the_kernel_limit_is_an_error() {
    if !Backend::SysV.is_available() {
        return;
    }
    let shmmax: u64 = std::fs::read_to_string("/proc/sys/kernel/shmmax")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u64::MAX);
    let page = shmzone::page_size() as u64;
    // Above shmmax if shmmax leaves room, else far above any machine's memory.
    let len = if shmmax < (1 << 62) {
        (shmmax / page + 1) * page
    } else {
        1 << 62
    };
    let e = Region::with_backend(len as usize, Backend::SysV).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Os { .. }), "{text}");
    assert!(
        text.starts_with(&format!("shmget(IPC_PRIVATE, {len}) failed: ")),
        "{text}"
    );
    assert!(!text.contains("os error"), "{text}");
}

#[test]
fn unsupported_backend_names_what_is_available() {
    for b in [Backend::MapAnon, Backend::DevZero, Backend::SysV] {
        if !b.is_available() {
            let e = Region::with_backend(4096, b).unwrap_err();
            assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        }
    }
}

/// The probed default, or the one `SHMZONE_BACKEND` forced at build time.
/// `.ci/run` runs the tests once per forced backend, so this proves the
/// override for each.
#[test]
fn default_backend_follows_the_probe_or_the_override() {
    match option_env!("SHMZONE_BACKEND") {
        Some(forced) if !forced.is_empty() => {
            assert_eq!(Backend::default().name(), forced);
            assert_eq!(forced.parse::<Backend>().unwrap(), Backend::default());
        }
        _ => {
            if cfg!(target_os = "linux") {
                assert_eq!(Backend::default(), Backend::MapAnon);
                assert_eq!(
                    Backend::available(),
                    &[Backend::MapAnon, Backend::DevZero, Backend::SysV]
                );
            }
        }
    }
    assert!(Backend::default().is_available());
}

#[test]
fn backend_names_parse_and_unknown_names_are_refused() {
    for b in [Backend::MapAnon, Backend::DevZero, Backend::SysV] {
        assert_eq!(b.name().parse::<Backend>().unwrap(), b);
        assert_eq!(b.to_string(), b.name());
    }
    let e = "posix".parse::<Backend>().unwrap_err();
    assert!(e.to_string().contains("map_anon, dev_zero, sysv"), "{e}");
}
