//! Randomised simulation of 50 `NodeIpam` peers in one process, each with a real redb store in
//! its own file, over a simulated network (random delay, reordering, loss) and a simulated
//! clock, exchanging the exact bytes of their `NodeAction`s.
//!
//! Random steps: allocate, release, claim (an address the peer owns, or one another peer owns),
//! partition into two random halves and heal, restart a peer with its store, crash a peer and
//! later restart it with or without its store, or remove it (`rmpeer` on exactly one live
//! peer). Simulated time advances at every step: ticks every second, the mesh's periodic
//! gossip every 30 s, broadcasts to every reachable peer, unicasts to their destination.
//!
//! Checked after every step: no address held by two identifiers anywhere; every acknowledged
//! allocation or claim still held by its container on its peer until released (restarts with
//! the store keep them); every address a peer holds lies in a range its own ring gives it; no
//! gossip is ever refused. At quiescent points (after a heal and at the end, once messages,
//! ticks and gossip have settled): all live rings equal and valid, every address of the
//! universe owned by exactly one ring peer, and an allocation on a random peer succeeds unless
//! no live peer has a free address left.
//!
//! `NODE_RANDOM_SEEDS=1,2,3` and `NODE_RANDOM_STEPS=5000` override the seeds and the number of
//! steps per seed; a failure names its seed and step, and replays exactly with that seed.
//! `NODE_RANDOM_TRACE=1` prints progress (held addresses, unicasts by kind, counters).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_ipam::address::{from_ipv4, to_ipv4, CidrExt};
use weft_ipam::allocator::{AllocatorConfig, InitMode};
use weft_ipam::node::{IpamFailure, NodeAction, NodeIpam};
use weft_ipam::paxos::quorum_for_consensus;
use weft_ipam::ring::PeerName;
use weft_ipam::sim::{sim_peer, SimNet};

const PEERS: usize = 50;
/// 510 usable addresses for 50 peers: donations everywhere, and the universe runs out.
const UNIVERSE: &str = "10.48.0.0/23";
/// Steps alternate between filling (few releases) until an allocation fails (the universe is
/// exhausted, or its free space unreachable) and draining (mostly releases) down to this many
/// held addresses.
const DRAIN_TO: usize = 250;
/// At most this many peers are removed per run.
const MAX_REMOVALS: u64 = 6;
const DEFAULT_SEEDS: [u64; 3] = [1, 2, 3];
const DEFAULT_STEPS: usize = 300;
/// Loss of individual messages (broken connections).
const LOSS: f64 = 0.01;
const TICK_MS: u64 = 1_000;
/// The mesh's periodic gossip.
const GOSSIP_MS: u64 = 30_000;
/// Periodic gossip goes to this many random reachable peers (the peer's connections).
const GOSSIP_FANOUT: usize = 5;
const OP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
enum Body {
    Broadcast(Vec<u8>),
    Gossip(Vec<u8>),
    Unicast(Vec<u8>),
}

/// A message on a connection: lost when either end restarted since it was sent.
#[derive(Debug, Clone)]
struct Msg {
    from_epoch: u64,
    to_epoch: u64,
    body: Body,
}

#[derive(Debug, Clone)]
struct Waiting {
    node: usize,
    id: String,
    claim: Option<Ipv4Addr>,
}

struct Node {
    ipam: Option<NodeIpam>,
    db: PathBuf,
    starts: u64,
    /// Bumped at every start and stop: messages of old connections are dropped.
    epoch: u64,
    removed: bool,
    stopped_at: u64,
    /// It had a ring when it stopped (else its store holds none to restore).
    had_ring: bool,
}

#[derive(Default, Debug)]
struct Stats {
    allocs_ok: u64,
    allocs_failed: u64,
    claims_ok: u64,
    claims_failed: u64,
    releases: u64,
    partitions: u64,
    restarts_with_store: u64,
    restarts_without_store: u64,
    crashes: u64,
    removals: u64,
    quiescent_checks: u64,
    probes_ok: u64,
    probes_exhausted: u64,
    delivered: u64,
}

