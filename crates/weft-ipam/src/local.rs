//! The single-node allocator: this peer owns the whole allocation range.
//!
//! [`LocalAllocator`] combines the [`Space`] (which addresses are free), the [`Owned`] map
//! (which identifier holds what) and the [`Store`] (durability). Every mutating call persists
//! its change with a durable commit *before* it returns `Ok`, and changes nothing in memory
//! when the commit fails.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::address::{from_ipv4, to_ipv4, CidrExt, Range};
use crate::error::{Error, Result};
use crate::owned::{Owned, OwnedData, OwnedError};
use crate::space::Space;
use crate::store::{RingRecord, Store, StoreError};

/// What [`LocalAllocator::open`] found in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// True when persisted state was restored.
    pub restored: bool,
    /// Why persisted state was discarded; `None` when it was restored or there was none.
    pub discarded_reason: Option<String>,
    /// Identifiers holding addresses after the open.
    pub owned_ids: usize,
}

/// One identifier and its addresses, for listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnedEntry {
    /// The identifier (container ID, `weave:expose`, ...).
    pub id: String,
    /// True for containers.
    pub is_container: bool,
    /// Addresses with the prefix length of their subnet.
    pub addrs: Vec<Ipv4Net>,
}

/// The single-node IPAM allocator.
#[derive(Debug)]
pub struct LocalAllocator {
    space: Space,
    owned: Owned,
    store: Store,
    universe: Ipv4Net,
    default_subnet: Ipv4Net,
    peer_name: String,
}

impl LocalAllocator {
    /// Opens/creates the store at `db_path`. If persisted state exists with the same peer name
    /// and universe it is restored (space rebuilt from the owned universe, every owned address
    /// re-claimed); otherwise it is discarded as Weave does and `OpenReport` says why.
    ///
    /// Fails when the universe includes 255.255.255.255, when the default subnet does not
    /// overlap the universe, and on database errors ([`Error::Store`]: locked by another
    /// process, corrupt, newer schema, I/O).
    pub fn open(
        db_path: &Path,
        universe: Ipv4Net,
        default_subnet: Ipv4Net,
        peer_name: &str,
    ) -> Result<(LocalAllocator, OpenReport)> {
        let universe = universe.trunc();
        let default_subnet = default_subnet.trunc();
        let universe_range = universe.addr_range().map_err(|e| Error::InvalidUniverse {
            universe,
            reason: e.to_string(),
        })?;
        if !default_subnet.overlaps_net(&universe) {
            return Err(Error::DefaultSubnetOutsideUniverse {
                subnet: default_subnet,
                universe,
            });
        }

        let store = Store::open(db_path)?;
        let state = store.load()?;
        let ring = RingRecord { universe };

        let mut space = Space::new();
        space.add(universe_range)?;
        let mut alloc = LocalAllocator {
            space,
            owned: Owned::new(),
            store,
            universe,
            default_subnet,
            peer_name: peer_name.to_string(),
        };

        let discarded_reason = match (&state.peer_name, &state.ring) {
            (None, None) if state.owned.is_empty() => None,
            (None, _) => Some("the persisted data has no peer name".to_string()),
            (_, None) => Some("the persisted data has no ring".to_string()),
            (Some(name), _) if name != peer_name => Some(format!(
                "the persisted peer name {name} differs from this peer's name {peer_name}"
            )),
            (_, Some(r)) if r.universe != universe => Some(format!(
                "the persisted allocation range {} differs from the configured range {universe}",
                r.universe
            )),
            _ => {
                alloc.restore(state.owned)?;
                let owned_ids = alloc.owned.len();
                return Ok((
                    alloc,
                    OpenReport {
                        restored: true,
                        discarded_reason: None,
                        owned_ids,
                    },
                ));
            }
        };
        alloc.store.reset(peer_name, &ring)?;
        Ok((
            alloc,
            OpenReport {
                restored: false,
                discarded_reason,
                owned_ids: 0,
            },
        ))
    }

    fn restore(&mut self, records: impl IntoIterator<Item = (String, OwnedData)>) -> Result<()> {
        for (id, data) in records {
            for cidr in &data.cidrs {
                self.owned
                    .add(&id, *cidr, data.is_container)
                    .map_err(|e| StoreError::Corrupt {
                        path: self.store.path().to_path_buf(),
                        detail: format!("{e} and also recorded for {id}"),
                    })?;
                if self.universe.contains(&cidr.addr()) {
                    self.space.claim(from_ipv4(cidr.addr()))?;
                }
            }
        }
        Ok(())
    }

