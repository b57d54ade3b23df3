//! virtio-net headers and L2-aware segmentation of the large frames a TAP device with
//! offloads hands over (pure code, no I/O).
//!
//! With `IFF_VNET_HDR` and TSO/USO offloads on, every frame read from the TAP starts with
//! a [`VirtioNetHdr`] and may be far larger than the MTU: one TCP (TSO) or UDP (USO)
//! "super-frame" whose checksum is only partially computed (`NEEDS_CSUM`). [`gso_split`]
//! cuts it into MTU-sized Ethernet frames with correct IP lengths, IDs and checksums and
//! TCP sequence numbers, flags and checksums; [`complete_checksum`] finishes the checksum
//! of a single frame.
//!
//! All parsing is bounds-checked: hostile or truncated frames give a [`GsoError`], never a
//! panic, and the output is never much larger than the input.

/// Size of the header used on Weft's TAP devices (`struct virtio_net_hdr`, without the
/// v1 `num_buffers` field). With it, the IP header of an untagged frame starts at offset
/// 24 of the read buffer, 4-byte aligned.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` to the end is still to be
/// computed and stored at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_*` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// Flag: the TCP stream uses ECN (CWR only on the first segment).
pub const GSO_ECN: u8 = 0x80;

/// Smallest segment size accepted (smaller ones would multiply the input by header copies).
pub const MIN_GSO_SIZE: u16 = 32;
/// Largest L2+L3+L4 header accepted in a GSO frame.
pub const MAX_HDR_LEN: usize = 256;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a frame cannot be segmented or completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("frame of {0} bytes is shorter than its virtio-net header")]
    NoHeader(usize),
    #[error("frame truncated: {what} needs {need} bytes, the frame has {have}; drop it")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("unsupported ethertype {0:#06x} for segmentation (IPv4/IPv6 only); drop the frame")]
    EtherType(u16),
    #[error("malformed {what}: {detail}; drop the frame")]
    Malformed { what: &'static str, detail: String },
    #[error(
        "unsupported GSO type {0:#x} (TCPv4, TCPv6 and UDP_L4 are handled); turn the offload off"
    )]
    GsoType(u8),
    #[error("checksum position out of the frame (csum_start {start}, csum_offset {offset}, frame {len} bytes)")]
    ChecksumPosition { start: u16, offset: u16, len: usize },
}

/// `struct virtio_net_hdr` (native endian, as the TAP device uses without TUNSETVNETLE/BE).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers (L2 to L4) of a GSO frame.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Reads the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<VirtioNetHdr, GsoError> {
        if buf.len() < VNET_HDR_LEN {
            return Err(GsoError::NoHeader(buf.len()));
        }
        let u16_at = |i: usize| u16::from_ne_bytes([buf[i], buf[i + 1]]);
        Ok(VirtioNetHdr {
            flags: buf[0],
            gso_type: buf[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), GsoError> {
        let Some(b) = buf.get_mut(..VNET_HDR_LEN) else {
            return Err(GsoError::NoHeader(buf.len()));
        };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        Ok(())
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0; VNET_HDR_LEN];
        // Cannot fail: the buffer has the right size.
        let _ = self.emit(&mut b);
        b
    }

    /// A GSO frame (to be segmented) rather than a single one.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

/// Frames produced by [`gso_split`], stored back to back in one reusable buffer.
#[derive(Debug, Default, Clone)]
pub struct Segments {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Segments {
    pub fn new() -> Segments {
        Segments::default()
    }

    /// Forgets the frames, keeping the memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Frame `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.buf.get(start..end)
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.ends.len()).filter_map(move |i| self.get(i))
    }

    /// All frames back to back (as [`Self::iter`] yields them, concatenated).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// When every frame but the last has the same size (and the last is not larger),
    /// that size: the whole buffer can then go out as one UDP GSO send with this
    /// segment size. `gso_split` output of one frame always qualifies.
    pub fn uniform_stride(&self) -> Option<usize> {
        let first = *self.ends.first()?;
        let mut prev = 0;
        for (i, &end) in self.ends.iter().enumerate() {
            let len = end - prev;
            let last = i + 1 == self.ends.len();
            if (!last && len != first) || (last && len > first) {
                return None;
            }
            prev = end;
        }
        Some(first)
    }

    /// Appends a frame as is.
    pub fn push(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
        self.ends.push(self.buf.len());
    }

    fn start_frame(&self) -> usize {
        self.buf.len()
    }

    fn end_frame(&mut self) {
        self.ends.push(self.buf.len());
    }

    fn rollback(&mut self, mark: (usize, usize)) {
        self.buf.truncate(mark.0);
        self.ends.truncate(mark.1);
    }
}