struct Sim {
    seed: u64,
    step: usize,
    universe: Ipv4Net,
    quorum: u32,
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    net: SimNet<Msg>,
    rng: StdRng,
    /// Partition side of each node (all 0 when healed).
    side: Vec<u8>,
    partitioned: bool,
    filling: bool,
    failed_while_filling: bool,
    last_quiesce: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Acknowledged allocations and claims: container → (node, address).
    acked: BTreeMap<String, (usize, Ipv4Addr)>,
    next_op: u64,
    next_container: u64,
    stats: Stats,
    unicasts: BTreeMap<u8, u64>,
}

fn index_of(p: PeerName) -> usize {
    (p.as_u64() & 0xffff_ffff) as usize - 1
}

macro_rules! violation {
    ($sim:expr, $($arg:tt)*) => {
        panic!(
            "seed {} step {} (t={} ms): {}",
            $sim.seed,
            $sim.step,
            $sim.net.now(),
            format!($($arg)*)
        )
    };
}

impl Sim {
    fn new(seed: u64) -> Sim {
        // Each store is a real redb file; on tmpfs when there is one (fsync is then cheap).
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let nodes = (0..PEERS)
            .map(|i| Node {
                ipam: None,
                db: dir.path().join(format!("node{i}-0.db")),
                starts: 0,
                epoch: 0,
                removed: false,
                stopped_at: 0,
                had_ring: false,
            })
            .collect();
        let mut sim = Sim {
            seed,
            step: 0,
            universe: UNIVERSE.parse().unwrap(),
            quorum: quorum_for_consensus(PEERS as u32),
            _dir: dir,
            nodes,
            net: SimNet::new(seed, LOSS, 1, 300),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_5eed),
            side: vec![0; PEERS],
            partitioned: false,
            filling: true,
            failed_while_filling: false,
            last_quiesce: 0,
            waiting: BTreeMap::new(),
            acked: BTreeMap::new(),
            next_op: 1,
            next_container: 1,
            stats: Stats::default(),
            unicasts: BTreeMap::new(),
        };
        for i in 0..PEERS {
            let report = sim.start(i);
            assert_eq!(report.discarded_reason, None);
        }
        sim.update_reachability();
        sim
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
        (0..PEERS).filter(|&i| self.alive(i)).collect()
    }

    /// Crashed, not removed: may come back.
    fn stopped(&self) -> Vec<usize> {
        (0..PEERS)
            .filter(|&i| !self.alive(i) && !self.nodes[i].removed)
            .collect()
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        a != b && self.alive(a) && self.alive(b) && self.side[a] == self.side[b]
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.rng.random_range(0..v.len())])
        }
    }

    fn start(&mut self, i: usize) -> weft_ipam::OpenReport {
        let universe = self.universe;
        let quorum = self.quorum;
        let node = &mut self.nodes[i];
        node.starts += 1;
        node.epoch += 1;
        let config = AllocatorConfig {
            peer: sim_peer(i),
            uid: (i as u64 + 1) * 100_000 + node.starts,
            nickname: format!("node-{i}"),
            universe,
            default_subnet: universe,
            init: InitMode::Consensus { quorum },
        };
        let (mut ipam, report) = NodeIpam::open(&node.db, config).unwrap();
        ipam.set_op_timeout(OP_TIMEOUT);
        node.ipam = Some(ipam);
        report
    }

    fn stop(&mut self, i: usize) {
        let now = self.net.now();
        let node = &mut self.nodes[i];
        node.had_ring = node.ipam.as_ref().is_some_and(NodeIpam::ring_ready);
        node.ipam = None;
        node.epoch += 1;
        node.stopped_at = now;
        self.waiting.retain(|_, w| w.node != i);
    }

    /// The node's containers are gone (store lost, or peer removed).
    fn forget_containers(&mut self, i: usize) {
        self.acked.retain(|_, (n, _)| *n != i);
    }

    fn lose_store(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.db = node
            .db
            .with_file_name(format!("node{i}-{}.db", node.starts));
        assert!(!node.db.exists());
    }

    fn update_reachability(&mut self) {
        for i in self.live() {
            let peers: Vec<PeerName> = (0..PEERS)
                .filter(|&j| self.connected(i, j))
                .map(sim_peer)
                .collect();
            self.node(i).set_reachable(peers);
        }
    }

    fn send(&mut self, from: usize, to: usize, body: Body) {
        if !self.connected(from, to) {
            return;
        }
        let msg = Msg {
            from_epoch: self.nodes[from].epoch,
            to_epoch: self.nodes[to].epoch,
            body,
        };
        self.net.send(from, to, msg);
    }

    fn handle(&mut self, i: usize, actions: Vec<NodeAction>) {
        for a in actions {
            match a {
                NodeAction::Broadcast(bytes) => {
                    for j in 0..PEERS {
                        if self.connected(i, j) {
                            self.send(i, j, Body::Broadcast(bytes.clone()));
                        }
                    }
                }
                NodeAction::Send { to, bytes } => {
                    self.send(i, index_of(to), Body::Unicast(bytes));
                }
                NodeAction::Completed { op_id, result } => {
                    let Some(w) = self.waiting.remove(&op_id) else {
                        violation!(self, "unexpected completion of op {op_id} on node {i}");
                    };
                    if w.node != i {
                        violation!(self, "op {op_id} of node {} completed on {i}", w.node);
                    }
                    self.completed(w, result);
                }
            }
        }
    }

    fn completed(&mut self, w: Waiting, result: Result<Ipv4Net, IpamFailure>) {
        match result {
            Ok(cidr) => {
                if let Some(want) = w.claim {
                    if cidr.addr() != want {
                        violation!(self, "claim of {want} for {} gave {cidr}", w.id);
                    }
                    self.stats.claims_ok += 1;
                } else {
                    self.stats.allocs_ok += 1;
                }
                if !self.universe.contains(&cidr.addr()) {
                    violation!(self, "{} got {cidr} outside the universe", w.id);
                }
                if let Some(prev) = self.acked.insert(w.id.clone(), (w.node, cidr.addr())) {
                    violation!(self, "{} acknowledged twice: {prev:?} and {cidr}", w.id);
                }
            }
            Err(e) => {
                if w.claim.is_some() {
                    self.stats.claims_failed += 1;
                } else {
                    self.stats.allocs_failed += 1;
                    self.failed_while_filling = true;
                }
                // A failed operation leaves nothing behind for its container.
                if self.alive(w.node) && !self.peek(w.node).lookup(&w.id).is_empty() {
                    violation!(self, "{} failed ({e}) but holds an address", w.id);
                }
            }
        }
    }

    fn new_op(&mut self, node: usize, claim: Option<Ipv4Addr>) -> (u64, String) {
        let op = self.next_op;
        self.next_op += 1;
        let id = format!("c{}", self.next_container);
        self.next_container += 1;
        self.waiting.insert(
            op,
            Waiting {
                node,
                id: id.clone(),
                claim,
            },
        );
        (op, id)
    }

    fn allocate(&mut self, i: usize) -> u64 {
        let (op, id) = self.new_op(i, None);
        let now = self.net.now();
        let actions = self.node(i).allocate(&id, None, true, op, now).unwrap();
        self.handle(i, actions);
        op
    }

    fn claim(&mut self, i: usize, addr: Ipv4Addr) -> u64 {
        let (op, id) = self.new_op(i, Some(addr));
        let now = self.net.now();
        let cidr = Ipv4Net::new(addr, self.universe.prefix_len()).unwrap();
        let actions = self.node(i).claim(&id, cidr, true, op, now).unwrap();
        self.handle(i, actions);
        op
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.connected(from, to)
            || self.nodes[from].epoch != msg.from_epoch
            || self.nodes[to].epoch != msg.to_epoch
        {
            return;
        }
        self.stats.delivered += 1;
        let now = self.net.now();
        let src = sim_peer(from);
        let node = self.node(to);
        let result = match msg.body {
            Body::Broadcast(bytes) => node.on_gossip_broadcast(src, &bytes, now).map(|(_, a)| a),
            Body::Gossip(bytes) => node.on_gossip(&bytes, now),
            Body::Unicast(bytes) => {
                *self.unicasts.entry(bytes[0]).or_default() += 1;
                self.node(to).on_gossip_unicast(src, &bytes, now)
            }
        };
        match result {
            Ok(actions) => self.handle(to, actions),
            Err(e) => violation!(self, "node {to} refused gossip from node {from}: {e}"),
        }
    }

    fn periodic_gossip(&mut self, fanout: usize) {
        for i in self.live() {
            let bytes = match self.node(i).gossip_state_bytes() {
                Ok(b) => b,
                Err(e) => violation!(self, "node {i} cannot gossip: {e}"),
            };
            let mut peers: Vec<usize> = (0..PEERS).filter(|&j| self.connected(i, j)).collect();
            for _ in 0..fanout.min(peers.len()) {
                let k = self.rng.random_range(0..peers.len());
                let j = peers.swap_remove(k);
                self.send(i, j, Body::Gossip(bytes.clone()));
            }
        }
    }

    /// Runs the network for `duration` ms: deliveries, ticks every second, periodic gossip
    /// every 30 s (to `fanout` peers each; none when 0).
    fn run(&mut self, duration: u64, fanout: usize) {
        let until = self.net.now() + duration;
        let mut t = self.net.now();
        while t < until {
            let prev = t;
            t = (t + 100).min(until);
            let crossed = |every: u64| prev / every < t / every;
            while let Some((from, to, msg)) = self.net.next_until(t) {
                self.deliver(from, to, msg);
            }
            if crossed(TICK_MS) {
                for i in self.live() {
                    let actions = self.node(i).tick(t);
                    self.handle(i, actions);
                }
            }
            if fanout > 0 && crossed(GOSSIP_MS) {
                self.periodic_gossip(fanout);
            }
        }
    }

    // --- Invariants ---------------------------------------------------------------------

    /// After every step.
    fn check(&self) {
        let mut seen: BTreeMap<Ipv4Addr, (usize, String)> = BTreeMap::new();
        for i in self.live() {
            let ipam = self.peek(i);
            for e in ipam.owned() {
                for c in &e.addrs {
                    let addr = c.addr();
                    if let Some(prev) = seen.insert(addr, (i, e.id.clone())) {
                        violation!(self, "{addr} held by node {i} ({}) and by {prev:?}", e.id);
                    }
                    if ipam.ring().owner_of(from_ipv4(addr)) != Some(sim_peer(i)) {
                        violation!(
                            self,
                            "node {i} holds {addr} ({}) outside the ranges its ring gives it",
                            e.id
                        );
                    }
                    if !ipam.allocator().space().is_allocated(from_ipv4(addr)) {
                        violation!(
                            self,
                            "node {i}: {addr} ({}) not allocated in its space",
                            e.id
                        );
                    }
                }
            }
        }
        for (id, (i, addr)) in &self.acked {
            if !self.alive(*i) {
                continue;
            }
            let held = self.peek(*i).lookup(id);
            if !held.iter().any(|c| c.addr() == *addr) {
                violation!(
                    self,
                    "acknowledged {id} → {addr} on node {i} is not held any more: {held:?}"
                );
            }
        }
    }

    fn ring_key(&self, i: usize) -> Vec<(u32, PeerName, u32)> {
        self.peek(i)
            .ring()
            .entries()
            .iter()
            .map(|e| (e.token, e.peer, e.version))
            .collect()
    }

    fn rings_equal(&self) -> bool {
        let live = self.live();
        let reference = self.ring_key(live[0]);
        live.iter().all(|&i| self.ring_key(i) == reference)
    }

    /// Delivers, ticks and gossips (to everyone) until rings agree and nothing is in flight
    /// or pending; then checks the converged state and that allocation works.
    fn quiesce(&mut self, what: &str) {
        let mut rounds = 0;
        loop {
            // A gossip round to everyone while rings differ, then time for it (and what it
            // causes) to settle; pending operations end by their deadline at the latest.
            if rounds == 0 || !self.rings_equal() {
                self.periodic_gossip(PEERS);
            }
            self.run(5_000, 0);
            rounds += 1;
            if self.rings_equal() && self.net.in_flight() == 0 && self.waiting.is_empty() {
                break;
            }
            if rounds > 40 {
                let live = self.live();
                let differ: Vec<usize> = live
                    .iter()
                    .copied()
                    .filter(|&i| self.ring_key(i) != self.ring_key(live[0]))
                    .collect();
                violation!(
                    self,
                    "no convergence {what} after {rounds} rounds: nodes {differ:?} differ from \
                     node {}; {} in flight; waiting {:?}",
                    live[0],
                    self.net.in_flight(),
                    self.waiting
                );
            }
        }
        self.check();
        self.check_converged(what);
        self.probe(what);
        self.stats.quiescent_checks += 1;
        self.last_quiesce = self.net.now();
    }

    fn check_converged(&self, what: &str) {
        let live = self.live();
        for &i in &live {
            let st = self.peek(i).status(self.net.now());
            if st.store_error.is_some() || st.last_gossip_error.is_some() || !st.pending.is_empty()
            {
                violation!(self, "{what}: node {i} status: {st:?}");
            }
        }
        let ring = self.peek(live[0]).ring();
        if let Err(e) = ring.check_invariants() {
            violation!(self, "{what}: invalid ring: {e:?}");
        }
        let entries = ring.entries();
        if entries.windows(2).any(|w| w[0].token >= w[1].token) {
            violation!(self, "{what}: ring tokens not sorted and unique");
        }
        let range = self.universe.addr_range().unwrap();
        let mut per_peer: BTreeMap<PeerName, u64> = BTreeMap::new();
        for a in range.start..range.end {
            match ring.owner_of(a) {
                Some(p) => *per_peer.entry(p).or_default() += 1,
                None => violation!(self, "{what}: {} owned by no peer", to_ipv4(a)),
            }
        }
        // Removed peers own nothing; every owner is a peer that existed.
        for p in per_peer.keys() {
            let i = index_of(*p);
            if i >= PEERS || self.nodes[i].removed {
                violation!(self, "{what}: {p} owns addresses but was removed");
            }
        }
        // Each live peer's space is exactly what the ring gives it.
        for &i in &live {
            let have: u64 = self.peek(i).num_owned();
            let want = per_peer.get(&sim_peer(i)).copied().unwrap_or(0);
            if have != want {
                violation!(
                    self,
                    "{what}: node {i} owns {have} in its space, {want} in the ring"
                );
            }
        }
    }

    /// Allocations on random peers succeed, unless no live peer has a free address.
    fn probe(&mut self, what: &str) {
        for _ in 0..3 {
            let live = self.live();
            let Some(i) = self.pick(&live) else { return };
            let op = self.allocate(i);
            let mut waited = 0;
            while self.waiting.contains_key(&op) {
                self.run(1_000, GOSSIP_FANOUT);
                waited += 1;
                if waited > 200 {
                    violation!(self, "{what}: probe allocation on node {i} never completed");
                }
            }
            let id = format!("c{}", self.next_container - 1);
            if self.acked.contains_key(&id) {
                self.stats.probes_ok += 1;
                continue;
            }
            let free: Vec<(usize, u64)> = self
                .live()
                .into_iter()
                .map(|j| (j, self.peek(j).num_free_in(None)))
                .filter(|(_, f)| *f > 0)
                .collect();
            if !free.is_empty() {
                violation!(
                    self,
                    "{what}: allocation on node {i} failed while live peers have free \
                     addresses: {free:?}"
                );
            }
            self.stats.probes_exhausted += 1;
        }
        self.check();
    }

    // --- Random steps -------------------------------------------------------------------

    fn random_step(&mut self) {
        let live = self.live();
        let stopped = self.stopped();
        let now = self.net.now();
        if self.filling && self.failed_while_filling {
            self.filling = false;
        } else if !self.filling && self.acked.len() <= DRAIN_TO {
            self.filling = true;
            self.failed_while_filling = false;
        }
        let mut roll = self.rng.random_range(0..100);
        if self.filling && (40..=59).contains(&roll) && self.rng.random_bool(0.8) {
            roll = 0;
        } else if !self.filling && roll <= 39 && self.rng.random_bool(0.8) {
            roll = 40;
        }
        match roll {
            0..=39 => {
                // A burst of allocations on one peer.
                if let Some(i) = self.pick(&live) {
                    for _ in 0..self.rng.random_range(1..=6) {
                        self.allocate(i);
                    }
                }
            }
            40..=59 => {
                // Release a random acknowledged container on a live peer.
                let ids: Vec<String> = self
                    .acked
                    .iter()
                    .filter(|(_, (n, _))| self.alive(*n))
                    .map(|(id, _)| id.clone())
                    .collect();
                if ids.is_empty() {
                    return;
                }
                let id = ids[self.rng.random_range(0..ids.len())].clone();
                let (i, addr) = self.acked[&id];
                if self.rng.random_bool(0.5) {
                    match self.node(i).release(&id, now) {
                        Ok((freed, actions)) => {
                            if freed.iter().map(|c| c.addr()).collect::<Vec<_>>() != vec![addr] {
                                violation!(self, "release of {id} freed {freed:?}, not {addr}");
                            }
                            self.handle(i, actions);
                        }
                        Err(e) => violation!(self, "release of {id} on node {i}: {e}"),
                    }
                } else {
                    match self.node(i).release_addr(&id, addr, now) {
                        Ok(actions) => self.handle(i, actions),
                        Err(e) => violation!(self, "release of {id}/{addr} on node {i}: {e}"),
                    }
                }
                self.acked.remove(&id);
                self.stats.releases += 1;
            }
            60..=71 => {
                let Some(i) = self.pick(&live) else { return };
                let host = self.universe.host_range();
                let addr = if self.rng.random_bool(0.5) {
                    // One of its own (free or not).
                    let own = self.peek(i).ring().owned_ranges(sim_peer(i));
                    let own: Vec<u32> = own
                        .iter()
                        .flat_map(|r| r.start..r.end)
                        .filter(|a| host.contains(*a))
                        .collect();
                    match self.pick(&own) {
                        Some(a) => a,
                        None => return,
                    }
                } else {
                    self.rng.random_range(host.start..host.end)
                };
                self.claim(i, to_ipv4(addr));
            }
            72..=76 => {
                if self.partitioned {
                    if self.rng.random_bool(0.5) {
                        self.heal();
                    }
                } else if self.rng.random_bool(0.5) {
                    self.partition();
                }
            }
            77..=81 => {
                // Restart with the store, at once.
                let Some(i) = self.pick(&live) else { return };
                self.restart_with_store(i);
            }
            82..=86 => {
                if live.len() > PEERS * 3 / 4 {
                    if let Some(i) = self.pick(&live) {
                        self.stop(i);
                        self.update_reachability();
                        self.stats.crashes += 1;
                    }
                }
            }
            87..=90 => {
                // A crashed peer comes back with its store.
                if let Some(i) = self.pick(&stopped) {
                    self.start_again(i, true);
                }
            }
            91..=95 => {
                // A crashed peer comes back without its store.
                if let Some(i) = self.pick(&stopped) {
                    if self.settle(i, "before a restart without store") {
                        self.start_again(i, false);
                    }
                }
            }
            _ => {
                // rmpeer of a crashed peer on exactly one live peer.
                if self.stats.removals >= MAX_REMOVALS {
                    return;
                }
                if let Some(x) = self.pick(&stopped) {
                    if self.settle(x, "before rmpeer") {
                        let live = self.live();
                        if let Some(r) = self.pick(&live) {
                            self.remove(x, r);
                        }
                    }
                }
            }
        }
    }

    /// Whether the ring has converged since crashed node `i` stopped (as an operator checks
    /// before `rmpeer`, or before bringing a peer back without its data): converges it now
    /// when there is no partition. False during a partition.
    fn settle(&mut self, i: usize, what: &str) -> bool {
        if self.partitioned {
            return false;
        }
        if self.nodes[i].stopped_at >= self.last_quiesce {
            self.quiesce(what);
        }
        true
    }

    fn partition(&mut self) {
        for i in 0..PEERS {
            self.side[i] = self.rng.random_range(0..2);
        }
        self.partitioned = true;
        self.stats.partitions += 1;
        self.update_reachability();
    }

    fn heal(&mut self) {
        self.side = vec![0; PEERS];
        self.partitioned = false;
        self.update_reachability();
        self.quiesce("after a heal");
    }

    fn restart_with_store(&mut self, i: usize) {
        let owned = self.peek(i).owned();
        let ring = self.ring_key(i);
        self.stop(i);
        let report = self.start(i);
        self.update_reachability();
        if report.restored != self.nodes[i].had_ring || report.discarded_reason.is_some() {
            violation!(self, "node {i} restarted from its store: {report:?}");
        }
        if self.peek(i).owned() != owned {
            violation!(
                self,
                "node {i} restored different records: {:?}, had {owned:?}",
                self.peek(i).owned()
            );
        }
        // Ownership is durable; versions of our own entries may lag (free-count refreshes
        // for gossip bump them without a commit, as Weave's do; merges catch up).
        let owners = |k: &[(u32, PeerName, u32)]| -> Vec<(u32, PeerName)> {
            k.iter().map(|e| (e.0, e.1)).collect()
        };
        if owners(&self.ring_key(i)) != owners(&ring) {
            violation!(
                self,
                "node {i} restored a different ring: {:?}, had {:?}",
                owners(&self.ring_key(i)),
                owners(&ring)
            );
        }
        self.stats.restarts_with_store += 1;
    }

    fn start_again(&mut self, i: usize, with_store: bool) {
        if with_store {
            let report = self.start(i);
            if report.restored != self.nodes[i].had_ring || report.discarded_reason.is_some() {
                violation!(self, "node {i} restarted from its store: {report:?}");
            }
            self.stats.restarts_with_store += 1;
        } else {
            self.forget_containers(i);
            self.lose_store(i);
            let report = self.start(i);
            if report.restored || report.discarded_reason.is_some() {
                violation!(self, "node {i} with a fresh store: {report:?}");
            }
            self.stats.restarts_without_store += 1;
        }
        self.update_reachability();
    }

    fn remove(&mut self, x: usize, r: usize) {
        let now = self.net.now();
        let share: u64 = self
            .peek(r)
            .ring()
            .owned_ranges(sim_peer(x))
            .iter()
            .map(|rg| rg.size())
            .sum();
        match self.node(r).admin_takeover(sim_peer(x), now) {
            Ok((taken, actions)) => {
                if taken != share {
                    violation!(
                        self,
                        "rmpeer {x} on {r}: took {taken}, its share was {share}"
                    );
                }
                self.handle(r, actions);
            }
            Err(e) => violation!(self, "rmpeer {x} on {r}: {e}"),
        }
        self.nodes[x].removed = true;
        self.forget_containers(x);
        self.stats.removals += 1;
    }
}

