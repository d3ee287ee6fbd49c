//! Attaching to whatever a file holds: arbitrary bytes, or a valid region
//! image with arbitrary bytes patched in and its length changed, written to
//! a file and attached read-write and read-only. Never a crash, never a read
//! outside the mapping (a SIGSEGV/SIGBUS would be one); when the attach
//! succeeds, every zone's and the region pool's `check()` runs, and if the
//! snapshot is sound, allocations and frees keep it sound.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shmzone::{NamedSpec, Zones};

#[derive(Arbitrary, Debug)]
enum Input {
    /// The file is exactly these bytes.
    Raw(Vec<u8>),
    /// A valid image, patched, then grown or cut by whole pages.
    Patched {
        /// Offsets are taken modulo the image length; most land in the
        /// header and directory (the first 8 KiB) when `in_header`.
        patches: Vec<(bool, u32, u64)>,
        /// -2..=2 pages of length change.
        pages: i8,
        /// Cut this many bytes off the end as well (a torn file).
        tear: u16,
    },
}

/// Where this fuzzing process writes its file (tmpfs when there is one).
fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("shmzone-fuzz-attach-{}", std::process::id()))
    })
}

/// A valid region file's bytes: three zones, some allocations, a root.
fn image() -> &'static [u8] {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let p = path();
        let _ = std::fs::remove_file(p);
        let zones = Zones::create_named(
            Zones::builder()
                .zone("a", 32 << 10)
                .zone_with_tag("b", 64 << 10, 9)
                .zone("c", 32 << 10)
                .slack(64 << 10),
            &NamedSpec::file(p),
        )
        .expect("make the seed region");
        let a = zones.get("a").unwrap();
        for i in 0..40u64 {
            a.alloc_value(i).unwrap();
        }
        let big = zones.get("b").unwrap().alloc(9000).unwrap();
        let b = zones.get("b").unwrap();
        b.set_root(b.offset_of(big.as_ptr()).unwrap());
        zones.get_or_create("late", 32 << 10).unwrap();
        drop(zones);
        let bytes = std::fs::read(p).unwrap();
        std::fs::remove_file(p).unwrap();
        bytes
    })
}

fn file_bytes(input: Input) -> Vec<u8> {
    match input {
        Input::Raw(bytes) => bytes,
        Input::Patched {
            patches,
            pages,
            tear,
        } => {
            let mut img = image().to_vec();
            for (in_header, at, value) in patches {
                let span = if in_header {
                    8192.min(img.len())
                } else {
                    img.len()
                };
                let at = at as usize % (span - 7);
                img[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            let page = shmzone::page_size() as isize;
            let len = (img.len() as isize + (pages % 3) as isize * page).max(0) as usize;
            img.resize(len, 0);
            img.truncate(len.saturating_sub(tear as usize % 64));
            img
        }
    }
}

fuzz_target!(|input: Input| {
    let p = path();
    let _ = std::fs::remove_file(p);
    std::fs::write(p, file_bytes(input)).unwrap();

    let rw = Zones::attach(&NamedSpec::file(p));
    let ro = Zones::attach(&NamedSpec::file(p).read_only(true));
    assert_eq!(
        rw.is_ok(),
        ro.is_ok(),
        "read-write and read-only attach disagree: {rw:?} / {ro:?}"
    );
    // Work on the read-only snapshot only: its locks are free, so nothing
    // here can wait for a "holder" pid that the bytes made up.
    drop(rw);
    let Ok(zones) = ro else {
        let _ = std::fs::remove_file(p);
        return;
    };
    // check() first: stats() and allocation trust the page descriptors,
    // which only check() validates (what shmzone-stat does too).
    let mut sound = zones.region_pool().check().is_ok();
    for z in zones.iter() {
        let _ = (z.name(), z.size(), z.tag(), z.root());
        sound &= z.check().is_ok();
    }
    if sound {
        let _ = zones.region_pool().stats();
        for z in zones.iter() {
            let _ = z.stats();
            let ptrs: Vec<_> = (1..20).filter_map(|i| z.alloc(i * 37)).collect();
            z.check()
                .expect("a sound zone stays sound after allocations");
            for q in ptrs {
                // SAFETY: allocated just above from this zone, freed once.
                unsafe { z.free(q.as_ptr()) }.expect("a fresh allocation frees");
            }
            z.check().expect("a sound zone stays sound after frees");
        }
    }
    drop(zones);
    let _ = std::fs::remove_file(p);
});
