//! The per-node IPAM service the router daemon drives: the ring-aware [`Allocator`] plus its
//! durable [`Store`], with deadlines on pending operations and status for `weft status ipam`
//! and `/report`.
//!
//! [`NodeIpam`] is synchronous and sans-IO apart from the redb store: the daemon owns the
//! clock (milliseconds since any fixed point, passed as `now_ms`), the mesh and the HTTP
//! side. Every entry point feeds the allocator, **persists what changed before returning**
//! (one durable redb transaction per call), and returns only [`NodeAction`]s for the daemon:
//! gossip broadcasts and unicasts as the exact bytes the mesh carries on the `IPallocation`
//! channel, and completions of allocations and claims.
//!
//! Rules:
//!
//! - **Nothing is acknowledged before it is durable.** A [`NodeAction::Completed`] with an
//!   address is only returned once that address's record is committed; if the commit fails,
//!   the address is taken back and the operation fails with [`IpamFailure::NotSaved`].
//! - **Nothing leaves the node before it is durable.** A ring change (consensus, donation,
//!   takeover) is committed before any message carrying it is returned; while it cannot be
//!   committed, messages are withheld and [`NodeIpam::gossip_state_bytes`] fails.
//! - **Every operation ends.** Each allocation or claim gets exactly one
//!   [`NodeAction::Completed`] for its `op_id`: at once, from a later call, or from
//!   [`NodeIpam::tick`] once its deadline (default [`DEFAULT_OP_TIMEOUT`]) has passed, with the
//!   reason it was waiting ("awaiting consensus: quorum 2, known 1", "all free space in ...
//!   is owned by unreachable peers: ...").
//!
//! On open, persisted state is restored or discarded by Weave's rules
//! (`weave-net-internals.md` §5.7): a different peer name, a different allocation range, or a
//! missing or empty ring discards it (the reason is in the [`OpenReport`]); otherwise the ring
//! is restored, the space rebuilt from the ring's ranges we own and every owned address
//! re-claimed, and the `--ipalloc-init` settings are ignored.
//!
//! The whole ring is persisted under the `ringState` key ([`crate::store::KEY_RING_STATE`]) in
//! Weave's gob encoding, next to the peer name and the `ring` record.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::address::{from_ipv4, CidrExt, Range};
use crate::allocator::{
    Action, AllocError, Allocator, AllocatorConfig, InitMode, OpId, Outcome, PendingOp,
};
use crate::gossip::{self, GossipError, GossipState, Unicast};
use crate::local::{OpenReport, OwnedEntry};
use crate::owned::OwnedData;
use crate::ring::{MergeError, PeerName, Ring};
use crate::store::{RingRecord, RingWrite, Store, StoreError, KEY_RING_STATE};

/// How long an allocation or claim may stay pending before [`NodeIpam::tick`] fails it.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the daemon must do after a [`NodeIpam`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    /// Gossip-broadcast these bytes on the `IPallocation` channel (gob `gossipState`, our
    /// whole state).
    Broadcast(Vec<u8>),
    /// Gossip-unicast these bytes to `to` on the `IPallocation` channel (kind byte + gob).
    Send {
        /// The destination.
        to: PeerName,
        /// The message.
        bytes: Vec<u8>,
    },
    /// An allocation or claim finished.
    Completed {
        /// The operation, as the caller numbered it.
        op_id: OpId,
        /// The address with the prefix length of its subnet, or why there is none.
        result: Result<Ipv4Net, IpamFailure>,
    },
}

/// Takes the result of `op_id` out of `actions` (for callers waiting synchronously).
pub fn take_completion(
    actions: &mut Vec<NodeAction>,
    op_id: OpId,
) -> Option<Result<Ipv4Net, IpamFailure>> {
    let pos = actions
        .iter()
        .position(|a| matches!(a, NodeAction::Completed { op_id: o, .. } if *o == op_id))?;
    match actions.remove(pos) {
        NodeAction::Completed { result, .. } => Some(result),
        _ => None,
    }
}

/// Why an allocation or claim failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamFailure {
    /// Refused by the allocator (subnet outside the range, address held by another
    /// identifier, claim denied by the owning peer, cancelled).
    #[error(transparent)]
    Alloc(AllocError),
    /// Still pending at its deadline.
    #[error("{what} timed out after {} s: {reason}", waited_ms.div_ceil(1000))]
    TimedOut {
        /// The operation ("allocation for c1 in 10.32.0.0/12").
        what: String,
        /// How long it waited (ms).
        waited_ms: u64,
        /// What it was waiting for.
        reason: String,
    },
    /// The result could not be committed to the IPAM database: nothing was handed out.
    #[error(
        "{what} failed: the IPAM database could not be written ({detail}); nothing was \
         handed out: check the disk holding the database and retry"
    )]
    NotSaved {
        /// The operation.
        what: String,
        /// The database error.
        detail: String,
    },
    /// The allocator dropped the operation without a result (should not happen).
    #[error("{what} was dropped by the allocator without a result; retry it")]
    Dropped {
        /// The operation.
        what: String,
    },
}

/// Errors of [`NodeIpam`] calls.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Invalid configuration, or an operation refused by the allocator.
    #[error(transparent)]
    Alloc(AllocError),
    /// The database failed (locked, corrupt, newer schema, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `release_addr` of an address the identifier does not hold (Weave's wording).
    #[error("Free: address {addr} not found for {id}")]
    AddressNotFound {
        /// The identifier.
        id: String,
        /// The address.
        addr: Ipv4Addr,
    },
    /// An operation id that is already pending (a bug of the caller).
    #[error("IPAM operation id {0} is already pending; every operation needs a new id")]
    DuplicateOp(OpId),
    /// `rmpeer` of ourselves.
    #[error(
        "cannot take over the ranges of {0}: that is this peer; run `weft rmpeer` on \
         another node, or `weft reset` here"
    )]
    RemoveSelf(PeerName),
    /// An IPAM message that cannot be decoded.
    #[error(
        "malformed IPAM message {}: {source}; dropping the connection it came on",
        sender_text(*from)
    )]
    Malformed {
        /// The peer it came from, when known.
        from: Option<PeerName>,
        /// What is wrong.
        source: GossipError,
    },
    /// A ring that cannot be merged into ours: the daemon drops the connection it came on.
    #[error(
        "IPAM gossip {} cannot be merged: {source}; dropping the connection it came on until \
         the conflict is resolved",
        sender_text(*from)
    )]
    Merge {
        /// The peer it came from, when known.
        from: Option<PeerName>,
        /// Why.
        source: MergeError,
    },
    /// Our own state cannot be sent because it is not committed yet.
    #[error(
        "the IPAM ring changed but could not be saved ({0}); it is not sent to other peers \
         until it is: check the disk holding the IPAM database"
    )]
    NotSaved(String),
    /// Our own state cannot be encoded (a bug).
    #[error("cannot encode the IPAM state: {0}")]
    Encode(GossipError),
}

