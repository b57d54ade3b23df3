//! The few kernel interfaces the data-plane driver needs that `weft-dataplane` does not
//! offer: the fast path's heartbeat packet socket, deleting bridge FDB entries, an eventfd
//! to wake the data-plane thread, and `poll(2)`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `ETH_P_ALL` in network byte order, as `socket(2)` and `sockaddr_ll` want it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
/// `SOL_PACKET` (linux/socket.h).
const SOL_PACKET: libc::c_int = 263;
/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h): our own transmissions are not looped back.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// `SO_ATTACH_FILTER` (asm-generic/socket.h).
const SO_ATTACH_FILTER: libc::c_int = 26;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points at a live value of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// A packet socket on the VXLAN device that sees only frames of one EtherType (the
/// fast-path heartbeats), before the bridge consumes them.
///
/// It is bound with `ETH_P_ALL` (a socket bound to the EtherType itself would only see
/// frames the bridge did not take), and a classic BPF filter drops every other frame in
/// the kernel, so the data traffic of the fast path never reaches this socket. Outgoing
/// frames are ignored.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    pub fn open(ifindex: u32, ethertype: u16) -> io::Result<PacketSocket> {
        // Protocol 0: nothing is received until the bind below, after the filter is in place.
        // SAFETY: plain socket(2).
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: we own the descriptor just created.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // ldh [12]; jeq #ethertype, accept, drop
        let prog = [
            libc::sock_filter {
                code: 0x28,
                jt: 0,
                jf: 0,
                k: 12,
            },
            libc::sock_filter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: u32::from(ethertype),
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x0004_0000,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0,
            },
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_ATTACH_FILTER, &fprog)?;
        // Best effort: kernels before 4.20 lack it, and then our own heartbeats are seen
        // and ignored (they name us as the sender).
        let _ = setsockopt(fd.as_raw_fd(), SOL_PACKET, PACKET_IGNORE_OUTGOING, &1i32);
        let sll = sockaddr_ll(ifindex, None);
        // SAFETY: valid sockaddr_ll of the size given.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends one Ethernet frame (header included) through the device.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut dst = [0u8; 6];
        if frame.len() >= 6 {
            dst.copy_from_slice(&frame[..6]);
        }
        let sll = sockaddr_ll(self.ifindex, Some(dst));
        // SAFETY: valid buffer and address.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame; `WouldBlock` when none is queued. A frame longer than `buf` is
    /// reported with its real length (and must be ignored).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: valid buffer.
        let rc = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn sockaddr_ll(ifindex: u32, dst: Option<[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: plain old data; all zeros is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL_BE;
    sll.sll_ifindex = ifindex as i32;
    if let Some(mac) = dst {
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&mac);
    }
    sll
}

/// An eventfd: the control side writes, the data-plane thread polls and drains it.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain eventfd(2).
        let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: we own the new descriptor.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) is still a wake-up.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64.
        let _ = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// `poll(2)` for readability; `revents` of each entry are set. EINTR counts as a timeout.
pub fn poll_readable(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<()> {
    for p in fds.iter_mut() {
        p.events = libc::POLLIN;
        p.revents = 0;
    }
    // SAFETY: a valid array of pollfds.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Waits (bounded) until `fd` can be written to.
pub fn wait_writable(fd: RawFd, timeout_ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) };
}

/// Deletes entries from the bridge's own forwarding database (`bridge fdb del MAC dev PORT
/// master`): when a peer moves between overlays, the bridge must forget on which of its
/// two overlay ports that peer's MACs were.
pub struct BridgeFdb {
    socket: Socket,
    seq: u32,
}

