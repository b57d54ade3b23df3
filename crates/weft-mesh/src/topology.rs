//! The wire form of topology gossip (the `topology` channel's messages).
//!
//! A topology update is one gob stream (one encoder) holding, for each peer, a
//!
//! ```text
//! peerSummary { NameByte []byte; NickName string; UID uint64; Version uint64;
//!               ShortID uint16; HasShortID bool }
//! ```
//!
//! followed by that peer's
//!
//! ```text
//! []connectionSummary { NameByte []byte; RemoteTCPAddr string; Outbound bool;
//!                       Established bool }
//! ```
//!
//! Decoding reads such pairs until the stream ends. Like Go's decoder, fields are
//! matched by name, missing fields are zero, and extra fields are ignored. Names
//! must be 6 bytes (the MAC flavour) and short IDs below 4096; anything else is a
//! [`TopologyError`], which the mesh treats as a gossip error (the connection is
//! dropped, as Weave does).
//!
//! Type ids are numbered as in a Weave process that has already encoded its
//! handshake features map (`map[string]string` = 65, `peerSummary` = 66,
//! `connectionSummary` = 67, `[]connectionSummary` = 68). Receivers never depend on
//! the numbering; matching it keeps our output byte-identical to Go's.

use std::cell::RefCell;
use std::sync::OnceLock;

use weft_gob::{Decoder, Encoder, Field, StructValue, Type, TypeRegistry, Value};
use weft_wire::{PeerName, PeerNameError, ShortId};

use crate::peers::{ConnSummary, PeerUpdate};

/// Errors decoding a topology update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The gob stream is malformed or does not have the expected shape.
    #[error("malformed topology update (peer #{index}): {detail}")]
    Gob {
        /// Index of the peer entry being read.
        index: usize,
        /// What the gob decoder reported.
        detail: String,
    },
    /// A value has the wrong type where a `peerSummary` or its connection list
    /// was expected.
    #[error("malformed topology update (peer #{index}): expected {expected}, got {got}")]
    Shape {
        /// Index of the peer entry being read.
        index: usize,
        /// What was expected.
        expected: &'static str,
        /// What was found.
        got: &'static str,
    },
    /// A `NameByte` is not a 6-byte MAC-flavoured peer name.
    #[error("malformed topology update (peer #{index}): {source}; is the sender using the \"mac\" peer-name flavour?")]
    Name {
        /// Index of the peer entry being read.
        index: usize,
        /// The name error.
        source: PeerNameError,
    },
    /// A short ID does not fit in 12 bits.
    #[error("malformed topology update (peer #{index}): short ID {value} is not below 4096")]
    ShortId {
        /// Index of the peer entry being read.
        index: usize,
        /// The value received.
        value: u64,
    },
    /// The stream ends between a `peerSummary` and its connection list.
    #[error("truncated topology update: peer #{index} has no connection list")]
    Truncated {
        /// Index of the incomplete peer entry.
        index: usize,
    },
}

/// Errors encoding a topology update (only possible on an internal bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoding topology update: {0}")]
pub struct TopologyEncodeError(String);

fn peer_summary_type() -> Type {
    Type::structure(
        "peerSummary",
        vec![
            Field::new("NameByte", Type::Bytes),
            Field::new("NickName", Type::String),
            Field::new("UID", Type::Uint),
            Field::new("Version", Type::Uint),
            Field::new("ShortID", Type::Uint),
            Field::new("HasShortID", Type::Bool),
        ],
    )
}

fn connection_summary_type() -> Type {
    Type::structure(
        "connectionSummary",
        vec![
            Field::new("NameByte", Type::Bytes),
            Field::new("RemoteTCPAddr", Type::String),
            Field::new("Outbound", Type::Bool),
            Field::new("Established", Type::Bool),
        ],
    )
}

/// The gob types of an update and a registry numbering them like a Weave
/// process after its handshake, built once.
struct Types {
    peer: Type,
    conns: Type,
    registry: TypeRegistry,
}

fn types() -> &'static Types {
    static TYPES: OnceLock<Types> = OnceLock::new();
    TYPES.get_or_init(|| {
        let peer = peer_summary_type();
        let conns = Type::slice(connection_summary_type());
        let registry = TypeRegistry::new();
        // Registering a fixed set of types in a fixed order cannot fail.
        for t in [&Type::map(Type::String, Type::String), &peer, &conns] {
            let _ = registry.id_of(t);
        }
        Types {
            peer,
            conns,
            registry,
        }
    })
}

/// Encodes peer entries as one topology update, in the order given.
pub fn encode_update(updates: &[PeerUpdate]) -> Result<Vec<u8>, TopologyEncodeError> {
    encode_update_with(updates, types().registry.clone())
}

