//! Replays the cargo-fuzz corpus (fuzz/corpus/<target>/*) on stable through
//! the same entry points the fuzz targets use.

use std::path::Path;

use weft_wire::fuzz_support;

fn replay<R>(target: &str, run: fn(&[u8]) -> R) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            let data = std::fs::read(&path).unwrap();
            let _ = run(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
}

#[test]
fn handshake_corpus() {
    replay("handshake", fuzz_support::handshake);
}

#[test]
fn frame_corpus() {
    replay("frame", fuzz_support::frame);
}

#[test]
fn gossip_msg_corpus() {
    replay("gossip_msg", fuzz_support::gossip_msg);
}

#[test]
fn complete_handshake_seeds_do_complete() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/handshake");
    for name in ["plain_full_bytewise", "plain_full_bulk", "encrypted_full"] {
        let data = std::fs::read(dir.join(name)).unwrap();
        assert!(
            fuzz_support::handshake(&data),
            "{name} should complete the handshake"
        );
    }
    for name in ["v1_only", "garbage", "password_mismatch", "huge_features"] {
        let data = std::fs::read(dir.join(name)).unwrap();
        assert!(!fuzz_support::handshake(&data), "{name} should fail");
    }
}
