//! Masquerading against the kernel: the test's private netns is the host, with a `weave`
//! bridge, a pod behind it and an "outside" netns on a veth.

mod common;

use common::*;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;
use weft_dataplane::masq::{apply, remove, MasqConfig};
use weft_dataplane::netlink::{Netlink, Route};
use weft_dataplane::netns::NetNs;
use weft_dataplane::sysctl;

/// Sends one datagram from `from` (a fresh socket, so a fresh conntrack entry) to
/// `to_ip:port` where a socket created in `to` waits; returns the source it saw.
fn source_seen(from: &NetNs, to: &NetNs, to_ip: Ipv4Addr, port: u16) -> Ipv4Addr {
    let rx = to
        .run(|| Ok(UdpSocket::bind((to_ip, port)).expect("bind receiver")))
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    from.run(|| {
        let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
        tx.send_to(b"hello", SocketAddr::from((to_ip, port)))
            .unwrap();
        Ok(())
    })
    .unwrap();
    let mut buf = [0u8; 16];
    let (n, src) = rx.recv_from(&mut buf).expect("datagram did not arrive");
    assert_eq!(&buf[..n], b"hello");
    match src {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => panic!("v6 source"),
    }
}

fn table_listing() -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", "weft"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn pods_reach_the_outside_only_when_masqueraded() {
    private_netns();
    sysctl::set("net/ipv4/ip_forward", "1").unwrap();
    let mut nl = Netlink::open().unwrap();
    let lo = link(&mut nl, "lo");
    nl.set_up(lo.index).unwrap();
    let br = nl.add_bridge("weave", None).unwrap();
    nl.add_address(br.index, "10.32.0.1/12".parse().unwrap())
        .unwrap();
    nl.set_up(br.index).unwrap();
    let pod = named_ns("masq-pod");
    add_pod(
        &mut nl,
        "vethpod",
        pod.ns(),
        "10.32.0.2/12".parse().unwrap(),
        Some(Ipv4Addr::new(10, 32, 0, 1)),
        Some(br.index),
    );
    let outside = named_ns("masq-out");
    add_pod(
        &mut nl,
        "vout",
        outside.ns(),
        "192.168.200.2/24".parse().unwrap(),
        None,
        None,
    );
    let vout = link(&mut nl, "vout");
    nl.add_address(vout.index, "192.168.200.1/24".parse().unwrap())
        .unwrap();
    let out_ip = Ipv4Addr::new(192, 168, 200, 2);
    let pod_ip = Ipv4Addr::new(10, 32, 0, 2);

    // No masquerading: the outside sees the pod's address, and cannot answer it.
    assert_eq!(source_seen(pod.ns(), outside.ns(), out_ip, 7000), pod_ip);
    assert!(!ping_once(pod.ns(), out_ip));

    let cfg = MasqConfig {
        range: "10.32.0.0/12".parse().unwrap(),
        no_masq_local: vec![],
        bridge: "weave".into(),
    };
    apply(&cfg).unwrap();
    let listing = table_listing().expect("table ip weft exists");
    assert!(
        listing.contains("masquerade") && listing.contains("iifname \"weave\" accept"),
        "{listing}"
    );
    assert_eq!(
        source_seen(pod.ns(), outside.ns(), out_ip, 7001),
        Ipv4Addr::new(192, 168, 200, 1)
    );
    assert!(
        ping(pod.ns(), out_ip, 3),
        "masqueraded pod cannot reach the outside"
    );

    // Into the range from outside: masqueraded to the bridge address...
    in_ns(outside.ns(), |nl| {
        nl.add_route(&Route {
            dst: "10.32.0.0/12".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(192, 168, 200, 1)),
            oif: None,
            scope_link: false,
        })
    });
    assert_eq!(
        source_seen(outside.ns(), pod.ns(), pod_ip, 7002),
        Ipv4Addr::new(10, 32, 0, 1)
    );
    // ... unless the destination is one of this node's own ranges (NO_MASQ_LOCAL).
    let local = MasqConfig {
        no_masq_local: vec!["10.32.0.0/24".parse().unwrap()],
        ..cfg.clone()
    };
    apply(&local).unwrap();
    assert!(table_listing().unwrap().contains("@no_masq_local"));
    assert_eq!(source_seen(outside.ns(), pod.ns(), pod_ip, 7003), out_ip);
    // Re-applying replaces the table atomically (no duplicate rules).
    apply(&cfg).unwrap();
    let listing = table_listing().unwrap();
    assert_eq!(listing.matches("masquerade").count(), 2, "{listing}");
    assert!(!listing.contains("no_masq_local"));

    // Gone after remove; removing twice is fine.
    remove().unwrap();
    assert!(table_listing().is_none());
    remove().unwrap();
    assert_eq!(source_seen(pod.ns(), outside.ns(), out_ip, 7004), pod_ip);
}
