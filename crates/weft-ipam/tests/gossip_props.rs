//! Robustness and round trips of the IPAM wire encodings: random and mutated bytes never make
//! a decoder panic (nor anything done with what they decode), and every value we can build
//! encodes and decodes back to itself.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use weft_ipam::address::Range;
use weft_ipam::gossip::{self, GossipState, Unicast};
use weft_ipam::paxos::{AcceptedValue, NodeClaims, NodeId, ProposalId};
use weft_ipam::ring::{PeerName, Ring};
use weft_ipam::{OwnedData, Space};

fn vector(file: &str) -> Vec<u8> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors")).join(file);
    std::fs::read(p).unwrap()
}

const VECTORS: [&str; 5] = [
    "ipam_gossip_ring.gob",
    "ipam_gossip_paxos.gob",
    "ipam_gossip_empty.gob",
    "ipam_range.gob",
    "ipam_owned.gob",
];

/// Feeds `bytes` to every decoder, and exercises whatever decodes.
fn decode_everything(bytes: &[u8]) {
    if let Ok(state) = GossipState::decode(bytes) {
        if let Some(ring) = &state.ring {
            exercise(ring);
        }
        let _ = state.encode();
    }
    if let Ok(Unicast::RingUpdate(state)) = Unicast::decode(bytes) {
        if let Some(ring) = &state.ring {
            exercise(ring);
        }
    }
    let _ = gossip::decode_range(bytes);
    if let Ok(ring) = gossip::decode_ring(bytes) {
        exercise(&ring);
    }
    let _ = gossip::decode_owned(bytes);
    let _ = gossip::decode_peer_name(bytes);
}

/// Everything a peer does with a received ring must be panic-free, even for an invalid one.
fn exercise(ring: &Ring) {
    let me = PeerName::new(0x0a1b_2c3d_4e5f).unwrap();
    let mut ours = Ring::new(ring.universe().intersect(&Range::new(1, u32::MAX)), me)
        .unwrap_or_else(|_| Ring::new(Range::new(0, 16), me).unwrap());
    let _ = ours.merge(ring, &Space::new());
    let mut copy = ring.clone();
    let _ = copy.merge(&ours, &|_r: Range| true);
    let _ = ring.check_invariants();
    let _ = ring.owned_ranges(me);
    let _ = ring.owner_of(ring.universe().start);
    let _ = ring.shares();
    let _ = ring.range_infos();
    let _ = ring.peers();
    let _ = ring.choose_peers_to_ask_for_space(ring.universe(), &mut StdRng::seed_from_u64(1));
    let _ = copy.update_free(|r| r.size());
    let _ = copy.transfer(me, PeerName::new(1).unwrap());
}

fn peer() -> impl Strategy<Value = PeerName> {
    (0u64..=PeerName::MAX).prop_map(|n| PeerName::new(n).unwrap())
}

fn node_id() -> impl Strategy<Value = NodeId> {
    (peer(), any::<u64>()).prop_map(|(name, uid)| NodeId { name, uid })
}

fn proposal() -> impl Strategy<Value = ProposalId> {
    (any::<u64>(), node_id()).prop_map(|(round, proposer)| ProposalId { round, proposer })
}

fn claims() -> impl Strategy<Value = NodeClaims> {
    (
        proposal(),
        proposal(),
        proptest::collection::vec(peer(), 0..5),
        proposal(),
    )
        .prop_map(|(promise, accepted, value, origin)| NodeClaims {
            promise,
            accepted,
            accepted_val: AcceptedValue { value, origin },
        })
}

/// A valid ring: a claim, then a few grants.
fn ring() -> impl Strategy<Value = Ring> {
    (
        any::<u32>(),
        8u32..20,
        proptest::collection::vec(peer(), 1..6),
        proptest::collection::vec((any::<u32>(), 0u32..6, peer()), 0..6),
    )
        .prop_map(|(base, bits, peers, grants)| {
            let size = 1u32 << bits;
            let start = (base % (u32::MAX - size)) & !(size - 1);
            let universe = Range::new(start, start + size);
            let mut ring = Ring::new(universe, peers[0]).unwrap();
            ring.claim_for_peers(&peers).unwrap();
            for (off, len, to) in grants {
                let owned = ring.owned_ranges(peers[0]);
                if let Some(r) = owned.first() {
                    let s = r.start + off % r.size() as u32;
                    let e = s.saturating_add(1 << len).min(r.end);
                    let _ = ring.grant_range_to_host(Range::new(s, e), to);
                }
            }
            ring
        })
}

fn state() -> impl Strategy<Value = GossipState> {
    (
        any::<i64>(),
        proptest::collection::btree_map(peer(), "[a-z0-9.-]{0,20}", 0..4),
        proptest::collection::btree_map(node_id(), claims(), 0..4),
        proptest::option::of(ring()),
    )
        .prop_map(|(now, nicknames, paxos, ring)| GossipState {
            now,
            nicknames,
            paxos,
            ring,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_vectors_never_panic(
        which in 0usize..VECTORS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let mut bytes = vector(VECTORS[which]);
        for (pos, val, kind) in edits {
            let pos = pos % (bytes.len() + 1);
            match kind {
                0 if pos < bytes.len() => bytes[pos] = val,
                1 => bytes.insert(pos, val),
                2 if pos < bytes.len() => { bytes.remove(pos); }
                _ => bytes.truncate(pos),
            }
        }
        decode_everything(&bytes);
        let mut unicast = vec![1u8];
        unicast.extend_from_slice(&bytes);
        decode_everything(&unicast);
    }

    #[test]
    fn gossip_state_round_trips(s in state()) {
        let bytes = s.encode().unwrap();
        prop_assert_eq!(GossipState::decode(&bytes).unwrap(), s.clone());
        let msg = Unicast::RingUpdate(Box::new(s));
        prop_assert_eq!(Unicast::decode(&msg.encode().unwrap()).unwrap(), msg);
    }

    #[test]
    fn ring_and_range_round_trip(r in ring(), a in any::<u32>(), b in any::<u32>()) {
        prop_assert_eq!(gossip::decode_ring(&gossip::encode_ring(&r).unwrap()).unwrap(), r);
        let range = Range { start: a, end: b };
        prop_assert_eq!(gossip::decode_range(&gossip::encode_range(range).unwrap()).unwrap(), range);
        for m in [Unicast::SpaceRequest(range), Unicast::SpaceRequestDenied(range)] {
            prop_assert_eq!(Unicast::decode(&m.encode().unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn owned_round_trips(
        owned in proptest::collection::btree_map(
            "[a-f0-9:_]{1,64}",
            (any::<bool>(), proptest::collection::vec((any::<u32>(), 0u8..=32), 0..4)),
            0..5,
        )
    ) {
        let owned: BTreeMap<String, OwnedData> = owned
            .into_iter()
            .map(|(id, (is_container, cidrs))| {
                let cidrs = cidrs
                    .into_iter()
                    .map(|(a, len)| ipnet::Ipv4Net::new(a.into(), len).unwrap())
                    .collect();
                (id, OwnedData { is_container, cidrs })
            })
            .collect();
        prop_assert_eq!(gossip::decode_owned(&gossip::encode_owned(&owned).unwrap()).unwrap(), owned);
    }
}
