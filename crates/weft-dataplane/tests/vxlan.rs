//! The fast-path VXLAN device against the kernel: hosts are network namespaces joined by
//! an underlay bridge (in the test's private netns), each with a `weave` bridge, a VXLAN
//! device and a pod.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr};
use weft_dataplane::bridge::{ensure_bridge, BridgeConfig};
use weft_dataplane::netlink::Netlink;
use weft_dataplane::netns::NamedNetNs;
use weft_dataplane::vxlan::{ensure_vxlan, FdbEntry, VxlanConfig};
use weft_dataplane::{arp, Error, MacAddr};

struct Host {
    ns: NamedNetNs,
    pod: NamedNetNs,
    underlay_ip: Ipv4Addr,
    pod_ip: Ipv4Addr,
    pod_mac: MacAddr,
    vxlan: u32,
}

impl Host {
    fn nl<R: Send>(&self, f: impl FnOnce(&mut Netlink) -> weft_dataplane::Result<R> + Send) -> R {
        in_ns(self.ns.ns(), f)
    }
    fn vx_rx(&self) -> u64 {
        let vx = self.vxlan;
        self.nl(|nl| nl.link_stats(vx)).rx_packets
    }
    fn fdb(&self) -> Vec<FdbEntry> {
        let vx = self.vxlan;
        self.nl(|nl| nl.fdb_entries(vx))
    }
}

/// Builds `n` hosts on an underlay bridge in the calling thread's (private) netns.
fn hosts(n: u8) -> Vec<Host> {
    let mut nl = Netlink::open().unwrap();
    let ul = nl.add_bridge("ul", None).unwrap();
    nl.set_up(ul.index).unwrap();
    (1..=n)
        .map(|i| {
            let ns = named_ns(&format!("h{i}"));
            let pod = named_ns(&format!("p{i}"));
            let ul_if = format!("ul-h{i}");
            nl.add_veth(&ul_if, "eth0", None, Some(ns.ns().fd()))
                .unwrap();
            let ulp = link(&mut nl, &ul_if);
            nl.set_master(ulp.index, Some(ul.index)).unwrap();
            nl.set_up(ulp.index).unwrap();
            let underlay_ip = Ipv4Addr::new(192, 168, 100, i);
            let pod_ip = Ipv4Addr::new(10, 32, 0, i);
            let pod_ns = pod.ns();
            let vxlan = in_ns(ns.ns(), |nl| {
                let eth0 = nl.link_by_name("eth0")?.expect("eth0");
                nl.add_address(eth0.index, ipnet::Ipv4Net::new(underlay_ip, 24).unwrap())?;
                nl.set_up(eth0.index)?;
                let br = ensure_bridge(
                    nl,
                    &BridgeConfig {
                        name: "weave".into(),
                        mtu: 1376,
                        mac: None,
                    },
                )?;
                let vx = ensure_vxlan(
                    nl,
                    &VxlanConfig {
                        local: Some(underlay_ip),
                        ..Default::default()
                    },
                    Some(br.index),
                )?;
                add_pod(
                    nl,
                    "vethpod",
                    pod_ns,
                    ipnet::Ipv4Net::new(pod_ip, 12).unwrap(),
                    None,
                    Some(br.index),
                );
                Ok(vx.index)
            });
            let pod_mac = in_ns(pod.ns(), |nl| {
                Ok(nl.link_by_name("eth0")?.unwrap().mac.unwrap())
            });
            Host {
                ns,
                pod,
                underlay_ip,
                pod_ip,
                pod_mac,
                vxlan,
            }
        })
        .collect()
}

fn flood(from: &Host, to: &Host) {
    let (vx, ip) = (from.vxlan, IpAddr::V4(to.underlay_ip));
    from.nl(|nl| nl.fdb_append_flood(vx, ip));
}

fn has_flood(h: &Host, to: &Host) -> bool {
    h.fdb()
        .iter()
        .any(|e| e.is_flood() && e.dst == Some(IpAddr::V4(to.underlay_ip)) && e.permanent)
}

fn learned(h: &Host, mac: MacAddr) -> Option<FdbEntry> {
    h.fdb().into_iter().find(|e| e.mac == mac)
}

