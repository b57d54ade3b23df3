//! A deterministic in-process network for many [`Mesh`]es.
//!
//! [`Sim`] runs any number of meshes on one thread under a simulated clock. It
//! plays the driver's part for each of them: it carries out their [`Action`]s,
//! resolves `Dial`s to simulated peers, runs the (assumed successful) handshake by
//! calling [`Mesh::handle_connection_up`] on both ends with a shared connection
//! UID, delivers frame bodies after a configurable latency (per-link FIFO, like
//! TCP), reports overlays established after a delay, and fires timers.
//!
//! Faults: dials can fail at random, messages can be lost (which, TCP being
//! reliable, breaks the connection), the network can be partitioned into groups
//! (cross-group connections break and cross-group dials fail) and healed, and
//! peers can be restarted with a new UID under the same name.
//!
//! Everything is driven by one seeded random number generator and ordered
//! collections, so a run is a pure function of its seed. Helpers check the
//! properties the mesh promises: topology agreement ([`Sim::converged`]),
//! loop-free unicast routes ([`Sim::check_unicast_routes`]) and broadcast trees that
//! reach every peer exactly once ([`Sim::check_broadcast_tables`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_wire::{PeerName, UNKNOWN_PEER_NAME};

use crate::connection::{ConnId, ConnectionParams};
use crate::mesh::{Action, Mesh, MeshConfig};
use crate::time::Millis;

/// Parameters of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of everything random.
    pub seed: u64,
    /// Fixed one-way latency of every message.
    pub latency: Duration,
    /// Extra random latency, uniform in `[0, jitter]`.
    pub jitter: Duration,
    /// Time from connection up to overlay established.
    pub establish_delay: Duration,
    /// Probability that a dial fails.
    pub dial_failure_rate: f64,
    /// Probability that a message is lost, breaking its connection.
    pub message_loss_rate: f64,
    /// Peer discovery on the meshes.
    pub peer_discovery: bool,
    /// Connection limit of the meshes.
    pub conn_limit: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            latency: Duration::from_millis(2),
            jitter: Duration::from_millis(3),
            establish_delay: Duration::from_millis(20),
            dial_failure_rate: 0.0,
            message_loss_rate: 0.0,
            peer_discovery: false,
            conn_limit: crate::connection::DEFAULT_CONN_LIMIT,
        }
    }
}

/// Hook run on every mesh the simulation creates (at start and on restart),
/// e.g. to register gossip channels.
pub type SetupFn = Box<dyn FnMut(usize, &mut Mesh)>;

/// One simulated peer.
pub struct SimNode {
    /// Its mesh.
    pub mesh: Mesh,
    /// Its IPv4 address.
    pub ip: String,
    /// Its direct peers (addresses).
    pub direct: Vec<String>,
    /// Incremented on every restart; events for older incarnations are dropped.
    pub incarnation: u32,
    conns: BTreeMap<ConnId, u64>,
    next_ephemeral: u16,
    scheduled: Option<Millis>,
}

#[derive(Debug)]
struct Link {
    a: (usize, ConnId),
    b: (usize, ConnId),
    last_to_a: Millis,
    last_to_b: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Timer {
        node: usize,
        at: Millis,
    },
    Dial {
        node: usize,
        incarnation: u32,
        address: String,
    },
    Deliver {
        link: u64,
        to_a: bool,
        body: Vec<u8>,
    },
    Down {
        node: usize,
        incarnation: u32,
        conn: ConnId,
        reason: String,
    },
    Established {
        node: usize,
        incarnation: u32,
        conn: ConnId,
    },
}

/// Counters of a simulation run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages delivered.
    pub delivered: u64,
    /// Bytes delivered (frame bodies).
    pub bytes: u64,
    /// Dials attempted.
    pub dials: u64,
    /// Connections admitted on both ends.
    pub connections: u64,
    /// Events processed.
    pub events: u64,
}

