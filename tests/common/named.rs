//! Names, keys and paths for tests of named regions.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use shmzone::named;
use shmzone::{NamedId, NamedSpec};

/// The three kinds of named region.
pub const KINDS: [&str; 3] = ["posix", "sysv", "file"];

/// This test binary's name ("named", "named_zones"), so that binaries run
/// side by side never pick the same name or key.
const TAG: &str = env!("CARGO_CRATE_NAME");

/// A byte from `TAG` (0x40..0x7f, so a key is never 0), for SysV keys.
const fn tag_byte() -> i32 {
    let b = TAG.as_bytes();
    let (mut h, mut i) = (0u32, 0);
    while i < b.len() {
        h = h.wrapping_mul(31).wrapping_add(b[i] as u32);
        i += 1;
    }
    (0x40 + h % 0x3f) as i32
}

/// A path in the temporary directory that this test run alone uses.
pub fn tmp(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shmzone-{TAG}-{}-{what}", std::process::id()))
}

/// A name, key or path no other test (or test run) uses; removed on drop.
pub struct Fresh(pub NamedId);

impl Fresh {
    pub fn new(kind: &str) -> Fresh {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = match kind {
            "posix" => NamedId::Posix(format!("/shmzone-{TAG}-{pid}-{n}")),
            "sysv" => NamedId::SysVKey(
                (tag_byte() << 24) | ((pid as i32 & 0xffff) << 8) | (n as i32 & 0xff),
            ),
            "file" => NamedId::File(tmp(&format!("region-{n}.shm"))),
            _ => unreachable!(),
        };
        let _ = named::remove(&id);
        Fresh(id)
    }

    pub fn spec(&self) -> NamedSpec {
        NamedSpec::new(self.0.clone())
    }

    /// The path of a `file` kind.
    pub fn path(&self) -> &PathBuf {
        match &self.0 {
            NamedId::File(p) => p,
            _ => panic!("not a file"),
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let _ = named::remove(&self.0);
    }
}

/// Runs `role` for `id` in a new process: this test binary, re-executed to
/// run only `child_entry`, which reads the request from `var`.
pub fn run_child(var: &str, role: &str, id: &NamedId) -> i32 {
    super::run_child_entry(var, &format!("{role};{}", id.to_arg()))
}

/// In `child_entry`: the role and spec that [`run_child`] sent through
/// `var`, or `None` when this is the ordinary test run.
pub fn child_request(var: &str) -> Option<(String, NamedSpec)> {
    let what = std::env::var(var).ok()?;
    let (role, id) = what.split_once(';').expect("role;id");
    Some((
        role.to_string(),
        NamedSpec::new(id.parse().expect("a named id")),
    ))
}