fn run_seed(seed: u64, steps: usize) -> Stats {
    let mut sim = Sim::new(seed);
    // Consensus, then the first allocations.
    for i in 0..PEERS {
        sim.allocate(i);
    }
    sim.run(60_000, GOSSIP_FANOUT);
    sim.check();
    sim.quiesce("after consensus");
    for i in 0..PEERS {
        if !sim.peek(i).ring_ready() {
            violation!(sim, "node {i} has no ring after consensus");
        }
    }
    for step in 1..=steps {
        sim.step = step;
        sim.random_step();
        let dt = sim.rng.random_range(10..1_500);
        sim.run(dt, GOSSIP_FANOUT);
        sim.check();
        if std::env::var("NODE_RANDOM_TRACE").is_ok() && step % 10 == 0 {
            let held: usize = sim.acked.len();
            eprintln!(
                "seed {seed} step {step} t={} held={held} waiting={} {:?} {:?}",
                sim.net.now(),
                sim.waiting.len(),
                sim.unicasts,
                sim.stats
            );
        }
    }
    // The end: heal, bring every crashed peer back, settle, check.
    sim.step = steps + 1;
    if sim.partitioned {
        sim.heal();
    }
    for i in sim.stopped() {
        sim.start_again(i, true);
    }
    sim.quiesce("at the end");
    let entries = sim.peek(sim.live()[0]).ring().entries().len();
    assert!(entries > PEERS, "seed {seed}: no donation happened");
    sim.stats
}

#[test]
fn fifty_peers_random_steps() {
    let seeds: Vec<u64> = match std::env::var("NODE_RANDOM_SEEDS") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("NODE_RANDOM_SEEDS: comma-separated u64")
            })
            .collect(),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    };
    let steps: usize = std::env::var("NODE_RANDOM_STEPS")
        .ok()
        .map(|v| v.parse().expect("NODE_RANDOM_STEPS: a number"))
        .unwrap_or(DEFAULT_STEPS);
    // Seeds are independent: run them side by side.
    let results: Vec<(u64, Stats)> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .iter()
            .map(|&seed| s.spawn(move || (seed, run_seed(seed, steps))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    for (seed, stats) in &results {
        eprintln!("seed {seed}, {steps} steps: {stats:?}");
        assert!(stats.allocs_ok > 0 && stats.releases > 0 && stats.claims_ok > 0);
        assert!(stats.restarts_with_store > 0 && stats.quiescent_checks > 1);
    }
}
