//! The kernel side of ADD/DEL/CHECK, on top of weft-dataplane. Everything here runs in the
//! plugin's own netns (the "host") except what is wrapped in `NetNs::run` (the pod's netns).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_dataplane::netlink::{Link, Netlink, Route};
use weft_dataplane::netns::NetNs;
use weft_dataplane::{format_mac, sysctl};

use crate::error::{CniError, ERR_CHECK_FAILED, ERR_IFACE_EXISTS, ERR_INVALID_NETNS, ERR_KERNEL};
use crate::names::host_veth_candidates;

fn kerr(what: impl AsRef<str>, e: impl std::fmt::Display) -> CniError {
    CniError::kernel(what, e).with_details(
        "this is a kernel/netlink failure; see the plugin's stderr and the node's dmesg",
    )
}

/// Runs `f` inside `ns`, flattening the two error layers.
fn in_ns<T: Send>(
    ns: &NetNs,
    what: &str,
    f: impl FnOnce() -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    ns.run(|| Ok(f()))
        .map_err(|e| kerr(format!("{what} (entering the container netns)"), e))?
}

/// Opens `CNI_NETNS` (weft-dataplane checks it is a network namespace) and checks it is not
/// ours (code 8 otherwise).
pub fn open_container_netns(path: &str) -> Result<NetNs, CniError> {
    let ns = NetNs::open(path).map_err(|e| {
        CniError::new(ERR_INVALID_NETNS, format!("failed to open netns {path:?}: {e}"))
            .with_details("CNI_NETNS must name the pod's network namespace (/run/netns/<name> or /proc/<pid>/ns/net); is the pod sandbox still running?")
    })?;
    let me = NetNs::current().map_err(|e| kerr("opening the plugin's own netns", e))?;
    if ns
        .is_same(&me)
        .map_err(|e| kerr("comparing network namespaces", e))?
    {
        return Err(CniError::new(
            ERR_INVALID_NETNS,
            format!("CNI_NETNS {path:?} is the plugin's own network namespace"),
        )
        .with_details("refusing to configure the host's namespace as a pod; the runtime passed the wrong netns"));
    }
    Ok(ns)
}

/// Is `ifname` present in `ns`?
pub fn link_in_ns(ns: &NetNs, ifname: &str) -> Result<Option<Link>, CniError> {
    let name = ifname.to_string();
    in_ns(ns, "looking up the container interface", move || {
        let mut nl =
            Netlink::open().map_err(|e| kerr("opening netlink in the container netns", e))?;
        nl.link_by_name(&name)
            .map_err(|e| kerr(format!("looking up {name} in the container netns"), e))
    })
}

/// The bridge and its IPv4 addresses, in the plugin's netns.
#[derive(Debug, Clone)]
pub struct Bridge {
    /// The link.
    pub link: Link,
    /// Its addresses.
    pub addrs: Vec<Ipv4Net>,
}

/// Finds the bridge; a missing bridge means the router has not set up the node yet (code 11).
pub fn bridge(nl: &mut Netlink, name: &str) -> Result<Bridge, CniError> {
    let link = nl
        .link_by_name(name)
        .map_err(|e| kerr(format!("looking up bridge {name}"), e))?
        .ok_or_else(|| {
            CniError::try_again(format!("bridge {name:?} does not exist: the weft router is not ready"))
                .with_details("the weft router creates the bridge at startup; check `weft status` and the weft DaemonSet pod on this node")
        })?;
    let addrs = nl
        .addresses(link.index)
        .map_err(|e| kerr(format!("listing the addresses of bridge {name}"), e))?;
    Ok(Bridge { link, addrs })
}

impl Bridge {
    /// The gateway for a pod address: the bridge's address inside the pod's subnet, else its
    /// first address; code 11 when it has none.
    pub fn gateway_for(&self, pod: Ipv4Net) -> Result<Ipv4Addr, CniError> {
        pick_gateway(&self.addrs, pod).ok_or_else(|| {
            CniError::try_again(format!(
                "bridge {:?} has no IPv4 address: the weft router is not ready",
                self.link.name
            ))
            .with_details("the weft router gives the bridge its address at startup; check `weft status` and the weft DaemonSet pod on this node")
        })
    }
}

/// The gateway rule, without the kernel.
pub fn pick_gateway(bridge_addrs: &[Ipv4Net], pod: Ipv4Net) -> Option<Ipv4Addr> {
    bridge_addrs
        .iter()
        .find(|b| pod.trunc().contains(&b.addr()))
        .or_else(|| bridge_addrs.first())
        .map(|b| b.addr())
}

