//! Named regions at the mapping level: POSIX shm, SysV keys, files.
//!
//! Cross-process tests start a new process with `std::process::Command` (not
//! `fork`): this test binary re-executes itself running only `child_entry`,
//! with `SHMZONE_NAMED_CHILD` telling it what to do.

mod common;

use common::named::{tmp, Fresh, KINDS};

use std::os::unix::fs::PermissionsExt;

use common::{fork_child, wait, Exit};
use shmzone::named::{self, DEFAULT_MODE};
use shmzone::{Error, NamedId, NamedSpec, Region};

const CHILD_VAR: &str = "SHMZONE_NAMED_CHILD";

/// Runs `role` for `id` in a new process (this binary, re-executed).
fn run_child(role: &str, id: &NamedId) -> i32 {
    common::named::run_child(CHILD_VAR, role, id)
}

/// The child's side. Without `SHMZONE_NAMED_CHILD` it does nothing (it is
/// then just one more test of the parent run).
#[test]
fn child_entry() {
    let Some((role, spec)) = common::named::child_request(CHILD_VAR) else {
        return;
    };
    let code = match role.as_str() {
        // Reads the parent's pattern, answers in the second page.
        "exchange" => {
            let r = Region::attach_named(&spec).expect("child attach");
            let page = shmzone::page_size();
            // SAFETY: the region has at least two pages (the parent made it).
            unsafe {
                let p = r.as_ptr();
                let ok = (0..page).all(|i| *p.add(i) == (i % 251) as u8);
                for i in 0..page {
                    *p.add(page + i) = (i % 241) as u8 ^ 0x5a;
                }
                if ok {
                    0
                } else {
                    3
                }
            }
        }
        // Attaches read-only and checks the first byte.
        "read_only" => {
            let r = Region::attach_named(&spec.read_only(true)).expect("child attach");
            assert!(r.is_read_only());
            // SAFETY: at least one page is mapped readable.
            if unsafe { *r.as_ptr() } == 0x77 {
                0
            } else {
                4
            }
        }
        other => panic!("unknown role {other}"),
    };
    std::process::exit(code);
}

#[test]
fn create_attach_exchange_with_a_command_started_process() {
    let page = shmzone::page_size();
    for kind in KINDS {
        let f = Fresh::new(kind);
        let r = Region::create_named(2 * page, &f.spec()).unwrap();
        assert_eq!(r.len(), 2 * page);
        assert_eq!(r.named(), Some(&f.0));
        // SAFETY: two pages mapped read-write.
        unsafe {
            for i in 0..page {
                *r.as_ptr().add(i) = (i % 251) as u8;
            }
        }
        assert_eq!(
            run_child("exchange", &f.0),
            0,
            "{kind}: child saw wrong data"
        );
        // SAFETY: as above.
        let answered =
            (0..page).all(|i| unsafe { *r.as_ptr().add(page + i) } == (i % 241) as u8 ^ 0x5a);
        assert!(answered, "{kind}: the child's answer is not in the region");
    }
}

#[test]
fn read_only_attach_from_a_command_started_process() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let r = Region::create_named(1, &f.spec()).unwrap();
        // SAFETY: one page mapped read-write.
        unsafe { *r.as_ptr() = 0x77 };
        assert_eq!(run_child("read_only", &f.0), 0, "{kind}");
    }
}

#[test]
fn writing_a_read_only_mapping_faults() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let _r = Region::create_named(1, &f.spec()).unwrap();
        let ro = Region::attach_named(&f.spec().read_only(true)).unwrap();
        assert!(ro.is_read_only());
        let p = ro.as_ptr() as usize;
        let pid = fork_child(move || {
            // SAFETY: deliberately writes a read-only page: the kernel must
            // stop the child with SIGSEGV (or SIGBUS).
            unsafe { std::ptr::write_volatile(p as *mut u8, 1) };
            0
        });
        let exit = wait(pid);
        assert!(
            exit == Exit::Signal(libc::SIGSEGV) || exit == Exit::Signal(libc::SIGBUS),
            "{kind}: {exit:?}"
        );
    }
}

#[test]
fn one_region_at_two_addresses_in_one_process() {
    let page = shmzone::page_size();
    for kind in KINDS {
        let f = Fresh::new(kind);
        let a = Region::create_named(3 * page, &f.spec()).unwrap();
        let b = Region::attach_named(&f.spec()).unwrap();
        assert_ne!(a.as_ptr(), b.as_ptr(), "{kind}: the same address twice");
        assert_eq!(a.len(), b.len());
        // SAFETY: both map the same 3 pages read-write.
        unsafe {
            a.as_ptr().add(2 * page + 5).write(0xab);
            assert_eq!(b.as_ptr().add(2 * page + 5).read(), 0xab, "{kind}");
            b.as_ptr().add(7).write(0xcd);
            assert_eq!(a.as_ptr().add(7).read(), 0xcd, "{kind}");
        }
    }
}

