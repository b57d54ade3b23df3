//! ICMP echo over a raw IPv4 socket, in the network namespace of the calling thread.
//!
//! [`ping_many`] sends one echo request to every target per round and collects replies for up to
//! `timeout`, for `tries` rounds, so a whole row of the lab's ping matrix costs at most
//! `tries × timeout` however many targets fail.
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
};
use nix::sys::time::{TimeVal, TimeValLike};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"weft-lab";
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingOptions {
    /// Rounds of echo requests (at least 1).
    pub tries: u32,
    /// How long each round waits for replies.
    pub timeout: Duration,
}

impl Default for PingOptions {
    fn default() -> Self {
        PingOptions {
            tries: 3,
            timeout: Duration::from_millis(500),
        }
    }
}

/// The result of pinging one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingOutcome {
    /// An echo reply came back; `attempt` is the round (1-based) whose request it answered.
    Reply { rtt: Duration, attempt: u32 },
    /// No reply; the reason says what we saw (timeout, send error, ICMP unreachable).
    Failed { reason: String },
}

impl PingOutcome {
    /// True for [`PingOutcome::Reply`].
    pub fn is_ok(&self) -> bool {
        matches!(self, PingOutcome::Reply { .. })
    }
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an ICMP echo request (without IP header).
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + payload.len());
    p.extend_from_slice(&[ICMP_ECHO_REQUEST, 0, 0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// An ICMP message that concerns one of our echo requests, parsed from a received IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcmpEvent<'a> {
    /// An echo reply from `src`.
    Reply {
        src: Ipv4Addr,
        id: u16,
        seq: u16,
        payload: &'a [u8],
    },
    /// An error (unreachable, time exceeded) from `reporter` about a request we sent to `dst`.
    Error {
        reporter: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        id: u16,
        seq: u16,
    },
}

/// Parses a raw-socket datagram (IPv4 header + ICMP). Returns `None` for anything that is not an
/// echo reply or an ICMP error quoting an echo request, and for malformed or truncated packets.
pub fn parse_icmp(packet: &[u8]) -> Option<IcmpEvent<'_>> {
    let (src, _dst, icmp) = split_ipv4(packet)?;
    if icmp.len() < 8 {
        return None;
    }
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    match icmp[0] {
        ICMP_ECHO_REPLY if icmp[1] == 0 => {
            if checksum(icmp) != 0 {
                return None;
            }
            Some(IcmpEvent::Reply {
                src,
                id,
                seq,
                payload: &icmp[8..],
            })
        }
        t @ (ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED) => {
            // The quoted original datagram: IP header + at least 8 bytes of our echo request.
            let (_osrc, odst, orig) = split_ipv4(&icmp[8..])?;
            if orig.len() < 8 || orig[0] != ICMP_ECHO_REQUEST {
                return None;
            }
            Some(IcmpEvent::Error {
                reporter: src,
                dst: odst,
                icmp_type: t,
                code: icmp[1],
                id: u16::from_be_bytes([orig[4], orig[5]]),
                seq: u16::from_be_bytes([orig[6], orig[7]]),
            })
        }
        _ => None,
    }
}

/// Splits an IPv4 packet carrying ICMP into (src, dst, payload). Tolerates a truncated payload
/// (quoted datagrams are cut short), not a truncated header.
fn split_ipv4(p: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, &[u8])> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl || p[9] != libc::IPPROTO_ICMP as u8 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let end = total.clamp(ihl, p.len());
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    Some((src, dst, &p[ihl..end]))
}

fn describe_error(icmp_type: u8, code: u8) -> String {
    match (icmp_type, code) {
        (ICMP_DEST_UNREACH, 0) => "network unreachable".into(),
        (ICMP_DEST_UNREACH, 1) => "host unreachable".into(),
        (ICMP_DEST_UNREACH, 3) => "port unreachable".into(),
        (ICMP_DEST_UNREACH, 4) => "fragmentation needed".into(),
        (ICMP_DEST_UNREACH, 13) => "administratively prohibited".into(),
        (ICMP_DEST_UNREACH, c) => format!("destination unreachable (code {c})"),
        (ICMP_TIME_EXCEEDED, _) => "TTL exceeded (routing loop?)".into(),
        (t, c) => format!("ICMP type {t} code {c}"),
    }
}

static NEXT_ID: AtomicU16 = AtomicU16::new(0);

