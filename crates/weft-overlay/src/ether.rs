//! Just enough Ethernet and IPv4 for the overlay: MAC addresses, header
//! parsing (bounds-checked, never panicking on hostile bytes), the ICMP
//! "fragmentation needed" reply sleeve hands back for too-big DF packets, and
//! userspace IPv4 fragmentation.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use weft_wire::PeerName;

/// Length of an untagged Ethernet header (`EthernetOverhead` in Weave).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Minimum IPv4 header length.
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;

/// Errors of the Ethernet/IPv4 helpers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtherError {
    /// The frame is not a well-formed IPv4-in-Ethernet frame.
    #[error("frame is not a well-formed IPv4 packet in an Ethernet frame")]
    NotIpv4,
    /// The frame has the don't-fragment flag set and may not be fragmented.
    #[error("IPv4 packet has the don't-fragment flag set and must not be fragmented")]
    DontFragment,
    /// The MTU leaves no room for any payload after the IPv4 header.
    #[error("MTU {mtu} leaves no room for payload after a {header}-byte IPv4 header")]
    MtuTooSmall {
        /// The MTU asked for.
        mtu: usize,
        /// The IPv4 header length of the packet.
        header: usize,
    },
    /// Fragment offsets would exceed the 13-bit field.
    #[error("fragment offset exceeds the 13-bit IPv4 field")]
    OffsetOverflow,
}

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// `00:00:00:00:00:00`.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Group (multicast or broadcast) address: bit 0 of the first byte.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// The broadcast address.
    pub fn is_broadcast(self) -> bool {
        self == Self::BROADCAST
    }

    /// All zeros.
    pub fn is_zero(self) -> bool {
        self == Self::ZERO
    }

    /// IEEE 802.1D link-local control addresses `01:80:c2:00:00:xx` (STP and
    /// friends), which a bridge must never forward (Weave drops this prefix).
    pub fn is_link_local_control(self) -> bool {
        self.0[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00]
    }

    /// Reads a MAC from the first 6 bytes of `b`, if there are 6.
    pub fn from_slice(b: &[u8]) -> Option<MacAddr> {
        b.get(..6).and_then(|s| s.try_into().ok()).map(MacAddr)
    }
}