fn sender_text(p: Option<PeerName>) -> String {
    p.map_or_else(
        || "from a neighbour (periodic gossip, sender not known)".to_string(),
        |p| format!("from peer {p}"),
    )
}

/// A pending operation as [`NodeIpam`] tracks it.
#[derive(Debug, Clone)]
struct OpInfo {
    id: String,
    /// The subnet (allocation) or the claimed address with its prefix length.
    net: Ipv4Net,
    claim: bool,
    started_ms: u64,
    deadline_ms: u64,
}

impl OpInfo {
    fn what(&self) -> String {
        if self.claim {
            format!("claim of {} for {}", self.net, self.id)
        } else {
            format!("allocation for {} in {}", self.id, self.net)
        }
    }
}

/// Weave's `IPAM.Paxos` in `/report`: present while the ring does not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaxosReport {
    /// True when this peer takes part in the consensus (false for an observer).
    #[serde(rename = "Elector")]
    pub elector: bool,
    /// Participants known, ourself included.
    #[serde(rename = "KnownNodes")]
    pub known_nodes: usize,
    /// Participants needed.
    #[serde(rename = "Quorum")]
    pub quorum: u32,
}

/// One ring entry in `/report` (Weave's `EntryStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryReport {
    /// First address of the entry's range.
    #[serde(rename = "Token")]
    pub token: String,
    /// Number of addresses in the range.
    #[serde(rename = "Size")]
    pub size: u64,
    /// Owner's peer name.
    #[serde(rename = "Peer")]
    pub peer: String,
    /// Owner's nickname ("" when unknown).
    #[serde(rename = "Nickname")]
    pub nickname: String,
    /// True when the owner is us or reachable through the mesh.
    #[serde(rename = "IsKnownPeer")]
    pub is_known_peer: bool,
    /// The entry's version.
    #[serde(rename = "Version")]
    pub version: u32,
}

/// One pending claim in `/report` (Weave's `ClaimStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimReport {
    /// The identifier.
    #[serde(rename = "Ident")]
    pub ident: String,
    /// The claimed address, `a.b.c.d/len`.
    #[serde(rename = "CIDR")]
    pub cidr: String,
}

/// Weave's `IPAM` section of `/report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpamReport {
    /// The consensus state while there is no ring (else `null`).
    #[serde(rename = "Paxos")]
    pub paxos: Option<PaxosReport>,
    /// The allocation range.
    #[serde(rename = "Range")]
    pub range: String,
    /// Number of addresses in the allocation range.
    #[serde(rename = "RangeNumIPs")]
    pub range_num_ips: u64,
    /// Addresses allocated on this peer.
    #[serde(rename = "ActiveIPs")]
    pub active_ips: u64,
    /// The default subnet.
    #[serde(rename = "DefaultSubnet")]
    pub default_subnet: String,
    /// The ring, in token order.
    #[serde(rename = "Entries")]
    pub entries: Vec<EntryReport>,
    /// Claims waiting.
    #[serde(rename = "PendingClaims")]
    pub pending_claims: Vec<ClaimReport>,
    /// Identifiers of allocations waiting.
    #[serde(rename = "PendingAllocates")]
    pub pending_allocates: Vec<String>,
}

/// One peer's share of the range, for `weft status ipam`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerShareReport {
    /// Peer name.
    pub name: String,
    /// Nickname ("" when unknown).
    pub nick_name: String,
    /// Addresses it owns.
    pub ips: u64,
    /// Percentage of the allocation range.
    pub percent: f64,
    /// Addresses allocated: known for us only.
    pub active: Option<u64>,
    /// Whether it is us or reachable.
    pub reachable: bool,
    /// True for this peer.
    pub is_us: bool,
}

/// One pending operation, for `weft status ipam`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PendingReport {
    /// The operation id.
    pub op_id: OpId,
    /// The identifier.
    pub ident: String,
    /// True for a claim.
    pub claim: bool,
    /// The subnet (allocation) or the claimed address.
    pub cidr: String,
    /// How long it has been waiting (ms).
    pub waited_ms: u64,
    /// Time left before it fails (ms).
    pub deadline_in_ms: u64,
    /// What it is waiting for.
    pub reason: String,
}

/// Everything `weft status ipam`, `/status`, `/report` and the metrics need.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStatus {
    /// Weave's one-line status: `ready`, `idle`, `awaiting consensus (quorum: Q, known: K)`,
    /// `waiting for IP(s) to become available`, `all IP ranges owned by unreachable peers -
    /// use 'rmpeer' if they are dead`, ...
    pub status: String,
    /// Whether the ring exists.
    pub ring_ready: bool,
    /// Each ring peer's share, us first, then by name.
    pub shares: Vec<PeerShareReport>,
    /// Pending operations, oldest first.
    pub pending: Vec<PendingReport>,
    /// Ring peers we cannot reach (`name(nick)`), for `weave_ipam_unreachable_count`.
    pub unreachable_peers: Vec<String>,
    /// Percentage of the range owned by unreachable peers
    /// (`weave_ipam_unreachable_percentage`).
    pub unreachable_percentage: f64,
    /// Pending allocations (`weave_ipam_pending_allocates`).
    pub pending_allocates: usize,
    /// Pending claims (`weave_ipam_pending_claims`).
    pub pending_claims: usize,
    /// The last database error, until a write succeeds again.
    pub store_error: Option<String>,
    /// The last gossip that could not be decoded or merged.
    pub last_gossip_error: Option<String>,
    /// Weave's `IPAM` section of `/report`.
    #[serde(rename = "IPAM")]
    pub ipam: IpamReport,
}

