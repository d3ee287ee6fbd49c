//! Build-time probe: which ways of making fork-shared memory work here.
//!
//! This is nginx's `auto/unix` done the Rust way. nginx compiles and runs a
//! tiny program per method; a build script already runs on the host, so when
//! host and target are the same unix it simply *tries* each method itself:
//!
//! | cfg                 | tried as                                             |
//! |---------------------|------------------------------------------------------|
//! | `shmzone_map_anon`  | `mmap(NULL, 4096, RW, MAP_ANON\|MAP_SHARED, -1, 0)`  |
//! | `shmzone_dev_zero`  | `open("/dev/zero", O_RDWR)` + `mmap(MAP_SHARED)`     |
//! | `shmzone_sysv`      | `shmget(IPC_PRIVATE, 4096)` + `shmat` + `IPC_RMID`   |
//!
//! When cross-compiling nothing runs: a table keyed by `CARGO_CFG_TARGET_OS`
//! decides. The default backend is the first available in nginx's order
//! (MAP_ANON, /dev/zero, SysV) and is emitted as `shmzone_default="…"`;
//! `SHMZONE_BACKEND=map_anon|dev_zero|sysv` overrides it.

use std::env;

/// The closed list of boolean cfgs this script may set.
const CFGS: &[&str] = &["shmzone_map_anon", "shmzone_dev_zero", "shmzone_sysv"];
/// The values `shmzone_default` may take, in nginx's order of preference.
const BACKENDS: &[&str] = &["map_anon", "dev_zero", "sysv"];
const OVERRIDE_VAR: &str = "SHMZONE_BACKEND";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed={OVERRIDE_VAR}");
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    let values: Vec<String> = BACKENDS.iter().map(|b| format!("\"{b}\"")).collect();
    println!(
        "cargo::rustc-check-cfg=cfg(shmzone_default, values({}))",
        values.join(", ")
    );

    let host = env::var("HOST").unwrap_or_default();
    let target = env::var("TARGET").unwrap_or_default();
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_family = env::var("CARGO_CFG_TARGET_FAMILY").unwrap_or_default();

    let works: Vec<&str> = if host == target && target_family == "unix" && cfg!(unix) {
        probe::live()
    } else {
        by_table(&target_os)
    };
    for backend in &works {
        set_cfg(&format!("shmzone_{backend}"));
    }

    let default =
        match env::var(OVERRIDE_VAR) {
            Ok(wanted) if !wanted.is_empty() => {
                if !BACKENDS.contains(&wanted.as_str()) {
                    fail(&format!(
                        "{OVERRIDE_VAR}={wanted:?} is not a backend; valid values: {}",
                        BACKENDS.join(", ")
                    ));
                }
                if !works.contains(&wanted.as_str()) {
                    fail(&format!(
                    "{OVERRIDE_VAR}={wanted} was asked for, but this target does not support it \
                     (supported here: {})",
                    if works.is_empty() { "none".to_string() } else { works.join(", ") }
                ));
                }
                Some(wanted)
            }
            _ => BACKENDS
                .iter()
                .find(|b| works.contains(b))
                .map(|b| b.to_string()),
        };
    if let Some(default) = default {
        println!("cargo::rustc-cfg=shmzone_default=\"{default}\"");
    }
}

/// Sets a cfg, refusing any name outside the closed list.
fn set_cfg(name: &str) {
    assert!(CFGS.contains(&name), "build.rs: {name} is not in CFGS");
    println!("cargo::rustc-cfg={name}");
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    panic!("{message}");
}

/// What each target OS supports, for cross builds where nothing can be run.
fn by_table(target_os: &str) -> Vec<&'static str> {
    match target_os {
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly" | "solaris"
        | "illumos" => vec!["map_anon", "dev_zero", "sysv"],
        // Darwin refuses to mmap /dev/zero MAP_SHARED.
        "macos" | "ios" | "tvos" | "watchos" | "visionos" => vec!["map_anon", "sysv"],
        _ => vec![],
    }
}

#[cfg(unix)]
mod probe {
    use std::ptr;

    const LEN: usize = 4096;

    /// Tries every method on this host; returns those that worked.
    pub fn live() -> Vec<&'static str> {
        let mut works = Vec::new();
        if map_anon() {
            works.push("map_anon");
        }
        if dev_zero() {
            works.push("dev_zero");
        }
        if sysv() {
            works.push("sysv");
        }
        works
    }

    fn map_anon() -> bool {
        // SAFETY: a fresh anonymous mapping; nothing else refers to it, and it
        // is unmapped before returning.
        unsafe {
            let p = libc::mmap(
                ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANON | libc::MAP_SHARED,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return false;
            }
            libc::munmap(p, LEN);
        }
        true
    }

    fn dev_zero() -> bool {
        // SAFETY: the path is a NUL-terminated literal; the fd and mapping are
        // local and released before returning.
        unsafe {
            let fd = libc::open(c"/dev/zero".as_ptr(), libc::O_RDWR);
            if fd == -1 {
                return false;
            }
            let p = libc::mmap(
                ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            libc::close(fd);
            if p == libc::MAP_FAILED {
                return false;
            }
            libc::munmap(p, LEN);
        }
        true
    }

    fn sysv() -> bool {
        // SAFETY: a private segment that is removed at once and detached
        // before returning; nothing else can refer to it.
        unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, LEN, libc::IPC_CREAT | 0o600);
            if id == -1 {
                return false;
            }
            let p = libc::shmat(id, ptr::null(), 0);
            libc::shmctl(id, libc::IPC_RMID, ptr::null_mut());
            if p as isize == -1 {
                return false;
            }
            libc::shmdt(p);
        }
        true
    }
}

#[cfg(not(unix))]
mod probe {
    pub fn live() -> Vec<&'static str> {
        Vec::new()
    }
}
