//! Property tests: topology merging never panics and is idempotent, the codec
//! round-trips, and hostile bytes never panic the decoder.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use weft_mesh::peers::{ConnSummary, LocalIdentity, PeerChanges, PeerUpdate, Peers};
use weft_mesh::topology::{decode_update, encode_update};
use weft_mesh::{PeerName, ShortId};

fn arb_conn() -> impl Strategy<Value = ConnSummary> {
    ("[0-9.:]{0,21}", any::<bool>(), any::<bool>()).prop_map(|(a, o, e)| ConnSummary {
        remote_tcp_addr: a,
        outbound: o,
        established: e,
    })
}

/// Updates over a small name space so that they interact.
fn arb_update() -> impl Strategy<Value = PeerUpdate> {
    (
        1u64..=8,
        ".{0,8}",
        0u64..4,
        0u64..6,
        0u16..8,
        any::<bool>(),
        proptest::collection::vec((1u64..=9, arb_conn()), 0..5),
    )
        .prop_map(|(name, nick, uid, version, sid, has, conns)| PeerUpdate {
            name: PeerName::new(name).unwrap(),
            nickname: nick,
            uid,
            version,
            short_id: ShortId::new(sid).unwrap(),
            has_short_id: has,
            connections: conns
                .into_iter()
                .map(|(n, c)| (PeerName::new(n).unwrap(), c))
                .collect(),
        })
}

fn table(local_conns: &[u64]) -> Peers {
    let mut p = Peers::new(LocalIdentity {
        name: PeerName::new(1).unwrap(),
        nickname: "me".into(),
        uid: 1,
        short_id: ShortId::new(3).unwrap(),
    });
    for c in local_conns {
        p.add_local_connection(
            PeerName::new(*c).unwrap(),
            ConnSummary {
                remote_tcp_addr: "10.0.0.1:6783".into(),
                outbound: true,
                established: true,
            },
        );
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn merges_never_panic_and_are_idempotent(
        local in proptest::collection::vec(2u64..=9, 0..4),
        batches in proptest::collection::vec(proptest::collection::vec(arb_update(), 0..6), 1..6),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut p = table(&local);
        for batch in &batches {
            let mut ch = PeerChanges::default();
            let a = p.apply_update(batch, &mut rng, &mut ch);
            p.check_invariants().map_err(TestCaseError::fail)?;
            prop_assert!(a.improved.is_subset(&a.received));
            let snapshot: Vec<_> = p.iter().cloned().collect();
            let again = p.apply_update(batch, &mut rng, &mut ch);
            prop_assert!(again.improved.is_empty(), "second application improved {:?}", again.improved);
            prop_assert_eq!(p.iter().cloned().collect::<Vec<_>>(), snapshot);
            // Everything left is reachable or referenced.
            let reach = p.reachable();
            for peer in p.iter() {
                prop_assert!(reach.contains(&peer.name) || peer.local_ref_count() > 0);
            }
        }
    }

    #[test]
    fn merge_order_of_versions_does_not_matter(
        updates in proptest::collection::vec(arb_update(), 1..8),
        seed in any::<u64>(),
    ) {
        // Every peer is directly connected to us so nothing is collected; then
        // the table's final entries depend only on the set of updates, not on
        // their order (the merge rule is a total order on entries). As in a
        // real mesh, one (name, UID, version) always carries the same content;
        // only the short ID may be missing from some copies.
        // Real peers have non-zero UIDs (0 is what placeholders look like).
        let mut updates: Vec<PeerUpdate> = updates
            .into_iter()
            .map(|mut u| {
                u.uid += 1;
                u
            })
            .collect();
        let mut first: std::collections::BTreeMap<(PeerName, u64, u64), PeerUpdate> =
            Default::default();
        for u in &mut updates {
            let f = first.entry((u.name, u.uid, u.version)).or_insert_with(|| u.clone());
            u.nickname = f.nickname.clone();
            u.short_id = f.short_id;
            u.connections = f.connections.clone();
        }
        let all: Vec<u64> = (2..=9).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut fwd = table(&all);
        let mut rev = table(&all);
        let mut ch = PeerChanges::default();
        for u in &updates {
            fwd.apply_update(std::slice::from_ref(u), &mut rng, &mut ch);
        }
        for u in updates.iter().rev() {
            rev.apply_update(std::slice::from_ref(u), &mut rng, &mut ch);
        }
        let key = |p: &Peers| -> Vec<_> {
            p.iter()
                .filter(|x| x.name != p.our_name())
                .map(|x| (x.name, x.uid, x.version, x.has_short_id, x.connections.clone()))
                .collect()
        };
        prop_assert_eq!(key(&fwd), key(&rev));
    }

    #[test]
    fn codec_round_trips(updates in proptest::collection::vec(arb_update(), 0..6)) {
        let bytes = encode_update(&updates).unwrap();
        prop_assert_eq!(decode_update(&bytes).unwrap(), updates);
    }

    #[test]
    fn decoder_survives_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_update(&data);
        weft_mesh::fuzz_support::topology_update(&data);
    }

    #[test]
    fn decoder_survives_corrupted_updates(
        updates in proptest::collection::vec(arb_update(), 1..4),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = encode_update(&updates).unwrap();
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        weft_mesh::fuzz_support::topology_update(&bytes);
    }
}