impl From<PeerName> for MacAddr {
    /// A Weave peer name is a MAC address (the bridge MAC of the peer).
    fn from(p: PeerName) -> MacAddr {
        MacAddr(p.to_name_bytes())
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 02:42:ac:11:00:02")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// The fixed part of an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetHeader {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// EtherType (or an 802.3 length when below 0x0600).
    pub ethertype: u16,
}

/// Parses the Ethernet header; `None` if the frame is shorter than 14 bytes.
pub fn parse_ethernet(frame: &[u8]) -> Option<EthernetHeader> {
    if frame.len() < ETHERNET_HEADER_LEN {
        return None;
    }
    Some(EthernetHeader {
        dst: MacAddr::from_slice(&frame[0..6])?,
        src: MacAddr::from_slice(&frame[6..12])?,
        ethertype: u16::from_be_bytes([frame[12], frame[13]]),
    })
}

/// The fields of an IPv4 header the overlay looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Header length in bytes (IHL × 4).
    pub header_len: usize,
    /// Type of service.
    pub tos: u8,
    /// Total length of the packet (header + payload) in bytes.
    pub total_len: usize,
    /// Identification.
    pub id: u16,
    /// The DF flag.
    pub dont_fragment: bool,
    /// The MF flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol.
    pub protocol: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// Parses the IPv4 header of an Ethernet frame. `None` unless the EtherType
/// is IPv4 and the header is well formed: version 4, IHL ≥ 5, and the whole
/// packet (`total_len`) present in the frame (trailing Ethernet padding is
/// allowed). Truncated packets are not IPv4 for the overlay's purposes.
pub fn parse_ipv4(frame: &[u8]) -> Option<Ipv4Header> {
    let eth = parse_ethernet(frame)?;
    if eth.ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[ETHERNET_HEADER_LEN..];
    if ip.len() < IPV4_MIN_HEADER_LEN || ip[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if header_len < IPV4_MIN_HEADER_LEN || total_len < header_len || total_len > ip.len() {
        return None;
    }
    let flags_off = u16::from_be_bytes([ip[6], ip[7]]);
    Some(Ipv4Header {
        header_len,
        tos: ip[1],
        total_len,
        id: u16::from_be_bytes([ip[4], ip[5]]),
        dont_fragment: flags_off & FLAG_DF != 0,
        more_fragments: flags_off & FLAG_MF != 0,
        frag_offset: flags_off & OFFSET_MASK,
        ttl: ip[8],
        protocol: ip[9],
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    })
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds the ICMP "destination unreachable / fragmentation needed" (type 3,
/// code 4) reply to a too-big DF IPv4 frame, as Weave's sleeve does: MACs and
/// IP addresses swapped, TOS copied, ID 0, no flags, TTL 64, Next-Hop MTU =
/// `mtu`, and the original IP header plus the first 8 payload bytes quoted.
/// Both checksums are filled in.
pub fn icmp_frag_needed(frame: &[u8], mtu: u16) -> Result<Vec<u8>, EtherError> {
    let eth = parse_ethernet(frame).ok_or(EtherError::NotIpv4)?;
    let ip = parse_ipv4(frame).ok_or(EtherError::NotIpv4)?;
    let ip_start = ETHERNET_HEADER_LEN;
    let quoted_len = (ip.header_len + 8).min(ip.total_len);
    let quoted = &frame[ip_start..ip_start + quoted_len];
    let icmp_len = 8 + quoted.len();
    let total = IPV4_MIN_HEADER_LEN + icmp_len;

    let mut out = Vec::with_capacity(ETHERNET_HEADER_LEN + total);
    out.extend_from_slice(&eth.src.0);
    out.extend_from_slice(&eth.dst.0);
    out.extend_from_slice(&eth.ethertype.to_be_bytes());
    // IPv4 header.
    let mut hdr = [0u8; IPV4_MIN_HEADER_LEN];
    hdr[0] = 0x45;
    hdr[1] = ip.tos;
    hdr[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    hdr[8] = 64;
    hdr[9] = IPPROTO_ICMP;
    hdr[12..16].copy_from_slice(&ip.dst.octets());
    hdr[16..20].copy_from_slice(&ip.src.octets());
    let c = internet_checksum(&hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&hdr);
    // ICMP.
    let icmp_start = out.len();
    out.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&mtu.to_be_bytes());
    out.extend_from_slice(quoted);
    let c = internet_checksum(&out[icmp_start..]);
    out[icmp_start + 2..icmp_start + 4].copy_from_slice(&c.to_be_bytes());
    Ok(out)
}

/// Fragments an IPv4 frame whose DF flag is clear so that every fragment's IP
/// packet fits `mtu`: payload pieces are multiples of 8 bytes (except the
/// last), every fragment but the last has MF set, the last keeps the original
/// MF flag, offsets continue from the original offset (the packet may itself
/// be a fragment), and header checksums are recomputed. IP options are
/// copied into every fragment, as Weave does. Each fragment frame is passed
/// to `emit`; nothing is emitted when an error is returned.
pub fn fragment_ipv4(
    frame: &[u8],
    mtu: usize,
    mut emit: impl FnMut(Vec<u8>),
) -> Result<(), EtherError> {
    let ip = parse_ipv4(frame).ok_or(EtherError::NotIpv4)?;
    if ip.dont_fragment {
        return Err(EtherError::DontFragment);
    }
    let hlen = ip.header_len;
    let max_seg = mtu.saturating_sub(hlen) & !7;
    if max_seg == 0 {
        return Err(EtherError::MtuTooSmall { mtu, header: hlen });
    }
    let ip_start = ETHERNET_HEADER_LEN;
    let header = &frame[ip_start..ip_start + hlen];
    let payload = &frame[ip_start + hlen..ip_start + ip.total_len];
    let base = usize::from(ip.frag_offset) * 8;
    if payload.is_empty() {
        // Nothing to split; the packet already fits any sane MTU.
        emit(frame[..ip_start + ip.total_len].to_vec());
        return Ok(());
    }
    let last_offset = base + (payload.len() - 1) / max_seg * max_seg;
    if last_offset / 8 > usize::from(OFFSET_MASK) {
        return Err(EtherError::OffsetOverflow);
    }
    for (i, piece) in payload.chunks(max_seg).enumerate() {
        let offset = base + i * max_seg;
        let last = (i + 1) * max_seg >= payload.len();
        let mut f = Vec::with_capacity(ip_start + hlen + piece.len());
        f.extend_from_slice(&frame[..ip_start]);
        f.extend_from_slice(header);
        f.extend_from_slice(piece);
        let h = &mut f[ip_start..ip_start + hlen];
        h[2..4].copy_from_slice(&((hlen + piece.len()) as u16).to_be_bytes());
        let mut flags_off = (offset / 8) as u16 & OFFSET_MASK;
        if !last || ip.more_fragments {
            flags_off |= FLAG_MF;
        }
        h[6..8].copy_from_slice(&flags_off.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = internet_checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        emit(f);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An Ethernet+IPv4 frame with `payload_len` payload bytes (a counting
    /// pattern) and a valid header checksum.
    pub(crate) fn ipv4_frame(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        df: bool,
        payload_len: usize,
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = 20 + payload_len;
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[1] = 0x10;
        h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        if df {
            h[6] = 0x40;
        }
        h[8] = 63;
        h[9] = 17;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = internet_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend((0..payload_len).map(|i| (i % 251) as u8));
        f
    }

    #[test]
    fn mac_text_and_classes() {
        let m: MacAddr = "02:42:ac:11:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        assert!(!m.is_multicast());
        assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
        assert!("01:80:c2:00:00:00"
            .parse::<MacAddr>()
            .unwrap()
            .is_link_local_control());
        assert!("02:42:ac:11:00".parse::<MacAddr>().is_err());
        assert!("02:42:ac:11:00:02:03".parse::<MacAddr>().is_err());
        assert!("zz:42:ac:11:00:02".parse::<MacAddr>().is_err());
        let p: PeerName = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(MacAddr::from(p).to_string(), "0a:1b:2c:3d:4e:5f");
    }

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071 style example: the header from Wikipedia's IPv4 checksum
        // article, checksum field zeroed, sums to 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&h), 0xb861);
        let mut with = h;
        with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(internet_checksum(&with), 0);
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn parse_ipv4_fields_and_rejections() {
        let f = ipv4_frame([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], true, 100);
        let ip = parse_ipv4(&f).unwrap();
        assert_eq!(ip.header_len, 20);
        assert_eq!(ip.total_len, 120);
        assert!(ip.dont_fragment && !ip.more_fragments);
        assert_eq!(ip.src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ip.protocol, 17);
        // Ethernet padding after the packet is fine.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(parse_ipv4(&padded), Some(ip));
        // Truncated, bad version, bad IHL, not IPv4.
        assert_eq!(parse_ipv4(&f[..f.len() - 1]), None);
        let mut v6 = f.clone();
        v6[14] = 0x65;
        assert_eq!(parse_ipv4(&v6), None);
        let mut ihl = f.clone();
        ihl[14] = 0x44;
        assert_eq!(parse_ipv4(&ihl), None);
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse_ipv4(&arp), None);
        assert_eq!(parse_ipv4(&f[..20]), None);
    }

    #[test]
    fn icmp_frag_needed_bytes() {
        let f = ipv4_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            [10, 32, 0, 1],
            [10, 32, 0, 2],
            true,
            1500,
        );
        let r = icmp_frag_needed(&f, 1376).unwrap();
        assert_eq!(r.len(), 14 + 20 + 8 + 20 + 8);
        // MACs swapped.
        assert_eq!(&r[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&r[6..12], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(&r[12..14], &[0x08, 0x00]);
        let ip = parse_ipv4(&r).unwrap();
        assert_eq!(ip.header_len, 20);
        assert_eq!(ip.total_len, 56);
        assert_eq!(ip.tos, 0x10);
        assert_eq!(ip.ttl, 64);
        assert_eq!(ip.protocol, IPPROTO_ICMP);
        assert_eq!(ip.id, 0);
        assert!(!ip.dont_fragment && !ip.more_fragments && ip.frag_offset == 0);
        assert_eq!(ip.src, Ipv4Addr::new(10, 32, 0, 2));
        assert_eq!(ip.dst, Ipv4Addr::new(10, 32, 0, 1));
        // IP header checksum verifies.
        assert_eq!(internet_checksum(&r[14..34]), 0);
        // ICMP: type 3 code 4, unused 0, next-hop MTU, checksum verifies.
        let icmp = &r[34..];
        assert_eq!(&icmp[..2], &[3, 4]);
        assert_eq!(&icmp[4..6], &[0, 0]);
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1376);
        assert_eq!(internet_checksum(icmp), 0);
        // Quoted original header + 8 bytes.
        assert_eq!(&icmp[8..], &f[14..14 + 28]);
        // Not IPv4 → error.
        assert_eq!(icmp_frag_needed(&f[..10], 1), Err(EtherError::NotIpv4));
    }

    #[test]
    fn fragmentation_reassembles() {
        let f = ipv4_frame([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], false, 3000);
        let mut frags = Vec::new();
        fragment_ipv4(&f, 1400, |x| frags.push(x)).unwrap();
        assert_eq!(frags.len(), 3);
        let mut payload = Vec::new();
        for (i, fr) in frags.iter().enumerate() {
            let ip = parse_ipv4(fr).unwrap();
            assert!(ip.total_len <= 1400);
            assert_eq!(internet_checksum(&fr[14..34]), 0);
            assert_eq!(usize::from(ip.frag_offset) * 8, payload.len());
            assert_eq!(ip.more_fragments, i < 2);
            assert_eq!(ip.id, 0x1234);
            assert_eq!(&fr[..14], &f[..14]);
            let body = &fr[34..14 + ip.total_len];
            if i < 2 {
                assert_eq!(body.len() % 8, 0);
            }
            payload.extend_from_slice(body);
        }
        assert_eq!(payload, &f[34..]);
        // DF frames and silly MTUs are refused.
        let df = ipv4_frame([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], true, 3000);
        assert_eq!(
            fragment_ipv4(&df, 1400, |_| panic!("no output")),
            Err(EtherError::DontFragment)
        );
        assert_eq!(
            fragment_ipv4(&f, 27, |_| panic!("no output")),
            Err(EtherError::MtuTooSmall {
                mtu: 27,
                header: 20
            })
        );
    }

    #[test]
    fn fragmenting_a_fragment_keeps_offsets_and_mf() {
        let mut f = ipv4_frame([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], false, 1000);
        // Make it a middle fragment at offset 800 bytes with MF set.
        let fo: u16 = FLAG_MF | 100;
        f[20..22].copy_from_slice(&fo.to_be_bytes());
        let mut frags = Vec::new();
        // 524-byte MTU: 504-byte pieces.
        fragment_ipv4(&f, 524, |x| frags.push(x)).unwrap();
        assert_eq!(frags.len(), 2);
        let a = parse_ipv4(&frags[0]).unwrap();
        let b = parse_ipv4(&frags[1]).unwrap();
        assert_eq!(a.frag_offset, 100);
        assert_eq!(b.frag_offset, 100 + 504 / 8);
        assert!(a.more_fragments && b.more_fragments);
    }

    proptest! {
        #[test]
        fn helpers_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200), mtu in 0usize..2000) {
            let _ = parse_ethernet(&frame);
            let _ = parse_ipv4(&frame);
            let _ = icmp_frag_needed(&frame, mtu as u16);
            let _ = fragment_ipv4(&frame, mtu, |f| assert!(f.len() >= 34));
            let _ = internet_checksum(&frame);
        }

        #[test]
        fn fragments_fit_and_cover(len in 0usize..5000, mtu in 68usize..2000) {
            let f = ipv4_frame([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], false, len);
            let mut total = 0;
            fragment_ipv4(&f, mtu, |fr| {
                let ip = parse_ipv4(&fr).unwrap();
                assert!(ip.total_len <= mtu.max(20));
                total += ip.total_len - 20;
            }).unwrap();
            prop_assert_eq!(total, len);
        }
    }
}
