//! Unit tests of the ring: creation, owner operations and every merge rule.

use super::*;
use crate::address::{from_ipv4, CidrExt};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn p(n: u64) -> PeerName {
    PeerName::new(n).unwrap()
}

fn a(s: &str) -> Address {
    from_ipv4(s.parse().unwrap())
}

fn net(s: &str) -> Range {
    s.parse::<ipnet::Ipv4Net>().unwrap().addr_range().unwrap()
}

fn universe() -> Range {
    net("10.32.0.0/12")
}

fn e(token: &str, peer: u64, version: u32, free: u32) -> Entry {
    Entry {
        token: a(token),
        peer: p(peer),
        version,
        free,
    }
}

fn ring_of(peer: u64, entries: Vec<Entry>) -> Ring {
    Ring::from_parts(universe(), p(peer), entries, vec![]).unwrap()
}

fn claimed(holder: u64, peers: &[u64]) -> Ring {
    let mut r = Ring::new(universe(), p(holder)).unwrap();
    let peers: Vec<PeerName> = peers.iter().map(|&n| p(n)).collect();
    r.claim_for_peers(&peers).unwrap();
    r
}

/// An allocation predicate: true when any of `addrs` is in the range.
fn allocated(addrs: &[&str]) -> impl Fn(Range) -> bool {
    let addrs: Vec<Address> = addrs.iter().map(|s| a(s)).collect();
    move |r: Range| addrs.iter().any(|x| r.contains(*x))
}

#[test]
fn claim_for_three_peers_is_cidr_aligned() {
    let r = claimed(1, &[1, 2, 3]);
    assert_eq!(
        r.entries(),
        &[
            e("10.32.0.0", 1, 0, 1 << 19),
            e("10.40.0.0", 2, 0, 1 << 18),
            e("10.44.0.0", 3, 0, 1 << 18),
        ]
    );
    assert_eq!(r.owned_ranges(p(1)), vec![net("10.32.0.0/13")]);
    assert_eq!(r.owned_ranges(p(2)), vec![net("10.40.0.0/14")]);
    assert_eq!(r.owned_ranges(p(3)), vec![net("10.44.0.0/14")]);
    assert_eq!(r.seeds(), &[p(1), p(2), p(3)]);
    assert_eq!(r.owner_of(a("10.43.255.255")), Some(p(2)));
    assert_eq!(r.owner_of(a("10.48.0.0")), None);
    assert_eq!(r.owner_of(a("10.31.255.255")), None);
    assert_eq!(r.peers(), vec![p(1), p(2), p(3)]);
    let shares = r.shares();
    assert_eq!(shares.len(), 3);
    assert_eq!(shares[0].owned, 1 << 19);
    assert_eq!(shares[2].free, 1 << 18);
    assert_eq!(
        shares.iter().map(|s| s.owned).sum::<u64>(),
        r.universe_size()
    );
    r.check_invariants().unwrap();
}

#[test]
fn claim_subdivides_any_count() {
    for n in 1..=17u64 {
        let peers: Vec<u64> = (1..=n).collect();
        let r = claimed(1, &peers);
        r.check_invariants().unwrap();
        assert_eq!(r.entries().len() as u64, n);
        let mut total = 0;
        for &q in &peers {
            let owned = r.owned_ranges(p(q));
            assert_eq!(owned.len(), 1, "{n} peers: peer {q}");
            assert!(owned[0].to_net().is_some(), "{n} peers: not a CIDR");
            total += owned[0].size();
        }
        assert_eq!(total, 1 << 20);
    }
    // More peers than addresses: some get nothing, tokens stay unique.
    let mut r = Ring::new(Range::new(100, 102), p(1)).unwrap();
    r.claim_for_peers(&[p(1), p(2), p(3), p(4), p(5)]).unwrap();
    r.check_invariants().unwrap();
    assert_eq!(r.entries().len(), 2);
}

