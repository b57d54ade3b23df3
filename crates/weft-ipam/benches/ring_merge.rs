//! Ring merge time for rings of 10, 1,000 and 10,000 entries, and the cost of simulating the
//! initial-ring consensus for 3 and 50 peers (see `examples/paxos_rounds.rs` for the number
//! of simulated rounds and messages it takes).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use weft_ipam::address::Range;
use weft_ipam::ring::{NoAllocations, PeerName, Ring};
use weft_ipam::sim::{simulate_paxos, PaxosSimConfig};

/// 10.0.0.0/8: room for 10,000 entries.
const UNIVERSE: Range = Range {
    start: 0x0a00_0000,
    end: 0x0b00_0000,
};

fn peer(i: usize) -> PeerName {
    PeerName::new(0x0200_0000_0000 | (i as u64 + 1)).unwrap()
}

/// A ring of `n` entries (one per peer), as held by peer 0, and a copy held by peer 1 in which
/// every other peer has reported a new free count (a newer version of half the entries).
fn rings(n: usize) -> (Ring, Ring) {
    let peers: Vec<PeerName> = (0..n).map(peer).collect();
    let mut ours = Ring::new(UNIVERSE, peer(0)).unwrap();
    ours.claim_for_peers(&peers).unwrap();
    let mut theirs = ours.clone();
    for i in (1..n).step_by(2) {
        theirs.set_peer(peer(i));
        theirs.update_free(|r| r.size() / 2);
    }
    theirs.set_peer(peer(1));
    assert_eq!(theirs.entries().len(), n);
    (ours, theirs)
}

fn bench_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_merge");
    for n in [10usize, 1_000, 10_000] {
        let (ours, theirs) = rings(n);
        group.bench_with_input(BenchmarkId::new("half_newer", n), &n, |b, _| {
            b.iter_batched_ref(
                || ours.clone(),
                |r| black_box(r.merge(black_box(&theirs), &NoAllocations).unwrap()),
                BatchSize::SmallInput,
            )
        });
        let same = ours.clone();
        group.bench_with_input(BenchmarkId::new("identical", n), &n, |b, _| {
            b.iter_batched_ref(
                || ours.clone(),
                |r| black_box(r.merge(black_box(&same), &NoAllocations).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_paxos(c: &mut Criterion) {
    let mut group = c.benchmark_group("paxos_first_ring");
    group.sample_size(10);
    for n in [3usize, 50] {
        group.bench_with_input(BenchmarkId::new("simulate", n), &n, |b, &n| {
            let mut seed = 0;
            b.iter(|| {
                seed += 1;
                let out = simulate_paxos(&PaxosSimConfig::new(n, seed));
                assert!(out.all_consensus_ms.is_some() && !out.disagreement);
                black_box(out)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_merge, bench_paxos);
criterion_main!(benches);
