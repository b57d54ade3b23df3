//! The ring-aware allocator core (sans-IO): allocation from the ranges this peer owns, space
//! requests and donation between peers, claims of specific addresses, the initial ring
//! (consensus, seed or observer) and gossip handling (`weave-net-internals.md` §5.3–5.5, 5.8).
//!
//! [`Allocator`] holds the ring, the local [`Space`] (always the ranges the ring says we own),
//! the [`Owned`] map and the Paxos instance. It performs no I/O: every entry point returns
//! [`Action`]s for the driver (broadcast or unicast a message, report a finished operation,
//! persist the ring or an owned record), and takes the current time and an RNG as parameters.
//!
//! Allocation that cannot be served at once (no ring yet, or no free space here) stays pending
//! and is retried on every ring change and every [`Allocator::tick`] (Weave: 5 s); when we have
//! no free space a space request goes to a donor chosen by
//! [`Ring::choose_peers_to_ask_for_space`]. As in Weave, a pending allocation only ends when
//! space is found or the driver cancels it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::Rng;

use crate::address::{from_ipv4, to_ipv4, Address, CidrExt, Range};
use crate::gossip::{GossipState, Unicast};
use crate::owned::{Owned, OwnedData};
use crate::paxos::{NodeId, Paxos, PaxosStatus};
use crate::ring::{normalize_peers, MergeError, PeerName, Ring, RingError};
use crate::space::Space;

/// Identifies a pending operation; chosen by the driver.
pub type OpId = u64;

/// Retry interval of pending operations and Paxos proposals (Weave's 5 s tick).
pub const TICK_INTERVAL_MS: u64 = 5_000;

/// How the first ring is made (`--ipalloc-init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitMode {
    /// `consensus[=N]`: Paxos among the peers with this quorum.
    Consensus {
        /// The quorum.
        quorum: u32,
    },
    /// `seed=a,b,c`: the ring is created from this list at once.
    Seed(Vec<PeerName>),
    /// `observer`: wait for a ring from the others.
    Observer,
}

/// Configuration of an [`Allocator`].
#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    /// This peer's name.
    pub peer: PeerName,
    /// This process's UID (random per start, never 0).
    pub uid: u64,
    /// This peer's nickname.
    pub nickname: String,
    /// The allocation range (`--ipalloc-range`).
    pub universe: Ipv4Net,
    /// The default subnet (`--ipalloc-default-subnet`).
    pub default_subnet: Ipv4Net,
    /// How the first ring is made.
    pub init: InitMode,
}

/// Errors of the allocator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The allocation range cannot be used.
    #[error("invalid allocation range {0}: it must not include 255.255.255.255")]
    InvalidUniverse(Ipv4Net),
    /// The subnet has no address in the allocation range.
    #[error(
        "subnet {subnet} is outside the allocation range {universe}; \
         ask for a subnet inside {universe}"
    )]
    SubnetOutsideUniverse {
        /// The subnet.
        subnet: Ipv4Net,
        /// The allocation range.
        universe: Ipv4Net,
    },
    /// The address is held by another identifier.
    #[error("address {addr} is already owned by {owner}")]
    AlreadyOwned {
        /// The address.
        addr: Ipv4Addr,
        /// Its holder.
        owner: String,
    },
    /// The peer owning a claimed address refused to give it.
    #[error(
        "address {addr} is owned by peer {owner}, which refused to give it; \
         release it there first"
    )]
    ClaimDenied {
        /// The address.
        addr: Ipv4Addr,
        /// Its owner.
        owner: PeerName,
    },
    /// `release` of an identifier holding nothing.
    #[error("Delete: no addresses for {0}")]
    NoAddresses(String),
    /// The operation was cancelled by the driver.
    #[error("operation cancelled")]
    Cancelled,
    /// A received ring could not be merged (the driver drops the connection).
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// A ring operation failed.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Gossip-broadcast this state (IPAM channel).
    Broadcast(Box<GossipState>),
    /// Gossip-unicast this message to a peer.
    Send {
        /// The destination.
        to: PeerName,
        /// The message.
        msg: Unicast,
    },
    /// A pending operation finished.
    Completed {
        /// The operation.
        op: OpId,
        /// Its result.
        result: Result<Ipv4Net, AllocError>,
    },
    /// The ring changed: persist it.
    PersistRing,
    /// An identifier's addresses changed: persist its record (empty: delete it).
    PersistOwned {
        /// The identifier.
        id: String,
        /// Its record.
        data: OwnedData,
    },
}

/// The answer to an allocation or claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done at once.
    Done(Ipv4Net),
    /// Pending: an [`Action::Completed`] with the same [`OpId`] follows.
    Pending,
}

