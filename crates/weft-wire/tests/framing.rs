//! Framing under random chunking, and the gossip payload vectors from Go.

use proptest::prelude::*;
use weft_wire::crypto::{SessionKey, TcpCrypto};
use weft_wire::framing::{FrameReader, FrameWriter, ProtocolMsg};
use weft_wire::gossip::{GossipError, GossipMsg, GossipUnicastMsg};
use weft_wire::handshake::Features;
use weft_wire::PeerName;

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("vector")
}

#[test]
fn gossip_header_vector_is_byte_exact() {
    let m = GossipMsg {
        channel: "IPallocation".into(),
        src: PeerName::new(11111822610015).unwrap(),
        msg: vec![1, 2, 3],
    };
    assert_eq!(m.encode().unwrap(), vector("gossip_header.gob"));
    assert_eq!(GossipMsg::decode(&vector("gossip_header.gob")).unwrap(), m);
    // As a full protocol message body.
    let mut body = vec![4u8];
    body.extend(vector("gossip_header.gob"));
    assert_eq!(ProtocolMsg::Gossip(m.clone()).encode().unwrap(), body);
    assert_eq!(
        ProtocolMsg::decode(&body).unwrap(),
        ProtocolMsg::Gossip(m.clone())
    );
    body[0] = 6;
    assert_eq!(
        ProtocolMsg::decode(&body).unwrap(),
        ProtocolMsg::GossipBroadcast(m)
    );
}

#[test]
fn gossip_unicast_header_vector_is_byte_exact() {
    let m = GossipUnicastMsg {
        channel: "IPallocation".into(),
        src: PeerName::new(11111822610015).unwrap(),
        dst: PeerName::new(2932318461422).unwrap(),
        msg: vec![0],
    };
    assert_eq!(m.dst.to_string(), "02:aa:bb:cc:dd:ee");
    assert_eq!(m.encode().unwrap(), vector("gossip_unicast_header.gob"));
    assert_eq!(
        GossipUnicastMsg::decode(&vector("gossip_unicast_header.gob")).unwrap(),
        m
    );
    let mut body = vec![5u8];
    body.extend(vector("gossip_unicast_header.gob"));
    assert_eq!(
        ProtocolMsg::decode(&body).unwrap(),
        ProtocolMsg::GossipUnicast(m)
    );
}

#[test]
fn gossip_payload_errors() {
    let good = vector("gossip_header.gob");
    // Truncated anywhere: an error, never a panic.
    for cut in 0..good.len() {
        assert!(GossipMsg::decode(&good[..cut]).is_err(), "cut at {cut}");
    }
    // Trailing bytes are refused.
    let mut long = good.clone();
    long.extend_from_slice(&vector("gossip_header.gob"));
    assert!(GossipMsg::decode(&long).is_err());
    // A unicast payload is not a gossip payload (uint where bytes expected).
    assert!(GossipMsg::decode(&vector("gossip_unicast_header.gob")).is_err());
    // Source names above 48 bits are refused.
    let big = GossipUnicastMsg {
        channel: "c".into(),
        src: PeerName::new(1).unwrap(),
        dst: PeerName::new(2).unwrap(),
        msg: vec![],
    };
    let mut enc = big.encode().unwrap();
    // dst is the third value: `06 00 02` → replace by a 9-byte uint.
    let pos = enc
        .windows(3)
        .rposition(|w| w == [3, 6, 0])
        .expect("dst value");
    enc.splice(
        pos..,
        [11u8, 6, 0, 0xf8, 0x01, 0, 0, 0, 0, 0, 0, 0, 3, 0x0a, 0, 0],
    );
    let e = GossipUnicastMsg::decode(&enc).unwrap_err();
    assert!(matches!(e, GossipError::PeerName { .. }), "{e}");
}

#[test]
fn features_one_vector_is_byte_exact() {
    let want = vector("features_one.gob");
    let mut map = std::collections::BTreeMap::new();
    map.insert("Name".to_string(), "0a:1b:2c:3d:4e:5f".to_string());
    let enc = weft_wire::handshake::encode_features_map(&map).unwrap();
    assert_eq!(enc, want);
    assert_eq!(
        weft_wire::handshake::decode_features_map(&want).unwrap(),
        map
    );
    // Not a valid features set on its own: the mandatory keys are missing.
    assert!(Features::decode_gob(&want).is_err());
}

#[test]
fn features_full_vector_decodes() {
    let f = Features::decode_gob(&vector("features_full.gob")).unwrap();
    assert_eq!(f.nick_name, "node-1");
    assert_eq!(f.conn_id, 42);
    let round = Features::decode_gob(&f.encode_gob().unwrap()).unwrap();
    assert_eq!(round, f);
}

fn split_points(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut pts: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    pts.push(0);
    pts.push(len);
    pts.sort_unstable();
    pts.dedup();
    pts
}

proptest! {
    #[test]
    fn frames_survive_random_chunking(
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
        encrypted in any::<bool>(),
    ) {
        let key = SessionKey::from_bytes([9; 32]);
        let (sealer, opener) = if encrypted {
            (Some(TcpCrypto::new(key.clone(), true).sealer), Some(TcpCrypto::new(key, false).opener))
        } else {
            (None, None)
        };
        let mut w = FrameWriter::new(sealer);
        let mut wire = Vec::new();
        for m in &msgs {
            w.encode_into(m, &mut wire).unwrap();
        }
        let mut r = FrameReader::new(opener);
        let mut got = Vec::new();
        let pts = split_points(wire.len(), &cuts);
        for pair in pts.windows(2) {
            r.feed(&wire[pair[0]..pair[1]]);
            while let Some(m) = r.next_message().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn gossip_round_trips(
        channel in ".{0,40}",
        src in 0u64..=PeerName::MAX,
        dst in 0u64..=PeerName::MAX,
        msg in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let g = GossipMsg { channel: channel.clone(), src: PeerName::new(src).unwrap(), msg: msg.clone() };
        let enc = g.encode().unwrap();
        prop_assert_eq!(GossipMsg::decode(&enc).unwrap(), g.clone());
        let body = ProtocolMsg::GossipBroadcast(g.clone()).encode().unwrap();
        prop_assert_eq!(ProtocolMsg::decode(&body).unwrap(), ProtocolMsg::GossipBroadcast(g));
        let u = GossipUnicastMsg {
            channel, src: PeerName::new(src).unwrap(), dst: PeerName::new(dst).unwrap(), msg,
        };
        let enc = u.encode().unwrap();
        prop_assert_eq!(GossipUnicastMsg::decode(&enc).unwrap(), u);
    }
}
