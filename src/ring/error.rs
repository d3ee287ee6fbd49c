//! What can go wrong with a ring.

use std::fmt;

/// Errors of [`Ring`](super::Ring), its producers and readers. Messages
/// name the zone.
#[derive(Debug)]
#[non_exhaustive]
pub enum RingError {
    /// The zone holds no ring (its root is 0).
    NoRing {
        /// The zone.
        zone: String,
    },
    /// The zone's root does not lead to a valid ring header (another
    /// structure, another layout version, or corrupted memory).
    BadRing {
        /// The zone.
        zone: String,
        /// What is wrong.
        reason: String,
    },
    /// [`Ring::create`](super::Ring::create) on a zone whose root is
    /// already set (something else lives there).
    RootTaken {
        /// The zone.
        zone: String,
    },
    /// The zone has no room for a ring of this configuration.
    NoRoom {
        /// The zone.
        zone: String,
        /// Bytes the ring needs in one allocation.
        need: usize,
    },
    /// A [`RingConfig`](super::RingConfig) out of bounds.
    BadConfig {
        /// What is wrong.
        reason: String,
    },
    /// Every slot is owned by a live process.
    NoFreeSlot {
        /// The zone.
        zone: String,
        /// How many slots the ring has.
        slots: usize,
    },
    /// A record longer than the ring's maximum: not written, counted as
    /// dropped.
    TooLong {
        /// The record's length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A producer used by a process other than the one that claimed its
    /// slot (a handle inherited through `fork`): claim a slot of your own.
    NotOwner {
        /// The pid that claimed the slot.
        owner: u32,
        /// The pid that tried to write.
        pid: u32,
    },
    /// A reader found a slot's words or a record inconsistent (corrupted
    /// memory); it skipped to the slot's newest position and goes on.
    Corrupt {
        /// The zone.
        zone: String,
        /// The slot.
        slot: usize,
        /// What was wrong.
        reason: String,
    },
    /// A zone error while making or finding the ring's zone.
    Zone(crate::Error),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::NoRing { zone } => {
                write!(f, "shared memory zone \"{zone}\" holds no log ring")
            }
            RingError::BadRing { zone, reason } => write!(
                f,
                "shared memory zone \"{zone}\" does not hold a usable log ring: {reason}"
            ),
            RingError::RootTaken { zone } => write!(
                f,
                "shared memory zone \"{zone}\" already holds a structure: no ring made there"
            ),
            RingError::NoRoom { zone, need } => write!(
                f,
                "no room for a log ring of {need} bytes in shared memory zone \"{zone}\""
            ),
            RingError::BadConfig { reason } => write!(f, "bad log ring configuration: {reason}"),
            RingError::NoFreeSlot { zone, slots } => write!(
                f,
                "all {slots} producer slots of the log ring in zone \"{zone}\" belong to live processes"
            ),
            RingError::TooLong { len, max } => {
                write!(f, "log record of {len} bytes is over the maximum of {max}")
            }
            RingError::NotOwner { owner, pid } => write!(
                f,
                "log ring producer claimed by process {owner} used by process {pid}"
            ),
            RingError::Corrupt { zone, slot, reason } => write!(
                f,
                "log ring in zone \"{zone}\", slot {slot}: {reason} (skipped to its newest record)"
            ),
            RingError::Zone(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RingError::Zone(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::Error> for RingError {
    fn from(e: crate::Error) -> RingError {
        RingError::Zone(e)
    }
}
