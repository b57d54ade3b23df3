//! IPv4 addresses as `u32`, half-open address ranges and CIDR helpers.
//!
//! Weave's IPAM works on `uint32` addresses and half-open `[start, end)` ranges; so does this
//! module. A consequence of `end` being a `u32` is that a range can never include
//! `255.255.255.255`: [`Range::from_net`] refuses a CIDR that contains it.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// An IPv4 address as a host-order `u32` (`10.32.0.1` is `0x0a20_0001`).
pub type Address = u32;

/// Converts an [`Ipv4Addr`] to an [`Address`].
pub fn from_ipv4(ip: Ipv4Addr) -> Address {
    u32::from(ip)
}

/// Converts an [`Address`] to an [`Ipv4Addr`].
pub fn to_ipv4(addr: Address) -> Ipv4Addr {
    Ipv4Addr::from(addr)
}

/// Builds `addr/prefix_len`; `None` when `prefix_len > 32`.
pub fn cidr(addr: Address, prefix_len: u8) -> Option<Ipv4Net> {
    Ipv4Net::new(to_ipv4(addr), prefix_len).ok()
}

/// Errors of the address helpers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The CIDR contains 255.255.255.255, which a half-open `u32` range cannot hold.
    #[error(
        "{0} includes 255.255.255.255, which an IPAM range cannot represent; \
         choose a range that ends below 255.255.255.255"
    )]
    IncludesLastAddress(Ipv4Net),
}

/// A half-open range of addresses `[start, end)`. `start >= end` means empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Range {
    /// First address in the range.
    pub start: Address,
    /// First address after the range.
    pub end: Address,
}

impl Range {
    /// `[start, end)`. An `end` below `start` gives an empty range at `start`.
    pub const fn new(start: Address, end: Address) -> Range {
        if end < start {
            Range { start, end: start }
        } else {
            Range { start, end }
        }
    }

    /// The range covering every address of `net`.
    ///
    /// Fails when `net` contains 255.255.255.255 (its end would not fit in a `u32`).
    pub fn from_net(net: Ipv4Net) -> Result<Range, AddressError> {
        let start = from_ipv4(net.network());
        let last = from_ipv4(net.broadcast());
        match last.checked_add(1) {
            Some(end) => Ok(Range { start, end }),
            None => Err(AddressError::IncludesLastAddress(net)),
        }
    }

    /// Number of addresses in the range.
    pub const fn size(&self) -> u64 {
        self.end.saturating_sub(self.start) as u64
    }

    /// True when the range holds no address.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// True when `addr` is in the range.
    pub const fn contains(&self, addr: Address) -> bool {
        self.start <= addr && addr < self.end
    }

    /// True when the two ranges share at least one address.
    pub const fn overlaps(&self, other: &Range) -> bool {
        !self.is_empty() && !other.is_empty() && self.start < other.end && other.start < self.end
    }

    /// True when every address of `other` is in `self` (an empty `other` is contained anywhere).
    pub const fn contains_range(&self, other: &Range) -> bool {
        other.is_empty() || (self.start <= other.start && other.end <= self.end)
    }

    /// The addresses in both ranges (possibly empty).
    pub fn intersect(&self, other: &Range) -> Range {
        Range::new(self.start.max(other.start), self.end.min(other.end))
    }

    /// The last address of the range, if any.
    pub const fn last(&self) -> Option<Address> {
        if self.is_empty() {
            None
        } else {
            Some(self.end - 1)
        }
    }

    /// The CIDR equal to this range, if the range is exactly one aligned power-of-two block.
    pub fn to_net(&self) -> Option<Ipv4Net> {
        let mut blocks = self.cidr_blocks();
        let first = blocks.next()?;
        if blocks.next().is_some() {
            return None;
        }
        Some(first.1)
    }

