//! NETLINK_ROUTE access over a blocking socket (links, addresses, IPv4 routes).
//!
//! Built on `netlink-packet-route` for the message types and `netlink-sys` for the
//! socket. A [`Netlink`] socket belongs to the network namespace of the thread that
//! opened it: to act inside another netns, open it on a thread that joined that netns
//! (see [`crate::netns::NetNs::run`]).

use crate::{Error, MacAddr, Result};
use netlink_packet_core::{
    DefaultNla, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage, LinkProtoInfoBridge,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

/// IFLA_BRPORT_MODE: the bridge port's hairpin flag (u8).
const IFLA_BRPORT_MODE: u16 = 4;
/// IFLA_BRPORT_ISOLATED: the bridge port's isolation flag (u8).
const IFLA_BRPORT_ISOLATED: u16 = 33;
/// NLMSGERR_ATTR_MSG: extended-ack error string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;
/// How long to wait for the kernel before giving up on a request.
const RECV_TIMEOUT_SECS: libc::time_t = 30;
/// How often a dump interrupted by concurrent changes is retried.
const DUMP_RETRIES: usize = 5;

/// A network interface as seen by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Index of the master device (the bridge this link is a port of).
    pub master: Option<u32>,
    /// IFLA_INFO_KIND: "bridge", "veth", "vxlan", ... (`None` for physical devices and lo).
    pub kind: Option<String>,
    /// Administratively up (IFF_UP).
    pub up: bool,
}

/// An IPv4 route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: ipnet::Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// RT_SCOPE_LINK (a directly connected route) rather than RT_SCOPE_UNIVERSE.
    pub scope_link: bool,
}

/// A blocking NETLINK_ROUTE socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    /// (st_dev, st_ino) of the netns this socket was opened in.
    netns_id: Option<(u64, u64)>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.socket.as_raw_fd())
            .field("seq", &self.seq)
            .finish()
    }
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub(crate) fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid interface name {name:?}: must be 1-{MAX_IFNAME_LEN} bytes without '/', ':', NUL or whitespace"
        )))
    }
}

