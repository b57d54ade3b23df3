//! Convergence benchmark of the mesh core on a simulated network.
//!
//! `cargo run --release -p weft-mesh --example converge [peers] [seed]`
//!
//! Builds a sparse random connected graph of `peers` meshes (default 200), lets
//! it converge, then partitions it into two halves, heals it, and restarts five
//! peers with new UIDs. For each phase it prints the simulated time to converge,
//! the wall time, and the messages and bytes exchanged (per peer).

use std::time::{Duration, Instant};

use weft_mesh::sim::{Sim, SimConfig};

fn phase(sim: &mut Sim, name: &str, limit: Duration) {
    let start = sim.now();
    let before = sim.stats();
    let wall = Instant::now();
    let done = sim.run_until(limit, Duration::from_millis(50), |s| s.converged());
    let wall = wall.elapsed();
    let st = sim.stats();
    let n = sim.len() as u64;
    let msgs = st.delivered - before.delivered;
    let bytes = st.bytes - before.bytes;
    match done {
        Some(t) => println!(
            "{name:<24} simulated {:>7.2} s   wall {:>8.1} ms   messages {:>8} ({:>5}/peer)   bytes {:>10} ({:>8}/peer)",
            t.saturating_duration_since(start).as_secs_f64(),
            wall.as_secs_f64() * 1e3,
            msgs,
            msgs / n,
            bytes,
            bytes / n,
        ),
        None => {
            println!("{name:<24} did not converge within {limit:?} of simulated time");
            std::process::exit(1);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(42);
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    for _ in 0..n {
        sim.add_node();
    }
    let edges = sim.connect_random_sparse(1);
    let cfg = SimConfig::default();
    println!(
        "{n} peers, {edges} connections (sparse random graph), latency {:?} + up to {:?}, seed {seed}",
        cfg.latency, cfg.jitter
    );
    phase(&mut sim, "converge from scratch", Duration::from_secs(300));
    let wall = Instant::now();
    sim.check_unicast_routes(false)
        .expect("loop-free unicast routes");
    sim.check_unicast_routes(true)
        .expect("loop-free unicast-all routes");
    sim.check_broadcast_tables(false)
        .expect("exact-once broadcast");
    sim.check_broadcast_tables(true)
        .expect("exact-once broadcast-all");
    println!(
        "{:<24} routes loop-free, broadcasts exactly once ({:.1} ms)",
        "check",
        wall.elapsed().as_secs_f64() * 1e3
    );
    sim.partition((0..n).map(|i| usize::from(i >= n / 2)).collect());
    phase(&mut sim, "partition into halves", Duration::from_secs(300));
    sim.heal();
    phase(&mut sim, "heal", Duration::from_secs(1800));
    for i in [0, n / 4, n / 2, 3 * n / 4, n - 1] {
        sim.restart(i);
    }
    phase(&mut sim, "restart 5 peers", Duration::from_secs(1800));
    sim.check_unicast_routes(false)
        .expect("loop-free unicast routes");
    sim.check_broadcast_tables(true)
        .expect("exact-once broadcast-all");
}
