//! Route calculation: unicast next hops and broadcast trees, derived from the
//! topology table so that every peer computes the same answer.
//!
//! **Unicast.** A breadth-first search from ourself, where each BFS level is
//! sorted by peer name before it is expanded; `route[X]` is the first hop on the
//! path to `X` (ourself maps to [`UNKNOWN_PEER_NAME`]). When two peers of a level
//! both reach `X`, the one with the lower name wins, so the result depends only
//! on the topology, not on iteration order. Two tables are kept:
//!
//! - [`Routes::unicast`] follows only connections that are *established and
//!   symmetric* (both ends list the connection and mark it established). The data
//!   plane uses it: a half-open link must never carry packets.
//! - [`Routes::unicast_all`] follows every connection; gossip uses it.
//!
//! **Broadcast.** For a broadcast from source `S` arriving at us (`R`): run `S`'s
//! BFS until it reaches `R`; the peers it has reached by then are covered by other
//! branches. Forward to each of our neighbours that is not among them. Because
//! every peer runs the same deterministic search, a stable topology yields one
//! spanning tree per source and each peer receives each broadcast exactly once.
//! Again two variants: [`Routes::broadcast`] (established and symmetric, data
//! plane) and [`Routes::broadcast_all`] (all connections, gossip). Results are
//! cached per source and the caches are dropped on every recalculation.
//!
//! **Gossip fan-out.** [`Routes::random_neighbours`] picks
//! `min(floor(2·log2(n_peers)), n_neighbours)` distinct neighbours, weighted by how
//! many destinations route through each of them in `unicast_all`, so neighbours
//! at the far end of bottleneck links are favoured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::{Rng, RngCore};
use weft_wire::{PeerName, UNKNOWN_PEER_NAME};

use crate::peers::Peers;

/// One directed edge of the topology graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edge {
    to: u32,
    /// The owner marks the connection established.
    established: bool,
    /// ... and the remote lists an established connection back.
    symmetric: bool,
}

const UNREACHED: u32 = u32::MAX;

/// The topology as an index-based graph: peers sorted by name (so sorting
/// indices sorts names) and each peer's own connection list. Connections to
/// names not in the table are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Graph {
    names: Vec<PeerName>,
    /// Edges of peer `i` are `edges[start[i]..start[i + 1]]`.
    start: Vec<u32>,
    edges: Vec<Edge>,
}

impl Graph {
    pub(crate) fn build(peers: &Peers) -> Graph {
        let names: Vec<PeerName> = peers.iter().map(|p| p.name).collect();
        let mut start = Vec::with_capacity(names.len() + 1);
        let mut edges = Vec::new();
        for p in peers.iter() {
            start.push(edges.len() as u32);
            for (remote, c) in &p.connections {
                if let Ok(to) = names.binary_search(remote) {
                    edges.push(Edge {
                        to: to as u32,
                        established: c.established,
                        symmetric: false,
                    });
                }
            }
        }
        start.push(edges.len() as u32);
        let mut g = Graph {
            names,
            start,
            edges,
        };
        // An edge is symmetric if both directions are established.
        for u in 0..g.names.len() {
            for k in g.range(u as u32) {
                let e = g.edges[k];
                if !e.established {
                    continue;
                }
                let back = g
                    .range(e.to)
                    .map(|j| g.edges[j])
                    .find(|b| b.to as usize == u)
                    .is_some_and(|b| b.established);
                g.edges[k].symmetric = back;
            }
        }
        g
    }

    fn range(&self, i: u32) -> std::ops::Range<usize> {
        self.start[i as usize] as usize..self.start[i as usize + 1] as usize
    }

    fn adj(&self, i: u32) -> &[Edge] {
        &self.edges[self.range(i)]
    }

    /// The names of the peers reachable from `start` over all connections.
    pub(crate) fn reachable_from(&self, start: PeerName) -> BTreeSet<PeerName> {
        let Some(s) = self.index_of(start) else {
            return BTreeSet::new();
        };
        let (_, route) = self.bfs(s, None, false);
        route
            .iter()
            .zip(&self.names)
            .filter(|(r, _)| **r != UNREACHED)
            .map(|(_, n)| *n)
            .collect()
    }

    fn index_of(&self, name: PeerName) -> Option<u32> {
        self.names.binary_search(&name).ok().map(|i| i as u32)
    }

