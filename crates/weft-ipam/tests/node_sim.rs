//! Clusters of `NodeIpam` instances, each with a real redb store in its own temp dir, over a
//! simulated network carrying the exact bytes of their `NodeAction`s (broadcasts, unicasts,
//! periodic gossip). Seeded randomness, simulated time, no clock.
//!
//! Each scenario: consensus and allocations on every node; donations; one node restarted from
//! its store in the middle of a burst; one node restarted without its store (it learns the
//! ring back and never hands out an address another node holds); a stopped node removed with
//! rmpeer, its ranges taken over and used. After every phase: each address held by exactly one
//! node, inside a range that node owns, no gossip ever refused.
//!
//! For exploration, `NODE_SIM_SEED=<n>` replaces the scenario's seed and `NODE_SIM_LOSS=<p>`
//! makes the network lose messages with probability p (the scenarios pass with loss too).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use rand::Rng;
use weft_ipam::address::{from_ipv4, Range};
use weft_ipam::allocator::{AllocatorConfig, InitMode};
use weft_ipam::node::{IpamFailure, NodeAction, NodeIpam};
use weft_ipam::paxos::quorum_for_consensus;
use weft_ipam::ring::PeerName;
use weft_ipam::sim::{sim_peer, SimNet};
use weft_ipam::OpenReport;

#[derive(Debug, Clone)]
enum Msg {
    Broadcast(Vec<u8>),
    Gossip(Vec<u8>),
    Unicast(Vec<u8>),
}

struct Node {
    ipam: Option<NodeIpam>,
    db: PathBuf,
    starts: u64,
}

struct Sim {
    universe: Ipv4Net,
    quorum: u32,
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    net: SimNet<Msg>,
    /// Pending operations: op → node.
    waiting: BTreeMap<u64, usize>,
    results: BTreeMap<u64, (usize, Result<Ipv4Net, IpamFailure>)>,
    next_op: u64,
}

fn index_of(p: PeerName) -> usize {
    (p.as_u64() & 0xffff_ffff) as usize - 1
}

/// Op timeout in the simulations: generous, so that only a wedged operation fails.
const OP_TIMEOUT: Duration = Duration::from_secs(120);

impl Sim {
    fn new(n: usize, universe: &str, seed: u64) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let nodes = (0..n)
            .map(|i| Node {
                ipam: None,
                db: dir.path().join(format!("node{i}-0.db")),
                starts: 0,
            })
            .collect();
        let mut sim = Sim {
            universe: universe.parse().unwrap(),
            quorum: quorum_for_consensus(n as u32),
            _dir: dir,
            nodes,
            net: SimNet::new(
                seed,
                std::env::var("NODE_SIM_LOSS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0),
                1,
                200,
            ),
            waiting: BTreeMap::new(),
            results: BTreeMap::new(),
            next_op: 1,
        };
        for i in 0..n {
            let report = sim.start(i);
            assert_eq!(report.discarded_reason, None);
        }
        sim.update_reachability();
        sim
    }

