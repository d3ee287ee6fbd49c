//! The death hook for zones: release what a dead worker held, check it.

use crate::slab::CheckError;
use crate::zone::{Zones, REGION_LOCK_NAME};

/// What [`recover_zones`] did for one dead worker.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The dead worker's pid.
    pub pid: u32,
    /// The locks it held and that were released: zone names, and
    /// `"<region>"` for the region's own lock.
    pub unlocked: Vec<String>,
    /// Of those zones, the ones whose pool `check()` found broken.
    pub broken: Vec<(String, CheckError)>,
}

impl Recovery {
    /// The dead worker held no lock.
    pub fn is_clean(&self) -> bool {
        self.unlocked.is_empty()
    }
}

/// The zones part of the master's death hook (call it before reaping
/// `pid`, i.e. from [`Master::on_death`](super::Master::on_death)):
/// releases every lock `pid` held with [`Zones::force_unlock_all`], then
/// runs [`check()`](crate::zone::Zone::check) on each zone it held (a
/// worker killed inside a critical section can leave its pool
/// half-updated), logging what it found as nginx's master does
/// (`shared memory zone "x" was locked by PID`).
///
/// Since the check takes each such zone's lock, the master is the process
/// that [`recovered_from`](crate::slab::PoolGuard::recovered_from) tells;
/// a caller whose own structures in the zone need repair after such a
/// death does it in the same hook, using [`Recovery::unlocked`].
///
/// ```
/// use shmzone::{prefork::recover_zones, Zones};
/// let zones = Zones::builder().zone("z", 64 << 10).build()?;
/// let r = recover_zones(&zones, 999_999);
/// assert!(r.is_clean());
/// # Ok::<(), shmzone::Error>(())
/// ```
pub fn recover_zones(zones: &Zones, pid: u32) -> Recovery {
    let unlocked = zones.force_unlock_all(pid);
    let mut broken = Vec::new();
    for name in &unlocked {
        if name == REGION_LOCK_NAME {
            continue;
        }
        let Some(zone) = zones.get(name) else {
            continue;
        };
        // The check takes the lock, so the master's guard (not the next
        // worker's) is the one told that the lock was taken from a dead
        // holder: repairing the user's data in the zone belongs in the same
        // death hook, after this call (see the `prefork_http` example).
        let guard = zone.lock();
        if guard.recovered_from() == Some(pid) {
            log::debug!("zone \"{name}\": recovery from {pid} confirmed");
        }
        let checked = guard.check_locked();
        drop(guard);
        match checked {
            Ok(()) => log::info!("zone \"{name}\" checked after the death of {pid}: consistent"),
            Err(e) => {
                log::error!("zone \"{name}\" is inconsistent after the death of {pid}: {e}");
                broken.push((name.clone(), e));
            }
        }
    }
    Recovery {
        pid,
        unlocked,
        broken,
    }
}
