//! The fast-path VXLAN device and its forwarding database (FDB).
//!
//! Weft's fast path is a kernel VXLAN device (`vxlan-6784`, UDP port 6784) enslaved to the
//! node's `weave` bridge. Broadcast, unknown-unicast and multicast frames are replicated
//! to every remote that has an all-zero-MAC ("flood") entry in the device's FDB; unicast
//! destinations are learned from received frames (`learning` on) or programmed with
//! [`Netlink::fdb_add_unicast`].
//!
//! The VXLAN port is *isolated* on the bridge (`IFLA_BRPORT_ISOLATED`), as is the sleeve
//! TAP port: each remote peer is served by exactly one of the two overlays, and isolating
//! the two overlay ports from each other keeps frames from looping between them.

use crate::netlink::{validate_ifname, Link, Netlink};
use crate::{Error, MacAddr, Result};
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, VxlanDf,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Default device name.
pub const DEFAULT_NAME: &str = "vxlan-6784";
/// Weave's fast-path UDP port.
pub const DEFAULT_PORT: u16 = 6784;
/// Default VNI ("we" in ASCII).
pub const DEFAULT_VNI: u32 = 0x7765;
/// Default MTU, Weave's fastdp default (a 1460-byte underlay minus VXLAN and ESP overhead).
pub const DEFAULT_MTU: u32 = 1376;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Desired state of the fast-path VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// Device name; [`DEFAULT_NAME`].
    pub name: String,
    /// VXLAN network identifier (24 bits); [`DEFAULT_VNI`].
    pub vni: u32,
    /// UDP destination (and listening) port; [`DEFAULT_PORT`].
    pub port: u16,
    /// Source address of the encapsulated packets; `None` lets routing pick one.
    pub local: Option<Ipv4Addr>,
    /// Underlay device to bind to (IFLA_VXLAN_LINK); usually `None`.
    pub underlay: Option<u32>,
    /// Device MTU; [`DEFAULT_MTU`].
    pub mtu: u32,
    /// Outer TTL; 64.
    pub ttl: u8,
    /// UDP source port range (low, high); `None` keeps the kernel's default
    /// (the ephemeral port range), which spreads flows over underlay ECMP paths.
    pub src_port_range: Option<(u16, u16)>,
    /// Learn remote MACs from received frames; on.
    pub learning: bool,
    /// Seconds before a learned entry expires; `None` keeps the kernel default (300 s).
    pub ageing_secs: Option<u32>,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            name: DEFAULT_NAME.to_string(),
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            local: None,
            underlay: None,
            mtu: DEFAULT_MTU,
            ttl: 64,
            src_port_range: None,
            learning: true,
            ageing_secs: None,
        }
    }
}