    /// Splits the range into the fewest CIDR blocks, lowest first (at most 62 blocks).
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
        self.cidr_blocks().map(|(_, net)| net).collect()
    }

    /// The biggest CIDR-aligned block inside the range; the lowest one when several tie.
    pub fn biggest_cidr(&self) -> Option<Range> {
        let mut best: Option<Range> = None;
        for (block, _) in self.cidr_blocks() {
            if best.is_none_or(|b| block.size() > b.size()) {
                best = Some(block);
            }
        }
        best
    }

    /// The greedy decomposition into maximal aligned blocks.
    fn cidr_blocks(&self) -> impl Iterator<Item = (Range, Ipv4Net)> {
        let mut cur = self.start as u64;
        let end = if self.is_empty() {
            cur
        } else {
            self.end as u64
        };
        std::iter::from_fn(move || {
            if cur >= end {
                return None;
            }
            let remaining = end - cur;
            let align = if cur == 0 {
                1u64 << 32
            } else {
                1u64 << cur.trailing_zeros()
            };
            let fit = 1u64 << (63 - remaining.leading_zeros());
            let size = align.min(fit);
            let prefix = 32 - size.trailing_zeros() as u8;
            // cur and cur + size both fit in u32 because cur + size <= end <= u32::MAX.
            let block = Range {
                start: cur as u32,
                end: (cur + size) as u32,
            };
            let net = Ipv4Net::new(to_ipv4(cur as u32), prefix).ok()?;
            cur += size;
            Some((block, net))
        })
    }
}

impl fmt::Display for Range {
    /// `10.32.0.0-10.47.255.255` (both ends inclusive, as Weave prints ranges).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last() {
            Some(last) => write!(f, "{}-{}", to_ipv4(self.start), to_ipv4(last)),
            None => write!(f, "(empty range at {})", to_ipv4(self.start)),
        }
    }
}

impl TryFrom<Ipv4Net> for Range {
    type Error = AddressError;
    fn try_from(net: Ipv4Net) -> Result<Range, AddressError> {
        Range::from_net(net)
    }
}

/// CIDR helpers on [`Ipv4Net`], in terms of `u32` [`Address`]es.
pub trait CidrExt {
    /// The first address of the subnet (its network address).
    fn network_addr(&self) -> Address;
    /// The last address of the subnet (its broadcast address).
    fn broadcast_addr(&self) -> Address;
    /// Number of addresses in the subnet (2^(32 - prefix_len)).
    fn num_addresses(&self) -> u64;
    /// Every address of the subnet as a [`Range`] (fails if it includes 255.255.255.255).
    fn addr_range(&self) -> Result<Range, AddressError>;
    /// The addresses usable by hosts: the subnet without its first and last address
    /// (RFC 1122, as Weave's `HostRange`). Empty for /31 and /32.
    fn host_range(&self) -> Range;
    /// True when `addr` is inside the subnet.
    fn contains_addr(&self, addr: Address) -> bool;
    /// True when the two subnets share an address.
    fn overlaps_net(&self, other: &Ipv4Net) -> bool;
    /// True when the subnet shares an address with `range`.
    fn overlaps_range(&self, range: &Range) -> bool;
}

impl CidrExt for Ipv4Net {
    fn network_addr(&self) -> Address {
        from_ipv4(self.network())
    }

    fn broadcast_addr(&self) -> Address {
        from_ipv4(self.broadcast())
    }

