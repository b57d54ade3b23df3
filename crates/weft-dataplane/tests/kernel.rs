//! Privileged tests against the real kernel. Each test first moves its own thread
//! into a fresh network namespace (`unshare(CLONE_NEWNET)`), and any named netns it
//! creates carries the pid and a counter and is removed by a Drop guard.

use nix::sched::{unshare, CloneFlags};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use weft_dataplane::bridge::{ensure_bridge, BridgeConfig};
use weft_dataplane::netlink::{Link, Netlink, Route};
use weft_dataplane::netns::{NamedNetNs, NetNs};
use weft_dataplane::{arp, sysctl, Error, MacAddr};

/// Puts the calling thread into a new, private network namespace.
fn private_netns() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "weft-dataplane kernel tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create \
         network namespaces: run them as root, e.g. `sudo -E cargo nextest run -p weft-dataplane`"
    );
    unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_ns_name() -> String {
    format!(
        "weft-dp-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn named_ns() -> NamedNetNs {
    NamedNetNs::create(&unique_ns_name()).expect("create named netns")
}

fn link(nl: &mut Netlink, name: &str) -> Link {
    nl.link_by_name(name)
        .expect("link_by_name")
        .unwrap_or_else(|| panic!("link {name} missing"))
}

#[test]
fn bridge_create_adopt_and_refuse_non_bridge() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    let mac: MacAddr = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x01];
    let cfg = BridgeConfig {
        name: "weave".into(),
        mtu: 1376,
        mac: Some(mac),
    };
    let br = ensure_bridge(&mut nl, &cfg).unwrap();
    assert_eq!(br.name, "weave");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, 1376);
    assert_eq!(br.mac, Some(mac));
    assert!(br.up);
    assert_eq!(
        sysctl::get("net/ipv4/neigh/weave/base_reachable_time").unwrap(),
        "5"
    );
    assert_eq!(
        sysctl::get("net/ipv4/neigh/weave/delay_first_probe_time").unwrap(),
        "2"
    );
    assert_eq!(
        sysctl::get("net/ipv4/neigh/weave/ucast_solicit").unwrap(),
        "1"
    );
    assert_eq!(sysctl::get("net.ipv6.conf.weave.accept_ra").unwrap(), "0");

    // Adopt: same link, changed MTU applied, still up.
    let cfg2 = BridgeConfig { mtu: 1410, ..cfg };
    let again = ensure_bridge(&mut nl, &cfg2).unwrap();
    assert_eq!(again.index, br.index);
    assert_eq!(again.mtu, 1410);
    assert_eq!(again.mac, Some(mac));

    // add_bridge on a taken name reports Exists with the name.
    match nl.add_bridge("weave", None) {
        Err(Error::Exists(what)) => assert!(what.contains("weave"), "{what}"),
        other => panic!("expected Exists, got {other:?}"),
    }

    // A non-bridge link of that name is refused, naming its kind.
    nl.add_veth("notabridge", "notabridge-p", None, None)
        .unwrap();
    let cfg3 = BridgeConfig {
        name: "notabridge".into(),
        mtu: 1376,
        mac: None,
    };
    match ensure_bridge(&mut nl, &cfg3) {
        Err(e @ Error::WrongKind { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("veth") && msg.contains("notabridge"), "{msg}");
        }
        other => panic!("expected WrongKind, got {other:?}"),
    }
    assert_eq!(link(&mut nl, "notabridge").kind.as_deref(), Some("veth"));
}

#[test]
fn empty_bridge_mtu_can_be_set_directly() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    let br = nl.add_bridge("br0", None).unwrap();
    assert_eq!(br.mtu, 1500);
    assert!(!br.up);
    for mtu in [1376, 9000, 1280] {
        nl.set_mtu(br.index, mtu).unwrap();
        assert_eq!(link(&mut nl, "br0").mtu, mtu);
    }
    let br2 = nl.add_bridge("br1", Some(8950)).unwrap();
    assert_eq!(br2.mtu, 8950);
}