    /// BFS from `start` with each level sorted by name (Weave's `Peer.routes`).
    /// Returns whether `stop_at` was reached (the search then stops) and, per
    /// peer index, the index of the first hop (`start` maps to itself, peers not
    /// reached to [`UNREACHED`]).
    fn bfs(&self, start: u32, stop_at: Option<u32>, symmetric: bool) -> (bool, Vec<u32>) {
        let mut route = vec![UNREACHED; self.names.len()];
        route[start as usize] = start;
        let mut next = vec![start];
        while !next.is_empty() {
            let mut work = std::mem::take(&mut next);
            work.sort_unstable();
            for cur in work {
                if Some(cur) == stop_at {
                    return (true, route);
                }
                let via = if cur == start {
                    None
                } else {
                    Some(route[cur as usize])
                };
                for e in self.adj(cur) {
                    if (symmetric && !e.symmetric) || route[e.to as usize] != UNREACHED {
                        continue;
                    }
                    route[e.to as usize] = via.unwrap_or(e.to);
                    next.push(e.to);
                }
            }
        }
        (false, route)
    }

    /// The routes from `start` as names: destination → first hop (`start` →
    /// unknown). Empty if `start` is not in the graph.
    pub(crate) fn routes_from(
        &self,
        start: PeerName,
        symmetric: bool,
    ) -> BTreeMap<PeerName, PeerName> {
        let Some(s) = self.index_of(start) else {
            return BTreeMap::new();
        };
        let (_, route) = self.bfs(s, None, symmetric);
        route
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != UNREACHED)
            .map(|(i, v)| {
                let via = if i as u32 == s {
                    UNKNOWN_PEER_NAME
                } else {
                    self.names[*v as usize]
                };
                (self.names[i], via)
            })
            .collect()
    }

    /// The broadcast next hops at `ourself` for a broadcast from `source`.
    fn broadcast(&self, ourself: PeerName, source: PeerName, symmetric: bool) -> Vec<PeerName> {
        let (Some(me), Some(src)) = (self.index_of(ourself), self.index_of(source)) else {
            return Vec::new();
        };
        let (found, reached) = self.bfs(src, Some(me), symmetric);
        if !found {
            return Vec::new();
        }
        self.adj(me)
            .iter()
            .filter(|e| (!symmetric || e.symmetric) && reached[e.to as usize] == UNREACHED)
            .map(|e| self.names[e.to as usize])
            .collect()
    }
}

/// The route tables of the local peer.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    ourself: PeerName,
    unicast: BTreeMap<PeerName, PeerName>,
    unicast_all: BTreeMap<PeerName, PeerName>,
    broadcast: BTreeMap<PeerName, Vec<PeerName>>,
    broadcast_all: BTreeMap<PeerName, Vec<PeerName>>,
    graph: Arc<Graph>,
}

impl Routes {
    /// Computes the tables for `peers` from the local peer's point of view.
    pub fn new(peers: &Peers) -> Routes {
        let mut r = Routes {
            ourself: peers.our_name(),
            ..Routes::default()
        };
        r.recalculate(peers);
        r
    }

    /// Recomputes the unicast tables and drops the broadcast caches. Returns
    /// whether the topology graph (and so possibly any route) changed.
    pub fn recalculate(&mut self, peers: &Peers) -> bool {
        let graph = peers.graph();
        if (Arc::ptr_eq(&graph, &self.graph) || graph == self.graph) && !self.unicast_all.is_empty()
        {
            return false;
        }
        self.unicast = graph.routes_from(self.ourself, true);
        self.unicast_all = graph.routes_from(self.ourself, false);
        self.graph = graph;
        self.broadcast.clear();
        self.broadcast_all.clear();
        true
    }

    /// Next hop towards `dst` over established, symmetric connections (data
    /// plane). `Some(UNKNOWN_PEER_NAME)` for ourself.
    pub fn unicast(&self, dst: PeerName) -> Option<PeerName> {
        self.unicast.get(&dst).copied()
    }

    /// Next hop towards `dst` over all connections (gossip).
    pub fn unicast_all(&self, dst: PeerName) -> Option<PeerName> {
        self.unicast_all.get(&dst).copied()
    }

    /// The whole established-and-symmetric unicast table.
    pub fn unicast_table(&self) -> &BTreeMap<PeerName, PeerName> {
        &self.unicast
    }

    /// The whole all-connections unicast table.
    pub fn unicast_all_table(&self) -> &BTreeMap<PeerName, PeerName> {
        &self.unicast_all
    }

    /// Next hops for a broadcast from `source` over established, symmetric
    /// connections (data plane).
    pub fn broadcast(&mut self, source: PeerName) -> Vec<PeerName> {
        let me = self.ourself;
        let graph = &self.graph;
        self.broadcast
            .entry(source)
            .or_insert_with(|| graph.broadcast(me, source, true))
            .clone()
    }