    /// Idempotent per id: if `id` already holds an address inside `subnet` (default subnet
    /// when `None`) it is returned. Otherwise the lowest free address in
    /// `subnet.host_range()` ∩ owned space. The result carries the subnet's prefix length
    /// (e.g. 10.32.0.1/12). Errors: subnet outside the universe; no free address.
    pub fn allocate(
        &mut self,
        id: &str,
        subnet: Option<Ipv4Net>,
        is_container: bool,
    ) -> Result<Ipv4Net> {
        let subnet = subnet.unwrap_or(self.default_subnet).trunc();
        // As Weave: an address the id already holds in the subnet wins, even one claimed
        // outside the universe.
        if let Some(existing) = self.owned.find_in_subnet(id, &subnet) {
            return Ok(existing);
        }
        if !subnet.overlaps_net(&self.universe) {
            return Err(Error::SubnetOutsideUniverse {
                subnet,
                universe: self.universe,
            });
        }
        let host = subnet.host_range();
        let Some(addr) = self.space.allocate(host) else {
            return Err(Error::Exhausted {
                subnet,
                in_use: self.space.num_allocated_in(host),
            });
        };
        let cidr = with_prefix(to_ipv4(addr), subnet.prefix_len());
        if let Err(e) = self.record(id, cidr, is_container) {
            // Undo: the address was free before this call.
            let _ = self.space.free(addr);
            return Err(e);
        }
        Ok(cidr)
    }