#[test]
fn device_settings_adoption_and_wrong_kind() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    let br = ensure_bridge(
        &mut nl,
        &BridgeConfig {
            name: "weave".into(),
            mtu: 1376,
            mac: None,
        },
    )
    .unwrap();
    let cfg = VxlanConfig {
        local: Some(Ipv4Addr::new(192, 0, 2, 1)),
        src_port_range: Some((40000, 50000)),
        ..Default::default()
    };
    let vx = ensure_vxlan(&mut nl, &cfg, Some(br.index)).unwrap();
    assert_eq!(vx.name, "vxlan-6784");
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    assert_eq!(vx.mtu, 1376);
    assert_eq!(vx.master, Some(br.index));
    assert!(vx.up);
    assert!(nl.port_isolated(vx.index).unwrap());

    // iproute2's view of the settings.
    let out = std::process::Command::new("ip")
        .args(["-d", "link", "show", "vxlan-6784"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "id 30565",
        "local 192.0.2.1",
        "dstport 6784",
        "srcport 40000 50000",
        "ttl 64",
        "df set",
        "noudpcsum",
        "isolated on",
    ] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    assert!(!text.contains("nolearning"), "{text}");

    // Same settings: adopted (same index); the FDB survives.
    nl.fdb_append_flood(vx.index, "192.0.2.9".parse().unwrap())
        .unwrap();
    let again = ensure_vxlan(&mut nl, &cfg, Some(br.index)).unwrap();
    assert_eq!(again.index, vx.index);
    assert_eq!(nl.fdb_entries(vx.index).unwrap().len(), 1);
    // Only the MTU changed: adopted and updated.
    let mtu = VxlanConfig {
        mtu: 1300,
        ..cfg.clone()
    };
    let again = ensure_vxlan(&mut nl, &mtu, Some(br.index)).unwrap();
    assert_eq!((again.index, again.mtu), (vx.index, 1300));

    // Another VNI: recreated, FDB empty, still enslaved and isolated.
    let other = VxlanConfig { vni: 42, ..cfg };
    let re = ensure_vxlan(&mut nl, &other, Some(br.index)).unwrap();
    assert_eq!(re.master, Some(br.index));
    assert!(nl.port_isolated(re.index).unwrap());
    assert!(nl.fdb_entries(re.index).unwrap().is_empty());
    assert!(nl.link_by_index(vx.index).unwrap().is_none() || re.index == vx.index);

    // Isolation can be switched off and on again.
    nl.set_port_isolated(re.index, false).unwrap();
    assert!(!nl.port_isolated(re.index).unwrap());
    nl.set_port_isolated(re.index, true).unwrap();
    assert!(nl.port_isolated(re.index).unwrap());

    // Not a bridge port: a clear error.
    nl.add_veth("nb0", "nb0p", None, None).unwrap();
    let nb = link(&mut nl, "nb0");
    assert!(matches!(
        nl.set_port_isolated(nb.index, true),
        Err(Error::InvalidArgument(_))
    ));

    // A non-VXLAN link with the name: WrongKind.
    let wrong = VxlanConfig {
        name: "nb0".into(),
        ..Default::default()
    };
    match ensure_vxlan(&mut nl, &wrong, None) {
        Err(e @ Error::WrongKind { .. }) => assert!(e.to_string().contains("veth"), "{e}"),
        other => panic!("expected WrongKind, got {other:?}"),
    }

    // Counters exist and move.
    let lo = link(&mut nl, "lo");
    nl.set_up(lo.index).unwrap();
    let before = nl.link_stats(lo.index).unwrap();
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(b"x", s.local_addr().unwrap()).unwrap();
    let after = nl.link_stats(lo.index).unwrap();
    assert!(after.tx_packets > before.tx_packets, "{before:?} {after:?}");
    assert!(after.rx_bytes > before.rx_bytes);
}