impl VxlanConfig {
    fn validate(&self) -> Result<()> {
        validate_ifname(&self.name)?;
        if self.vni > MAX_VNI {
            return Err(Error::InvalidArgument(format!(
                "VXLAN VNI {:#x} does not fit in 24 bits (max {MAX_VNI:#x})",
                self.vni
            )));
        }
        if self.port == 0 {
            return Err(Error::InvalidArgument(
                "VXLAN UDP port 0 is not allowed; use 6784".into(),
            ));
        }
        if self.ttl == 0 {
            return Err(Error::InvalidArgument(
                "VXLAN TTL 0 means 'inherit' and is not supported; use 64".into(),
            ));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(Error::InvalidArgument(format!(
                "VXLAN MTU {} out of range 68..=65535",
                self.mtu
            )));
        }
        if let Some((lo, hi)) = self.src_port_range {
            if lo == 0 || lo > hi {
                return Err(Error::InvalidArgument(format!(
                    "VXLAN source port range {lo}-{hi} is empty or starts at 0"
                )));
            }
        }
        if let Some(ip) = self.local {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                return Err(Error::InvalidArgument(format!(
                    "VXLAN local address {ip} must be a unicast address"
                )));
            }
        }
        Ok(())
    }

    /// The IFLA_INFO_DATA attributes that fix the device's behaviour.
    fn info(&self) -> Vec<InfoVxlan> {
        let mut v = vec![
            InfoVxlan::Id(self.vni),
            InfoVxlan::Port(self.port),
            InfoVxlan::Ttl(self.ttl),
            InfoVxlan::Df(VxlanDf::Set),
            InfoVxlan::Learning(self.learning),
            InfoVxlan::UDPCsum(false),
        ];
        if let Some(ip) = self.local {
            v.push(InfoVxlan::Local(ip));
        }
        if let Some(dev) = self.underlay {
            v.push(InfoVxlan::Link(dev));
        }
        if let Some(r) = self.src_port_range {
            v.push(InfoVxlan::PortRange(r));
        }
        if let Some(a) = self.ageing_secs {
            v.push(InfoVxlan::Ageing(a));
        }
        v
    }

    /// Whether an existing device's attributes match this configuration.
    fn matches(&self, existing: &[InfoVxlan]) -> bool {
        let mut vni = None;
        let mut port = None;
        let mut ttl = None;
        let mut df = None;
        let mut learning = None;
        let mut csum = None;
        let mut local = None;
        let mut underlay = None;
        let mut range = None;
        let mut ageing = None;
        let mut collect = false;
        for a in existing {
            match a {
                InfoVxlan::Id(x) => vni = Some(*x),
                InfoVxlan::Port(x) => port = Some(*x),
                InfoVxlan::Ttl(x) => ttl = Some(*x),
                InfoVxlan::Df(x) => df = Some(*x),
                InfoVxlan::Learning(x) => learning = Some(*x),
                InfoVxlan::UDPCsum(x) => csum = Some(*x),
                InfoVxlan::Local(x) => local = Some(*x),
                InfoVxlan::Link(x) if *x != 0 => underlay = Some(*x),
                InfoVxlan::PortRange(x) => range = Some(*x),
                InfoVxlan::Ageing(x) => ageing = Some(*x),
                InfoVxlan::CollectMetadata(x) => collect = *x,
                _ => {}
            }
        }
        vni == Some(self.vni)
            && port == Some(self.port)
            && ttl == Some(self.ttl)
            && df == Some(VxlanDf::Set)
            && learning == Some(self.learning)
            && !csum.unwrap_or(false)
            && local == self.local
            && underlay == self.underlay
            && !collect
            && self.src_port_range.is_none_or(|r| range == Some(r))
            && self.ageing_secs.is_none_or(|a| ageing == Some(a))
    }
}

fn vxlan_info(msg: &LinkMessage) -> Option<Vec<InfoVxlan>> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
            _ => None,
        }),
        _ => None,
    })
}