/// A pending operation, as listed by [`Allocator::pending_ops`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingOp {
    /// The operation.
    pub op: OpId,
    /// The identifier it is for.
    pub id: String,
    /// True for a claim of a specific address, false for an allocation.
    pub claim: bool,
    /// The subnet to allocate in, or the claimed address with its prefix length.
    pub net: Ipv4Net,
}

#[derive(Debug, Clone)]
enum PendingKind {
    Allocate { subnet: Ipv4Net },
    Claim { cidr: Ipv4Net },
}

#[derive(Debug, Clone)]
struct Pending {
    op: OpId,
    id: String,
    is_container: bool,
    kind: PendingKind,
    /// When we last sent a space request for it.
    asked_at: Option<u64>,
    /// Donors that denied it since the current round of requests began: not asked again
    /// until the next round ([`TICK_INTERVAL_MS`] later), so that stale free counts in the
    /// ring cannot make it ping-pong with them at network speed.
    denied_by: Vec<PeerName>,
    /// The donor asked last (whose denial lets it ask another one at once).
    asked_donor: Option<PeerName>,
}

/// IPAM status for `weft status ipam`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatorStatus {
    /// Whether the ring exists.
    pub ring_ready: bool,
    /// The consensus state while there is no ring.
    pub paxos: PaxosStatus,
    /// Addresses this peer owns.
    pub owned: u64,
    /// Addresses this peer has allocated.
    pub allocated: u64,
    /// Operations waiting.
    pub pending: usize,
}

/// The ring-aware allocator of one peer.
#[derive(Debug)]
pub struct Allocator {
    us: PeerName,
    nickname: String,
    universe_net: Ipv4Net,
    universe: Range,
    default_subnet: Ipv4Net,
    init: InitMode,
    ring: Ring,
    space: Space,
    owned: Owned,
    paxos: Paxos,
    nicknames: BTreeMap<PeerName, String>,
    pending: Vec<Pending>,
    now_ms: u64,
    /// Peers we have a route to; `None`: unknown, every peer is assumed reachable.
    reachable: Option<BTreeSet<PeerName>>,
}

impl Allocator {
    /// A fresh allocator: an empty ring, or with `InitMode::Seed` the seeded ring.
    pub fn new(config: AllocatorConfig) -> Result<Allocator, AllocError> {
        let universe_net = config.universe.trunc();
        let universe = universe_net
            .addr_range()
            .map_err(|_| AllocError::InvalidUniverse(universe_net))?;
        let default_subnet = config.default_subnet.trunc();
        if !default_subnet.overlaps_net(&universe_net) {
            return Err(AllocError::SubnetOutsideUniverse {
                subnet: default_subnet,
                universe: universe_net,
            });
        }
        let id = NodeId {
            name: config.peer,
            uid: config.uid,
        };
        let paxos = match &config.init {
            InitMode::Consensus { quorum } => Paxos::new(id, *quorum),
            InitMode::Seed(_) | InitMode::Observer => Paxos::observer(id),
        };
        let mut nicknames = BTreeMap::new();
        nicknames.insert(config.peer, config.nickname.clone());
        let mut alloc = Allocator {
            us: config.peer,
            nickname: config.nickname,
            universe_net,
            universe,
            default_subnet,
            ring: Ring::new(universe, config.peer)?,
            space: Space::new(),
            owned: Owned::new(),
            paxos,
            init: config.init,
            nicknames,
            pending: Vec::new(),
            now_ms: 0,
            reachable: None,
        };
        // A seeded ring exists from the start (persisted data, if any, replaces it).
        if let InitMode::Seed(peers) = &alloc.init {
            let peers = normalize_peers(peers);
            alloc.ring.claim_for_peers(&peers)?;
            alloc.sync_space();
        }
        Ok(alloc)
    }

    /// Restores a persisted ring (checked) and owned records, as Weave's `loadPersistedData`.
    /// Records outside the ranges we own are kept for their ids but not claimed in the space.
    pub fn restore(
        &mut self,
        ring: Ring,
        owned: BTreeMap<String, OwnedData>,
    ) -> Result<Vec<Action>, AllocError> {
        ring.check_invariants().map_err(RingError::from)?;
        if ring.universe() != self.universe {
            return Err(RingError::BadRange {
                range: ring.universe(),
                universe: self.universe,
            }
            .into());
        }
        self.ring = ring;
        self.ring.set_peer(self.us);
        self.space = Space::new();
        self.sync_space();
        for (id, data) in owned {
            for cidr in data.cidrs {
                let addr = from_ipv4(cidr.addr());
                if self.owned.add(&id, cidr, data.is_container).is_ok() && self.space.is_owned(addr)
                {
                    let _ = self.space.claim(addr);
                }
            }
        }
        Ok(Vec::new())
    }

