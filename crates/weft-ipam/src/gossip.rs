//! IPAM wire encodings, gob-compatible with Weave Net 2.8 (`weave-net-internals.md` §5.3, §5.7).
//!
//! - [`GossipState`]: Go's `gossipState{Now int64; Nicknames map[PeerName]string;
//!   Paxos paxos.GossipState; Ring *ring.Ring}`, the payload of IPAM gossip, broadcasts and
//!   `msgRingUpdate`.
//! - [`Unicast`]: the IPAM unicast messages, a kind byte then a gob payload:
//!   0 `msgSpaceRequest` (`address.Range`), 1 `msgRingUpdate` (gossipState),
//!   2 `msgSpaceRequestDenied` (`address.Range`).
//! - The persisted values: the ring (`*ring.Ring`, [`encode_ring`]), the owned addresses
//!   (`map[string]ownedData`, [`encode_owned`]) and the peer name ([`encode_peer_name`]).
//!
//! Gob puts Go type and field names on the wire, so the types here are described with Weave's
//! names. The names of unnamed slice/map field types include the Go package of their element
//! (`map[mesh.PeerName]string`, `[]address.CIDR`); [`GoPackages`] chooses those package
//! names (receivers ignore them; they matter only for byte-for-byte comparisons).
//!
//! Decoding never panics and never trusts the input: gob limits apply, every number is
//! range-checked, peer names must fit in 48 bits. A decoded ring is not checked against the
//! ring invariants here: [`Ring::merge`](crate::ring::Ring::merge) checks it and names the
//! sender (persisted rings are checked by [`decode_ring`]).

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use weft_gob::{Encoder, Field, StructValue, Type, Value};

use crate::address::{from_ipv4, to_ipv4, Range};
use crate::owned::OwnedData;
use crate::paxos::{self, AcceptedValue, NodeClaims, NodeId, ProposalId};
use crate::ring::{Entry, InvariantError, PeerName, Ring};

/// Unicast kind: a space request, payload `gob(address.Range)`.
pub const MSG_SPACE_REQUEST: u8 = 0;
/// Unicast kind: a ring update, payload the whole gossip state.
pub const MSG_RING_UPDATE: u8 = 1;
/// Unicast kind: a space request could not be satisfied, payload `gob(address.Range)`.
pub const MSG_SPACE_REQUEST_DENIED: u8 = 2;

/// Errors of the IPAM wire encodings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GossipError {
    /// The bytes are not a valid gob stream of the expected shape.
    #[error("malformed IPAM {what}: {source}; the sender is incompatible or the data is corrupt")]
    Gob {
        /// What was being decoded.
        what: &'static str,
        /// The gob error.
        source: weft_gob::Error,
    },
    /// A peer name above 48 bits.
    #[error("malformed IPAM {what}: peer name value {value:#x} does not fit in 48 bits")]
    BadPeerName {
        /// Where it was.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A number too large for its field.
    #[error("malformed IPAM {what}: value {value} is out of range")]
    OutOfRange {
        /// Where it was.
        what: &'static str,
        /// The value.
        value: i128,
    },
    /// A struct none of whose fields is one we expect (as Go's "no fields matched").
    #[error("malformed IPAM {what}: none of the fields {found:?} is one of {expected:?}")]
    NoFieldsMatched {
        /// What was being decoded.
        what: &'static str,
        /// The fields received.
        found: Vec<String>,
        /// The fields expected.
        expected: &'static [&'static str],
    },
    /// An empty unicast message.
    #[error("empty IPAM unicast message: expected a kind byte and a payload")]
    EmptyUnicast,
    /// An unknown unicast kind.
    #[error(
        "unknown IPAM unicast message kind {0} (expected 0 space request, 1 ring update or \
         2 space request denied); the sender runs an incompatible version"
    )]
    UnknownKind(u8),
    /// A persisted ring that breaks the ring invariants.
    #[error("the persisted IPAM ring is invalid: {0}; remove the IPAM database to start afresh")]
    InvalidRing(InvariantError),
    /// Our own value could not be encoded (a bug).
    #[error("cannot encode IPAM {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The gob error.
        source: weft_gob::Error,
    },
}

type Result<T, E = GossipError> = std::result::Result<T, E>;

