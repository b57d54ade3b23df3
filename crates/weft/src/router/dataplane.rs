//! The data plane: wires the sans-IO overlays of `weft-overlay` to the kernel.
//!
//! - **Devices.** The fast path is the kernel VXLAN device `vxlan-<port+1>` (UDP 6784),
//!   an isolated port of the bridge; the sleeve is the TAP `vethwe-sleeve` (virtio-net
//!   offloads: TSO frames up to 64 KiB), another isolated port, plus two UDP sockets on the
//!   mesh port (6783): one that lets the kernel fragment and one with DF set
//!   (`IP_PMTUDISC_DO`), sharing the port with `SO_REUSEPORT`. IP forwarding is switched on
//!   and pod traffic leaving the range is masqueraded (nftables table `ip weft`).
//! - **Connections.** Each mesh connection the mesh actor announces gets an
//!   [`OverlaySwitch`](weft_overlay::switch::OverlaySwitch): both overlays run with their
//!   own heartbeats; the fast path serves the peer while healthy, sleeve otherwise. Each
//!   switch (and its reason) is logged and reported to the mesh as connection attributes.
//! - **Threads.** A tokio task relays the mesh actor's messages to one dedicated
//!   data-plane thread ([`engine`]), which owns every overlay's state and descriptor and
//!   moves frames in batches; masquerading updates run on their own task.

mod engine;
mod kernel;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use weft_dataplane::masq::{self, MasqConfig};
use weft_dataplane::netlink::Netlink;
use weft_dataplane::tap::{Tap, TapConfig};
use weft_dataplane::udp::{UdpConfig, UdpSocket};
use weft_dataplane::vxlan::{ensure_vxlan, VxlanConfig};
use weft_overlay::control::{local_overlays, overlays_feature};
use weft_overlay::fastdp::HEARTBEAT_ETHERTYPE;
use weft_wire::PeerName;

use super::dp_iface::{FromDataPlane, ToDataPlane};
pub use engine::Stats;
use engine::{Devices, Engine, EngineConfig, FastPath};
use kernel::{BridgeFdb, EventFd, PacketSocket};

/// The sleeve's TAP device.
pub const SLEEVE_TAP: &str = "vethwe-sleeve";
/// Bytes VXLAN adds around an overlay IP packet (outer IPv4 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes sleeve adds on its DF path: IPv4 + UDP 28, sender name 6, frame header 14,
/// inner Ethernet 14.
pub const SLEEVE_OVERHEAD: u32 = 62;
/// The same with NaCl: the packet overhead grows from 6 to 30.
pub const SLEEVE_NACL_OVERHEAD: u32 = 86;
/// Smallest MTU we derive (IPv4's minimum reassembly size, Weave's floor).
const MIN_MTU: u32 = 552;
/// Underlay MTU assumed when no interface tells.
const FALLBACK_UNDERLAY_MTU: u32 = 1500;

/// What the data plane needs to know about this node.
#[derive(Debug, Clone)]
pub struct DataPlaneParams {
    pub local: PeerName,
    pub bridge: String,
    pub bridge_index: u32,
    pub bridge_mac: [u8; 6],
    pub mtu: u32,
    /// The mesh port: sleeve uses it for UDP, the fast path the next one.
    pub port: u16,
    pub fastdp: bool,
    pub encrypted: bool,
    pub range: ipnet::Ipv4Net,
    pub no_masq_local: bool,
}

/// The running data plane.
pub struct DataPlane {
    /// The `Overlays` handshake feature to advertise (`weft-vxlan sleeve` or `sleeve`).
    pub overlays_feature: String,
    /// Counters of the data-plane thread (for `/metrics`; not exported there yet).
    #[allow(dead_code)]
    pub stats: Arc<Stats>,
}

/// The MTU for the bridge and pods, worked out before the bridge exists. `WEAVE_MTU` (the
/// override) wins; otherwise the underlay's MTU (the lowest of the interfaces that carry
/// IPv4 addresses, leaving out loopback and the devices of a previous run) minus the
/// largest encapsulation overhead in use: VXLAN 50 with the fast path, sleeve 62, or 86
/// with NaCl. With a 1500-byte underlay: 1438, or 1414 encrypted.
pub fn derive_mtu(
    nl: &mut Netlink,
    override_mtu: Option<u32>,
    encrypted: bool,
    fastdp: bool,
) -> anyhow::Result<u32> {
    if let Some(m) = override_mtu {
        return Ok(m);
    }
    let (underlay, from) = underlay_mtu(nl)?;
    let mtu = underlay.saturating_sub(overhead(encrypted, fastdp));
    if mtu < MIN_MTU {
        bail!(
            "the underlay MTU {underlay} ({from}) leaves only {mtu} bytes for the overlay \
             (below {MIN_MTU}); raise the underlay MTU or set WEAVE_MTU"
        );
    }
    tracing::info!(underlay, from = %from, mtu, "overlay MTU");
    Ok(mtu)
}

