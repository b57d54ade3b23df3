//! The TAP device against the kernel: two bridges, each with a pod and a TAP, joined by a
//! userspace relay (read, segment, write) as the sleeve will do. A TCP stream between the
//! pods must arrive intact, the relay must see GSO frames larger than the MTU, and the
//! TAP must take the segments merged again into GSO frames on the write side.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use weft_dataplane::gso::{
    gso_split, verify_checksums, Segments, TcpCoalescer, VirtioNetHdr, VNET_HDR_LEN,
};
use weft_dataplane::netlink::Netlink;
use weft_dataplane::tap::{Tap, TapConfig};
use weft_dataplane::Error;

#[derive(Default)]
struct Stats {
    frames_read: AtomicU64,
    gso_frames: AtomicU64,
    largest: AtomicU64,
    segments: AtomicU64,
    bad_segments: AtomicU64,
    oversized: AtomicU64,
    merged_writes: AtomicU64,
}

/// Relays frames read from `from` to `to`, segmenting GSO frames, until `stop`. With
/// `coalesce`, TCP segments are merged again into GSO frames for the write.
fn relay(from: &Tap, to: &Tap, mtu: usize, coalesce: bool, stop: &AtomicBool, st: &Stats) {
    let mut buf = vec![0u8; VNET_HDR_LEN + 65535];
    let mut segs = Segments::new();
    let mut co = TcpCoalescer::new();
    let mut write = |h: &VirtioNetHdr, f: &[u8]| {
        if h.is_gso() {
            st.merged_writes.fetch_add(1, Ordering::Relaxed);
        }
        to.write_with_hdr(h, f)
    };
    while !stop.load(Ordering::Relaxed) {
        let mut p = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 50) } <= 0 {
            continue;
        }
        loop {
            let (hdr, len) = match from.read_frame(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("TAP read: {e}"),
            };
            let frame = &buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
            st.frames_read.fetch_add(1, Ordering::Relaxed);
            st.largest.fetch_max(len as u64, Ordering::Relaxed);
            if hdr.is_gso() {
                st.gso_frames.fetch_add(1, Ordering::Relaxed);
            }
            segs.clear();
            if gso_split(&hdr, frame, &mut segs).is_err() {
                // Not IP (ARP): forward untouched.
                segs.clear();
                segs.push(frame);
            }
            for seg in segs.iter() {
                st.segments.fetch_add(1, Ordering::Relaxed);
                let is_ip = seg.len() > 14 && seg[12..14] == [0x08, 0x00];
                if is_ip && !verify_checksums(seg) {
                    st.bad_segments.fetch_add(1, Ordering::Relaxed);
                }
                if seg.len() > mtu + 14 {
                    st.oversized.fetch_add(1, Ordering::Relaxed);
                }
                if coalesce {
                    co.push(seg, &mut write).expect("TAP write");
                } else {
                    to.write_frame(seg).expect("TAP write");
                }
            }
            co.flush(&mut write).expect("TAP write");
        }
    }
}

struct Side {
    tap: Tap,
    pod: weft_dataplane::netns::NamedNetNs,
}

fn side(nl: &mut Netlink, n: u8) -> Side {
    let br = nl.add_bridge(&format!("br{n}"), Some(1500)).unwrap();
    nl.set_up(br.index).unwrap();
    let tap = Tap::create(nl, &TapConfig::new(&format!("tap{n}"), Some(br.index))).unwrap();
    let pod = named_ns(&format!("tap-pod{n}"));
    add_pod(
        nl,
        &format!("vpod{n}"),
        pod.ns(),
        format!("10.40.0.{n}/24").parse().unwrap(),
        None,
        Some(br.index),
    );
    Side { tap, pod }
}