/// The Go package names that appear in the wire names of unnamed slice and map field types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoPackages {
    /// Package of `PeerName` (`mesh` in Weave).
    pub mesh: &'static str,
    /// Package of `CIDR` (`address` in Weave).
    pub address: &'static str,
}

impl GoPackages {
    /// What Weave Net writes.
    pub const WEAVE: GoPackages = GoPackages {
        mesh: "mesh",
        address: "address",
    };
    /// Every type in package `main` (as in the shared test vectors).
    pub const MAIN: GoPackages = GoPackages {
        mesh: "main",
        address: "main",
    };
}

impl Default for GoPackages {
    fn default() -> Self {
        GoPackages::WEAVE
    }
}

/// The IPAM gossip payload (Go `gossipState`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GossipState {
    /// Sender's clock, Unix seconds (kept for compatibility only).
    pub now: i64,
    /// Peer name → nickname.
    pub nicknames: BTreeMap<PeerName, String>,
    /// Paxos state; only sent while the sender has no ring.
    pub paxos: paxos::GossipState,
    /// The sender's ring, if it has one.
    pub ring: Option<Ring>,
}

impl GossipState {
    /// The gob type, with `pkgs` in the wire names.
    pub fn gob_type(pkgs: GoPackages) -> Type {
        Type::structure(
            "gossipState",
            vec![
                Field::new("Now", Type::Int),
                Field::new(
                    "Nicknames",
                    Type::map(Type::Uint, Type::String)
                        .with_name(format!("map[{}.PeerName]string", pkgs.mesh)),
                ),
                Field::new("Paxos", paxos_type()),
                Field::new("Ring", ring_type(pkgs)),
            ],
        )
    }

    /// The value, shaped like [`GossipState::gob_type`]. Empty maps and a missing ring are
    /// nil (left off the wire), as Weave sends them.
    pub fn to_gob(&self) -> Value {
        let mut s = StructValue::new("gossipState").with("Now", Value::Int(self.now));
        if !self.nicknames.is_empty() {
            s.push(
                "Nicknames",
                Value::Map(
                    self.nicknames
                        .iter()
                        .map(|(p, n)| (peer_value(*p), Value::string(n.as_str())))
                        .collect(),
                ),
            );
        }
        if !self.paxos.is_empty() {
            s.push(
                "Paxos",
                Value::Map(
                    self.paxos
                        .iter()
                        .map(|(id, c)| (node_id_value(id), node_claims_value(c)))
                        .collect(),
                ),
            );
        }
        if let Some(ring) = &self.ring {
            s.push("Ring", ring_value(ring));
        }
        Value::from(s)
    }

    /// Encodes as one gob stream with a fresh encoder, as Weave sends it.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut enc = Encoder::new();
        self.encode_to(&mut enc, GoPackages::WEAVE)?;
        Ok(enc.into_bytes())
    }

    /// Appends to an existing encoder (for shared type numbering or other package names).
    pub fn encode_to(&self, enc: &mut Encoder, pkgs: GoPackages) -> Result<()> {
        enc.encode_value(&Self::gob_type(pkgs), &self.to_gob())
            .map_err(|source| GossipError::Encode {
                what: "gossip state",
                source,
            })
    }

    /// Decodes a gob stream holding one gossip state.
    pub fn decode(bytes: &[u8]) -> Result<GossipState> {
        const WHAT: &str = "gossip state";
        let v: Value = weft_gob::from_bytes(bytes).map_err(gob(WHAT))?;
        GossipState::from_gob(v)
    }

    /// Converts a decoded value.
    pub fn from_gob(v: Value) -> Result<GossipState> {
        const WHAT: &str = "gossip state";
        let mut s = struct_of(v, WHAT, &["Now", "Nicknames", "Paxos", "Ring"])?;
        let now = s.decode_field::<i64>("Now").map_err(gob(WHAT))?;
        let mut nicknames = BTreeMap::new();
        for (k, v) in s.take("Nicknames").into_map().map_err(gob(WHAT))? {
            let peer = peer_of(&k, "nickname key")?;
            let name = v.into_bytes().map_err(gob("nickname"))?;
            nicknames.insert(peer, String::from_utf8_lossy(&name).into_owned());
        }
        let mut paxos = paxos::GossipState::new();
        for (k, v) in s.take("Paxos").into_map().map_err(gob(WHAT))? {
            paxos.insert(node_id_of(k)?, node_claims_of(v)?);
        }
        let ring = match s.take("Ring") {
            Value::Nil => None,
            v => Some(ring_of(v)?),
        };
        Ok(GossipState {
            now,
            nicknames,
            paxos,
            ring,
        })
    }
}