fn fresh_id() -> u16 {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    (std::process::id() as u16)
        .wrapping_mul(31)
        .wrapping_add(n.wrapping_mul(0x9e37))
}

fn nonce() -> [u8; 8] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (u64::from(std::process::id()) << 40) ^ u64::from(fresh_id())).to_be_bytes()
}

/// Pings every target from the calling thread's network namespace. Returns one outcome per
/// target (same order). Fails only if the raw socket cannot be opened.
pub fn ping_many(targets: &[Ipv4Addr], opts: &PingOptions) -> std::io::Result<Vec<PingOutcome>> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .map_err(std::io::Error::from)?;
    let id = fresh_id();
    let mut payload = Vec::with_capacity(24);
    payload.extend_from_slice(MAGIC);
    payload.extend_from_slice(&nonce());
    payload.extend_from_slice(&[0u8; 8]);

    let tries = opts.tries.max(1);
    let mut outcome: Vec<Option<PingOutcome>> = vec![None; targets.len()];
    let mut last_err: Vec<Option<String>> = vec![None; targets.len()];
    // seq -> (target index, sent at, attempt). Kept across rounds so late replies still count.
    let mut sent: HashMap<u16, (usize, Instant, u32)> = HashMap::new();
    let mut seq: u16 = id.rotate_left(7);
    let mut buf = [0u8; 2048];

    for attempt in 1..=tries {
        let mut waiting = 0usize;
        for (i, dst) in targets.iter().enumerate() {
            if outcome[i].is_some() {
                continue;
            }
            seq = seq.wrapping_add(1);
            let pkt = echo_request(id, seq, &payload);
            let addr = SockaddrIn::from(std::net::SocketAddrV4::new(*dst, 0));
            // Timestamp before sending: on veth paths the reply can be queued before sendto
            // even returns.
            let at = Instant::now();
            match socket::sendto(fd.as_raw_fd(), &pkt, &addr, MsgFlags::empty()) {
                Ok(_) => {
                    sent.insert(seq, (i, at, attempt));
                    waiting += 1;
                }
                Err(e) => last_err[i] = Some(format!("send failed: {}", std::io::Error::from(e))),
            }
        }
        if waiting == 0 {
            if outcome.iter().all(Option::is_some) {
                break;
            }
            // Every send failed (no route, ...): pause briefly so the tries mean something.
            std::thread::sleep(opts.timeout.min(Duration::from_millis(100)));
            continue;
        }
        let deadline = Instant::now() + opts.timeout;
        while outcome.iter().any(Option::is_none) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let remaining = (deadline - now).max(Duration::from_millis(1));
            let tv = TimeVal::microseconds(remaining.as_micros().min(i64::MAX as u128) as i64);
            socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv)
                .map_err(std::io::Error::from)?;
            let n = match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(std::io::Error::from(e)),
            };
            match parse_icmp(&buf[..n]) {
                Some(IcmpEvent::Reply {
                    src,
                    id: rid,
                    seq: rseq,
                    payload: rp,
                }) if rid == id && rp == payload.as_slice() => {
                    if let Some(&(i, at, att)) = sent.get(&rseq) {
                        if targets[i] == src && outcome[i].is_none() {
                            outcome[i] = Some(PingOutcome::Reply {
                                rtt: at.elapsed(),
                                attempt: att,
                            });
                        }
                    }
                }
                Some(IcmpEvent::Error {
                    reporter,
                    dst,
                    icmp_type,
                    code,
                    id: rid,
                    seq: rseq,
                }) if rid == id => {
                    if let Some(&(i, _, _)) = sent.get(&rseq) {
                        if targets[i] == dst {
                            last_err[i] = Some(format!(
                                "{} (reported by {reporter})",
                                describe_error(icmp_type, code)
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(outcome
        .into_iter()
        .zip(last_err)
        .map(|(o, e)| {
            o.unwrap_or_else(|| PingOutcome::Failed {
                reason: e.unwrap_or_else(|| {
                    format!(
                        "no reply to {tries} echo request(s), {} ms each",
                        opts.timeout.as_millis()
                    )
                }),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], icmp: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        let total = (20 + icmp.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(icmp);
        p
    }

    #[test]
    fn checksum_known_values() {
        // RFC 1071 example words.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        let req = echo_request(0x1234, 7, b"abc");
        assert_eq!(
            checksum(&req),
            0,
            "a packet with its checksum filled in sums to zero"
        );
        assert_eq!(&req[..2], &[8, 0]);
    }

    #[test]
    fn parses_reply_and_errors() {
        let mut rep = echo_request(0x4242, 9, b"payload!");
        rep[0] = 0;
        rep[2] = 0;
        rep[3] = 0;
        let c = checksum(&rep);
        rep[2..4].copy_from_slice(&c.to_be_bytes());
        let pkt = ipv4([10, 0, 0, 2], [10, 0, 0, 1], &rep);
        assert_eq!(
            parse_icmp(&pkt),
            Some(IcmpEvent::Reply {
                src: Ipv4Addr::new(10, 0, 0, 2),
                id: 0x4242,
                seq: 9,
                payload: b"payload!"
            })
        );
        // Corrupted checksum: ignored.
        let mut bad = pkt.clone();
        bad[30] ^= 0xff;
        assert_eq!(parse_icmp(&bad), None);

        let orig = ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 9],
            &echo_request(0x4242, 10, b"x"),
        );
        let mut err = vec![3, 1, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&orig[..28]);
        let pkt = ipv4([10, 0, 0, 254], [10, 0, 0, 1], &err);
        assert_eq!(
            parse_icmp(&pkt),
            Some(IcmpEvent::Error {
                reporter: Ipv4Addr::new(10, 0, 0, 254),
                dst: Ipv4Addr::new(10, 0, 0, 9),
                icmp_type: 3,
                code: 1,
                id: 0x4242,
                seq: 10
            })
        );
        assert_eq!(describe_error(3, 1), "host unreachable");
    }

    #[test]
    fn ignores_garbage_without_panicking() {
        assert_eq!(parse_icmp(&[]), None);
        assert_eq!(parse_icmp(&[0x45; 19]), None);
        assert_eq!(parse_icmp(&[0x4f; 40]), None);
        // Echo request (not a reply), IPv6 version nibble, non-ICMP protocol.
        assert_eq!(
            parse_icmp(&ipv4([1, 1, 1, 1], [2, 2, 2, 2], &echo_request(1, 1, b""))),
            None
        );
        let mut v6 = ipv4([1, 1, 1, 1], [2, 2, 2, 2], &[0; 8]);
        v6[0] = 0x65;
        assert_eq!(parse_icmp(&v6), None);
        // Every truncation of a valid error packet parses or is rejected, never panics.
        let orig = ipv4([10, 0, 0, 1], [10, 0, 0, 9], &echo_request(1, 2, b"x"));
        let mut err = vec![3, 1, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&orig);
        let pkt = ipv4([9, 9, 9, 9], [10, 0, 0, 1], &err);
        for n in 0..pkt.len() {
            let _ = parse_icmp(&pkt[..n]);
        }
        // A total-length field larger than the packet is clamped.
        let mut lying = pkt.clone();
        lying[2] = 0xff;
        assert!(parse_icmp(&lying).is_some());
    }

    /// Real pings inside a private netns of this test process: loopback answers, an address
    /// with no route fails with a send error, an on-link address nobody owns times out.
    #[test]
    fn pings_in_private_netns() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let t = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            let mut nl = weft_dataplane::netlink::Netlink::open().unwrap();
            let lo = nl.link_by_name("lo").unwrap().unwrap();
            nl.set_up(lo.index).unwrap();
            nl.add_bridge("br-ping", None).unwrap();
            let br = nl.link_by_name("br-ping").unwrap().unwrap();
            nl.add_address(br.index, "192.0.2.1/24".parse().unwrap())
                .unwrap();
            nl.set_up(br.index).unwrap();
            let opts = PingOptions {
                tries: 2,
                timeout: Duration::from_millis(200),
            };
            ping_many(
                &[
                    Ipv4Addr::new(127, 0, 0, 1),
                    Ipv4Addr::new(198, 51, 100, 7),
                    Ipv4Addr::new(192, 0, 2, 1),
                    Ipv4Addr::new(192, 0, 2, 77),
                ],
                &opts,
            )
            .unwrap()
        });
        let out = t.join().unwrap();
        assert!(out[0].is_ok(), "{out:?}");
        assert!(
            matches!(&out[1], PingOutcome::Failed { reason } if reason.contains("send failed")),
            "{out:?}"
        );
        assert!(out[2].is_ok(), "{out:?}");
        assert!(!out[3].is_ok(), "{out:?}");
    }
}
