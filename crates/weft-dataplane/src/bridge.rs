//! The node's `weave` bridge.

use crate::netlink::{validate_ifname, Link, Netlink};
use crate::{sysctl, Error, MacAddr, Result};

/// Desired state of the node bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Usually "weave".
    pub name: String,
    pub mtu: u32,
    /// A fixed MAC (Weave persists one per node); `None` keeps what the kernel chose.
    pub mac: Option<MacAddr>,
}

/// Creates the bridge, or adopts an existing one (error naming the kind if a
/// non-bridge link has that name), sets MTU (and MAC if given), ARP tuning,
/// accept_ra=0, brings it up. Returns the link.
///
/// The sysctls are written in the calling thread's netns, so `nl` must have been
/// opened in that same netns (checked).
pub fn ensure_bridge(nl: &mut Netlink, cfg: &BridgeConfig) -> Result<Link> {
    validate_ifname(&cfg.name)?;
    if !nl.in_current_netns() {
        return Err(Error::InvalidArgument(format!(
            "ensure_bridge({:?}): the netlink socket was opened in another network namespace than the calling thread's; open it on this thread",
            cfg.name
        )));
    }
    let name = &cfg.name;
    let existing = match nl.link_by_name(name)? {
        Some(l) => Some(l),
        None => match nl.add_bridge(name, Some(cfg.mtu)) {
            Ok(l) => Some(l),
            // Created concurrently: adopt it below.
            Err(Error::Exists(_)) => None,
            Err(e) => return Err(e),
        },
    };
    let link = match existing {
        Some(l) => l,
        None => nl.link_by_name(name)?.ok_or_else(|| {
            Error::NotFound(format!("bridge {name:?} (deleted while adopting it)"))
        })?,
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(Error::WrongKind {
            name: name.clone(),
            kind: link
                .kind
                .clone()
                .unwrap_or_else(|| "device (no link kind)".into()),
            expected: "bridge".into(),
        });
    }
    // A bridge follows its ports' MTU (and drops back to 1500 when the last port leaves) unless
    // the MTU was set explicitly after creation; the kernel ignores a set to the current value,
    // so step through a neighbouring value to pin it.
    let step = if cfg.mtu > 68 {
        cfg.mtu - 1
    } else {
        cfg.mtu + 1
    };
    nl.set_mtu(link.index, step)?;
    nl.set_mtu(link.index, cfg.mtu)?;
    if let Some(mac) = cfg.mac {
        if link.mac != Some(mac) {
            nl.set_mac(link.index, mac)?;
        }
    }
    sysctl::tune_arp(name)?;
    sysctl::disable_accept_ra(name)?;
    if !link.up {
        nl.set_up(link.index)?;
    }
    nl.link_by_index(link.index)?
        .ok_or_else(|| Error::NotFound(format!("bridge {name:?} (deleted while configuring it)")))
}
