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
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Os { source, .. } => Some(source),
            _ => None,
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