    /// Next hops for a broadcast from `source` over all connections (gossip).
    pub fn broadcast_all(&mut self, source: PeerName) -> Vec<PeerName> {
        let me = self.ourself;
        let graph = &self.graph;
        self.broadcast_all
            .entry(source)
            .or_insert_with(|| graph.broadcast(me, source, false))
            .clone()
    }

    /// Chooses up to `floor(2·log2(n))` distinct neighbours (`n` = entries in the
    /// all-connections table, ourself included), never `except`, at random
    /// weighted by the number of destinations each one is the first hop for.
    pub fn random_neighbours(&self, except: PeerName, rng: &mut dyn RngCore) -> Vec<PeerName> {
        let n = self.unicast_all.len();
        if n < 2 {
            return Vec::new();
        }
        let count = (2.0 * (n as f64).log2()) as usize;
        let mut weights: BTreeMap<PeerName, u64> = BTreeMap::new();
        for via in self.unicast_all.values() {
            if *via != UNKNOWN_PEER_NAME && *via != except {
                *weights.entry(*via).or_default() += 1;
            }
        }
        let mut chosen = Vec::new();
        while chosen.len() < count && !weights.is_empty() {
            let total: u64 = weights.values().sum();
            let mut pick = rng.random_range(0..total);
            let name = *weights
                .iter()
                .find(|(_, w)| {
                    if pick < **w {
                        true
                    } else {
                        pick -= **w;
                        false
                    }
                })
                .map(|(n, _)| n)
                .expect("pick is below the total weight");
            weights.remove(&name);
            chosen.push(name);
        }
        chosen
    }