/// An IPAM unicast message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unicast {
    /// Kind 0: please give me space in this range.
    SpaceRequest(Range),
    /// Kind 1: here is my state (always sent back after a space request).
    RingUpdate(Box<GossipState>),
    /// Kind 2: no space could be given in this range.
    SpaceRequestDenied(Range),
}

impl Unicast {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Unicast::SpaceRequest(_) => MSG_SPACE_REQUEST,
            Unicast::RingUpdate(_) => MSG_RING_UPDATE,
            Unicast::SpaceRequestDenied(_) => MSG_SPACE_REQUEST_DENIED,
        }
    }

    /// `[kind][gob payload]`.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let payload = match self {
            Unicast::SpaceRequest(r) | Unicast::SpaceRequestDenied(r) => encode_range(*r)?,
            Unicast::RingUpdate(state) => state.encode()?,
        };
        let mut out = Vec::with_capacity(payload.len() + 1);
        out.push(self.kind());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Parses `[kind][gob payload]`.
    pub fn decode(msg: &[u8]) -> Result<Unicast> {
        let (&kind, payload) = msg.split_first().ok_or(GossipError::EmptyUnicast)?;
        Ok(match kind {
            MSG_SPACE_REQUEST => Unicast::SpaceRequest(decode_range(payload)?),
            MSG_RING_UPDATE => Unicast::RingUpdate(Box::new(GossipState::decode(payload)?)),
            MSG_SPACE_REQUEST_DENIED => Unicast::SpaceRequestDenied(decode_range(payload)?),
            other => return Err(GossipError::UnknownKind(other)),
        })
    }
}

/// The gob type of `address.Range`.
pub fn range_type() -> Type {
    Type::structure(
        "Range",
        vec![
            Field::new("Start", Type::Uint),
            Field::new("End", Type::Uint),
        ],
    )
}

fn range_value(r: Range) -> Value {
    Value::from(
        StructValue::new("Range")
            .with("Start", Value::Uint(r.start.into()))
            .with("End", Value::Uint(r.end.into())),
    )
}

/// Encodes an `address.Range` (the space request payload).
pub fn encode_range(r: Range) -> Result<Vec<u8>> {
    encode_with(&range_type(), &range_value(r), "range")
}

/// Encodes an `address.Range` on an existing encoder.
pub fn encode_range_to(enc: &mut Encoder, r: Range) -> Result<()> {
    enc.encode_value(&range_type(), &range_value(r))
        .map_err(|source| GossipError::Encode {
            what: "range",
            source,
        })
}

/// Decodes an `address.Range`.
pub fn decode_range(bytes: &[u8]) -> Result<Range> {
    const WHAT: &str = "range";
    let v: Value = weft_gob::from_bytes(bytes).map_err(gob(WHAT))?;
    let mut s = struct_of(v, WHAT, &["Start", "End"])?;
    let start = u32_field(&mut s, "Start", WHAT)?;
    let end = u32_field(&mut s, "End", WHAT)?;
    Ok(Range { start, end })
}

/// Encodes the ring as persisted under the `ring` key (`*ring.Ring`).
pub fn encode_ring(ring: &Ring) -> Result<Vec<u8>> {
    encode_with(&ring_type(GoPackages::WEAVE), &ring_value(ring), "ring")
}

/// Encodes the ring on an existing encoder.
pub fn encode_ring_to(enc: &mut Encoder, ring: &Ring, pkgs: GoPackages) -> Result<()> {
    enc.encode_value(&ring_type(pkgs), &ring_value(ring))
        .map_err(|source| GossipError::Encode {
            what: "ring",
            source,
        })
}

/// Decodes a persisted ring and checks its invariants.
pub fn decode_ring(bytes: &[u8]) -> Result<Ring> {
    let v: Value = weft_gob::from_bytes(bytes).map_err(gob("ring"))?;
    let ring = ring_of(v)?;
    ring.check_invariants().map_err(GossipError::InvalidRing)?;
    Ok(ring)
}

/// Encodes this peer's name as persisted under the `peername` key (gob `uint64`).
pub fn encode_peer_name(peer: PeerName) -> Result<Vec<u8>> {
    encode_with(&Type::Uint, &peer_value(peer), "peer name")
}

