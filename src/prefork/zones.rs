//! The death hook for zones: release what a dead worker held, check it.

use crate::journal::Rollback;
use crate::slab::{CheckError, Pool};
use crate::zone::{Zones, REGION_LOCK_NAME};

/// What [`recover_zones`] did for one dead worker.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The dead worker's pid.
    pub pid: u32,
    /// The locks it held and that were released: zone names, and
    /// `"<region>"` for the region's own lock.
    pub unlocked: Vec<String>,
    /// Of those, the ones where it had a section open, rolled back as a
    /// whole (what was undone).
    pub rolled_back: Vec<(String, Rollback)>,
    /// Of those zones (and the region pool), the ones whose `check()` still
    /// found them broken after the rollback: they are fenced.
    pub broken: Vec<(String, CheckError)>,
    /// Zones where the dead worker's per-thread caches were given back to
    /// the pool, and how many caches (one per thread that allocated).
    pub caches_returned: Vec<(String, usize)>,
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
/// Then the dead worker's per-thread chunk caches are given back to every
/// zone ([`Pool::reclaim_caches_of`]), so nothing it had cached leaks.
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
    let mut rolled_back = Vec::new();
    let mut broken = Vec::new();
    // The region pool first: looking zones up takes its lock.
    let mut names: Vec<&String> = unlocked.iter().filter(|n| *n == REGION_LOCK_NAME).collect();
    names.extend(unlocked.iter().filter(|n| *n != REGION_LOCK_NAME));
    for name in names {
        let zone;
        let pool: &Pool = if name == REGION_LOCK_NAME {
            zones.region_pool()
        } else {
            let Some(z) = zones.get(name) else {
                continue;
            };
            zone = z;
            zone.pool()
        };
        // Taking the lock rolls the dead worker's open section back (the
        // master's guard is the one told), then checks the pool; the check
        // below reports what is still wrong (the pool is then fenced).
        let guard = pool.lock();
        if let Some(r) = guard.rolled_back() {
            log::warn!(
                "zone \"{name}\": section of dead worker {pid} rolled back ({} records, {} bytes)",
                r.records,
                r.bytes
            );
            rolled_back.push((name.clone(), r));
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
    // Every zone: the dead worker's cached chunks go back to the pool
    // (after the rollbacks above, so the pools are consistent first).
    let mut caches_returned = Vec::new();
    for zone in zones.iter() {
        let n = zone.pool().reclaim_caches_of(pid);
        if n > 0 {
            caches_returned.push((zone.name().to_string(), n));
        }
    }
    Recovery {
        pid,
        unlocked,
        rolled_back,
        broken,
        caches_returned,
    }
}
