//! The `shmzone-stat` inspector, run as a separate process on named regions.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use shmzone::{named, NamedId, NamedSpec, Zones};

fn stat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmzone-stat"))
        .args(args)
        .output()
        .expect("run shmzone-stat")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A region with zones "hits" (a few allocations) and "sessions"; removed
/// on drop.
struct Served {
    zones: Option<Zones>,
    id: NamedId,
}

impl Served {
    fn new(kind: &str) -> Served {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = match kind {
            "posix" => NamedId::Posix(format!("/shmzone-stat-{pid}-{n}")),
            "sysv" => NamedId::SysVKey(0x5c00_0000 | ((pid as i32 & 0xffff) << 8) | n as i32),
            "file" => NamedId::File(std::env::temp_dir().join(format!("shmzone-stat-{pid}-{n}"))),
            _ => unreachable!(),
        };
        let _ = named::remove(&id);
        let zones = Zones::create_named(
            Zones::builder()
                .zone("hits", 128 << 10)
                .zone_with_tag("sessions", 64 << 10, 42),
            &NamedSpec::new(id.clone()),
        )
        .unwrap();
        let hits = zones.get("hits").unwrap();
        for i in 0..10u64 {
            hits.alloc_value(i).unwrap();
        }
        hits.alloc(10_000).unwrap();
        Served {
            zones: Some(zones),
            id,
        }
    }

    fn args(&self) -> Vec<String> {
        match &self.id {
            NamedId::Posix(n) => vec!["--posix".into(), n.clone()],
            NamedId::SysVKey(k) => vec!["--sysv".into(), format!("{k:#x}")],
            NamedId::File(p) => vec!["--file".into(), p.display().to_string()],
            _ => unreachable!(),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.zones.take());
        let _ = named::remove(&self.id);
    }
}

fn with(extra: &[&str], s: &Served) -> Output {
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    args.extend(s.args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    stat(&refs)
}

#[test]
fn table_lists_zones_and_stats_for_every_kind() {
    for kind in ["posix", "sysv", "file"] {
        let s = Served::new(kind);
        let out = with(&["--classes"], &s);
        let t = text(&out.stdout);
        assert!(out.status.success(), "{kind}: {}{t}", text(&out.stderr));
        assert!(t.contains("2 zones"), "{t}");
        let hits = t
            .lines()
            .find(|l| l.starts_with("hits "))
            .expect("a hits row");
        // size, tag 0, 32 pages, 11 requests, no failures, check ok.
        assert!(hits.contains("128KiB"), "{hits}");
        let cols: Vec<&str> = hits.split_whitespace().collect();
        assert_eq!(cols[2], "0", "tag: {hits}");
        assert_eq!(cols[7], "11", "reqs: {hits}");
        assert_eq!(cols[8], "0", "fails: {hits}");
        assert!(hits.ends_with("ok"), "{hits}");
        let sessions = t.lines().find(|l| l.starts_with("sessions ")).unwrap();
        assert_eq!(sessions.split_whitespace().nth(2), Some("42"), "{sessions}");
        assert!(t.contains("8B chunks: 10/"), "{t}");
        assert!(t.contains("page runs"), "{t}");
    }
}

#[test]
fn the_kind_colon_name_form() {
    for kind in ["posix", "sysv", "file"] {
        let s = Served::new(kind);
        let arg = match &s.id {
            NamedId::Posix(n) => format!("posix:{n}"),
            NamedId::SysVKey(k) => format!("sysv:{k}"),
            NamedId::File(p) => format!("file:{}", p.display()),
            _ => unreachable!(),
        };
        let out = stat(&[&arg]);
        assert!(out.status.success(), "{kind}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("2 zones"));
    }
}

#[test]
fn json_output() {
    let s = Served::new("file");
    let out = with(&["--json"], &s);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j = text(&out.stdout);
    assert!(
        j.trim_start().starts_with('{') && j.trim_end().ends_with('}'),
        "{j}"
    );
    assert!(j.contains("\"name\": \"hits\""), "{j}");
    assert!(
        j.contains("\"name\": \"sessions\", \"size\": 65536, \"tag\": 42"),
        "{j}"
    );
    assert!(j.contains("\"check\": \"ok\""), "{j}");
    assert!(j.contains("\"bytes_requested\": 10080"), "{j}");
    // Balanced brackets and quotes: a cheap well-formedness check.
    assert_eq!(j.matches('{').count(), j.matches('}').count());
    assert_eq!(j.matches('[').count(), j.matches(']').count());
    assert_eq!(j.matches('"').count() % 2, 0);
}

#[test]
fn needs_only_read_permission_and_changes_nothing() {
    let s = Served::new("file");
    let NamedId::File(path) = &s.id else {
        unreachable!()
    };
    let before = std::fs::read(path).unwrap();
    let out = with(&[], &s);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(path).unwrap(), before, "the inspector wrote");
}

#[test]
fn errors_and_usage() {
    let out = stat(&["--posix", "/shmzone-stat-never-made"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("No such file"),
        "{}",
        text(&out.stderr)
    );

    let bad = std::env::temp_dir().join(format!("shmzone-stat-bad-{}", std::process::id()));
    std::fs::write(&bad, vec![7u8; 64 << 10]).unwrap();
    let out = stat(&["--file", bad.to_str().unwrap()]);
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a usable shmzone region"),
        "{}",
        text(&out.stderr)
    );

    for args in [
        &[][..],
        &["--frob"],
        &["--sysv", "zz"],
        &["--file"],
        &["/x"],
        &["sysv:zz"],
        &["posix:/a", "file:/b"],
    ] {
        let out = stat(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("usage:"));
    }
}

#[test]
fn inspecting_a_region_that_a_worker_is_churning() {
    let s = Served::new("posix");
    let zones = s.zones.as_ref().unwrap();
    let hits = zones.get("hits").unwrap();
    // A forked worker allocates and frees as fast as it can, holding the
    // zone lock most of the time, until it is killed.
    let zone_ptr = &hits as *const shmzone::Zone<'_> as usize;
    // SAFETY: forks; the child only uses the zone (shared memory, its own
    // stack) and never returns.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the child's copy of `hits`, alive on this stack frame.
        let zone = unsafe { &*(zone_ptr as *const shmzone::Zone<'_>) };
        let mut held = [std::ptr::null_mut::<u8>(); 64];
        let mut i = 0usize;
        loop {
            let slot = i % held.len();
            if !held[slot].is_null() {
                // SAFETY: allocated below from this zone, freed once.
                let _ = unsafe { zone.free(held[slot]) };
            }
            held[slot] = zone
                .alloc(8 + (i * 37) % 3000)
                .map_or(std::ptr::null_mut(), |p| p.as_ptr());
            i = i.wrapping_add(1);
        }
    }
    let mut codes = Vec::new();
    for _ in 0..20 {
        let out = with(&["--json"], &s);
        codes.push(out.status.code());
    }
    // SAFETY: kills and reaps our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    eprintln!("inspector exit codes under churn: {codes:?}");
    // Never a crash (a signal has no code); 0, or 3 if five snapshots in a
    // row caught the worker mid-operation.
    assert!(
        codes.iter().all(|c| *c == Some(0) || *c == Some(3)),
        "{codes:?}"
    );
    assert!(codes.contains(&Some(0)), "{codes:?}");
}
