//! Many meshes in one process over a simulated network (`weft_mesh::sim`).
//!
//! The scenarios of the mesh issue's acceptance criteria: 200 peers on a sparse
//! random graph converge with loop-free routes and exact-once broadcast trees; a
//! partition into two halves heals; restarted peers (new UIDs) are re-learnt.
//! Convergence numbers are printed (run with `--nocapture`); the timing
//! benchmark proper is `cargo run --release -p weft-mesh --example converge`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weft_mesh::gossip::{GossipContext, GossipData, GossipHandler, HandlerError, MessagesData};
use weft_mesh::sim::{node_name, Sim, SimConfig};
use weft_mesh::{Mesh, PeerName};

const CHANNEL: &str = "test-counter";

/// A gossip handler that counts what it receives and relays every broadcast.
#[derive(Default)]
struct Counter {
    broadcasts: BTreeMap<PeerName, Vec<Vec<u8>>>,
    unicasts: Vec<(PeerName, Vec<u8>)>,
}

impl GossipHandler for Counter {
    fn on_gossip_unicast(
        &mut self,
        _ctx: &mut GossipContext<'_>,
        src: PeerName,
        msg: &[u8],
    ) -> Result<(), HandlerError> {
        self.unicasts.push((src, msg.to_vec()));
        Ok(())
    }

    fn on_gossip_broadcast(
        &mut self,
        _ctx: &mut GossipContext<'_>,
        src: PeerName,
        update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError> {
        self.broadcasts
            .entry(src)
            .or_default()
            .push(update.to_vec());
        Ok(Some(MessagesData::one(update.to_vec())))
    }

    fn gossip(&mut self, _ctx: &mut GossipContext<'_>) -> Option<Box<dyn GossipData>> {
        None
    }

    fn on_gossip(
        &mut self,
        _ctx: &mut GossipContext<'_>,
        _update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError> {
        Ok(None)
    }
}

fn register_counter(_: usize, m: &mut Mesh) {
    m.register_channel(CHANNEL, Box::new(Counter::default()))
        .unwrap();
}

fn sparse(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    sim.set_setup(Box::new(register_counter));
    for _ in 0..n {
        sim.add_node();
    }
    sim.connect_random_sparse(1);
    sim
}

fn converge(sim: &mut Sim, what: &str, limit: Duration) -> Duration {
    let start = sim.now();
    let wall = Instant::now();
    let before = sim.stats();
    let t = sim
        .run_until(limit, Duration::from_millis(100), |s| s.converged())
        .unwrap_or_else(|| panic!("{what}: no convergence within {limit:?} of simulated time"));
    let st = sim.stats();
    let n = sim.len() as u64;
    let took = t.saturating_duration_since(start);
    eprintln!(
        "{what}: converged after {:.2}s simulated ({:?} wall); {} messages, {} bytes = {} bytes/peer",
        took.as_secs_f64(),
        wall.elapsed(),
        st.delivered - before.delivered,
        st.bytes - before.bytes,
        (st.bytes - before.bytes) / n,
    );
    took
}

/// Broadcasts one message from every peer on the counter channel and checks
/// that each other peer's handler sees each exactly once.
fn broadcast_from_everyone(sim: &mut Sim) {
    let n = sim.len();
    for i in 0..n {
        let payload = format!("hello from {i}").into_bytes();
        sim.mesh_mut(i)
            .gossip_broadcast(CHANNEL, MessagesData::one(payload))
            .unwrap();
    }
    sim.run_for(Duration::from_secs(2));
    for i in 0..n {
        let c: &Counter = sim.node(i).mesh.handler(CHANNEL).unwrap();
        for j in 0..n {
            let got = c.broadcasts.get(&node_name(j)).map_or(0, |v| v.len());
            let want = usize::from(i != j);
            assert_eq!(
                got, want,
                "peer {i} got {got} copies of peer {j}'s broadcast"
            );
        }
    }
}

fn clear_counters(sim: &mut Sim) {
    for i in 0..sim.len() {
        let c: &mut Counter = sim.mesh_mut(i).handler_mut(CHANNEL).unwrap();
        c.broadcasts.clear();
        c.unicasts.clear();
    }
}

fn check_all_routes(sim: &mut Sim) {
    sim.check_unicast_routes(false).unwrap();
    sim.check_unicast_routes(true).unwrap();
    sim.check_broadcast_tables(false).unwrap();
    sim.check_broadcast_tables(true).unwrap();
}

#[test]
fn two_hundred_peers_converge_with_exact_once_broadcast() {
    let mut sim = sparse(200, 42);
    converge(&mut sim, "200 peers from scratch", Duration::from_secs(120));
    check_all_routes(&mut sim);
    broadcast_from_everyone(&mut sim);

    // A unicast crosses the mesh hop by hop.
    let far = 199;
    sim.mesh_mut(0)
        .gossip_unicast(CHANNEL, node_name(far), b"ping".to_vec())
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    let c: &Counter = sim.node(far).mesh.handler(CHANNEL).unwrap();
    assert_eq!(c.unicasts, vec![(node_name(0), b"ping".to_vec())]);
}

// The partition and restart scenarios run with 100 peers in debug test builds
// to keep the suite fast; the `converge` example runs them with 200 in release.

#[test]
fn partition_into_halves_then_heal() {
    let n = 100;
    let mut sim = sparse(n, 7);
    converge(&mut sim, "before partition", Duration::from_secs(120));
    sim.partition((0..n).map(|i| usize::from(i >= n / 2)).collect());
    converge(&mut sim, "partitioned", Duration::from_secs(300));
    // Nobody keeps peers of the other half.
    let comp = sim.components();
    for i in 0..n {
        for p in sim.node(i).mesh.peers().iter() {
            let j = (p.name.as_u64() - node_name(0).as_u64()) as usize;
            assert_eq!(
                comp[i], comp[j],
                "peer {i} still knows unreachable peer {j}"
            );
        }
    }
    sim.heal();
    converge(&mut sim, "healed", Duration::from_secs(900));
    assert!(
        sim.components().iter().all(|c| *c == sim.components()[0]),
        "the mesh is whole again"
    );
    check_all_routes(&mut sim);
    clear_counters(&mut sim);
    broadcast_from_everyone(&mut sim);
}

#[test]
fn restarted_peers_with_new_uids_are_relearnt() {
    let n = 100;
    let mut sim = sparse(n, 99);
    converge(&mut sim, "before restarts", Duration::from_secs(120));
    let old: Vec<(u64, u64)> = (0..n)
        .map(|i| {
            let me = sim.node(i).mesh.peers().ourself();
            (me.uid, me.version)
        })
        .collect();
    let restarted = [0, 17, 42, 64, 99];
    for &i in &restarted {
        sim.restart(i);
    }
    converge(&mut sim, "after 5 restarts", Duration::from_secs(900));
    for &i in &restarted {
        let me = sim.node(i).mesh.peers().ourself();
        assert_ne!(me.uid, old[i].0, "peer {i} has a new UID");
        // Its new incarnation out-versioned the old one everywhere.
        for j in 0..n {
            let p = sim.node(j).mesh.peers().get(node_name(i)).unwrap();
            assert_eq!((p.uid, p.version), (me.uid, me.version));
        }
    }
    check_all_routes(&mut sim);
}

#[test]
fn runs_are_deterministic() {
    let run = || {
        let mut sim = sparse(30, 5);
        let t = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
            s.converged()
        });
        let versions: Vec<u64> = (0..30)
            .map(|i| sim.node(i).mesh.peers().ourself().version)
            .collect();
        (t, sim.stats(), versions)
    };
    let a = run();
    assert!(a.0.is_some());
    assert_eq!(a, run());
}