#[test]
fn fdb_programming_without_traffic() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    let vx = ensure_vxlan(&mut nl, &VxlanConfig::default(), None).unwrap();
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    nl.fdb_append_flood(vx.index, a).unwrap();
    nl.fdb_append_flood(vx.index, b).unwrap();
    nl.fdb_append_flood(vx.index, b).unwrap(); // idempotent
    let mut floods: Vec<IpAddr> = nl
        .fdb_entries(vx.index)
        .unwrap()
        .into_iter()
        .filter(|e| e.is_flood() && e.permanent && e.self_entry)
        .filter_map(|e| e.dst)
        .collect();
    floods.sort();
    assert_eq!(floods, vec![a, b]);

    let mac: MacAddr = [0x02, 0, 0, 0, 0, 0x42];
    nl.fdb_add_unicast(vx.index, mac, a).unwrap();
    nl.fdb_add_unicast(vx.index, mac, b).unwrap(); // replaces
    let uni: Vec<FdbEntry> = nl
        .fdb_entries(vx.index)
        .unwrap()
        .into_iter()
        .filter(|e| e.mac == mac)
        .collect();
    assert_eq!(uni.len(), 1, "{uni:?}");
    assert_eq!(uni[0].dst, Some(b));
    assert!(uni[0].permanent);

    nl.fdb_del_flood(vx.index, a).unwrap();
    let left = nl.fdb_entries(vx.index).unwrap();
    assert!(left.iter().all(|e| e.dst != Some(a)), "{left:?}");
    assert_eq!(left.len(), 2, "{left:?}");
    nl.fdb_del_flood(vx.index, a).unwrap(); // absent: Ok, nothing else touched
    assert_eq!(nl.fdb_entries(vx.index).unwrap(), left);
    // b has a flood entry and the unicast one.
    assert_eq!(nl.fdb_flush_dst(vx.index, b).unwrap(), 2);
    assert!(nl.fdb_entries(vx.index).unwrap().is_empty());
    nl.fdb_add_unicast(vx.index, mac, a).unwrap();
    assert!(nl.fdb_del_unicast(vx.index, mac).unwrap());
    assert!(!nl.fdb_del_unicast(vx.index, mac).unwrap());

    // Bad input.
    assert!(matches!(
        nl.fdb_append_flood(vx.index, "0.0.0.0".parse().unwrap()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        nl.fdb_add_unicast(vx.index, [0; 6], a),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        nl.fdb_append_flood(987_654, a),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn pods_talk_over_vxlan_once_flood_entries_exist() {
    private_netns();
    let hs = hosts(2);
    let (h1, h2) = (&hs[0], &hs[1]);
    flood(h1, h2);
    flood(h2, h1);
    assert!(has_flood(h1, h2) && has_flood(h2, h1));
    assert!(
        ping(h1.pod.ns(), h2.pod_ip, 10),
        "pod1 cannot reach pod2 over VXLAN"
    );
    assert!(
        ping(h2.pod.ns(), h1.pod_ip, 10),
        "pod2 cannot reach pod1 over VXLAN"
    );

    // Each side learned the other pod's MAC behind the other host.
    let e = learned(h1, h2.pod_mac).expect("h1 learned pod2's MAC");
    assert_eq!(e.dst, Some(IpAddr::V4(h2.underlay_ip)));
    assert!(!e.permanent && e.self_entry);
    assert!(learned(h2, h1.pod_mac).is_some());

    // Flushing everything that points at h2 removes the flood and the learned entries.
    // (h2's device goes down first, so that nothing from h2 is learned again meanwhile.)
    let vx2 = h2.vxlan;
    h2.nl(|nl| nl.set_down(vx2));
    let (vx, ip) = (h1.vxlan, IpAddr::V4(h2.underlay_ip));
    // (At least the flood entry and pod2's MAC; h2 may have sent from other MACs too.)
    let removed = h1.nl(|nl| nl.fdb_flush_dst(vx, ip));
    assert!(removed >= 2, "removed {removed}");
    assert!(h1.fdb().iter().all(|e| e.dst != Some(ip)), "{:?}", h1.fdb());
}

#[test]
fn broadcast_reaches_every_flood_remote_until_removed() {
    private_netns();
    let hs = hosts(3);
    let (h1, h2, h3) = (&hs[0], &hs[1], &hs[2]);
    // h1 floods to both; h2 and h3 only back to h1, so anything h3 receives came from h1.
    flood(h1, h2);
    flood(h1, h3);
    flood(h2, h1);
    flood(h3, h1);
    let floods = h1.fdb().iter().filter(|e| e.is_flood()).count();
    assert_eq!(floods, 2, "{:?}", h1.fdb());

    // ARP requests from pod1 reach both hosts: both pods answer.
    assert!(ping(h1.pod.ns(), h2.pod_ip, 10));
    assert!(ping(h1.pod.ns(), h3.pod_ip, 10));

    // A broadcast (gratuitous ARP) from pod1 arrives at both VXLAN devices.
    let garp = |n: usize| {
        let (mac, ip) = (h1.pod_mac, h1.pod_ip);
        in_ns(h1.pod.ns(), move |nl| {
            let eth0 = nl.link_by_name("eth0")?.unwrap();
            for _ in 0..n {
                arp::send_gratuitous_arp(eth0.index, mac, ip)?;
            }
            Ok(())
        })
    };
    let (r2, r3) = (h2.vx_rx(), h3.vx_rx());
    garp(1);
    assert!(
        eventually(250, || h2.vx_rx() > r2),
        "h2 never got the broadcast"
    );
    assert!(
        eventually(250, || h3.vx_rx() > r3),
        "h3 never got the broadcast"
    );

    // Without h3's flood entry, broadcasts go to h2 only.
    let (vx, ip3) = (h1.vxlan, IpAddr::V4(h3.underlay_ip));
    h1.nl(|nl| nl.fdb_del_flood(vx, ip3));
    assert!(!has_flood(h1, h3) && has_flood(h1, h2));
    let (r2, r3) = (h2.vx_rx(), h3.vx_rx());
    garp(5);
    assert!(
        eventually(250, || h2.vx_rx() >= r2 + 5),
        "h2 lost broadcasts"
    );
    assert_eq!(
        h3.vx_rx(),
        r3,
        "h3 still receives broadcasts after its flood entry was deleted"
    );

    // Learned entries for pod3 are gone with fdb_flush_dst, pod2's stay.
    assert!(learned(h1, h3.pod_mac).is_some());
    let vx3 = h3.vxlan;
    h3.nl(|nl| nl.set_down(vx3));
    h1.nl(|nl| nl.fdb_flush_dst(vx, ip3));
    assert!(learned(h1, h3.pod_mac).is_none());
    assert!(learned(h1, h2.pod_mac).is_some());
}
