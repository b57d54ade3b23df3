//! Throughput of a sleeve-shaped userspace relay built from this crate's blocks, against
//! the underlay it runs on. Run as root (it works in namespaces it creates):
//!
//! ```text
//! cargo run --release -p weft-dataplane --example sleeve_bench [-- SECONDS]
//! ```
//!
//! Two "hosts" (network namespaces) joined by a veth underlay (MTU 1500). Each has a bridge
//! with a pod (MTU 1400) and a TAP; per direction one thread reads the TAP, segments with
//! `gso_split` and sends the frames as UDP datagrams (one UDP GSO send per TAP read), and one
//! thread receives batches (`recvmmsg`, GRO) and writes the frames to the other TAP, merged
//! back into TCP GSO frames by `TcpCoalescer` in the first variant. No
//! sleeve framing or crypto: this measures the I/O path only. iperf3 between the pods is
//! compared with iperf3 between the hosts, for the offloaded path and for a plain
//! one-frame-per-syscall relay.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use weft_dataplane::gso::{gso_split, Segments, TcpCoalescer, VirtioNetHdr, VNET_HDR_LEN};
use weft_dataplane::netlink::Netlink;
use weft_dataplane::netns::{NamedNetNs, NetNs};
use weft_dataplane::tap::{Tap, TapConfig};
use weft_dataplane::udp::{RecvBatch, Transmit, UdpConfig, UdpSocket};
use weft_dataplane::Result;

const PORT: u16 = 6783;

struct Host {
    ns: NamedNetNs,
    pod: NamedNetNs,
    underlay: Ipv4Addr,
    pod_ip: Ipv4Addr,
}

fn poll_in(fd: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 100) };
}

fn host(i: u8, tag: &str) -> Result<Host> {
    let pid = std::process::id();
    let ns = NamedNetNs::create(&format!("weft-bench-{tag}h{i}-{pid}"))?;
    let pod = NamedNetNs::create(&format!("weft-bench-{tag}p{i}-{pid}"))?;
    Ok(Host {
        ns,
        pod,
        underlay: Ipv4Addr::new(10, 99, 0, i),
        pod_ip: Ipv4Addr::new(10, 40, 0, i),
    })
}

fn setup(h: &Host, tap: &TapConfig) -> Result<Tap> {
    let pod_ip = h.pod_ip;
    let pod_fd = h.pod.ns();
    h.ns.ns().run(|| {
        let mut nl = Netlink::open()?;
        let lo = nl.link_by_name("lo")?.expect("lo");
        nl.set_up(lo.index)?;
        let br = nl.add_bridge("weave", Some(1400))?;
        nl.set_up(br.index)?;
        let t = Tap::create(
            &mut nl,
            &TapConfig {
                bridge: Some(br.index),
                mtu: Some(1400),
                ..tap.clone()
            },
        )?;
        nl.add_veth("vpod", "eth0", Some(1400), Some(pod_fd.fd()))?;
        let v = nl.link_by_name("vpod")?.expect("vpod");
        nl.set_master(v.index, Some(br.index))?;
        nl.set_up(v.index)?;
        pod_fd.run(|| {
            let mut nl = Netlink::open()?;
            let lo = nl.link_by_name("lo")?.expect("lo");
            nl.set_up(lo.index)?;
            let e = nl.link_by_name("eth0")?.expect("eth0");
            nl.add_address(e.index, ipnet::Ipv4Net::new(pod_ip, 24).unwrap())?;
            nl.set_up(e.index)
        })?;
        Ok(t)
    })
}

fn underlay(a: &Host, b: &Host) -> Result<()> {
    let bfd = b.ns.ns();
    let (ua, ub) = (a.underlay, b.underlay);
    a.ns.ns().run(|| {
        let mut nl = Netlink::open()?;
        nl.add_veth("ul", "ul", Some(1500), Some(bfd.fd()))?;
        let l = nl.link_by_name("ul")?.expect("ul");
        nl.add_address(l.index, ipnet::Ipv4Net::new(ua, 24).unwrap())?;
        nl.set_up(l.index)
    })?;
    bfd.run(|| {
        let mut nl = Netlink::open()?;
        let l = nl.link_by_name("ul")?.expect("ul");
        nl.add_address(l.index, ipnet::Ipv4Net::new(ub, 24).unwrap())?;
        nl.set_up(l.index)
    })
}

#[derive(Default)]
struct Counters {
    tap_reads: AtomicU64,
    frames: AtomicU64,
    udp_sends: AtomicU64,
}

/// TAP -> UDP.
fn egress(tap: &Tap, sock: &UdpSocket, dst: SocketAddr, stop: &AtomicBool, c: &Counters) {
    let mut buf = vec![0u8; VNET_HDR_LEN + 65535];
    let mut segs = Segments::new();
    while !stop.load(Ordering::Relaxed) {
        let (hdr, len) = match tap.read_frame(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                poll_in(tap.as_raw_fd());
                continue;
            }
            Err(e) => panic!("tap read: {e}"),
        };
        c.tap_reads.fetch_add(1, Ordering::Relaxed);
        segs.clear();
        let frame = &buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
        if gso_split(&hdr, frame, &mut segs).is_err() {
            segs.clear();
            segs.push(frame);
        }
        c.frames.fetch_add(segs.len() as u64, Ordering::Relaxed);
        let tx = Transmit {
            dst,
            contents: segs.bytes(),
            segment_size: segs.uniform_stride(),
        };
        loop {
            match sock.send_batch(&[tx]) {
                Ok(()) => break,
                Err(e) if e.error.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("udp send: {e}"),
            }
        }
        c.udp_sends.fetch_add(1, Ordering::Relaxed);
    }
}

