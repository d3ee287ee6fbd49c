//! Attaching to whatever a file holds: arbitrary bytes, a valid region
//! image with arbitrary bytes patched in and its length changed, or a valid
//! image whose zones' internals are damaged (allocator state and list
//! heads, page descriptors and their links, small pages' bitmaps), written
//! to a file and attached read-write and read-only. Never a crash, a hang
//! or a read outside the mapping (a SIGSEGV/SIGBUS would be one). A
//! read-write attach validates every zone, so when it succeeds every
//! zone's `check()` passes and allocations and frees keep it sound; a
//! read-only attach then succeeds too.
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
    /// A valid image with the metadata of its pools damaged.
    Internals {
        /// (pool, part, offset, value, wide): `pool` picks the region pool
        /// or a zone, `part` its header (allocator state, list heads,
        /// counters), its descriptors, or a small page's bitmap; `offset`
        /// is taken modulo the part's length and aligned to 4; `wide`
        /// writes 8 bytes, else 4 (one link word).
        patches: Vec<(u8, u8, u32, u64, bool)>,
    },
}

/// Where one pool's metadata lies in the image.
struct PoolMeta {
    /// The pool's offset in the region.
    at: usize,
    /// Its descriptor array's offset in the pool, and the page count.
    desc: usize,
    npages: usize,
    /// Offsets (in the region) of its small-chunk pages, whose first bytes
    /// are their bitmaps.
    small: Vec<usize>,
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

/// A valid region file's bytes: three zones, some allocations (chunks of
/// every kind, page runs, with frees that leave several free runs and
/// partly used pages), a root; and where its pools' metadata lies.
fn image() -> &'static (Vec<u8>, Vec<PoolMeta>) {
    static IMG: OnceLock<(Vec<u8>, Vec<PoolMeta>)> = OnceLock::new();
    IMG.get_or_init(|| {
        let p = path();
        let _ = std::fs::remove_file(p);
        let zones = Zones::create_named(
            Zones::builder()
                .zone("a", 32 << 10)
                .zone_with_tag("b", 64 << 10, 9)
                .zone("c", 128 << 10)
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
        let c = zones.get("c").unwrap();
        let mut keep = Vec::new();
        for (i, size) in [8, 16, 32, 64, 128, 512, 2048, 5000, 8, 16, 32]
            .iter()
            .enumerate()
        {
            let q = c.alloc(*size).unwrap();
            if i % 3 == 1 {
                // SAFETY: just allocated from this zone, freed once.
                unsafe { c.free(q.as_ptr()) }.unwrap();
            } else {
                keep.push(q);
            }
        }
        let base = zones.region().as_ptr() as usize;
        let metas = std::iter::once(*zones.region_pool())
            .chain(zones.iter().map(|z| *z.pool()))
            .map(|pool| {
                let (desc, start, npages) = pool.metadata_layout();
                let at = pool.base().as_ptr() as usize - base;
                let small = (0..npages)
                    .filter(|&i| {
                        let d = pool.base().as_ptr().wrapping_add(desc + 16 * i);
                        // SAFETY: descriptor i lies inside the pool.
                        let prev = unsafe { d.add(12).cast::<u32>().read() };
                        matches!(prev >> 28, 2..=4)
                    })
                    .map(|i| at + start + i * shmzone::SLAB_PAGE)
                    .collect();
                PoolMeta {
                    at,
                    desc,
                    npages,
                    small,
                }
            })
            .collect();
        drop(zones);
        let bytes = std::fs::read(p).unwrap();
        std::fs::remove_file(p).unwrap();
        (bytes, metas)
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
            let mut img = image().0.clone();
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
        Input::Internals { patches } => {
            let (img, metas) = image();
            let mut img = img.clone();
            for (pool, part, at, value, wide) in patches {
                let m = &metas[pool as usize % metas.len()];
                let (start, len) = match part % 3 {
                    0 => (m.at, m.desc),
                    1 => (m.at + m.desc, 16 * m.npages),
                    _ if m.small.is_empty() => (m.at + m.desc, 16 * m.npages),
                    _ => (m.small[at as usize % m.small.len()], 64),
                };
                let n = if wide { 8 } else { 4 };
                let off = start + (at as usize % (len - n + 1)) / 4 * 4;
                img[off..off + n].copy_from_slice(&value.to_le_bytes()[..n]);
            }
            img
        }
    }
}

fuzz_target!(|input: Input| {
    // Lock words the bytes made up name dead processes: take those locks
    // over at once instead of waiting out the attach's bounded wait.
    shmzone::shmtx::set_process_heal_after(Some(std::time::Duration::from_millis(1)));
    let p = path();
    let _ = std::fs::remove_file(p);
    std::fs::write(p, file_bytes(input)).unwrap();

    let ro = Zones::attach(&NamedSpec::file(p).read_only(true));
    let rw = Zones::attach(&NamedSpec::file(p));
    if let Ok(zones) = &rw {
        // Read-write attach validated every zone: all sound, except zones
        // it found fenced (a dead holder's section rolled back, and the
        // pool still broken), which it accepts so that a master can
        // re-initialise them: those are sound after `reinit`.
        zones
            .region_pool()
            .check()
            .expect("a validated region pool is sound");
        for z in zones.iter() {
            if z.is_fenced() {
                z.reinit();
                assert!(!z.is_fenced(), "reinit lifts the fence");
            }
            z.check().expect("a validated zone is sound");
        }
        assert!(
            ro.is_ok(),
            "read-write attach passed, read-only did not: {ro:?}"
        );
    }
    drop(rw);
    // Then the read-only snapshot: its locks are free.
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