impl BridgeFdb {
    pub fn open() -> io::Result<BridgeFdb> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        setsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        Ok(BridgeFdb { socket, seq: 0 })
    }

    /// Removes the bridge's entry for `mac` on `port`. Returns whether there was one.
    pub fn delete(&mut self, port: u32, mac: [u8; 6]) -> io::Result<bool> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = port;
        msg.header.flags = NeighbourFlags::Controller;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(msg)),
        );
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        loop {
            let mut rx: Vec<u8> = Vec::with_capacity(8192);
            self.socket.recv(&mut rx, 0)?;
            let mut off = 0;
            while off + 16 <= rx.len() {
                let len =
                    u32::from_ne_bytes([rx[off], rx[off + 1], rx[off + 2], rx[off + 3]]) as usize;
                if len < 16 || off + len > rx.len() {
                    break;
                }
                let parsed =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..off + len]);
                off += (len + 3) & !3;
                let Ok(m) = parsed else { continue };
                if m.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = m.payload {
                    return match e.code {
                        None => Ok(true),
                        Some(c) if -c.get() == libc::ENOENT => Ok(false),
                        Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_dataplane::netlink::Netlink;

    /// Runs `f` on a thread of its own in a fresh network namespace (gone with the thread).
    fn in_private_netns(f: impl FnOnce(&mut Netlink) + Send + 'static) {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET): run the tests as root");
            let mut nl = Netlink::open().unwrap();
            f(&mut nl)
        })
        .join()
        .unwrap();
    }

    fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.resize(64, 0xab);
        f
    }

    fn recv_all(s: &PacketSocket) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        for _ in 0..50 {
            match s.recv(&mut buf) {
                Ok(n) => out.push(buf[..n.min(buf.len())].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !out.is_empty() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        out
    }

    #[test]
    fn packet_socket_sees_only_its_ethertype_and_bridge_entries_can_be_deleted() {
        in_private_netns(|nl| {
            let br = nl.add_bridge("br0", None).unwrap();
            nl.set_up(br.index).unwrap();
            nl.add_veth("p0", "p1", None, None).unwrap();
            let p0 = nl.link_by_name("p0").unwrap().unwrap();
            let p1 = nl.link_by_name("p1").unwrap().unwrap();
            nl.set_master(p0.index, Some(br.index)).unwrap();
            nl.set_up(p0.index).unwrap();
            nl.set_up(p1.index).unwrap();
            // Wait (bounded) until the bridge forwards on the new port.
            for _ in 0..200 {
                if nl.bridge_port_forwarding(p0.index).unwrap_or(false) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let rx = PacketSocket::open(p0.index, 0x88b5).unwrap();
            let tx = PacketSocket::open(p1.index, 0x88b5).unwrap();
            let src = [0x02, 0, 0, 0, 0, 0x42];
            let dst = [0x02, 0, 0, 0, 0, 0x43];
            // Frames enter p0 from p1: the bridge port's socket sees only the heartbeat
            // EtherType, before the bridge takes the frame (and learns `src` on p0).
            tx.send(&frame(dst, src, 0x0800)).unwrap();
            tx.send(&frame(dst, src, 0x88b5)).unwrap();
            let got = recv_all(&rx);
            assert_eq!(got.len(), 1, "{got:02x?}");
            assert_eq!(&got[0][12..14], &[0x88, 0xb5]);
            assert_eq!(&got[0][6..12], &src);
            // The socket does not see its own transmissions.
            rx.send(&frame(src, dst, 0x88b5)).unwrap();
            let mut buf = [0u8; 128];
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(
                rx.recv(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            // The bridge learned `src` on p0; delete it.
            let learned = |nl: &mut Netlink| {
                nl.fdb_dump(p0.index)
                    .unwrap()
                    .iter()
                    .any(|e| e.mac == src && !e.self_entry)
            };
            assert!(learned(nl), "{:?}", nl.fdb_dump(p0.index));
            let mut fdb = BridgeFdb::open().unwrap();
            assert!(fdb.delete(p0.index, src).unwrap());
            assert!(!learned(nl));
            assert!(!fdb.delete(p0.index, src).unwrap());
        });
    }

    #[test]
    fn eventfd_wakes_poll() {
        let e = EventFd::new().unwrap();
        let mut fds = [libc::pollfd {
            fd: e.as_raw_fd(),
            events: 0,
            revents: 0,
        }];
        poll_readable(&mut fds, 0).unwrap();
        assert_eq!(fds[0].revents, 0);
        e.notify();
        e.notify();
        poll_readable(&mut fds, 1000).unwrap();
        assert_ne!(fds[0].revents & libc::POLLIN, 0);
        e.drain();
        poll_readable(&mut fds, 0).unwrap();
        assert_eq!(fds[0].revents, 0);
    }
}