pub(crate) fn current_netns_id() -> Option<(u64, u64)> {
    nix::sys::stat::stat("/proc/thread-self/ns/net")
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

/// What a request expects back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// NLM_F_DUMP: a multipart answer terminated by NLMSG_DONE.
    Dump,
    /// NLM_F_ACK: zero or more messages, then an ACK (NLMSG_ERROR with code 0).
    Ack,
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)
            .map_err(|e| Error::io("socket(AF_NETLINK, NETLINK_ROUTE)", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::io("bind netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect netlink socket to the kernel", e))?;
        // Best effort: a shorter NLMSG_ERROR and the kernel's error string.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: valid fd, pointer to a properly sized timeval.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(Error::io(
                "setsockopt(SO_RCVTIMEO) on netlink socket",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Netlink {
            socket,
            seq: 0,
            netns_id: current_netns_id(),
        })
    }

    /// True when the calling thread is in the netns this socket was opened in.
    pub(crate) fn in_current_netns(&self) -> bool {
        match (self.netns_id, current_netns_id()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    // ---------------------------------------------------------------- transport

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    /// Sends one request and collects the answer. Retries dumps the kernel marked
    /// as interrupted (NLM_F_DUMP_INTR).
    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
        kind: Kind,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.request_once(op, msg.clone(), extra_flags, kind)? {
                (msgs, false) => return Ok(msgs),
                (_, true) if attempt < DUMP_RETRIES => continue,
                (_, true) => {
                    return Err(Error::Protocol {
                        op: op.to_string(),
                        detail: format!(
                            "dump was interrupted by concurrent changes {DUMP_RETRIES} times in a row; retry later"
                        ),
                    })
                }
            }
        }
    }

    fn request_once(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
        kind: Kind,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool)> {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST
            | extra_flags
            | match kind {
                Kind::Dump => NLM_F_DUMP,
                Kind::Ack => NLM_F_ACK,
            };
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        loop {
            match self.socket.send(&buf, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("send netlink request ({op})"), e)),
            }
        }

        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let datagram = self.recv_datagram(op)?;
            let mut off = 0usize;
            while off < datagram.len() {
                let rest = &datagram[off..];
                let nlbuf = NetlinkBuffer::new_checked(rest).map_err(|e| Error::Protocol {
                    op: op.to_string(),
                    detail: format!("malformed netlink header: {e}"),
                })?;
                let len = nlbuf.length() as usize;
                let msg_seq = nlbuf.sequence_number();
                let flags = nlbuf.flags();
                // Netlink messages are 4-byte aligned; the last one may be unpadded.
                off = off.saturating_add(len.saturating_add(3) & !3);
                if msg_seq != seq {
                    // A late answer to an earlier, abandoned request.
                    continue;
                }
                if flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                    .map_err(|e| Error::Protocol {
                        op: op.to_string(),
                        detail: format!("cannot decode message: {e}"),
                    })?;
                match parsed.payload {
                    // For an ACK request (e.g. a GET), answers come first, then the ACK.
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None if kind == Kind::Ack => Ok((out, interrupted)),
                            None => Err(Error::Protocol {
                                op: op.to_string(),
                                detail: "got an ACK in the middle of a dump".into(),
                            }),
                            Some(code) => Err(netlink_error(op, code.get(), flags, &e.header)),
                        };
                    }
                    NetlinkPayload::Done(d) => {
                        if d.code < 0 {
                            return Err(netlink_error(op, d.code, 0, &[]));
                        }
                        if kind == Kind::Dump {
                            return Ok((out, interrupted));
                        }
                        // NLMSG_DONE ends a multipart answer; the ACK is still to come.
                    }
                    NetlinkPayload::Noop => {}
                    NetlinkPayload::Overrun(_) => {
                        return Err(Error::Protocol {
                            op: op.to_string(),
                            detail: "kernel reported NLMSG_OVERRUN (data lost); retry".into(),
                        })
                    }
                    _ => {
                        return Err(Error::Protocol {
                            op: op.to_string(),
                            detail: "unknown netlink payload type".into(),
                        })
                    }
                }
            }
        }
    }

    /// Receives one whole datagram, sized by peeking first.
    fn recv_datagram(&mut self, op: &str) -> Result<Vec<u8>> {
        loop {
            let mut probe: Vec<u8> = Vec::with_capacity(64);
            let n = match self
                .socket
                .recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC)
            {
                Ok(n) => n,
                Err(e) => return Err(self.recv_error(op, e)),
            };
            let mut buf: Vec<u8> = Vec::with_capacity(n.max(64));
            match self.socket.recv(&mut buf, libc::MSG_TRUNC) {
                Ok(got) if got > buf.len() => {
                    return Err(Error::Protocol {
                        op: op.to_string(),
                        detail: format!(
                            "netlink datagram of {got} bytes truncated to {}",
                            buf.len()
                        ),
                    })
                }
                Ok(_) => return Ok(buf),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.recv_error(op, e)),
            }
        }
    }

    fn recv_error(&self, op: &str, e: std::io::Error) -> Error {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            Error::Protocol {
                op: op.to_string(),
                detail: format!("no answer from the kernel within {RECV_TIMEOUT_SECS}s"),
            }
        } else {
            Error::io(format!("receive netlink answer ({op})"), e)
        }
    }

    fn ack(&mut self, op: &str, msg: RouteNetlinkMessage, extra_flags: u16) -> Result<()> {
        self.request(op, msg, extra_flags, Kind::Ack).map(|_| ())
    }

    // ---------------------------------------------------------------- links

    /// Looks a link up by name; `Ok(None)` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        validate_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(&format!("get link {name:?}"), msg)
    }

    /// Looks a link up by index; `Ok(None)` if there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        check_index(index)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(&format!("get link #{index}"), msg)
    }

    fn get_link_message(&mut self, op: &str, msg: LinkMessage) -> Result<Option<LinkMessage>> {
        match self.request(op, RouteNetlinkMessage::GetLink(msg), 0, Kind::Ack) {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn get_link(&mut self, op: &str, msg: LinkMessage) -> Result<Option<Link>> {
        match self.get_link_message(op, msg)? {
            Some(l) => link_from_message(&l).map(Some),
            None => Ok(None),
        }
    }

    fn require_link(&mut self, index: u32) -> Result<LinkMessage> {
        check_index(index)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link_message(&format!("get link #{index}"), msg)?
            .ok_or_else(|| Error::NotFound(format!("link #{index}")))
    }

    /// All links of this network namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self.request(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            0,
            Kind::Dump,
        )?;
        msgs.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_message(l)),
                _ => None,
            })
            .collect()
    }

    fn new_link(&mut self, op: &str, what: &str, msg: LinkMessage) -> Result<()> {
        self.ack(
            op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => Error::Exists(what.to_string()),
            _ => e,
        })
    }

    /// Creates a bridge. `Error::Exists` if a link with that name exists.
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<Link> {
        validate_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.new_link(
            &format!("create bridge {name:?}"),
            &format!("link {name:?}"),
            msg,
        )?;
        self.link_by_name(name)?.ok_or_else(|| {
            Error::NotFound(format!(
                "bridge {name:?} right after creating it (deleted concurrently?)"
            ))
        })
    }

    /// Creates a veth pair. When `peer_netns` is given the peer end is created
    /// directly inside that netns (IFLA_NET_NS_FD in the peer's info) under
    /// `peer_name`; EEXIST -> Error::Exists.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        mtu: Option<u32>,
        peer_netns: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        validate_ifname(name)?;
        validate_ifname(peer_name)?;
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        if let Some(mtu) = mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(fd) = peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.new_link(
            &format!("create veth pair {name:?}/{peer_name:?}"),
            &format!("link {name:?} or its peer {peer_name:?}"),
            msg,
        )
    }

    fn set_link(&mut self, op: String, family: AddressFamily, msg: LinkMessage) -> Result<()> {
        let index = msg.header.index;
        let mut msg = msg;
        msg.header.interface_family = family;
        self.ack(&op, RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENODEV) => Error::NotFound(format!("link #{index}")),
                _ => e,
            })
    }

    fn setlink_msg(index: u32, attrs: Vec<LinkAttribute>) -> Result<LinkMessage> {
        check_index(index)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes = attrs;
        Ok(msg)
    }

    /// Enslaves link `index` to bridge `master`, or releases it (`None`).
    pub fn set_master(&mut self, index: u32, master: Option<u32>) -> Result<()> {
        let msg = Self::setlink_msg(index, vec![LinkAttribute::Controller(master.unwrap_or(0))])?;
        let op = match master {
            Some(m) => format!("set master of link #{index} to #{m}"),
            None => format!("release link #{index} from its master"),
        };
        self.set_link(op, AddressFamily::Unspec, msg)
    }

    fn set_flags(&mut self, index: u32, up: bool) -> Result<()> {
        let mut msg = Self::setlink_msg(index, vec![])?;
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        let op = format!("set link #{index} {}", if up { "up" } else { "down" });
        self.set_link(op, AddressFamily::Unspec, msg)
    }

    /// Brings a link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_flags(index, true)
    }

    /// Brings a link administratively down.
    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.set_flags(index, false)
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let msg = Self::setlink_msg(index, vec![LinkAttribute::Mtu(mtu)])?;
        self.set_link(
            format!("set MTU of link #{index} to {mtu}"),
            AddressFamily::Unspec,
            msg,
        )
    }

    /// Renames a link. Rename before `set_up`: many devices refuse renaming while up (EBUSY).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<()> {
        validate_ifname(name)?;
        let msg = Self::setlink_msg(index, vec![LinkAttribute::IfName(name.to_string())])?;
        self.set_link(
            format!("rename link #{index} to {name:?}"),
            AddressFamily::Unspec,
            msg,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => Error::Exists(format!("link {name:?}")),
            _ => e,
        })
    }

    /// Sets a link's MAC address.
    pub fn set_mac(&mut self, index: u32, mac: MacAddr) -> Result<()> {
        let msg = Self::setlink_msg(index, vec![LinkAttribute::Address(mac.to_vec())])?;
        self.set_link(
            format!("set MAC of link #{index} to {}", crate::format_mac(&mac)),
            AddressFamily::Unspec,
            msg,
        )
    }

    /// Moves a link into another network namespace.
    pub fn set_netns(&mut self, index: u32, netns: BorrowedFd<'_>) -> Result<()> {
        let msg = Self::setlink_msg(index, vec![LinkAttribute::NetNsFd(netns.as_raw_fd())])?;
        self.set_link(
            format!("move link #{index} to another netns"),
            AddressFamily::Unspec,
            msg,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => Error::Exists(format!(
                "a link with the name of link #{index} in the target netns"
            )),
            _ => e,
        })
    }

    /// Turns hairpin mode (reflective relay) on or off on a bridge port.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let msg = Self::setlink_msg(
            index,
            vec![LinkAttribute::ProtoInfoBridge(vec![
                LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)])),
            ])],
        )?;
        self.set_link(
            format!("set hairpin {} on link #{index}", if on { "on" } else { "off" }),
            AddressFamily::Bridge,
            msg,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Error::InvalidArgument(format!(
                "cannot set hairpin on link #{index}: it is not a bridge port ({e}); call set_master first"
            )),
            _ => e,
        })
    }

    /// Whether hairpin mode is on for a bridge port. Errors if the link is not a bridge port.
    pub fn hairpin(&mut self, index: u32) -> Result<bool> {
        self.bridge_port_attrs(index)?
            .into_iter()
            .find_map(|p| match p {
                InfoBridgePort::HairpinMode(on) => Some(on),
                _ => None,
            })
            .ok_or_else(|| Error::Protocol {
                op: format!("read hairpin of link #{index}"),
                detail: "bridge port data without IFLA_BRPORT_MODE".into(),
            })
    }

    /// Whether the bridge port `index` is in the forwarding state (frames it receives reach
    /// the bridge). A new port only gets there once the kernel has processed its carrier.
    pub fn bridge_port_forwarding(&mut self, index: u32) -> Result<bool> {
        self.bridge_port_attrs(index)?
            .into_iter()
            .find_map(|p| match p {
                InfoBridgePort::State(state) => Some(state == BridgePortState::Forwarding),
                _ => None,
            })
            .ok_or_else(|| Error::Protocol {
                op: format!("read the port state of link #{index}"),
                detail: "bridge port data without IFLA_BRPORT_STATE".into(),
            })
    }

    /// The bridge-port attributes of a link (IFLA_INFO_SLAVE_DATA of a bridge port).
    fn bridge_port_attrs(&mut self, index: u32) -> Result<Vec<InfoBridgePort>> {
        let msg = self.require_link(index)?;
        for attr in msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos {
                    if let LinkInfo::PortData(InfoPortData::BridgePort(port)) = info {
                        return Ok(port);
                    }
                }
            }
        }
        Err(Error::InvalidArgument(format!(
            "link #{index} is not a bridge port; call set_master first"
        )))
    }

    /// Deletes a link (for a veth, both ends). Already gone -> Ok.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        check_index(index)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.ack(
            &format!("delete link #{index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(()),
            r => r,
        }
    }

    // ---------------------------------------------------------------- addresses

    /// IPv4 addresses on link `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<ipnet::Ipv4Net>> {
        check_index(index)?;
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        req.header.index = index;
        let msgs = self.request(
            &format!("dump addresses of link #{index}"),
            RouteNetlinkMessage::GetAddress(req),
            0,
            Kind::Dump,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.family != AddressFamily::Inet || a.header.index != index {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                    AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                let net =
                    ipnet::Ipv4Net::new(ip, a.header.prefix_len).map_err(|_| Error::Protocol {
                        op: "dump addresses".into(),
                        detail: format!("prefix length {} out of range", a.header.prefix_len),
                    })?;
                out.push(net);
            }
        }
        Ok(out)
    }

    fn address_message(index: u32, addr: ipnet::Ipv4Net) -> Result<AddressMessage> {
        check_index(index)?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.header.scope = if addr.addr().is_loopback() {
            AddressScope::Host
        } else {
            AddressScope::Universe
        };
        let ip = IpAddr::V4(addr.addr());
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        Ok(msg)
    }

    /// Adds an IPv4 address (with the broadcast address for prefixes up to /30).
    /// `Error::Exists` if the link already has it.
    pub fn add_address(&mut self, index: u32, addr: ipnet::Ipv4Net) -> Result<()> {
        let mut msg = Self::address_message(index, addr)?;
        if addr.prefix_len() <= 30 {
            msg.attributes
                .push(AddressAttribute::Broadcast(addr.broadcast()));
        }
        self.ack(
            &format!("add address {addr} to link #{index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => Error::Exists(format!("address {addr} on link #{index}")),
            Some(libc::ENODEV) => Error::NotFound(format!("link #{index}")),
            _ => e,
        })
    }

    /// Removes an IPv4 address. `Error::NotFound` if the link does not have it.
    pub fn del_address(&mut self, index: u32, addr: ipnet::Ipv4Net) -> Result<()> {
        let msg = Self::address_message(index, addr)?;
        self.ack(
            &format!("delete address {addr} from link #{index}"),
            RouteNetlinkMessage::DelAddress(msg),
            0,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV) | Some(libc::ENOENT) => {
                Error::NotFound(format!("address {addr} on link #{index}"))
            }
            _ => e,
        })
    }

    // ---------------------------------------------------------------- routes

    /// IPv4 unicast routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let msgs = self.request(
            "dump IPv4 routes",
            RouteNetlinkMessage::GetRoute(req),
            0,
            Kind::Dump,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if let Some(route) = route_from_message(&r)? {
                out.push(route);
            }
        }
        Ok(out)
    }

    fn route_message(route: &Route, for_delete: bool) -> Result<RouteMessage> {
        if route.dst.trunc() != route.dst {
            return Err(Error::InvalidArgument(format!(
                "route destination {} has host bits set; use {}",
                route.dst,
                route.dst.trunc()
            )));
        }
        if !for_delete && route.gateway.is_none() && route.oif.is_none() {
            return Err(Error::InvalidArgument(format!(
                "route to {} needs a gateway or an output interface",
                route.dst
            )));
        }
        if let Some(oif) = route.oif {
            check_index(oif)?;
        }
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        if for_delete {
            // Wildcards: match any scope, type and protocol.
            msg.header.scope = RouteScope::NoWhere;
        } else {
            msg.header.protocol = RouteProtocol::Boot;
            msg.header.scope = if route.scope_link {
                RouteScope::Link
            } else {
                RouteScope::Universe
            };
            msg.header.kind = RouteType::Unicast;
        }
        if route.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    route.dst.addr(),
                )));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        Ok(msg)
    }

    /// Adds an IPv4 route to the main table. `Error::Exists` if it is already there.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let msg = Self::route_message(route, false)?;
        self.ack(
            &format!("add route {}", describe_route(route)),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => Error::Exists(format!("route {}", describe_route(route))),
            Some(libc::ENODEV) => Error::NotFound(format!(
                "output interface of route {}",
                describe_route(route)
            )),
            _ => e,
        })
    }

    /// Deletes an IPv4 route from the main table, matching destination, gateway
    /// and output interface (those given). `Error::NotFound` if there is no such route.
    pub fn del_route(&mut self, route: &Route) -> Result<()> {
        let msg = Self::route_message(route, true)?;
        self.ack(
            &format!("delete route {}", describe_route(route)),
            RouteNetlinkMessage::DelRoute(msg),
            0,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::ENODEV) => {
                Error::NotFound(format!("route {}", describe_route(route)))
            }
            _ => e,
        })
    }
}

