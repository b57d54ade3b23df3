//! Single-value Paxos over gossip, to agree on the peers that create the first ring
//! (`--ipalloc-init=consensus[=N]`, `weave-net-internals.md` §5.5).
//!
//! Every participant is proposer, acceptor and learner at once. The whole protocol state is a
//! map node → [`NodeClaims`] (its promise, the proposal it accepted and the value), gossiped
//! by IPAM broadcast and merged by taking the later proposal ids ([`Paxos::update`]). Each node
//! changes only its own claims, in [`Paxos::think`]:
//!
//! - it promises the highest proposal id it has seen;
//! - as the proposer of that promise, once a quorum of nodes promised it, it accepts the
//!   highest value previously accepted by any of them, or else the names of all nodes it
//!   knows (with its own proposal id as the value's origin);
//! - as an acceptor it accepts the value some node accepted under the proposal it promised.
//!
//! Consensus is reached when a quorum of nodes accepted values with the same origin
//! ([`Paxos::consensus`]). Node ids carry the process UID, so a restarted peer is a new node.
//! Proposal ids are ordered by round, then proposer name, then proposer UID.
//!
//! Sans-IO: the caller feeds received states to [`Paxos::update`], calls [`Paxos::think`]
//! with the current time (milliseconds since any epoch) and an RNG, and broadcasts
//! [`Paxos::gossip_state`] when `think` reports a change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::Rng;

use crate::ring::{normalize_peers, PeerName};

/// How long a proposer waits for consensus before proposing again with a higher round
/// (Weave re-proposes every 5 s until the ring exists); a random delay of up to half of it is
/// added so that competing proposers do not keep pre-empting each other.
pub const PROPOSAL_INTERVAL_MS: u64 = 5_000;

/// A participant: a peer name and the UID of its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId {
    /// The peer name.
    pub name: PeerName,
    /// The process UID (random per start).
    pub uid: u64,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.name, self.uid)
    }
}

/// A proposal id: ordered by round, then proposer (name, then UID). Round 0 means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ProposalId {
    /// The round number (0: no proposal).
    pub round: u64,
    /// The proposing node.
    pub proposer: NodeId,
}

impl ProposalId {
    /// True for a real proposal (round > 0).
    pub fn is_valid(&self) -> bool {
        self.round > 0
    }
}

/// An accepted value and the proposal under which it was first accepted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcceptedValue {
    /// The peers to create the ring for.
    pub value: Vec<PeerName>,
    /// The proposal that first chose this value.
    pub origin: ProposalId,
}

/// What one node has promised and accepted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeClaims {
    /// The node accepts no proposal below this one.
    pub promise: ProposalId,
    /// The proposal under which it accepted `accepted_val` (round 0: nothing accepted).
    pub accepted: ProposalId,
    /// The value it accepted.
    pub accepted_val: AcceptedValue,
}

/// The gossiped Paxos state: every known node's claims.
pub type GossipState = BTreeMap<NodeId, NodeClaims>;

/// Quorum for `--ipalloc-init=consensus=N`: `N/2 + 1`.
pub fn quorum_for_consensus(n: u32) -> u32 {
    n / 2 + 1
}

/// Quorum without an explicit N, from the number of initial connection targets (ourself
/// excluded): `(targets + 1)/2 + 1`.
pub fn quorum_for_targets(targets: usize) -> u32 {
    let total = u32::try_from(targets).unwrap_or(u32::MAX - 1) + 1;
    total / 2 + 1
}

/// A snapshot for status output ("awaiting consensus: quorum 2, known 1").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaxosStatus {
    /// True for an observer (takes no part).
    pub observer: bool,
    /// Nodes needed.
    pub quorum: u32,
    /// Nodes known (including us).
    pub known_nodes: usize,
    /// Whether we have proposed.
    pub proposing: bool,
    /// The largest number of nodes that accepted values of one origin.
    pub best_accepted: usize,
    /// True once a quorum accepted the same value.
    pub consensus: bool,
}

impl fmt::Display for PaxosStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.observer {
            write!(
                f,
                "observer: waiting for the IP allocation ring from other peers"
            )
        } else if self.consensus {
            write!(f, "consensus reached (quorum {})", self.quorum)
        } else {
            write!(
                f,
                "awaiting consensus: quorum {}, known {}",
                self.quorum, self.known_nodes
            )
        }
    }
}

/// One node's Paxos instance.
#[derive(Debug, Clone)]
pub struct Paxos {
    id: NodeId,
    quorum: u32,
    observer: bool,
    knows: GossipState,
    /// When to propose again if there is still no consensus; `None` before the first proposal.
    next_proposal: Option<u64>,
}

impl Paxos {
    /// A participant with the given quorum (at least 1).
    pub fn new(id: NodeId, quorum: u32) -> Paxos {
        let mut knows = GossipState::new();
        knows.insert(id, NodeClaims::default());
        Paxos {
            id,
            quorum: quorum.max(1),
            observer: false,
            knows,
            next_proposal: None,
        }
    }

