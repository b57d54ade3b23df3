//! The gob vectors produced by Go (tests/vectors, a copy of shared/vectors/gob):
//! each decodes to its value, and each byte-exact one re-encodes identically from
//! a value built in Rust.

mod common;

use std::collections::BTreeMap;

use common::{hex, json_matches, normalize, read_vector, same, shared_vector_dir, vector_dir};
use weft_gob::{gob_struct, Decoder, Encoder, GobEncode, Type, TypeRegistry, Value};

const PEER1: u64 = 0x0a1b_2c3d_4e5f;
const PEER2: u64 = 0x02aa_bbcc_ddee;
const PEER3: u64 = 0x7e00_0000_0001;

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct PeerSummary as "peerSummary" {
        name_byte: Vec<u8> => "NameByte",
        nick_name: String => "NickName",
        uid: u64 => "UID",
        version: u64 => "Version",
        short_id: u16 => "ShortID",
        has_short_id: bool => "HasShortID",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct ConnectionSummary as "connectionSummary" {
        name_byte: Vec<u8> => "NameByte",
        remote_tcp_addr: String => "RemoteTCPAddr",
        outbound: bool => "Outbound",
        established: bool => "Established",
    }
}

// In the Go program these types were first met as map keys/elements or as pointer
// elements, which leaves them unnamed on the wire.
gob_struct! {
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
    struct NodeId as "" {
        name: u64 => "Name",
        uid: u64 => "UID",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct ProposalId as "ProposalID" {
        round: u64 => "Round",
        proposer: NodeId => "Proposer",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct AcceptedValue as "AcceptedValue" {
        value: Vec<u64> => "Value" as "Value",
        origin: ProposalId => "Origin",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct NodeClaims as "" {
        promise: ProposalId => "Promise",
        accepted: ProposalId => "Accepted",
        accepted_val: AcceptedValue => "AcceptedVal",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct Entry as "" {
        token: u32 => "Token",
        peer: u64 => "Peer",
        version: u32 => "Version",
        free: u32 => "Free",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct Ring as "Ring" {
        start: u32 => "Start",
        end: u32 => "End",
        peer: u64 => "Peer",
        entries: Vec<Entry> => "Entries" as "entries",
        seeds: Vec<u64> => "Seeds" as "[]main.PeerName",
    }
}

gob_struct! {
    /// Nil Go maps are omitted while empty ones are sent, hence the Options.
    #[derive(Debug, Clone, PartialEq, Default)]
    struct GossipState as "gossipState" {
        now: i64 => "Now",
        nicknames: Option<BTreeMap<u64, String>> => "Nicknames" as "map[main.PeerName]string",
        paxos: Option<BTreeMap<NodeId, NodeClaims>> => "Paxos" as "GossipState",
        ring: Option<Ring> => "Ring",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct Range as "Range" {
        start: u32 => "Start",
        end: u32 => "End",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct Cidr as "CIDR" {
        addr: u32 => "Addr",
        prefix_len: i64 => "PrefixLen",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct OwnedData as "" {
        is_container: bool => "IsContainer",
        cidrs: Vec<Cidr> => "Cidrs" as "[]main.CIDR",
    }
}

fn tv<T: GobEncode + ?Sized>(v: &T) -> (Type, Value) {
    (T::gob_type(), v.to_gob())
}

fn node1() -> NodeId {
    NodeId {
        name: PEER1,
        uid: 11,
    }
}

fn proposal() -> ProposalId {
    ProposalId {
        round: 2,
        proposer: node1(),
    }
}

fn gossip_ring() -> GossipState {
    GossipState {
        now: 1_700_000_000,
        nicknames: Some(BTreeMap::from([(PEER1, "node-1".to_string())])),
        paxos: None,
        ring: Some(Ring {
            start: 0x0a20_0000,
            end: 0x0a30_0000,
            peer: PEER1,
            entries: vec![
                Entry {
                    token: 0x0a20_0000,
                    peer: PEER1,
                    version: 3,
                    free: 524_286,
                },
                Entry {
                    token: 0x0a28_0000,
                    peer: PEER2,
                    version: 1,
                    free: 262_144,
                },
                Entry {
                    token: 0x0a2c_0000,
                    peer: PEER3,
                    version: 7,
                    free: 0,
                },
            ],
            seeds: vec![PEER1, PEER2, PEER3],
        }),
    }
}

fn gossip_paxos() -> GossipState {
    GossipState {
        now: 1_700_000_001,
        nicknames: Some(BTreeMap::from([(PEER2, "node-2".to_string())])),
        paxos: Some(BTreeMap::from([(
            node1(),
            NodeClaims {
                promise: proposal(),
                accepted: proposal(),
                accepted_val: AcceptedValue {
                    value: vec![PEER1, PEER2, PEER3],
                    origin: proposal(),
                },
            },
        )])),
        ring: None,
    }
}

fn gossip_empty() -> GossipState {
    GossipState {
        now: 1_700_000_002,
        ..Default::default()
    }
}

fn features_full() -> BTreeMap<String, String> {
    [
        ("ConnID", "42"),
        ("Name", "0a:1b:2c:3d:4e:5f"),
        ("NickName", "node-1"),
        ("Overlays", "fastdp sleeve"),
        ("PeerNameFlavour", "mac"),
        ("ShortID", "1234"),
        ("Trusted", "false"),
        ("UID", "9876543210"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn topology() -> (PeerSummary, Vec<ConnectionSummary>, PeerSummary) {
    (
        PeerSummary {
            name_byte: PEER1.to_be_bytes()[2..].to_vec(),
            nick_name: "node-1".into(),
            uid: 9_876_543_210,
            version: 5,
            short_id: 1234,
            has_short_id: true,
        },
        vec![ConnectionSummary {
            name_byte: PEER2.to_be_bytes()[2..].to_vec(),
            remote_tcp_addr: "192.168.77.2:6783".into(),
            outbound: true,
            established: true,
        }],
        PeerSummary {
            name_byte: PEER2.to_be_bytes()[2..].to_vec(),
            nick_name: "node-2".into(),
            uid: 1,
            version: 1,
            short_id: 0,
            has_short_id: false,
        },
    )
}

/// The values of each vector, built in Rust, with their Go types.
fn expected(file: &str) -> Vec<(Type, Value)> {
    match file {
        "uint64_small.gob" => vec![tv(&7u64)],
        "uint64_peername.gob" => vec![tv(&PEER1)],
        "uint64_max.gob" => vec![tv(&u64::MAX)],
        "int64_negative.gob" => vec![tv(&-1_234_567i64)],
        "string.gob" => vec![tv("topology")],
        "bytes.gob" => vec![tv(&vec![0u8, 1, 2, 0xff])],
        "bool_true.gob" => vec![tv(&true)],
        "features_one.gob" => vec![tv(&BTreeMap::from([(
            "Name".to_string(),
            "0a:1b:2c:3d:4e:5f".to_string(),
        )]))],
        "features_full.gob" => vec![tv(&features_full())],
        "gossip_header.gob" => vec![tv("IPallocation"), tv(&PEER1), tv(&vec![1u8, 2, 3])],
        "gossip_unicast_header.gob" => {
            vec![tv("IPallocation"), tv(&PEER1), tv(&PEER2), tv(&vec![0u8])]
        }
        "topology_two_peers.gob" => {
            let (p1, c1, p2) = topology();
            vec![
                tv(&p1),
                tv(&c1),
                tv(&p2),
                tv(&Vec::<ConnectionSummary>::new()),
            ]
        }
        "ipam_gossip_ring.gob" => vec![tv(&gossip_ring())],
        "ipam_gossip_paxos.gob" => vec![tv(&gossip_paxos())],
        "ipam_gossip_empty.gob" => vec![tv(&gossip_empty())],
        "ipam_range.gob" => vec![tv(&Range {
            start: 0x0a28_0000,
            end: 0x0a2c_0000,
        })],
        "ipam_owned.gob" => vec![tv(&BTreeMap::from([(
            "c0ffee".to_string(),
            OwnedData {
                is_container: true,
                cidrs: vec![Cidr {
                    addr: 0x0a20_0005,
                    prefix_len: 12,
                }],
            },
        )]))],
        "direct_peers.gob" => vec![tv(&vec![
            "192.168.77.2:6783".to_string(),
            "192.168.77.3".to_string(),
        ])],
        other => panic!("vector {other} has no expected value in this test; add one"),
    }
}

struct ManifestEntry {
    file: String,
    byte_exact: bool,
    values: Option<serde_json::Value>,
    go_value: String,
}

fn manifest() -> Vec<ManifestEntry> {
    let text = std::fs::read_to_string(vector_dir().join("manifest.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|e| ManifestEntry {
            file: e["file"].as_str().unwrap().to_string(),
            byte_exact: e["byte_exact"].as_bool().unwrap(),
            values: e.get("values").cloned(),
            go_value: e["go_value"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn sorted_map(v: &Value) -> Vec<(Value, Value)> {
    let mut m = v.as_map().unwrap().to_vec();
    m.sort_by_key(|(k, _)| format!("{k:?}"));
    m
}

#[test]
fn manifest_lists_every_vector_file() {
    let m = manifest();
    assert_eq!(m.len(), 18);
    let mut files: Vec<String> = std::fs::read_dir(vector_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".gob"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = m.iter().map(|e| e.file.clone()).collect();
    listed.sort();
    assert_eq!(files, listed);
}

#[test]
fn local_copy_matches_shared_vectors() {
    let shared = shared_vector_dir();
    if !shared.join("manifest.json").exists() {
        eprintln!(
            "{} not present; checking the crate's own copy only",
            shared.display()
        );
        return;
    }
    for e in std::fs::read_dir(vector_dir()).unwrap() {
        let name = e.unwrap().file_name();
        let ours = std::fs::read(vector_dir().join(&name)).unwrap();
        let theirs = std::fs::read(shared.join(&name)).unwrap();
        assert_eq!(
            ours, theirs,
            "{name:?} differs from shared/vectors/gob; re-copy it"
        );
    }
}

#[test]
fn every_vector_decodes_to_its_value() {
    for e in manifest() {
        let bytes = read_vector(&e.file);
        let decoded = weft_gob::decode_all(&bytes)
            .unwrap_or_else(|err| panic!("{}: decode failed: {err}", e.file));
        let want = expected(&e.file);
        assert_eq!(decoded.len(), want.len(), "{}: number of values", e.file);
        for (i, (got, (ty, v))) in decoded.iter().zip(&want).enumerate() {
            let want = normalize(ty, v);
            if e.byte_exact {
                assert!(
                    same(got, &want),
                    "{} value {i}:\n got {got:?}\nwant {want:?}",
                    e.file
                );
            } else {
                // Go writes map entries in random order.
                assert_eq!(sorted_map(got), sorted_map(&want), "{} value {i}", e.file);
            }
        }
    }
}

#[test]
fn every_vector_matches_the_manifest_json() {
    let mut checked = 0;
    for e in manifest() {
        let Some(json) = &e.values else { continue };
        let decoded = weft_gob::decode_all(&read_vector(&e.file)).unwrap();
        if e.go_value.starts_with("[]interface {}") {
            // Several values encoded one after the other on one stream.
            let arr = json.as_array().unwrap();
            assert_eq!(arr.len(), decoded.len(), "{}", e.file);
            for (v, j) in decoded.iter().zip(arr) {
                json_matches(v, j).unwrap_or_else(|m| panic!("{}: {m}", e.file));
            }
        } else {
            assert_eq!(decoded.len(), 1, "{}", e.file);
            json_matches(&decoded[0], json).unwrap_or_else(|m| panic!("{}: {m}", e.file));
        }
        checked += 1;
    }
    assert_eq!(checked, 15);
}

#[test]
fn byte_exact_vectors_reencode_identically() {
    // The Go program that wrote the vectors numbered types process-wide, in the
    // manifest's order; one shared registry does the same.
    let registry = TypeRegistry::new();
    let mut exact = 0;
    for e in manifest() {
        let mut enc = Encoder::with_registry(registry.clone());
        for (ty, v) in expected(&e.file) {
            enc.encode_value(&ty, &v).unwrap();
        }
        let ours = enc.into_bytes();
        let theirs = read_vector(&e.file);
        if e.byte_exact {
            assert_eq!(
                hex(&ours),
                hex(&theirs),
                "{}: encoding differs from Go's",
                e.file
            );
            exact += 1;
        } else {
            // Same entries in another order: same length, same decoded map.
            assert_eq!(ours.len(), theirs.len(), "{}", e.file);
            let a = weft_gob::decode_all(&ours).unwrap();
            let b = weft_gob::decode_all(&theirs).unwrap();
            assert_eq!(sorted_map(&a[0]), sorted_map(&b[0]));
        }
    }
    assert_eq!(exact, 17);
}

#[test]
fn vectors_decode_into_rust_types() {
    let state: GossipState = weft_gob::from_bytes(&read_vector("ipam_gossip_ring.gob")).unwrap();
    assert_eq!(state, gossip_ring());
    let state: GossipState = weft_gob::from_bytes(&read_vector("ipam_gossip_paxos.gob")).unwrap();
    assert_eq!(state, gossip_paxos());
    let state: GossipState = weft_gob::from_bytes(&read_vector("ipam_gossip_empty.gob")).unwrap();
    assert_eq!(state, gossip_empty());

    // The figures in the manifest's Go syntax agree.
    let go: String = manifest()
        .iter()
        .filter(|e| e.file.starts_with("ipam_gossip"))
        .map(|e| e.go_value.clone())
        .collect();
    for needle in [
        "Now:1700000000",
        "Now:1700000001",
        "Now:1700000002",
        "0xa1b2c3d4e5f:\"node-1\"",
        "main.NodeID{Name:0xa1b2c3d4e5f, UID:0xb}",
        "main.Value{0xa1b2c3d4e5f, 0x2aabbccddee, 0x7e0000000001}",
    ] {
        assert!(go.contains(needle), "{needle}");
    }

    let bytes = read_vector("topology_two_peers.gob");
    let mut dec = Decoder::new(&bytes);
    let (p1, c1, p2) = topology();
    assert_eq!(dec.decode::<PeerSummary>().unwrap(), p1);
    assert_eq!(dec.decode::<Vec<ConnectionSummary>>().unwrap(), c1);
    assert_eq!(dec.decode::<PeerSummary>().unwrap(), p2);
    assert_eq!(dec.decode::<Vec<ConnectionSummary>>().unwrap(), vec![]);
    assert!(dec.is_at_end());
    assert!(dec.next_value().unwrap().is_none());

    let features: std::collections::HashMap<String, String> =
        weft_gob::from_bytes(&read_vector("features_full.gob")).unwrap();
    assert_eq!(features.len(), 8);
    assert_eq!(features["Overlays"], "fastdp sleeve");

    let owned: BTreeMap<String, OwnedData> =
        weft_gob::from_bytes(&read_vector("ipam_owned.gob")).unwrap();
    assert_eq!(owned["c0ffee"].cidrs[0].prefix_len, 12);

    let peers: Vec<String> = weft_gob::from_bytes(&read_vector("direct_peers.gob")).unwrap();
    assert_eq!(peers, ["192.168.77.2:6783", "192.168.77.3"]);

    let bytes = read_vector("gossip_unicast_header.gob");
    let mut dec = Decoder::new(&bytes);
    assert_eq!(dec.decode::<String>().unwrap(), "IPallocation");
    assert_eq!(dec.decode::<u64>().unwrap(), PEER1);
    assert_eq!(dec.decode::<u64>().unwrap(), PEER2);
    assert_eq!(dec.decode::<Vec<u8>>().unwrap(), vec![0]);
    assert_eq!(
        dec.decode::<u64>().unwrap_err(),
        weft_gob::Error::EndOfStream
    );
}

#[test]
fn typed_decoding_rebuilds_go_types() {
    // next_typed gives back the wire types, names included, so re-encoding them
    // reproduces Go's bytes given the same id numbering.
    for file in [
        "features_one.gob",
        "topology_two_peers.gob",
        "direct_peers.gob",
    ] {
        let bytes = read_vector(file);
        let mut dec = Decoder::new(&bytes);
        let registry = TypeRegistry::new();
        if file == "topology_two_peers.gob" {
            // The Go process had numbered map[string]string 65 before.
            registry
                .id_of(&Type::map(Type::String, Type::String))
                .unwrap();
        }
        let mut enc = Encoder::with_registry(registry);
        while let Some((ty, v)) = dec.next_typed().unwrap() {
            enc.encode_value(&ty, &v).unwrap();
        }
        let ours = enc.into_bytes();
        if file == "direct_peers.gob" {
            // Go numbered []string 86 in its process; a fresh stream uses 65.
            assert_eq!(
                weft_gob::decode_all(&ours).unwrap(),
                weft_gob::decode_all(&bytes).unwrap()
            );
        } else {
            assert_eq!(hex(&ours), hex(&bytes), "{file}");
        }
    }
    let bytes = read_vector("ipam_gossip_ring.gob");
    let (ty, _) = Decoder::new(&bytes).next_typed().unwrap().unwrap();
    assert_eq!(ty, GossipState::gob_type());
}