/// The per-node IPAM service (see the module documentation).
#[derive(Debug)]
pub struct NodeIpam {
    alloc: Allocator,
    store: Store,
    peer_name: String,
    universe: Ipv4Net,
    default_subnet: Ipv4Net,
    rng: StdRng,
    op_timeout_ms: u64,
    /// Pending allocations and claims, by op id.
    ops: BTreeMap<OpId, OpInfo>,
    /// What the store holds in `ownedAddresses`.
    durable_owned: BTreeMap<String, OwnedData>,
    /// The in-memory ring differs from the committed one.
    ring_unsaved: bool,
    store_error: Option<String>,
    last_gossip_error: Option<String>,
    reachable: Option<BTreeSet<PeerName>>,
    discarded_owned: BTreeMap<String, OwnedData>,
}

/// Persisted state checked against the configuration (Weave's `loadPersistedData`).
enum Verdict {
    /// Restore this ring and these records.
    Restore(Ring),
    /// Start afresh; `Some(reason)` when something was thrown away.
    Fresh(Option<String>),
}

impl NodeIpam {
    /// Opens (or creates) the database at `db_path` and restores or discards the persisted
    /// state by Weave's rules (see the module documentation). With `InitMode::Seed` and no
    /// usable persisted state, the seeded ring is created and committed at once.
    ///
    /// Errors: invalid range or default subnet ([`NodeError::Alloc`]); the database is locked,
    /// corrupt (including an unreadable persisted ring), too new, or fails
    /// ([`NodeError::Store`]).
    pub fn open(
        db_path: &Path,
        config: AllocatorConfig,
    ) -> Result<(NodeIpam, OpenReport), NodeError> {
        let universe = config.universe.trunc();
        let default_subnet = config.default_subnet.trunc();
        let us = config.peer;
        let seed = config.uid ^ us.as_u64().rotate_left(17);
        let mut alloc = Allocator::new(config).map_err(NodeError::Alloc)?;
        let store = Store::open(db_path)?;
        let state = store.load()?;
        let ring_state = store.get_top(KEY_RING_STATE)?;
        let corrupt = |detail: String| StoreError::Corrupt {
            path: db_path.to_path_buf(),
            detail,
        };
        let persisted_ring = match &ring_state {
            Some(bytes) => Some(
                gossip::decode_ring(bytes)
                    .map_err(|e| corrupt(format!("unreadable persisted ring: {e}")))?,
            ),
            None => None,
        };
        let peer_name = us.to_string();
        let universe_range = Range::from_net(universe)
            .map_err(|_| NodeError::Alloc(AllocError::InvalidUniverse(universe)))?;
        let verdict = judge(
            &peer_name,
            us,
            universe,
            universe_range,
            &state.peer_name,
            state.ring.as_ref().map(|r| r.universe),
            persisted_ring,
            !state.owned.is_empty(),
        );
        let record = RingRecord { universe };
        let node = match verdict {
            Verdict::Restore(ring) => {
                alloc
                    .restore(ring, state.owned.clone())
                    .map_err(|e| corrupt(format!("the persisted ring cannot be restored: {e}")))?;
                NodeIpam::assemble(
                    alloc,
                    store,
                    peer_name,
                    universe,
                    default_subnet,
                    seed,
                    state.owned,
                )
            }
            Verdict::Fresh(reason) => {
                // The seeded ring (InitMode::Seed) exists from the start: commit it with the
                // reset.
                let ring_bytes = if alloc.ring().is_empty() {
                    None
                } else {
                    Some(gossip::encode_ring(alloc.ring()).map_err(NodeError::Encode)?)
                };
                store.reset_with_ring_state(&peer_name, &record, ring_bytes.as_deref())?;
                let mut node = NodeIpam::assemble(
                    alloc,
                    store,
                    peer_name,
                    universe,
                    default_subnet,
                    seed,
                    BTreeMap::new(),
                );
                node.discarded_owned = if reason.is_some() {
                    state.owned
                } else {
                    BTreeMap::new()
                };
                let report = OpenReport {
                    restored: false,
                    discarded_reason: reason,
                    owned_ids: 0,
                };
                return Ok((node, report));
            }
        };
        let report = OpenReport {
            restored: true,
            discarded_reason: None,
            owned_ids: node.alloc.owned().len(),
        };
        Ok((node, report))
    }

    fn assemble(
        alloc: Allocator,
        store: Store,
        peer_name: String,
        universe: Ipv4Net,
        default_subnet: Ipv4Net,
        seed: u64,
        durable_owned: BTreeMap<String, OwnedData>,
    ) -> NodeIpam {
        NodeIpam {
            alloc,
            store,
            peer_name,
            universe,
            default_subnet,
            rng: StdRng::seed_from_u64(seed),
            op_timeout_ms: duration_ms(DEFAULT_OP_TIMEOUT),
            ops: BTreeMap::new(),
            durable_owned,
            ring_unsaved: false,
            store_error: None,
            last_gossip_error: None,
            reachable: None,
            discarded_owned: BTreeMap::new(),
        }
    }

    // --- Configuration and inputs -------------------------------------------------------------

    /// Sets how long allocations and claims issued from now on may stay pending.
    pub fn set_op_timeout(&mut self, timeout: Duration) {
        self.op_timeout_ms = duration_ms(timeout).max(1);
    }

    /// The peers reachable through the mesh (from its routes). Space requests go only to
    /// them; the others are reported unreachable. Until this is called, every peer is
    /// assumed reachable.
    pub fn set_reachable(&mut self, peers: impl IntoIterator<Item = PeerName>) {
        let set: BTreeSet<PeerName> = peers.into_iter().collect();
        self.reachable = Some(set.clone());
        self.alloc.set_reachable(Some(set));
    }

    /// Replaces the random number generator's seed (donor choice, Paxos back-off); by
    /// default it is derived from the peer name and UID.
    pub fn set_rng_seed(&mut self, seed: u64) {
        self.rng = StdRng::seed_from_u64(seed);
    }

    // --- Operations -----------------------------------------------------------------------

