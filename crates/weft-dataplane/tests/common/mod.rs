//! Helpers shared by the privileged data-plane tests. Every test first moves its own
//! thread into a private network namespace; named namespaces carry the pid and a
//! counter and are removed by their Drop guards.
#![allow(dead_code)]

use nix::sched::{unshare, CloneFlags};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use weft_dataplane::netlink::{Link, Netlink};
use weft_dataplane::netns::{NamedNetNs, NetNs};
use weft_dataplane::{sysctl, Error, Result};

/// Puts the calling thread into a new, private network namespace.
pub fn private_netns() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "weft-dataplane kernel tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create \
         network namespaces: run them as root"
    );
    unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    quiet_ipv6();
}

/// Turns IPv6 off for links created from now on in the calling thread's netns, so that
/// no router solicitations, DAD or MLD reports show up in packet counters.
pub fn quiet_ipv6() {
    let _ = sysctl::set("net/ipv6/conf/default/disable_ipv6", "1");
    let _ = sysctl::set("net/ipv6/conf/all/disable_ipv6", "1");
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named netns `weft-dpio-<tag>-<pid>-<n>`, removed on Drop, with IPv6 off and lo up.
pub fn named_ns(tag: &str) -> NamedNetNs {
    let name = format!(
        "weft-dpio-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let ns = NamedNetNs::create(&name).expect("create named netns");
    ns.ns()
        .run(|| {
            quiet_ipv6();
            let mut nl = Netlink::open()?;
            let lo = nl.link_by_name("lo")?.expect("lo");
            nl.set_up(lo.index)
        })
        .expect("prepare netns");
    ns
}

pub fn link(nl: &mut Netlink, name: &str) -> Link {
    nl.link_by_name(name)
        .expect("link_by_name")
        .unwrap_or_else(|| panic!("link {name} missing"))
}

/// Runs `f` in `ns` with a fresh netlink socket opened there.
pub fn in_ns<R: Send>(ns: &NetNs, f: impl FnOnce(&mut Netlink) -> Result<R> + Send) -> R {
    ns.run(|| {
        let mut nl = Netlink::open()?;
        f(&mut nl)
    })
    .expect("work inside netns")
}

/// One ICMP echo from inside `ns` (ping's own 2 s reply timeout).
pub fn ping_once(ns: &NetNs, dst: Ipv4Addr) -> bool {
    ns.run(|| {
        Command::new("ping")
            .args(["-n", "-q", "-c", "1", "-W", "2", &dst.to_string()])
            .output()
            .map(|o| o.status.success())
            .map_err(|e| Error::Thread(format!("cannot run ping: {e}")))
    })
    .expect("run ping")
}

/// Pings until one echo is answered, at most `tries` times.
pub fn ping(ns: &NetNs, dst: Ipv4Addr, tries: usize) -> bool {
    (0..tries).any(|_| ping_once(ns, dst))
}

/// Polls `cond` every 20 ms, at most `tries` times; true as soon as it holds.
pub fn eventually(tries: usize, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

/// Creates a veth `host_if` (in the calling thread's netns) whose peer `eth0` lives in
/// `pod`, with `addr` on the pod side and a default route via `gw` if given.
pub fn add_pod(
    nl: &mut Netlink,
    host_if: &str,
    pod: &NetNs,
    addr: ipnet::Ipv4Net,
    gw: Option<Ipv4Addr>,
    master: Option<u32>,
) -> Link {
    nl.add_veth(host_if, "eth0", None, Some(pod.fd()))
        .expect("add pod veth");
    let host = link(nl, host_if);
    if let Some(m) = master {
        nl.set_master(host.index, Some(m))
            .expect("enslave pod veth");
    }
    nl.set_up(host.index).expect("pod veth up");
    in_ns(pod, |nl| {
        let eth0 = nl.link_by_name("eth0")?.expect("eth0 in pod");
        nl.add_address(eth0.index, addr)?;
        nl.set_up(eth0.index)?;
        if let Some(gw) = gw {
            nl.add_route(&weft_dataplane::netlink::Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some(gw),
                oif: None,
                scope_link: false,
            })?;
        }
        Ok(())
    });
    host
}
