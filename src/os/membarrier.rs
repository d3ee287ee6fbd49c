//! An asymmetric memory barrier across processes: membarrier(2).
//!
//! The lock's unlock is a plain store followed by a plain load of the
//! waiter count; on its own that pair may be reordered by the CPU (a store
//! sits in the store buffer while the later load is served). A process
//! about to sleep therefore calls [`global`], which makes every CPU that
//! runs a registered process execute a full barrier before it returns — the
//! classic "fast side with a compiler barrier, slow side with membarrier"
//! pattern. An unlocker may use the plain store only in a process that
//! [`register`]ed successfully; otherwise it keeps the compare-and-swap.
//!
//! | target | `register()` | `global()` |
//! |---|---|---|
//! | Linux, Android | `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` | `MEMBARRIER_CMD_GLOBAL_EXPEDITED` |
//! | other unixes | false | false |

cfg_if::cfg_if! {
    if #[cfg(any(target_os = "linux", target_os = "android"))] {
        /// `MEMBARRIER_CMD_GLOBAL_EXPEDITED` from `<linux/membarrier.h>`.
        const CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
        /// `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED`.
        const CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

        fn membarrier(cmd: libc::c_int) -> bool {
            // SAFETY: membarrier takes no pointers; an unknown command or a
            // kernel without it fails with EINVAL or ENOSYS.
            unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_uint, 0 as libc::c_int) == 0 }
        }

        /// Registers this process (its whole address space) so that
        /// [`global`] barriers reach the CPUs running it. Linux ≥ 4.16.
        pub(crate) fn register() -> bool {
            membarrier(CMD_REGISTER_GLOBAL_EXPEDITED)
        }

        /// A full memory barrier on every CPU running a registered process,
        /// done before this returns. False if the kernel refused.
        pub(crate) fn global() -> bool {
            membarrier(CMD_GLOBAL_EXPEDITED)
        }
    } else {
        /// No membarrier here: unlockers keep the compare-and-swap.
        pub(crate) fn register() -> bool {
            false
        }

        /// No membarrier here.
        pub(crate) fn global() -> bool {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registered_processes_get_barriers() {
        if super::register() {
            assert!(super::global());
        }
    }
}