/// Ones'-complement sum of `data` added to `acc` (not folded).
///
/// The data is summed as native-endian 32-bit words into eight independent
/// 64-bit accumulators, so nothing carries until the end (that would take
/// 2^32 words). The ones'-complement sum is byte-order independent: the sum
/// of byte-swapped words is the byte-swapped sum, so the folded result is
/// swapped into network order once.
fn sum(data: &[u8], acc: u64) -> u64 {
    let mut a = [0u64; 8];
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (k, w) in c.chunks_exact(4).enumerate() {
            a[k] += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let mut native: u64 = a.iter().map(|&x| u64::from(fold(x))).sum();
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        native += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [b] = rest {
        // A trailing odd byte is padded with a zero byte after it.
        native += u64::from(u16::from_ne_bytes([*b, 0]));
    }
    acc + u64::from(u16::from_be(fold(native)))
}

fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The Internet checksum of `data` (ones' complement of the ones'-complement sum).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Ones'-complement sum of the pseudo-header for an L4 segment of `l4_len` bytes.
fn pseudo_sum(ip: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    if v6 {
        sum(&ip[8..40], 0) + u64::from(proto) + l4_len as u64
    } else {
        sum(&ip[12..20], 0) + u64::from(proto) + l4_len as u64
    }
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn need(what: &'static str, need: usize, have: usize) -> Result<(), GsoError> {
    if need > have {
        Err(GsoError::Truncated { what, need, have })
    } else {
        Ok(())
    }
}

/// Offset and ethertype of the L3 header (after at most two VLAN tags).
fn l3(frame: &[u8]) -> Result<(usize, u16), GsoError> {
    need("the Ethernet header", ETH_HLEN, frame.len())?;
    let mut off = 12;
    let mut ty = be16(frame, off);
    let mut tags = 0;
    while (ty == ETHERTYPE_VLAN || ty == ETHERTYPE_QINQ) && tags < 2 {
        off += 4;
        need("a VLAN tag", off + 2, frame.len())?;
        ty = be16(frame, off);
        tags += 1;
    }
    Ok((off + 2, ty))
}

/// Completes the checksum of a single frame marked `NEEDS_CSUM`: the ones'-complement sum
/// from `csum_start` to the end (the field holds the pseudo-header sum) is stored at
/// `csum_start + csum_offset`. A frame without the flag is left alone.
pub fn complete_checksum(hdr: &VirtioNetHdr, frame: &mut [u8]) -> Result<(), GsoError> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > frame.len() || start > frame.len() {
        return Err(GsoError::ChecksumPosition {
            start: hdr.csum_start,
            offset: hdr.csum_offset,
            len: frame.len(),
        });
    }
    let mut c = !fold(sum(&frame[start..], 0));
    if c == 0 {
        // As the kernel does (CSUM_MANGLED_0): 0 means "no checksum" for UDP.
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Parsed layout of a GSO frame.
struct Layout {
    ip: usize,
    v6: bool,
    l4: usize,
    hdr_end: usize,
    proto: u8,
}

fn layout(hdr: &VirtioNetHdr, frame: &[u8]) -> Result<Layout, GsoError> {
    let (ip, ethertype) = l3(frame)?;
    let proto = match hdr.gso_type & !GSO_ECN {
        GSO_TCPV4 | GSO_TCPV6 => PROTO_TCP,
        GSO_UDP_L4 => PROTO_UDP,
        other => return Err(GsoError::GsoType(other)),
    };
    let (v6, l4) = match ethertype {
        ETHERTYPE_IPV4 => {
            need("the IPv4 header", ip + 20, frame.len())?;
            if frame[ip] >> 4 != 4 {
                return Err(GsoError::Malformed {
                    what: "IPv4 header",
                    detail: format!("version {}", frame[ip] >> 4),
                });
            }
            let ihl = usize::from(frame[ip] & 0x0f) * 4;
            if ihl < 20 {
                return Err(GsoError::Malformed {
                    what: "IPv4 header",
                    detail: format!("header length {ihl}"),
                });
            }
            need("the IPv4 options", ip + ihl, frame.len())?;
            if frame[ip + 9] != proto {
                return Err(GsoError::Malformed {
                    what: "IPv4 header",
                    detail: format!(
                        "protocol {} does not match GSO type {:#x}",
                        frame[ip + 9],
                        hdr.gso_type
                    ),
                });
            }
            if be16(frame, ip + 6) & 0x3fff != 0 {
                return Err(GsoError::Malformed {
                    what: "IPv4 header",
                    detail: "a fragment cannot be segmented".into(),
                });
            }
            (false, ip + ihl)
        }
        ETHERTYPE_IPV6 => {
            need("the IPv6 header", ip + 40, frame.len())?;
            if frame[ip] >> 4 != 6 {
                return Err(GsoError::Malformed {
                    what: "IPv6 header",
                    detail: format!("version {}", frame[ip] >> 4),
                });
            }
            // Extension headers: trust csum_start when given, else require none.
            let l4 = if hdr.needs_csum() && usize::from(hdr.csum_start) > ip + 40 {
                usize::from(hdr.csum_start)
            } else {
                if frame[ip + 6] != proto {
                    return Err(GsoError::Malformed {
                        what: "IPv6 header",
                        detail: format!(
                            "next header {} does not match GSO type {:#x}",
                            frame[ip + 6],
                            hdr.gso_type
                        ),
                    });
                }
                ip + 40
            };
            (true, l4)
        }
        other => return Err(GsoError::EtherType(other)),
    };
    if hdr.needs_csum() && usize::from(hdr.csum_start) != l4 {
        return Err(GsoError::Malformed {
            what: "virtio-net header",
            detail: format!(
                "csum_start {} is not the L4 header offset {l4}",
                hdr.csum_start
            ),
        });
    }
    let hdr_end = if proto == PROTO_TCP {
        need("the TCP header", l4 + 20, frame.len())?;
        let thl = usize::from(frame[l4 + 12] >> 4) * 4;
        if thl < 20 {
            return Err(GsoError::Malformed {
                what: "TCP header",
                detail: format!("data offset {thl}"),
            });
        }
        need("the TCP options", l4 + thl, frame.len())?;
        l4 + thl
    } else {
        need("the UDP header", l4 + 8, frame.len())?;
        l4 + 8
    };
    if hdr_end > MAX_HDR_LEN {
        return Err(GsoError::Malformed {
            what: "GSO frame",
            detail: format!("headers of {hdr_end} bytes (at most {MAX_HDR_LEN})"),
        });
    }
    Ok(Layout {
        ip,
        v6,
        l4,
        hdr_end,
        proto,
    })
}

/// Segments one frame read from a TAP (its virtio-net header already parsed into `hdr`,
/// `frame` starting at the Ethernet header) into Ethernet frames carrying at most
/// `hdr.gso_size` payload bytes each, appended to `out`. A non-GSO frame is appended as
/// one frame, its checksum completed if it is marked `NEEDS_CSUM`.
///
/// For TCP: IPv4 total length, ID (+1 per segment) and header checksum, or the IPv6
/// payload length; TCP sequence number; FIN and PSH only on the last segment, CWR only on
/// the first; TCP checksum. For UDP (USO): each segment is its own datagram with its own
/// length and checksum. On error `out` is left as it was.
pub fn gso_split(hdr: &VirtioNetHdr, frame: &[u8], out: &mut Segments) -> Result<usize, GsoError> {
    if !hdr.is_gso() {
        let mark = (out.buf.len(), out.ends.len());
        let start = out.start_frame();
        out.buf.extend_from_slice(frame);
        if let Err(e) = complete_checksum(hdr, &mut out.buf[start..]) {
            out.rollback(mark);
            return Err(e);
        }
        out.end_frame();
        return Ok(1);
    }
    if hdr.gso_size < MIN_GSO_SIZE {
        return Err(GsoError::Malformed {
            what: "virtio-net header",
            detail: format!("gso_size {} below {MIN_GSO_SIZE}", hdr.gso_size),
        });
    }
    let lay = layout(hdr, frame)?;
    let headers = &frame[..lay.hdr_end];
    let payload = &frame[lay.hdr_end..];
    let gso = usize::from(hdr.gso_size);
    let count = payload.len().div_ceil(gso).max(1);
    out.buf.reserve(count * lay.hdr_end + payload.len());
    out.ends.reserve(count);

    let ip_id = if lay.v6 { 0 } else { be16(frame, lay.ip + 4) };
    let seq = if lay.proto == PROTO_TCP {
        be32(frame, lay.l4 + 4)
    } else {
        0
    };
    let tcp_flags = if lay.proto == PROTO_TCP {
        frame[lay.l4 + 13]
    } else {
        0
    };
    let chunks: Box<dyn Iterator<Item = &[u8]>> = if payload.is_empty() {
        Box::new(std::iter::once(payload))
    } else {
        Box::new(payload.chunks(gso))
    };
    for (i, chunk) in chunks.enumerate() {
        let first = i == 0;
        let last = i + 1 == count;
        let start = out.start_frame();
        out.buf.extend_from_slice(headers);
        out.buf.extend_from_slice(chunk);
        let seg = &mut out.buf[start..];
        let seg_len = seg.len();
        let (ip, l4) = (lay.ip, lay.l4);
        if lay.v6 {
            let plen = (seg_len - ip - 40) as u16;
            seg[ip + 4..ip + 6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let tot = (seg_len - ip) as u16;
            seg[ip + 2..ip + 4].copy_from_slice(&tot.to_be_bytes());
            let id = ip_id.wrapping_add(i as u16);
            seg[ip + 4..ip + 6].copy_from_slice(&id.to_be_bytes());
            seg[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
            let ihl = l4 - ip;
            let c = checksum(&seg[ip..ip + ihl]);
            seg[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        }
        let l4_len = seg_len - l4;
        let csum_at = if lay.proto == PROTO_TCP {
            let s = seq.wrapping_add((i * gso) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            let mut f = tcp_flags;
            if !last {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if !first {
                f &= !TCP_CWR;
            }
            seg[l4 + 13] = f;
            l4 + 16
        } else {
            seg[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4 + 6
        };
        seg[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let acc = pseudo_sum(&seg[ip..], lay.v6, lay.proto, l4_len);
        let mut c = !fold(sum(&seg[l4..], acc));
        if c == 0 && lay.proto == PROTO_UDP {
            c = 0xffff;
        }
        seg[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        out.end_frame();
    }
    Ok(count)
}

/// Checks the IPv4 header checksum (if IPv4) and the TCP/UDP checksum of a plain
/// Ethernet frame. For tests and diagnostics; `false` for anything malformed.
pub fn verify_checksums(frame: &[u8]) -> bool {
    let Ok((ip, ty)) = l3(frame) else {
        return false;
    };
    let (v6, l4, proto, end) = match ty {
        ETHERTYPE_IPV4 => {
            if frame.len() < ip + 20 {
                return false;
            }
            let ihl = usize::from(frame[ip] & 0x0f) * 4;
            let tot = usize::from(be16(frame, ip + 2));
            if ihl < 20 || frame.len() < ip + ihl || tot < ihl || frame.len() < ip + tot {
                return false;
            }
            if fold(sum(&frame[ip..ip + ihl], 0)) != 0xffff {
                return false;
            }
            (false, ip + ihl, frame[ip + 9], ip + tot)
        }
        ETHERTYPE_IPV6 => {
            if frame.len() < ip + 40 {
                return false;
            }
            let end = ip + 40 + usize::from(be16(frame, ip + 4));
            if frame.len() < end {
                return false;
            }
            (true, ip + 40, frame[ip + 6], end)
        }
        _ => return false,
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return true;
    }
    let min = if proto == PROTO_TCP { 20 } else { 8 };
    if end < l4 + min {
        return false;
    }
    let acc = pseudo_sum(&frame[ip..], v6, proto, end - l4);
    fold(sum(&frame[l4..end], acc)) == 0xffff
}

/// The flow the coalescer is building.
struct Flow {
    v6: bool,
    l4: usize,
    hdr_end: usize,
    /// Payload bytes per segment (the first segment's).
    seg: usize,
    next_seq: u32,
    segments: usize,
}

/// Where a frame's TCP segment lies, if it is one the coalescer can merge: untagged
/// Ethernet, IPv4 without options and not fragmented or IPv6 without extension headers,
/// TCP with ACK (and maybe PSH) only, a payload, and a valid checksum.
fn tcp_candidate(frame: &[u8]) -> Option<(bool, usize, usize)> {
    if frame.len() < ETH_HLEN + 20 {
        return None;
    }
    let (v6, l4, l4_end) = match be16(frame, 12) {
        ETHERTYPE_IPV4 => {
            let ip = ETH_HLEN;
            let tot = usize::from(be16(frame, ip + 2));
            if frame[ip] != 0x45
                || frame[ip + 9] != PROTO_TCP
                || be16(frame, ip + 6) & 0x3fff != 0
                || tot < 40
                || ip + tot > frame.len()
                || fold(sum(&frame[ip..ip + 20], 0)) != 0xffff
            {
                return None;
            }
            (false, ip + 20, ip + tot)
        }
        ETHERTYPE_IPV6 => {
            let ip = ETH_HLEN;
            if frame.len() < ip + 60 || frame[ip] >> 4 != 6 || frame[ip + 6] != PROTO_TCP {
                return None;
            }
            let end = ip + 40 + usize::from(be16(frame, ip + 4));
            if end > frame.len() {
                return None;
            }
            (true, ip + 40, end)
        }
        _ => return None,
    };
    if l4_end < l4 + 20 {
        return None;
    }
    let thl = usize::from(frame[l4 + 12] >> 4) * 4;
    let flags = frame[l4 + 13];
    if thl < 20 || l4 + thl >= l4_end || (flags != 0x10 && flags != 0x18) {
        return None;
    }
    let acc = pseudo_sum(&frame[ETH_HLEN..], v6, PROTO_TCP, l4_end - l4);
    if fold(sum(&frame[l4..l4_end], acc)) != 0xffff {
        return None;
    }
    Some((v6, l4, l4_end))
}

/// Merges consecutive MTU-sized segments of one TCP flow into a single GSO frame before a
/// TAP write (the reverse of [`gso_split`]): one write and one pass through the bridge
/// and the pod's stack for up to 64 KiB instead of one per segment.
///
/// Frames are pushed in arrival order; whatever cannot be merged is emitted unchanged (with
/// a zeroed header), in order. A merged frame carries a virtio-net header with
/// `NEEDS_CSUM` and `TCPV4`/`TCPV6`, which the TAP accepts on write. Call
/// [`TcpCoalescer::flush`] at the end of every batch.
#[derive(Default)]
pub struct TcpCoalescer {
    buf: Vec<u8>,
    flow: Option<Flow>,
}

impl std::fmt::Debug for TcpCoalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpCoalescer")
            .field("pending_bytes", &self.buf.len())
            .field("segments", &self.flow.as_ref().map_or(0, |fl| fl.segments))
            .finish()
    }
}

/// Largest merged frame (IP total length must fit in 16 bits).
const MAX_COALESCED: usize = 65_000;

impl TcpCoalescer {
    pub fn new() -> TcpCoalescer {
        TcpCoalescer::default()
    }

    /// Adds one Ethernet frame; calls `emit` for every frame that is complete.
    pub fn push<E>(&mut self, frame: &[u8], emit: &mut E) -> Result<(), std::io::Error>
    where
        E: FnMut(&VirtioNetHdr, &[u8]) -> Result<(), std::io::Error>,
    {
        let Some((v6, l4, l4_end)) = tcp_candidate(frame) else {
            self.flush(emit)?;
            return emit(&VirtioNetHdr::default(), frame);
        };
        let hdr_end = l4 + usize::from(frame[l4 + 12] >> 4) * 4;
        let payload = &frame[hdr_end..l4_end];
        let seq = be32(frame, l4 + 4);
        if let Some(fl) = &self.flow {
            let same = fl.v6 == v6
                && fl.hdr_end == hdr_end
                && seq == fl.next_seq
                && payload.len() <= fl.seg
                && self.buf.len() + payload.len() <= MAX_COALESCED
                && self.same_headers(frame, fl);
            if !same {
                self.flush(emit)?;
            }
        }
        match &mut self.flow {
            Some(fl) => {
                self.buf.extend_from_slice(payload);
                fl.next_seq = seq.wrapping_add(payload.len() as u32);
                fl.segments += 1;
                if frame[l4 + 13] & TCP_PSH != 0 {
                    self.buf[fl.l4 + 13] |= TCP_PSH;
                }
                // A short segment or a PSH ends the run.
                if payload.len() < fl.seg || frame[l4 + 13] & TCP_PSH != 0 {
                    self.flush(emit)?;
                }
            }
            None => {
                self.buf.clear();
                self.buf.extend_from_slice(&frame[..l4_end]);
                self.flow = Some(Flow {
                    v6,
                    l4,
                    hdr_end,
                    seg: payload.len(),
                    next_seq: seq.wrapping_add(payload.len() as u32),
                    segments: 1,
                });
                if frame[l4 + 13] & TCP_PSH != 0 {
                    self.flush(emit)?;
                }
            }
        }
        Ok(())
    }

    /// Everything but sequence number, PSH, lengths, IDs and checksums must match.
    fn same_headers(&self, frame: &[u8], fl: &Flow) -> bool {
        let b = &self.buf;
        let ip = ETH_HLEN;
        let l4 = fl.l4;
        // Ethernet header.
        if b[..ip] != frame[..ip] {
            return false;
        }
        let ip_same = if fl.v6 {
            // Version/class/flow label, next header, hop limit, addresses.
            b[ip..ip + 4] == frame[ip..ip + 4] && b[ip + 6..ip + 40] == frame[ip + 6..ip + 40]
        } else {
            // TOS; flags; TTL, protocol; addresses.
            b[ip + 1] == frame[ip + 1]
                && b[ip + 6..ip + 10] == frame[ip + 6..ip + 10]
                && b[ip + 12..ip + 20] == frame[ip + 12..ip + 20]
        };
        // Ports; ack; data offset; window; urgent pointer; options.
        ip_same
            && b[l4..l4 + 4] == frame[l4..l4 + 4]
            && b[l4 + 8..l4 + 13] == frame[l4 + 8..l4 + 13]
            && b[l4 + 14..l4 + 16] == frame[l4 + 14..l4 + 16]
            && b[l4 + 18..fl.hdr_end] == frame[l4 + 18..fl.hdr_end]
    }

    /// Emits the frame being built, if any.
    pub fn flush<E>(&mut self, emit: &mut E) -> Result<(), std::io::Error>
    where
        E: FnMut(&VirtioNetHdr, &[u8]) -> Result<(), std::io::Error>,
    {
        let Some(fl) = self.flow.take() else {
            return Ok(());
        };
        if fl.segments == 1 {
            return emit(&VirtioNetHdr::default(), &self.buf);
        }
        let b = &mut self.buf;
        let ip = ETH_HLEN;
        let l4 = fl.l4;
        let l4_len = b.len() - l4;
        if fl.v6 {
            let plen = (b.len() - ip - 40) as u16;
            b[ip + 4..ip + 6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let tot = (b.len() - ip) as u16;
            b[ip + 2..ip + 4].copy_from_slice(&tot.to_be_bytes());
            b[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
            let c = checksum(&b[ip..ip + 20]);
            b[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        }
        // Partial checksum: the pseudo-header sum, to be completed over the segment.
        let pseudo = fold(pseudo_sum(&b[ip..], fl.v6, PROTO_TCP, l4_len));
        b[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if fl.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: fl.hdr_end as u16,
            gso_size: fl.seg as u16,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        emit(&hdr, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(VirtioNetHdr::parse(&b).unwrap(), h);
        assert!(h.is_gso() && h.needs_csum());
        assert_eq!(VirtioNetHdr::parse(&b[..9]), Err(GsoError::NoHeader(9)));
        assert!(h.emit(&mut [0u8; 4]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn sum_matches_the_16_bit_reference(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            acc in 0u64..1 << 40,
        ) {
            let mut r = acc;
            for c in data.chunks(2) {
                r += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            proptest::prop_assert_eq!(fold(sum(&data, acc)), fold(r));
        }
    }

    #[test]
    fn checksum_known_value() {
        // RFC 1071 example words.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
        // Odd lengths pad with a zero byte.
        assert_eq!(fold(sum(&[0xab], 0)), 0xab00);
        // Long inputs agree with the 16-bit reference.
        let long: Vec<u8> = (0..5001u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut r: u32 = 0;
        for c in long.chunks(2) {
            r += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while r > 0xffff {
            r = (r & 0xffff) + (r >> 16);
        }
        assert_eq!(fold(sum(&long, 0)), r as u16);
    }
}
