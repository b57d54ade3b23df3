//! Property tests for virtio-net segmentation: payload preserved, checksums valid, no
//! panics on hostile input.

use proptest::prelude::*;
use weft_dataplane::gso::{
    complete_checksum, gso_split, verify_checksums, Segments, TcpCoalescer, VirtioNetHdr,
    F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
};

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn sum(d: &[u8]) -> u64 {
    d.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// A frame as the kernel would hand it over: headers with a big length, the L4 checksum
/// field seeded with the pseudo-header sum (CHECKSUM_PARTIAL).
struct Built {
    hdr: VirtioNetHdr,
    frame: Vec<u8>,
    hdr_end: usize,
}

#[allow(clippy::too_many_arguments)]
fn build(
    v6: bool,
    tcp: bool,
    vlan: bool,
    payload: &[u8],
    gso: u16,
    flags: u8,
    seq: u32,
    opts: usize,
) -> Built {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    }
    f.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    let ip = f.len();
    let proto = if tcp { 6 } else { 17 };
    let l4_hlen = if tcp { 20 + opts * 4 } else { 8 };
    let l4_len = l4_hlen + payload.len();
    if v6 {
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((20 + l4_len).min(65535) as u16).to_be_bytes());
        f.extend_from_slice(&[
            0x12, 0x34, 0x40, 0, 64, proto, 0, 0, 10, 32, 0, 1, 10, 32, 0, 2,
        ]);
    }
    let l4 = f.len();
    if tcp {
        f.extend_from_slice(&[0x9c, 0x40, 0x13, 0x89]);
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 7]);
        f.push(((5 + opts) as u8) << 4);
        f.push(flags);
        f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        for _ in 0..opts {
            f.extend_from_slice(&[1, 1, 1, 1]);
        }
    } else {
        f.extend_from_slice(&[0x1a, 0x7f, 0x1a, 0x7f]);
        f.extend_from_slice(&((l4_len.min(65535)) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    let hdr_end = f.len();
    f.extend_from_slice(payload);
    let pseudo = if v6 {
        sum(&f[ip + 8..ip + 40]) + u64::from(proto) + l4_len as u64
    } else {
        sum(&f[ip + 12..ip + 20]) + u64::from(proto) + l4_len as u64
    };
    let at = l4 + if tcp { 16 } else { 6 };
    f[at..at + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
    let gso_type = match (tcp, v6) {
        (true, false) => GSO_TCPV4,
        (true, true) => GSO_TCPV6,
        (false, _) => GSO_UDP_L4,
    };
    Built {
        hdr: VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: hdr_end as u16,
            gso_size: gso,
            csum_start: l4 as u16,
            csum_offset: if tcp { 16 } else { 6 },
        },
        frame: f,
        hdr_end,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn split_preserves_payload_and_checksums(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        vlan in any::<bool>(),
        len in 0usize..20_000,
        gso in 100u16..1500,
        flags in prop::sample::select(vec![0x10u8, 0x18, 0x19, 0x98, 0x11]),
        seq in any::<u32>(),
        opts in 0usize..4,
        seed in any::<u8>(),
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let b = build(v6, tcp, vlan, &payload, gso, flags, seq, if tcp { opts } else { 0 });
        let mut out = Segments::new();
        let n = gso_split(&b.hdr, &b.frame, &mut out).unwrap();
        prop_assert_eq!(n, out.len());
        prop_assert_eq!(n, len.div_ceil(gso as usize).max(1));
        let mut joined = Vec::new();
        for (i, seg) in out.iter().enumerate() {
            prop_assert!(verify_checksums(seg), "segment {} fails its checksums", i);
            prop_assert!(seg.len() <= b.hdr_end + gso as usize);
            prop_assert_eq!(&seg[..12], &b.frame[..12]);
            joined.extend_from_slice(&seg[b.hdr_end..]);
            let l4 = b.hdr.csum_start as usize;
            let ip = if vlan { 18 } else { 14 };
            if !v6 {
                let id = u16::from_be_bytes([seg[ip + 4], seg[ip + 5]]);
                prop_assert_eq!(id, 0x1234u16.wrapping_add(i as u16));
            }
            if tcp {
                let s = u32::from_be_bytes([seg[l4 + 4], seg[l4 + 5], seg[l4 + 6], seg[l4 + 7]]);
                prop_assert_eq!(s, seq.wrapping_add((i * gso as usize) as u32));
                let f = seg[l4 + 13];
                let last = i + 1 == n;
                if !last {
                    prop_assert_eq!(f & 0x09, 0, "FIN/PSH before the last segment");
                }
                if last {
                    prop_assert_eq!(f & 0x09, flags & 0x09);
                }
                if i > 0 {
                    prop_assert_eq!(f & 0x80, 0, "CWR after the first segment");
                }
            } else {
                let ulen = u16::from_be_bytes([seg[l4 + 4], seg[l4 + 5]]) as usize;
                prop_assert_eq!(ulen, seg.len() - l4);
            }
        }
        prop_assert_eq!(joined, payload);
        let stride = out.uniform_stride().unwrap();
        prop_assert_eq!(stride, out.get(0).unwrap().len());
        let concat: Vec<u8> = out.iter().flatten().copied().collect();
        prop_assert_eq!(out.bytes(), &concat[..]);
    }

    #[test]
    fn complete_checksum_finishes_partial_frames(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        len in 0usize..1400,
        seed in any::<u8>(),
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
        let mut b = build(v6, tcp, false, &payload, 1448, 0x18, 1, 0);
        complete_checksum(&b.hdr, &mut b.frame).unwrap();
        // The IPv4 header checksum is not the TAP's business: fill it for the check.
        if !v6 {
            let c = !fold(sum(&b.frame[14..34]));
            b.frame[24..26].copy_from_slice(&c.to_be_bytes());
        }
        prop_assert!(verify_checksums(&b.frame));
        // Through gso_split as a non-GSO frame: same result.
        let mut b2 = build(v6, tcp, false, &payload, 1448, 0x18, 1, 0);
        b2.hdr.gso_type = GSO_NONE;
        let mut out = Segments::new();
        prop_assert_eq!(gso_split(&b2.hdr, &b2.frame, &mut out).unwrap(), 1);
        let l4 = b2.hdr.csum_start as usize;
        prop_assert_eq!(&out.get(0).unwrap()[l4..], &b.frame[l4..]);
    }

    #[test]
    fn hostile_input_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        flags in any::<u8>(),
        gso_type in prop::sample::select(vec![0u8, 1, 3, 4, 5, 0x81, 0x7f]),
        gso_size in any::<u16>(),
        csum_start in 0u16..500,
        csum_offset in 0u16..40,
    ) {
        let hdr = VirtioNetHdr { flags, gso_type, hdr_len: 0, gso_size, csum_start, csum_offset };
        let mut out = Segments::new();
        if let Ok(n) = gso_split(&hdr, &bytes, &mut out) {
            prop_assert_eq!(n, out.len());
            // Never much more output than input.
            let total: usize = out.iter().map(|s| s.len()).sum();
            prop_assert!(total <= bytes.len() * 9 + 256);
        } else {
            prop_assert!(out.is_empty(), "a failed split left frames behind");
        }
        let mut copy = bytes.clone();
        let _ = complete_checksum(&hdr, &mut copy);
        let _ = verify_checksums(&bytes);
        let _ = VirtioNetHdr::parse(&bytes);
    }

    #[test]
    fn coalescing_then_splitting_gives_back_the_segments(
        v6 in any::<bool>(),
        len in 1usize..150_000,
        gso in 500u16..1500,
        arp_at in prop::option::of(0usize..200),
        flags in prop::sample::select(vec![0x10u8, 0x18]),
    ) {
        // A stream of MTU-sized segments, as the sleeve receives them.
        let mut segs = Segments::new();
        let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        for (k, chunk) in payload.chunks(60_000).enumerate() {
            let b = build(v6, true, false, chunk, gso, flags, (k * 60_000) as u32, 1);
            gso_split(&b.hdr, &b.frame, &mut segs).unwrap();
        }
        let mut input: Vec<Vec<u8>> = segs.iter().map(|f| f.to_vec()).collect();
        let arp = vec![0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1];
        if let Some(at) = arp_at {
            input.insert(at.min(input.len()), arp.clone());
        }
        let mut co = TcpCoalescer::new();
        let mut emitted: Vec<(VirtioNetHdr, Vec<u8>)> = Vec::new();
        let mut emit = |h: &VirtioNetHdr, f: &[u8]| {
            emitted.push((*h, f.to_vec()));
            Ok(())
        };
        for f in &input {
            co.push(f, &mut emit).unwrap();
        }
        co.flush(&mut emit).unwrap();
        prop_assert!(emitted.len() <= input.len());
        if input.len() > 2 && arp_at.is_none() && flags == 0x10 {
            prop_assert!(emitted.len() < input.len(), "nothing was merged");
        }
        let mut back = Segments::new();
        for (h, f) in &emitted {
            prop_assert!(f.len() <= 65_100);
            if f[12..14] == [0x08, 0x06] {
                back.push(f);
            } else {
                gso_split(h, f, &mut back).unwrap();
            }
        }
        let out: Vec<Vec<u8>> = back.iter().map(|f| f.to_vec()).collect();
        prop_assert_eq!(out.len(), input.len());
        for (a, b) in out.iter().zip(&input) {
            prop_assert!(a[12..14] == [0x08, 0x06] || verify_checksums(a));
            // Equal but for the IPv4 ID and header checksum (merging renumbers IDs).
            let mask = |f: &[u8]| {
                let mut f = f.to_vec();
                if !v6 && f[12..14] == [0x08, 0x00] {
                    f[18..20].fill(0);
                    f[24..26].fill(0);
                }
                f
            };
            prop_assert_eq!(mask(a), mask(b));
        }
    }

    #[test]
    fn coalescer_never_panics(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20)) {
        let mut co = TcpCoalescer::new();
        let mut n = 0;
        let mut emit = |_: &VirtioNetHdr, _: &[u8]| { n += 1; Ok(()) };
        for f in &frames {
            co.push(f, &mut emit).unwrap();
        }
        co.flush(&mut emit).unwrap();
        prop_assert_eq!(n, frames.len());
    }

    #[test]
    fn mutated_frames_never_panic(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        flips in prop::collection::vec((0usize..120, any::<u8>()), 1..8),
        cut in 0usize..3200,
        gso in 0u16..2000,
    ) {
        let b = build(v6, tcp, true, &[9u8; 3000], 1000, 0x18, 5, 1);
        let mut f = b.frame.clone();
        for (i, v) in flips {
            if let Some(x) = f.get_mut(i) {
                *x = v;
            }
        }
        f.truncate(cut.max(1));
        let mut h = b.hdr;
        h.gso_size = gso;
        let mut out = Segments::new();
        if gso_split(&h, &f, &mut out).is_ok() {
            let total: usize = out.iter().map(|s| s.len()).sum();
            prop_assert!(total <= f.len() * 9 + 256);
        }
    }

    #[test]
    fn truncated_gso_frames_are_errors(cut in 0usize..80, v6 in any::<bool>(), tcp in any::<bool>()) {
        let b = build(v6, tcp, false, &[7u8; 3000], 1000, 0x18, 5, 0);
        let cut = cut.min(b.hdr_end - 1);
        let mut out = Segments::new();
        prop_assert!(gso_split(&b.hdr, &b.frame[..cut], &mut out).is_err());
        prop_assert!(out.is_empty());
    }
}

#[test]
fn bad_headers_are_explained() {
    let b = build(false, true, false, &[1u8; 5000], 1000, 0x18, 5, 0);
    let mut out = Segments::new();
    let mut h = b.hdr;
    h.gso_size = 8;
    assert!(gso_split(&h, &b.frame, &mut out)
        .unwrap_err()
        .to_string()
        .contains("gso_size"));
    let mut h = b.hdr;
    h.csum_start += 2;
    assert!(gso_split(&h, &b.frame, &mut out)
        .unwrap_err()
        .to_string()
        .contains("csum_start"));
    let mut h = b.hdr;
    h.gso_type = 3; // UFO
    assert!(gso_split(&h, &b.frame, &mut out).is_err());
    let mut h = b.hdr;
    h.gso_type = GSO_UDP_L4; // protocol mismatch
    assert!(gso_split(&h, &b.frame, &mut out)
        .unwrap_err()
        .to_string()
        .contains("protocol"));
    let mut arp = b.frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert!(gso_split(&b.hdr, &arp, &mut out)
        .unwrap_err()
        .to_string()
        .contains("ethertype"));
    assert!(out.is_empty());
    assert_eq!(out.uniform_stride(), None);
    out.push(&[1, 2, 3]);
    out.push(&[4, 5]);
    assert_eq!(out.uniform_stride(), Some(3));
    out.push(&[6, 7, 8, 9]);
    assert_eq!(out.uniform_stride(), None);
}
