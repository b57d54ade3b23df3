//! The sleeve's UDP socket: non-blocking, big buffers, batched I/O with offloads.
//!
//! - Receive: [`UdpSocket::recv_batch`] fills a reusable [`RecvBatch`] with one
//!   `recvmmsg(2)`. With UDP GRO on ([`UdpConfig::gro`]), the kernel may hand over several
//!   datagrams of one flow coalesced in one slot; [`RecvMeta::stride`] is their size and
//!   [`RecvBatch::datagrams`] splits them again.
//! - Send: [`UdpSocket::send_batch`] sends many [`Transmit`]s, to different destinations,
//!   with one `sendmmsg(2)`. A transmit with a `segment_size` is a run of equal-size
//!   datagrams to one destination (the last may be shorter) sent as one UDP GSO message
//!   (`UDP_SEGMENT`). When the kernel refuses GSO (EIO/EINVAL: kernels before 6.11 on
//!   devices without TX checksum offload, IPsec routes, SO_NO_CHECK, ...) but a plain
//!   datagram goes out, GSO is switched off for the socket and runs go out datagram by
//!   datagram.
//! - Path MTU: [`UdpSocket::set_df`] picks `IP_PMTUDISC_DO` (DF set, EMSGSIZE above the
//!   path MTU) or `IP_PMTUDISC_DONT`; [`path_mtu`] reads the kernel's path MTU to a host.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

/// Most messages handed to one `recvmmsg`/`sendmmsg` call.
pub const MAX_BATCH: usize = 64;
/// Most datagrams in one GSO message (the kernel allows 64 or more).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload in one GSO message (IPv4 limit, minus headroom).
const MAX_GSO_BYTES: usize = 65_000;
/// Room for one cmsg carrying an int (GRO) or a u16 (GSO), 8-byte aligned.
const CTRL_WORDS: usize = 4;

/// How to set up the sleeve socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// Address and port to bind, e.g. `0.0.0.0:6783`.
    pub bind: SocketAddr,
    /// Set DF on everything sent (IP_PMTUDISC_DO) rather than letting the kernel
    /// fragment (IP_PMTUDISC_DONT).
    pub df: bool,
    /// Receive buffer in bytes; set with SO_RCVBUFFORCE when allowed (root).
    pub recv_buffer: usize,
    /// Send buffer in bytes; set with SO_SNDBUFFORCE when allowed (root).
    pub send_buffer: usize,
    /// Ask the kernel to coalesce received datagrams (UDP_GRO).
    pub gro: bool,
    /// SO_MARK for everything sent (keeps encapsulated traffic out of overlay routes).
    pub mark: Option<u32>,
    /// SO_REUSEPORT (several sockets, e.g. one per thread, on one port).
    pub reuse_port: bool,
}

impl UdpConfig {
    /// Defaults for `bind`: non-DF, 4 MiB buffers, GRO on, no mark, no reuse_port.
    pub fn new(bind: SocketAddr) -> UdpConfig {
        UdpConfig {
            bind,
            df: false,
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
            gro: true,
            mark: None,
            reuse_port: false,
        }
    }
}

/// One run of datagrams to send.
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    pub dst: SocketAddr,
    /// One datagram, or with `segment_size` several back to back.
    pub contents: &'a [u8],
    /// Split `contents` into datagrams of this size (the last may be shorter).
    pub segment_size: Option<usize>,
}

/// Why [`UdpSocket::send_batch`] stopped early.
#[derive(Debug, thiserror::Error)]
#[error("UDP send failed after {sent} of the batch's transmits: {error}")]
pub struct SendError {
    /// Transmits sent completely, from the start of the batch; the one at this index failed.
    pub sent: usize,
    /// `WouldBlock` when the send buffer is full (wait for writability and retry the
    /// rest); `EMSGSIZE` for a datagram above the path MTU of a DF socket; ...
    pub error: io::Error,
}