#[test]
fn claim_errors() {
    let mut r = claimed(1, &[1]);
    assert_eq!(r.claim_for_peers(&[p(2)]), Err(RingError::NotEmpty));
    let mut r = Ring::new(universe(), p(1)).unwrap();
    assert_eq!(r.claim_for_peers(&[]), Err(RingError::NoPeers));
    assert!(Ring::new(Range::new(5, 5), p(1)).is_err());
    assert_eq!(
        normalize_peers(&[p(3), p(1), p(3), p(2)]),
        vec![p(1), p(2), p(3)]
    );
}

#[test]
fn grant_inserts_tokens_and_bumps_versions() {
    let mut r = claimed(1, &[1, 2, 3]);
    // Upper half of our /13 to peer 4: the end token 10.40.0.0 exists already.
    r.grant_range_to_host(net("10.36.0.0/14"), p(4)).unwrap();
    assert_eq!(
        r.entries(),
        &[
            e("10.32.0.0", 1, 1, 1 << 18),
            e("10.36.0.0", 4, 0, 1 << 18),
            e("10.40.0.0", 2, 0, 1 << 18),
            e("10.44.0.0", 3, 0, 1 << 18),
        ]
    );
    // A piece in the middle of our remaining range: two new tokens.
    r.grant_range_to_host(net("10.33.0.0/16"), p(5)).unwrap();
    assert_eq!(
        r.entries()[..3],
        [
            e("10.32.0.0", 1, 2, 1 << 16),
            e("10.33.0.0", 5, 0, 1 << 16),
            e("10.34.0.0", 1, 0, 1 << 17),
        ]
    );
    r.check_invariants().unwrap();
    assert_eq!(
        r.owned_ranges(p(1)),
        vec![net("10.32.0.0/16"), net("10.34.0.0/15")]
    );
    // A range spanning two of our entries: the token inside is reassigned with a bump.
    r.grant_range_to_host(Range::new(a("10.32.128.0"), a("10.34.1.0")), p(6))
        .unwrap_err();
    let mut r2 = r.clone();
    r2.set_peer(p(5));
    r2.grant_range_to_host(net("10.33.0.0/16"), p(1)).unwrap();
    assert_eq!(r2.entries()[1], e("10.33.0.0", 1, 1, 1 << 16));
    r2.set_peer(p(1));
    r2.grant_range_to_host(Range::new(a("10.32.128.0"), a("10.34.1.0")), p(6))
        .unwrap();
    assert_eq!(
        r2.entries()[..5],
        [
            e("10.32.0.0", 1, 3, 1 << 15),
            e("10.32.128.0", 6, 0, 1 << 15),
            e("10.33.0.0", 6, 2, 1 << 16),
            e("10.34.0.0", 6, 1, 256),
            e("10.34.1.0", 1, 0, (1 << 17) - 256),
        ]
    );
    r2.check_invariants().unwrap();
}

#[test]
fn grant_errors() {
    let mut r = claimed(1, &[1, 2, 3]);
    let before = r.clone();
    assert_eq!(
        r.grant_range_to_host(net("10.40.0.0/16"), p(4)),
        Err(RingError::NotOwner {
            range: net("10.40.0.0/16"),
            addr: "10.40.0.0".parse().unwrap(),
            owner: p(2)
        })
    );
    // Crossing into peer 2's range.
    assert!(matches!(
        r.grant_range_to_host(Range::new(a("10.39.0.0"), a("10.41.0.0")), p(4)),
        Err(RingError::NotOwner { .. })
    ));
    assert_eq!(
        r.grant_range_to_host(net("10.32.0.0/16"), p(1)),
        Err(RingError::GrantToSelf(net("10.32.0.0/16")))
    );
    assert!(matches!(
        r.grant_range_to_host(net("10.48.0.0/16"), p(4)),
        Err(RingError::BadRange { .. })
    ));
    assert!(matches!(
        r.grant_range_to_host(Range::new(a("10.33.0.0"), a("10.33.0.0")), p(4)),
        Err(RingError::BadRange { .. })
    ));
    let mut empty = Ring::new(universe(), p(1)).unwrap();
    assert!(empty
        .grant_range_to_host(net("10.33.0.0/16"), p(4))
        .is_err());
    assert_eq!(r, before);
}