/// What to configure for one attachment.
#[derive(Debug, Clone)]
pub struct AttachSpec<'a> {
    /// CNI_CONTAINERID.
    pub container_id: &'a str,
    /// CNI_IFNAME.
    pub ifname: &'a str,
    /// MTU for both ends.
    pub mtu: u32,
    /// Hairpin on the host side.
    pub hairpin: bool,
    /// Addresses for the container interface (the first one is announced by gratuitous ARP).
    pub addrs: Vec<Ipv4Net>,
    /// Routes: (destination, gateway). A gateway outside every pod subnet gets a /32 link route.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// The two ends after attaching.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Host end.
    pub host: Link,
    /// Container end.
    pub container: Link,
    /// The /32 link-scope routes added so the gateway is reachable.
    pub link_routes: Vec<Ipv4Net>,
}

/// Creates the veth pair with the peer directly in `ns` and returns the host end. Tries the
/// name candidates in order, skipping names in use (including ones taken concurrently).
pub fn create_veth(
    nl: &mut Netlink,
    ns: &NetNs,
    container_id: &str,
    ifname: &str,
    mtu: u32,
) -> Result<Link, CniError> {
    let candidates = host_veth_candidates(container_id, ifname);
    for name in &candidates {
        if nl
            .link_by_name(name)
            .map_err(|e| kerr(format!("looking up {name}"), e))?
            .is_some()
        {
            continue;
        }
        match nl.add_veth(name, ifname, Some(mtu), Some(ns.fd())) {
            Ok(()) => {
                return nl
                    .link_by_name(name)
                    .map_err(|e| kerr(format!("looking up the new veth {name}"), e))?
                    .ok_or_else(|| {
                        kerr(
                            format!("looking up the new veth {name}"),
                            "it vanished after creation",
                        )
                    });
            }
            Err(e) if e.is_exists() || e.raw_os_error() == Some(libc::EEXIST) => {
                // Either a concurrent ADD took this host name, or the container side exists.
                let host_taken = nl
                    .link_by_name(name)
                    .map_err(|e| kerr(format!("looking up {name}"), e))?
                    .is_some();
                if host_taken {
                    continue;
                }
                return Err(CniError::new(
                    ERR_IFACE_EXISTS,
                    format!("container veth name provided ({ifname}) already exists"),
                )
                .with_details(
                    "the runtime called ADD twice for this container and interface; call DEL first",
                ));
            }
            Err(e) => return Err(kerr(format!("creating veth {name} / {ifname}"), e)),
        }
    }
    Err(CniError::new(
        ERR_KERNEL,
        format!(
            "no free host veth name for container {container_id}: tried {}",
            candidates.join(", ")
        ),
    )
    .with_details("stale vethwepl* links may be left over on this node; delete the unused ones"))
}

fn warn(msg: impl std::fmt::Display) {
    eprintln!("weft-net: warning: {msg}");
}

