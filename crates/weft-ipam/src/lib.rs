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
//! - [`local`]: [`LocalAllocator`], the single-node allocator combining the above. A later issue
//!   adds the ring (ownership shared between peers, donation) on top of the same pieces.
//!
//! Everything here is synchronous; the router keeps the allocator behind a mutex.

pub mod address;
mod error;
pub mod local;
pub mod owned;
pub mod space;
pub mod store;

pub use address::{Address, CidrExt, Range};
pub use error::{Error, Result};
pub use local::{LocalAllocator, OpenReport, OwnedEntry};
pub use owned::{Owned, OwnedData};
pub use space::{Space, SpaceError};
pub use store::{PersistedState, RingRecord, Store, StoreError, SCHEMA_VERSION};