/// Decodes a persisted peer name.
pub fn decode_peer_name(bytes: &[u8]) -> Result<PeerName> {
    let v: Value = weft_gob::from_bytes(bytes).map_err(gob("peer name"))?;
    peer_of(&v, "peer name")
}

/// The gob type of the persisted `map[string]ownedData`.
pub fn owned_type(pkgs: GoPackages) -> Type {
    let cidr = Type::structure(
        "CIDR",
        vec![
            Field::new("Addr", Type::Uint),
            Field::new("PrefixLen", Type::Int),
        ],
    );
    // ownedData has no wire name: Weave's process first meets it as a map element.
    let owned = Type::structure(
        "",
        vec![
            Field::new("IsContainer", Type::Bool),
            Field::new(
                "Cidrs",
                Type::slice(cidr).with_name(format!("[]{}.CIDR", pkgs.address)),
            ),
        ],
    );
    Type::map(Type::String, owned)
}

fn owned_value(owned: &BTreeMap<String, OwnedData>) -> Value {
    Value::Map(
        owned
            .iter()
            .map(|(id, d)| {
                let cidrs = d
                    .cidrs
                    .iter()
                    .map(|c| {
                        Value::from(
                            StructValue::new("CIDR")
                                .with("Addr", Value::Uint(from_ipv4(c.addr()).into()))
                                .with("PrefixLen", Value::Int(c.prefix_len().into())),
                        )
                    })
                    .collect();
                let data = StructValue::new("")
                    .with("IsContainer", Value::Bool(d.is_container))
                    .with("Cidrs", Value::Slice(cidrs));
                (Value::string(id.as_str()), Value::from(data))
            })
            .collect(),
    )
}

/// Encodes the owned addresses as Weave persists them under `ownedAddresses`.
pub fn encode_owned(owned: &BTreeMap<String, OwnedData>) -> Result<Vec<u8>> {
    encode_with(
        &owned_type(GoPackages::WEAVE),
        &owned_value(owned),
        "owned addresses",
    )
}

/// Encodes the owned addresses on an existing encoder.
pub fn encode_owned_to(
    enc: &mut Encoder,
    owned: &BTreeMap<String, OwnedData>,
    pkgs: GoPackages,
) -> Result<()> {
    enc.encode_value(&owned_type(pkgs), &owned_value(owned))
        .map_err(|source| GossipError::Encode {
            what: "owned addresses",
            source,
        })
}

/// Decodes Weave's persisted `map[string]ownedData`.
pub fn decode_owned(bytes: &[u8]) -> Result<BTreeMap<String, OwnedData>> {
    const WHAT: &str = "owned addresses";
    let v: Value = weft_gob::from_bytes(bytes).map_err(gob(WHAT))?;
    let mut out = BTreeMap::new();
    for (k, v) in v.into_map().map_err(gob(WHAT))? {
        let id = k.into_string().map_err(gob(WHAT))?;
        let mut s = struct_of(v, WHAT, &["IsContainer", "Cidrs"])?;
        let is_container = s.decode_field::<bool>("IsContainer").map_err(gob(WHAT))?;
        let mut cidrs = Vec::new();
        for c in s.take("Cidrs").into_slice().map_err(gob(WHAT))? {
            let mut c = struct_of(c, WHAT, &["Addr", "PrefixLen"])?;
            let addr = u32_field(&mut c, "Addr", WHAT)?;
            let prefix = c.decode_field::<i64>("PrefixLen").map_err(gob(WHAT))?;
            let prefix =
                u8::try_from(prefix)
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or(GossipError::OutOfRange {
                        what: "CIDR prefix length",
                        value: prefix.into(),
                    })?;
            let net = Ipv4Net::new(to_ipv4(addr), prefix).map_err(|_| GossipError::OutOfRange {
                what: "CIDR prefix length",
                value: prefix.into(),
            })?;
            cidrs.push(net);
        }
        out.insert(
            id,
            OwnedData {
                is_container,
                cidrs,
            },
        );
    }
    Ok(out)
}

// --- Types ---------------------------------------------------------------------------------

/// `paxos.NodeID`. Weave's process first meets it as a map key, so it has no wire name.
fn node_id_type() -> Type {
    Type::structure(
        "",
        vec![
            Field::new("Name", Type::Uint),
            Field::new("UID", Type::Uint),
        ],
    )
}

