//! Property tests of the ring CRDT: random valid histories of owner operations (claims,
//! grants, allocations, free reports, rmpeer transfers) and gossip merges (including stale,
//! reordered copies) among a few peers.
//!
//! Checked after every step: the invariants hold, no merge fails, no address is owned by two
//! live peers in their own copies, every allocation lies in a range its peer owns. At the end:
//! all copies converge after gossip, and the merge is commutative, associative and idempotent
//! on every pair/triple of copies seen in the history.

use std::collections::BTreeSet;

use proptest::prelude::*;
use weft_ipam::address::Range;
use weft_ipam::ring::{NoAllocations, PeerName, Ring};

/// A /24, so that random operations collide often.
const UNIVERSE: Range = Range {
    start: 0x0a00_0000,
    end: 0x0a00_0100,
};

fn p(n: usize) -> PeerName {
    PeerName::new(n as u64 + 1).unwrap()
}

/// A peer that owns nothing, merging as a pure observer (the CRDT join).
fn observer() -> PeerName {
    PeerName::new(0xffff).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Merge {
        to: usize,
        from: usize,
    },
    MergeOld {
        to: usize,
        snapshot: usize,
    },
    Grant {
        donor: usize,
        asker: usize,
        pick: usize,
        offset: u32,
        size: u8,
    },
    Allocate {
        peer: usize,
        pick: usize,
        offset: u32,
    },
    Release {
        peer: usize,
        pick: usize,
    },
    ReportFree {
        peer: usize,
    },
    Transfer {
        dead: usize,
        taker: usize,
    },
}

fn op_strategy(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..n, 0..n).prop_map(|(to, from)| Op::Merge { to, from }),
        2 => (0..n, any::<usize>()).prop_map(|(to, snapshot)| Op::MergeOld { to, snapshot }),
        3 => (0..n, 0..n, any::<usize>(), any::<u32>(), 0u8..7)
            .prop_map(|(donor, asker, pick, offset, size)| Op::Grant { donor, asker, pick, offset, size }),
        3 => (0..n, any::<usize>(), any::<u32>())
            .prop_map(|(peer, pick, offset)| Op::Allocate { peer, pick, offset }),
        1 => (0..n, any::<usize>()).prop_map(|(peer, pick)| Op::Release { peer, pick }),
        1 => (0..n).prop_map(|peer| Op::ReportFree { peer }),
        1 => (0..n, 0..n).prop_map(|(dead, taker)| Op::Transfer { dead, taker }),
    ]
}

/// A scenario: `n` peers, the ones in `claimers` create the ring from the same peer list
/// (as after consensus), the others start empty.
fn scenario() -> impl Strategy<Value = (usize, Vec<bool>, Vec<Op>)> {
    (2usize..=6).prop_flat_map(|n| {
        (
            Just(n),
            proptest::collection::vec(any::<bool>(), n),
            proptest::collection::vec(op_strategy(n), 1..120),
        )
    })
}

struct World {
    rings: Vec<Ring>,
    alive: Vec<bool>,
    allocs: Vec<BTreeSet<u32>>,
    history: Vec<Ring>,
}

impl World {
    fn new(n: usize, claimers: &[bool]) -> World {
        let peers: Vec<PeerName> = (0..n).map(p).collect();
        let mut rings: Vec<Ring> = (0..n).map(|i| Ring::new(UNIVERSE, p(i)).unwrap()).collect();
        let any_claimer = claimers.iter().any(|c| *c);
        for (i, ring) in rings.iter_mut().enumerate() {
            if claimers[i] || (!any_claimer && i == 0) {
                ring.claim_for_peers(&peers).unwrap();
            }
        }
        let history = rings.clone();
        World {
            rings,
            alive: vec![true; n],
            allocs: vec![BTreeSet::new(); n],
            history,
        }
    }

