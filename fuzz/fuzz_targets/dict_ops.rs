//! Programs of dictionary operations (set, safe_set, add, replace, delete,
//! incr, cas, lists, flushes, expire, iteration) in a small zone, so that
//! stores evict, checked against a model and `check()` after every step.
//!
//! The interpreter is `shmzone::dict::fuzzing::run`, shared with the
//! dictionary's unit tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shmzone::dict::fuzzing::run(data);
});
