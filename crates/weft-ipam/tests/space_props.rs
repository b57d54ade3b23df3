//! Property tests: `Space` against a simple model (sets of addresses).

use std::collections::BTreeSet;

use proptest::prelude::*;
use weft_ipam::{Range, Space, SpaceError};

/// Size of the window of addresses the tests play in.
const WINDOW: u32 = 512;

#[derive(Debug, Clone)]
enum Op {
    Add(u32, u32),
    Allocate(u32, u32),
    Claim(u32),
    Free(u32),
    RemoveFree(u32, u32),
    Donate(u32, u32),
}

fn op() -> impl Strategy<Value = Op> {
    let off = 0..WINDOW;
    let len = 0..WINDOW / 2;
    prop_oneof![
        2 => (off.clone(), len.clone()).prop_map(|(s, l)| Op::Add(s, l)),
        6 => (off.clone(), len.clone()).prop_map(|(s, l)| Op::Allocate(s, l)),
        2 => off.clone().prop_map(Op::Claim),
        4 => off.clone().prop_map(Op::Free),
        1 => (off.clone(), len.clone()).prop_map(|(s, l)| Op::RemoveFree(s, l)),
        1 => (off, len).prop_map(|(s, l)| Op::Donate(s, l)),
    ]
}

/// The model: owned addresses and allocated addresses (a subset), as offsets from `base`.
struct Model {
    base: u32,
    owned: BTreeSet<u32>,
    allocated: BTreeSet<u32>,
}

impl Model {
    fn range(&self, s: u32, len: u32) -> Range {
        Range::new(self.base + s, self.base + (s + len).min(WINDOW))
    }

    fn is_free(&self, a: u32) -> bool {
        self.owned.contains(&a) && !self.allocated.contains(&a)
    }

    fn free_in(&self, r: Range) -> u64 {
        (r.start..r.end).filter(|&a| self.is_free(a)).count() as u64
    }

    /// Brute force: the biggest aligned block of free addresses inside `r`, lowest on ties.
    fn biggest_free_cidr(&self, r: Range) -> Option<Range> {
        for k in (0..=10u32).rev() {
            let size = 1u64 << k;
            let mut start = (r.start as u64).div_ceil(size) * size;
            while start + size <= r.end as u64 {
                if (start..start + size).all(|a| self.is_free(a as u32)) {
                    return Some(Range::new(start as u32, (start + size) as u32));
                }
                start += size;
            }
        }
        None
    }

    /// The model's sets as sorted, merged ranges.
    fn as_ranges(set: &BTreeSet<u32>) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::new();
        for &a in set {
            match out.last_mut() {
                Some(last) if last.end == a => last.end = a + 1,
                _ => out.push(Range::new(a, a + 1)),
            }
        }
        out
    }
}

fn check_consistent(space: &Space, model: &Model) -> Result<(), TestCaseError> {
    let free: BTreeSet<u32> = model.owned.difference(&model.allocated).copied().collect();
    prop_assert_eq!(
        space.owned_ranges().to_vec(),
        Model::as_ranges(&model.owned)
    );
    prop_assert_eq!(space.free_ranges().to_vec(), Model::as_ranges(&free));
    prop_assert_eq!(space.num_owned(), model.owned.len() as u64);
    prop_assert_eq!(space.num_free(), free.len() as u64);
    prop_assert_eq!(space.num_allocated(), model.allocated.len() as u64);
    Ok(())
}