    fn n(&self) -> usize {
        self.nodes.len()
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].ipam.is_some()
    }

    fn node(&mut self, i: usize) -> &mut NodeIpam {
        self.nodes[i].ipam.as_mut().expect("node is running")
    }

    fn peek(&self, i: usize) -> &NodeIpam {
        self.nodes[i].ipam.as_ref().expect("node is running")
    }

    fn live(&self) -> Vec<usize> {
        (0..self.n()).filter(|&i| self.alive(i)).collect()
    }

    /// Starts node `i` from its current database file.
    fn start(&mut self, i: usize) -> OpenReport {
        let node = &mut self.nodes[i];
        node.starts += 1;
        let config = AllocatorConfig {
            peer: sim_peer(i),
            // A new UID per start, as a restarted process gets.
            uid: (i as u64 + 1) * 1000 + node.starts,
            nickname: format!("node-{i}"),
            universe: self.universe,
            default_subnet: self.universe,
            init: InitMode::Consensus {
                quorum: self.quorum,
            },
        };
        let (mut ipam, report) = NodeIpam::open(&node.db, config).unwrap();
        ipam.set_op_timeout(OP_TIMEOUT);
        node.ipam = Some(ipam);
        report
    }

    /// Stops node `i` (its process dies): its pending operations die with it.
    fn stop(&mut self, i: usize) {
        self.nodes[i].ipam = None;
        self.waiting.retain(|_, n| *n != i);
    }

    /// Gives node `i` a new, empty database file (the old one is lost).
    fn lose_store(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.db = node
            .db
            .with_file_name(format!("node{i}-{}.db", node.starts));
        assert!(!node.db.exists());
    }

    fn update_reachability(&mut self) {
        let live: Vec<PeerName> = self.live().into_iter().map(sim_peer).collect();
        for i in self.live() {
            let others: Vec<PeerName> =
                live.iter().copied().filter(|p| *p != sim_peer(i)).collect();
            self.node(i).set_reachable(others);
        }
    }

    fn handle(&mut self, i: usize, actions: Vec<NodeAction>) {
        for a in actions {
            match a {
                NodeAction::Broadcast(bytes) => {
                    for j in 0..self.n() {
                        if j != i {
                            self.net.send(i, j, Msg::Broadcast(bytes.clone()));
                        }
                    }
                }
                NodeAction::Send { to, bytes } => {
                    self.net.send(i, index_of(to), Msg::Unicast(bytes));
                }
                NodeAction::Completed { op_id, result } => {
                    assert_eq!(
                        self.waiting.remove(&op_id),
                        Some(i),
                        "unexpected completion"
                    );
                    assert!(self.results.insert(op_id, (i, result)).is_none());
                }
            }
        }
    }

    fn allocate(&mut self, i: usize, id: &str) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        let now = self.net.now();
        self.waiting.insert(op, i);
        let actions = self.node(i).allocate(id, None, true, op, now).unwrap();
        self.handle(i, actions);
        op
    }

    /// Runs the network for `duration` ms: ticks every second, periodic gossip every 3 s.
    fn run(&mut self, duration: u64) {
        let until = self.net.now() + duration;
        let mut t = self.net.now();
        while t < until {
            let prev = t;
            t = (t + 100).min(until);
            let crossed = |every: u64| prev / every < t / every;
            while let Some((from, to, msg)) = self.net.next_until(t) {
                if !self.alive(to) {
                    continue;
                }
                let now = self.net.now();
                let src = sim_peer(from);
                let node = self.node(to);
                let result = match msg {
                    Msg::Broadcast(bytes) => {
                        node.on_gossip_broadcast(src, &bytes, now)
                            .map(|(relay, a)| {
                                assert!(relay.is_some(), "nothing to relay");
                                a
                            })
                    }
                    Msg::Gossip(bytes) => node.on_gossip(&bytes, now),
                    Msg::Unicast(bytes) => node.on_gossip_unicast(src, &bytes, now),
                };
                let actions = result.unwrap_or_else(|e| panic!("node {to} from {from}: {e}"));
                self.handle(to, actions);
            }
            if crossed(1_000) {
                for i in self.live() {
                    let actions = self.node(i).tick(t);
                    self.handle(i, actions);
                }
            }
            if crossed(3_000) && self.n() > 1 {
                let n = self.n();
                for i in self.live() {
                    let bytes = self.node(i).gossip_state_bytes().unwrap();
                    for _ in 0..2 {
                        let j = (i + self.net.rng().random_range(1..n)) % n;
                        self.net.send(i, j, Msg::Gossip(bytes.clone()));
                    }
                }
            }
        }
    }

    /// Every operation finished successfully; every address held by exactly one live node,
    /// inside a range it owns and allocated in its space; live nodes' ranges disjoint.
    fn check(&self) {
        for (op, (i, r)) in &self.results {
            assert!(r.is_ok(), "op {op} on node {i}: {r:?}");
        }
        let mut seen: BTreeMap<Ipv4Addr, (usize, String)> = BTreeMap::new();
        for i in self.live() {
            let ipam = self.peek(i);
            for e in ipam.owned() {
                for c in &e.addrs {
                    let addr = c.addr();
                    assert!(self.universe.contains(&addr));
                    if let Some(prev) = seen.insert(addr, (i, e.id.clone())) {
                        panic!("{addr} held by node {i} ({}) and by {prev:?}", e.id);
                    }
                    assert_eq!(
                        ipam.ring().owner_of(from_ipv4(addr)),
                        Some(sim_peer(i)),
                        "node {i} holds {c} outside its ranges"
                    );
                    assert!(ipam.allocator().space().is_allocated(from_ipv4(addr)));
                }
            }
        }
        let mut owned: Vec<(Range, usize)> = self
            .live()
            .into_iter()
            .flat_map(|i| {
                self.peek(i)
                    .allocator()
                    .space()
                    .owned_ranges()
                    .iter()
                    .map(move |r| (*r, i))
                    .collect::<Vec<_>>()
            })
            .collect();
        owned.sort();
        for w in owned.windows(2) {
            assert!(!w[0].0.overlaps(&w[1].0), "{w:?}");
        }
    }

    /// Who owns what, as node `i` sees it: (token, owner) pairs.
    fn ownership(&self, i: usize) -> Vec<(u32, PeerName)> {
        self.peek(i)
            .ring()
            .entries()
            .iter()
            .map(|e| (e.token, e.peer))
            .collect()
    }

    fn assert_converged(&self) {
        let live = self.live();
        let reference = self.ownership(live[0]);
        assert!(!reference.is_empty());
        for &i in &live[1..] {
            assert_eq!(
                self.ownership(i),
                reference,
                "node {i} disagrees with node {}",
                live[0]
            );
        }
    }

    fn assert_done(&self) {
        assert!(self.waiting.is_empty(), "still waiting: {:?}", self.waiting);
    }
}

