//! Which identifier holds which addresses.
//!
//! As Weave's `owned` map: identifier (the CNI container ID, `weave:expose` for the bridge,
//! `_` for addresses found without an ID) → [`OwnedData`]. Each address is recorded with the
//! prefix length of the subnet it was handed out in (`10.32.0.1/12`). An address is held by at
//! most one identifier; a reverse index answers [`Owned::find_by_addr`] in O(log n).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::address::{from_ipv4, Address, Range};

/// The addresses one identifier holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedData {
    /// True for containers (pods); false for things like the bridge (`weave:expose`).
    pub is_container: bool,
    /// Address + prefix length of the subnet it belongs to, in the order they were recorded.
    pub cidrs: Vec<Ipv4Net>,
}

/// Errors of [`Owned`] updates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnedError {
    /// The address is recorded for another identifier.
    #[error("address {addr} is already owned by {owner}")]
    HeldByOther {
        /// The address.
        addr: Ipv4Addr,
        /// The identifier holding it.
        owner: String,
    },
}

/// Identifier → addresses, with a reverse index address → identifier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    by_id: BTreeMap<String, OwnedData>,
    by_addr: BTreeMap<Address, String>,
}

impl Owned {
    /// An empty map.
    pub fn new() -> Owned {
        Owned::default()
    }

    /// Number of identifiers holding at least one address.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when nobody holds anything.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Number of addresses recorded, over all identifiers.
    pub fn num_addresses(&self) -> usize {
        self.by_addr.len()
    }

    /// The record of `id`.
    pub fn get(&self, id: &str) -> Option<&OwnedData> {
        self.by_id.get(id)
    }