    /// The peers reachable over all connections, ourself included.
    pub fn reachable_all(&self) -> BTreeSet<PeerName> {
        self.unicast_all.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{ConnSummary, LocalIdentity, PeerChanges, PeerUpdate};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use weft_wire::ShortId;

    fn pn(v: u64) -> PeerName {
        PeerName::new(v).unwrap()
    }

    /// The view of peer `me` of a topology given as directed edges
    /// `(from, to, established)`.
    fn view(me: u64, nodes: &[u64], edges: &[(u64, u64, bool)]) -> Peers {
        let mut rng = StdRng::seed_from_u64(me);
        let mut p = Peers::new(LocalIdentity {
            name: pn(me),
            nickname: String::new(),
            uid: me,
            short_id: ShortId::new(me as u16 % 4096).unwrap(),
        });
        let conn = |est| ConnSummary {
            remote_tcp_addr: String::new(),
            outbound: true,
            established: est,
        };
        for (a, b, est) in edges {
            if *a == me {
                p.add_local_connection(pn(*b), conn(*est));
            }
        }
        let updates: Vec<PeerUpdate> = nodes
            .iter()
            .filter(|n| **n != me)
            .map(|n| PeerUpdate {
                name: pn(*n),
                nickname: String::new(),
                uid: *n,
                version: 1,
                short_id: ShortId::new(*n as u16 % 4096).unwrap(),
                has_short_id: true,
                connections: edges
                    .iter()
                    .filter(|(a, _, _)| a == n)
                    .map(|(_, b, est)| (pn(*b), conn(*est)))
                    .collect(),
            })
            .collect();
        let mut ch = PeerChanges::default();
        p.apply_update(&updates, &mut rng, &mut ch);
        p
    }

    fn both(a: u64, b: u64) -> [(u64, u64, bool); 2] {
        [(a, b, true), (b, a, true)]
    }

    #[test]
    fn bfs_levels_are_sorted_by_name() {
        // Diamond 1-{3,2}-4: 4 is reached through the lower name, 2, whatever
        // the insertion order.
        let nodes = [1, 2, 3, 4];
        let mut edges: Vec<(u64, u64, bool)> = Vec::new();
        for (a, b) in [(1, 3), (3, 4), (1, 2), (2, 4)] {
            edges.extend(both(a, b));
        }
        let r = Routes::new(&view(1, &nodes, &edges));
        assert_eq!(r.unicast(pn(4)), Some(pn(2)));
        assert_eq!(r.unicast(pn(3)), Some(pn(3)));
        assert_eq!(r.unicast(pn(1)), Some(UNKNOWN_PEER_NAME));
        edges.reverse();
        let r2 = Routes::new(&view(1, &nodes, &edges));
        assert_eq!(r.unicast_table(), r2.unicast_table());
    }

    #[test]
    fn unicast_needs_established_symmetric_connections() {
        let nodes = [1, 2, 3, 4];
        let mut edges = vec![];
        edges.extend(both(1, 2));
        // 2→3 established but 3→2 missing: half-open.
        edges.push((2, 3, true));
        // 2↔4 listed both ways but 4's side is not established.
        edges.push((2, 4, true));
        edges.push((4, 2, false));
        let mut r = Routes::new(&view(1, &nodes, &edges));
        assert_eq!(r.unicast(pn(2)), Some(pn(2)));
        assert_eq!(r.unicast(pn(3)), None);
        assert_eq!(r.unicast(pn(4)), None);
        assert_eq!(r.unicast_all(pn(3)), Some(pn(2)));
        assert_eq!(r.unicast_all(pn(4)), Some(pn(2)));
        assert_eq!(r.broadcast(pn(1)), vec![pn(2)]);
        assert!(
            r.broadcast(pn(3)).is_empty(),
            "3 cannot reach us symmetrically"
        );
        assert_eq!(r.reachable_all(), [pn(1), pn(2), pn(3), pn(4)].into());
    }

    #[test]
    fn broadcast_tree_of_a_ring() {
        // Ring 1-2-3-4-5-6-1 seen from each peer: a broadcast from 1 reaches
        // everyone exactly once.
        let nodes: Vec<u64> = (1..=6).collect();
        let mut edges = vec![];
        for i in 1..=6u64 {
            edges.extend(both(i, i % 6 + 1));
        }
        let mut tables: Vec<Routes> = nodes
            .iter()
            .map(|n| Routes::new(&view(*n, &nodes, &edges)))
            .collect();
        for src in 1..=6u64 {
            let mut got = [0u32; 7];
            let mut queue = vec![src];
            while let Some(cur) = queue.pop() {
                for h in tables[(cur - 1) as usize].broadcast_all(pn(src)) {
                    let h = h.as_u64();
                    got[h as usize] += 1;
                    queue.push(h);
                }
            }
            for n in 1..=6u64 {
                assert_eq!(
                    got[n as usize],
                    u32::from(n != src),
                    "source {src}, peer {n}"
                );
            }
        }
        // From 1, the tree goes both ways round; 4 (opposite) is reached via 3
        // (BFS from 1 processes 2 before 6).
        assert_eq!(tables[0].broadcast_all(pn(1)), vec![pn(2), pn(6)]);
        assert_eq!(tables[2].broadcast_all(pn(1)), vec![pn(4)]);
        assert_eq!(tables[5].broadcast_all(pn(1)), vec![pn(5)]);
        assert!(tables[4].broadcast_all(pn(1)).is_empty(), "5 is a leaf");
    }

    #[test]
    fn random_neighbours_respects_count_and_exclusion() {
        // A star: we (1) connect to 2..=9; 2 also leads to 10..=40.
        let nodes: Vec<u64> = (1..=40).collect();
        let mut edges = vec![];
        for n in 2..=9 {
            edges.extend(both(1, n));
        }
        for n in 10..=40 {
            edges.extend(both(2, n));
        }
        let r = Routes::new(&view(1, &nodes, &edges));
        let mut rng = StdRng::seed_from_u64(4);
        // floor(2*log2(40)) = 10 > 8 neighbours: all of them.
        let mut all = r.random_neighbours(UNKNOWN_PEER_NAME, &mut rng);
        all.sort();
        assert_eq!(all, (2..=9).map(pn).collect::<Vec<_>>());
        let without = r.random_neighbours(pn(2), &mut rng);
        assert_eq!(without.len(), 7);
        assert!(!without.contains(&pn(2)));
        // Alone: nobody.
        let lonely = Routes::new(&view(1, &[1], &[]));
        assert!(lonely
            .random_neighbours(UNKNOWN_PEER_NAME, &mut rng)
            .is_empty());
        // Picks are weighted: the bottleneck neighbour 2 (first hop for 32 of
        // the 39 destinations) comes first far more often than any other.
        let mut twos = 0;
        for _ in 0..200 {
            if r.random_neighbours(UNKNOWN_PEER_NAME, &mut rng)[0] == pn(2) {
                twos += 1;
            }
        }
        assert!(twos > 100, "2 picked first {twos} times of 200");
    }

    #[test]
    fn recalculate_reports_changes() {
        let nodes = [1, 2];
        let edges = both(1, 2);
        let p = view(1, &nodes, &edges);
        let mut r = Routes::new(&p);
        assert!(!r.recalculate(&p));
        let p2 = view(1, &nodes, &[(1, 2, true), (2, 1, false)]);
        assert!(r.recalculate(&p2));
        assert_eq!(r.unicast(pn(2)), None);
    }
}