#[test]
fn creating_over_a_planted_region_is_an_error_that_says_so() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        // "Someone else" plants it first.
        let planted = Region::create_named(1, &f.spec()).unwrap();
        // SAFETY: one page mapped read-write.
        unsafe { *planted.as_ptr() = 9 };
        let e = Region::create_named(1, &f.spec()).unwrap_err();
        assert!(matches!(e, Error::AlreadyExists { .. }), "{kind}: {e:?}");
        let text = e.to_string();
        assert!(
            text.contains("already exists") && text.contains("not adopting"),
            "{text}"
        );
        // The planted one is untouched.
        // SAFETY: as above.
        assert_eq!(unsafe { *planted.as_ptr() }, 9);

        // `replace` removes it first: the new one is fresh and zeroed.
        let fresh = Region::create_named(1, &f.spec().replace(true)).unwrap();
        // SAFETY: one page mapped in each.
        unsafe {
            assert_eq!(*fresh.as_ptr(), 0, "{kind}: replace adopted the old one");
            assert_eq!(*planted.as_ptr(), 9, "{kind}: the old mapping still works");
        }
        let again = Region::attach_named(&f.spec()).unwrap();
        // SAFETY: one page mapped.
        unsafe {
            *fresh.as_ptr() = 1;
            assert_eq!(*again.as_ptr(), 1, "{kind}: attach found the old one");
        }
    }
}

#[test]
fn a_file_planted_by_hand_is_not_adopted() {
    let f = Fresh::new("file");
    let NamedId::File(path) = &f.0 else {
        unreachable!()
    };
    std::fs::write(path, vec![1u8; 8192]).unwrap();
    let e = Region::create_named(8192, &f.spec()).unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e:?}");
    assert_eq!(std::fs::read(path).unwrap(), vec![1u8; 8192]);
}

#[test]
fn remove_and_remove_on_drop() {
    for kind in KINDS {
        // Default: dropping the creator's region keeps the name.
        let f = Fresh::new(kind);
        drop(Region::create_named(1, &f.spec()).unwrap());
        let r = Region::attach_named(&f.spec()).expect("the region outlives its creator");
        // remove(): the name goes, the mapping stays usable.
        f.spec().remove().unwrap();
        // SAFETY: one page mapped read-write.
        unsafe { *r.as_ptr() = 3 };
        let e = Region::attach_named(&f.spec()).unwrap_err();
        assert!(matches!(e, Error::Os { .. }), "{kind}: {e}");
        let e = named::remove(&f.0).unwrap_err();
        assert!(matches!(e, Error::Os { .. }), "{kind}: {e}");

        // remove_on_drop: the creator's drop removes it.
        let f = Fresh::new(kind);
        let r = Region::create_named(1, &f.spec().remove_on_drop(true)).unwrap();
        assert!(Region::attach_named(&f.spec()).is_ok());
        drop(r);
        assert!(
            Region::attach_named(&f.spec()).is_err(),
            "{kind}: not removed on drop"
        );
    }
}

#[test]
fn a_forked_child_dropping_its_copy_does_not_remove() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let r = Region::create_named(1, &f.spec().remove_on_drop(true)).unwrap();
        let at = &r as *const Region as usize;
        let pid = fork_child(move || {
            // SAFETY: the child's copy of the parent's `r`, owned by nobody
            // else in the child: taken out and dropped once.
            drop(unsafe { std::ptr::read(at as *const Region) });
            0
        });
        common::wait_ok(pid);
        assert!(
            Region::attach_named(&f.spec()).is_ok(),
            "{kind}: the child removed the parent's region"
        );
        drop(r);
        assert!(Region::attach_named(&f.spec()).is_err(), "{kind}");
    }
}

#[test]
fn bad_modes_are_refused_and_good_ones_applied_exactly() {
    for kind in KINDS {
        for mode in [0o4600, 0o1600, 0o10600, 0o400, 0o200, 0o066] {
            let f = Fresh::new(kind);
            let e = Region::create_named(1, &f.spec().mode(mode)).unwrap_err();
            assert!(
                matches!(e, Error::BadNamed { .. }),
                "{kind} {mode:o}: {e:?}"
            );
            assert!(e.to_string().contains("mode"), "{e}");
            assert!(
                Region::attach_named(&f.spec()).is_err(),
                "{kind}: made anyway"
            );
        }
        for mode in [DEFAULT_MODE, 0o640, 0o666] {
            let f = Fresh::new(kind);
            let _r = Region::create_named(1, &f.spec().mode(mode)).unwrap();
            assert_eq!(mode_of(&f.0), mode, "{kind}");
        }
    }
}