/// Hooks for the sibling modules (`vxlan`, `tap`) that build their own messages.
impl Netlink {
    /// Sends `msg` with NLM_F_ACK and `extra_flags`; waits for the ACK.
    pub(crate) fn ack_raw(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> Result<()> {
        self.ack(op, msg, extra_flags)
    }

    /// Sends `msg` as an NLM_F_DUMP request and returns every answer.
    pub(crate) fn dump_raw(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.request(op, msg, 0, Kind::Dump)
    }

    /// The raw RTM_NEWLINK answer for link `name`, if there is one.
    pub(crate) fn link_message_by_name(&mut self, name: &str) -> Result<Option<LinkMessage>> {
        validate_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link_message(&format!("get link {name:?}"), msg)
    }

    /// Creates a link from a prepared RTM_NEWLINK message (NLM_F_CREATE|NLM_F_EXCL);
    /// EEXIST becomes `Error::Exists(what)`.
    pub(crate) fn new_link_raw(&mut self, op: &str, what: &str, msg: LinkMessage) -> Result<()> {
        self.new_link(op, what, msg)
    }

    /// Sets or clears the bridge port flag `isolated` (IFLA_BRPORT_ISOLATED): an isolated
    /// port never forwards to, or receives from, another isolated port of the same bridge.
    /// Weft isolates its two overlay ports (VXLAN and the sleeve TAP) from each other.
    pub fn set_port_isolated(&mut self, index: u32, on: bool) -> Result<()> {
        let msg = Self::setlink_msg(
            index,
            vec![LinkAttribute::ProtoInfoBridge(vec![
                LinkProtoInfoBridge::Other(DefaultNla::new(
                    IFLA_BRPORT_ISOLATED,
                    vec![u8::from(on)],
                )),
            ])],
        )?;
        self.set_link(
            format!(
                "set bridge port isolation {} on link #{index}",
                if on { "on" } else { "off" }
            ),
            AddressFamily::Bridge,
            msg,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Error::InvalidArgument(format!(
                "cannot set isolation on link #{index}: it is not a bridge port ({e}); call set_master first"
            )),
            _ => e,
        })
    }