struct Scenario {
    nodes: usize,
    universe: &'static str,
    seed: u64,
    /// Nodes that allocate far more than their share (donations).
    heavy: &'static [usize],
    heavy_count: usize,
    restart_with_store: usize,
    restart_without_store: usize,
    removed: usize,
    remover: usize,
}

fn run_scenario(s: &Scenario) {
    let seed = std::env::var("NODE_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(s.seed);
    let mut sim = Sim::new(s.nodes, s.universe, seed);

    // 1. Consensus (started lazily by the first allocations), then allocations everywhere.
    for i in 0..s.nodes {
        for k in 0..3 {
            sim.allocate(i, &format!("a{i}-{k}"));
        }
    }
    assert!(!sim.peek(0).ring_ready());
    sim.run(40_000);
    sim.assert_done();
    sim.check();
    sim.assert_converged();
    for i in 0..s.nodes {
        assert_eq!(sim.peek(i).status(sim.net.now()).status, "ready");
        // The consensus value: the peers its proposer knew, at least a quorum.
        assert_eq!(sim.peek(i).ring().seeds(), sim.peek(0).ring().seeds());
        assert!(sim.peek(i).ring().seeds().len() >= sim.quorum as usize);
    }

    // 2. A burst with donations; one node restarts from its store in the middle of it.
    for &i in s.heavy {
        for k in 0..s.heavy_count {
            sim.allocate(i, &format!("h{i}-{k}"));
        }
    }
    for i in 0..s.nodes {
        for k in 0..2 {
            sim.allocate(i, &format!("b{i}-{k}"));
        }
    }
    // Kill it right away: part of the burst is acknowledged, the rest waits for the space
    // requests now on the wire.
    let r = s.restart_with_store;
    let owned_before = sim.peek(r).owned();
    let ranges_before = sim.peek(r).ring().owned_ranges(sim_peer(r));
    let allocated_before = sim.peek(r).num_allocated();
    assert!(allocated_before > 0);
    let lost = sim.waiting.values().filter(|&&n| n == r).count();
    assert!(lost > 0, "node {r} is not in the middle of a burst");
    sim.stop(r);
    sim.update_reachability();
    sim.run(500);
    let report = sim.start(r);
    sim.update_reachability();
    assert!(report.restored, "{report:?}");
    assert_eq!(sim.peek(r).owned(), owned_before);
    assert_eq!(sim.peek(r).ring().owned_ranges(sim_peer(r)), ranges_before);
    assert_eq!(sim.peek(r).num_allocated(), allocated_before);
    assert!(sim.peek(r).ring_ready());
    for k in 0..5 {
        sim.allocate(r, &format!("r{r}-{k}"));
    }
    sim.run(150_000);
    sim.assert_done();
    sim.check();
    for &i in s.heavy {
        if i != r {
            assert!(
                sim.peek(i).num_allocated() >= (s.heavy_count + 5) as u64,
                "node {i}: {}",
                sim.peek(i).num_allocated()
            );
        }
    }
    sim.run(30_000);
    sim.assert_converged();
    assert!(
        sim.peek(0).ring().entries().len() > s.nodes,
        "no donation happened"
    );

    // 3. A node restarts without its store: it learns the ring back from the others.
    let f = s.restart_without_store;
    let others: BTreeSet<Ipv4Addr> = sim
        .live()
        .into_iter()
        .filter(|&i| i != f)
        .flat_map(|i| sim.peek(i).owned())
        .flat_map(|e| e.addrs)
        .map(|c| c.addr())
        .collect();
    let f_ranges = sim.peek(0).ring().owned_ranges(sim_peer(f));
    sim.stop(f);
    sim.lose_store(f);
    let report = sim.start(f);
    sim.update_reachability();
    assert_eq!(
        report,
        OpenReport {
            restored: false,
            discarded_reason: None,
            owned_ids: 0
        }
    );
    assert!(!sim.peek(f).ring_ready());
    let mut f_ops = Vec::new();
    for k in 0..10 {
        f_ops.push(sim.allocate(f, &format!("f{f}-{k}")));
    }
    // Nothing can be handed out before the ring is back.
    assert!(f_ops.iter().all(|op| sim.waiting.contains_key(op)));
    sim.run(60_000);
    sim.assert_done();
    sim.check();
    // It owns again what it owned (and maybe more, received as donations for the new pods).
    for r in &f_ranges {
        for a in r.start..r.end {
            assert_eq!(sim.peek(f).ring().owner_of(a), Some(sim_peer(f)));
        }
    }
    for op in &f_ops {
        let addr = sim.results[op].1.clone().unwrap().addr();
        assert!(
            !others.contains(&addr),
            "node {f} handed out {addr}, held elsewhere"
        );
    }
    sim.assert_converged();

    // 4. A node stops for good; another takes over its ranges (rmpeer), once.
    let x = s.removed;
    let share = sim.peek(s.remover).ring().owned_ranges(sim_peer(x));
    let share_size: u64 = share.iter().map(Range::size).sum();
    assert!(share_size > 0);
    sim.stop(x);
    sim.update_reachability();
    sim.run(2_000);
    let unreachable = sim.peek(s.remover).status(sim.net.now()).unreachable_peers;
    assert_eq!(unreachable, vec![format!("{}(node-{x})", sim_peer(x))]);
    let now = sim.net.now();
    let (taken, actions) = sim
        .node(s.remover)
        .admin_takeover(sim_peer(x), now)
        .unwrap();
    assert_eq!(taken, share_size);
    sim.handle(s.remover, actions);
    sim.run(20_000);
    for i in sim.live() {
        assert!(
            !sim.peek(i).ring().contains_peer(sim_peer(x)),
            "node {i} still sees node {x}"
        );
        assert!(sim
            .peek(i)
            .status(sim.net.now())
            .unreachable_peers
            .is_empty());
    }
    for r in &share {
        assert_eq!(
            sim.peek(s.remover).ring().owner_of(r.start),
            Some(sim_peer(s.remover))
        );
    }
    sim.assert_converged();
    // The space is usable: every live node allocates more, some need the taken-over space.
    let live = sim.live();
    for &i in &live {
        for k in 0..8 {
            sim.allocate(i, &format!("z{i}-{k}"));
        }
    }
    sim.run(150_000);
    sim.assert_done();
    sim.check();
    sim.run(30_000);
    sim.assert_converged();
    for i in sim.live() {
        let st = sim.peek(i).status(sim.net.now());
        assert_eq!(st.status, "ready");
        assert!(st.pending.is_empty());
        assert!(st.store_error.is_none() && st.last_gossip_error.is_none());
    }
    // Everything the nodes hold survives a restart of all of them.
    let before: Vec<_> = sim
        .live()
        .into_iter()
        .map(|i| sim.peek(i).owned())
        .collect();
    for i in sim.live() {
        sim.stop(i);
        assert!(sim.start(i).restored);
    }
    let after: Vec<_> = sim
        .live()
        .into_iter()
        .map(|i| sim.peek(i).owned())
        .collect();
    assert_eq!(before, after);
    sim.check();
}

#[test]
fn three_nodes() {
    run_scenario(&Scenario {
        nodes: 3,
        universe: "10.32.0.0/24",
        seed: 3,
        heavy: &[1],
        heavy_count: 150,
        restart_with_store: 1,
        restart_without_store: 2,
        removed: 2,
        remover: 0,
    });
}

#[test]
fn ten_nodes() {
    run_scenario(&Scenario {
        nodes: 10,
        universe: "10.40.0.0/22",
        seed: 10,
        heavy: &[0, 4, 9],
        heavy_count: 150,
        restart_with_store: 4,
        restart_without_store: 7,
        removed: 5,
        remover: 2,
    });
}