/// The simulator. See the module documentation.
pub struct Sim {
    cfg: SimConfig,
    now: Millis,
    rng: StdRng,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64, Event)>>,
    nodes: Vec<SimNode>,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    groups: Option<Vec<usize>>,
    dirty: BTreeSet<usize>,
    setup: Option<SetupFn>,
    stats: SimStats,
}

fn components(n: usize, edges: impl Iterator<Item = (usize, usize)>) -> Vec<usize> {
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut parent: Vec<usize> = (0..n).collect();
    for (a, b) in edges {
        let (a, b) = (find(&mut parent, a), find(&mut parent, b));
        parent[a] = b;
    }
    (0..n).map(|i| find(&mut parent, i)).collect()
}

/// The peer name of simulated node `i`.
pub fn node_name(i: usize) -> PeerName {
    PeerName::new(0x0200_0000_0000 + i as u64 + 1).expect("fits in 48 bits")
}

fn node_ip(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

impl Sim {
    /// An empty simulation at time 0.
    pub fn new(cfg: SimConfig) -> Sim {
        Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            now: Millis::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            links: BTreeMap::new(),
            next_link: 1,
            groups: None,
            dirty: BTreeSet::new(),
            setup: None,
            stats: SimStats::default(),
        }
    }

    /// Installs a hook run on every mesh created from now on.
    pub fn set_setup(&mut self, f: SetupFn) {
        self.setup = Some(f);
    }

    /// Changes the fault rates (dial failures, message loss) from now on.
    pub fn set_faults(&mut self, dial_failure_rate: f64, message_loss_rate: f64) {
        self.cfg.dial_failure_rate = dial_failure_rate;
        self.cfg.message_loss_rate = message_loss_rate;
    }

    /// The current simulated time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// Node `i`'s mesh, for calls from the test (drained afterwards).
    pub fn mesh_mut(&mut self, i: usize) -> &mut Mesh {
        self.dirty.insert(i);
        &mut self.nodes[i].mesh
    }

    /// Node `i`'s listening address.
    pub fn address(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].ip, self.nodes[i].mesh.port())
    }

    fn make_mesh(&mut self, i: usize) -> Mesh {
        let mut cfg = MeshConfig::new(node_name(i), format!("node-{i}"), self.rng.random());
        cfg.peer_discovery = self.cfg.peer_discovery;
        cfg.conn_limit = self.cfg.conn_limit;
        let mut mesh = Mesh::new(cfg, self.now);
        if let Some(f) = self.setup.as_mut() {
            f(i, &mut mesh);
        }
        mesh
    }

    /// Adds a node; returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let mesh = self.make_mesh(i);
        self.nodes.push(SimNode {
            mesh,
            ip: node_ip(i),
            direct: Vec::new(),
            incarnation: 0,
            conns: BTreeMap::new(),
            next_ephemeral: 40_000,
            scheduled: None,
        });
        self.dirty.insert(i);
        i
    }

    /// Makes `targets` direct peers of node `i`.
    pub fn connect(&mut self, i: usize, targets: &[usize]) {
        let addrs: Vec<String> = targets.iter().map(|t| self.address(*t)).collect();
        self.nodes[i].direct.extend(addrs.iter().cloned());
        let now = self.now;
        self.nodes[i]
            .mesh
            .initiate_connections(&addrs, false, now)
            .expect("simulated addresses are valid");
        self.dirty.insert(i);
    }

    /// Wires all nodes into a sparse random connected graph: node `i > 0` gets a
    /// random earlier node as a direct peer (a random spanning tree), plus
    /// `extra` more random peers. Returns the number of distinct edges.
    pub fn connect_random_sparse(&mut self, extra: usize) -> usize {
        let n = self.nodes.len();
        let mut edges = BTreeSet::new();
        for i in 1..n {
            let j = self.rng.random_range(0..i);
            edges.insert((j.min(i), j.max(i)));
        }
        if n > 2 {
            for i in 0..n {
                for _ in 0..extra {
                    let j = self.rng.random_range(0..n);
                    if j != i {
                        edges.insert((j.min(i), j.max(i)));
                    }
                }
            }
        }
        let mut by_node: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (a, b) in &edges {
            // The higher-numbered node dials.
            by_node.entry(*b).or_default().push(*a);
        }
        for (i, targets) in by_node {
            self.connect(i, &targets);
        }
        edges.len()
    }

    /// Restarts node `i`: its connections break, and a new mesh with the same
    /// name, a new UID and the same direct peers takes its place.
    pub fn restart(&mut self, i: usize) {
        let links: Vec<u64> = self.nodes[i].conns.values().copied().collect();
        for l in links {
            self.break_link(l, "connection reset by peer (restart)", Some(i));
        }
        self.nodes[i].conns.clear();
        self.nodes[i].incarnation += 1;
        self.nodes[i].scheduled = None;
        let mut mesh = self.make_mesh(i);
        let direct = self.nodes[i].direct.clone();
        mesh.initiate_connections(&direct, false, self.now)
            .expect("simulated addresses are valid");
        self.nodes[i].mesh = mesh;
        self.dirty.insert(i);
    }

    /// Splits the network: `group_of[i]` is node `i`'s group. Connections across
    /// groups break now; dials across groups fail until [`heal`](Self::heal).
    pub fn partition(&mut self, group_of: Vec<usize>) {
        assert_eq!(group_of.len(), self.nodes.len(), "one group per node");
        let cross: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| group_of[l.a.0] != group_of[l.b.0])
            .map(|(id, _)| *id)
            .collect();
        self.groups = Some(group_of);
        for l in cross {
            self.break_link(l, "network partition", None);
        }
    }

    /// Removes the partition.
    pub fn heal(&mut self) {
        self.groups = None;
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.groups.as_ref().is_none_or(|g| g[a] == g[b])
    }

    fn push(&mut self, at: Millis, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, e)));
    }

    fn latency(&mut self) -> Duration {
        let j = self.cfg.jitter.as_millis() as u64;
        let extra = if j == 0 {
            0
        } else {
            self.rng.random_range(0..=j)
        };
        self.cfg.latency + Duration::from_millis(extra)
    }

    /// Breaks a link: both ends (except `skip`, e.g. a restarting node) see it go
    /// down after one latency.
    fn break_link(&mut self, id: u64, reason: &str, skip: Option<usize>) {
        let Some(l) = self.links.remove(&id) else {
            return;
        };
        let at = self.now + self.latency();
        for (node, conn) in [l.a, l.b] {
            if Some(node) == skip {
                continue;
            }
            let inc = self.nodes[node].incarnation;
            self.push(
                at,
                Event::Down {
                    node,
                    incarnation: inc,
                    conn,
                    reason: reason.to_string(),
                },
            );
        }
    }

    fn resolve(&self, address: &str) -> Option<usize> {
        let (ip, port) = address.rsplit_once(':')?;
        let i = self.nodes.iter().position(|n| n.ip == ip)?;
        (port.parse::<u16>().ok()? == self.nodes[i].mesh.port()).then_some(i)
    }

    fn schedule_timer(&mut self, i: usize) {
        let t = self.nodes[i].mesh.poll_timeout();
        if t != self.nodes[i].scheduled {
            self.nodes[i].scheduled = t;
            if let Some(at) = t {
                self.push(at.max(self.now), Event::Timer { node: i, at });
            }
        }
    }

    /// Carries out node `i`'s pending actions.
    fn drain(&mut self, i: usize) {
        while let Some(a) = self.nodes[i].mesh.poll_action() {
            match a {
                Action::Send { conn, body } => {
                    let Some(&lid) = self.nodes[i].conns.get(&conn) else {
                        continue;
                    };
                    if self.cfg.message_loss_rate > 0.0
                        && self.rng.random_bool(self.cfg.message_loss_rate)
                    {
                        self.nodes[i].conns.remove(&conn);
                        self.break_link(lid, "connection reset (message lost)", None);
                        continue;
                    }
                    let lat = self.latency();
                    let Some(l) = self.links.get_mut(&lid) else {
                        continue;
                    };
                    let to_a = l.b == (i, conn);
                    let last = if to_a {
                        &mut l.last_to_a
                    } else {
                        &mut l.last_to_b
                    };
                    let at = (self.now + lat).max(*last);
                    *last = at;
                    self.push(
                        at,
                        Event::Deliver {
                            link: lid,
                            to_a,
                            body,
                        },
                    );
                }
                Action::Close { conn, reason } => {
                    if let Some(lid) = self.nodes[i].conns.remove(&conn) {
                        self.break_link(lid, &format!("closed by peer: {reason}"), Some(i));
                    }
                }
                Action::Dial { address } => {
                    self.stats.dials += 1;
                    let at = self.now + self.latency() + self.latency();
                    let inc = self.nodes[i].incarnation;
                    self.push(
                        at,
                        Event::Dial {
                            node: i,
                            incarnation: inc,
                            address,
                        },
                    );
                }
                Action::Overlay { .. }
                | Action::RoutesChanged
                | Action::ShortIdsInvalidated
                | Action::PeersRemoved(_) => {}
            }
        }
        self.schedule_timer(i);
    }

    fn dial(&mut self, a: usize, address: String) {
        let now = self.now;
        let target = self.resolve(&address);
        let fail =
            self.cfg.dial_failure_rate > 0.0 && self.rng.random_bool(self.cfg.dial_failure_rate);
        let b = match target {
            Some(b) if !fail && self.reachable(a, b) => b,
            _ => {
                self.nodes[a]
                    .mesh
                    .handle_dial_failed(&address, "connect: connection refused", now);
                self.dirty.insert(a);
                return;
            }
        };
        let conn_uid: u64 = self.rng.random();
        let eph = self.nodes[a].next_ephemeral;
        self.nodes[a].next_ephemeral = eph.checked_add(1).unwrap_or(40_000);
        let (ma, mb) = (&self.nodes[a].mesh, &self.nodes[b].mesh);
        let pa = ConnectionParams {
            remote_name: mb.name(),
            remote_nickname: mb.nickname().to_string(),
            remote_uid: mb.uid(),
            remote_short_id: Some(mb.short_id()),
            conn_uid,
            outbound: true,
            remote_addr: address,
        };
        let pb = ConnectionParams {
            remote_name: ma.name(),
            remote_nickname: ma.nickname().to_string(),
            remote_uid: ma.uid(),
            remote_short_id: Some(ma.short_id()),
            conn_uid,
            outbound: false,
            remote_addr: format!("{}:{eph}", self.nodes[a].ip),
        };
        let ra = self.nodes[a].mesh.handle_connection_up(pa, now);
        let rb = self.nodes[b].mesh.handle_connection_up(pb, now);
        self.dirty.insert(a);
        self.dirty.insert(b);
        let down_at = now + self.latency();
        match (ra, rb) {
            (Ok(ca), Ok(cb)) => {
                self.stats.connections += 1;
                let lid = self.next_link;
                self.next_link += 1;
                self.links.insert(
                    lid,
                    Link {
                        a: (a, ca),
                        b: (b, cb),
                        last_to_a: now,
                        last_to_b: now,
                    },
                );
                self.nodes[a].conns.insert(ca, lid);
                self.nodes[b].conns.insert(cb, lid);
                let at = now + self.cfg.establish_delay;
                for (node, conn) in [(a, ca), (b, cb)] {
                    let incarnation = self.nodes[node].incarnation;
                    self.push(
                        at,
                        Event::Established {
                            node,
                            incarnation,
                            conn,
                        },
                    );
                }
            }
            (Ok(c), Err(e)) => self.one_sided(a, c, e.to_string(), down_at),
            (Err(e), Ok(c)) => self.one_sided(b, c, e.to_string(), down_at),
            (Err(_), Err(_)) => {}
        }
    }

    /// A connection only `node` admitted: the other end closes it.
    fn one_sided(&mut self, node: usize, conn: ConnId, error: String, at: Millis) {
        let incarnation = self.nodes[node].incarnation;
        self.push(
            at,
            Event::Down {
                node,
                incarnation,
                conn,
                reason: format!("remote refused the connection: {error}"),
            },
        );
    }

    fn handle(&mut self, e: Event) {
        let now = self.now;
        match e {
            Event::Timer { node, at } => {
                if self.nodes[node].scheduled == Some(at) {
                    self.nodes[node].scheduled = None;
                    self.nodes[node].mesh.handle_timeout(now);
                    self.dirty.insert(node);
                }
            }
            Event::Dial {
                node,
                incarnation,
                address,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    self.dial(node, address);
                }
            }
            Event::Deliver { link, to_a, body } => {
                let Some(l) = self.links.get(&link) else {
                    return;
                };
                let (node, conn) = if to_a { l.a } else { l.b };
                self.stats.delivered += 1;
                self.stats.bytes += body.len() as u64;
                self.nodes[node].mesh.handle_message(conn, &body, now);
                self.dirty.insert(node);
            }
            Event::Down {
                node,
                incarnation,
                conn,
                reason,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    self.nodes[node].conns.remove(&conn);
                    self.nodes[node]
                        .mesh
                        .handle_connection_down(conn, &reason, now);
                    self.dirty.insert(node);
                }
            }
            Event::Established {
                node,
                incarnation,
                conn,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    self.nodes[node].mesh.connection_established(conn, now);
                    self.dirty.insert(node);
                }
            }
        }
    }

    fn drain_dirty(&mut self) {
        while let Some(i) = self.dirty.pop_first() {
            self.drain(i);
        }
    }

    /// Processes every event up to and including time `until`.
    pub fn run_until_time(&mut self, until: Millis) {
        self.drain_dirty();
        while self
            .queue
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= until)
        {
            let Some(Reverse((at, _, e))) = self.queue.pop() else {
                break;
            };
            self.now = self.now.max(at);
            self.stats.events += 1;
            self.handle(e);
            let next_at = self.queue.peek().map(|Reverse((t, _, _))| *t);
            if next_at.is_none_or(|t| t > self.now) {
                self.drain_dirty();
            }
        }
        self.now = self.now.max(until);
        self.drain_dirty();
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until_time(until);
    }

    /// Runs until `pred` holds (checked every `step`) or `limit` has passed;
    /// returns the time it first held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut pred: impl FnMut(&mut Sim) -> bool,
    ) -> Option<Millis> {
        let end = self.now + limit;
        loop {
            if pred(self) {
                return Some(self.now);
            }
            if self.now >= end {
                return None;
            }
            let next = (self.now + step).min(end);
            self.run_until_time(next);
        }
    }

    /// The connected components of the live links, as a component number per
    /// node.
    pub fn components(&self) -> Vec<usize> {
        components(
            self.nodes.len(),
            self.links.values().map(|l| (l.a.0, l.b.0)),
        )
    }

    /// The components the live links should form: those of the direct-peer
    /// graph, minus edges the partition cuts.
    pub fn expected_components(&self) -> Vec<usize> {
        let mut edges = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for a in &n.direct {
                if let Some(j) = self.resolve(a) {
                    if self.reachable(i, j) {
                        edges.push((i, j));
                    }
                }
            }
        }
        components(self.nodes.len(), edges.into_iter())
    }

    /// Whether the mesh has converged: the live connections join the peers
    /// the direct-peer graph (under the current partition) joins, every peer
    /// knows exactly the peers of its connected component (no more, no
    /// placeholders), each with the UID and version that peer itself has, and
    /// every connection is established on both ends.
    pub fn converged(&self) -> bool {
        let comp = self.components();
        let count = |c: &[usize]| c.iter().collect::<BTreeSet<_>>().len();
        if count(&comp) != count(&self.expected_components()) {
            return false;
        }
        let truth: Vec<(PeerName, u64, u64)> = self
            .nodes
            .iter()
            .map(|n| {
                let me = n.mesh.peers().ourself();
                (me.name, me.uid, me.version)
            })
            .collect();
        let mut size: BTreeMap<usize, usize> = BTreeMap::new();
        for c in &comp {
            *size.entry(*c).or_default() += 1;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let peers = n.mesh.peers();
            if peers.len() != size[&comp[i]] {
                return false;
            }
            for (j, (name, uid, version)) in truth.iter().enumerate() {
                if comp[j] != comp[i] {
                    continue;
                }
                match peers.get(*name) {
                    Some(p) if p.uid == *uid && p.version == *version => {}
                    _ => return false,
                }
            }
            if n.mesh.connections().any(|(_, _, _, _, est)| !est) {
                return false;
            }
        }
        true
    }

    /// Checks that, for every pair of peers, following each peer's own unicast
    /// table (`all` = the all-connections table) from the source reaches the
    /// destination without revisiting a peer, over live connections.
    pub fn check_unicast_routes(&mut self, all: bool) -> Result<(), String> {
        let n = self.nodes.len();
        let index: BTreeMap<PeerName, usize> =
            (0..n).map(|i| (self.nodes[i].mesh.name(), i)).collect();
        let tables: Vec<BTreeMap<PeerName, PeerName>> = (0..n)
            .map(|i| {
                let r = self.nodes[i].mesh.routes();
                if all {
                    r.unicast_all_table().clone()
                } else {
                    r.unicast_table().clone()
                }
            })
            .collect();
        for s in 0..n {
            for d in 0..n {
                let dst = self.nodes[d].mesh.name();
                let mut cur = s;
                let mut seen = BTreeSet::from([s]);
                while cur != d {
                    let via = tables[cur]
                        .get(&dst)
                        .copied()
                        .ok_or_else(|| format!("node {cur} has no route to node {d}"))?;
                    if via == UNKNOWN_PEER_NAME {
                        return Err(format!("node {cur} routes {d} to itself"));
                    }
                    if self.nodes[cur].mesh.connection_to(via).is_none() {
                        return Err(format!("node {cur} routes via {via} without a connection"));
                    }
                    let next = *index
                        .get(&via)
                        .ok_or_else(|| format!("unknown hop {via}"))?;
                    if !seen.insert(next) {
                        return Err(format!("routing loop from {s} to {d} at node {next}"));
                    }
                    cur = next;
                }
            }
        }
        Ok(())
    }

    /// Checks, by flooding along every peer's own broadcast table (`all` = the
    /// all-connections table), that a broadcast from each source reaches every
    /// other peer exactly once.
    pub fn check_broadcast_tables(&mut self, all: bool) -> Result<(), String> {
        let n = self.nodes.len();
        let index: BTreeMap<PeerName, usize> =
            (0..n).map(|i| (self.nodes[i].mesh.name(), i)).collect();
        for s in 0..n {
            let src = self.nodes[s].mesh.name();
            let mut received = vec![0u32; n];
            let mut queue = std::collections::VecDeque::from([s]);
            while let Some(cur) = queue.pop_front() {
                let hops = if all {
                    self.nodes[cur].mesh.broadcast_all_routes(src)
                } else {
                    self.nodes[cur].mesh.broadcast_routes(src)
                };
                for h in hops {
                    let next = *index.get(&h).ok_or_else(|| format!("unknown hop {h}"))?;
                    received[next] += 1;
                    if received[next] > 1 {
                        return Err(format!(
                            "broadcast from {s} reaches node {next} more than once"
                        ));
                    }
                    queue.push_back(next);
                }
            }
            for (i, r) in received.iter().enumerate() {
                if i != s && *r != 1 {
                    return Err(format!("broadcast from {s} reaches node {i} {r} times"));
                }
            }
        }
        Ok(())
    }
}