/// What one slot of a [`RecvBatch`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    pub src: SocketAddr,
    /// Bytes in the slot.
    pub len: usize,
    /// Size of each coalesced datagram (GRO); equals `len` for a single datagram.
    pub stride: usize,
    /// The datagram did not fit the slot and was cut (MSG_TRUNC).
    pub truncated: bool,
}

/// Reusable receive buffers for [`UdpSocket::recv_batch`].
pub struct RecvBatch {
    buf: Vec<u8>,
    slot_size: usize,
    addrs: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
    meta: Vec<RecvMeta>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.addrs.len())
            .field("slot_size", &self.slot_size)
            .field("filled", &self.meta.len())
            .finish()
    }
}

impl RecvBatch {
    /// `slots` buffers (at most [`MAX_BATCH`]) of `slot_size` bytes each. With GRO on,
    /// use 65535-byte slots, or coalesced runs are cut.
    pub fn new(slots: usize, slot_size: usize) -> RecvBatch {
        let slots = slots.clamp(1, MAX_BATCH);
        let slot_size = slot_size.clamp(1, 65_535);
        RecvBatch {
            buf: vec![0; slots * slot_size],
            slot_size,
            // SAFETY: sockaddr_storage is plain old data; all zeros is valid.
            addrs: vec![unsafe { zeroed() }; slots],
            ctrl: vec![[0; CTRL_WORDS]; slots],
            meta: Vec::with_capacity(slots),
        }
    }

    /// Slots filled by the last receive.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Slot `i` of the last receive.
    pub fn get(&self, i: usize) -> Option<(RecvMeta, &[u8])> {
        let m = *self.meta.get(i)?;
        let start = i * self.slot_size;
        Some((m, &self.buf[start..start + m.len]))
    }

    /// The filled slots, as received (a slot may hold several coalesced datagrams).
    pub fn iter(&self) -> impl Iterator<Item = (RecvMeta, &[u8])> + '_ {
        (0..self.meta.len()).filter_map(move |i| self.get(i))
    }

    /// Every datagram of the last receive, coalesced runs split by their stride.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.iter().flat_map(|(m, data)| {
            let stride = if m.stride == 0 {
                data.len().max(1)
            } else {
                m.stride
            };
            data.chunks(stride).map(move |c| (m.src, c))
        })
    }
}

/// A non-blocking UDP socket with batched, offloaded I/O.
#[derive(Debug)]
pub struct UdpSocket {
    sock: socket2::Socket,
    v6: bool,
    gso: AtomicBool,
    gro: bool,
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: valid pointer to an int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: valid pointers to an int and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut value as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

fn to_storage(addr: SocketAddr, v6: bool) -> (libc::sockaddr_storage, libc::socklen_t) {
    let addr = match (addr, v6) {
        (SocketAddr::V4(a), true) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        (a, _) => a,
    };
    let sa = socket2::SockAddr::from(addr);
    // SAFETY: sockaddr_storage is plain old data; the copy is at most its size.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = (sa.len() as usize).min(size_of::<libc::sockaddr_storage>());
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr() as *const u8,
            &mut storage as *mut _ as *mut u8,
            len,
        );
    }
    (storage, len as libc::socklen_t)
}