fn proposal_id_type() -> Type {
    Type::structure(
        "ProposalID",
        vec![
            Field::new("Round", Type::Uint),
            Field::new("Proposer", node_id_type()),
        ],
    )
}

fn accepted_value_type() -> Type {
    Type::structure(
        "AcceptedValue",
        vec![
            Field::new("Value", Type::slice(Type::Uint).with_name("Value")),
            Field::new("Origin", proposal_id_type()),
        ],
    )
}

/// `paxos.NodeClaims` (no wire name: first met as a map element).
fn node_claims_type() -> Type {
    Type::structure(
        "",
        vec![
            Field::new("Promise", proposal_id_type()),
            Field::new("Accepted", proposal_id_type()),
            Field::new("AcceptedVal", accepted_value_type()),
        ],
    )
}

/// `paxos.GossipState`, `map[NodeID]NodeClaims`.
fn paxos_type() -> Type {
    Type::map(node_id_type(), node_claims_type()).with_name("GossipState")
}

/// `ring.Ring`; its `entries` are `[]*entry`, whose element has no wire name.
pub fn ring_type(pkgs: GoPackages) -> Type {
    let entry = Type::structure(
        "",
        vec![
            Field::new("Token", Type::Uint),
            Field::new("Peer", Type::Uint),
            Field::new("Version", Type::Uint),
            Field::new("Free", Type::Uint),
        ],
    );
    Type::structure(
        "Ring",
        vec![
            Field::new("Start", Type::Uint),
            Field::new("End", Type::Uint),
            Field::new("Peer", Type::Uint),
            Field::new("Entries", Type::slice(entry).with_name("entries")),
            Field::new(
                "Seeds",
                Type::slice(Type::Uint).with_name(format!("[]{}.PeerName", pkgs.mesh)),
            ),
        ],
    )
}

// --- Values --------------------------------------------------------------------------------

fn peer_value(p: PeerName) -> Value {
    Value::Uint(p.as_u64())
}

fn node_id_value(id: &NodeId) -> Value {
    Value::from(
        StructValue::new("")
            .with("Name", peer_value(id.name))
            .with("UID", Value::Uint(id.uid)),
    )
}

fn proposal_id_value(p: &ProposalId) -> Value {
    Value::from(
        StructValue::new("ProposalID")
            .with("Round", Value::Uint(p.round))
            .with("Proposer", node_id_value(&p.proposer)),
    )
}

fn node_claims_value(c: &NodeClaims) -> Value {
    let val = StructValue::new("AcceptedValue")
        .with(
            "Value",
            Value::Slice(
                c.accepted_val
                    .value
                    .iter()
                    .copied()
                    .map(peer_value)
                    .collect(),
            ),
        )
        .with("Origin", proposal_id_value(&c.accepted_val.origin));
    Value::from(
        StructValue::new("")
            .with("Promise", proposal_id_value(&c.promise))
            .with("Accepted", proposal_id_value(&c.accepted))
            .with("AcceptedVal", Value::from(val)),
    )
}

fn ring_value(r: &Ring) -> Value {
    let entries = r
        .entries()
        .iter()
        .map(|e| {
            Value::from(
                StructValue::new("")
                    .with("Token", Value::Uint(e.token.into()))
                    .with("Peer", peer_value(e.peer))
                    .with("Version", Value::Uint(e.version.into()))
                    .with("Free", Value::Uint(e.free.into())),
            )
        })
        .collect();
    let u = r.universe();
    Value::from(
        StructValue::new("Ring")
            .with("Start", Value::Uint(u.start.into()))
            .with("End", Value::Uint(u.end.into()))
            .with("Peer", peer_value(r.peer()))
            .with("Entries", Value::Slice(entries))
            .with(
                "Seeds",
                Value::Slice(r.seeds().iter().copied().map(peer_value).collect()),
            ),
    )
}

// --- Decoding helpers ----------------------------------------------------------------------

fn gob(what: &'static str) -> impl Fn(weft_gob::Error) -> GossipError {
    move |source| GossipError::Gob { what, source }
}

fn encode_with(ty: &Type, v: &Value, what: &'static str) -> Result<Vec<u8>> {
    let mut enc = Encoder::new();
    enc.encode_value(ty, v)
        .map_err(|source| GossipError::Encode { what, source })?;
    Ok(enc.into_bytes())
}