/// The largest encapsulation overhead in use.
pub fn overhead(encrypted: bool, fastdp: bool) -> u32 {
    let sleeve = if encrypted {
        SLEEVE_NACL_OVERHEAD
    } else {
        SLEEVE_OVERHEAD
    };
    if fastdp {
        sleeve.max(VXLAN_OVERHEAD)
    } else {
        sleeve
    }
}

/// The underlay MTU and the interface it comes from.
fn underlay_mtu(nl: &mut Netlink) -> anyhow::Result<(u32, String)> {
    let links = nl.links().context("listing network interfaces")?;
    // Weft's own devices (of a previous run): VXLAN and TAP devices, any bridge one of them
    // is a port of, and that bridge's ports.
    let ours_kind = |k: &Option<String>| matches!(k.as_deref(), Some("vxlan") | Some("tun"));
    let our_bridges: HashSet<u32> = links
        .iter()
        .filter(|l| ours_kind(&l.kind))
        .filter_map(|l| l.master)
        .collect();
    let mut best: Option<(u32, String)> = None;
    for l in &links {
        let excluded = l.name == "lo"
            || !l.up
            || l.mtu == 0
            || ours_kind(&l.kind)
            || our_bridges.contains(&l.index)
            || l.master.is_some_and(|m| our_bridges.contains(&m));
        if excluded {
            continue;
        }
        let has_v4 = nl
            .addresses(l.index)
            .map(|a| !a.is_empty())
            .unwrap_or(false);
        if has_v4 && best.as_ref().is_none_or(|(m, _)| l.mtu < *m) {
            best = Some((l.mtu, l.name.clone()));
        }
    }
    Ok(best.unwrap_or_else(|| {
        tracing::warn!(
            "no interface with an IPv4 address to take the underlay MTU from; assuming {FALLBACK_UNDERLAY_MTU}"
        );
        (FALLBACK_UNDERLAY_MTU, "assumed".into())
    }))
}