fn from_storage(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length checked; sockaddr_storage is suitably aligned.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

/// One message of a sendmmsg call: a slice of a transmit, maybe with a GSO size.
#[derive(Clone, Copy)]
struct Msg {
    tx: usize,
    start: usize,
    end: usize,
    seg: Option<u16>,
    /// Last message of its transmit.
    last: bool,
}

impl UdpSocket {
    /// Creates, configures and binds the socket (non-blocking, close-on-exec).
    pub fn bind(cfg: &UdpConfig) -> Result<UdpSocket> {
        let domain = match cfg.bind {
            SocketAddr::V4(_) => socket2::Domain::IPV4,
            SocketAddr::V6(_) => socket2::Domain::IPV6,
        };
        let sock = socket2::Socket::new(
            domain,
            socket2::Type::DGRAM.nonblocking().cloexec(),
            Some(socket2::Protocol::UDP),
        )
        .map_err(|e| Error::io("socket(UDP)", e))?;
        let s = UdpSocket {
            sock,
            v6: cfg.bind.is_ipv6(),
            gso: AtomicBool::new(true),
            gro: false,
        };
        if cfg.reuse_port {
            s.sock
                .set_reuse_port(true)
                .map_err(|e| Error::io("setsockopt(SO_REUSEPORT)", e))?;
        }
        s.set_buffers(cfg.recv_buffer, cfg.send_buffer)?;
        s.set_df(cfg.df)?;
        if let Some(m) = cfg.mark {
            s.set_mark(m)?;
        }
        s.sock
            .bind(&cfg.bind.into())
            .map_err(|e| Error::io(format!("bind UDP socket to {}", cfg.bind), e))?;
        let mut s = s;
        if cfg.gro {
            // Best effort: kernels before 5.0 have no UDP_GRO.
            s.gro = setsockopt_int(s.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        }
        Ok(s)
    }

    /// The bound address (with the actual port if 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.sock
            .local_addr()
            .map_err(|e| Error::io("getsockname", e))?
            .as_socket()
            .ok_or_else(|| Error::InvalidArgument("UDP socket has a non-IP address".into()))
    }

    /// Whether received datagrams may arrive coalesced (UDP_GRO accepted by the kernel).
    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    /// Whether sends still use UDP GSO (off after the kernel refused it once).
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Switches UDP GSO off (or back on) for this socket.
    pub fn set_gso(&self, on: bool) {
        self.gso.store(on, Ordering::Relaxed);
    }

    /// Sets the socket buffers, with SO_*BUFFORCE when permitted (beyond rmem_max/wmem_max).
    /// Returns the sizes the kernel reports (it doubles the value asked for).
    pub fn set_buffers(&self, recv: usize, send: usize) -> Result<(usize, usize)> {
        let fd = self.as_raw_fd();
        let clamp = |v: usize| v.min(i32::MAX as usize / 2) as i32;
        for (force, plain, size, what) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, recv, "SO_RCVBUF"),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, send, "SO_SNDBUF"),
        ] {
            if setsockopt_int(fd, libc::SOL_SOCKET, force, clamp(size)).is_err() {
                setsockopt_int(fd, libc::SOL_SOCKET, plain, clamp(size))
                    .map_err(|e| Error::io(format!("setsockopt({what})"), e))?;
            }
        }
        let r = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)
            .map_err(|e| Error::io("getsockopt(SO_RCVBUF)", e))?;
        let s = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)
            .map_err(|e| Error::io("getsockopt(SO_SNDBUF)", e))?;
        Ok((r.max(0) as usize, s.max(0) as usize))
    }

    /// DF on (IP_PMTUDISC_DO: the kernel never fragments, and a send above the path MTU
    /// fails with EMSGSIZE) or off (IP_PMTUDISC_DONT: the kernel fragments as needed).
    pub fn set_df(&self, df: bool) -> Result<()> {
        set_df_fd(self.as_raw_fd(), self.v6, df)
    }

    /// SO_MARK on everything this socket sends.
    pub fn set_mark(&self, mark: u32) -> Result<()> {
        self.sock
            .set_mark(mark)
            .map_err(|e| Error::io(format!("setsockopt(SO_MARK, {mark:#x})"), e))
    }

    /// Sends one datagram.
    pub fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        let (st, len) = to_storage(dst, self.v6);
        // SAFETY: valid buffer and address pointers with their lengths.
        let rc = unsafe {
            libc::sendto(
                self.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
                &st as *const _ as *const libc::sockaddr,
                len,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Receives one datagram (no GRO splitting: with GRO on, use [`Self::recv_batch`]).
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        // SAFETY: sockaddr_storage is plain old data.
        let mut st: libc::sockaddr_storage = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid buffer and address pointers with their lengths.
        let rc = unsafe {
            libc::recvfrom(
                self.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut st as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let src = from_storage(&st, len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "non-IP source address"))?;
        Ok((rc as usize, src))
    }

    /// Receives up to one batch of datagrams with one `recvmmsg`. Returns how many slots
    /// were filled (also [`RecvBatch::len`]); `WouldBlock` when nothing is waiting.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.meta.clear();
        let slots = batch.addrs.len();
        // SAFETY: iovec/mmsghdr are plain old data; all zeros is valid.
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        let base = batch.buf.as_mut_ptr();
        for i in 0..slots {
            // SAFETY: slot i lies within buf (slots * slot_size bytes).
            iov[i].iov_base = unsafe { base.add(i * batch.slot_size) } as *mut libc::c_void;
            iov[i].iov_len = batch.slot_size;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut batch.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = batch.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = size_of::<[u64; CTRL_WORDS]>() as _;
        }
        let n = loop {
            // SAFETY: every header points at live buffers owned by `batch` / this frame.
            let rc = unsafe {
                libc::recvmmsg(
                    self.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    slots as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for (i, h) in hdrs.iter().enumerate().take(n) {
            let len = (h.msg_len as usize).min(batch.slot_size);
            let Some(src) = from_storage(&batch.addrs[i], h.msg_hdr.msg_namelen) else {
                continue;
            };
            let mut stride = len;
            // SAFETY: the header's control pointer/length were set by the kernel within
            // our buffer; CMSG_* walk only within msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32);
                        if v > 0 {
                            stride = v as usize;
                        }
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            let idx = batch.meta.len();
            if idx != i {
                // Keep slot index == meta index: move the data down.
                let from = i * batch.slot_size;
                batch
                    .buf
                    .copy_within(from..from + len, idx * batch.slot_size);
            }
            batch.meta.push(RecvMeta {
                src,
                len,
                stride,
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(batch.meta.len())
    }

    fn plan(&self, txs: &[Transmit<'_>], from: usize, gso: bool) -> io::Result<Vec<Msg>> {
        let mut msgs = Vec::new();
        for (t, tx) in txs.iter().enumerate().skip(from) {
            let len = tx.contents.len();
            match tx.segment_size {
                Some(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "segment_size 0; use None for a single datagram",
                    ))
                }
                Some(seg) if len > seg => {
                    if gso && seg <= u16::MAX as usize {
                        let per = (MAX_GSO_BYTES / seg).clamp(1, MAX_GSO_SEGMENTS) * seg;
                        let mut start = 0;
                        while start < len {
                            let end = (start + per).min(len);
                            msgs.push(Msg {
                                tx: t,
                                start,
                                end,
                                seg: (end - start > seg).then_some(seg as u16),
                                last: end == len,
                            });
                            start = end;
                        }
                    } else {
                        let mut start = 0;
                        while start < len {
                            let end = (start + seg).min(len);
                            msgs.push(Msg {
                                tx: t,
                                start,
                                end,
                                seg: None,
                                last: end == len,
                            });
                            start = end;
                        }
                    }
                }
                _ => msgs.push(Msg {
                    tx: t,
                    start: 0,
                    end: len,
                    seg: None,
                    last: true,
                }),
            }
        }
        Ok(msgs)
    }

    /// Sends every transmit, batching up to [`MAX_BATCH`] messages per `sendmmsg`.
    /// Runs with a `segment_size` use UDP GSO while the socket allows it and fall back to
    /// one datagram per message (for good) when the kernel refuses with EIO or EINVAL.
    pub fn send_batch(&self, txs: &[Transmit<'_>]) -> std::result::Result<(), SendError> {
        let mut done = 0; // transmits completely sent
        'replan: loop {
            if done == txs.len() {
                return Ok(());
            }
            let gso = self.gso_enabled();
            let msgs = self
                .plan(txs, done, gso)
                .map_err(|error| SendError { sent: done, error })?;
            let mut next = 0;
            while next < msgs.len() {
                let chunk = &msgs[next..msgs.len().min(next + MAX_BATCH)];
                match self.sendmmsg(txs, chunk) {
                    Ok(n) => {
                        for m in &chunk[..n] {
                            if m.last {
                                done = m.tx + 1;
                            }
                        }
                        next += n;
                    }
                    Err(e) => {
                        let failed = chunk[0];
                        let refused =
                            matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL));
                        if let (Some(seg), true) = (failed.seg, refused) {
                            // Refused GSO: see whether a plain datagram goes out. If it does
                            // not either (say EMSGSIZE), that is the real error and GSO stays.
                            let tx = &txs[failed.tx];
                            let first = failed.start + usize::from(seg);
                            self.send_to(&tx.contents[failed.start..first], tx.dst)
                                .map_err(|error| SendError { sent: done, error })?;
                            self.set_gso(false);
                            self.finish_run(
                                txs,
                                Msg {
                                    start: first,
                                    ..failed
                                },
                            )
                            .map_err(|error| SendError { sent: done, error })?;
                            done = failed.tx + 1;
                            continue 'replan;
                        }
                        if e.kind() == io::ErrorKind::WouldBlock && failed.start > 0 {
                            // Never leave a run half-sent: wait for room and finish it.
                            self.finish_run(txs, failed)
                                .map_err(|error| SendError { sent: done, error })?;
                            done = failed.tx + 1;
                            continue 'replan;
                        }
                        return Err(SendError {
                            sent: done,
                            error: e,
                        });
                    }
                }
            }
            return Ok(());
        }
    }

    /// Sends the rest of a run (from `m.start`) datagram by datagram, waiting for socket
    /// space when needed. Only used when a run was interrupted half-way.
    fn finish_run(&self, txs: &[Transmit<'_>], m: Msg) -> io::Result<()> {
        let tx = &txs[m.tx];
        let seg = tx.segment_size.unwrap_or(usize::MAX).max(1);
        let mut start = m.start;
        while start < tx.contents.len() {
            let end = start.saturating_add(seg).min(tx.contents.len());
            match self.send_to(&tx.contents[start..end], tx.dst) {
                Ok(_) => start = end,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_writable(self.as_raw_fd())?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sendmmsg(&self, txs: &[Transmit<'_>], chunk: &[Msg]) -> io::Result<usize> {
        let n = chunk.len().min(MAX_BATCH);
        // SAFETY: plain old data; all zeros is valid.
        let mut addrs: [libc::sockaddr_storage; MAX_BATCH] = unsafe { zeroed() };
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        let mut ctrl = [[0u64; CTRL_WORDS]; MAX_BATCH];
        for (i, m) in chunk.iter().take(n).enumerate() {
            let tx = &txs[m.tx];
            let (st, len) = to_storage(tx.dst, self.v6);
            addrs[i] = st;
            let data = &tx.contents[m.start..m.end];
            iov[i].iov_base = data.as_ptr() as *mut libc::c_void;
            iov[i].iov_len = data.len();
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = len;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            if let Some(seg) = m.seg {
                h.msg_control = ctrl[i].as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE of a u16 fits the 32-byte control buffer.
                unsafe {
                    h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
                }
            }
        }
        loop {
            // SAFETY: headers point at buffers that live for this call.
            let rc = unsafe {
                libc::sendmmsg(self.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0)
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn wait_writable(fd: RawFd) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, 1000) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn set_df_fd(fd: RawFd, v6: bool, df: bool) -> Result<()> {
    let (v4val, v6val) = if df {
        (libc::IP_PMTUDISC_DO, libc::IPV6_PMTUDISC_DO)
    } else {
        (libc::IP_PMTUDISC_DONT, libc::IPV6_PMTUDISC_DONT)
    };
    if v6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, v6val)
            .map_err(|e| Error::io("setsockopt(IPV6_MTU_DISCOVER)", e))?;
        // A dual-stack socket also sends IPv4: set both (IPv4 may fail on v6-only sockets).
        let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v4val);
        Ok(())
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v4val)
            .map_err(|e| Error::io("setsockopt(IP_MTU_DISCOVER)", e))
    }
}

/// The kernel's current path MTU towards `dst` (the route's MTU, or a smaller one learned
/// from ICMP "fragmentation needed"), read with IP_MTU on a throwaway connected socket.
pub fn path_mtu(dst: IpAddr) -> Result<u32> {
    let (domain, v6) = match dst {
        IpAddr::V4(_) => (socket2::Domain::IPV4, false),
        IpAddr::V6(_) => (socket2::Domain::IPV6, true),
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM.cloexec(), None)
        .map_err(|e| Error::io("socket(UDP) for the path MTU", e))?;
    set_df_fd(sock.as_raw_fd(), v6, true)?;
    sock.connect(&SocketAddr::new(dst, 9).into())
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => {
                Error::NotFound(format!("a route to {dst} (path MTU lookup): {e}"))
            }
            _ => Error::io(format!("connect to {dst} for the path MTU"), e),
        })?;
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mtu = getsockopt_int(sock.as_raw_fd(), level, name)
        .map_err(|e| Error::io(format!("getsockopt(IP_MTU) towards {dst}"), e))?;
    u32::try_from(mtu).map_err(|_| Error::Protocol {
        op: format!("path MTU towards {dst}"),
        detail: format!("kernel returned {mtu}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_roundtrip_through_storage() {
        for a in [
            "192.0.2.1:6783".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:6783".parse().unwrap(),
        ] {
            let (st, len) = to_storage(a, a.is_ipv6());
            assert_eq!(from_storage(&st, len), Some(a));
        }
        // v4 through a dual-stack socket: mapped, and unmapped again.
        let a: SocketAddr = "192.0.2.1:6783".parse().unwrap();
        let (st, len) = to_storage(a, true);
        assert_eq!(st.ss_family as i32, libc::AF_INET6);
        assert_eq!(from_storage(&st, len), Some(a));
        // Short lengths or unknown families are refused, not misread.
        assert_eq!(from_storage(&st, 4), None);
        // SAFETY: plain old data.
        let zero: libc::sockaddr_storage = unsafe { zeroed() };
        assert_eq!(from_storage(&zero, 128), None);
    }

    fn sock() -> UdpSocket {
        // Unbound socket object for planning only.
        UdpSocket {
            sock: socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap(),
            v6: false,
            gso: AtomicBool::new(true),
            gro: false,
        }
    }

    #[test]
    fn planning_splits_runs() {
        let s = sock();
        let data = vec![0u8; 100_000];
        let dst: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let txs = [
            Transmit {
                dst,
                contents: &data[..10],
                segment_size: None,
            },
            Transmit {
                dst,
                contents: &data,
                segment_size: Some(1000),
            },
            Transmit {
                dst,
                contents: &data[..500],
                segment_size: Some(1000),
            },
        ];
        let msgs = s.plan(&txs, 0, true).unwrap();
        // 100 segments of 1000 -> two GSO messages of 64 and 36 segments.
        assert_eq!(msgs.len(), 4);
        assert_eq!(
            (msgs[1].start, msgs[1].end, msgs[1].seg),
            (0, 64_000, Some(1000))
        );
        assert_eq!((msgs[2].start, msgs[2].end), (64_000, 100_000));
        assert!(!msgs[1].last && msgs[2].last);
        assert_eq!(msgs[3].seg, None);
        let plain = s.plan(&txs, 1, false).unwrap();
        assert_eq!(plain.len(), 101);
        assert!(plain
            .iter()
            .all(|m| m.seg.is_none() && m.end - m.start <= 1000));
        let zero = [Transmit {
            dst,
            contents: &data[..10],
            segment_size: Some(0),
        }];
        assert!(s.plan(&zero, 0, true).is_err());
    }

    #[test]
    fn recv_batch_accessors_are_bounded() {
        let b = RecvBatch::new(1000, 10);
        assert_eq!(b.addrs.len(), MAX_BATCH);
        assert!(b.is_empty());
        assert!(b.get(0).is_none());
        assert_eq!(b.datagrams().count(), 0);
    }
}