fn link_kind(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

/// Creates the VXLAN device, or adopts an existing one with the same settings (one whose
/// VNI, port, local address, TTL, DF, learning or checksum setting differ is deleted and
/// recreated, which also empties its FDB). Then sets the MTU, enslaves it to `bridge`
/// (when given) with the port isolated, and brings it up. Returns the link.
///
/// A link of that name that is not a VXLAN device is an [`Error::WrongKind`].
pub fn ensure_vxlan(nl: &mut Netlink, cfg: &VxlanConfig, bridge: Option<u32>) -> Result<Link> {
    cfg.validate()?;
    let name = &cfg.name;
    let mut existing = nl.link_message_by_name(name)?;
    if let Some(msg) = &existing {
        let kind = link_kind(msg);
        if kind.as_deref() != Some("vxlan") {
            return Err(Error::WrongKind {
                name: name.clone(),
                kind: kind.unwrap_or_else(|| "device (no link kind)".into()),
                expected: "vxlan".into(),
            });
        }
        let same = vxlan_info(msg).is_some_and(|info| cfg.matches(&info));
        if !same {
            nl.delete_link(msg.header.index)?;
            existing = None;
        }
    }
    let index = match existing {
        Some(msg) => msg.header.index,
        None => {
            let mut msg = LinkMessage::default();
            msg.attributes.push(LinkAttribute::IfName(name.clone()));
            msg.attributes.push(LinkAttribute::Mtu(cfg.mtu));
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(cfg.info())),
            ]));
            nl.new_link_raw(
                &format!(
                    "create VXLAN device {name:?} (VNI {:#x}, port {})",
                    cfg.vni, cfg.port
                ),
                &format!("link {name:?}"),
                msg,
            )?;
            nl.link_by_name(name)?
                .ok_or_else(|| {
                    Error::NotFound(format!("VXLAN device {name:?} right after creating it"))
                })?
                .index
        }
    };
    let link = nl
        .link_by_index(index)?
        .ok_or_else(|| Error::NotFound(format!("VXLAN device {name:?}")))?;
    if link.mtu != cfg.mtu {
        nl.set_mtu(index, cfg.mtu)?;
    }
    if let Some(br) = bridge {
        if link.master != Some(br) {
            nl.set_master(index, Some(br))?;
        }
        nl.set_port_isolated(index, true)?;
    }
    if !link.up {
        nl.set_up(index).map_err(|e| match e.raw_os_error() {
            Some(libc::EADDRINUSE) => Error::InvalidArgument(format!(
                "cannot bring VXLAN device {name:?} up: UDP port {} is in use by another VXLAN \
                 device or socket in this network namespace; delete it or choose another port",
                cfg.port
            )),
            _ => e,
        })?;
    }
    nl.link_by_index(index)?.ok_or_else(|| {
        Error::NotFound(format!(
            "VXLAN device {name:?} (deleted while configuring it)"
        ))
    })
}

/// One entry of a device's bridge forwarding database (AF_BRIDGE neighbour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// The device the entry belongs to.
    pub ifindex: u32,
    /// Destination MAC; all zeros for a VXLAN flood entry.
    pub mac: MacAddr,
    /// VXLAN remote (NDA_DST); `None` for plain bridge entries.
    pub dst: Option<IpAddr>,
    /// Static (NUD_PERMANENT / NUD_NOARP) rather than learned.
    pub permanent: bool,
    /// In the device's own table (NTF_SELF), e.g. the VXLAN FDB.
    pub self_entry: bool,
    /// In the master bridge's table (NTF_MASTER).
    pub master_entry: bool,
    /// VNI, when it differs from the device's (NDA_VNI).
    pub vni: Option<u32>,
    /// UDP port, when it differs from the device's (NDA_PORT).
    pub port: Option<u16>,
    /// Underlay interface of the remote (NDA_IFINDEX).
    pub remote_ifindex: Option<u32>,
}

impl FdbEntry {
    /// An all-zero-MAC entry: where broadcast/unknown traffic is replicated to.
    pub fn is_flood(&self) -> bool {
        self.mac == [0; 6]
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

fn fdb_entry(msg: &NeighbourMessage) -> Option<FdbEntry> {
    if msg.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut e = FdbEntry {
        ifindex: msg.header.ifindex,
        mac: [0; 6],
        dst: None,
        permanent: matches!(
            msg.header.state,
            NeighbourState::Permanent | NeighbourState::Noarp
        ),
        self_entry: msg.header.flags.contains(NeighbourFlags::Own),
        master_entry: msg.header.flags.contains(NeighbourFlags::Controller),
        vni: None,
        port: None,
        remote_ifindex: None,
    };
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <MacAddr>::try_from(l.as_slice()).ok(),
            NeighbourAttribute::Destination(d) => {
                e.dst = match d {
                    NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
                    NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
                    NeighbourAddress::Other(b) => ip_from_bytes(b),
                    _ => None,
                }
            }
            NeighbourAttribute::Vni(v) => e.vni = Some(*v),
            NeighbourAttribute::Port(p) => e.port = Some(*p),
            NeighbourAttribute::IfIndex(i) => e.remote_ifindex = Some(*i),
            _ => {}
        }
    }
    e.mac = mac?;
    Some(e)
}