    /// Allocates an address for `id` in `subnet` (the default subnet when `None`); idempotent
    /// per id and subnet. The result comes as one [`NodeAction::Completed`] for `op_id`, in
    /// the returned actions when it is known at once, else from a later call (at the latest
    /// from [`NodeIpam::tick`] at the deadline). `Err` only for an `op_id` already pending.
    pub fn allocate(
        &mut self,
        id: &str,
        subnet: Option<Ipv4Net>,
        is_container: bool,
        op_id: OpId,
        now_ms: u64,
    ) -> Result<Vec<NodeAction>, NodeError> {
        if self.ops.contains_key(&op_id) {
            return Err(NodeError::DuplicateOp(op_id));
        }
        let subnet = subnet.unwrap_or(self.default_subnet).trunc();
        self.ops.insert(
            op_id,
            OpInfo {
                id: id.to_string(),
                net: subnet,
                claim: false,
                started_ms: now_ms,
                deadline_ms: now_ms.saturating_add(self.op_timeout_ms),
            },
        );
        let result =
            self.alloc
                .allocate(op_id, id, Some(subnet), is_container, now_ms, &mut self.rng);
        Ok(self.finish_op(op_id, result))
    }

    /// Claims `cidr` (address and prefix length) for `id` (`PUT /ip/{id}/{ip}/{prefixlen}`,
    /// pre-existing addresses at start-up): recorded at once when outside the range or in
    /// ours, otherwise asked from the owning peer. Result as for [`NodeIpam::allocate`].
    pub fn claim(
        &mut self,
        id: &str,
        cidr: Ipv4Net,
        is_container: bool,
        op_id: OpId,
        now_ms: u64,
    ) -> Result<Vec<NodeAction>, NodeError> {
        if self.ops.contains_key(&op_id) {
            return Err(NodeError::DuplicateOp(op_id));
        }
        self.ops.insert(
            op_id,
            OpInfo {
                id: id.to_string(),
                net: cidr,
                claim: true,
                started_ms: now_ms,
                deadline_ms: now_ms.saturating_add(self.op_timeout_ms),
            },
        );
        let result = self
            .alloc
            .claim(op_id, id, cidr, is_container, now_ms, &mut self.rng);
        Ok(self.finish_op(op_id, result))
    }

    fn finish_op(
        &mut self,
        op_id: OpId,
        result: Result<(Outcome, Vec<Action>), AllocError>,
    ) -> Vec<NodeAction> {
        match result {
            Ok((Outcome::Done(cidr), actions)) => self.commit(actions, vec![(op_id, Ok(cidr))]),
            Ok((Outcome::Pending, actions)) => self.commit(actions, Vec::new()),
            Err(e) => self.commit(Vec::new(), vec![(op_id, Err(e))]),
        }
    }

    /// Cancels a pending allocation or claim (the HTTP request went away): its
    /// [`NodeAction::Completed`] (cancelled) is returned; nothing if it is not pending.
    pub fn cancel(&mut self, op_id: OpId) -> Vec<NodeAction> {
        if !self.ops.contains_key(&op_id) {
            return Vec::new();
        }
        let actions = self.alloc.cancel(op_id);
        let mut extra = Vec::new();
        if actions.is_empty() {
            // Not pending in the allocator any more: report the cancellation ourselves.
            extra.push((op_id, Err(AllocError::Cancelled)));
        }
        self.commit(actions, extra)
    }

    /// Frees every address of `id` (`DELETE /ip/{id}`), durably, and returns them; they are
    /// reusable at once (pending allocations are retried). `Delete: no addresses for <id>`
    /// when it holds none.
    pub fn release(
        &mut self,
        id: &str,
        now_ms: u64,
    ) -> Result<(Vec<Ipv4Net>, Vec<NodeAction>), NodeError> {
        if self.alloc.owned().get(id).is_none() {
            return Err(NodeError::Alloc(AllocError::NoAddresses(id.to_string())));
        }
        // Persist first: a failed write changes nothing.
        self.store.save_owned(id, &OwnedData::default())?;
        self.durable_owned.remove(id);
        let (freed, mut actions) = self.alloc.release(id).map_err(NodeError::Alloc)?;
        actions.extend(self.alloc.tick(now_ms, &mut self.rng));
        Ok((freed, self.commit(actions, Vec::new())))
    }

    /// Frees one address of `id` (`DELETE /ip/{id}/{ip}`), durably.
    pub fn release_addr(
        &mut self,
        id: &str,
        addr: Ipv4Addr,
        now_ms: u64,
    ) -> Result<Vec<NodeAction>, NodeError> {
        let Some(data) = self.alloc.owned().without(id, addr) else {
            return Err(NodeError::AddressNotFound {
                id: id.to_string(),
                addr,
            });
        };
        self.store.save_owned(id, &data)?;
        if data.cidrs.is_empty() {
            self.durable_owned.remove(id);
        } else {
            self.durable_owned.insert(id.to_string(), data);
        }
        let mut actions = self.alloc.release_addr(id, addr).unwrap_or_default();
        actions.extend(self.alloc.tick(now_ms, &mut self.rng));
        Ok(self.commit(actions, Vec::new()))
    }

    /// Starts creating the ring if there is none (Weave's prime, `GET /ring`).
    pub fn prime(&mut self, now_ms: u64) -> Vec<NodeAction> {
        let actions = self.alloc.prime(now_ms, &mut self.rng);
        self.commit(actions, Vec::new())
    }

