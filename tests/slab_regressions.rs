//! Replays every saved input of the `slab_ops` fuzz target
//! (`fuzz/regressions/slab_ops/`) through the same interpreter.

use std::path::Path;

#[test]
fn replay_slab_ops_regressions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/slab_ops");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/regressions/slab_ops") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        eprintln!("replaying {}", path.display());
        shmzone::slab::fuzzing::run(&data);
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
