//! The clock the dictionary's TTLs run on: one that every process on the
//! host shares, that never jumps with the wall clock.
//!
//! Linux and Android: `CLOCK_BOOTTIME` (monotonic, counts suspend too; see
//! clock_gettime(2)). Elsewhere: `CLOCK_MONOTONIC`. Both start near zero at
//! boot, so their readings mean the same in every process of one boot and
//! nothing across a reboot: [`boot_epoch_ms`] tells boots apart.

cfg_if::cfg_if! {
    if #[cfg(any(target_os = "linux", target_os = "android"))] {
        const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    } else if #[cfg(unix)] {
        const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    }
}

#[cfg(unix)]
fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter; the clock ids are constants
    // every supported unix has, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(ts.tv_nsec as u64 / 1_000_000)
}

/// Milliseconds on the shared clock (see the module docs).
#[cfg(unix)]
#[inline]
pub(crate) fn now_ms() -> u64 {
    read(CLOCK)
}

/// The wall-clock time (ms since the Unix epoch) at which the shared clock
/// read zero: constant during one boot (up to NTP slewing, a few ms), and
/// different after a reboot.
#[cfg(unix)]
pub(crate) fn boot_epoch_ms() -> u64 {
    read(libc::CLOCK_REALTIME).wrapping_sub(read(CLOCK))
}

/// Milliseconds since the first call in this process (no shared clock on
/// this target: TTLs only mean something within one process tree started
/// after it).
#[cfg(not(unix))]
pub(crate) fn now_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// No boot epoch on this target: 0.
#[cfg(not(unix))]
pub(crate) fn boot_epoch_ms() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_forward_and_the_epoch_is_stable() {
        let a = now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = now_ms();
        assert!(b >= a + 4, "{a} {b}");
        let (e1, e2) = (boot_epoch_ms(), boot_epoch_ms());
        assert!(e1.abs_diff(e2) < 50, "{e1} {e2}");
    }
}