    /// The periodic tick (call it about every second): fails operations past their deadline
    /// with the reason they were waiting, re-proposes while awaiting consensus, retries
    /// pending operations (asking donors again every 5 s), and retries a failed ring commit.
    pub fn tick(&mut self, now_ms: u64) -> Vec<NodeAction> {
        let overdue: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| o.deadline_ms <= now_ms)
            .map(|(op, _)| *op)
            .collect();
        let mut out = Vec::new();
        for op_id in overdue {
            let reason = match self.ops.get(&op_id) {
                Some(info) => self.wait_reason(info),
                None => continue,
            };
            let Some(info) = self.ops.remove(&op_id) else {
                continue;
            };
            // The allocator's own "cancelled" completion is replaced by ours.
            let _ = self.alloc.cancel(op_id);
            out.push(NodeAction::Completed {
                op_id,
                result: Err(IpamFailure::TimedOut {
                    what: info.what(),
                    waited_ms: now_ms.saturating_sub(info.started_ms),
                    reason,
                }),
            });
        }
        let actions = self.alloc.tick(now_ms, &mut self.rng);
        out.extend(self.commit(actions, Vec::new()));
        out
    }

    /// When the next pending operation times out (for scheduling the next tick).
    pub fn next_deadline(&self) -> Option<u64> {
        self.ops.values().map(|o| o.deadline_ms).min()
    }

    /// `rmpeer`: takes over every range of `peer` (run it for a dead peer on exactly one
    /// node). Returns the number of addresses taken over ("N IPs taken over from X").
    pub fn admin_takeover(
        &mut self,
        peer: PeerName,
        now_ms: u64,
    ) -> Result<(u64, Vec<NodeAction>), NodeError> {
        if peer == self.alloc.peer() {
            return Err(NodeError::RemoveSelf(peer));
        }
        let (taken, mut actions) = self.alloc.admin_takeover(peer, &mut self.rng);
        // Pending operations may use the space at once.
        actions.extend(self.alloc.tick(now_ms, &mut self.rng));
        Ok((taken, self.commit(actions, Vec::new())))
    }

    /// Finds a ring peer or known peer by name or nickname (for `weft rmpeer <name|nick>`).
    pub fn resolve_peer(&self, name_or_nick: &str) -> Option<PeerName> {
        if let Ok(p) = name_or_nick.parse::<PeerName>() {
            return Some(p);
        }
        self.alloc
            .nicknames()
            .iter()
            .find(|(_, n)| n.as_str() == name_or_nick)
            .map(|(p, _)| *p)
    }

    /// `weft reset` (Weave's `DELETE /peer`): cancels pending operations and gives all our
    /// ranges to `heir`, or to the peer Weave would choose (a reachable ring peer, any
    /// reachable peer, any ring peer) when `None`. The transfer is committed and broadcast;
    /// the daemon then stops and removes the database.
    pub fn shutdown(&mut self, heir: Option<PeerName>) -> Vec<NodeAction> {
        let live: Vec<PeerName> = match &self.reachable {
            Some(r) => r.iter().copied().collect(),
            None => self.alloc.nicknames().keys().copied().collect(),
        };
        let heir = heir.or_else(|| self.alloc.choose_heir(&live));
        let actions = match heir {
            Some(h) => self.alloc.shutdown(h),
            None => self.alloc.shutdown(self.alloc.peer()),
        };
        self.commit(actions, Vec::new())
    }

    // --- Gossip -------------------------------------------------------------------------------

    /// Our whole state, gob-encoded: for periodic gossip and for a new connection. Fails
    /// while a ring change is not committed.
    pub fn gossip_state_bytes(&mut self) -> Result<Vec<u8>, NodeError> {
        if self.ring_unsaved {
            match self.write(true, &[]) {
                Ok(()) => {
                    self.ring_unsaved = false;
                    self.store_error = None;
                }
                Err(detail) => {
                    self.store_error = Some(detail.clone());
                    return Err(NodeError::NotSaved(detail));
                }
            }
        }
        self.alloc
            .gossip_state(unix_now())
            .encode()
            .map_err(NodeError::Encode)
    }

    /// A broadcast (Weave's `OnGossipBroadcast`) from `from`: merged; our whole state is
    /// returned for relay, with the actions it caused. A malformed or unmergeable state is
    /// an error naming the peer: drop that connection.
    pub fn on_gossip_broadcast(
        &mut self,
        from: PeerName,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(Option<Vec<u8>>, Vec<NodeAction>), NodeError> {
        let actions = self.merge_state(Some(from), bytes, now_ms)?;
        let relay = self.gossip_state_bytes().ok();
        Ok((relay, actions))
    }

    /// Periodic gossip (Weave's `OnGossip`, sender unknown): merged, nothing relayed.
    pub fn on_gossip(&mut self, bytes: &[u8], now_ms: u64) -> Result<Vec<NodeAction>, NodeError> {
        self.merge_state(None, bytes, now_ms)
    }

    /// A unicast from `from` (space request, ring update, space request denied).
    pub fn on_gossip_unicast(
        &mut self,
        from: PeerName,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<Vec<NodeAction>, NodeError> {
        let msg = Unicast::decode(bytes).map_err(|source| {
            self.gossip_failed(NodeError::Malformed {
                from: Some(from),
                source,
            })
        })?;
        let result = self.alloc.on_unicast(from, &msg, now_ms, &mut self.rng);
        self.after_merge(Some(from), result)
    }

    fn merge_state(
        &mut self,
        from: Option<PeerName>,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<Vec<NodeAction>, NodeError> {
        let state = GossipState::decode(bytes)
            .map_err(|source| self.gossip_failed(NodeError::Malformed { from, source }))?;
        // Without a sender (periodic gossip) nothing is sent back: the allocator replies only
        // to senders other than us.
        let sender = from.unwrap_or(self.alloc.peer());
        let result = self.alloc.on_gossip(sender, &state, now_ms, &mut self.rng);
        self.after_merge(from, result)
    }

    fn after_merge(
        &mut self,
        from: Option<PeerName>,
        result: Result<Vec<Action>, AllocError>,
    ) -> Result<Vec<NodeAction>, NodeError> {
        match result {
            Ok(actions) => Ok(self.commit(actions, Vec::new())),
            Err(AllocError::Merge(source)) => {
                Err(self.gossip_failed(NodeError::Merge { from, source }))
            }
            Err(e) => Err(self.gossip_failed(NodeError::Alloc(e))),
        }
    }

    fn gossip_failed(&mut self, e: NodeError) -> NodeError {
        self.last_gossip_error = Some(e.to_string());
        e
    }

    // --- Commit ---------------------------------------------------------------------------

    /// Commits what the allocator changed (ring, owned records of the touched identifiers)
    /// in one transaction, then turns the actions into [`NodeAction`]s: completions of
    /// tracked operations (after the commit; taken back on failure) and messages (withheld
    /// while a ring change is not committed).
    fn commit(
        &mut self,
        actions: Vec<Action>,
        mut results: Vec<(OpId, Result<Ipv4Net, AllocError>)>,
    ) -> Vec<NodeAction> {
        let mut ring_changed = self.ring_unsaved;
        let mut touched: BTreeSet<String> = self.ops.values().map(|o| o.id.clone()).collect();
        let mut messages = Vec::new();
        for a in actions {
            match a {
                Action::PersistRing => ring_changed = true,
                Action::PersistOwned { id, .. } => {
                    touched.insert(id);
                }
                Action::Completed { op, result } => results.push((op, result)),
                other => messages.push(other),
            }
        }
        // The records that differ from what the store holds.
        let writes: Vec<(String, OwnedData)> = touched
            .into_iter()
            .filter_map(|id| {
                let mem = self.alloc.owned().get(&id).cloned().unwrap_or_default();
                let durable = self.durable_owned.get(&id).cloned().unwrap_or_default();
                (mem != durable).then_some((id, mem))
            })
            .collect();
        let mut rolled_back: BTreeSet<(String, Ipv4Addr)> = BTreeSet::new();
        let mut failure: Option<String> = None;
        if ring_changed || !writes.is_empty() {
            match self.write(ring_changed, &writes) {
                Ok(()) => {
                    self.ring_unsaved = false;
                    self.store_error = None;
                    for (id, data) in writes {
                        if data.cidrs.is_empty() {
                            self.durable_owned.remove(&id);
                        } else {
                            self.durable_owned.insert(id, data);
                        }
                    }
                }
                Err(detail) => {
                    self.store_error = Some(detail.clone());
                    if ring_changed {
                        self.ring_unsaved = true;
                    }
                    // Take back every address that is not durable.
                    for (id, mem) in &writes {
                        let durable = self.durable_owned.get(id);
                        for c in &mem.cidrs {
                            let kept = durable
                                .is_some_and(|d| d.cidrs.iter().any(|x| x.addr() == c.addr()));
                            if !kept {
                                let _ = self.alloc.release_addr(id, c.addr());
                                rolled_back.insert((id.clone(), c.addr()));
                            }
                        }
                    }
                    failure = Some(detail);
                }
            }
        }

        let mut out = Vec::new();
        if !self.ring_unsaved {
            let now = unix_now();
            for m in messages {
                match m {
                    Action::Broadcast(mut state) => {
                        state.now = now;
                        match state.encode() {
                            Ok(bytes) => out.push(NodeAction::Broadcast(bytes)),
                            Err(e) => self.store_error = Some(NodeError::Encode(e).to_string()),
                        }
                    }
                    Action::Send { to, mut msg } => {
                        if let Unicast::RingUpdate(state) = &mut msg {
                            state.now = now;
                        }
                        match msg.encode() {
                            Ok(bytes) => out.push(NodeAction::Send { to, bytes }),
                            Err(e) => self.store_error = Some(NodeError::Encode(e).to_string()),
                        }
                    }
                    _ => {}
                }
            }
        }

        // Completions of the operations we track; every tracked operation the allocator no
        // longer holds gets exactly one.
        let mut by_op: BTreeMap<OpId, Result<Ipv4Net, AllocError>> = BTreeMap::new();
        for (op, r) in results {
            by_op.entry(op).or_insert(r);
        }
        let still_pending: BTreeSet<OpId> = self
            .alloc
            .pending_ops()
            .iter()
            .map(|p: &PendingOp| p.op)
            .collect();
        let tracked: Vec<OpId> = self.ops.keys().copied().collect();
        for op_id in tracked {
            let result = match by_op.remove(&op_id) {
                Some(r) => r.map_err(IpamFailure::Alloc),
                None if still_pending.contains(&op_id) => continue,
                None => {
                    let Some(info) = self.ops.get(&op_id) else {
                        continue;
                    };
                    self.holding(info)
                        .ok_or_else(|| IpamFailure::Dropped { what: info.what() })
                }
            };
            let Some(info) = self.ops.remove(&op_id) else {
                continue;
            };
            let result = match result {
                Ok(c) if rolled_back.contains(&(info.id.clone(), c.addr())) => {
                    Err(IpamFailure::NotSaved {
                        what: info.what(),
                        detail: failure.clone().unwrap_or_default(),
                    })
                }
                r => r,
            };
            out.push(NodeAction::Completed { op_id, result });
        }
        out
    }

    /// The address an operation's identifier holds for it, if any.
    fn holding(&self, info: &OpInfo) -> Option<Ipv4Net> {
        if info.claim {
            let data = self.alloc.owned().get(&info.id)?;
            data.cidrs
                .iter()
                .find(|c| c.addr() == info.net.addr())
                .copied()
        } else {
            self.alloc.owned().find_in_subnet(&info.id, &info.net)
        }
    }

    fn write(&mut self, ring: bool, owned: &[(String, OwnedData)]) -> Result<(), String> {
        let ring_bytes = if ring {
            Some(gossip::encode_ring(self.alloc.ring()).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let record = RingRecord {
            universe: self.universe,
        };
        let ring_write = ring_bytes.as_deref().map(|state| RingWrite {
            peer_name: &self.peer_name,
            record: &record,
            state,
        });
        let owned: Vec<(&str, &OwnedData)> = owned.iter().map(|(i, d)| (i.as_str(), d)).collect();
        self.store
            .save_batch(ring_write, &owned)
            .map_err(|e| e.to_string())
    }

    // --- Queries ----------------------------------------------------------------------------

    /// This peer's name.
    pub fn peer(&self) -> PeerName {
        self.alloc.peer()
    }

    /// The allocation range (`--ipalloc-range`).
    pub fn universe(&self) -> Ipv4Net {
        self.universe
    }

    /// The default subnet (`--ipalloc-default-subnet`).
    pub fn default_subnet(&self) -> Ipv4Net {
        self.default_subnet
    }

    /// The addresses of `id` (empty when none).
    pub fn lookup(&self, id: &str) -> Vec<Ipv4Net> {
        self.alloc
            .owned()
            .get(id)
            .map(|d| d.cidrs.clone())
            .unwrap_or_default()
    }

    /// The identifier holding `addr` on this peer, if any.
    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.alloc.owned().find_by_addr(addr)
    }

    /// Every identifier and its addresses, sorted by identifier.
    pub fn owned(&self) -> Vec<OwnedEntry> {
        self.alloc
            .owned()
            .iter()
            .map(|(id, d)| OwnedEntry {
                id: id.to_string(),
                is_container: d.is_container,
                addrs: d.cidrs.clone(),
            })
            .collect()
    }

    /// Allocated addresses inside the range ("active IPs").
    pub fn num_allocated(&self) -> u64 {
        self.alloc.space().num_allocated()
    }

    /// Addresses of the range this peer owns.
    pub fn num_owned(&self) -> u64 {
        self.alloc.space().num_owned()
    }

    /// Free addresses this peer could hand out in `subnet` (default subnet when `None`).
    pub fn num_free_in(&self, subnet: Option<Ipv4Net>) -> u64 {
        let subnet = subnet.unwrap_or(self.default_subnet);
        self.alloc.space().num_free_in(subnet.host_range())
    }

    /// Whether the ring exists (consensus reached, seeded, or received).
    pub fn ring_ready(&self) -> bool {
        !self.alloc.ring().is_empty()
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        self.alloc.ring()
    }

    /// The allocator (read-only).
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// The database, for other `top` keys ([`Store::get_top`], [`Store::put_top`]).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Number of operations pending.
    pub fn num_pending(&self) -> usize {
        self.ops.len()
    }

    /// The records thrown away at open (see [`OpenReport::discarded_reason`]); the daemon
    /// may re-claim those still in use (Weave re-claims the bridge's addresses at start).
    /// Empty after the first call.
    pub fn take_discarded_owned(&mut self) -> BTreeMap<String, OwnedData> {
        std::mem::take(&mut self.discarded_owned)
    }

    fn is_reachable(&self, peer: PeerName) -> bool {
        self.alloc.is_reachable(peer)
    }

    fn label(&self, peer: PeerName) -> String {
        match self.alloc.nicknames().get(&peer) {
            Some(n) if !n.is_empty() => format!("{peer}({n})"),
            _ => peer.to_string(),
        }
    }

    /// What a pending operation is waiting for, from the allocator's state.
    fn wait_reason(&self, info: &OpInfo) -> String {
        let ring = self.alloc.ring();
        if ring.is_empty() {
            return match self.alloc.init_mode() {
                InitMode::Consensus { quorum } => format!(
                    "{}; the IP allocation ring is created once {quorum} peers agree: check \
                     that enough peers are running and connected, and that every peer has \
                     the same --ipalloc-init",
                    self.alloc.status().paxos
                ),
                InitMode::Observer => "this peer is an observer and has not received the IP \
                     allocation ring from any peer yet: check that it is connected to peers \
                     started with --ipalloc-init=consensus or seed"
                    .to_string(),
                InitMode::Seed(_) => "the IP allocation ring could not be created from the \
                     seed list: check --ipalloc-init=seed=..."
                    .to_string(),
            };
        }
        if info.claim {
            let addr = info.net.addr();
            return match ring.owner_of(from_ipv4(addr)) {
                Some(owner) if !self.is_reachable(owner) => format!(
                    "address {addr} is owned by peer {}, which is unreachable; if it is dead, \
                     remove it with `weft rmpeer {owner}` on one node",
                    self.label(owner)
                ),
                Some(owner) => format!(
                    "waiting for peer {}, which owns address {addr}, to hand it over",
                    self.label(owner)
                ),
                None => format!("address {addr} has no owner in the ring"),
            };
        }
        let subnet = info.net;
        let range = Range::from_net(subnet)
            .unwrap_or(ring.universe())
            .intersect(&ring.universe());
        let us = self.alloc.peer();
        let (mut reachable, mut unreachable) = (BTreeSet::new(), BTreeSet::new());
        for ri in ring.range_infos() {
            let e = ri.entry;
            if e.peer == us || e.free == 0 || !ri.ranges.iter().any(|r| r.overlaps(&range)) {
                continue;
            }
            if self.is_reachable(e.peer) {
                reachable.insert(e.peer);
            } else {
                unreachable.insert(e.peer);
            }
        }
        let labels = |set: &BTreeSet<PeerName>| {
            set.iter()
                .map(|p| self.label(*p))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if reachable.is_empty() && !unreachable.is_empty() {
            format!(
                "all free space in {subnet} is owned by unreachable peers: {}; if they are \
                 dead, remove them with `weft rmpeer <peer>` on one node",
                labels(&unreachable)
            )
        } else if reachable.is_empty() {
            format!(
                "no free address in {subnet}: this peer's ranges there are full and no other \
                 peer reports free space; release addresses or use a bigger --ipalloc-range"
            )
        } else {
            format!(
                "no free address in {subnet} on this peer; asked {} for space, no donation \
                 yet",
                labels(&reachable)
            )
        }
    }

    /// Weave's `IPAM` section of `/report`.
    pub fn report(&self) -> IpamReport {
        let ring = self.alloc.ring();
        let status = self.alloc.status();
        let paxos = ring.is_empty().then_some(PaxosReport {
            elector: !status.paxos.observer,
            known_nodes: status.paxos.known_nodes,
            quorum: status.paxos.quorum,
        });
        let entries = ring
            .range_infos()
            .into_iter()
            .map(|ri| EntryReport {
                token: crate::address::to_ipv4(ri.entry.token).to_string(),
                size: ri.ranges.iter().map(Range::size).sum(),
                peer: ri.entry.peer.to_string(),
                nickname: self
                    .alloc
                    .nicknames()
                    .get(&ri.entry.peer)
                    .cloned()
                    .unwrap_or_default(),
                is_known_peer: self.is_reachable(ri.entry.peer),
                version: ri.entry.version,
            })
            .collect();
        let mut pending_claims = Vec::new();
        let mut pending_allocates = Vec::new();
        for p in self.alloc.pending_ops() {
            if p.claim {
                pending_claims.push(ClaimReport {
                    ident: p.id,
                    cidr: p.net.to_string(),
                });
            } else {
                pending_allocates.push(p.id);
            }
        }
        IpamReport {
            paxos,
            range: self.universe.to_string(),
            range_num_ips: ring.universe_size(),
            active_ips: self.num_allocated(),
            default_subnet: self.default_subnet.to_string(),
            entries,
            pending_claims,
            pending_allocates,
        }
    }

    /// Everything for `weft status ipam`, `/status`, `/report` and the metrics, at `now_ms`.
    pub fn status(&self, now_ms: u64) -> NodeStatus {
        let ring = self.alloc.ring();
        let us = self.alloc.peer();
        let total = ring.universe_size().max(1);
        let mut shares: Vec<PeerShareReport> = ring
            .shares()
            .into_iter()
            .map(|s| PeerShareReport {
                name: s.peer.to_string(),
                nick_name: self
                    .alloc
                    .nicknames()
                    .get(&s.peer)
                    .cloned()
                    .unwrap_or_default(),
                ips: s.owned,
                percent: 100.0 * s.owned as f64 / total as f64,
                active: (s.peer == us).then(|| self.num_allocated()),
                reachable: self.is_reachable(s.peer),
                is_us: s.peer == us,
            })
            .collect();
        if !shares.iter().any(|s| s.is_us) {
            shares.push(PeerShareReport {
                name: us.to_string(),
                nick_name: self.alloc.nickname().to_string(),
                ips: 0,
                percent: 0.0,
                active: Some(self.num_allocated()),
                reachable: true,
                is_us: true,
            });
        }
        shares.sort_by(|a, b| b.is_us.cmp(&a.is_us).then_with(|| a.name.cmp(&b.name)));
        let unreachable: Vec<PeerName> = ring
            .peers()
            .into_iter()
            .filter(|p| !self.is_reachable(*p))
            .collect();
        let unreachable_owned: u64 = ring
            .shares()
            .iter()
            .filter(|s| unreachable.contains(&s.peer))
            .map(|s| s.owned)
            .sum();
        let pending: Vec<PendingReport> = self
            .ops
            .iter()
            .map(|(op, info)| PendingReport {
                op_id: *op,
                ident: info.id.clone(),
                claim: info.claim,
                cidr: info.net.to_string(),
                waited_ms: now_ms.saturating_sub(info.started_ms),
                deadline_in_ms: info.deadline_ms.saturating_sub(now_ms),
                reason: self.wait_reason(info),
            })
            .collect();
        let pending_allocates = self.ops.values().filter(|o| !o.claim).count();
        let pending_claims = self.ops.len() - pending_allocates;
        NodeStatus {
            status: self.status_line(pending_allocates + pending_claims),
            ring_ready: !ring.is_empty(),
            shares,
            pending,
            unreachable_peers: unreachable.iter().map(|p| self.label(*p)).collect(),
            unreachable_percentage: 100.0 * unreachable_owned as f64 / total as f64,
            pending_allocates,
            pending_claims,
            store_error: self.store_error.clone(),
            last_gossip_error: self.last_gossip_error.clone(),
            ipam: self.report(),
        }
    }

    /// Weave's `Status:` line of the ipam service in `/status`.
    fn status_line(&self, pending: usize) -> String {
        let ring = self.alloc.ring();
        if ring.is_empty() {
            let paxos = self.alloc.status().paxos;
            return match self.alloc.init_mode() {
                InitMode::Consensus { .. } if paxos.proposing || pending > 0 => format!(
                    "awaiting consensus (quorum: {}, known: {})",
                    paxos.quorum, paxos.known_nodes
                ),
                InitMode::Observer if pending > 0 => {
                    "awaiting the IP allocation ring from other peers".to_string()
                }
                _ => "idle".to_string(),
            };
        }
        if pending == 0 {
            return "ready".to_string();
        }
        let us = self.alloc.peer();
        let others_free: Vec<PeerName> = ring
            .entries()
            .iter()
            .filter(|e| e.peer != us && e.free > 0)
            .map(|e| e.peer)
            .collect();
        if !others_free.is_empty() && others_free.iter().all(|p| !self.is_reachable(*p)) {
            "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead".to_string()
        } else {
            "waiting for IP(s) to become available".to_string()
        }
    }

    /// `weft status ipam` in Weave's layout: one line per ring peer, us first:
    /// `name(nick)  N IPs (xx.x% of total) (k active)`, unreachable peers marked
    /// ` - unreachable!`.
    pub fn status_text(&self) -> String {
        let mut s = String::new();
        for share in self.status(0).shares {
            let name = format!("{}({})", share.name, share.nick_name);
            let _ = write!(
                s,
                "{name:<37} {:>8} IPs ({:04.1}% of total) ",
                share.ips, share.percent
            );
            if let Some(active) = share.active {
                let _ = write!(s, "({active} active)");
            }
            if !share.reachable {
                s.push_str(" - unreachable!");
            }
            s.push('\n');
        }
        s
    }
}

/// Weave's discard rules.
#[allow(clippy::too_many_arguments)]
fn judge(
    our_name: &str,
    us: PeerName,
    universe: Ipv4Net,
    universe_range: Range,
    persisted_name: &Option<String>,
    persisted_universe: Option<Ipv4Net>,
    ring: Option<Ring>,
    has_owned: bool,
) -> Verdict {
    let anything =
        persisted_name.is_some() || persisted_universe.is_some() || ring.is_some() || has_owned;
    if !anything {
        return Verdict::Fresh(None);
    }
    let Some(name) = persisted_name else {
        return Verdict::Fresh(Some("the persisted data has no peer name".into()));
    };
    if name != our_name {
        return Verdict::Fresh(Some(format!(
            "the persisted peer name {name} differs from this peer's name {our_name}"
        )));
    }
    let Some(persisted_universe) = persisted_universe else {
        return Verdict::Fresh(Some("the persisted data has no ring".into()));
    };
    if persisted_universe != universe {
        return Verdict::Fresh(Some(format!(
            "the persisted allocation range {persisted_universe} differs from the configured \
             range {universe}"
        )));
    }
    let Some(ring) = ring else {
        // Our own fresh start wrote the name and range only: nothing to lose.
        return Verdict::Fresh(has_owned.then(|| {
            "the persisted data has no ring (written before this peer had one, or by the \
             single-node allocator)"
                .to_string()
        }));
    };
    if ring.universe() != universe_range {
        return Verdict::Fresh(Some(format!(
            "the persisted ring covers {}, not the configured range {universe}",
            ring.universe()
        )));
    }
    if ring.peer() != us {
        return Verdict::Fresh(Some(format!(
            "the persisted ring belongs to peer {}, not to this peer {us}",
            ring.peer()
        )));
    }
    if ring.is_empty() {
        return Verdict::Fresh(has_owned.then(|| "the persisted ring is empty".to_string()));
    }
    Verdict::Restore(ring)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Unix seconds, for the compatibility `Now` field of the gossip state.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<NodeIpam>();
        assert_send::<NodeError>();
        assert_send::<NodeAction>();
    }
}
