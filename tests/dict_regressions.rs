//! Replays the inputs in fuzz/regressions/dict_ops with the fuzz target's
//! own interpreter (`shmzone::dict::fuzzing::run`).

/// `list-links-outside-the-zone` (found by the CI fuzz smoke): a set that
/// evicted a list and then failed rolled back to a savepoint, but the words
/// the section saves once (the garbage chain head) had been saved before
/// the savepoint, so the chain kept the revived list's nodes and a later
/// store freed them under the live list (for some hash seeds: the replay
/// runs each input with 16 seeds' worth of runs).
///
/// `small-page-bitmap-revived` (found by `dict::tests::fuzz_programs`
/// when the size classes changed): a push evicted the last entries of a
/// small-chunk page, the page was given back and cut for the new entry,
/// whose header (fresh memory, written without a record) overwrote the
/// second word of the old page's in-page bitmap; the push then failed and
/// rolled back, reviving the page with a torn bitmap. Giving back a small
/// page now saves its whole bitmap.
#[test]
fn dict_ops_regressions_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/dict_ops");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions dir") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read");
        eprintln!("replaying {}", path.display());
        for _ in 0..16 {
            shmzone::dict::fuzzing::run(&data);
        }
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
