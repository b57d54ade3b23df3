//! Random bytes into every decoder: errors are fine, panics are not.

use proptest::prelude::*;
use weft_wire::crypto::parse_sleeve_header;
use weft_wire::framing::OverlaySwitchMsg;
use weft_wire::fuzz_support;
use weft_wire::handshake::{protocol_header, Features};
use weft_wire::{GossipMsg, GossipUnicastMsg, PeerName, ProtocolMsg, ShortId};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = GossipMsg::decode(&data);
        let _ = GossipUnicastMsg::decode(&data);
        let _ = ProtocolMsg::decode(&data);
        let _ = OverlaySwitchMsg::decode(&data);
        let _ = Features::decode_gob(&data);
        let _ = parse_sleeve_header(&data);
        let _ = PeerName::from_name_bytes(&data);
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = s.parse::<PeerName>();
            let _ = s.parse::<ShortId>();
        }
        fuzz_support::gossip_msg(&data);
        fuzz_support::frame(&data);
        fuzz_support::handshake(&data);
    }

    #[test]
    fn handshake_after_valid_header_never_panics(
        cfg in any::<u8>(),
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut data = vec![cfg];
        data.extend_from_slice(&protocol_header());
        data.extend_from_slice(&tail);
        fuzz_support::handshake(&data);
    }

    #[test]
    fn frames_with_plausible_lengths_never_panic(
        cfg in any::<u8>(),
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
    ) {
        let mut data = vec![cfg];
        for f in frames {
            data.extend_from_slice(&(f.len() as u32).to_be_bytes());
            data.extend_from_slice(&f);
        }
        fuzz_support::frame(&data);
    }

    #[test]
    fn peer_name_text_never_panics(s in "[0-9a-fA-F:]{0,24}") {
        if let Ok(p) = s.parse::<PeerName>() {
            prop_assert_eq!(p.to_string().parse::<PeerName>().unwrap(), p);
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus");
    let mut out = Vec::new();
    for target in ["handshake", "frame", "gossip_msg"] {
        for e in std::fs::read_dir(format!("{dir}/{target}")).unwrap() {
            out.push(std::fs::read(e.unwrap().path()).unwrap());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Valid inputs with a few random edits reach deep decoder states that
    /// purely random bytes never do.
    #[test]
    fn mutated_valid_inputs_never_panic(
        which in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let all = seeds();
        let mut data = all[which % all.len()].clone();
        for (pos, byte, kind) in edits {
            let at = if data.is_empty() { 0 } else { pos % data.len() };
            match kind {
                0 if !data.is_empty() => data[at] = byte,
                1 => data.insert(at, byte),
                _ => data.truncate(at),
            }
        }
        fuzz_support::handshake(&data);
        fuzz_support::frame(&data);
        fuzz_support::gossip_msg(&data);
        // Also without the configuration byte, as a raw payload.
        if data.len() > 1 {
            fuzz_support::gossip_msg(&data[1..]);
        }
    }
}