    /// This peer's name.
    pub fn peer(&self) -> PeerName {
        self.us
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The local space.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// The owned addresses.
    pub fn owned(&self) -> &Owned {
        &self.owned
    }

    /// Known nicknames.
    pub fn nicknames(&self) -> &BTreeMap<PeerName, String> {
        &self.nicknames
    }

    /// Status.
    pub fn status(&self) -> AllocatorStatus {
        AllocatorStatus {
            ring_ready: !self.ring.is_empty(),
            paxos: self.paxos.status(),
            owned: self.space.num_owned(),
            allocated: self.space.num_allocated(),
            pending: self.pending.len(),
        }
    }

    /// The state to gossip: nicknames, and the ring once it exists, else the Paxos state.
    /// Refreshes our free counts in the ring first.
    pub fn gossip_state(&mut self, unix_now: i64) -> GossipState {
        let space = &self.space;
        self.ring.update_free(|r| space.num_free_in(r));
        GossipState {
            now: unix_now,
            nicknames: self.nicknames.clone(),
            paxos: if self.ring.is_empty() {
                self.paxos.gossip_state().clone()
            } else {
                Default::default()
            },
            ring: (!self.ring.is_empty()).then(|| self.ring.clone()),
        }
    }

    fn broadcast(&mut self) -> Action {
        Action::Broadcast(Box::new(self.gossip_state(0)))
    }

    /// Allocates an address for `id` in `subnet` (the default subnet when `None`). Idempotent:
    /// an address `id` already holds in the subnet is returned.
    pub fn allocate<R: Rng + ?Sized>(
        &mut self,
        op: OpId,
        id: &str,
        subnet: Option<Ipv4Net>,
        is_container: bool,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(Outcome, Vec<Action>), AllocError> {
        self.now_ms = now_ms;
        let subnet = subnet.unwrap_or(self.default_subnet).trunc();
        if let Some(existing) = self.owned.find_in_subnet(id, &subnet) {
            return Ok((Outcome::Done(existing), Vec::new()));
        }
        if !subnet.overlaps_net(&self.universe_net) {
            return Err(AllocError::SubnetOutsideUniverse {
                subnet,
                universe: self.universe_net,
            });
        }
        let mut actions = Vec::new();
        if let Some(cidr) = self.try_allocate(id, subnet, is_container, &mut actions) {
            return Ok((Outcome::Done(cidr), actions));
        }
        self.pending.push(Pending {
            op,
            id: id.to_string(),
            is_container,
            kind: PendingKind::Allocate { subnet },
            asked_at: None,
            denied_by: Vec::new(),
            asked_donor: None,
        });
        self.establish_ring(now_ms, rng, &mut actions);
        self.run_pending(rng, &mut actions);
        Ok((Outcome::Pending, actions))
    }

    /// Claims a specific address for `id` (`PUT /ip/{id}/{ip}/{prefixlen}`): recorded at once
    /// when outside the universe or ours; asked from its owner otherwise.
    pub fn claim<R: Rng + ?Sized>(
        &mut self,
        op: OpId,
        id: &str,
        cidr: Ipv4Net,
        is_container: bool,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(Outcome, Vec<Action>), AllocError> {
        self.now_ms = now_ms;
        if let Some(holder) = self.owned.find_by_addr(cidr.addr()) {
            if holder != id {
                return Err(AllocError::AlreadyOwned {
                    addr: cidr.addr(),
                    owner: holder.to_string(),
                });
            }
            return Ok((Outcome::Done(cidr), Vec::new()));
        }
        let mut actions = Vec::new();
        let addr = from_ipv4(cidr.addr());
        if !self.universe.contains(addr) {
            self.record(id, cidr, is_container, &mut actions)?;
            return Ok((Outcome::Done(cidr), actions));
        }
        self.pending.push(Pending {
            op,
            id: id.to_string(),
            is_container,
            kind: PendingKind::Claim { cidr },
            asked_at: None,
            denied_by: Vec::new(),
            asked_donor: None,
        });
        self.establish_ring(now_ms, rng, &mut actions);
        self.run_pending(rng, &mut actions);
        // run_pending completes it at once when it could.
        let done = actions.iter().find_map(|a| match a {
            Action::Completed { op: o, result } if *o == op => Some(result.clone()),
            _ => None,
        });
        match done {
            Some(result) => {
                actions.retain(|a| !matches!(a, Action::Completed { op: o, .. } if *o == op));
                result.map(|c| (Outcome::Done(c), actions))
            }
            None => Ok((Outcome::Pending, actions)),
        }
    }

    /// Frees every address of `id`; returns them.
    pub fn release(&mut self, id: &str) -> Result<(Vec<Ipv4Net>, Vec<Action>), AllocError> {
        let data = self
            .owned
            .remove(id)
            .ok_or_else(|| AllocError::NoAddresses(id.to_string()))?;
        for cidr in &data.cidrs {
            let addr = from_ipv4(cidr.addr());
            if self.space.is_allocated(addr) {
                let _ = self.space.free(addr);
            }
        }
        let actions = vec![Action::PersistOwned {
            id: id.to_string(),
            data: OwnedData::default(),
        }];
        Ok((data.cidrs, actions))
    }

    /// Cancels a pending operation (the HTTP request went away).
    pub fn cancel(&mut self, op: OpId) -> Vec<Action> {
        let before = self.pending.len();
        self.pending.retain(|p| p.op != op);
        if self.pending.len() == before {
            return Vec::new();
        }
        vec![Action::Completed {
            op,
            result: Err(AllocError::Cancelled),
        }]
    }

    /// The periodic tick: propose again while waiting for consensus, retry pending operations
    /// (asking a donor again).
    pub fn tick<R: Rng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut actions = Vec::new();
        if self.ring.is_empty() {
            let changed = self.paxos.think(now_ms, rng);
            self.after_paxos(changed, &mut actions);
        }
        self.run_pending(rng, &mut actions);
        actions
    }

    /// `rmpeer`: takes over every range of `peer`. Returns the number of addresses taken over.
    pub fn admin_takeover<R: Rng + ?Sized>(
        &mut self,
        peer: PeerName,
        rng: &mut R,
    ) -> (u64, Vec<Action>) {
        let ranges = self.ring.transfer(peer, self.us);
        let mut actions = Vec::new();
        if ranges.is_empty() {
            return (0, actions);
        }
        self.sync_space();
        self.nicknames.remove(&peer);
        actions.push(Action::PersistRing);
        actions.push(self.broadcast());
        self.run_pending(rng, &mut actions);
        (ranges.iter().map(Range::size).sum(), actions)
    }

    /// Shutdown (`weft reset`): gives all our ranges to `heir` and cancels pending operations.
    pub fn shutdown(&mut self, heir: PeerName) -> Vec<Action> {
        let mut actions: Vec<Action> = self
            .pending
            .drain(..)
            .map(|p| Action::Completed {
                op: p.op,
                result: Err(AllocError::Cancelled),
            })
            .collect();
        if heir != self.us && !self.ring.transfer(self.us, heir).is_empty() {
            self.space = Space::new();
            actions.push(Action::PersistRing);
            actions.push(self.broadcast());
        }
        actions
    }

    /// Chooses the heir for [`Allocator::shutdown`]: a peer with ring entries among
    /// `live_peers`, else any live peer, else any ring peer.
    pub fn choose_heir(&self, live_peers: &[PeerName]) -> Option<PeerName> {
        let others = |p: &&PeerName| **p != self.us;
        let ring_peers = self.ring.peers();
        live_peers
            .iter()
            .filter(others)
            .find(|p| ring_peers.contains(p))
            .or_else(|| live_peers.iter().find(others))
            .or_else(|| ring_peers.iter().find(others))
            .copied()
    }

    /// A gossip or broadcast received from `from` (Weave's `OnGossip`/`OnGossipBroadcast`).
    /// A merge error must drop the connection it came from.
    pub fn on_gossip<R: Rng + ?Sized>(
        &mut self,
        from: PeerName,
        state: &GossipState,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, AllocError> {
        self.now_ms = now_ms;
        let mut actions = Vec::new();
        for (peer, nick) in &state.nicknames {
            if *peer != self.us {
                self.nicknames.insert(*peer, nick.clone());
            }
        }
        if let Some(ring) = &state.ring {
            // Also for an empty ring: a different range or seeds is an error.
            if self.ring.merge(ring, &self.space)? {
                self.after_ring_change(&mut actions);
            }
        }
        let has_ring = state.ring.as_ref().is_some_and(|r| !r.is_empty());
        if !has_ring {
            if !self.ring.is_empty() {
                // A newcomer, an observer, or a peer still looking for consensus: send it
                // our ring.
                if from != self.us {
                    actions.push(Action::Send {
                        to: from,
                        msg: Unicast::RingUpdate(Box::new(self.gossip_state(0))),
                    });
                }
            } else if !state.paxos.is_empty() {
                self.paxos.update(&state.paxos);
                let changed = self.paxos.think(now_ms, rng);
                self.after_paxos(changed, &mut actions);
            }
        }
        self.run_pending(rng, &mut actions);
        Ok(actions)
    }

    /// A unicast message from `from`.
    pub fn on_unicast<R: Rng + ?Sized>(
        &mut self,
        from: PeerName,
        msg: &Unicast,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, AllocError> {
        self.now_ms = now_ms;
        match msg {
            Unicast::SpaceRequest(range) => Ok(self.donate(from, *range)),
            Unicast::RingUpdate(state) => self.on_gossip(from, state, now_ms, rng),
            Unicast::SpaceRequestDenied(range) => {
                let mut actions = Vec::new();
                let (us, ring) = (self.us, &self.ring);
                self.pending.retain_mut(|p| match p.kind {
                    PendingKind::Claim { cidr } if range.contains(from_ipv4(cidr.addr())) => {
                        if ring.owner_of(from_ipv4(cidr.addr())) == Some(us) {
                            // An earlier request was granted meanwhile.
                            return true;
                        }
                        actions.push(Action::Completed {
                            op: p.op,
                            result: Err(AllocError::ClaimDenied {
                                addr: cidr.addr(),
                                owner: from,
                            }),
                        });
                        false
                    }
                    PendingKind::Allocate { subnet } => {
                        // That donor has nothing: not again in this round. If it is the one
                        // this operation is waiting for, ask another at once (a denial of
                        // another operation's request must not restart this one's round).
                        if subnet.overlaps_range(range) {
                            if !p.denied_by.contains(&from) {
                                p.denied_by.push(from);
                            }
                            if p.asked_donor == Some(from) {
                                p.asked_at = None;
                                p.asked_donor = None;
                            }
                        }
                        true
                    }
                    _ => true,
                });
                self.run_pending(rng, &mut actions);
                Ok(actions)
            }
        }
    }

    /// Donation (Weave's `donateSpace`): half of our biggest free CIDR block in `range` (or
    /// the whole block when it is at most half our free space there) goes to `to`.
    fn donate(&mut self, to: PeerName, range: Range) -> Vec<Action> {
        let mut actions = Vec::new();
        let range = range.intersect(&self.universe);
        let chunk = if self.ring.is_empty() || to == self.us || range.is_empty() {
            None
        } else {
            self.space.donate(range)
        };
        if let Some(chunk) = chunk {
            match self.ring.grant_range_to_host(chunk, to) {
                Ok(()) => {
                    let space = &self.space;
                    self.ring.update_free(|r| space.num_free_in(r));
                    actions.push(Action::PersistRing);
                    actions.push(self.broadcast());
                }
                Err(_) => {
                    // Cannot happen (the space only holds what the ring gives us); undo.
                    let _ = self.space.add(chunk);
                }
            }
        }
        let state = self.gossip_state(0);
        actions.push(Action::Send {
            to,
            msg: Unicast::RingUpdate(Box::new(state)),
        });
        // Nothing to give: deny, unless the asker already has all of it (an earlier request
        // was granted and our answer is on its way).
        let has_it = self
            .ring
            .owned_ranges(to)
            .iter()
            .any(|r| r.contains_range(&range));
        if chunk.is_none() && !has_it {
            actions.push(Action::Send {
                to,
                msg: Unicast::SpaceRequestDenied(range),
            });
        }
        actions
    }

    /// Creates the ring if needed and possible: from the seed list at once, or by proposing.
    fn establish_ring<R: Rng + ?Sized>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
        actions: &mut Vec<Action>,
    ) {
        if !self.ring.is_empty() {
            return;
        }
        match &self.init {
            InitMode::Seed(peers) => {
                let peers = normalize_peers(peers);
                if self.ring.claim_for_peers(&peers).is_ok() {
                    self.after_ring_change(actions);
                    actions.push(self.broadcast());
                }
            }
            InitMode::Consensus { .. } => {
                if !self.paxos.is_proposing() {
                    self.paxos.propose(now_ms, rng);
                    self.paxos.think(now_ms, rng);
                    self.after_paxos(true, actions);
                }
            }
            InitMode::Observer => {}
        }
    }

    /// After Paxos news: create the ring on consensus (and broadcast it); otherwise broadcast
    /// our claims if they `changed`.
    fn after_paxos(&mut self, changed: bool, actions: &mut Vec<Action>) {
        let mut created = false;
        if let Some(peers) = self.paxos.consensus() {
            if self.ring.is_empty() && self.ring.claim_for_peers(&peers).is_ok() {
                self.after_ring_change(actions);
                created = true;
            }
        }
        if changed || created {
            actions.push(self.broadcast());
        }
    }

    fn after_ring_change(&mut self, actions: &mut Vec<Action>) {
        self.sync_space();
        actions.push(Action::PersistRing);
    }

    /// Makes the space own exactly what the ring says we own (new ranges free; lost ranges
    /// were free, or the merge would have refused them).
    fn sync_space(&mut self) {
        let want = coalesce(self.ring.owned_ranges(self.us));
        let have = self.space.owned_ranges().to_vec();
        for r in subtract(&want, &have) {
            if self.space.add(r).is_ok() {
                // Addresses recorded for an identifier inside a range we (re)gain stay taken
                // (e.g. restored records whose range the persisted ring did not give us yet).
                let held: Vec<Address> = self
                    .owned
                    .iter()
                    .flat_map(|(_, d)| d.cidrs.iter().map(|c| from_ipv4(c.addr())))
                    .filter(|a| r.contains(*a))
                    .collect();
                for a in held {
                    let _ = self.space.claim(a);
                }
            }
        }
        for r in subtract(&have, &want) {
            let _ = self.space.remove_free(r);
        }
    }

    fn record(
        &mut self,
        id: &str,
        cidr: Ipv4Net,
        is_container: bool,
        actions: &mut Vec<Action>,
    ) -> Result<(), AllocError> {
        self.owned
            .add(id, cidr, is_container)
            .map_err(|e| match e {
                crate::owned::OwnedError::HeldByOther { addr, owner } => {
                    AllocError::AlreadyOwned { addr, owner }
                }
            })?;
        let data = self.owned.get(id).cloned().unwrap_or_default();
        actions.push(Action::PersistOwned {
            id: id.to_string(),
            data,
        });
        Ok(())
    }

    /// Allocates from our space if it has a free address in the subnet.
    fn try_allocate(
        &mut self,
        id: &str,
        subnet: Ipv4Net,
        is_container: bool,
        actions: &mut Vec<Action>,
    ) -> Option<Ipv4Net> {
        let addr = self.space.allocate(subnet.host_range())?;
        let cidr = Ipv4Net::new(to_ipv4(addr), subnet.prefix_len()).ok()?;
        if self.record(id, cidr, is_container, actions).is_err() {
            let _ = self.space.free(addr);
            return None;
        }
        Some(cidr)
    }

    /// Whether a space request may be sent for `p` now: once per [`TICK_INTERVAL_MS`].
    fn may_ask(&self, p: &Pending) -> bool {
        p.asked_at
            .is_none_or(|t| self.now_ms.saturating_sub(t) >= TICK_INTERVAL_MS)
    }

    /// Retries every pending operation; asks donors for what is still missing.
    fn run_pending<R: Rng + ?Sized>(&mut self, rng: &mut R, actions: &mut Vec<Action>) {
        if self.ring.is_empty() || self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut asked: Vec<(PeerName, Range)> = Vec::new();
        for p in pending {
            match p.kind {
                PendingKind::Allocate { subnet } => {
                    if let Some(existing) = self.owned.find_in_subnet(&p.id, &subnet) {
                        actions.push(Action::Completed {
                            op: p.op,
                            result: Ok(existing),
                        });
                        continue;
                    }
                    if let Some(cidr) = self.try_allocate(&p.id, subnet, p.is_container, actions) {
                        actions.push(Action::Completed {
                            op: p.op,
                            result: Ok(cidr),
                        });
                        continue;
                    }
                    // Only the subnet's host addresses: its network and broadcast addresses
                    // are never handed out, so asking for them would move them from peer to
                    // peer forever.
                    let range = subnet.host_range().intersect(&self.universe);
                    let mut p = p;
                    if self.may_ask(&p) && !asked.iter().any(|(_, r)| *r == range) {
                        if p.asked_at.is_some() {
                            // A new round: every donor may be asked again.
                            p.denied_by.clear();
                        }
                        let donors = self.ring.choose_peers_to_ask_for_space(range, rng);
                        let donor = donors
                            .iter()
                            .find(|d| self.is_reachable(**d) && !p.denied_by.contains(d));
                        if let Some(&donor) = donor {
                            asked.push((donor, range));
                            p.asked_at = Some(self.now_ms);
                            p.asked_donor = Some(donor);
                            actions.push(Action::Send {
                                to: donor,
                                msg: Unicast::SpaceRequest(range),
                            });
                        } else if !p.denied_by.is_empty() {
                            // Every candidate denied us this round: wait for the next one.
                            p.denied_by.clear();
                            p.asked_at = Some(self.now_ms);
                        }
                    }
                    self.pending.push(p);
                }
                PendingKind::Claim { cidr } => {
                    let addr = from_ipv4(cidr.addr());
                    match self.ring.owner_of(addr) {
                        Some(owner) if owner == self.us => {
                            let result = match self.space.claim(addr) {
                                Ok(()) => self
                                    .record(&p.id, cidr, p.is_container, actions)
                                    .map(|()| cidr)
                                    .inspect_err(|_| {
                                        let _ = self.space.free(addr);
                                    }),
                                Err(_) => Err(AllocError::AlreadyOwned {
                                    addr: cidr.addr(),
                                    owner: self
                                        .owned
                                        .find_by_addr(cidr.addr())
                                        .unwrap_or("another identifier")
                                        .to_string(),
                                }),
                            };
                            actions.push(Action::Completed { op: p.op, result });
                        }
                        Some(owner) => {
                            let mut p = p;
                            if self.may_ask(&p) {
                                p.asked_at = Some(self.now_ms);
                                let single = Range::new(addr, addr.saturating_add(1));
                                actions.push(Action::Send {
                                    to: owner,
                                    msg: Unicast::SpaceRequest(single),
                                });
                            }
                            self.pending.push(p);
                        }
                        None => self.pending.push(p),
                    }
                }
            }
        }
    }

    /// Starts creating the ring if there is none yet (Weave's "prime", `GET /ring`): with a
    /// seed list the ring is created at once, in consensus mode we propose.
    pub fn prime<R: Rng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut actions = Vec::new();
        self.establish_ring(now_ms, rng, &mut actions);
        actions
    }

    /// Frees one address of `id` (`DELETE /ip/{id}/{ip}`). `None` when `id` does not hold
    /// `addr`; otherwise the action persisting `id`'s remaining record.
    pub fn release_addr(&mut self, id: &str, addr: Ipv4Addr) -> Option<Vec<Action>> {
        self.owned.remove_addr(id, addr)?;
        let a = from_ipv4(addr);
        if self.space.is_allocated(a) {
            let _ = self.space.free(a);
        }
        Some(vec![Action::PersistOwned {
            id: id.to_string(),
            data: self.owned.get(id).cloned().unwrap_or_default(),
        }])
    }

    /// Sets the peers we can reach (from the mesh's routes); space requests go only to them.
    /// `None` (the default) assumes every peer reachable.
    pub fn set_reachable(&mut self, reachable: Option<BTreeSet<PeerName>>) {
        self.reachable = reachable;
    }

    /// Whether `peer` is us or reachable (see [`Allocator::set_reachable`]).
    pub fn is_reachable(&self, peer: PeerName) -> bool {
        peer == self.us || self.reachable.as_ref().is_none_or(|r| r.contains(&peer))
    }

    /// The pending operations, oldest first.
    pub fn pending_ops(&self) -> Vec<PendingOp> {
        self.pending
            .iter()
            .map(|p| PendingOp {
                op: p.op,
                id: p.id.clone(),
                claim: matches!(p.kind, PendingKind::Claim { .. }),
                net: match p.kind {
                    PendingKind::Allocate { subnet } => subnet,
                    PendingKind::Claim { cidr } => cidr,
                },
            })
            .collect()
    }

    /// The allocation range (`--ipalloc-range`).
    pub fn universe(&self) -> Ipv4Net {
        self.universe_net
    }

    /// The default subnet (`--ipalloc-default-subnet`).
    pub fn default_subnet(&self) -> Ipv4Net {
        self.default_subnet
    }

    /// How the first ring is made (`--ipalloc-init`).
    pub fn init_mode(&self) -> &InitMode {
        &self.init
    }

    /// The nickname of this peer.
    pub fn nickname(&self) -> &str {
        &self.nickname
    }

    /// Owner of an address according to our ring.
    pub fn owner_of(&self, addr: Address) -> Option<PeerName> {
        self.ring.owner_of(addr)
    }
}

/// Merges adjacent/overlapping ranges of a sorted list.
fn coalesce(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges.into_iter().filter(|r| !r.is_empty()) {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The parts of `a` not covered by `b` (both sorted and disjoint).
fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let mut cur = r.start;
        while j < b.len() && b[j].end <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < r.end {
            match b.get(k) {
                Some(x) if x.start < r.end => {
                    if x.start > cur {
                        out.push(Range::new(cur, x.start));
                    }
                    cur = cur.max(x.end);
                    k += 1;
                }
                _ => {
                    out.push(Range::new(cur, r.end));
                    cur = r.end;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_set_helpers() {
        let r = |a, b| Range::new(a, b);
        assert_eq!(
            coalesce(vec![r(5, 7), r(0, 2), r(2, 4), r(6, 9)]),
            vec![r(0, 4), r(5, 9)]
        );
        assert_eq!(
            subtract(&[r(0, 10), r(20, 30)], &[r(2, 3), r(5, 22), r(25, 26)]),
            vec![r(0, 2), r(3, 5), r(22, 25), r(26, 30)]
        );
        assert_eq!(subtract(&[r(0, 10)], &[]), vec![r(0, 10)]);
        assert!(subtract(&[r(0, 10)], &[r(0, 10)]).is_empty());
        assert_eq!(subtract(&[r(5, 10)], &[r(0, 6)]), vec![r(6, 10)]);
    }

    /// Regression (found by the 50-peer random simulation): space requests asked for the
    /// subnet's network and broadcast addresses, which are never handed out, so a peer holding
    /// only those as free space donated them, the receiver asked again, and a denial made the
    /// asker retry at once: near-exhaustion turned into a request storm at network speed.
    #[test]
    fn space_requests_skip_unusable_addresses_and_denials_wait_for_the_next_round() {
        use rand::rngs::StdRng;
        use rand::SeedableRng;
        let universe: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let peers = [
            PeerName::new(0x0200_0000_0001).unwrap(),
            PeerName::new(0x0200_0000_0002).unwrap(),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut nodes: Vec<Allocator> = peers
            .iter()
            .enumerate()
            .map(|(i, &peer)| {
                Allocator::new(AllocatorConfig {
                    peer,
                    uid: i as u64 + 1,
                    nickname: format!("n{i}"),
                    universe,
                    default_subnet: universe,
                    init: InitMode::Seed(peers.to_vec()),
                })
                .unwrap()
            })
            .collect();
        let host = universe.host_range();
        let broadcast = from_ipv4("10.0.0.7".parse().unwrap());
        let x = usize::from(nodes[0].ring.owner_of(broadcast) != Some(peers[0]));
        let y = 1 - x;
        // Make the ring exist on both (seeded), then fill X: only its broadcast address is
        // left free.
        let mut op = 0;
        for (i, node) in nodes.iter_mut().enumerate() {
            op += 1;
            let _ = node
                .allocate(op, &format!("init{i}"), None, true, 0, &mut rng)
                .unwrap();
        }
        assert_eq!(nodes[x].ring.owner_of(broadcast), Some(peers[x]));
        while nodes[x].space.num_free_in(host) > 0 {
            op += 1;
            let (out, _) = nodes[x]
                .allocate(op, &format!("x{op}"), None, true, 0, &mut rng)
                .unwrap();
            assert!(matches!(out, Outcome::Done(_)));
        }
        assert_eq!(
            nodes[x].space.num_free_in(nodes[x].space.owned_ranges()[0]),
            1
        );
        // Y runs out and asks X, for host addresses only.
        let mut request = None;
        while request.is_none() {
            op += 1;
            let (out, actions) = nodes[y]
                .allocate(op, &format!("y{op}"), None, true, 0, &mut rng)
                .unwrap();
            request = actions.into_iter().find_map(|a| match a {
                Action::Send { to, msg } if to == peers[x] => Some(msg),
                _ => None,
            });
            if request.is_none() {
                assert!(matches!(out, Outcome::Done(_)));
            }
        }
        let request = request.unwrap();
        assert_eq!(request, Unicast::SpaceRequest(host));
        // X has nothing usable to give: denied, the broadcast address stays with X.
        let replies = nodes[x]
            .on_unicast(peers[y], &request, 10, &mut rng)
            .unwrap();
        assert!(replies.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: Unicast::SpaceRequestDenied(_),
                ..
            }
        )));
        assert_eq!(nodes[x].ring.owner_of(broadcast), Some(peers[x]));
        // Y does not ask X again before the next round, whatever its ring says.
        for a in replies {
            if let Action::Send { msg, .. } = a {
                let again = nodes[y].on_unicast(peers[x], &msg, 20, &mut rng).unwrap();
                assert!(
                    !again.iter().any(|a| matches!(
                        a,
                        Action::Send {
                            msg: Unicast::SpaceRequest(_),
                            ..
                        }
                    )),
                    "asked again at once: {again:?}"
                );
            }
        }
        let again = nodes[y].tick(1_000, &mut rng);
        assert!(!again.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: Unicast::SpaceRequest(_),
                ..
            }
        )));
        // The next round asks again.
        let later = nodes[y].tick(20 + TICK_INTERVAL_MS, &mut rng);
        assert!(later.iter().any(
            |a| matches!(a, Action::Send { to, msg: Unicast::SpaceRequest(r) } if *to == peers[x] && *r == host)
        ));
    }
}
