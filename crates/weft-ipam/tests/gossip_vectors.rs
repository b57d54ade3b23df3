//! The IPAM gob vectors produced by Go (copies of `shared/vectors/gob/ipam_*`): each decodes
//! into our types with the values of the manifest, and re-encodes byte for byte.

use std::collections::BTreeMap;
use std::path::PathBuf;

use weft_gob::{Encoder, Field, Type, TypeRegistry};
use weft_ipam::address::{from_ipv4, Range};
use weft_ipam::gossip::{self, GoPackages, GossipState, Unicast};
use weft_ipam::paxos::{AcceptedValue, NodeClaims, NodeId, ProposalId};
use weft_ipam::ring::{Entry, PeerName, Ring};
use weft_ipam::OwnedData;

fn vector(file: &str) -> Vec<u8> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors")).join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn p(n: u64) -> PeerName {
    PeerName::new(n).unwrap()
}

const P1: u64 = 0x0a1b_2c3d_4e5f;
const P2: u64 = 0x02aa_bbcc_ddee;
const P3: u64 = 0x7e00_0000_0001;

/// A registry numbering types as the Go process that wrote the vectors did: it had met
/// `map[string]string`, `peerSummary` and `[]connectionSummary` (ids 65-68) before the IPAM
/// types, then met them in manifest order.
fn go_registry() -> TypeRegistry {
    let reg = TypeRegistry::new();
    reg.id_of(&Type::map(Type::String, Type::String)).unwrap();
    reg.id_of(&Type::structure(
        "peerSummary",
        vec![
            Field::new("NameByte", Type::Bytes),
            Field::new("NickName", Type::String),
            Field::new("UID", Type::Uint),
            Field::new("Version", Type::Uint),
            Field::new("ShortID", Type::Uint),
            Field::new("HasShortID", Type::Bool),
        ],
    ))
    .unwrap();
    reg.id_of(&Type::slice(Type::structure(
        "connectionSummary",
        vec![
            Field::new("NameByte", Type::Bytes),
            Field::new("RemoteTCPAddr", Type::String),
            Field::new("Outbound", Type::Bool),
            Field::new("Established", Type::Bool),
        ],
    )))
    .unwrap();
    assert_eq!(
        reg.id_of(&GossipState::gob_type(GoPackages::MAIN)).unwrap(),
        69
    );
    assert_eq!(reg.id_of(&gossip::range_type()).unwrap(), 81);
    assert_eq!(
        reg.id_of(&gossip::owned_type(GoPackages::MAIN)).unwrap(),
        85
    );
    reg
}

fn expected_ring() -> Ring {
    let a = |s: &str| from_ipv4(s.parse().unwrap());
    Ring::from_parts(
        Range::new(a("10.32.0.0"), a("10.48.0.0")),
        p(P1),
        vec![
            Entry {
                token: a("10.32.0.0"),
                peer: p(P1),
                version: 3,
                free: 524_286,
            },
            Entry {
                token: a("10.40.0.0"),
                peer: p(P2),
                version: 1,
                free: 262_144,
            },
            Entry {
                token: a("10.44.0.0"),
                peer: p(P3),
                version: 7,
                free: 0,
            },
        ],
        vec![p(P1), p(P2), p(P3)],
    )
    .unwrap()
}

fn expected_ring_state() -> GossipState {
    GossipState {
        now: 1_700_000_000,
        nicknames: BTreeMap::from([(p(P1), "node-1".to_string())]),
        paxos: Default::default(),
        ring: Some(expected_ring()),
    }
}

fn expected_paxos_state() -> GossipState {
    let node = NodeId {
        name: p(P1),
        uid: 11,
    };
    let proposal = ProposalId {
        round: 2,
        proposer: node,
    };
    GossipState {
        now: 1_700_000_001,
        nicknames: BTreeMap::from([(p(P2), "node-2".to_string())]),
        paxos: BTreeMap::from([(
            node,
            NodeClaims {
                promise: proposal,
                accepted: proposal,
                accepted_val: AcceptedValue {
                    value: vec![p(P1), p(P2), p(P3)],
                    origin: proposal,
                },
            },
        )]),
        ring: None,
    }
}

fn expected_empty_state() -> GossipState {
    GossipState {
        now: 1_700_000_002,
        ..Default::default()
    }
}

fn expected_owned() -> BTreeMap<String, OwnedData> {
    BTreeMap::from([(
        "c0ffee".to_string(),
        OwnedData {
            is_container: true,
            cidrs: vec!["10.32.0.5/12".parse().unwrap()],
        },
    )])
}

