//! Deterministic in-memory simulation of IPAM gossip, for tests, benchmarks and experiments.
//!
//! [`SimNet`] is a message network with seeded randomness: each message is delayed by a random
//! time (so messages are reordered) and may be lost. [`simulate_paxos`] runs the initial-ring
//! consensus between simulated nodes over it and reports when consensus was reached. Nothing
//! here reads a clock or touches a socket: time is a number of simulated milliseconds.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::paxos::{NodeId, Paxos};
use crate::ring::PeerName;

/// A simulated network carrying messages of type `M` between numbered nodes.
pub struct SimNet<M> {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: BTreeMap<u64, (usize, usize, M)>,
    loss: f64,
    min_delay: u64,
    max_delay: u64,
    rng: StdRng,
    sent: u64,
    delivered: u64,
}

impl<M> SimNet<M> {
    /// A network losing each message with probability `loss` and delaying each by a uniform
    /// time in `[min_delay_ms, max_delay_ms]`; `seed` fixes every random choice.
    pub fn new(seed: u64, loss: f64, min_delay_ms: u64, max_delay_ms: u64) -> SimNet<M> {
        SimNet {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            loss: loss.clamp(0.0, 1.0),
            min_delay: min_delay_ms,
            max_delay: max_delay_ms.max(min_delay_ms),
            rng: StdRng::seed_from_u64(seed),
            sent: 0,
            delivered: 0,
        }
    }

    /// The current simulated time (ms).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The network's random number generator (for the nodes' own random choices).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Messages sent so far (lost ones included).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Sends `msg` from `from` to `to`; it arrives later, or never.
    pub fn send(&mut self, from: usize, to: usize, msg: M) {
        self.sent += 1;
        if self.loss > 0.0 && self.rng.random::<f64>() < self.loss {
            return;
        }
        let delay = self.rng.random_range(self.min_delay..=self.max_delay);
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.in_flight.insert(self.seq, (from, to, msg));
    }

    /// The next message due at or before `until`, as `(from, to, msg)`, advancing the clock to
    /// its arrival time; `None` (with the clock at `until`) when there is none.
    pub fn next_until(&mut self, until: u64) -> Option<(usize, usize, M)> {
        match self.queue.peek() {
            Some(Reverse((at, _))) if *at <= until => {
                let Reverse((at, seq)) = self.queue.pop()?;
                self.now = self.now.max(at);
                self.delivered += 1;
                self.in_flight.remove(&seq)
            }
            _ => {
                self.now = self.now.max(until);
                None
            }
        }
    }
}

/// A consensus simulation.
#[derive(Debug, Clone)]
pub struct PaxosSimConfig {
    /// Number of participating nodes.
    pub nodes: usize,
    /// The quorum every node uses.
    pub quorum: u32,
    /// Which nodes start proposing, and when (ms).
    pub proposers: Vec<(usize, u64)>,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Message delays are uniform in `1..=max_delay_ms`.
    pub max_delay_ms: u64,
    /// Every node sends its state to this many random nodes every second (periodic gossip).
    pub gossip_fanout: usize,
    /// Give up after this much simulated time.
    pub max_time_ms: u64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl PaxosSimConfig {
    /// `nodes` nodes with quorum `nodes/2 + 1`, all proposing at time 0, no loss.
    pub fn new(nodes: usize, seed: u64) -> PaxosSimConfig {
        PaxosSimConfig {
            nodes,
            quorum: (nodes / 2 + 1) as u32,
            proposers: (0..nodes).map(|i| (i, 0)).collect(),
            loss: 0.0,
            max_delay_ms: 50,
            gossip_fanout: 2,
            max_time_ms: 600_000,
            seed,
        }
    }
}

/// What a consensus simulation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaxosSimOutcome {
    /// When the first node learnt the consensus (ms).
    pub first_consensus_ms: Option<u64>,
    /// When every node had learnt it (ms).
    pub all_consensus_ms: Option<u64>,
    /// Messages delivered until the first consensus.
    pub messages_to_first: u64,
    /// Messages delivered in all.
    pub messages: u64,
    /// The highest proposal round used.
    pub max_round: u64,
    /// Each node's consensus at the end.
    pub values: Vec<Option<Vec<PeerName>>>,
    /// True if two nodes ever learnt different values (a safety violation).
    pub disagreement: bool,
}

