//! Sans-IO mesh core of Weft, wire-compatible with Weave Net 2.8's
//! `weaveworks/mesh`.
//!
//! Weave peers form a mesh of TCP connections. Over it they gossip the
//! *topology* (who is connected to whom), derive routes from it, and carry the
//! gossip of other subsystems (IPAM's `IPallocation` channel). This crate holds
//! all of that logic as state machines that are fed bytes, timer ticks and
//! events and return actions; it contains no sockets, clocks, threads or global
//! randomness. A driver (the `weft router` daemon, or the [`sim`] harness) does
//! the I/O.
//!
//! | module | concern |
//! |---|---|
//! | [`peers`] | the topology table, its merge rules, placeholders, garbage collection, short IDs |
//! | [`topology`] | the gob wire form of topology updates |
//! | [`routes`] | unicast next hops and broadcast trees (deterministic BFS) |
//! | [`gossip`] | channel handler/data traits, per-connection senders, the surrogate gossiper |
//! | [`connection`] | admitting a connection (self, collision, duplicates, limit), heartbeats |
//! | [`maker`] | the connection maker: direct and discovered targets, retry backoff |
//! | [`mesh`] | [`Mesh`], the top-level state machine the driver talks to |
//! | [`status`] | snapshots shaped like Weave's `/status` and `/report` |
//! | [`sim`] | a deterministic in-process network simulator for many meshes |
//!
//! Wire formats below the gossip payloads (handshake, framing, crypto, gossip
//! headers) come from `weft-wire`; gob from `weft-gob`.

#![warn(missing_docs)]

pub mod connection;
#[doc(hidden)]
pub mod fuzz_support;
pub mod gossip;
pub mod maker;
pub mod mesh;
pub mod peers;
pub mod routes;
pub mod sim;
pub mod status;
pub mod time;
pub mod topology;

pub use connection::{ConnId, ConnectError, ConnectionParams};
pub use gossip::{
    GossipContext, GossipData, GossipHandler, HandlerError, LatestData, MessagesData,
    SurrogateGossiper, GOSSIP_INTERVAL, TOPOLOGY_CHANNEL,
};
pub use maker::{ConnectionMaker, PeerAddr, PeerAddrError, Target, TargetState};
pub use mesh::{Action, Mesh, MeshConfig, MeshError, MeshStats};
pub use peers::{ConnSummary, Peer, PeerUpdate, Peers};
pub use routes::Routes;
pub use status::MeshStatus;
pub use time::Millis;
pub use weft_wire::{PeerName, ShortId};