/// The permission bits of the object behind `id`.
fn mode_of(id: &NamedId) -> u32 {
    match id {
        NamedId::Posix(name) => {
            std::fs::metadata(format!("/dev/shm{name}"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        }
        NamedId::File(path) => std::fs::metadata(path).unwrap().permissions().mode() & 0o7777,
        NamedId::SysVKey(key) => {
            // SAFETY: shmget and IPC_STAT with a valid out-buffer.
            unsafe {
                let id = libc::shmget(*key, 0, 0);
                assert!(id >= 0);
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                assert_eq!(libc::shmctl(id, libc::IPC_STAT, &mut ds), 0);
                ds.shm_perm.mode as u32 & 0o7777
            }
        }
        _ => unreachable!(),
    }
}

#[test]
fn bad_names_and_keys_are_refused() {
    for name in ["noslash", "/a/b", "/", "/..", "/x\0y"] {
        let e = Region::create_named(1, &NamedSpec::posix(name)).unwrap_err();
        assert!(matches!(e, Error::BadNamed { .. }), "{name:?}: {e:?}");
    }
    let long = format!("/{}", "x".repeat(300));
    assert!(matches!(
        Region::create_named(1, &NamedSpec::posix(&long)),
        Err(Error::BadNamed { .. })
    ));
    let e = Region::create_named(1, &NamedSpec::sysv_key(0)).unwrap_err();
    assert!(e.to_string().contains("IPC_PRIVATE"), "{e}");
    assert!(matches!(
        Region::attach_named(&NamedSpec::sysv_key(0)),
        Err(Error::BadNamed { .. })
    ));
}

#[test]
fn attaching_what_does_not_exist_names_the_call() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let e = Region::attach_named(&f.spec()).unwrap_err();
        match &e {
            Error::Os { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{kind}: {e}")
            }
            _ => panic!("{kind}: {e:?}"),
        }
    }
}

#[test]
fn a_symbolic_link_is_refused() {
    let f = Fresh::new("file");
    let NamedId::File(link) = &f.0 else {
        unreachable!()
    };
    let target = Fresh::new("file");
    let NamedId::File(target_path) = &target.0 else {
        unreachable!()
    };
    let _r = Region::create_named(1, &target.spec()).unwrap();
    std::os::unix::fs::symlink(target_path, link).unwrap();

    let e = Region::attach_named(&f.spec()).unwrap_err();
    assert!(matches!(e, Error::BadNamed { .. }), "{e:?}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // Creating over a link is refused too (O_EXCL never follows it) ...
    let e = Region::create_named(1, &f.spec()).unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e:?}");
    // ... and removing it removes the link, not the target.
    f.spec().remove().unwrap();
    assert!(target_path.exists());
    assert!(std::fs::symlink_metadata(link).is_err());
}

#[test]
fn non_regular_files_are_refused() {
    // A directory.
    let d = tmp("a-dir");
    std::fs::create_dir_all(&d).unwrap();
    for ro in [false, true] {
        let e = Region::attach_named(&NamedSpec::file(&d).read_only(ro)).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
    let e = NamedSpec::file(&d).remove().unwrap_err();
    assert!(matches!(e, Error::BadNamed { .. }), "{e:?}");
    assert!(d.is_dir());
    let e = Region::create_named(1, &NamedSpec::file(&d).replace(true)).unwrap_err();
    assert!(matches!(e, Error::BadNamed { .. }), "{e:?}");
    assert!(d.is_dir());
    // A FIFO: the open must not block, and it is refused.
    let fifo = tmp("a-fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = Region::attach_named(&NamedSpec::file(&fifo)).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A device.
    let e = Region::attach_named(&NamedSpec::file("/dev/null")).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    std::fs::remove_dir(&d).unwrap();
    std::fs::remove_file(&fifo).unwrap();
}

#[test]
fn empty_and_truncated_files_are_refused() {
    let f = Fresh::new("file");
    let NamedId::File(path) = &f.0 else {
        unreachable!()
    };
    std::fs::write(path, b"").unwrap();
    let e = Region::attach_named(&f.spec()).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    std::fs::write(path, vec![0u8; 1000]).unwrap();
    let e = Region::attach_named(&f.spec()).unwrap_err();
    assert!(e.to_string().contains("whole number"), "{e}");
    // A region cut short by hand.
    let g = Fresh::new("file");
    let NamedId::File(p2) = &g.0 else {
        unreachable!()
    };
    let r = Region::create_named(4 * shmzone::page_size(), &g.spec()).unwrap();
    drop(r);
    std::fs::OpenOptions::new()
        .write(true)
        .open(p2)
        .unwrap()
        .set_len(3 * shmzone::page_size() as u64 + 100)
        .unwrap();
    let e = Region::attach_named(&g.spec()).unwrap_err();
    assert!(matches!(e, Error::BadNamed { .. }), "{e:?}");
}

#[test]
fn the_default_mode_keeps_other_users_out() {
    for kind in KINDS {
        let f = Fresh::new(kind);
        let _r = Region::create_named(1, &f.spec()).unwrap();
        assert_eq!(mode_of(&f.0), 0o600, "{kind}");
    }
}