/// Takes a struct, refusing one that has fields but none we know (a value of another type).
fn struct_of(
    v: Value,
    what: &'static str,
    expected: &'static [&'static str],
) -> Result<StructValue> {
    let s = v.into_struct().map_err(gob(what))?;
    if !s.fields.is_empty() && !s.fields.iter().any(|(n, _)| expected.contains(&&**n)) {
        return Err(GossipError::NoFieldsMatched {
            what,
            found: s.fields.iter().map(|(n, _)| n.to_string()).collect(),
            expected,
        });
    }
    Ok(s)
}

fn peer_of(v: &Value, what: &'static str) -> Result<PeerName> {
    let raw = v.as_u64().map_err(gob(what))?;
    PeerName::new(raw).map_err(|_| GossipError::BadPeerName { what, value: raw })
}

fn peer_field(s: &mut StructValue, field: &str, what: &'static str) -> Result<PeerName> {
    peer_of(&s.take(field), what)
}

fn u32_field(s: &mut StructValue, field: &str, what: &'static str) -> Result<u32> {
    let raw = s.take(field).as_u64().map_err(gob(what))?;
    u32::try_from(raw).map_err(|_| GossipError::OutOfRange {
        what,
        value: raw.into(),
    })
}

fn node_id_of(v: Value) -> Result<NodeId> {
    const WHAT: &str = "paxos node id";
    let mut s = struct_of(v, WHAT, &["Name", "UID"])?;
    Ok(NodeId {
        name: peer_field(&mut s, "Name", WHAT)?,
        uid: s.decode_field::<u64>("UID").map_err(gob(WHAT))?,
    })
}

fn proposal_id_of(v: Value) -> Result<ProposalId> {
    const WHAT: &str = "paxos proposal id";
    let mut s = struct_of(v, WHAT, &["Round", "Proposer"])?;
    Ok(ProposalId {
        round: s.decode_field::<u64>("Round").map_err(gob(WHAT))?,
        proposer: match s.take("Proposer") {
            Value::Nil => NodeId::default(),
            v => node_id_of(v)?,
        },
    })
}

fn node_claims_of(v: Value) -> Result<NodeClaims> {
    const WHAT: &str = "paxos claims";
    let mut s = struct_of(v, WHAT, &["Promise", "Accepted", "AcceptedVal"])?;
    let promise = proposal_id_of(s.take("Promise"))?;
    let accepted = proposal_id_of(s.take("Accepted"))?;
    let mut val = struct_of(s.take("AcceptedVal"), WHAT, &["Value", "Origin"])?;
    let value = val
        .take("Value")
        .into_slice()
        .map_err(gob(WHAT))?
        .iter()
        .map(|p| peer_of(p, "paxos value"))
        .collect::<Result<Vec<_>>>()?;
    let origin = proposal_id_of(val.take("Origin"))?;
    Ok(NodeClaims {
        promise,
        accepted,
        accepted_val: AcceptedValue { value, origin },
    })
}

fn ring_of(v: Value) -> Result<Ring> {
    const WHAT: &str = "ring";
    let mut s = struct_of(v, WHAT, &["Start", "End", "Peer", "Entries", "Seeds"])?;
    let start = u32_field(&mut s, "Start", WHAT)?;
    let end = u32_field(&mut s, "End", WHAT)?;
    let peer = peer_field(&mut s, "Peer", WHAT)?;
    let entries = s
        .take("Entries")
        .into_slice()
        .map_err(gob(WHAT))?
        .into_iter()
        .map(|e| {
            const WHAT: &str = "ring entry";
            let mut e = struct_of(e, WHAT, &["Token", "Peer", "Version", "Free"])?;
            Ok(Entry {
                token: u32_field(&mut e, "Token", WHAT)?,
                peer: peer_field(&mut e, "Peer", WHAT)?,
                version: u32_field(&mut e, "Version", WHAT)?,
                free: u32_field(&mut e, "Free", WHAT)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let seeds = s
        .take("Seeds")
        .into_slice()
        .map_err(gob(WHAT))?
        .iter()
        .map(|p| peer_of(p, "ring seed"))
        .collect::<Result<Vec<_>>>()?;
    Ok(Ring::from_parts_unchecked(start, end, peer, entries, seeds))
}