/// Like [`encode_update`], numbering types from `registry` (for byte-exact
/// comparisons with a particular Go process).
pub fn encode_update_with(
    updates: &[PeerUpdate],
    registry: TypeRegistry,
) -> Result<Vec<u8>, TopologyEncodeError> {
    let t = types();
    let mut enc = Encoder::with_registry(registry);
    let err = |e: weft_gob::Error| TopologyEncodeError(e.to_string());
    for u in updates {
        enc.encode_value(&t.peer, &peer_value(u)).map_err(err)?;
        enc.encode_value(&t.conns, &conns_value(&u.connections))
            .map_err(err)?;
    }
    Ok(enc.into_bytes())
}

fn peer_value(u: &PeerUpdate) -> Value {
    Value::Struct(Box::new(
        StructValue::new("peerSummary")
            .with("NameByte", Value::bytes(u.name.to_name_bytes().to_vec()))
            .with("NickName", Value::string(u.nickname.clone()))
            .with("UID", Value::Uint(u.uid))
            .with("Version", Value::Uint(u.version))
            .with("ShortID", Value::Uint(u64::from(u.short_id.get())))
            .with("HasShortID", Value::Bool(u.has_short_id)),
    ))
}

fn conns_value(conns: &[(PeerName, ConnSummary)]) -> Value {
    Value::Slice(
        conns
            .iter()
            .map(|(name, c)| {
                Value::Struct(Box::new(
                    StructValue::new("connectionSummary")
                        .with("NameByte", Value::bytes(name.to_name_bytes().to_vec()))
                        .with("RemoteTCPAddr", Value::string(c.remote_tcp_addr.clone()))
                        .with("Outbound", Value::Bool(c.outbound))
                        .with("Established", Value::Bool(c.established)),
                ))
            })
            .collect(),
    )
}

/// One peer entry encoded as the two gob value messages of an update (its
/// `peerSummary` and its `[]connectionSummary`), without type definitions, so
/// that entries can be encoded once and assembled into many updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEntry {
    summary: Vec<u8>,
    conns: Vec<u8>,
}

/// The type-definition messages a stream carries before its first
/// `peerSummary` value and before its first `[]connectionSummary` value.
struct Definitions {
    peer: Vec<u8>,
    conns: Vec<u8>,
}

fn definitions() -> &'static Definitions {
    static DEFS: OnceLock<Definitions> = OnceLock::new();
    DEFS.get_or_init(|| {
        let t = types();
        let dummy = PeerUpdate {
            name: PeerName::default(),
            nickname: String::new(),
            uid: 0,
            version: 0,
            short_id: ShortId::default(),
            has_short_id: false,
            connections: Vec::new(),
        };
        // Each value is encoded twice: the first time it is preceded by its
        // type's definitions, the second time not; the difference is the
        // definitions. Encoding fixed values of fixed types cannot fail.
        let mut enc = Encoder::with_registry(t.registry.clone());
        let mut split = |ty: &Type, v: &Value| {
            let _ = enc.encode_value(ty, v);
            let first = enc.take_bytes();
            let _ = enc.encode_value(ty, v);
            let again = enc.take_bytes();
            first[..first.len().saturating_sub(again.len())].to_vec()
        };
        let peer = split(&t.peer, &peer_value(&dummy));
        let conns = split(&t.conns, &conns_value(&[]));
        Definitions { peer, conns }
    })
}

thread_local! {
    /// An encoder that has already sent both types' definitions: what it
    /// writes next are bare value messages.
    static PRIMED: RefCell<Option<Encoder>> = const { RefCell::new(None) };
}

impl EncodedEntry {
    /// Encodes one entry.
    pub fn new(u: &PeerUpdate) -> Result<EncodedEntry, TopologyEncodeError> {
        let t = types();
        let err = |e: weft_gob::Error| TopologyEncodeError(e.to_string());
        PRIMED.with(|cell| {
            let mut slot = cell.borrow_mut();
            let enc = match slot.as_mut() {
                Some(enc) => enc,
                None => {
                    let mut enc = Encoder::with_registry(t.registry.clone());
                    enc.encode_value(&t.peer, &peer_value(u)).map_err(err)?;
                    enc.encode_value(&t.conns, &conns_value(&[])).map_err(err)?;
                    slot.insert(enc)
                }
            };
            enc.take_bytes();
            enc.encode_value(&t.peer, &peer_value(u)).map_err(err)?;
            let summary = enc.take_bytes();
            enc.encode_value(&t.conns, &conns_value(&u.connections))
                .map_err(err)?;
            let conns = enc.take_bytes();
            Ok(EncodedEntry { summary, conns })
        })
    }
}

