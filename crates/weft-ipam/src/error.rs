//! The crate's error type.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

use crate::space::SpaceError;
use crate::store::StoreError;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in IPAM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `release` of an identifier that holds nothing (Weave's wording).
    #[error("Delete: no addresses for {0}")]
    NoAddresses(String),

    /// `release_addr` of an address the identifier does not hold (Weave's wording).
    #[error("Free: address {addr} not found for {id}")]
    AddressNotFound {
        /// The identifier.
        id: String,
        /// The address.
        addr: Ipv4Addr,
    },

    /// The requested subnet has no address in the allocation range.
    #[error(
        "subnet {subnet} is outside the allocation range {universe}; \
         ask for a subnet inside {universe}"
    )]
    SubnetOutsideUniverse {
        /// The subnet asked for.
        subnet: Ipv4Net,
        /// The allocation range (`--ipalloc-range`).
        universe: Ipv4Net,
    },

    /// Every allocatable address of the subnet is in use.
    #[error(
        "no free address in subnet {subnet}: all {in_use} allocatable addresses are in use; \
         release some or use a bigger range"
    )]
    Exhausted {
        /// The subnet asked for.
        subnet: Ipv4Net,
        /// How many of its host addresses inside the allocation range are allocated.
        in_use: u64,
    },

    /// The address is held by another identifier.
    #[error("address {addr} is already owned by {owner}")]
    AlreadyOwned {
        /// The address.
        addr: Ipv4Addr,
        /// The identifier holding it.
        owner: String,
    },

    /// The allocation range given at start-up cannot be used.
    #[error("invalid allocation range {universe}: {reason}")]
    InvalidUniverse {
        /// The range.
        universe: Ipv4Net,
        /// Why.
        reason: String,
    },

    /// The default subnet given at start-up has no address in the allocation range.
    #[error(
        "default subnet {subnet} does not overlap the allocation range {universe}; \
         the default subnet must be inside the allocation range"
    )]
    DefaultSubnetOutsideUniverse {
        /// The default subnet.
        subnet: Ipv4Net,
        /// The allocation range.
        universe: Ipv4Net,
    },

    /// An operation on the address space failed (an internal inconsistency).
    #[error("address space: {0}")]
    Space(#[from] SpaceError),

    /// The database failed: locked, corrupt, too new, or an I/O error. HTTP-wise a 500.
    #[error(transparent)]
    Store(#[from] StoreError),
}