    /// An observer (`--ipalloc-init=observer`): takes no part, ignores Paxos gossip, never
    /// reaches consensus; it waits for a ring from the others.
    pub fn observer(id: NodeId) -> Paxos {
        Paxos {
            id,
            quorum: 1,
            observer: true,
            knows: GossipState::new(),
            next_proposal: None,
        }
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The quorum.
    pub fn quorum(&self) -> u32 {
        self.quorum
    }

    /// True for an observer.
    pub fn is_observer(&self) -> bool {
        self.observer
    }

    /// True once we have proposed (consensus was asked for).
    pub fn is_proposing(&self) -> bool {
        self.next_proposal.is_some()
    }

    /// The state to gossip (empty for an observer).
    pub fn gossip_state(&self) -> &GossipState {
        &self.knows
    }

    /// Merges a received state, taking for each node the later promise and the later accepted
    /// proposal (with its value). Our own claims are ours alone. Returns whether we learnt
    /// anything (a new node, or a later promise or acceptance).
    pub fn update(&mut self, incoming: &GossipState) -> bool {
        if self.observer {
            return false;
        }
        let mut changed = false;
        for (id, claims) in incoming {
            if *id == self.id {
                continue;
            }
            let known = self.knows.entry(*id).or_insert_with(|| {
                changed = true;
                NodeClaims::default()
            });
            if claims.promise > known.promise {
                known.promise = claims.promise;
                changed = true;
            }
            if claims.accepted > known.accepted {
                known.accepted = claims.accepted;
                known.accepted_val = claims.accepted_val.clone();
                changed = true;
            }
        }
        changed
    }

    /// Starts a new round: a proposal with a round above every round we have seen. Called
    /// when an allocation first needs the ring, then again by [`Paxos::think`] every
    /// [`PROPOSAL_INTERVAL_MS`] (plus jitter) until consensus.
    pub fn propose<R: Rng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) {
        if self.observer {
            return;
        }
        let round = self
            .knows
            .values()
            .map(|c| c.promise.round.max(c.accepted.round))
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let id = self.id;
        let ours = self.knows.entry(id).or_default();
        ours.promise = ProposalId {
            round,
            proposer: id,
        };
        let jitter = rng.random_range(0..=PROPOSAL_INTERVAL_MS / 2);
        self.next_proposal = Some(now_ms.saturating_add(PROPOSAL_INTERVAL_MS + jitter));
    }

    /// Acts on what we know: promise, accept as proposer or acceptor, and propose again when
    /// the proposal interval has passed without consensus. Returns whether our claims changed
    /// (then broadcast [`Paxos::gossip_state`]).
    pub fn think<R: Rng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) -> bool {
        if self.observer {
            return false;
        }
        let before = self.knows.get(&self.id).cloned().unwrap_or_default();
        if self.consensus().is_none() && self.next_proposal.is_some_and(|t| now_ms >= t) {
            self.propose(now_ms, rng);
        }
        let mut ours = self.knows.get(&self.id).cloned().unwrap_or_default();

        // Promise the highest proposal seen.
        if let Some(max) = self.knows.values().map(|c| c.promise).max() {
            if max > ours.promise {
                ours.promise = max;
            }
        }

        if ours.promise.is_valid() && ours.accepted != ours.promise {
            if ours.promise.proposer == self.id {
                // Our proposal: accept once a quorum promised it.
                let promisers: Vec<&NodeClaims> = self
                    .knows
                    .iter()
                    .map(|(id, c)| if *id == self.id { &ours } else { c })
                    .filter(|c| c.promise == ours.promise)
                    .collect();
                if promisers.len() >= self.quorum as usize {
                    let highest = promisers
                        .iter()
                        .filter(|c| c.accepted.is_valid())
                        .max_by_key(|c| c.accepted)
                        .map(|c| c.accepted_val.clone());
                    ours.accepted_val = highest.unwrap_or_else(|| AcceptedValue {
                        value: self.known_names(),
                        origin: ours.promise,
                    });
                    ours.accepted = ours.promise;
                }
            } else if let Some(val) = self
                .knows
                .values()
                .find(|c| c.accepted == ours.promise)
                .map(|c| c.accepted_val.clone())
            {
                // The proposal we promised has a value: accept it.
                ours.accepted = ours.promise;
                ours.accepted_val = val;
            }
        }

        let changed = ours != before;
        self.knows.insert(self.id, ours);
        changed
    }

    /// The names of all nodes we know, sorted.
    fn known_names(&self) -> Vec<PeerName> {
        let names: BTreeSet<PeerName> = self.knows.keys().map(|id| id.name).collect();
        names.into_iter().collect()
    }

    /// Counts, per origin, the nodes that accepted a value of that origin; the best one.
    fn best_origin(&self) -> Option<(usize, &AcceptedValue)> {
        let mut counts: BTreeMap<ProposalId, (usize, &AcceptedValue)> = BTreeMap::new();
        for c in self.knows.values().filter(|c| c.accepted.is_valid()) {
            counts
                .entry(c.accepted_val.origin)
                .or_insert((0, &c.accepted_val))
                .0 += 1;
        }
        counts.into_values().max_by_key(|(n, _)| *n)
    }

    /// The agreed peers (sorted, de-duplicated) once a quorum accepted values of one origin.
    pub fn consensus(&self) -> Option<Vec<PeerName>> {
        if self.observer {
            return None;
        }
        match self.best_origin() {
            Some((n, val)) if n >= self.quorum as usize => Some(normalize_peers(&val.value)),
            _ => None,
        }
    }

    /// Status for `weft status ipam`.
    pub fn status(&self) -> PaxosStatus {
        PaxosStatus {
            observer: self.observer,
            quorum: self.quorum,
            known_nodes: self.knows.len(),
            proposing: self.is_proposing(),
            best_accepted: self.best_origin().map_or(0, |(n, _)| n),
            consensus: self.consensus().is_some(),
        }
    }
}
