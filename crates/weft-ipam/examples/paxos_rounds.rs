//! How long the initial-ring consensus takes in simulation: for 3 and 50 peers, with and
//! without message loss, the simulated time until the first peer and until every peer knows
//! the ring's peer list, the highest proposal round used and the messages delivered.
//!
//! `cargo run --release -p weft-ipam --example paxos_rounds [seeds]`

use weft_ipam::sim::{simulate_paxos, PaxosSimConfig};

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!(
        "peers  loss  delay(ms)  first(ms) p50/max  all(ms) p50/max  rounds max  msgs-to-first p50"
    );
    for (n, loss, delay) in [(3, 0.0, 50), (3, 0.2, 300), (50, 0.0, 50), (50, 0.2, 300)] {
        let mut first = Vec::new();
        let mut all = Vec::new();
        let mut rounds = 0;
        let mut msgs = Vec::new();
        for seed in 0..seeds {
            let mut c = PaxosSimConfig::new(n, seed);
            c.loss = loss;
            c.max_delay_ms = delay;
            let out = simulate_paxos(&c);
            assert!(!out.disagreement, "safety violated: {out:?}");
            first.push(out.first_consensus_ms.expect("no consensus"));
            all.push(out.all_consensus_ms.expect("no consensus everywhere"));
            rounds = rounds.max(out.max_round);
            msgs.push(out.messages_to_first);
        }
        first.sort();
        all.sort();
        msgs.sort();
        let mid = |v: &Vec<u64>| v[v.len() / 2];
        println!(
            "{n:>5}  {loss:>4}  {delay:>9}  {:>7}/{:<7}  {:>7}/{:<7}  {rounds:>10}  {:>17}",
            mid(&first),
            first[first.len() - 1],
            mid(&all),
            all[all.len() - 1],
            mid(&msgs),
        );
    }
}
