//! Gratuitous ARP over an AF_PACKET socket.

use crate::{Error, MacAddr, Result};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
/// Minimum Ethernet frame without FCS.
const MIN_FRAME: usize = 60;
const BROADCAST: MacAddr = [0xff; 6];

/// Builds a broadcast Ethernet frame carrying a gratuitous ARP for `ip`/`mac`:
/// sender = target = `ip`. The request form has a zero target MAC, the reply form
/// repeats `mac` as target MAC.
pub fn gratuitous_arp_frame(mac: MacAddr, ip: Ipv4Addr, reply: bool) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let a = &mut f[14..];
    a[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    a[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    let op = if reply { ARPOP_REPLY } else { ARPOP_REQUEST };
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&ip.octets());
    if reply {
        a[18..24].copy_from_slice(&mac);
    }
    a[24..28].copy_from_slice(&ip.octets());
    f
}

/// Sends a gratuitous ARP (request and reply forms, broadcast) for `ip` from `mac`
/// on interface `ifindex`, via an AF_PACKET socket in the calling thread's netns.
pub fn send_gratuitous_arp(ifindex: u32, mac: MacAddr, ip: Ipv4Addr) -> Result<()> {
    let ifindex_c = libc::c_int::try_from(ifindex)
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| {
            Error::InvalidArgument(format!("interface index {ifindex} is out of range"))
        })?;
    // SAFETY: plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::io(
            "socket(AF_PACKET, SOCK_RAW) for gratuitous ARP",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a fresh, owned descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex_c;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&BROADCAST);
    for reply in [false, true] {
        let frame = gratuitous_arp_frame(mac, ip, reply);
        loop {
            // SAFETY: valid fd, buffer and address of the right size.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENXIO) | Some(libc::ENODEV) => {
                    return Err(Error::NotFound(format!(
                        "interface #{ifindex} for gratuitous ARP"
                    )))
                }
                Some(libc::ENETDOWN) => {
                    return Err(Error::io(
                        format!(
                            "send gratuitous ARP on interface #{ifindex} (bring the link up first)"
                        ),
                        e,
                    ))
                }
                _ => {
                    return Err(Error::io(
                        format!("send gratuitous ARP on interface #{ifindex}"),
                        e,
                    ))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let mac = [0x02, 0, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(10, 32, 0, 5);
        let req = gratuitous_arp_frame(mac, ip, false);
        assert_eq!(&req[0..6], &[0xff; 6]);
        assert_eq!(&req[6..12], &mac);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!(&req[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&req[22..28], &mac);
        assert_eq!(&req[28..32], &ip.octets());
        assert_eq!(&req[32..38], &[0; 6]);
        assert_eq!(&req[38..42], &ip.octets());
        let rep = gratuitous_arp_frame(mac, ip, true);
        assert_eq!(&rep[20..22], &[0, 2]);
        assert_eq!(&rep[32..38], &mac);
        assert!(rep[42..].iter().all(|b| *b == 0));
    }

    #[test]
    fn rejects_bad_index() {
        assert!(matches!(
            send_gratuitous_arp(0, [0; 6], Ipv4Addr::LOCALHOST),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            send_gratuitous_arp(u32::MAX, [0; 6], Ipv4Addr::LOCALHOST),
            Err(Error::InvalidArgument(_))
        ));
    }
}