#[test]
fn veth_peer_created_directly_in_other_netns() {
    private_netns();
    let ns = named_ns();
    let ns_path = ns.ns().path().to_path_buf();
    assert!(ns_path.exists());
    let mut nl = Netlink::open().unwrap();
    nl.add_veth("vethwl0", "eth0", Some(1376), Some(ns.ns().fd()))
        .unwrap();
    let host = link(&mut nl, "vethwl0");
    assert_eq!(host.kind.as_deref(), Some("veth"));
    assert_eq!(host.mtu, 1376);
    assert!(nl.link_by_name("eth0").unwrap().is_none());

    let peer = ns
        .ns()
        .run(|| Netlink::open()?.link_by_name("eth0"))
        .unwrap()
        .expect("peer in target netns");
    assert_eq!(peer.kind.as_deref(), Some("veth"));
    assert_eq!(peer.mtu, 1376);
    assert!(peer.mac.is_some());

    // Same host name again: Exists. Peer name taken in the target netns: Exists too.
    assert!(matches!(
        nl.add_veth("vethwl0", "eth1", None, Some(ns.ns().fd())),
        Err(Error::Exists(_))
    ));
    assert!(matches!(
        nl.add_veth("vethwl1", "eth0", None, Some(ns.ns().fd())),
        Err(Error::Exists(_))
    ));
    assert!(nl.link_by_name("vethwl1").unwrap().is_none());

    // Deleting the host end removes the peer in the other netns.
    nl.delete_link(host.index).unwrap();
    assert!(ns
        .ns()
        .run(|| Netlink::open()?.link_by_name("eth0"))
        .unwrap()
        .is_none());

    drop(ns);
    assert!(!ns_path.exists(), "NamedNetNs left {ns_path:?} behind");
}

#[test]
fn master_hairpin_mtu_rename_mac_up_down_delete() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    let br = nl.add_bridge("br0", Some(1376)).unwrap();
    nl.add_veth("v0", "v0p", Some(1376), None).unwrap();
    let v0 = link(&mut nl, "v0");
    assert_eq!(v0.master, None);

    // Hairpin only exists on bridge ports.
    assert!(matches!(
        nl.hairpin(v0.index),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        nl.set_hairpin(v0.index, true),
        Err(Error::InvalidArgument(_))
    ));

    nl.set_master(v0.index, Some(br.index)).unwrap();
    assert_eq!(link(&mut nl, "v0").master, Some(br.index));
    assert!(!nl.hairpin(v0.index).unwrap());
    nl.set_hairpin(v0.index, true).unwrap();
    assert!(nl.hairpin(v0.index).unwrap());
    nl.set_hairpin(v0.index, false).unwrap();
    assert!(!nl.hairpin(v0.index).unwrap());
    nl.set_hairpin(v0.index, true).unwrap();

    nl.set_mtu(v0.index, 1300).unwrap();
    assert_eq!(link(&mut nl, "v0").mtu, 1300);

    let mac: MacAddr = [0x02, 0, 0, 0xaa, 0xbb, 0xcc];
    nl.set_mac(v0.index, mac).unwrap();
    assert_eq!(link(&mut nl, "v0").mac, Some(mac));

    nl.set_name(v0.index, "vethwepl42").unwrap();
    assert!(nl.link_by_name("v0").unwrap().is_none());
    let renamed = link(&mut nl, "vethwepl42");
    assert_eq!(renamed.index, v0.index);
    assert_eq!(renamed.master, Some(br.index));
    assert!(matches!(
        nl.set_name(v0.index, "v0p"),
        Err(Error::Exists(_))
    ));

    nl.set_up(v0.index).unwrap();
    assert!(nl.link_by_index(v0.index).unwrap().unwrap().up);
    nl.set_down(v0.index).unwrap();
    assert!(!nl.link_by_index(v0.index).unwrap().unwrap().up);

    nl.set_master(v0.index, None).unwrap();
    assert_eq!(link(&mut nl, "vethwepl42").master, None);

    let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
    for n in ["lo", "br0", "vethwepl42", "v0p"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }

    nl.delete_link(v0.index).unwrap();
    assert!(nl.link_by_index(v0.index).unwrap().is_none());
    assert!(nl.link_by_name("v0p").unwrap().is_none());
    nl.delete_link(v0.index).unwrap(); // already gone -> Ok
    assert!(matches!(nl.set_up(v0.index), Err(Error::NotFound(_))));
    assert!(matches!(nl.hairpin(v0.index), Err(Error::NotFound(_))));
}