    fn has_alloc(&self, peer: usize) -> impl Fn(Range) -> bool + '_ {
        move |r: Range| self.allocs[peer].range(r.start..r.end).next().is_some()
    }

    fn merge(&mut self, to: usize, incoming: &Ring) -> Result<(), TestCaseError> {
        let mut ring = self.rings[to].clone();
        let before = ring.clone();
        let changed = ring
            .merge(incoming, &self.has_alloc(to))
            .map_err(|e| TestCaseError::fail(format!("merge into {to} failed: {e}")))?;
        prop_assert_eq!(changed, ring != before, "changed flag is wrong");
        self.rings[to] = ring;
        Ok(())
    }

    fn free_report(&mut self, peer: usize) {
        let allocs = &self.allocs[peer];
        self.rings[peer].update_free(|r| r.size() - allocs.range(r.start..r.end).count() as u64);
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let n = self.rings.len();
        match *op {
            Op::Merge { to, from } => {
                if self.alive[to] && to != from {
                    let incoming = self.rings[from].clone();
                    self.merge(to, &incoming)?;
                }
            }
            Op::MergeOld { to, snapshot } => {
                if self.alive[to] {
                    let incoming = self.history[snapshot % self.history.len()].clone();
                    if incoming.peer() != p(to) {
                        self.merge(to, &incoming)?;
                    }
                }
            }
            Op::Grant {
                donor,
                asker,
                pick,
                offset,
                size,
            } => {
                if !self.alive[donor] || !self.alive[asker] || donor == asker {
                    return Ok(());
                }
                let owned = self.rings[donor].owned_ranges(p(donor));
                if owned.is_empty() {
                    return Ok(());
                }
                let r = owned[pick % owned.len()];
                let start = r.start + offset % (r.end - r.start);
                let end = (u64::from(start) + (1u64 << size)).min(u64::from(r.end)) as u32;
                let grant = Range::new(start, end);
                if self.has_alloc(donor)(grant) {
                    return Ok(());
                }
                self.rings[donor]
                    .grant_range_to_host(grant, p(asker))
                    .map_err(|e| TestCaseError::fail(format!("grant {grant}: {e}")))?;
                self.free_report(donor);
            }
            Op::Allocate { peer, pick, offset } => {
                if !self.alive[peer] {
                    return Ok(());
                }
                let owned = self.rings[peer].owned_ranges(p(peer));
                if owned.is_empty() {
                    return Ok(());
                }
                let r = owned[pick % owned.len()];
                self.allocs[peer].insert(r.start + offset % (r.end - r.start));
            }
            Op::Release { peer, pick } => {
                if let Some(&addr) = self.allocs[peer]
                    .iter()
                    .nth(pick % (self.allocs[peer].len() + 1))
                {
                    self.allocs[peer].remove(&addr);
                }
            }
            Op::ReportFree { peer } => {
                if self.alive[peer] {
                    self.free_report(peer);
                }
            }
            Op::Transfer { dead, taker } => {
                let live = self.alive.iter().filter(|a| **a).count();
                if !self.alive[dead] || !self.alive[taker] || dead == taker || live < 2 {
                    return Ok(());
                }
                // rmpeer once the dead peer's last state has reached the taker.
                let last = self.rings[dead].clone();
                self.merge(taker, &last)?;
                self.alive[dead] = false;
                self.allocs[dead].clear();
                self.rings[taker].transfer(p(dead), p(taker));
            }
        }
        let _ = n;
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for (i, r) in self.rings.iter().enumerate() {
            r.check_invariants()
                .map_err(|e| TestCaseError::fail(format!("ring {i}: {e}")))?;
        }
        // No address owned by two live peers in their own copies.
        let mut owned: Vec<(Range, usize)> = Vec::new();
        for i in (0..self.rings.len()).filter(|&i| self.alive[i]) {
            for r in self.rings[i].owned_ranges(p(i)) {
                owned.push((r, i));
            }
            for &addr in &self.allocs[i] {
                prop_assert_eq!(
                    self.rings[i].owner_of(addr),
                    Some(p(i)),
                    "peer {} lost allocated address {:#x}",
                    i,
                    addr
                );
            }
        }
        owned.sort();
        for w in owned.windows(2) {
            prop_assert!(
                !w[0].0.overlaps(&w[1].0),
                "peers {} and {} both own {} / {}",
                w[0].1,
                w[1].1,
                w[0].0,
                w[1].0
            );
        }
        Ok(())
    }
}

fn join(a: &Ring, b: &Ring) -> Ring {
    let mut o = a.clone();
    o.set_peer(observer());
    o.merge(b, &NoAllocations).expect("observer merge");
    o
}

fn same(a: &Ring, b: &Ring) -> bool {
    a.entries() == b.entries() && a.seeds() == b.seeds()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn valid_histories_converge((n, claimers, ops) in scenario(), picks in proptest::collection::vec(any::<(usize, usize, usize)>(), 20)) {
        let mut w = World::new(n, &claimers);
        for op in &ops {
            w.apply(op)?;
            w.check()?;
            for i in 0..n {
                if w.history.last() != Some(&w.rings[i]) {
                    w.history.push(w.rings[i].clone());
                }
            }
        }

        // CRDT laws on copies from the history.
        let h = &w.history;
        for &(x, y, z) in &picks {
            let (a, b, c) = (&h[x % h.len()], &h[y % h.len()], &h[z % h.len()]);
            prop_assert!(same(&join(a, b), &join(b, a)), "not commutative");
            prop_assert!(same(&join(&join(a, b), c), &join(a, &join(b, c))), "not associative");
            let aa = join(a, a);
            prop_assert!(same(&aa, a), "not idempotent");
            let mut a2 = a.clone();
            prop_assert_eq!(a2.merge(a, &NoAllocations), Ok(false));
            let ab = join(a, b);
            let mut ab2 = ab.clone();
            prop_assert_eq!(ab2.merge(b, &NoAllocations), Ok(false), "merging twice changes");
        }

        // Gossip until quiet: every live copy converges to the join of everything.
        let live: Vec<usize> = (0..n).filter(|&i| w.alive[i]).collect();
        for _ in 0..2 {
            for &to in &live {
                for from in 0..n {
                    if from != to {
                        let incoming = w.rings[from].clone();
                        w.merge(to, &incoming)?;
                    }
                }
            }
        }
        w.check()?;
        let reference = &w.rings[live[0]];
        for &i in &live {
            prop_assert!(same(&w.rings[i], reference), "copies {} and {} differ", live[0], i);
        }
        // Each address is owned by exactly one peer, the same in every copy; the live ones
        // agree about their own addresses.
        let total: u64 = reference.shares().iter().map(|s| s.owned).sum();
        if !reference.is_empty() {
            prop_assert_eq!(total, reference.universe_size());
        }
        for addr in UNIVERSE.start..UNIVERSE.end {
            let owner = reference.owner_of(addr);
            let claiming: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&i| w.rings[i].owner_of(addr) == Some(p(i)))
                .collect();
            prop_assert!(claiming.len() <= 1);
            if let Some(&i) = claiming.first() {
                prop_assert_eq!(owner, Some(p(i)));
            }
        }
    }
}