/// Sets up the devices and starts the data-plane thread and its control task. Called
/// inside the tokio runtime, after the bridge exists.
pub fn start(
    params: DataPlaneParams,
    mut from_mesh: UnboundedReceiver<ToDataPlane>,
    to_mesh: UnboundedSender<FromDataPlane>,
) -> anyhow::Result<DataPlane> {
    weft_dataplane::sysctl::set("net/ipv4/ip_forward", "1")
        .context("enabling IP forwarding (net.ipv4.ip_forward)")?;
    let mut nl = Netlink::open().context("opening a netlink socket")?;
    let tap = Tap::create(
        &mut nl,
        &TapConfig {
            name: SLEEVE_TAP.into(),
            multi_queue: false,
            offloads: true,
            mtu: Some(params.mtu),
            bridge: Some(params.bridge_index),
            isolated: true,
        },
    )
    .with_context(|| {
        format!("creating the sleeve TAP device {SLEEVE_TAP} (is another router running?)")
    })?;
    let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, params.port));
    let sock = |df: bool| {
        UdpSocket::bind(&UdpConfig {
            df,
            reuse_port: true,
            ..UdpConfig::new(bind)
        })
        .with_context(|| {
            format!(
                "binding the sleeve UDP port {bind}{} (is another router running?)",
                if df { " (DF socket)" } else { "" }
            )
        })
    };
    let udp = sock(false)?;
    let udp_df = sock(true)?;
    let fast = if params.fastdp {
        match setup_fastdp(&mut nl, &params) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("the fast path is unavailable, using sleeve only: {e:#}");
                None
            }
        }
    } else {
        remove_stale_vxlan(&mut nl, &params);
        None
    };
    let masq_cfg = |ranges: &[ipnet::Ipv4Net]| MasqConfig {
        range: params.range,
        no_masq_local: if params.no_masq_local {
            ranges.to_vec()
        } else {
            Vec::new()
        },
        bridge: params.bridge.clone(),
    };
    masq::apply(&masq_cfg(&[])).context("setting up masquerading of pod traffic")?;
    let bridge_fdb = BridgeFdb::open().context("opening a netlink socket for the bridge FDB")?;
    let (sleeve, fastdp_cfg) = engine::timings_from_env();
    let stats = Arc::new(Stats::default());
    let fastdp = fast.is_some();
    let engine = Engine::new(
        EngineConfig {
            local: params.local,
            bridge_mac: params.bridge_mac,
            mtu: params.mtu,
            sleeve,
            fastdp: fastdp_cfg,
        },
        Devices {
            tap,
            udp,
            udp_df,
            fast,
            nl,
            bridge_fdb,
        },
        to_mesh,
        stats.clone(),
    );
    let wake = Arc::new(EventFd::new().context("creating an eventfd")?);
    let (ctl_tx, ctl_rx) = std::sync::mpsc::channel();
    let thread = {
        let wake = wake.clone();
        std::thread::Builder::new()
            .name("weft-dataplane".into())
            .spawn(move || engine.run(ctl_rx, wake))
            .context("starting the data-plane thread")?
    };
    // Masquerading follows this node's ranges (NO_MASQ_LOCAL), off the frame path.
    let (ranges_tx, mut ranges_rx) = tokio::sync::watch::channel(Vec::<ipnet::Ipv4Net>::new());
    let masq_params = params.clone();
    tokio::spawn(async move {
        let mut applied: Vec<ipnet::Ipv4Net> = Vec::new();
        while ranges_rx.changed().await.is_ok() {
            let ranges = ranges_rx.borrow_and_update().clone();
            if ranges == applied || !masq_params.no_masq_local {
                continue;
            }
            let cfg = MasqConfig {
                range: masq_params.range,
                no_masq_local: ranges.clone(),
                bridge: masq_params.bridge.clone(),
            };
            match tokio::task::spawn_blocking(move || masq::apply(&cfg)).await {
                Ok(Ok(())) => applied = ranges,
                Ok(Err(e)) => tracing::warn!("updating masquerading for this node's ranges: {e}"),
                Err(e) => tracing::warn!("updating masquerading: {e}"),
            }
        }
    });
    tokio::spawn(async move {
        while let Some(msg) = from_mesh.recv().await {
            match msg {
                ToDataPlane::LocalRanges(r) => {
                    let _ = ranges_tx.send(r);
                }
                other => {
                    if ctl_tx.send(other).is_err() {
                        tracing::error!("the data-plane thread has stopped");
                        return;
                    }
                    wake.notify();
                }
            }
        }
        // The mesh is gone: dropping the sender stops the thread.
        drop(ctl_tx);
        wake.notify();
    });
    let feature = overlays_feature(&local_overlays(fastdp));
    // A panic on the data-plane thread must not go unnoticed.
    tokio::task::spawn_blocking(move || {
        if thread.join().is_err() {
            tracing::error!("the data-plane thread panicked: pods on other hosts are unreachable");
        }
    });
    tracing::info!(
        overlays = %feature,
        mtu = params.mtu,
        encrypted = params.encrypted,
        "data plane started"
    );
    Ok(DataPlane {
        overlays_feature: feature,
        stats,
    })
}

fn vxlan_name(port: u16) -> anyhow::Result<(String, u16)> {
    let p = port
        .checked_add(1)
        .context("the mesh port 65535 leaves no port for the fast path")?;
    Ok((format!("vxlan-{p}"), p))
}

fn setup_fastdp(nl: &mut Netlink, params: &DataPlaneParams) -> anyhow::Result<FastPath> {
    let (name, port) = vxlan_name(params.port)?;
    // A device of a previous run holds FDB entries of peers that may be gone: start afresh.
    if let Some(old) = nl.link_by_name(&name)? {
        nl.delete_link(old.index)
            .with_context(|| format!("removing the stale {name}"))?;
    }
    let link = ensure_vxlan(
        nl,
        &VxlanConfig {
            name: name.clone(),
            port,
            mtu: params.mtu,
            ..VxlanConfig::default()
        },
        Some(params.bridge_index),
    )
    .with_context(|| format!("creating the VXLAN device {name}"))?;
    let packets = PacketSocket::open(link.index, HEARTBEAT_ETHERTYPE)
        .with_context(|| format!("opening a packet socket on {name} for heartbeats"))?;
    Ok(FastPath {
        vxlan_index: link.index,
        packets,
    })
}