/// Attaches the host end to the bridge and configures the container end. `host` is the host
/// end from [`create_veth`]; the caller deletes it if this fails.
pub fn configure(
    nl: &mut Netlink,
    ns: &NetNs,
    bridge: &Bridge,
    host: &Link,
    spec: &AttachSpec<'_>,
) -> Result<Attached, CniError> {
    nl.set_master(host.index, Some(bridge.link.index))
        .map_err(|e| {
            kerr(
                format!("attaching {} to bridge {}", host.name, bridge.link.name),
                e,
            )
        })?;
    nl.set_hairpin(host.index, spec.hairpin)
        .map_err(|e| kerr(format!("setting hairpin mode on {}", host.name), e))?;
    if let Err(e) = sysctl::disable_accept_ra(&host.name) {
        warn(format_args!(
            "could not disable accept_ra on {}: {e}",
            host.name
        ));
    }
    nl.set_up(host.index)
        .map_err(|e| kerr(format!("bringing {} up", host.name), e))?;

    let ifname = spec.ifname.to_string();
    let addrs = spec.addrs.clone();
    let routes = spec.routes.clone();
    let mtu = spec.mtu;
    let (container, link_routes) = in_ns(ns, "configuring the container interface", move || {
        let mut nl =
            Netlink::open().map_err(|e| kerr("opening netlink in the container netns", e))?;
        let c = nl
            .link_by_name(&ifname)
            .map_err(|e| kerr(format!("looking up {ifname}"), e))?
            .ok_or_else(|| {
                kerr(
                    format!("looking up {ifname}"),
                    "the new veth end is missing from the container netns",
                )
            })?;
        // The kernel does not always apply the peer's IFLA_MTU when creating it in another
        // netns; make sure both ends agree.
        if c.mtu != mtu {
            nl.set_mtu(c.index, mtu)
                .map_err(|e| kerr(format!("setting MTU {mtu} on {ifname}"), e))?;
        }
        if let Err(e) = sysctl::disable_accept_ra(&ifname) {
            warn(format_args!(
                "could not disable accept_ra on {ifname} in the container: {e}"
            ));
        }
        sysctl::tune_arp(&ifname)
            .map_err(|e| kerr(format!("tuning ARP sysctls of {ifname}"), e))?;
        // With arp_notify the kernel sends a gratuitous ARP when the MAC changes (see
        // `announce`).
        sysctl::set(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")
            .map_err(|e| kerr(format!("enabling arp_notify on {ifname}"), e))?;
        for a in &addrs {
            nl.add_address(c.index, *a)
                .map_err(|e| kerr(format!("adding {a} to {ifname}"), e))?;
        }
        nl.set_up(c.index)
            .map_err(|e| kerr(format!("bringing {ifname} up"), e))?;
        let mut link_routes = Vec::new();
        for (_, gw) in &routes {
            let reachable = addrs.iter().any(|a| a.trunc().contains(gw));
            let host_route = Ipv4Net::new(*gw, 32).expect("/32 is a valid prefix");
            if !reachable && !link_routes.contains(&host_route) {
                nl.add_route(&Route {
                    dst: host_route,
                    gateway: None,
                    oif: Some(c.index),
                    scope_link: true,
                })
                .map_err(|e| kerr(format!("adding link route to gateway {gw}"), e))?;
                link_routes.push(host_route);
            }
        }
        for (dst, gw) in &routes {
            nl.add_route(&Route {
                dst: *dst,
                gateway: Some(*gw),
                oif: Some(c.index),
                scope_link: false,
            })
            .map_err(|e| kerr(format!("adding route {dst} via {gw}"), e))?;
        }
        let c = nl
            .link_by_index(c.index)
            .map_err(|e| kerr(format!("re-reading {ifname}"), e))?
            .unwrap_or(c);
        Ok((c, link_routes))
    })?;
    let container = announce(nl, ns, host, container);
    let host = nl
        .link_by_index(host.index)
        .map_err(|e| kerr(format!("re-reading {}", host.name), e))?
        .unwrap_or_else(|| host.clone());
    Ok(Attached {
        host,
        container,
        link_routes,
    })
}

/// How long ADD waits for the bridge to forward the new port before announcing anyway.
const PORT_WAIT_POLLS: u32 = 500;
const PORT_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(1);

/// Announces the pod's address with a gratuitous ARP, so that neighbours drop stale entries
/// for a reused address. The bridge drops frames from a port until the kernel has processed
/// its carrier (asynchronously, after the container end comes up), so this first waits for
/// the host end to be forwarding. The ARP itself is sent by the kernel (`arp_notify`, set
/// before the link came up) when the container end gets its final MAC address: no AF_PACKET
/// socket, whose close would cost every ADD an RCU grace period. Failures only warn: the pod
/// works without the announcement.
fn announce(nl: &mut Netlink, ns: &NetNs, host: &Link, container: Link) -> Link {
    let mut forwarding = false;
    for _ in 0..PORT_WAIT_POLLS {
        match nl.bridge_port_forwarding(host.index) {
            Ok(true) => {
                forwarding = true;
                break;
            }
            Ok(false) => std::thread::sleep(PORT_WAIT_STEP),
            Err(e) => {
                warn(format_args!(
                    "reading the bridge port state of {}: {e}",
                    host.name
                ));
                break;
            }
        }
    }
    if !forwarding {
        warn(format_args!(
            "the bridge is not forwarding {} yet; the gratuitous ARP may be lost",
            host.name
        ));
    }
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02; // locally administered, unicast
    let index = container.index;
    let announced = in_ns(ns, "announcing the pod address", move || {
        let mut nl =
            Netlink::open().map_err(|e| kerr("opening netlink in the container netns", e))?;
        nl.set_mac(index, mac)
            .map_err(|e| kerr("setting the container MAC (gratuitous ARP)", e))?;
        nl.link_by_index(index)
            .map_err(|e| kerr("re-reading the container interface", e))
    });
    match announced {
        Ok(Some(link)) => link,
        Ok(None) => container,
        Err(e) => {
            warn(format_args!(
                "gratuitous ARP for {}: {}",
                container.name, e.msg
            ));
            container
        }
    }
}

/// Deletes a host link by index (rollback), ignoring "already gone".
pub fn delete_host_link(nl: &mut Netlink, link: &Link) -> Result<(), CniError> {
    match nl.delete_link(link.index) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() || e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(kerr(format!("deleting {}", link.name), e)),
    }
}