#[test]
fn lookups_and_argument_errors() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    assert!(nl.link_by_name("nosuchlink").unwrap().is_none());
    assert!(nl.link_by_index(987_654).unwrap().is_none());
    let lo = link(&mut nl, "lo");
    assert_eq!(nl.link_by_index(lo.index).unwrap().unwrap(), lo);
    for bad in ["", "sixteen-chars-xx", "a/b", "has space"] {
        assert!(matches!(
            nl.link_by_name(bad),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            nl.add_bridge(bad, None),
            Err(Error::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        nl.link_by_index(0),
        Err(Error::InvalidArgument(_))
    ));
    // A kernel-side refusal carries errno and a readable message.
    let br = nl.add_bridge("br0", None).unwrap();
    let err = nl.set_mtu(br.index, 10).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    assert!(err.to_string().contains("MTU"), "{err}");
}

#[test]
fn addresses_and_routes() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    nl.add_veth("r0", "r0p", None, None).unwrap();
    let r0 = link(&mut nl, "r0");
    let r0p = link(&mut nl, "r0p");
    nl.set_up(r0.index).unwrap();
    nl.set_up(r0p.index).unwrap();

    let a: ipnet::Ipv4Net = "10.32.0.1/12".parse().unwrap();
    assert!(nl.addresses(r0.index).unwrap().is_empty());
    nl.add_address(r0.index, a).unwrap();
    assert_eq!(nl.addresses(r0.index).unwrap(), vec![a]);
    assert!(matches!(nl.add_address(r0.index, a), Err(Error::Exists(_))));
    let b: ipnet::Ipv4Net = "192.168.77.5/32".parse().unwrap();
    nl.add_address(r0.index, b).unwrap();
    let mut addrs = nl.addresses(r0.index).unwrap();
    addrs.sort();
    assert_eq!(addrs, vec![a, b]);
    assert!(nl.addresses(r0p.index).unwrap().is_empty());

    // The kernel's connected route for the /12.
    let connected = Route {
        dst: "10.32.0.0/12".parse().unwrap(),
        gateway: None,
        oif: Some(r0.index),
        scope_link: true,
    };
    assert!(
        nl.routes().unwrap().contains(&connected),
        "{:?}",
        nl.routes().unwrap()
    );

    let via = Route {
        dst: "10.40.0.0/16".parse().unwrap(),
        gateway: Some(Ipv4Addr::new(10, 32, 0, 2)),
        oif: Some(r0.index),
        scope_link: false,
    };
    nl.add_route(&via).unwrap();
    assert!(nl.routes().unwrap().contains(&via));
    assert!(matches!(nl.add_route(&via), Err(Error::Exists(_))));

    // Default route via a gateway, without naming the interface.
    let default = Route {
        dst: "0.0.0.0/0".parse().unwrap(),
        gateway: Some(Ipv4Addr::new(10, 32, 0, 254)),
        oif: None,
        scope_link: false,
    };
    nl.add_route(&default).unwrap();
    let listed = nl
        .routes()
        .unwrap()
        .into_iter()
        .find(|r| r.dst.prefix_len() == 0)
        .expect("default route listed");
    assert_eq!(listed.gateway, default.gateway);
    assert_eq!(listed.oif, Some(r0.index));
    assert!(!listed.scope_link);

    // A device route in link scope.
    let dev = Route {
        dst: "172.30.1.0/24".parse().unwrap(),
        gateway: None,
        oif: Some(r0.index),
        scope_link: true,
    };
    nl.add_route(&dev).unwrap();
    assert!(nl.routes().unwrap().contains(&dev));

    // An unreachable gateway is refused with a hint.
    let unreachable = Route {
        dst: "10.50.0.0/16".parse().unwrap(),
        gateway: Some(Ipv4Addr::new(203, 0, 113, 9)),
        oif: None,
        scope_link: false,
    };
    let err = nl.add_route(&unreachable).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");

    for r in [&via, &default, &dev] {
        nl.del_route(r).unwrap();
        assert!(!nl.routes().unwrap().contains(r));
        assert!(matches!(nl.del_route(r), Err(Error::NotFound(_))));
    }
    assert!(nl.routes().unwrap().iter().all(|r| r.dst.prefix_len() != 0));

    nl.del_address(r0.index, a).unwrap();
    assert_eq!(nl.addresses(r0.index).unwrap(), vec![b]);
    assert!(matches!(
        nl.del_address(r0.index, a),
        Err(Error::NotFound(_))
    ));
    assert!(!nl.routes().unwrap().contains(&connected));
    assert!(matches!(
        nl.add_address(999_999, a),
        Err(Error::NotFound(_))
    ));
}