#[test]
fn grant_at_universe_end_and_wrapping_rings() {
    // Peer 3 owns the last range up to the universe end; the end token wraps to the start.
    let mut r = claimed(3, &[1, 2, 3]);
    r.grant_range_to_host(net("10.46.0.0/15"), p(4)).unwrap();
    assert_eq!(r.entries().len(), 4);
    assert_eq!(r.entries()[3], e("10.46.0.0", 4, 0, 1 << 17));
    // A ring whose first token is not the universe start: the last entry wraps around.
    let mut w = ring_of(1, vec![e("10.36.0.0", 2, 0, 0), e("10.40.0.0", 1, 0, 1000)]);
    assert_eq!(
        w.owned_ranges(p(1)),
        vec![net("10.32.0.0/14"), net("10.40.0.0/13")]
    );
    assert_eq!(w.owner_of(a("10.32.0.5")), Some(p(1)));
    assert_eq!(w.owner_of(a("10.36.0.5")), Some(p(2)));
    // Give away the top of the universe: a token appears at the universe start for us.
    w.grant_range_to_host(net("10.44.0.0/14"), p(3)).unwrap();
    w.check_invariants().unwrap();
    assert_eq!(w.entries()[0], e("10.32.0.0", 1, 0, 1000));
    assert_eq!(w.owner_of(a("10.47.255.255")), Some(p(3)));
    assert_eq!(w.owner_of(a("10.32.0.0")), Some(p(1)));
    // Give away everything.
    let mut all = claimed(1, &[1]);
    all.grant_range_to_host(universe(), p(2)).unwrap();
    assert_eq!(all.entries(), &[e("10.32.0.0", 2, 1, 1 << 20)]);
}

#[test]
fn transfer_bumps_by_100() {
    let mut r = claimed(1, &[1, 2, 3]);
    r.grant_range_to_host(net("10.36.0.0/14"), p(2)).unwrap();
    let ranges = r.transfer(p(2), p(1));
    assert_eq!(ranges, vec![net("10.36.0.0/14"), net("10.40.0.0/14")]);
    assert_eq!(r.entries()[1], e("10.36.0.0", 1, 100, 1 << 18));
    assert_eq!(r.entries()[2], e("10.40.0.0", 1, 100, 1 << 18));
    assert!(!r.contains_peer(p(2)));
    assert!(r.transfer(p(9), p(1)).is_empty());
}

#[test]
fn free_reports() {
    let mut r = claimed(1, &[1, 2]);
    let mut free = BTreeMap::new();
    free.insert(a("10.32.0.0"), 10u64);
    assert_eq!(r.report_free(&free), Ok(true));
    assert_eq!(r.entries()[0], e("10.32.0.0", 1, 1, 10));
    assert_eq!(r.report_free(&free), Ok(false));
    // Clamped to the span.
    free.insert(a("10.32.0.0"), 1 << 40);
    assert_eq!(r.report_free(&free), Ok(true));
    assert_eq!(r.entries()[0].free, 1 << 19);
    free.insert(a("10.40.0.0"), 5);
    assert_eq!(
        r.report_free(&free),
        Err(RingError::NotOurToken("10.40.0.0".parse().unwrap()))
    );
    let mut space = Space::new();
    space.add(net("10.32.0.0/13")).unwrap();
    space.claim(a("10.32.0.7")).unwrap();
    assert!(r.update_free(|range| space.num_free_in(range)));
    assert_eq!(r.entries()[0], e("10.32.0.0", 1, 3, (1 << 19) - 1));
    assert!(!r.update_free(|range| space.num_free_in(range)));
    assert_eq!(r.entries()[1], e("10.40.0.0", 2, 0, 1 << 19));
}