fn check_remote(remote: IpAddr) -> Result<()> {
    if remote.is_unspecified() || remote.is_multicast() {
        return Err(Error::InvalidArgument(format!(
            "VXLAN remote {remote} must be a unicast address"
        )));
    }
    Ok(())
}

fn fdb_message(index: u32, mac: MacAddr, dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    if let Some(ip) = dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    }
    msg
}

/// FDB programming of a VXLAN device. The entries live in the device's own table
/// (NTF_SELF), not in the bridge's.
impl Netlink {
    /// Adds `remote` to the flood list of VXLAN device `vxlan_index` (an all-zero-MAC
    /// entry, appended so several remotes coexist). Already present -> Ok.
    pub fn fdb_append_flood(&mut self, vxlan_index: u32, remote: IpAddr) -> Result<()> {
        check_remote(remote)?;
        let msg = fdb_message(vxlan_index, [0; 6], Some(remote));
        match self.ack_raw(
            &format!("append flood FDB entry for {remote} on link #{vxlan_index}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_APPEND,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(fdb_error(e, vxlan_index)),
            Ok(()) => Ok(()),
        }
    }

    /// Removes `remote` from the flood list. Not there -> Ok (the kernel does not say
    /// whether it was, as long as other remotes are).
    pub fn fdb_del_flood(&mut self, vxlan_index: u32, remote: IpAddr) -> Result<()> {
        check_remote(remote)?;
        let msg = fdb_message(vxlan_index, [0; 6], Some(remote));
        self.fdb_delete(msg, vxlan_index, &format!("flood entry for {remote}"))
            .map(|_| ())
    }

    /// Points `mac` at `remote` (a static entry replacing whatever the device had for
    /// that MAC, learned or not).
    pub fn fdb_add_unicast(
        &mut self,
        vxlan_index: u32,
        mac: MacAddr,
        remote: IpAddr,
    ) -> Result<()> {
        check_remote(remote)?;
        if mac == [0; 6] {
            return Err(Error::InvalidArgument(
                "the all-zero MAC is the flood entry; use fdb_append_flood".into(),
            ));
        }
        let msg = fdb_message(vxlan_index, mac, Some(remote));
        self.ack_raw(
            &format!(
                "set FDB entry {} -> {remote} on link #{vxlan_index}",
                crate::format_mac(&mac)
            ),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(|e| fdb_error(e, vxlan_index))
    }

    /// Removes the entry for `mac` (every remote it points at). Returns whether there was one.
    pub fn fdb_del_unicast(&mut self, vxlan_index: u32, mac: MacAddr) -> Result<bool> {
        let msg = fdb_message(vxlan_index, mac, None);
        self.fdb_delete(
            msg,
            vxlan_index,
            &format!("FDB entry {}", crate::format_mac(&mac)),
        )
    }

    /// Every entry in the device's own FDB (NTF_SELF), learned or static.
    pub fn fdb_entries(&mut self, vxlan_index: u32) -> Result<Vec<FdbEntry>> {
        Ok(self
            .fdb_dump(vxlan_index)?
            .into_iter()
            .filter(|e| e.self_entry)
            .collect())
    }

    /// All AF_BRIDGE neighbours of link `index`: its own entries and the master bridge's.
    pub fn fdb_dump(&mut self, index: u32) -> Result<Vec<FdbEntry>> {
        if index == 0 {
            return Err(Error::InvalidArgument("interface index 0".into()));
        }
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let msgs = self.dump_raw("dump bridge FDB", RouteNetlinkMessage::GetNeighbour(req))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => fdb_entry(n),
                _ => None,
            })
            .collect())
    }

    /// Removes every entry of the device's own FDB that points at `remote`: the flood
    /// entry, static unicast entries and learned ones. Returns how many were removed.
    pub fn fdb_flush_dst(&mut self, vxlan_index: u32, remote: IpAddr) -> Result<usize> {
        check_remote(remote)?;
        let mut removed = 0;
        for e in self.fdb_entries(vxlan_index)? {
            if e.dst != Some(remote) {
                continue;
            }
            let mut msg = fdb_message(vxlan_index, e.mac, Some(remote));
            if let Some(v) = e.vni {
                msg.attributes.push(NeighbourAttribute::Vni(v));
            }
            if let Some(p) = e.port {
                msg.attributes.push(NeighbourAttribute::Port(p));
            }
            if let Some(i) = e.remote_ifindex {
                msg.attributes.push(NeighbourAttribute::IfIndex(i));
            }
            let what = format!("FDB entry {} -> {remote}", crate::format_mac(&e.mac));
            if self.fdb_delete(msg, vxlan_index, &what)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn fdb_delete(&mut self, msg: NeighbourMessage, index: u32, what: &str) -> Result<bool> {
        match self.ack_raw(
            &format!("delete {what} on link #{index}"),
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
        ) {
            Ok(()) => Ok(true),
            // Gone already (aged out, or removed concurrently).
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => {
                Ok(false)
            }
            Err(e) => Err(fdb_error(e, index)),
        }
    }
}

fn fdb_error(e: Error, index: u32) -> Error {
    match e.raw_os_error() {
        Some(libc::ENODEV) => Error::NotFound(format!("link #{index}")),
        Some(libc::EOPNOTSUPP) => Error::InvalidArgument(format!(
            "link #{index} has no FDB of its own (is it a VXLAN device?): {e}"
        )),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(VxlanConfig::default().validate().is_ok());
        let bad = [
            VxlanConfig {
                vni: 1 << 24,
                ..Default::default()
            },
            VxlanConfig {
                port: 0,
                ..Default::default()
            },
            VxlanConfig {
                ttl: 0,
                ..Default::default()
            },
            VxlanConfig {
                mtu: 10,
                ..Default::default()
            },
            VxlanConfig {
                src_port_range: Some((2000, 1000)),
                ..Default::default()
            },
            VxlanConfig {
                local: Some(Ipv4Addr::UNSPECIFIED),
                ..Default::default()
            },
            VxlanConfig {
                name: "this-name-is-too-long".into(),
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(
                matches!(c.validate(), Err(Error::InvalidArgument(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn matches_compares_the_immutable_settings() {
        let cfg = VxlanConfig::default();
        let info = cfg.info();
        assert!(cfg.matches(&info));
        let other = VxlanConfig {
            vni: 7,
            ..Default::default()
        };
        assert!(!other.matches(&info));
        let local = VxlanConfig {
            local: Some(Ipv4Addr::new(192, 0, 2, 1)),
            ..Default::default()
        };
        assert!(!local.matches(&info));
        assert!(local.matches(&local.info()));
    }

    #[test]
    fn fdb_entry_decoding() {
        let mut msg = fdb_message(5, [2, 0, 0, 0, 0, 1], Some("192.0.2.7".parse().unwrap()));
        msg.attributes.push(NeighbourAttribute::Vni(9));
        let e = fdb_entry(&msg).unwrap();
        assert_eq!(e.ifindex, 5);
        assert_eq!(e.dst, Some("192.0.2.7".parse().unwrap()));
        assert!(e.permanent && e.self_entry && !e.master_entry && !e.is_flood());
        assert_eq!(e.vni, Some(9));
        // A bridge-family entry whose destination arrives as raw bytes.
        let mut raw = fdb_message(5, [0; 6], None);
        raw.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                vec![10, 0, 0, 1],
            )));
        let e = fdb_entry(&raw).unwrap();
        assert!(e.is_flood());
        assert_eq!(e.dst, Some("10.0.0.1".parse().unwrap()));
        // A bad MAC or a wrong family is skipped, never a panic.
        let mut bad = NeighbourMessage::default();
        bad.header.family = AddressFamily::Bridge;
        bad.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![1, 2, 3]));
        assert!(fdb_entry(&bad).is_none());
        let mut inet = fdb_message(5, [0; 6], None);
        inet.header.family = AddressFamily::Inet;
        assert!(fdb_entry(&inet).is_none());
    }
}