fn run(base: u32, ops: Vec<Op>, probes: Vec<(u32, u32)>) -> Result<(), TestCaseError> {
    let mut space = Space::new();
    let mut model = Model {
        base,
        owned: BTreeSet::new(),
        allocated: BTreeSet::new(),
    };
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Add(s, l) => {
                let r = model.range(s, l);
                let got = space.add(r);
                if r.is_empty() {
                    prop_assert_eq!(got, Err(SpaceError::Empty(r)));
                } else if (r.start..r.end).any(|a| model.owned.contains(&a)) {
                    prop_assert_eq!(got, Err(SpaceError::Overlap(r)));
                } else {
                    prop_assert_eq!(got, Ok(()));
                    model.owned.extend(r.start..r.end);
                }
            }
            Op::Allocate(s, l) => {
                let r = model.range(s, l);
                let expect = (r.start..r.end).find(|&a| model.is_free(a));
                let got = space.allocate(r);
                prop_assert_eq!(got, expect, "lowest free in {}", r);
                if let Some(a) = got {
                    prop_assert!(model.allocated.insert(a), "address handed out twice");
                }
            }
            Op::Claim(off) => {
                let a = base + off;
                let got = space.claim(a);
                if !model.owned.contains(&a) {
                    prop_assert_eq!(got, Err(SpaceError::NotOwned(a.into())));
                } else if model.allocated.contains(&a) {
                    prop_assert_eq!(got, Err(SpaceError::AlreadyAllocated(a.into())));
                } else {
                    prop_assert_eq!(got, Ok(()));
                    model.allocated.insert(a);
                }
            }
            Op::Free(off) => {
                // Prefer freeing something allocated, so frees are not mostly errors.
                let a = match model
                    .allocated
                    .iter()
                    .nth(off as usize % (model.allocated.len() + 1))
                {
                    Some(&a) if off % 4 != 0 => a,
                    _ => base + off,
                };
                let got = space.free(a);
                if !model.owned.contains(&a) {
                    prop_assert_eq!(got, Err(SpaceError::NotOwned(a.into())));
                } else if !model.allocated.contains(&a) {
                    prop_assert_eq!(got, Err(SpaceError::NotAllocated(a.into())));
                } else {
                    prop_assert_eq!(got, Ok(()));
                    model.allocated.remove(&a);
                }
            }
            Op::RemoveFree(s, l) => {
                let r = model.range(s, l);
                let got = space.remove_free(r);
                if r.is_empty() {
                    prop_assert_eq!(got, Err(SpaceError::Empty(r)));
                } else if (r.start..r.end).all(|a| model.is_free(a)) {
                    prop_assert_eq!(got, Ok(()));
                    for a in r.start..r.end {
                        model.owned.remove(&a);
                    }
                } else {
                    prop_assert_eq!(got, Err(SpaceError::NotFree(r)));
                }
            }
            Op::Donate(s, l) => {
                let r = model.range(s, l);
                let biggest = model.biggest_free_cidr(r);
                let free_before = model.free_in(r);
                let got = space.donate(r);
                match biggest {
                    None => prop_assert_eq!(got, None),
                    Some(b) => {
                        let mut expect = b;
                        if b.size() > 1 && b.size() * 2 > free_before {
                            expect.start += (b.size() / 2) as u32;
                        }
                        prop_assert_eq!(got, Some(expect));
                        prop_assert!(expect.to_net().is_some());
                        for a in expect.start..expect.end {
                            model.owned.remove(&a);
                        }
                    }
                }
            }
        }
        check_consistent(&space, &model)?;
        let (ps, pl) = probes[step % probes.len()];
        let pr = model.range(ps, pl);
        prop_assert_eq!(space.num_free_in(pr), model.free_in(pr));
        prop_assert_eq!(space.biggest_free_cidr(pr), model.biggest_free_cidr(pr));
        let owned_in = (pr.start..pr.end)
            .filter(|a| model.owned.contains(a))
            .count() as u64;
        prop_assert_eq!(space.num_owned_in(pr), owned_in);
        prop_assert_eq!(space.num_allocated_in(pr), owned_in - model.free_in(pr));
        let a = base + ps;
        prop_assert_eq!(space.is_allocated(a), model.allocated.contains(&a));
        prop_assert_eq!(space.is_owned(a), model.owned.contains(&a));
        prop_assert_eq!(space.is_free(a), model.is_free(a));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn space_matches_model(
        base in prop_oneof![Just(0u32), Just(0x0a20_0000u32), Just(u32::MAX - WINDOW)],
        ops in prop::collection::vec(op(), 1..200),
        probes in prop::collection::vec((0..WINDOW, 0..WINDOW), 1..20),
    ) {
        run(base, ops, probes)?;
    }

    #[test]
    fn allocation_from_full_range_is_lowest_and_unique(
        frees in prop::collection::vec(0u32..300, 0..100),
    ) {
        // Fill 300 addresses, free some, allocate again: the freed ones come back lowest first.
        let mut space = Space::new();
        space.add(Range::new(1000, 1300)).unwrap();
        for expect in 1000..1300 {
            prop_assert_eq!(space.allocate(Range::new(0, u32::MAX)), Some(expect));
        }
        prop_assert_eq!(space.allocate(Range::new(0, u32::MAX)), None);
        let freed: BTreeSet<u32> = frees.iter().map(|f| 1000 + f).collect();
        for &a in &freed {
            space.free(a).unwrap();
        }
        prop_assert_eq!(space.num_free(), freed.len() as u64);
        for &a in &freed {
            prop_assert_eq!(space.allocate(Range::new(0, u32::MAX)), Some(a));
        }
        prop_assert_eq!(space.num_free(), 0);
    }

    #[test]
    fn range_cidrs_cover_exactly(start in any::<u32>(), len in any::<u32>()) {
        let r = Range::new(start, start.saturating_add(len));
        let blocks = r.cidrs();
        let mut next = r.start as u64;
        for b in &blocks {
            let br = b.network();
            prop_assert_eq!(u32::from(br) as u64, next);
            prop_assert_eq!(b.addr(), br, "blocks are networks");
            next += 1u64 << (32 - b.prefix_len());
        }
        prop_assert_eq!(next, r.end.max(r.start) as u64);
        prop_assert!(blocks.len() <= 64);
        if let Some(big) = r.biggest_cidr() {
            prop_assert!(r.contains_range(&big));
            prop_assert!(big.to_net().is_some());
            prop_assert!(blocks.iter().all(|b| (1u64 << (32 - b.prefix_len())) <= big.size()));
        } else {
            prop_assert!(r.is_empty());
        }
    }
}
