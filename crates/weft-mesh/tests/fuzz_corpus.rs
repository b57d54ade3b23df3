//! Replays the cargo-fuzz corpus (fuzz/corpus/<target>/*) on stable through
//! the same entry points the fuzz targets call.

use std::path::PathBuf;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        f(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
}

#[test]
fn topology_update_corpus() {
    replay("topology_update", weft_mesh::fuzz_support::topology_update);
}
