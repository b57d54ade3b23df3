//! Replays the cargo-fuzz corpus (fuzz/corpus/decode/*) through the `decode` fuzz
//! target's body on stable, so every seed and every past finding stays covered.

use std::path::Path;

mod harness {
    include!("../fuzz/harness.rs");
}

#[test]
fn decode_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut n = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        harness::decode(&data);
        if weft_gob::decode_all(&data).is_ok() {
            decoded += 1;
        }
        n += 1;
    }
    assert!(n >= 50, "only {n} corpus files in {}", dir.display());
    // The seeds include every valid vector, and the mutants mostly fail.
    assert!(
        decoded >= 18 && decoded < n,
        "{decoded} of {n} corpus files decode"
    );
}