/// UDP -> TAP, optionally merging TCP segments into GSO frames before the write.
fn ingress(sock: &UdpSocket, tap: &Tap, coalesce: bool, stop: &AtomicBool) {
    let mut batch = RecvBatch::new(32, 65535);
    let mut co = TcpCoalescer::new();
    // A full TAP queue drops, like a NIC.
    let mut write = |h: &VirtioNetHdr, f: &[u8]| {
        let _ = tap.write_with_hdr(h, f);
        Ok(())
    };
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_batch(&mut batch) {
            Ok(_) => {
                for (_, frame) in batch.datagrams() {
                    if coalesce {
                        let _ = co.push(frame, &mut write);
                    } else {
                        let _ = tap.write_frame(frame);
                    }
                }
                let _ = co.flush(&mut write);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => poll_in(sock.as_raw_fd()),
            Err(e) => panic!("udp recv: {e}"),
        }
    }
}

fn iperf(server_ns: &NetNs, client_ns: &NetNs, ip: Ipv4Addr, secs: u32) -> f64 {
    let mut server = server_ns
        .run(|| {
            Command::new("iperf3")
                .args(["-s", "-1", "-B", &ip.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| weft_dataplane::Error::Thread(format!("iperf3 -s: {e}")))
        })
        .expect("start iperf3 server");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = client_ns
        .run(|| {
            Command::new("iperf3")
                .args(["-c", &ip.to_string(), "-t", &secs.to_string(), "-J"])
                .output()
                .map_err(|e| weft_dataplane::Error::Thread(format!("iperf3 -c: {e}")))
        })
        .expect("run iperf3 client");
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    // "sum_received": { ... "bits_per_second": N ... }
    text.split("\"sum_received\"")
        .nth(1)
        .and_then(|s| s.split("\"bits_per_second\":").nth(1))
        .and_then(|s| {
            s.trim_start()
                .split(|c: char| c != '.' && !c.is_ascii_digit() && c != 'e' && c != '+')
                .next()
        })
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn run(tag: &str, offloads: bool, coalesce: bool, secs: u32) -> Result<(f64, f64, f64)> {
    let a = host(1, tag)?;
    let b = host(2, tag)?;
    let tapcfg = TapConfig {
        offloads,
        ..TapConfig::new("sleeve", None)
    };
    let ta = setup(&a, &tapcfg)?;
    let tb = setup(&b, &tapcfg)?;
    underlay(&a, &b)?;
    let mk = |h: &Host| -> Result<UdpSocket> {
        let mut cfg = UdpConfig::new(SocketAddr::new(IpAddr::V4(h.underlay), PORT));
        cfg.gro = offloads;
        let ip = h.underlay;
        let s = h.ns.ns().run(move || {
            UdpSocket::bind(&UdpConfig {
                bind: SocketAddr::new(IpAddr::V4(ip), PORT),
                ..cfg
            })
        })?;
        s.set_gso(offloads);
        Ok(s)
    };
    let (sa, sb) = (mk(&a)?, mk(&b)?);
    let (da, db) = (
        SocketAddr::new(IpAddr::V4(a.underlay), PORT),
        SocketAddr::new(IpAddr::V4(b.underlay), PORT),
    );
    let stop = AtomicBool::new(false);
    let c = Arc::new(Counters::default());
    let (under, overlay) = std::thread::scope(|s| {
        s.spawn(|| egress(&ta, &sa, db, &stop, &c));
        s.spawn(|| egress(&tb, &sb, da, &stop, &Counters::default()));
        s.spawn(|| ingress(&sa, &ta, coalesce, &stop));
        s.spawn(|| ingress(&sb, &tb, coalesce, &stop));
        let under = iperf(b.ns.ns(), a.ns.ns(), b.underlay, secs);
        let overlay = iperf(b.pod.ns(), a.pod.ns(), b.pod_ip, secs);
        stop.store(true, Ordering::Relaxed);
        (under, overlay)
    });
    let reads = c.tap_reads.load(Ordering::Relaxed).max(1);
    let frames_per_read = c.frames.load(Ordering::Relaxed) as f64 / reads as f64;
    Ok((under, overlay, frames_per_read))
}

fn main() {
    let secs: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (run as root)");
    for (tag, offloads, coalesce, what) in [
        ("co", true, true, "TSO/GSO/GRO + TCP merge:"),
        ("off", true, false, "TSO/GSO/GRO, plain writes:"),
        ("plain", false, false, "one frame per syscall:"),
    ] {
        match run(tag, offloads, coalesce, secs) {
            Ok((under, overlay, fpr)) => println!(
                "{what:<28} underlay {:>6.2} Gbit/s  overlay {:>6.2} Gbit/s = {:>5.1}%  ({fpr:.1} frames per TAP read)",
                under / 1e9,
                overlay / 1e9,
                100.0 * overlay / under.max(1.0)
            ),
            Err(e) => eprintln!("{tag}: {e}"),
        }
    }
}