#[test]
fn update_free_sums_wrapping_ranges() {
    let mut w = ring_of(1, vec![e("10.36.0.0", 2, 0, 0), e("10.40.0.0", 1, 0, 0)]);
    assert!(w.update_free(|r| r.size()));
    assert_eq!(w.entries()[1].free, (1 << 19) + (1 << 18));
}

#[test]
fn choose_peers_for_space() {
    let mut r = ring_of(
        1,
        vec![
            e("10.32.0.0", 1, 0, 100),
            e("10.36.0.0", 2, 0, 0),
            e("10.40.0.0", 3, 0, 1000),
            e("10.44.0.0", 4, 0, 10),
        ],
    );
    let mut rng = StdRng::seed_from_u64(7);
    let got = r.choose_peers_to_ask_for_space(universe(), &mut rng);
    let mut sorted = got.clone();
    sorted.sort();
    // Not ourself, not a peer without free space.
    assert_eq!(sorted, vec![p(3), p(4)]);
    // Only peers in the subnet.
    assert_eq!(
        r.choose_peers_to_ask_for_space(net("10.44.0.0/16"), &mut rng),
        vec![p(4)]
    );
    assert!(r
        .choose_peers_to_ask_for_space(net("10.36.0.0/14"), &mut rng)
        .is_empty());
    // Weighted: the peer with 100x the free space comes first far more often.
    let firsts = (0..1000)
        .filter(|_| r.choose_peers_to_ask_for_space(universe(), &mut rng)[0] == p(3))
        .count();
    assert!(firsts > 900, "{firsts}");
    // Same seed, same order.
    let one = r.choose_peers_to_ask_for_space(universe(), &mut StdRng::seed_from_u64(1));
    let two = r.choose_peers_to_ask_for_space(universe(), &mut StdRng::seed_from_u64(1));
    assert_eq!(one, two);
    r.set_peer(p(3));
    let mut got = r.choose_peers_to_ask_for_space(universe(), &mut rng);
    got.sort();
    assert_eq!(got, vec![p(1), p(4)]);
}