/// DEL: removes `ifname` from `ns` if present (deleting one veth end deletes both).
pub fn delete_in_ns(ns: &NetNs, ifname: &str) -> Result<(), CniError> {
    let name = ifname.to_string();
    in_ns(ns, "deleting the container interface", move || {
        let mut nl =
            Netlink::open().map_err(|e| kerr("opening netlink in the container netns", e))?;
        let Some(l) = nl
            .link_by_name(&name)
            .map_err(|e| kerr(format!("looking up {name}"), e))?
        else {
            return Ok(());
        };
        match nl.delete_link(l.index) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() || e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(kerr(format!("deleting {name} in the container netns"), e)),
        }
    })
}

fn check_err(msg: impl Into<String>) -> CniError {
    CniError::new(ERR_CHECK_FAILED, msg)
        .with_details("the attachment is broken; the runtime should recreate the pod sandbox")
}

/// CHECK, container side: `ifname` exists, is up, has `addrs`, and `routes` are present.
pub fn check_container(
    ns: &NetNs,
    ifname: &str,
    addrs: &[Ipv4Net],
    routes: &[(Ipv4Net, Ipv4Addr)],
) -> Result<(), CniError> {
    let name = ifname.to_string();
    let addrs = addrs.to_vec();
    let routes = routes.to_vec();
    in_ns(ns, "checking the container interface", move || {
        let mut nl =
            Netlink::open().map_err(|e| kerr("opening netlink in the container netns", e))?;
        let c = nl
            .link_by_name(&name)
            .map_err(|e| kerr(format!("looking up {name}"), e))?
            .ok_or_else(|| {
                check_err(format!("interface {name} not found in the container netns"))
            })?;
        if !c.up {
            return Err(check_err(format!("interface {name} is down")));
        }
        let have = nl
            .addresses(c.index)
            .map_err(|e| kerr(format!("listing addresses of {name}"), e))?;
        for a in &addrs {
            if !have.contains(a) {
                return Err(check_err(format!(
                    "failed to match addr {a} on interface {name}"
                )));
            }
        }
        let have = nl
            .routes()
            .map_err(|e| kerr("listing routes in the container netns", e))?;
        for (dst, gw) in &routes {
            let found = have.iter().any(|r| {
                r.dst == *dst && r.gateway == Some(*gw) && r.oif.is_none_or(|o| o == c.index)
            });
            if !found {
                return Err(check_err(format!(
                    "route to {dst} via gateway {gw} not found for interface {name}"
                )));
            }
        }
        Ok(())
    })
}

/// CHECK, host side: the host veth exists and is attached to the bridge.
pub fn check_host(nl: &mut Netlink, host_name: &str, bridge: &Bridge) -> Result<(), CniError> {
    let h = nl
        .link_by_name(host_name)
        .map_err(|e| kerr(format!("looking up {host_name}"), e))?
        .ok_or_else(|| check_err(format!("host veth {host_name} not found")))?;
    if h.master != Some(bridge.link.index) {
        return Err(check_err(format!(
            "host veth {host_name} is not attached to bridge {}",
            bridge.link.name
        )));
    }
    Ok(())
}

/// `aa:bb:..` of a link, if it has a MAC.
pub fn mac_string(l: &Link) -> Option<String> {
    l.mac.as_ref().map(format_mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_rule() {
        let b: Vec<Ipv4Net> = vec![
            "10.32.0.1/12".parse().unwrap(),
            "10.40.0.1/16".parse().unwrap(),
        ];
        let g = |p: &str| pick_gateway(&b, p.parse().unwrap());
        assert_eq!(g("10.32.0.5/12"), Some(Ipv4Addr::new(10, 32, 0, 1)));
        assert_eq!(g("10.40.3.4/16"), Some(Ipv4Addr::new(10, 40, 0, 1)));
        // Outside every bridge subnet: the bridge's first address.
        assert_eq!(g("192.168.1.5/24"), Some(Ipv4Addr::new(10, 32, 0, 1)));
        assert_eq!(pick_gateway(&[], "10.32.0.5/12".parse().unwrap()), None);
    }
}