fn remove_stale_vxlan(nl: &mut Netlink, params: &DataPlaneParams) {
    let Ok((name, _)) = vxlan_name(params.port) else {
        return;
    };
    if let Ok(Some(old)) = nl.link_by_name(&name) {
        if old.kind.as_deref() == Some("vxlan") {
            tracing::info!("removing {name}: the fast path is disabled");
            let _ = nl.delete_link(old.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dp_iface_for_tests::*;
    use super::*;

    #[test]
    fn overheads() {
        assert_eq!(1500 - overhead(false, true), 1438);
        assert_eq!(1500 - overhead(true, true), 1414);
        assert_eq!(1500 - overhead(false, false), 1438);
        assert_eq!(1500 - overhead(true, false), 1414);
    }

    #[test]
    fn vxlan_port_follows_the_mesh_port() {
        assert_eq!(vxlan_name(6783).unwrap(), ("vxlan-6784".into(), 6784));
        assert!(vxlan_name(65535).is_err());
    }

    #[test]
    fn a_weave_peer_gets_sleeve() {
        // Weave 2.8 advertises "fastdp sleeve": only sleeve is common, at index 0.
        for (theirs, fast) in [
            (Some("fastdp sleeve"), true),
            (None, true),
            (Some("sleeve"), true),
            (Some("weft-vxlan sleeve"), false),
        ] {
            let sw = prepare(theirs, fast);
            assert!(sw.fastdp().is_none(), "{theirs:?}");
            assert!(sw.sleeve().is_some(), "{theirs:?}");
        }
        let sw = prepare(Some("weft-vxlan sleeve"), true);
        assert!(sw.fastdp().is_some());
        // An encrypted connection never uses the fast path.
        let mut info = conn_info(Some("weft-vxlan sleeve"));
        info.session_key = Some(weft_wire::SessionKey::from_bytes([7; 32]));
        let p = engine::switch_params(&engine_cfg(), true, &info).unwrap();
        let sw = weft_overlay::switch::OverlaySwitch::prepare(p).unwrap();
        assert!(sw.fastdp().is_none());
        assert!(sw.reason().contains("encrypted"), "{}", sw.reason());
    }

    #[test]
    fn switch_params_from_a_connection() {
        let info = conn_info(Some("weft-vxlan sleeve"));
        let p = engine::switch_params(&engine_cfg(), true, &info).unwrap();
        assert_eq!(p.remote_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(
            p.sleeve_remote_addr,
            Some("198.18.0.2:6783".parse().unwrap())
        );
        let f = p.fastdp.unwrap();
        assert_eq!(f.frame_len, 1438 + 14);
        assert_eq!(f.remote_mac.0, [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.local_mac.0, [2, 0, 0, 0, 0, 1]);
        // Inbound: the sleeve address is learned from the first heartbeat.
        let mut inbound = conn_info(None);
        inbound.outbound = false;
        let p = engine::switch_params(&engine_cfg(), false, &inbound).unwrap();
        assert_eq!(p.sleeve_remote_addr, None);
        assert!(p.fastdp.is_none());
        // IPv6 underlays are refused with a reason.
        let mut v6 = conn_info(None);
        v6.remote_tcp = "[2001:db8::1]:6783".parse().unwrap();
        let e = engine::switch_params(&engine_cfg(), true, &v6).unwrap_err();
        assert!(e.contains("IPv4"), "{e}");
    }
}

#[cfg(test)]
mod dp_iface_for_tests {
    use super::engine::EngineConfig;
    use crate::router::dp_iface::ConnInfo;
    use weft_mesh::ConnId;
    use weft_overlay::fastdp::FastdpConfig;
    use weft_overlay::sleeve::forwarder::SleeveConfig;
    use weft_overlay::switch::OverlaySwitch;
    use weft_wire::PeerName;

    pub fn engine_cfg() -> EngineConfig {
        EngineConfig {
            local: PeerName::new(0x02_00_00_00_00_01).unwrap(),
            bridge_mac: [2, 0, 0, 0, 0, 1],
            mtu: 1438,
            sleeve: SleeveConfig::default(),
            fastdp: FastdpConfig::default(),
        }
    }

    pub fn conn_info(overlays: Option<&str>) -> ConnInfo {
        ConnInfo {
            conn: ConnId(1),
            remote: PeerName::new(0x02_00_00_00_00_02).unwrap(),
            remote_nickname: "h2".into(),
            conn_uid: 42,
            outbound: true,
            remote_tcp: "198.18.0.2:6783".parse().unwrap(),
            remote_overlays: overlays.map(|s| s.split_whitespace().map(str::to_owned).collect()),
            session_key: None,
        }
    }

    pub fn prepare(overlays: Option<&str>, fast: bool) -> OverlaySwitch {
        let p = super::engine::switch_params(&engine_cfg(), fast, &conn_info(overlays)).unwrap();
        OverlaySwitch::prepare(p).unwrap()
    }
}