/// Assembles encoded entries into one update, byte-identical to
/// [`encode_update`] of the same entries.
pub fn assemble_update<'a>(entries: impl IntoIterator<Item = &'a EncodedEntry>) -> Vec<u8> {
    let defs = definitions();
    let mut out = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        if i == 0 {
            out.extend_from_slice(&defs.peer);
        }
        out.extend_from_slice(&e.summary);
        if i == 0 {
            out.extend_from_slice(&defs.conns);
        }
        out.extend_from_slice(&e.conns);
    }
    out
}

fn kind_struct(
    v: Value,
    index: usize,
    expected: &'static str,
) -> Result<StructValue, TopologyError> {
    match v {
        Value::Struct(s) => Ok(*s),
        other => Err(TopologyError::Shape {
            index,
            expected,
            got: other.kind(),
        }),
    }
}

fn gob_err(index: usize) -> impl Fn(weft_gob::Error) -> TopologyError {
    move |e| TopologyError::Gob {
        index,
        detail: e.to_string(),
    }
}

fn text(s: &StructValue, field: &str, index: usize) -> Result<String, TopologyError> {
    match s.get(field) {
        None | Some(Value::Nil) => Ok(String::new()),
        Some(Value::String(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        Some(other) => Err(TopologyError::Shape {
            index,
            expected: "a string",
            got: other.kind(),
        }),
    }
}

fn name(s: &StructValue, index: usize) -> Result<PeerName, TopologyError> {
    let b = s.get_bytes("NameByte").map_err(gob_err(index))?;
    PeerName::from_name_bytes(b).map_err(|source| TopologyError::Name { index, source })
}

fn decode_peer(s: &StructValue, index: usize) -> Result<PeerUpdate, TopologyError> {
    let short = s.get_u64("ShortID").map_err(gob_err(index))?;
    let short_id = u16::try_from(short)
        .ok()
        .and_then(|v| ShortId::new(v).ok())
        .ok_or(TopologyError::ShortId {
            index,
            value: short,
        })?;
    Ok(PeerUpdate {
        name: name(s, index)?,
        nickname: text(s, "NickName", index)?,
        uid: s.get_u64("UID").map_err(gob_err(index))?,
        version: s.get_u64("Version").map_err(gob_err(index))?,
        short_id,
        has_short_id: s.get_bool("HasShortID").map_err(gob_err(index))?,
        connections: Vec::new(),
    })
}

fn decode_conns(v: Value, index: usize) -> Result<Vec<(PeerName, ConnSummary)>, TopologyError> {
    let items = match v {
        Value::Nil => Vec::new(),
        Value::Slice(items) | Value::Array(items) => items,
        other => {
            return Err(TopologyError::Shape {
                index,
                expected: "a []connectionSummary",
                got: other.kind(),
            })
        }
    };
    items
        .into_iter()
        .map(|item| {
            let s = kind_struct(item, index, "a connectionSummary")?;
            Ok((
                name(&s, index)?,
                ConnSummary {
                    remote_tcp_addr: text(&s, "RemoteTCPAddr", index)?,
                    outbound: s.get_bool("Outbound").map_err(gob_err(index))?,
                    established: s.get_bool("Established").map_err(gob_err(index))?,
                },
            ))
        })
        .collect()
}

/// Decodes a topology update into peer entries, in wire order.
pub fn decode_update(bytes: &[u8]) -> Result<Vec<PeerUpdate>, TopologyError> {
    let mut dec = Decoder::new(bytes);
    let mut out = Vec::new();
    loop {
        let index = out.len();
        let Some(v) = dec.next_value().map_err(gob_err(index))? else {
            break;
        };
        let ps = kind_struct(v, index, "a peerSummary")?;
        let mut peer = decode_peer(&ps, index)?;
        let Some(conns) = dec.next_value().map_err(gob_err(index))? else {
            return Err(TopologyError::Truncated { index });
        };
        peer.connections = decode_conns(conns, index)?;
        out.push(peer);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = "/work/shared/vectors/gob/topology_two_peers.gob";

    fn vector() -> Option<Vec<u8>> {
        // The shared vectors live outside the crate; the test reports rather
        // than passes vacuously when they are missing.
        std::fs::read(VECTOR).ok()
    }

    fn pn(s: &str) -> PeerName {
        s.parse().unwrap()
    }

    fn expected() -> Vec<PeerUpdate> {
        vec![
            PeerUpdate {
                name: pn("0a:1b:2c:3d:4e:5f"),
                nickname: "node-1".into(),
                uid: 9876543210,
                version: 5,
                short_id: ShortId::new(1234).unwrap(),
                has_short_id: true,
                connections: vec![(
                    pn("02:aa:bb:cc:dd:ee"),
                    ConnSummary {
                        remote_tcp_addr: "192.168.77.2:6783".into(),
                        outbound: true,
                        established: true,
                    },
                )],
            },
            PeerUpdate {
                name: pn("02:aa:bb:cc:dd:ee"),
                nickname: "node-2".into(),
                uid: 1,
                version: 1,
                short_id: ShortId::new(0).unwrap(),
                has_short_id: false,
                connections: vec![],
            },
        ]
    }

    #[test]
    fn go_vector_decodes_and_reencodes_byte_exact() {
        let bytes = vector().expect("shared vector topology_two_peers.gob is missing");
        let decoded = decode_update(&bytes).unwrap();
        assert_eq!(decoded, expected());
        assert_eq!(encode_update(&decoded).unwrap(), bytes);
        // The cached-fragment path produces the same bytes.
        let entries: Vec<EncodedEntry> = decoded
            .iter()
            .map(|u| EncodedEntry::new(u).unwrap())
            .collect();
        assert_eq!(assemble_update(&entries), bytes);
    }

    #[test]
    fn round_trip_and_fragments_match() {
        let mut updates = expected();
        updates.push(PeerUpdate {
            name: pn("::7"),
            nickname: "ünïcode".into(),
            uid: u64::MAX,
            version: 0,
            short_id: ShortId::new(4095).unwrap(),
            has_short_id: true,
            connections: vec![
                (
                    pn("::8"),
                    ConnSummary {
                        remote_tcp_addr: String::new(),
                        outbound: false,
                        established: false,
                    },
                ),
                (
                    pn("::9"),
                    ConnSummary {
                        remote_tcp_addr: "10.0.0.9:40000".into(),
                        outbound: false,
                        established: true,
                    },
                ),
            ],
        });
        let bytes = encode_update(&updates).unwrap();
        assert_eq!(decode_update(&bytes).unwrap(), updates);
        for n in 0..=updates.len() {
            let entries: Vec<EncodedEntry> = updates[..n]
                .iter()
                .map(|u| EncodedEntry::new(u).unwrap())
                .collect();
            assert_eq!(
                assemble_update(&entries),
                encode_update(&updates[..n]).unwrap()
            );
        }
        assert!(decode_update(&[]).unwrap().is_empty());
    }

    #[test]
    fn malformed_updates_are_errors() {
        let bytes = encode_update(&expected()).unwrap();
        // Every strict prefix fails or yields fewer peers, never panics.
        for cut in 0..bytes.len() {
            if let Ok(v) = decode_update(&bytes[..cut]) {
                assert!(v.len() < 2, "prefix {cut} decoded fully");
            }
        }
        // A peerSummary without its connection list.
        let mut enc = Encoder::with_registry(TypeRegistry::new());
        enc.encode_value(&types().peer, &peer_value(&expected()[0]))
            .unwrap();
        assert_eq!(
            decode_update(&enc.into_bytes()),
            Err(TopologyError::Truncated { index: 0 })
        );
        // A bad name length.
        let mut u = expected()[0].clone();
        u.connections.clear();
        let mut enc = Encoder::with_registry(TypeRegistry::new());
        let v = Value::Struct(Box::new(
            StructValue::new("peerSummary").with("NameByte", Value::bytes(vec![1, 2, 3])),
        ));
        enc.encode_value(&types().peer, &v).unwrap();
        enc.encode_value(&types().conns, &conns_value(&[])).unwrap();
        assert!(matches!(
            decode_update(&enc.into_bytes()),
            Err(TopologyError::Name { index: 0, .. })
        ));
        // A short ID beyond 12 bits.
        let mut enc = Encoder::with_registry(TypeRegistry::new());
        let v = Value::Struct(Box::new(
            StructValue::new("peerSummary")
                .with("NameByte", Value::bytes(vec![1, 2, 3, 4, 5, 6]))
                .with("ShortID", Value::Uint(4096)),
        ));
        enc.encode_value(&types().peer, &v).unwrap();
        enc.encode_value(&types().conns, &conns_value(&[])).unwrap();
        assert_eq!(
            decode_update(&enc.into_bytes()),
            Err(TopologyError::ShortId {
                index: 0,
                value: 4096
            })
        );
        // A value of the wrong shape where a peerSummary belongs.
        let s = weft_gob::to_bytes("topology").unwrap();
        assert!(matches!(
            decode_update(&s),
            Err(TopologyError::Shape { index: 0, .. })
        ));
        let _ = u;
    }
}
