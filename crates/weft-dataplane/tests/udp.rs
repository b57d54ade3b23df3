//! The sleeve UDP socket against the kernel, inside private network namespaces.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use weft_dataplane::netlink::Netlink;
use weft_dataplane::udp::{path_mtu, RecvBatch, Transmit, UdpConfig, UdpSocket};

fn lo_up() {
    let mut nl = Netlink::open().unwrap();
    let lo = link(&mut nl, "lo");
    nl.set_up(lo.index).unwrap();
}

fn sock(addr: &str, gro: bool) -> UdpSocket {
    let mut cfg = UdpConfig::new(addr.parse().unwrap());
    cfg.gro = gro;
    UdpSocket::bind(&cfg).unwrap()
}

fn wait_readable(s: &UdpSocket) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 5000) > 0 }
}

/// Receives until `n` datagrams arrived (or nothing comes for 5 s); returns them split.
fn recv_n(s: &UdpSocket, batch: &mut RecvBatch, n: usize) -> Vec<(SocketAddr, Vec<u8>, usize)> {
    let mut out = Vec::new();
    while out.len() < n {
        match s.recv_batch(batch) {
            Ok(_) => {
                for (meta, _) in batch.iter() {
                    assert!(!meta.truncated);
                }
                for (m, data) in batch.iter() {
                    for d in data.chunks(m.stride.max(1)) {
                        out.push((m.src, d.to_vec(), m.stride));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !wait_readable(s) {
                    break;
                }
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    out
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

#[test]
fn batches_round_trip_to_several_destinations() {
    private_netns();
    lo_up();
    let tx = sock("127.0.0.1:0", false);
    let a = sock("127.0.0.1:0", false);
    let b = sock("127.0.0.2:0", false);
    let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let msgs: Vec<Vec<u8>> = (0..150).map(|i| payload(i, 1 + i * 7)).collect();
    let txs: Vec<Transmit> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| Transmit {
            dst: if i % 2 == 0 { aa } else { ba },
            contents: m,
            segment_size: None,
        })
        .collect();
    tx.send_batch(&txs).unwrap();
    let mut batch = RecvBatch::new(32, 2048);
    let got_a = recv_n(&a, &mut batch, 75);
    let got_b = recv_n(&b, &mut batch, 75);
    let me = tx.local_addr().unwrap();
    assert_eq!(got_a.len(), 75);
    assert_eq!(got_b.len(), 75);
    for (k, (src, data, _)) in got_a.iter().enumerate() {
        assert_eq!(*src, me);
        assert_eq!(data, &msgs[2 * k]);
    }
    for (k, (_, data, _)) in got_b.iter().enumerate() {
        assert_eq!(data, &msgs[2 * k + 1]);
    }
    // Nothing left: WouldBlock.
    assert_eq!(
        a.recv_batch(&mut batch).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    // Singles work too.
    tx.send_to(b"one", aa).unwrap();
    assert!(wait_readable(&a));
    let mut buf = [0u8; 16];
    let (n, src) = a.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], src), (&b"one"[..], me));
}

#[test]
fn gso_runs_arrive_as_datagrams_or_coalesced_with_gro() {
    private_netns();
    lo_up();
    let tx = sock("127.0.0.1:0", false);
    let plain = sock("127.0.0.1:0", false);
    let gro = sock("127.0.0.1:0", true);
    assert!(gro.gro_enabled());
    // 150 segments of 1200 bytes and a 500-byte tail: three GSO messages.
    let data = payload(7, 150 * 1200 + 500);
    let run = |dst| Transmit {
        dst,
        contents: &data,
        segment_size: Some(1200),
    };
    tx.send_batch(&[
        run(plain.local_addr().unwrap()),
        run(gro.local_addr().unwrap()),
    ])
    .unwrap();
    assert!(tx.gso_enabled(), "loopback should accept UDP GSO");

    let mut batch = RecvBatch::new(16, 65535);
    let got = recv_n(&plain, &mut batch, 151);
    assert_eq!(got.len(), 151);
    assert!(got.iter().all(|(_, d, stride)| d.len() == *stride));
    let joined: Vec<u8> = got.iter().flat_map(|(_, d, _)| d.clone()).collect();
    assert_eq!(joined, data);

    let got = recv_n(&gro, &mut batch, 151);
    assert_eq!(got.len(), 151);
    assert!(got[..150].iter().all(|(_, d, _)| d.len() == 1200));
    assert_eq!(got[150].1.len(), 500);
    assert!(
        got.iter().any(|(_, _, stride)| *stride == 1200),
        "GRO socket saw no coalesced buffers"
    );
    let joined: Vec<u8> = got.iter().flat_map(|(_, d, _)| d.clone()).collect();
    assert_eq!(joined, data);
}

/// A veth pair to a named netns; returns (netns guard, local index, peer address).
fn veth_to_peer(mtu: u32) -> (weft_dataplane::netns::NamedNetNs, u32, Ipv4Addr) {
    let peer = named_ns("udp-peer");
    let mut nl = Netlink::open().unwrap();
    nl.add_veth("v0", "v1", Some(mtu), Some(peer.ns().fd()))
        .unwrap();
    let v0 = link(&mut nl, "v0");
    nl.add_address(v0.index, "192.168.50.1/24".parse().unwrap())
        .unwrap();
    nl.set_up(v0.index).unwrap();
    in_ns(peer.ns(), |nl| {
        let v1 = nl.link_by_name("v1")?.unwrap();
        nl.add_address(v1.index, "192.168.50.2/24".parse().unwrap())?;
        nl.set_up(v1.index)
    });
    (peer, v0.index, Ipv4Addr::new(192, 168, 50, 2))
}

#[test]
fn gso_falls_back_to_plain_sends_when_the_kernel_refuses() {
    private_netns();
    lo_up();
    let (peer, _, peer_ip) = veth_to_peer(1500);
    let rx = peer
        .ns()
        .run(|| Ok(sock(&format!("{peer_ip}:0"), false)))
        .unwrap();
    let tx = sock("192.168.50.1:0", false);
    // The kernel refuses UDP GSO (EINVAL) on a socket without UDP checksums; kernels
    // before 6.11 also did (EIO) on devices without TX checksum offload.
    let one: i32 = 1;
    // SAFETY: valid pointer to an int.
    let rc = unsafe {
        libc::setsockopt(
            tx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            &one as *const i32 as *const libc::c_void,
            4,
        )
    };
    assert_eq!(rc, 0);
    let data = payload(3, 40 * 1000);
    tx.send_batch(&[Transmit {
        dst: rx.local_addr().unwrap(),
        contents: &data,
        segment_size: Some(1000),
    }])
    .unwrap();
    assert!(!tx.gso_enabled(), "GSO should have been switched off");
    let mut batch = RecvBatch::new(64, 2048);
    let got = recv_n(&rx, &mut batch, 40);
    assert_eq!(got.len(), 40);
    let joined: Vec<u8> = got.iter().flat_map(|(_, d, _)| d.clone()).collect();
    assert_eq!(joined, data);
}

#[test]
fn df_socket_gets_emsgsize_above_the_path_mtu() {
    private_netns();
    lo_up();
    let (peer, _, peer_ip) = veth_to_peer(1280);
    assert_eq!(path_mtu(IpAddr::V4(peer_ip)).unwrap(), 1280);
    assert!(path_mtu(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap() > 60_000);
    assert!(
        path_mtu("203.0.113.9".parse().unwrap()).is_err(),
        "no route there"
    );

    let rx = peer
        .ns()
        .run(|| Ok(sock(&format!("{peer_ip}:0"), false)))
        .unwrap();
    let dst = rx.local_addr().unwrap();
    let mut cfg = UdpConfig::new("192.168.50.1:0".parse().unwrap());
    cfg.df = true;
    let df = UdpSocket::bind(&cfg).unwrap();
    let small = vec![1u8; 1280 - 28];
    let big = vec![2u8; 1280 - 27];
    let err = df
        .send_batch(&[
            Transmit {
                dst,
                contents: &small,
                segment_size: None,
            },
            Transmit {
                dst,
                contents: &big,
                segment_size: None,
            },
        ])
        .unwrap_err();
    assert_eq!(err.sent, 1, "{err}");
    assert_eq!(err.error.raw_os_error(), Some(libc::EMSGSIZE), "{err}");

    // The same datagram leaves a non-DF socket (fragmented) and arrives whole.
    let nodf = sock("192.168.50.1:0", false);
    nodf.send_batch(&[Transmit {
        dst,
        contents: &big,
        segment_size: None,
    }])
    .unwrap();
    let mut batch = RecvBatch::new(4, 4096);
    let got = recv_n(&rx, &mut batch, 2);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, small);
    assert_eq!(got[1].1, big);
    // A GSO run whose segments exceed the path MTU: EMSGSIZE, and GSO stays on.
    let run = vec![3u8; 4 * big.len()];
    let err = df
        .send_batch(&[Transmit {
            dst,
            contents: &run,
            segment_size: Some(big.len()),
        }])
        .unwrap_err();
    assert_eq!(
        (err.sent, err.error.raw_os_error()),
        (0, Some(libc::EMSGSIZE))
    );
    assert!(df.gso_enabled());
    // Switching DF on makes the non-DF socket refuse it too.
    nodf.set_df(true).unwrap();
    assert_eq!(
        nodf.send_to(&big, dst).unwrap_err().raw_os_error(),
        Some(libc::EMSGSIZE)
    );
}

#[test]
fn buffers_and_mark() {
    private_netns();
    let s = sock("127.0.0.1:0", false);
    let (r, w) = s.set_buffers(16 << 20, 8 << 20).unwrap();
    // Root may exceed rmem_max; the kernel reports twice the value set.
    assert_eq!((r, w), (32 << 20, 16 << 20));
    s.set_mark(0x7765).unwrap();
    let mut v: u32 = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: valid pointers.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            &mut v as *mut u32 as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!((rc, v), (0, 0x7765));
    // Binding a taken port is a clear error.
    let taken = s.local_addr().unwrap();
    let err = UdpSocket::bind(&UdpConfig::new(taken)).unwrap_err();
    assert!(err.to_string().contains("bind"), "{err}");
}