    /// Whether the bridge port `index` is isolated. Errors if the link is not a bridge port.
    pub fn port_isolated(&mut self, index: u32) -> Result<bool> {
        self.bridge_port_attrs(index)?
            .into_iter()
            .find_map(|p| match p {
                InfoBridgePort::Isolated(on) => Some(on),
                _ => None,
            })
            .ok_or_else(|| Error::Protocol {
                op: format!("read isolation of link #{index}"),
                detail: "bridge port data without IFLA_BRPORT_ISOLATED (kernel older than 4.18?)"
                    .into(),
            })
    }

    /// Packet and byte counters of a link (IFLA_STATS64).
    pub fn link_stats(&mut self, index: u32) -> Result<LinkStats> {
        let msg = self.require_link(index)?;
        msg.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Stats64(s) => Some(LinkStats {
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    rx_dropped: s.rx_dropped,
                    tx_dropped: s.tx_dropped,
                    rx_errors: s.rx_errors,
                    tx_errors: s.tx_errors,
                }),
                _ => None,
            })
            .ok_or_else(|| Error::Protocol {
                op: format!("read counters of link #{index}"),
                detail: "link message without IFLA_STATS64".into(),
            })
    }
}

/// Counters of a link (from IFLA_STATS64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
}

fn check_index(index: u32) -> Result<()> {
    if index == 0 || index > i32::MAX as u32 {
        Err(Error::InvalidArgument(format!(
            "interface index {index} is out of range (must be 1..=2^31-1)"
        )))
    } else {
        Ok(())
    }
}