/// An AF_PACKET socket receiving ARP frames on one interface, with a receive
/// timeout so that a missing frame fails the test instead of hanging it.
fn arp_capture(ifindex: u32) -> io::Result<OwnedFd> {
    const ETH_P_ARP: u16 = 0x0806;
    // SAFETY: plain socket/bind/setsockopt calls with properly sized arguments.
    unsafe {
        let raw = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        );
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 20,
            tv_usec: 0,
        };
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

#[test]
fn gratuitous_arp_is_sent() {
    private_netns();
    let ns = named_ns();
    let mut nl = Netlink::open().unwrap();
    nl.add_veth("garp0", "garp1", None, Some(ns.ns().fd()))
        .unwrap();
    let local = link(&mut nl, "garp0");
    let capture = ns
        .ns()
        .run(|| {
            let mut nl = Netlink::open()?;
            let peer = nl
                .link_by_name("garp1")?
                .ok_or_else(|| Error::NotFound("garp1".into()))?;
            nl.set_up(peer.index)?;
            arp_capture(peer.index).map_err(|e| Error::InvalidArgument(format!("capture: {e}")))
        })
        .unwrap();
    nl.set_up(local.index).unwrap();

    let mac = local.mac.unwrap();
    let ip = Ipv4Addr::new(10, 32, 0, 7);
    arp::send_gratuitous_arp(local.index, mac, ip).unwrap();

    let mut seen_request = false;
    let mut seen_reply = false;
    for _ in 0..50 {
        let mut buf = [0u8; 256];
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                capture.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        assert!(
            n >= 0,
            "no gratuitous ARP captured on the peer: {}",
            io::Error::last_os_error()
        );
        let f = &buf[..n as usize];
        if f.len() < 42 || f[12..14] != [0x08, 0x06] {
            continue;
        }
        assert_eq!(&f[0..6], &[0xff; 6], "not broadcast");
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[14..20], &[0, 1, 8, 0, 6, 4]);
        assert_eq!(&f[22..28], &mac, "sender MAC");
        assert_eq!(&f[28..32], &ip.octets(), "sender IP");
        assert_eq!(&f[38..42], &ip.octets(), "target IP");
        match u16::from_be_bytes([f[20], f[21]]) {
            1 => seen_request = true,
            2 => seen_reply = true,
            op => panic!("unexpected ARP op {op}"),
        }
        if seen_request && seen_reply {
            break;
        }
    }
    assert!(seen_request && seen_reply);

    // Sending on a link that is down fails with an errno, not silently.
    nl.set_down(local.index).unwrap();
    assert!(arp::send_gratuitous_arp(local.index, mac, ip).is_err());
    assert!(matches!(
        arp::send_gratuitous_arp(999_999, mac, ip),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn sysctl_acts_in_the_calling_threads_netns() {
    private_netns();
    let ns = named_ns();
    sysctl::set("net.ipv4.ip_forward", "1").unwrap();
    ns.ns()
        .run(|| sysctl::set("net/ipv4/ip_forward", "0"))
        .unwrap();
    assert_eq!(sysctl::get("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(
        ns.ns().run(|| sysctl::get("net.ipv4.ip_forward")).unwrap(),
        "0"
    );

    // Per-interface keys exist only where the interface is.
    let mut nl = Netlink::open().unwrap();
    nl.add_veth("sx0", "sx0p", None, Some(ns.ns().fd()))
        .unwrap();
    sysctl::tune_arp("sx0").unwrap();
    sysctl::disable_accept_ra("sx0").unwrap();
    assert_eq!(
        sysctl::get("net/ipv4/neigh/sx0/base_reachable_time").unwrap(),
        "5"
    );
    assert_eq!(sysctl::get("net/ipv6/conf/sx0/accept_ra").unwrap(), "0");
    assert!(matches!(sysctl::tune_arp("sx0p"), Err(Error::NotFound(_))));
    ns.ns().run(|| sysctl::tune_arp("sx0p")).unwrap();
    assert_eq!(
        ns.ns()
            .run(|| sysctl::get("net/ipv4/neigh/sx0p/ucast_solicit"))
            .unwrap(),
        "1"
    );
    assert!(matches!(
        sysctl::get("net/ipv4/../../kernel/hostname"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        sysctl::get("net.ipv4.no_such_key"),
        Err(Error::NotFound(_))
    ));
    assert!(sysctl::set("net.ipv4.ip_forward", "not-a-number").is_err());
}

#[test]
fn named_netns_lifecycle_and_run() {
    private_netns();
    let before = NetNs::current().unwrap();
    let name = unique_ns_name();
    let path = Path::new("/run/netns").join(&name);
    {
        let ns = NamedNetNs::create(&name).unwrap();
        assert_eq!(ns.name(), name);
        assert_eq!(ns.ns().path(), path);
        assert!(path.exists());
        let reopened = NetNs::open(&path).unwrap();
        assert!(reopened.is_same(ns.ns()).unwrap());
        assert!(!before.is_same(ns.ns()).unwrap());
        assert!(matches!(NamedNetNs::create(&name), Err(Error::Exists(_))));

        // run: executes inside, leaves the caller where it was.
        let inside = ns.ns().run(NetNs::current).unwrap();
        assert!(inside.is_same(ns.ns()).unwrap());
        assert!(NetNs::current().unwrap().is_same(&before).unwrap());
        // Only lo in a fresh netns.
        let names: Vec<String> = ns
            .ns()
            .run(|| Netlink::open()?.links())
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, vec!["lo".to_string()]);

        // A panic inside run becomes an error.
        let r: Result<(), Error> = ns.ns().run(|| panic!("boom"));
        match r {
            Err(Error::Thread(msg)) => assert!(msg.contains("boom"), "{msg}"),
            other => panic!("expected Thread error, got {other:?}"),
        }

        // set_netns moves a link in; bridges are netns-local and refused with
        // the kernel's own explanation.
        let mut nl = Netlink::open().unwrap();
        nl.add_veth("mv0", "mv0p", None, None).unwrap();
        let mv0 = link(&mut nl, "mv0");
        nl.set_netns(mv0.index, ns.ns().fd()).unwrap();
        assert!(nl.link_by_name("mv0").unwrap().is_none());
        let moved = ns
            .ns()
            .run(|| Netlink::open()?.link_by_name("mv0"))
            .unwrap();
        assert_eq!(moved.unwrap().kind.as_deref(), Some("veth"));
        let br = nl.add_bridge("br0", None).unwrap();
        let err = nl.set_netns(br.index, ns.ns().fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        assert!(err.to_string().contains("kernel: "), "{err}");

        // enter: on a thread of our own.
        let ns_ref = ns.ns();
        std::thread::scope(|s| {
            s.spawn(|| {
                ns_ref.enter().unwrap();
                assert!(NetNs::current().unwrap().is_same(ns_ref).unwrap());
            })
            .join()
            .unwrap();
        });
        assert!(NetNs::current().unwrap().is_same(&before).unwrap());
    }
    assert!(!path.exists(), "NamedNetNs did not remove {path:?}");
    NetNs::remove_named(&name).unwrap(); // absent -> Ok
    assert!(matches!(NetNs::open(&path), Err(Error::NotFound(_))));
    for bad in ["", "..", "a/b"] {
        assert!(matches!(
            NetNs::create_named(bad),
            Err(Error::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        NetNs::open("/proc/self/ns/mnt"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        NetNs::open("/proc/self/status"),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn ensure_bridge_refuses_a_socket_from_another_netns() {
    private_netns();
    let ns = named_ns();
    let mut foreign = ns.ns().run(Netlink::open).unwrap();
    let cfg = BridgeConfig {
        name: "weave".into(),
        mtu: 1376,
        mac: None,
    };
    assert!(matches!(
        ensure_bridge(&mut foreign, &cfg),
        Err(Error::InvalidArgument(_))
    ));
    // The same socket works from a thread inside that netns.
    let br = ns.ns().run(|| ensure_bridge(&mut foreign, &cfg)).unwrap();
    assert!(br.up);
}

#[test]
fn dumps_spanning_many_datagrams_are_complete() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    for i in 0..100 {
        nl.add_veth(&format!("md{i}"), &format!("md{i}p"), None, None)
            .unwrap();
    }
    let links = nl.links().unwrap();
    assert_eq!(links.len(), 201, "lo + 200 veth ends");
    let md0 = link(&mut nl, "md0");
    nl.set_up(md0.index).unwrap();
    let mut want = Vec::new();
    for i in 0..300u32 {
        let a: ipnet::Ipv4Net = format!("10.{}.{}.1/24", 100 + i / 256, i % 256)
            .parse()
            .unwrap();
        nl.add_address(md0.index, a).unwrap();
        want.push(a);
    }
    let mut got = nl.addresses(md0.index).unwrap();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // One connected route per /24.
    let routes = nl.routes().unwrap();
    assert_eq!(
        routes
            .iter()
            .filter(|r| r.oif == Some(md0.index) && r.scope_link)
            .count(),
        300
    );
}

#[test]
fn ensure_bridge_pins_its_mtu_against_ports() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    let cfg = BridgeConfig {
        name: "weave".into(),
        mtu: 1376,
        mac: None,
    };
    let br = ensure_bridge(&mut nl, &cfg).unwrap();
    // A port with a bigger MTU joins and leaves: an unpinned bridge would follow it, then fall
    // back to 1500.
    nl.add_veth("vpin0", "vpin1", Some(9000), None).unwrap();
    let port = link(&mut nl, "vpin0");
    nl.set_master(port.index, Some(br.index)).unwrap();
    assert_eq!(link(&mut nl, "weave").mtu, 1376);
    nl.delete_link(port.index).unwrap();
    assert_eq!(link(&mut nl, "weave").mtu, 1376);
    // Adopting again keeps it pinned.
    ensure_bridge(&mut nl, &cfg).unwrap();
    nl.add_veth("vpin2", "vpin3", Some(1500), None).unwrap();
    let port = link(&mut nl, "vpin2");
    nl.set_master(port.index, Some(br.index)).unwrap();
    nl.delete_link(port.index).unwrap();
    assert_eq!(link(&mut nl, "weave").mtu, 1376);
}

#[test]
fn bridge_port_forwards_once_both_veth_ends_are_up() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    let br = nl.add_bridge("br0", None).unwrap();
    nl.set_up(br.index).unwrap();
    nl.add_veth("vfw0", "vfw1", None, None).unwrap();
    let port = link(&mut nl, "vfw0");
    assert!(
        nl.bridge_port_forwarding(port.index).is_err(),
        "not a port yet"
    );
    nl.set_master(port.index, Some(br.index)).unwrap();
    nl.set_up(port.index).unwrap();
    assert!(
        !nl.bridge_port_forwarding(port.index).unwrap(),
        "no carrier: disabled"
    );
    let peer = link(&mut nl, "vfw1");
    nl.set_up(peer.index).unwrap();
    // The kernel processes the carrier change asynchronously; bounded wait for it.
    let forwarding = (0..2000).any(|_| {
        let f = nl.bridge_port_forwarding(port.index).unwrap();
        if !f {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        f
    });
    assert!(forwarding, "the port never reached the forwarding state");
}
