//! weft-ipam: IP address management for Weft.
//!
//! This crate follows Weave Net's IPAM model (see `weave-net-internals.md` §5):
//!
//! - [`address`]: IPv4 addresses as `u32`, half-open [`address::Range`]s and CIDR helpers.
//! - [`space`]: the local allocator, [`space::Space`]: the ranges this peer owns and the free
//!   ranges inside them, kept as two sorted boundary lists (no bitmaps). It hands out the lowest
//!   free address first.
//! - [`owned`]: which identifier (container ID, `weave:expose`, ...) holds which addresses.
//! - [`store`]: durable persistence in a single redb file (`<db-prefix>data.db`).
//! - [`local`]: [`LocalAllocator`], the single-node allocator combining the above.
//! - [`ring`]: the shared address ring, a CRDT saying which peer owns which part of the
//!   allocation range, merged from gossip ([`ring::Ring::merge`]).
//! - [`paxos`]: single-value Paxos over gossip, agreeing on the peers that create the ring.
//! - [`gossip`]: the gob wire encodings (gossip state, unicast messages, persisted values),
//!   compatible with Weave Net 2.8.
//! - [`allocator`]: the ring-aware allocator core (sans-IO): allocation from owned ranges,
//!   space requests and donation, claims, the initial ring, gossip handling.
//! - [`node`]: [`NodeIpam`], the per-node IPAM service the router drives: the allocator plus
//!   its store (everything committed before it is acknowledged or sent), deadlines on pending
//!   operations, status for `weft status ipam` and `/report`.
//! - [`sim`]: a deterministic simulated network for tests and benchmarks.
//!
//! Everything here is synchronous; the router keeps the allocator behind a mutex.

pub mod address;
pub mod allocator;
mod error;
pub mod gossip;
pub mod local;
pub mod node;
pub mod owned;
pub mod paxos;
pub mod ring;
pub mod sim;
pub mod space;
pub mod store;

pub use address::{Address, CidrExt, Range};
pub use error::{Error, Result};
pub use local::{LocalAllocator, OpenReport, OwnedEntry};
pub use node::{IpamFailure, NodeAction, NodeError, NodeIpam};
pub use owned::{Owned, OwnedData};
pub use ring::{PeerName, Ring};
pub use space::{Space, SpaceError};
pub use store::{PersistedState, RingRecord, Store, StoreError, SCHEMA_VERSION};