#[test]
fn tap_device_settings() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    let br = nl.add_bridge("br0", None).unwrap();
    let mut cfg = TapConfig::new("wtap%d", Some(br.index));
    cfg.multi_queue = true;
    cfg.mtu = Some(1410);
    let tap = Tap::create(&mut nl, &cfg).unwrap();
    assert_eq!(tap.name(), "wtap0");
    let off = tap.offloads();
    assert!(off.csum && off.tso, "{off:?}");
    let l = link(&mut nl, "wtap0");
    assert_eq!(
        (l.index, l.mtu, l.master, l.up),
        (tap.index(), 1410, Some(br.index), true)
    );
    assert!(nl.port_isolated(l.index).unwrap());
    let out = std::process::Command::new("ip")
        .args(["-d", "link", "show", "wtap0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tap") && text.contains("vnet_hdr on") && text.contains("multi_queue"),
        "{text}"
    );
    // A second queue of the same device.
    let q2 = tap.open_queue().unwrap();
    assert_eq!(q2.index(), tap.index());
    // Nothing to read yet: WouldBlock (non-blocking fd).
    let mut buf = vec![0u8; 70_000];
    assert_eq!(
        q2.read(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    let mut lens = Vec::new();
    let mut bufs = vec![Vec::new(); 4];
    assert_eq!(q2.read_batch(&mut bufs, &mut lens).unwrap(), 0);
    // The device goes away with its last queue.
    drop(tap);
    drop(q2);
    assert!(nl.link_by_name("wtap0").unwrap().is_none());
    // Single-queue devices have no second queue; bad names are refused.
    let single = Tap::create(&mut nl, &TapConfig::new("wtap1", None)).unwrap();
    assert!(matches!(
        single.open_queue(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Tap::create(&mut nl, &TapConfig::new("bad/name", None)),
        Err(Error::InvalidArgument(_))
    ));
    // A frame written with a zero header goes out of the device.
    let before = nl.link_stats(single.index()).unwrap();
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    frame.extend_from_slice(&[0u8; 50]);
    single.write_frame(&frame).unwrap();
    let after = nl.link_stats(single.index()).unwrap();
    assert_eq!(
        after.rx_packets,
        before.rx_packets + 1,
        "{before:?} {after:?}"
    );
    let hdr = VirtioNetHdr::default();
    assert_eq!(hdr.to_bytes(), [0u8; VNET_HDR_LEN]);
}

#[test]
fn tcp_stream_through_two_taps_and_a_segmenting_relay() {
    private_netns();
    let mut nl = Netlink::open().unwrap();
    let a = side(&mut nl, 1);
    let b = side(&mut nl, 2);
    assert!(a.tap.offloads().tso);
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::new(Stats::default());
    const TOTAL: usize = 8 << 20;

    std::thread::scope(|s| {
        let (ta, tb) = (&a.tap, &b.tap);
        let (stop1, st1) = (stop.clone(), st.clone());
        s.spawn(move || relay(ta, tb, 1500, true, &stop1, &st1));
        let (stop2, st2) = (stop.clone(), Arc::new(Stats::default()));
        s.spawn(move || relay(tb, ta, 1500, false, &stop2, &st2));

        let listener = b
            .pod
            .ns()
            .run(|| Ok(TcpListener::bind("10.40.0.2:5201").unwrap()))
            .unwrap();
        let server = s.spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            let mut bad = 0usize;
            loop {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                for (i, &x) in buf[..n].iter().enumerate() {
                    if x != ((got + i) % 251) as u8 {
                        bad += 1;
                    }
                }
                got += n;
            }
            (got, bad)
        });
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        a.pod
            .ns()
            .run(|| {
                let dst = SocketAddr::from((Ipv4Addr::new(10, 40, 0, 2), 5201));
                let mut c = TcpStream::connect(dst).unwrap();
                c.write_all(&data).unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
                Ok(())
            })
            .unwrap();
        let (got, bad) = server.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(got, TOTAL);
        assert_eq!(bad, 0, "corrupted bytes arrived");
    });
    let gso = st.gso_frames.load(Ordering::Relaxed);
    let largest = st.largest.load(Ordering::Relaxed);
    assert!(gso > 0, "no GSO frames were read from the TAP");
    assert!(largest > 1514, "largest frame read was {largest} bytes");
    assert_eq!(st.bad_segments.load(Ordering::Relaxed), 0);
    assert_eq!(st.oversized.load(Ordering::Relaxed), 0);
    assert!(st.segments.load(Ordering::Relaxed) > st.frames_read.load(Ordering::Relaxed));
    assert!(
        st.merged_writes.load(Ordering::Relaxed) > 0,
        "no merged GSO frame was written to the TAP"
    );
}
