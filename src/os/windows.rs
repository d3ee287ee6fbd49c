//! Windows: a stub with the shape of the unix named backends, whose every
//! call fails with [`Error::NamedUnsupported`].
//!
//! A port would use `CreateFileMappingW(INVALID_HANDLE_VALUE, .., name)`
//! for a named region backed by the paging file (the name `Local\NAME` or
//! `Global\NAME`, with `GetLastError() == ERROR_ALREADY_EXISTS` as the
//! `O_EXCL` check), `OpenFileMappingW` to attach, `MapViewOfFile` /
//! `UnmapViewOfFile` for the mapping, `VirtualQuery` for an attached view's
//! size, a `SECURITY_ATTRIBUTES` with an owner-only DACL for mode 0600, and
//! `CreateFileW` + `CreateFileMappingW(file)` for the file kind. There is no
//! SysV key. The lock's futex would become `WaitOnAddress` (same-process
//! only, so a cross-process wait needs a named event), and pids would come
//! from `GetCurrentProcessId`. The region layout itself needs no change:
//! it holds offsets only.

use std::path::Path;
use std::ptr::NonNull;

use super::named::{CreateOpts, NamedId};
use crate::error::Error;

fn unsupported(id: NamedId) -> Error {
    Error::NamedUnsupported {
        name: id.to_string(),
    }
}

/// One stub module per named kind, with the unix file's exact signatures.
macro_rules! stub {
    ($kind:ident, $arg:ty, $id:expr) => {
        pub(crate) mod $kind {
            use super::*;

            /// Never made: every constructor fails.
            pub(crate) enum Map {}

            impl Map {
                pub(crate) fn create(name: $arg, _opts: &CreateOpts) -> Result<Map, Error> {
                    Err(unsupported($id(name)))
                }

                pub(crate) fn attach(name: $arg, _read_only: bool) -> Result<Map, Error> {
                    Err(unsupported($id(name)))
                }

                pub(crate) fn attach_copy(name: $arg) -> Result<Map, Error> {
                    Err(unsupported($id(name)))
                }

                pub(crate) fn as_ptr(&self) -> NonNull<u8> {
                    match *self {}
                }

                pub(crate) fn len(&self) -> usize {
                    match *self {}
                }

                pub(crate) fn owner(&self) -> u32 {
                    match *self {}
                }
            }

            /// Fails: nothing can have been made.
            pub(crate) fn remove(name: $arg) -> Result<(), Error> {
                Err(unsupported($id(name)))
            }
        }
    };
}

stub!(posix, &str, |n: &str| NamedId::Posix(n.to_string()));
stub!(sysv_key, i32, NamedId::SysVKey);
stub!(file, &Path, |p: &Path| NamedId::File(p.to_path_buf()));