    /// The identifier holding `addr`.
    pub fn find_by_addr(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&from_ipv4(addr)).map(String::as_str)
    }

    /// The first address of `id` (in recording order) inside `subnet`.
    pub fn find_in_subnet(&self, id: &str, subnet: &Ipv4Net) -> Option<Ipv4Net> {
        self.by_id
            .get(id)?
            .cidrs
            .iter()
            .find(|c| subnet.contains(&c.addr()))
            .copied()
    }

    /// Number of recorded addresses inside `range`.
    pub fn num_addresses_in(&self, range: Range) -> usize {
        if range.is_empty() {
            return 0;
        }
        self.by_addr.range(range.start..range.end).count()
    }

    /// Every identifier and its record, sorted by identifier.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &OwnedData)> {
        self.by_id.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// What `id`'s record would become after adding `cidr` (for persisting before applying).
    /// Fails if another identifier holds the address. Recording an address `id` already holds
    /// replaces its prefix length.
    pub fn with_added(
        &self,
        id: &str,
        cidr: Ipv4Net,
        is_container: bool,
    ) -> Result<OwnedData, OwnedError> {
        self.check_free_for(id, cidr.addr())?;
        let mut data = self.by_id.get(id).cloned().unwrap_or_default();
        data.is_container = is_container;
        match data.cidrs.iter_mut().find(|c| c.addr() == cidr.addr()) {
            Some(existing) => *existing = cidr,
            None => data.cidrs.push(cidr),
        }
        Ok(data)
    }

    /// Records `cidr` for `id` (see [`Owned::with_added`]).
    pub fn add(&mut self, id: &str, cidr: Ipv4Net, is_container: bool) -> Result<(), OwnedError> {
        let data = self.with_added(id, cidr, is_container)?;
        self.set(id, data)
    }

    /// Replaces the whole record of `id` (an empty `cidrs` removes it). Fails, changing nothing,
    /// if another identifier holds one of the addresses.
    pub fn set(&mut self, id: &str, data: OwnedData) -> Result<(), OwnedError> {
        for c in &data.cidrs {
            self.check_free_for(id, c.addr())?;
        }
        self.remove(id);
        if data.cidrs.is_empty() {
            return Ok(());
        }
        for c in &data.cidrs {
            self.by_addr.insert(from_ipv4(c.addr()), id.to_string());
        }
        self.by_id.insert(id.to_string(), data);
        Ok(())
    }

    /// Removes every address of `id`; returns its record.
    pub fn remove(&mut self, id: &str) -> Option<OwnedData> {
        let data = self.by_id.remove(id)?;
        for c in &data.cidrs {
            self.by_addr.remove(&from_ipv4(c.addr()));
        }
        Some(data)
    }

    /// What `id`'s record would become without `addr`; `None` if `id` does not hold `addr`.
    pub fn without(&self, id: &str, addr: Ipv4Addr) -> Option<OwnedData> {
        let data = self.by_id.get(id)?;
        if !data.cidrs.iter().any(|c| c.addr() == addr) {
            return None;
        }
        let mut data = data.clone();
        data.cidrs.retain(|c| c.addr() != addr);
        Some(data)
    }

    /// Removes one address of `id`; returns it with its prefix length.
    pub fn remove_addr(&mut self, id: &str, addr: Ipv4Addr) -> Option<Ipv4Net> {
        let data = self.by_id.get_mut(id)?;
        let pos = data.cidrs.iter().position(|c| c.addr() == addr)?;
        let cidr = data.cidrs.remove(pos);
        if data.cidrs.is_empty() {
            self.by_id.remove(id);
        }
        self.by_addr.remove(&from_ipv4(addr));
        Some(cidr)
    }

    fn check_free_for(&self, id: &str, addr: Ipv4Addr) -> Result<(), OwnedError> {
        match self.by_addr.get(&from_ipv4(addr)) {
            Some(owner) if owner != id => Err(OwnedError::HeldByOther {
                addr,
                owner: owner.clone(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn add_find_remove() {
        let mut o = Owned::new();
        o.add("c1", net("10.32.0.1/12"), true).unwrap();
        o.add("c1", net("192.168.0.5/24"), true).unwrap();
        o.add("weave:expose", net("10.32.0.2/12"), false).unwrap();
        assert_eq!(
            o.find_by_addr("10.32.0.2".parse().unwrap()),
            Some("weave:expose")
        );
        assert_eq!(
            o.add("c2", net("10.32.0.1/12"), true),
            Err(OwnedError::HeldByOther {
                addr: "10.32.0.1".parse().unwrap(),
                owner: "c1".into()
            })
        );
        assert_eq!(
            o.find_in_subnet("c1", &net("10.32.0.0/12")),
            Some(net("10.32.0.1/12"))
        );
        assert_eq!(o.find_in_subnet("c1", &net("10.40.0.0/14")), None);
        assert_eq!(o.num_addresses(), 3);
        assert_eq!(o.len(), 2);
        // Re-adding with another prefix replaces it.
        o.add("c1", net("10.32.0.1/16"), false).unwrap();
        assert_eq!(
            o.get("c1").unwrap().cidrs,
            vec![net("10.32.0.1/16"), net("192.168.0.5/24")]
        );
        assert!(!o.get("c1").unwrap().is_container);
        assert_eq!(
            o.remove_addr("c1", "10.32.0.1".parse().unwrap()),
            Some(net("10.32.0.1/16"))
        );
        assert_eq!(o.remove_addr("c1", "10.32.0.1".parse().unwrap()), None);
        assert_eq!(o.find_by_addr("10.32.0.1".parse().unwrap()), None);
        let d = o.remove("c1").unwrap();
        assert_eq!(d.cidrs, vec![net("192.168.0.5/24")]);
        assert!(o.get("c1").is_none());
        assert_eq!(o.num_addresses(), 1);
        assert!(o
            .without("weave:expose", "10.32.0.2".parse().unwrap())
            .unwrap()
            .cidrs
            .is_empty());
        assert!(o
            .without("weave:expose", "10.32.0.3".parse().unwrap())
            .is_none());
    }

    #[test]
    fn set_refuses_conflicts_without_change() {
        let mut o = Owned::new();
        o.add("a", net("10.0.0.1/8"), true).unwrap();
        o.add("b", net("10.0.0.2/8"), true).unwrap();
        let bad = OwnedData {
            is_container: true,
            cidrs: vec![net("10.0.0.3/8"), net("10.0.0.1/8")],
        };
        assert!(o.set("b", bad).is_err());
        assert_eq!(o.get("b").unwrap().cidrs, vec![net("10.0.0.2/8")]);
        assert_eq!(o.find_by_addr("10.0.0.3".parse().unwrap()), None);
        o.set("b", OwnedData::default()).unwrap();
        assert!(!o.is_empty() && o.get("b").is_none());
    }
}
