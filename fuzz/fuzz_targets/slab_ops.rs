//! Programs of slab operations: alloc / calloc / free / double free / free
//! of arbitrary addresses, checked against a model and `check()` after
//! every step, ending by freeing everything and allocating the whole pool.
//!
//! The interpreter is `shmzone::slab::fuzzing::run`, shared with
//! `tests/slab_regressions.rs`, which replays `fuzz/regressions/slab_ops/*`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shmzone::slab::fuzzing::run(data);
});
