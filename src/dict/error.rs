//! The dictionary's errors: each one changes nothing.

use std::fmt;

/// What a dictionary call can refuse. Every error leaves the dictionary
/// exactly as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DictError {
    /// The zone holds no dictionary (no root, a bad magic or a bad layout).
    NotADict(Box<ZoneProblem>),
    /// The zone cannot hold a dictionary (too small, or too big for its
    /// 32-bit offsets).
    BadZone(Box<ZoneProblem>),
    /// An empty key.
    EmptyKey,
    /// A key longer than [`MAX_KEY`](super::MAX_KEY) bytes.
    KeyTooLong {
        /// Its length.
        len: usize,
    },
    /// A value (or list item) larger than the zone could ever hold.
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The most the zone takes.
        max: usize,
    },
    /// `replace`, `cas`, `expire` or `incr` without an initial value: the
    /// key has no live value.
    NotFound,
    /// `add`: the key already has a live value.
    Exists,
    /// No room, even after evicting what `set` may evict (`safe_*` never
    /// evict). `forcible`: live entries were evicted in the attempt (and
    /// restored again: a failed call changes nothing).
    NoMemory {
        /// Live entries had been evicted before giving up (then restored).
        forcible: bool,
    },
    /// The key's value has another type than the call needs (`incr` on a
    /// non-integer, a list call on a non-list, `get` on a list).
    WrongType {
        /// The type found.
        found: &'static str,
    },
    /// `incr` would overflow an `i64`.
    Overflow,
    /// The operation does not fit in one crash-atomic section (the zone's
    /// undo journal is too small for it).
    TooBigForOneSection,
    /// The zone is fenced off after a failed recovery check, or the
    /// dictionary's structure is broken (`what`; the zone is named in the
    /// error log).
    Corrupt {
        /// The first broken invariant.
        what: &'static str,
    },
}

/// Which zone, and what is wrong with it (boxed: errors stay small, so the
/// hot paths' results do too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneProblem {
    /// The zone.
    pub zone: String,
    /// What is wrong.
    pub reason: String,
}

impl DictError {
    pub(super) fn not_a_dict(zone: &str, reason: String) -> DictError {
        DictError::NotADict(Box::new(ZoneProblem {
            zone: zone.to_string(),
            reason,
        }))
    }

    pub(super) fn bad_zone(zone: &str, reason: String) -> DictError {
        DictError::BadZone(Box::new(ZoneProblem {
            zone: zone.to_string(),
            reason,
        }))
    }
}

impl fmt::Display for DictError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DictError::NotADict(p) => write!(
                f,
                "shared zone \"{}\" holds no dictionary: {}",
                p.zone, p.reason
            ),
            DictError::BadZone(p) => write!(
                f,
                "shared zone \"{}\" cannot hold a dictionary: {}",
                p.zone, p.reason
            ),
            DictError::EmptyKey => f.write_str("empty key"),
            DictError::KeyTooLong { len } => {
                write!(
                    f,
                    "key too long: {len} bytes (the most is {})",
                    super::MAX_KEY
                )
            }
            DictError::ValueTooLarge { len, max } => {
                write!(
                    f,
                    "value too large: {len} bytes (the zone takes at most {max})"
                )
            }
            DictError::NotFound => f.write_str("not found"),
            DictError::Exists => f.write_str("exists"),
            DictError::NoMemory { forcible } => {
                write!(f, "no memory")?;
                if *forcible {
                    write!(f, " (even after evicting live entries)")?;
                }
                Ok(())
            }
            DictError::WrongType { found } => write!(f, "wrong value type: the value is {found}"),
            DictError::Overflow => f.write_str("integer overflow"),
            DictError::TooBigForOneSection => {
                f.write_str("the operation does not fit in one crash-atomic section")
            }
            DictError::Corrupt { what } => write!(f, "the dictionary is broken: {what}"),
        }
    }
}

impl std::error::Error for DictError {}

impl From<DictError> for crate::Error {
    fn from(e: DictError) -> crate::Error {
        crate::Error::Dict(e)
    }
}