fn describe_route(r: &Route) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if r.scope_link {
        s.push_str(" scope link");
    }
    s
}

fn link_from_message(msg: &LinkMessage) -> Result<Link> {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        master: None,
        kind: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    let mut have_name = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => {
                link.name = n.clone();
                have_name = true;
            }
            LinkAttribute::Address(a) => {
                if let Ok(mac) = <MacAddr>::try_from(a.as_slice()) {
                    link.mac = Some(mac);
                }
            }
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if !have_name {
        return Err(Error::Protocol {
            op: "decode link".into(),
            detail: format!("link #{} has no IFLA_IFNAME", link.index),
        });
    }
    Ok(link)
}

fn route_from_message(r: &RouteMessage) -> Result<Option<Route>> {
    let h = &r.header;
    if h.address_family != AddressFamily::Inet || h.kind != RouteType::Unicast {
        return Ok(None);
    }
    let mut table = u32::from(h.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return Ok(None);
    }
    let dst =
        ipnet::Ipv4Net::new(dst, h.destination_prefix_length).map_err(|_| Error::Protocol {
            op: "dump IPv4 routes".into(),
            detail: format!(
                "destination prefix length {} out of range",
                h.destination_prefix_length
            ),
        })?;
    Ok(Some(Route {
        dst,
        gateway,
        oif,
        scope_link: h.scope == RouteScope::Link,
    }))
}