#[test]
fn discovery_builds_a_full_mesh() {
    let n = 20;
    let mut sim = Sim::new(SimConfig {
        seed: 3,
        peer_discovery: true,
        ..SimConfig::default()
    });
    for _ in 0..n {
        sim.add_node();
    }
    // A chain: everything else is discovered from the topology.
    for i in 1..n {
        sim.connect(i, &[i - 1]);
    }
    let full = sim.run_until(Duration::from_secs(600), Duration::from_millis(500), |s| {
        s.converged() && (0..n).all(|i| s.node(i).mesh.connections().count() == n - 1)
    });
    assert!(full.is_some(), "every peer connects to every other");
    check_all_routes(&mut sim);
}

#[test]
fn converges_despite_dial_failures_and_lost_messages() {
    let mut sim = Sim::new(SimConfig {
        seed: 11,
        dial_failure_rate: 0.3,
        message_loss_rate: 0.002,
        ..SimConfig::default()
    });
    for _ in 0..40 {
        sim.add_node();
    }
    sim.connect_random_sparse(1);
    // Losses keep breaking connections; stop them, then expect convergence.
    sim.run_for(Duration::from_secs(30));
    assert!(
        sim.stats().dials > sim.stats().connections,
        "some dials failed"
    );
    sim.set_faults(0.0, 0.0);
    converge(&mut sim, "after faults", Duration::from_secs(1200));
    check_all_routes(&mut sim);
}

#[test]
fn surrogates_relay_unknown_channels() {
    // Only even peers know the channel; odd ones relay through surrogates.
    let n = 30;
    let mut sim = Sim::new(SimConfig {
        seed: 8,
        ..SimConfig::default()
    });
    sim.set_setup(Box::new(|i, m: &mut Mesh| {
        if i % 2 == 0 {
            register_counter(i, m);
        }
    }));
    for _ in 0..n {
        sim.add_node();
    }
    sim.connect_random_sparse(1);
    converge(&mut sim, "surrogate mesh", Duration::from_secs(120));
    sim.mesh_mut(0)
        .gossip_broadcast(CHANNEL, MessagesData::one(b"x".to_vec()))
        .unwrap();
    sim.run_for(Duration::from_secs(2));
    for i in (2..n).step_by(2) {
        let c: &Counter = sim.node(i).mesh.handler(CHANNEL).unwrap();
        assert_eq!(
            c.broadcasts.get(&node_name(0)).map(Vec::len),
            Some(1),
            "peer {i}"
        );
    }
    // Odd peers hold a surrogate for the channel.
    let s: Option<&weft_mesh::SurrogateGossiper> = sim.node(1).mesh.handler(CHANNEL);
    assert!(s.is_some());
}
