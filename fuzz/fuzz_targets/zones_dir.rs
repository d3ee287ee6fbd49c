//! The zone directory under arbitrary programs of declare / build / reload /
//! get_or_create / alloc / release: never a panic, zones never overlap
//! (validate_region), every zone's and the region pool's check() passes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shmzone::{Zones, ZonesBuilder};

#[derive(Arbitrary, Debug)]
enum Op {
    Declare {
        name: u8,
        pages: u8,
        tag: u8,
        noreuse: bool,
        init: bool,
    },
    Reload,
    GetOrCreate {
        name: u8,
        pages: u8,
        tag: u8,
    },
    Alloc {
        name: u8,
        size: u16,
        keep: bool,
    },
    ReleaseRetired,
    ForceUnlock,
}

#[derive(Arbitrary, Debug)]
struct Program {
    slack_pages: u8,
    first: Vec<(u8, u8, u8)>,
    ops: Vec<Op>,
}

fn name(n: u8) -> String {
    match n % 12 {
        10 => String::new(),
        11 => "n".repeat(64),
        i => format!("zone{i}"),
    }
}

fn verify(zones: &Zones) {
    // SAFETY: the region is mapped and readable for the whole call.
    unsafe { shmzone::zone::validate_region(zones.region().base(), zones.region().len()) }
        .expect("directory valid");
    zones.region_pool().check().expect("region pool sound");
    for z in zones.iter() {
        z.check().expect("zone pool sound");
    }
}

fuzz_target!(|p: Program| {
    let mut b = Zones::builder().slack(p.slack_pages as usize * 4096);
    for &(n, pages, tag) in p.first.iter().take(8) {
        b = b.zone_with_tag(&name(n), pages as usize * 4096, (tag % 3) as u64);
    }
    let mut zones = match b.build() {
        Ok(z) => z,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    verify(&zones);
    let mut pending: ZonesBuilder = Zones::builder();
    for op in p.ops.into_iter().take(64) {
        match op {
            Op::Declare {
                name: n,
                pages,
                tag,
                noreuse,
                init,
            } => {
                let nm = name(n);
                pending = pending.zone_with_tag(&nm, pages as usize * 4096, (tag % 3) as u64);
                if noreuse {
                    pending = pending.noreuse(&nm);
                }
                if init {
                    pending = pending.init(&nm, |z, _| {
                        z.alloc(64).map(|_| ()).ok_or(shmzone::Error::ZeroSizeZone {
                            name: "init".into(),
                        })
                    });
                }
            }
            Op::Reload => {
                let b = std::mem::replace(&mut pending, Zones::builder());
                let before: Vec<String> = zones.iter().map(|z| z.name().to_string()).collect();
                if zones.reload(b).is_err() {
                    let after: Vec<String> = zones.iter().map(|z| z.name().to_string()).collect();
                    assert_eq!(before, after, "a failed reload changes nothing");
                }
            }
            Op::GetOrCreate {
                name: n,
                pages,
                tag,
            } => {
                if let Ok(z) =
                    zones.get_or_create_with_tag(&name(n), pages as usize * 4096, (tag % 3) as u64)
                {
                    assert_eq!(z.name(), name(n));
                }
            }
            Op::Alloc {
                name: n,
                size,
                keep,
            } => {
                if let Some(z) = zones.get(&name(n)) {
                    if let Some(ptr) = z.alloc(size as usize) {
                        if !keep {
                            // SAFETY: just allocated from this zone, unused.
                            unsafe { z.free(ptr.as_ptr()) }.expect("free of a fresh block");
                        }
                    }
                }
            }
            Op::ReleaseRetired => {
                zones.release_retired();
                assert_eq!(zones.retired_bytes(), 0);
            }
            Op::ForceUnlock => {
                assert!(zones.force_unlock_all(std::process::id()).is_empty());
            }
        }
        verify(&zones);
    }
});