/// Simulation time step: nodes think (and may re-propose) every 100 ms.
const TICK_MS: u64 = 100;
/// Periodic gossip every second.
const GOSSIP_MS: u64 = 1_000;

/// The name of simulated node `i`.
pub fn sim_peer(i: usize) -> PeerName {
    // 0x02... is a locally administered MAC, like Weave's generated names; i < 2^40 fits.
    PeerName::new(0x0200_0000_0000 | (i as u64 + 1)).unwrap_or_default()
}

/// Runs the initial-ring consensus between `config.nodes` nodes over a [`SimNet`]: every
/// change of a node's claims is broadcast to all others, and every second each node gossips
/// its state to a few random nodes. Runs until every node learnt the consensus or
/// `max_time_ms` passed.
pub fn simulate_paxos(config: &PaxosSimConfig) -> PaxosSimOutcome {
    let n = config.nodes;
    let mut net: SimNet<crate::paxos::GossipState> =
        SimNet::new(config.seed, config.loss, 1, config.max_delay_ms.max(1));
    let mut nodes: Vec<Paxos> = (0..n)
        .map(|i| {
            Paxos::new(
                NodeId {
                    name: sim_peer(i),
                    uid: (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                },
                config.quorum,
            )
        })
        .collect();
    let broadcast = |net: &mut SimNet<_>, nodes: &[Paxos], i: usize| {
        for j in (0..nodes.len()).filter(|&j| j != i) {
            net.send(i, j, nodes[i].gossip_state().clone());
        }
    };

    let mut out = PaxosSimOutcome {
        first_consensus_ms: None,
        all_consensus_ms: None,
        messages_to_first: 0,
        messages: 0,
        max_round: 0,
        values: vec![None; n],
        disagreement: false,
    };
    let mut agreed: Option<Vec<PeerName>> = None;
    let mut started = vec![false; n];
    let mut t = 0;
    while t <= config.max_time_ms {
        for &(i, at) in &config.proposers {
            if i < n && !started[i] && at <= t {
                started[i] = true;
                nodes[i].propose(t, net.rng());
                nodes[i].think(t, net.rng());
                broadcast(&mut net, &nodes, i);
            }
        }
        while let Some((_, to, state)) = net.next_until(t) {
            let now = net.now();
            if nodes[to].update(&state) && nodes[to].think(now, net.rng()) {
                broadcast(&mut net, &nodes, to);
            }
        }
        for i in 0..n {
            if nodes[i].think(t, net.rng()) {
                broadcast(&mut net, &nodes, i);
            }
        }
        if t % GOSSIP_MS == 0 && n > 1 {
            for (i, node) in nodes.iter().enumerate() {
                for _ in 0..config.gossip_fanout {
                    let j = (i + net.rng().random_range(1..n)) % n;
                    net.send(i, j, node.gossip_state().clone());
                }
            }
        }
        for (i, node) in nodes.iter().enumerate() {
            if let Some(v) = node.consensus() {
                match &agreed {
                    None => {
                        agreed = Some(v.clone());
                        out.first_consensus_ms = Some(t);
                        out.messages_to_first = net.delivered();
                    }
                    Some(a) if *a != v => out.disagreement = true,
                    _ => {}
                }
                out.values[i] = Some(v);
            }
        }
        if out.values.iter().all(Option::is_some) {
            out.all_consensus_ms = Some(t);
            break;
        }
        t += TICK_MS;
    }
    out.messages = net.delivered();
    out.max_round = nodes
        .iter()
        .flat_map(|p| p.gossip_state().values())
        .map(|c| c.promise.round)
        .max()
        .unwrap_or(0);
    out
}
