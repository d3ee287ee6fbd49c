//! The crate's error type.

use std::fmt;
use std::io;

use crate::os::Backend;

/// Everything that can go wrong when making or using shared memory.
///
/// Messages name the call, the size and the OS error, in nginx's manner:
/// `shmget(IPC_PRIVATE, 68719476736) failed: Invalid argument`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed. `call` is the call as it was made, e.g.
    /// `mmap(MAP_ANON|MAP_SHARED, 4096)`.
    Os {
        /// The call, with its arguments.
        call: String,
        /// What the OS said.
        source: io::Error,
    },
    /// A region (or zone) of zero bytes was asked for.
    ZeroLength,
    /// The length overflows when rounded up to whole pages.
    LengthOverflow {
        /// The length asked for.
        len: usize,
    },
    /// This build cannot make memory with that backend (`build.rs` found it
    /// does not work on this target).
    Unsupported {
        /// The backend asked for.
        backend: Backend,
    },
    /// A zone smaller than the minimum (`Pool::MIN_SIZE`).
    ZoneTooSmall {
        /// The zone.
        name: String,
        /// Its size, rounded to 4 KiB pages.
        size: usize,
        /// The minimum.
        min: usize,
    },
    /// The same zone name declared twice with different sizes.
    ZoneSizeConflict {
        /// The zone.
        name: String,
        /// The size asked for now.
        size: usize,
        /// The size it already has.
        declared: usize,
    },
    /// The same zone name declared with another tag (another user).
    ZoneTagConflict {
        /// The zone.
        name: String,
    },
    /// A zone referenced (size 0) but never sized.
    ZeroSizeZone {
        /// The zone.
        name: String,
    },
    /// A zone name that is empty, longer than 63 bytes, or not UTF-8.
    ZoneName {
        /// The name (lossily decoded).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An operation on a zone that was never declared.
    NoSuchZone {
        /// The zone.
        name: String,
    },
    /// No room left in the region for a zone.
    RegionFull {
        /// The zone.
        name: String,
        /// The bytes it needs.
        size: usize,
        /// The largest zone that would still fit.
        largest: usize,
    },
    /// The zone directory has no free entry.
    DirectoryFull {
        /// How many zones a region holds.
        max: usize,
    },
    /// Memory that does not hold a valid shmzone region.
    BadRegion {
        /// What is wrong.
        reason: String,
    },
    /// The slab pool refused.
    Pool(crate::slab::PoolError),
    /// A reload in progress (in a live process) is making a zone of this
    /// name, and did not publish it in time.
    ZoneBusy {
        /// The zone's name.
        name: String,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// A locked section's undo journal had no room for a write.
    Journal {
        /// What was being written.
        what: &'static str,
        /// How much room was needed and left.
        source: crate::journal::JournalFull,
    },
    /// Creating a named region found the name, key or path already taken
    /// (left over, or planted by someone else): it is never adopted. Attach
    /// to it, remove it, or create with `NamedSpec::replace(true)`.
    AlreadyExists {
        /// What was asked for, e.g. `POSIX shm "/cache"`.
        name: String,
    },
    /// A named region's name, key, path or mode cannot be used, or what it
    /// names cannot be a region (a symbolic link, a directory, an empty or
    /// truncated file).
    BadNamed {
        /// What was asked for, e.g. `file "/var/lib/x.shm"`.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A lock of a region this process attached was not released in time:
    /// its holder may be a process that is not one of the region's users
    /// (see [`ShmMutex::lock_for`](crate::ShmMutex::lock_for)).
    LockTimeout {
        /// Whose lock: a zone's name, or `<region>` for the region lock.
        lock: String,
        /// The holder and how long the wait was.
        source: crate::shmtx::LockTimeout,
    },
    /// Named regions are not supported on this target (Windows, for now).
    NamedUnsupported {
        /// What was asked for.
        name: String,
    },
    /// A log ring refused (see [`crate::ring`]); lets a zone's init
    /// callback make a ring with `?`.
    Ring(Box<crate::ring::RingError>),
    /// A dictionary refused (see [`DictError`](crate::dict::DictError)).
    Dict(crate::dict::DictError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os { call, source } => write!(f, "{call} failed: {}", os_message(source)),
            Error::ZeroLength => f.write_str("shared memory of zero bytes asked for"),
            Error::LengthOverflow { len } => write!(
                f,
                "shared memory length {len} overflows when rounded up to whole pages"
            ),
            Error::Unsupported { backend } => write!(
                f,
                "backend {backend} is not supported by this build (available: {})",
                names(Backend::available())
            ),
            Error::ZoneTooSmall { name, size, min } => write!(
                f,
                "zone \"{name}\" is too small ({size} bytes; the minimum is {min} bytes)"
            ),
            Error::ZoneSizeConflict {
                name,
                size,
                declared,
            } => write!(
                f,
                "the size {size} of shared memory zone \"{name}\" conflicts with already declared size {declared}"
            ),
            Error::ZoneTagConflict { name } => write!(
                f,
                "shared zone \"{name}\" is already declared for a different use"
            ),
            Error::ZeroSizeZone { name } => {
                write!(f, "zero size shared memory zone \"{name}\"")
            }
            Error::ZoneName { name, reason } => {
                write!(f, "invalid zone name \"{}\": {reason}", name.escape_debug())
            }
            Error::NoSuchZone { name } => write!(f, "no shared memory zone \"{name}\" is declared"),
            Error::RegionFull {
                name,
                size,
                largest,
            } => write!(
                f,
                "no room for shared memory zone \"{name}\" of {size} bytes in the region \
                 (the largest that fits is {largest} bytes)"
            ),
            Error::DirectoryFull { max } => {
                write!(f, "the zone directory is full ({max} zones at most)")
            }
            Error::BadRegion { reason } => write!(f, "not a usable shmzone region: {reason}"),
            Error::Pool(e) => write!(f, "{e}"),
            Error::Journal { what, source } => write!(f, "writing {what}: {source}"),
            Error::ZoneBusy { name, waited } => write!(
                f,
                "shared zone \"{name}\" is being made by a reload in progress; \
                 not published after {waited:?}"
            ),
            Error::AlreadyExists { name } => write!(
                f,
                "{name} already exists: not adopting it (attach to it, remove it, or create with replace)"
            ),
            Error::BadNamed { name, reason } => write!(f, "{name}: {reason}"),
            Error::LockTimeout { lock, source } => {
                write!(f, "the lock of zone \"{lock}\": {source}")
            }
            Error::Dict(e) => write!(f, "{e}"),
            Error::NamedUnsupported { name } => write!(
                f,
                "{name}: named regions are not supported on this target"
            ),
            Error::Ring(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Os { source, .. } => Some(source),
            Error::Pool(e) => Some(e),
            Error::LockTimeout { source, .. } => Some(source),
            Error::Ring(e) => Some(&**e),
            Error::Dict(e) => Some(e),
            Error::Journal { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<crate::ring::RingError> for Error {
    fn from(e: crate::ring::RingError) -> Error {
        match e {
            crate::ring::RingError::Zone(e) => e,
            e => Error::Ring(Box::new(e)),
        }
    }
}

/// The OS's own text for an error, without io::Error's "(os error N)".
fn os_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn names(backends: &[Backend]) -> String {
    if backends.is_empty() {
        return "none".to_string();
    }
    backends
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}