    /// Claims a specific address for `id` (`PUT /ip/{id}/{ip}/{prefixlen}`). The same id and
    /// address again is `Ok` (a different prefix length or `is_container` replaces the
    /// recorded one). An address held by another id is [`Error::AlreadyOwned`]. An address
    /// outside the universe is only recorded for the id, as Weave does.
    pub fn claim(&mut self, id: &str, addr: Ipv4Net, is_container: bool) -> Result<()> {
        let ip = addr.addr();
        match self.owned.find_by_addr(ip) {
            Some(owner) if owner == id => {
                let data = self
                    .owned
                    .with_added(id, addr, is_container)
                    .map_err(owned_err)?;
                if self.owned.get(id) != Some(&data) {
                    self.store.save_owned(id, &data)?;
                    self.owned.set(id, data).map_err(owned_err)?;
                }
                return Ok(());
            }
            Some(owner) => {
                return Err(Error::AlreadyOwned {
                    addr: ip,
                    owner: owner.to_string(),
                })
            }
            None => {}
        }
        let in_universe = self.universe.contains(&ip);
        if in_universe {
            self.space.claim(from_ipv4(ip))?;
        }
        if let Err(e) = self.record(id, addr, is_container) {
            if in_universe {
                let _ = self.space.free(from_ipv4(ip));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Persists, then records, `cidr` for `id`.
    fn record(&mut self, id: &str, cidr: Ipv4Net, is_container: bool) -> Result<()> {
        let data = self
            .owned
            .with_added(id, cidr, is_container)
            .map_err(owned_err)?;
        self.store.save_owned(id, &data)?;
        self.owned.set(id, data).map_err(owned_err)
    }

    /// Frees every address of `id` and returns them. They are reusable at once.
    /// No addresses: [`Error::NoAddresses`] (`Delete: no addresses for <id>`).
    pub fn release(&mut self, id: &str) -> Result<Vec<Ipv4Net>> {
        if self.owned.get(id).is_none() {
            return Err(Error::NoAddresses(id.to_string()));
        }
        self.store.save_owned(id, &OwnedData::default())?;
        let data = self.owned.remove(id).unwrap_or_default();
        for cidr in &data.cidrs {
            self.free_in_space(cidr.addr());
        }
        Ok(data.cidrs)
    }

    /// Frees one address of `id` (`DELETE /ip/{id}/{ip}`).
    /// [`Error::AddressNotFound`] when `id` does not hold `addr`.
    pub fn release_addr(&mut self, id: &str, addr: Ipv4Addr) -> Result<()> {
        let Some(data) = self.owned.without(id, addr) else {
            return Err(Error::AddressNotFound {
                id: id.to_string(),
                addr,
            });
        };
        self.store.save_owned(id, &data)?;
        self.owned.remove_addr(id, addr);
        self.free_in_space(addr);
        Ok(())
    }

    fn free_in_space(&mut self, addr: Ipv4Addr) {
        if self.universe.contains(&addr) {
            // Every recorded address inside the universe is allocated in the space.
            let freed = self.space.free(from_ipv4(addr));
            debug_assert!(freed.is_ok(), "{freed:?}");
        }
    }

    /// The addresses of `id` (empty when none).
    pub fn lookup(&self, id: &str) -> Vec<Ipv4Net> {
        self.owned
            .get(id)
            .map(|d| d.cidrs.clone())
            .unwrap_or_default()
    }

    /// The identifier holding `addr`, if any.
    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.owned.find_by_addr(addr)
    }

    /// Every identifier and its addresses, sorted by identifier.
    pub fn owned(&self) -> Vec<OwnedEntry> {
        self.owned
            .iter()
            .map(|(id, d)| OwnedEntry {
                id: id.to_string(),
                is_container: d.is_container,
                addrs: d.cidrs.clone(),
            })
            .collect()
    }

    /// The allocation range (`--ipalloc-range`).
    pub fn universe(&self) -> Ipv4Net {
        self.universe
    }

    /// The default subnet (`--ipalloc-default-subnet`).
    pub fn default_subnet(&self) -> Ipv4Net {
        self.default_subnet
    }

    /// This peer's name, as persisted.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// Free addresses in the owned space. As Weave's ring `Free` counts, this includes the
    /// universe's own network and broadcast addresses (1,048,576 for a fresh 10.32.0.0/12).
    pub fn num_free(&self) -> u64 {
        self.space.num_free()
    }

    /// Allocated addresses inside the universe ("active IPs"). Addresses claimed outside the
    /// universe are recorded but not counted.
    pub fn num_allocated(&self) -> u64 {
        self.space.num_allocated()
    }

    /// Free addresses that [`LocalAllocator::allocate`] could still hand out in `subnet`
    /// (default subnet when `None`): its host range ∩ owned space.
    pub fn num_free_in(&self, subnet: Option<Ipv4Net>) -> u64 {
        let subnet = subnet.unwrap_or(self.default_subnet);
        self.space.num_free_in(subnet.host_range())
    }

    /// The owned ranges (the whole universe for a single node).
    pub fn owned_ranges(&self) -> Vec<Range> {
        self.space.owned_ranges().to_vec()
    }

    /// Read access to the address space.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// The database, for other `top` keys ([`Store::get_top`], [`Store::put_top`]).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

fn with_prefix(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Net {
    // prefix_len comes from an Ipv4Net, so it is <= 32 and `new` cannot fail.
    Ipv4Net::new(ip, prefix_len).unwrap_or_else(|_| Ipv4Net::from(ip))
}

fn owned_err(e: OwnedError) -> Error {
    match e {
        OwnedError::HeldByOther { addr, owner } => Error::AlreadyOwned { addr, owner },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn open(dir: &tempfile::TempDir) -> (LocalAllocator, OpenReport) {
        LocalAllocator::open(
            &dir.path().join("data.db"),
            net("10.32.0.0/12"),
            net("10.32.0.0/12"),
            "aa:bb:cc:dd:ee:ff",
        )
        .unwrap()
    }

    #[test]
    fn is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<LocalAllocator>();
        assert_send::<Error>();
    }

    #[test]
    fn fresh_open_and_allocate() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, report) = open(&dir);
        assert_eq!(
            report,
            OpenReport {
                restored: false,
                discarded_reason: None,
                owned_ids: 0
            }
        );
        assert_eq!(a.num_free(), 1 << 20);
        assert_eq!(
            a.allocate("weave:expose", None, false).unwrap(),
            net("10.32.0.1/12")
        );
        assert_eq!(a.allocate("c1", None, true).unwrap(), net("10.32.0.2/12"));
        // Idempotent.
        assert_eq!(a.allocate("c1", None, true).unwrap(), net("10.32.0.2/12"));
        // Another subnet: its own prefix length, lowest host address.
        assert_eq!(
            a.allocate("c1", Some(net("10.40.0.0/14")), true).unwrap(),
            net("10.40.0.1/14")
        );
        assert_eq!(
            a.lookup("c1"),
            vec![net("10.32.0.2/12"), net("10.40.0.1/14")]
        );
        assert_eq!(a.num_allocated(), 3);
        assert_eq!(a.num_free_in(None), 1_048_574 - 3);
        assert_eq!(a.owner_of("10.40.0.1".parse().unwrap()), Some("c1"));
        let err = a
            .allocate("c2", Some(net("10.48.0.0/16")), true)
            .unwrap_err();
        assert!(matches!(err, Error::SubnetOutsideUniverse { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "subnet 10.48.0.0/16 is outside the allocation range 10.32.0.0/12; \
             ask for a subnet inside 10.32.0.0/12"
        );
        assert_eq!(
            a.owned(),
            vec![
                OwnedEntry {
                    id: "c1".into(),
                    is_container: true,
                    addrs: vec![net("10.32.0.2/12"), net("10.40.0.1/14")]
                },
                OwnedEntry {
                    id: "weave:expose".into(),
                    is_container: false,
                    addrs: vec![net("10.32.0.1/12")]
                },
            ]
        );
    }

    #[test]
    fn release_reuses_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = open(&dir);
        for i in 0..5 {
            a.allocate(&format!("c{i}"), None, true).unwrap();
        }
        assert_eq!(a.release("c1").unwrap(), vec![net("10.32.0.2/12")]);
        assert_eq!(a.allocate("c9", None, true).unwrap(), net("10.32.0.2/12"));
        let err = a.release("c1").unwrap_err();
        assert_eq!(err.to_string(), "Delete: no addresses for c1");
        a.release_addr("c3", "10.32.0.4".parse().unwrap()).unwrap();
        assert!(a.lookup("c3").is_empty());
        let err = a
            .release_addr("c3", "10.32.0.4".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.to_string(), "Free: address 10.32.0.4 not found for c3");
        let err = a
            .release_addr("c4", "10.32.0.1".parse().unwrap())
            .unwrap_err();
        assert!(matches!(err, Error::AddressNotFound { .. }));
        assert_eq!(a.lookup("c0"), vec![net("10.32.0.1/12")]);
        assert_eq!(a.allocate("c10", None, true).unwrap(), net("10.32.0.4/12"));
    }

    #[test]
    fn claims() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = open(&dir);
        a.claim("weave:expose", net("10.32.0.5/12"), false).unwrap();
        a.claim("weave:expose", net("10.32.0.5/12"), false).unwrap();
        let err = a.claim("c1", net("10.32.0.5/12"), true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 10.32.0.5 is already owned by weave:expose"
        );
        // Outside the universe: recorded only.
        a.claim("c1", net("192.168.7.7/24"), true).unwrap();
        assert_eq!(a.num_allocated(), 1);
        assert_eq!(a.lookup("c1"), vec![net("192.168.7.7/24")]);
        // Allocating in that outside subnet returns what c1 holds there; others get an error.
        assert_eq!(
            a.allocate("c1", Some(net("192.168.7.0/24")), true).unwrap(),
            net("192.168.7.7/24")
        );
        assert!(matches!(
            a.allocate("c2", Some(net("192.168.7.0/24")), true),
            Err(Error::SubnetOutsideUniverse { .. })
        ));
        let err = a.claim("c2", net("192.168.7.7/24"), true).unwrap_err();
        assert!(matches!(err, Error::AlreadyOwned { .. }));
        // Allocation skips the claimed address.
        for expect in [
            "10.32.0.1",
            "10.32.0.2",
            "10.32.0.3",
            "10.32.0.4",
            "10.32.0.6",
        ] {
            let got = a.allocate(&format!("p{expect}"), None, true).unwrap();
            assert_eq!(got.addr().to_string(), expect);
        }
        // Same address, new prefix length: replaced.
        a.claim("weave:expose", net("10.32.0.5/16"), false).unwrap();
        assert_eq!(a.lookup("weave:expose"), vec![net("10.32.0.5/16")]);
        assert_eq!(a.release("c1").unwrap(), vec![net("192.168.7.7/24")]);
        assert_eq!(a.num_allocated(), 6);
    }

    #[test]
    fn exhaustion_names_subnet_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = open(&dir);
        let small = net("10.33.0.0/30");
        assert_eq!(
            a.allocate("x", Some(small), true).unwrap(),
            net("10.33.0.1/30")
        );
        assert_eq!(
            a.allocate("y", Some(small), true).unwrap(),
            net("10.33.0.2/30")
        );
        let err = a.allocate("z", Some(small), true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address in subnet 10.33.0.0/30: all 2 allocatable addresses are in use; \
             release some or use a bigger range"
        );
        assert!(a.lookup("z").is_empty());
        // Nothing allocatable at all in a /32.
        assert!(matches!(
            a.allocate("z", Some(net("10.33.1.1/32")), true),
            Err(Error::Exhausted { in_use: 0, .. })
        ));
    }

    #[test]
    fn bad_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.db");
        let err =
            LocalAllocator::open(&path, net("255.255.255.0/24"), net("255.255.255.0/24"), "p")
                .unwrap_err();
        assert!(matches!(err, Error::InvalidUniverse { .. }), "{err}");
        let err =
            LocalAllocator::open(&path, net("10.32.0.0/12"), net("10.48.0.0/12"), "p").unwrap_err();
        assert_eq!(
            err.to_string(),
            "default subnet 10.48.0.0/12 does not overlap the allocation range 10.32.0.0/12; \
             the default subnet must be inside the allocation range"
        );
    }
}