/// Builds the error for a NLMSG_ERROR, including the kernel's extended-ack message.
fn netlink_error(op: &str, code: i32, flags: u16, payload: &[u8]) -> Error {
    let errno = code.checked_neg().unwrap_or(libc::EIO);
    let mut err = Error::netlink(op, errno);
    if let Some(msg) = extack_message(flags, payload) {
        if let Error::Netlink { kernel_msg, .. } = &mut err {
            *kernel_msg = msg;
        }
    }
    err
}

/// Extracts NLMSGERR_ATTR_MSG from the TLVs after the echoed request header.
fn extack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes(payload[0..4].try_into().ok()?) as usize;
        len.checked_add(3)? & !3
    };
    let mut tlvs = payload.get(echoed..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & netlink_packet_core::NLA_TYPE_MASK;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let value = &tlvs[4..len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            let s = String::from_utf8_lossy(&value[..end]).trim().to_string();
            return (!s.is_empty()).then_some(s);
        }
        let adv = (len + 3) & !3;
        tlvs = tlvs.get(adv..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        assert!(validate_ifname("weave").is_ok());
        assert!(validate_ifname("vethwepl1234567").is_ok());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("a:b").is_err());
        assert!(validate_ifname("..").is_err());
    }

    #[test]
    fn extack_parsing_is_robust() {
        // capped header + one NLMSGERR_ATTR_MSG TLV.
        let mut p = vec![0u8; 16];
        let text = b"Unknown device type\0";
        let len = (4 + text.len()) as u16;
        p.extend_from_slice(&len.to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        assert_eq!(
            extack_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &p).as_deref(),
            Some("Unknown device type")
        );
        // No TLV flag: nothing.
        assert_eq!(extack_message(NLM_F_CAPPED, &p), None);
        // Garbage lengths never panic.
        for cut in 0..p.len() {
            let _ = extack_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &p[..cut]);
            let _ = extack_message(NLM_F_ACK_TLVS, &p[..cut]);
        }
        let mut bad = p.clone();
        bad[16] = 2; // TLV length below header size
        assert_eq!(extack_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &bad), None);
        let mut huge = p.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(extack_message(NLM_F_ACK_TLVS, &huge), None);
    }

    #[test]
    fn route_message_rejects_host_bits_and_missing_nexthop() {
        let r = Route {
            dst: "10.1.2.3/24".parse().unwrap(),
            gateway: None,
            oif: Some(1),
            scope_link: true,
        };
        assert!(matches!(
            Netlink::route_message(&r, false),
            Err(Error::InvalidArgument(_))
        ));
        let r = Route {
            dst: "10.1.2.0/24".parse().unwrap(),
            gateway: None,
            oif: None,
            scope_link: false,
        };
        assert!(matches!(
            Netlink::route_message(&r, false),
            Err(Error::InvalidArgument(_))
        ));
        assert!(Netlink::route_message(&r, true).is_ok());
    }
}