#[test]
fn invariants_of_incoming_rings() {
    let mut ours = claimed(1, &[1, 2]);
    let before = ours.clone();
    let bad = |entries: Vec<Entry>| {
        Ring::from_parts_unchecked(universe().start, universe().end, p(2), entries, vec![])
    };
    let cases = [
        (
            bad(vec![e("10.40.0.0", 2, 0, 0), e("10.32.0.0", 1, 0, 0)]),
            "not sorted",
        ),
        (
            bad(vec![e("10.32.0.0", 2, 0, 0), e("10.32.0.0", 1, 0, 0)]),
            "more than once",
        ),
        (
            bad(vec![e("10.48.0.0", 2, 0, 0)]),
            "outside the allocation range",
        ),
        (
            bad(vec![e("10.31.0.0", 2, 0, 0)]),
            "outside the allocation range",
        ),
        (
            bad(vec![e("10.32.0.0", 2, 0, 1 << 19), e("10.32.0.1", 1, 0, 0)]),
            "reports 524288 free addresses but its range holds only 1",
        ),
        (
            Ring::from_parts_unchecked(10, 10, p(2), vec![], vec![]),
            "is empty",
        ),
    ];
    for (ring, text) in cases {
        let err = ours.merge(&ring, &NoAllocations).unwrap_err();
        assert_eq!(err.from_peer(), p(2));
        assert!(matches!(err, MergeError::InvalidRing { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(text), "{msg}");
        assert!(msg.contains("weft reset"), "{msg}");
        assert!(Ring::from_parts(ring.universe(), p(2), ring.entries().to_vec(), vec![]).is_err());
    }
    assert_eq!(ours, before);
}

#[test]
fn different_seeds_and_ranges() {
    let mut ours = claimed(1, &[1, 2]);
    let theirs = claimed(3, &[3, 4]);
    let err = ours.merge(&theirs, &NoAllocations).unwrap_err();
    assert!(matches!(err, MergeError::DifferentSeeds { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("IP allocation was seeded by different peers"),
        "{msg}"
    );
    assert!(msg.contains("weft reset"), "{msg}");
    assert!(msg.contains("00:00:00:00:00:03"), "{msg}");

    let mut other = Ring::new(net("10.32.0.0/16"), p(3)).unwrap();
    other.claim_for_peers(&[p(1), p(2)]).unwrap();
    let err = ours.merge(&other, &NoAllocations).unwrap_err();
    assert!(matches!(err, MergeError::DifferentRange { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("Incompatible IP allocation ranges"),
        "{msg}"
    );
    assert!(msg.contains("--ipalloc-range"), "{msg}");
    assert_eq!(err.from_peer(), p(3));
    // An empty ring with another range is refused too.
    let empty = Ring::new(net("10.32.0.0/16"), p(3)).unwrap();
    assert!(ours.merge(&empty, &NoAllocations).is_err());
    // A ring without seeds merges with a seeded one and adopts its seeds.
    let mut unseeded = ring_of(2, claimed(1, &[1, 2]).entries().to_vec());
    assert!(unseeded.seeds().is_empty());
    assert_eq!(unseeded.merge(&ours, &NoAllocations), Ok(true));
    assert_eq!(unseeded.seeds(), &[p(1), p(2)]);
}

#[test]
fn merge_into_empty_ring_adopts_everything() {
    let theirs = claimed(1, &[1, 2, 3]);
    let mut ours = Ring::new(universe(), p(4)).unwrap();
    assert_eq!(ours.merge(&theirs, &NoAllocations), Ok(true));
    assert_eq!(ours.entries(), theirs.entries());
    assert_eq!(ours.seeds(), theirs.seeds());
    assert_eq!(ours.peer(), p(4));
    assert_eq!(ours.merge(&theirs, &NoAllocations), Ok(false));
    // Same ring created independently (consensus): nothing changes.
    let mut mine = claimed(2, &[1, 2, 3]);
    assert_eq!(mine.merge(&theirs, &allocated(&["10.40.0.1"])), Ok(false));
    // An empty incoming ring changes nothing.
    let empty = Ring::new(universe(), p(5)).unwrap();
    assert_eq!(mine.merge(&empty, &NoAllocations), Ok(false));
}

#[test]
fn new_token_splitting_our_range() {
    // We (1) own 10.32/13; peer 2's ring says 10.36.0.0 is peer 3's.
    let ours0 = ring_of(
        1,
        vec![e("10.32.0.0", 1, 4, 1 << 19), e("10.40.0.0", 2, 0, 0)],
    );
    // (The sender clamped our free count to the span it sees, without a version bump.)
    let theirs = ring_of(
        2,
        vec![
            e("10.32.0.0", 1, 4, 1 << 18),
            e("10.36.0.0", 3, 0, 0),
            e("10.40.0.0", 2, 0, 0),
        ],
    );
    // Allocations in the part split off: refused.
    let mut ours = ours0.clone();
    let err = ours.merge(&theirs, &allocated(&["10.37.0.1"])).unwrap_err();
    assert_eq!(
        err,
        MergeError::SplitsOwnRange {
            from: p(2),
            token: "10.36.0.0".parse().unwrap(),
            owner: p(3)
        }
    );
    assert!(err.to_string().starts_with(
        "Peer 00:00:00:00:00:02 says 00:00:00:00:00:03 owns the IP range from 10.36.0.0, which I think I own"
    ));
    assert_eq!(ours, ours0);
    // Allocations only in the part we keep: accepted; our entry's free is clamped with a bump.
    assert_eq!(ours.merge(&theirs, &allocated(&["10.32.0.1"])), Ok(true));
    assert_eq!(ours.entries()[0], e("10.32.0.0", 1, 5, 1 << 18));
    assert_eq!(ours.entries()[1], e("10.36.0.0", 3, 0, 0));
    ours.check_invariants().unwrap();
    // A new token that names us does not take anything.
    let mut ours = ours0.clone();
    let mut t2 = theirs.clone();
    t2.entries[1].peer = p(1);
    assert_eq!(ours.merge(&t2, &allocated(&["10.37.0.1"])), Ok(true));
    // A new token before our first token splits the wrapping range of our last entry.
    let ours_w = ring_of(1, vec![e("10.36.0.0", 2, 0, 0), e("10.40.0.0", 1, 0, 0)]);
    let theirs_w = ring_of(
        2,
        vec![
            e("10.34.0.0", 2, 0, 0),
            e("10.36.0.0", 2, 0, 0),
            e("10.40.0.0", 1, 0, 0),
        ],
    );
    let mut o = ours_w.clone();
    assert!(matches!(
        o.merge(&theirs_w, &allocated(&["10.35.0.0"])),
        Err(MergeError::SplitsOwnRange { .. })
    ));
    let mut o = ours_w.clone();
    assert_eq!(
        o.merge(&theirs_w, &allocated(&["10.33.0.0", "10.41.0.0"])),
        Ok(true)
    );
}

#[test]
fn same_token_our_version_higher() {
    let mut ours = ring_of(1, vec![e("10.32.0.0", 1, 5, 10), e("10.40.0.0", 2, 3, 0)]);
    let theirs = ring_of(2, vec![e("10.32.0.0", 3, 4, 20), e("10.40.0.0", 2, 2, 5)]);
    let before = ours.clone();
    assert_eq!(ours.merge(&theirs, &allocated(&["10.32.0.1"])), Ok(false));
    assert_eq!(ours, before);
}

#[test]
fn same_version_different_content() {
    let base = vec![e("10.32.0.0", 1, 5, 10), e("10.40.0.0", 2, 3, 7)];
    // Ours, another owner with the same version, allocations: inconsistent.
    let theirs = ring_of(2, vec![e("10.32.0.0", 3, 5, 20), e("10.40.0.0", 2, 3, 7)]);
    let mut ours = ring_of(1, base.clone());
    let err = ours.merge(&theirs, &allocated(&["10.32.0.1"])).unwrap_err();
    assert_eq!(
        err,
        MergeError::InconsistentEntry {
            from: p(2),
            token: "10.32.0.0".parse().unwrap(),
            version: 5,
            owner: p(3)
        }
    );
    assert!(err.to_string().contains("Inconsistent entries"));
    // Even when ours would win on free.
    let theirs_low = ring_of(2, vec![e("10.32.0.0", 3, 5, 1), e("10.40.0.0", 2, 3, 7)]);
    assert!(matches!(
        ours.merge(&theirs_low, &allocated(&["10.32.0.1"])),
        Err(MergeError::InconsistentEntry { .. })
    ));
    // No allocations: the higher free wins.
    assert_eq!(ours.merge(&theirs_low, &NoAllocations), Ok(false));
    assert_eq!(ours.merge(&theirs, &NoAllocations), Ok(true));
    assert_eq!(ours.entries()[0], e("10.32.0.0", 3, 5, 20));
    // Not ours: the higher free wins, then the higher peer name.
    let mut obs = ring_of(9, base.clone());
    let t = ring_of(2, vec![e("10.32.0.0", 1, 5, 10), e("10.40.0.0", 2, 3, 9)]);
    assert_eq!(obs.merge(&t, &NoAllocations), Ok(true));
    assert_eq!(obs.entries()[1], e("10.40.0.0", 2, 3, 9));
    let t = ring_of(2, vec![e("10.32.0.0", 4, 5, 10), e("10.40.0.0", 2, 3, 9)]);
    assert_eq!(obs.merge(&t, &NoAllocations), Ok(true));
    assert_eq!(obs.entries()[0], e("10.32.0.0", 4, 5, 10));
    // Ours and theirs both name us, only free differs: we keep ours.
    let mut ours = ring_of(1, base.clone());
    let t = ring_of(2, vec![e("10.32.0.0", 1, 5, 99), e("10.40.0.0", 2, 3, 7)]);
    assert_eq!(ours.merge(&t, &allocated(&["10.32.0.1"])), Ok(false));
    assert_eq!(ours.entries()[0], e("10.32.0.0", 1, 5, 10));
}

#[test]
fn their_version_higher() {
    let base = vec![e("10.32.0.0", 1, 5, 10), e("10.40.0.0", 2, 3, 7)];
    // Not ours: take theirs.
    let mut ours = ring_of(1, base.clone());
    let t = ring_of(2, vec![e("10.32.0.0", 1, 5, 10), e("10.40.0.0", 4, 4, 0)]);
    assert_eq!(ours.merge(&t, &allocated(&["10.40.0.1"])), Ok(true));
    assert_eq!(ours.entries()[1], e("10.40.0.0", 4, 4, 0));
    // Ours, theirs names us: keep ours with version theirs + 1.
    let mut ours = ring_of(1, base.clone());
    let t = ring_of(2, vec![e("10.32.0.0", 1, 9, 3), e("10.40.0.0", 2, 3, 7)]);
    assert_eq!(ours.merge(&t, &NoAllocations), Ok(true));
    assert_eq!(ours.entries()[0], e("10.32.0.0", 1, 10, 10));
    // Ours, another owner, no allocations: repaired to theirs.
    let mut ours = ring_of(1, base.clone());
    let t = ring_of(2, vec![e("10.32.0.0", 3, 105, 3), e("10.40.0.0", 2, 3, 7)]);
    assert_eq!(ours.merge(&t, &allocated(&["10.40.0.1"])), Ok(true));
    assert_eq!(ours.entries()[0], e("10.32.0.0", 3, 105, 3));
    // Ours, another owner, allocations: refused.
    let mut ours = ring_of(1, base.clone());
    let err = ours.merge(&t, &allocated(&["10.39.255.255"])).unwrap_err();
    assert_eq!(
        err,
        MergeError::OwnRangeClaimed {
            from: p(2),
            token: "10.32.0.0".parse().unwrap(),
            our_version: 5,
            owner: p(3),
            their_version: 105
        }
    );
    assert!(err.to_string().starts_with(
        "Received update for IP range I own at 10.32.0.0 v5: incoming message from \
         00:00:00:00:00:02 says owner 00:00:00:00:00:03 v105"
    ));
    assert_eq!(ours.entries(), &base[..]);
    // A version that cannot be superseded.
    let t = ring_of(
        2,
        vec![e("10.32.0.0", 1, u32::MAX, 3), e("10.40.0.0", 2, 3, 7)],
    );
    assert!(matches!(
        ours.merge(&t, &NoAllocations),
        Err(MergeError::VersionExhausted { .. })
    ));
}

#[test]
fn merge_clamps_free_of_others() {
    // Peer 2's entry at a stale version with a free count from before peer 3's token existed.
    let mut obs = ring_of(
        9,
        vec![e("10.32.0.0", 1, 0, 0), e("10.40.0.0", 2, 100, 1 << 19)],
    );
    let t = ring_of(
        3,
        vec![
            e("10.32.0.0", 1, 0, 0),
            e("10.40.0.0", 2, 1, 1 << 18),
            e("10.44.0.0", 3, 0, 1 << 18),
        ],
    );
    assert_eq!(obs.merge(&t, &NoAllocations), Ok(true));
    assert_eq!(obs.entries()[1], e("10.40.0.0", 2, 100, 1 << 18));
    obs.check_invariants().unwrap();
}

#[test]
fn range_infos_and_display() {
    let r = ring_of(1, vec![e("10.36.0.0", 2, 0, 0), e("10.40.0.0", 1, 3, 9)]);
    let infos = r.range_infos();
    assert_eq!(infos.len(), 2);
    assert_eq!(
        infos[1].ranges,
        vec![net("10.40.0.0/13"), net("10.32.0.0/14")]
    );
    assert_eq!(
        infos[1].entry.to_string(),
        "10.40.0.0 -> 00:00:00:00:00:01 (v3, 9 free)"
    );
}