    fn num_addresses(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len()))
    }

    fn addr_range(&self) -> Result<Range, AddressError> {
        Range::from_net(*self)
    }

    fn host_range(&self) -> Range {
        let network = self.network_addr();
        if self.prefix_len() >= 31 {
            return Range {
                start: network,
                end: network,
            };
        }
        // prefix_len <= 30: network + 1 <= broadcast - 1, no overflow.
        Range {
            start: network + 1,
            end: self.broadcast_addr(),
        }
    }

    fn contains_addr(&self, addr: Address) -> bool {
        self.network_addr() <= addr && addr <= self.broadcast_addr()
    }

    fn overlaps_net(&self, other: &Ipv4Net) -> bool {
        self.network_addr() <= other.broadcast_addr()
            && other.network_addr() <= self.broadcast_addr()
    }

    fn overlaps_range(&self, range: &Range) -> bool {
        !range.is_empty() && self.network_addr() < range.end && range.start <= self.broadcast_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn a(s: &str) -> Address {
        from_ipv4(s.parse().unwrap())
    }

    #[test]
    fn default_universe() {
        let u = net("10.32.0.0/12");
        let r = u.addr_range().unwrap();
        assert_eq!(r.to_string(), "10.32.0.0-10.47.255.255");
        assert_eq!(r.size(), 1 << 20);
        assert_eq!(u.num_addresses(), 1 << 20);
        let h = u.host_range();
        assert_eq!(h.size(), 1_048_574);
        assert_eq!(h.start, a("10.32.0.1"));
        assert_eq!(h.last(), Some(a("10.47.255.254")));
        assert_eq!(u.network_addr(), a("10.32.0.0"));
        assert_eq!(u.broadcast_addr(), a("10.47.255.255"));
        assert_eq!(r.to_net(), Some(u));
        assert_eq!(Range::try_from(u).unwrap(), r);
    }

    #[test]
    fn host_range_small_prefixes() {
        assert_eq!(net("10.0.0.0/30").host_range().size(), 2);
        assert!(net("10.0.0.0/31").host_range().is_empty());
        assert!(net("10.0.0.7/32").host_range().is_empty());
        assert!(net("255.255.255.255/32").host_range().is_empty());
        let top = net("255.255.255.0/24");
        assert_eq!(
            top.host_range().to_string(),
            "255.255.255.1-255.255.255.254"
        );
        assert_eq!(
            top.addr_range(),
            Err(AddressError::IncludesLastAddress(top))
        );
        assert!(net("0.0.0.0/0").addr_range().is_err());
    }

    #[test]
    fn overlap_and_contains() {
        let r = Range::new(10, 20);
        assert!(r.contains(10) && r.contains(19) && !r.contains(20) && !r.contains(9));
        assert!(r.overlaps(&Range::new(19, 30)));
        assert!(!r.overlaps(&Range::new(20, 30)));
        assert!(!r.overlaps(&Range::new(15, 15)));
        assert_eq!(r.intersect(&Range::new(15, 40)), Range::new(15, 20));
        assert!(r.intersect(&Range::new(30, 40)).is_empty());
        assert!(Range::new(5, 3).is_empty());
        assert!(net("10.32.0.0/12").overlaps_net(&net("10.40.0.0/14")));
        assert!(!net("10.32.0.0/12").overlaps_net(&net("10.48.0.0/14")));
        assert!(net("10.32.0.0/12").overlaps_range(&Range::new(a("10.47.255.255"), a("10.48.0.5"))));
        assert!(!net("10.32.0.0/12").overlaps_range(&Range::new(a("10.48.0.0"), a("10.48.0.5"))));
        assert!(net("10.32.0.0/12").contains_addr(a("10.47.255.255")));
        assert!(!net("10.32.0.0/12").contains_addr(a("10.48.0.0")));
    }

    #[test]
    fn cidr_decomposition() {
        let r = Range::new(a("10.0.0.1"), a("10.0.0.9"));
        let got: Vec<String> = r.cidrs().iter().map(|n| n.to_string()).collect();
        assert_eq!(
            got,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/30", "10.0.0.8/32"]
        );
        assert_eq!(
            r.biggest_cidr(),
            Some(Range::new(a("10.0.0.4"), a("10.0.0.8")))
        );
        assert_eq!(r.to_net(), None);
        assert_eq!(Range::new(0, u32::MAX).cidrs().len(), 32);
        assert_eq!(Range::new(0, 0).biggest_cidr(), None);
        assert_eq!(Range::new(0, 1 << 31).to_net(), Some(net("0.0.0.0/1")));
    }

    #[test]
    fn display() {
        assert_eq!(
            Range::new(a("1.2.3.4"), a("1.2.3.5")).to_string(),
            "1.2.3.4-1.2.3.4"
        );
        assert_eq!(Range::new(7, 7).to_string(), "(empty range at 0.0.0.7)");
        assert_eq!(
            to_ipv4(a("192.168.1.2")),
            "192.168.1.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(cidr(a("10.32.0.1"), 12), Some(net("10.32.0.1/12")));
        assert_eq!(cidr(1, 33), None);
    }
}