/// Decodes `file`, checks the value and returns our encoding with Go's type numbering.
fn check(file: &str, reg: &TypeRegistry) -> Vec<u8> {
    let bytes = vector(file);
    let mut enc = Encoder::with_registry(reg.clone());
    match file {
        "ipam_gossip_ring.gob" | "ipam_gossip_paxos.gob" | "ipam_gossip_empty.gob" => {
            let expected = match file {
                "ipam_gossip_ring.gob" => expected_ring_state(),
                "ipam_gossip_paxos.gob" => expected_paxos_state(),
                _ => expected_empty_state(),
            };
            let got = GossipState::decode(&bytes).unwrap();
            assert_eq!(got, expected, "{file}");
            got.encode_to(&mut enc, GoPackages::MAIN).unwrap();
            // Our own encoding (Weave package names, own type ids) decodes to the same.
            assert_eq!(GossipState::decode(&got.encode().unwrap()).unwrap(), got);
        }
        "ipam_range.gob" => {
            let got = gossip::decode_range(&bytes).unwrap();
            assert_eq!(got, Range::new(0x0a28_0000, 0x0a2c_0000));
            gossip::encode_range_to(&mut enc, got).unwrap();
        }
        "ipam_owned.gob" => {
            let got = gossip::decode_owned(&bytes).unwrap();
            assert_eq!(got, expected_owned());
            gossip::encode_owned_to(&mut enc, &got, GoPackages::MAIN).unwrap();
            assert_eq!(
                gossip::decode_owned(&gossip::encode_owned(&got).unwrap()).unwrap(),
                got
            );
        }
        other => panic!("IPAM vector {other} has no check: add one"),
    }
    enc.into_bytes()
}

#[test]
fn every_ipam_vector_decodes_and_reencodes() {
    let manifest: serde_json::Value = serde_json::from_slice(&vector("manifest.json")).unwrap();
    let reg = go_registry();
    let mut seen = 0;
    for item in manifest.as_array().unwrap() {
        let file = item["file"].as_str().unwrap();
        if !file.starts_with("ipam_") {
            continue;
        }
        seen += 1;
        let ours = check(file, &reg);
        if item["byte_exact"].as_bool().unwrap() {
            assert_eq!(
                hex(&ours),
                hex(&vector(file)),
                "{file}: our encoding differs from Go's"
            );
        }
    }
    assert_eq!(seen, 5);
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn unicast_messages() {
    let range = gossip::decode_range(&vector("ipam_range.gob")).unwrap();
    let req = Unicast::SpaceRequest(range);
    let bytes = req.encode().unwrap();
    assert_eq!(bytes[0], 0);
    assert_eq!(gossip::decode_range(&bytes[1..]).unwrap(), range);
    assert_eq!(Unicast::decode(&bytes).unwrap(), req);

    let denied = Unicast::SpaceRequestDenied(range);
    let bytes = denied.encode().unwrap();
    assert_eq!(bytes[0], 2);
    assert_eq!(Unicast::decode(&bytes).unwrap(), denied);

    let mut msg = vec![1u8];
    msg.extend_from_slice(&vector("ipam_gossip_ring.gob"));
    let update = Unicast::decode(&msg).unwrap();
    assert_eq!(update, Unicast::RingUpdate(Box::new(expected_ring_state())));
    assert_eq!(update.kind(), 1);
    assert_eq!(Unicast::decode(&update.encode().unwrap()).unwrap(), update);

    assert!(Unicast::decode(&[])
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let err = Unicast::decode(&[7, 1, 2]).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown IPAM unicast message kind 7"),
        "{err}"
    );
    assert!(Unicast::decode(&[0]).is_err());
}

#[test]
fn persisted_ring_and_peer_name() {
    let ring = expected_ring();
    let bytes = gossip::encode_ring(&ring).unwrap();
    assert_eq!(gossip::decode_ring(&bytes).unwrap(), ring);
    // A received ring is not checked at decoding (the merge checks it and names the
    // sender), but a persisted one is.
    let mut state_bytes = vector("ipam_gossip_ring.gob");
    // Entry 0's token 10.32.0.0 (fc 0a 20 00 00) becomes 10.50.0.0, outside the range.
    let pos = state_bytes
        .windows(6)
        .position(|w| w == [0x02, 0x01, 0xfc, 0x0a, 0x20, 0x00])
        .unwrap();
    state_bytes[pos + 4] = 0x32;
    let broken = GossipState::decode(&state_bytes).unwrap().ring.unwrap();
    assert!(broken.check_invariants().is_err());
    let err = gossip::decode_ring(&gossip::encode_ring(&broken).unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("persisted IPAM ring is invalid"),
        "{err}"
    );

    let name = p(P1);
    let bytes = gossip::encode_peer_name(name).unwrap();
    assert_eq!(gossip::decode_peer_name(&bytes).unwrap(), name);
    // A 64-bit value is not a peer name.
    let mut enc = Encoder::new();
    enc.encode(&u64::MAX).unwrap();
    let err = gossip::decode_peer_name(&enc.into_bytes()).unwrap_err();
    assert!(err.to_string().contains("48 bits"), "{err}");
}

#[test]
fn wrong_shapes_are_errors() {
    // A range where a gossip state is expected, and the reverse.
    assert!(GossipState::decode(&vector("ipam_range.gob")).is_err());
    assert!(gossip::decode_range(&vector("ipam_gossip_ring.gob")).is_err());
    assert!(gossip::decode_owned(&vector("ipam_range.gob")).is_err());
    // Truncated.
    let b = vector("ipam_gossip_paxos.gob");
    for cut in [1, 10, 100, b.len() - 1] {
        assert!(GossipState::decode(&b[..cut]).is_err());
    }
    // Two values where one is expected.
    let mut two = vector("ipam_range.gob");
    two.extend_from_slice(&vector("ipam_range.gob"));
    assert!(gossip::decode_range(&two).is_err());
}
