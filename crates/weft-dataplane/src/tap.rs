//! The sleeve's TAP device: how frames of the `weave` bridge reach userspace.
//!
//! The device is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (and optionally
//! `IFF_MULTI_QUEUE`), its virtio-net header size is set to [`VNET_HDR_LEN`] (10 bytes,
//! `struct virtio_net_hdr`), and the offloads CSUM, TSO4, TSO6 (plus USO4/USO6 on kernels
//! from 6.2) are switched on with TUNSETOFFLOAD. The bridge then hands over TCP streams as
//! frames of up to 64 KiB with partial checksums, one read each, instead of one read per
//! MTU-sized frame: that batching is what makes the sleeve fast. Split them with
//! [`crate::gso::gso_split`] before encapsulation.
//!
//! Every read returns `[virtio_net_hdr][ethernet frame]`; every write must carry a header
//! too ([`Tap::write_frame`] prepends a zeroed one). The descriptor is non-blocking and
//! close-on-exec; the device disappears when the last queue is closed.

use crate::gso::{VirtioNetHdr, VNET_HDR_LEN};
use crate::netlink::{validate_ifname, Netlink};
use crate::{Error, Result};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub use crate::gso::{complete_checksum, gso_split, GsoError, Segments, TcpCoalescer};

const TUN_PATH: &str = "/dev/net/tun";

/// How to set up the TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// Interface name, e.g. `vethwe-sleeve`; a `%d` lets the kernel number it.
    pub name: String,
    /// IFF_MULTI_QUEUE: more queues can be opened with [`Tap::open_queue`].
    pub multi_queue: bool,
    /// Turn on CSUM/TSO/USO offloads (large frames with partial checksums). Off: every
    /// frame read is MTU-sized with complete checksums (the header is still present).
    pub offloads: bool,
    pub mtu: Option<u32>,
    /// Bridge to attach to (as an isolated port when `isolated`).
    pub bridge: Option<u32>,
    pub isolated: bool,
}

impl TapConfig {
    /// Offloads on, single queue, isolated port of `bridge`.
    pub fn new(name: &str, bridge: Option<u32>) -> TapConfig {
        TapConfig {
            name: name.to_string(),
            multi_queue: false,
            offloads: true,
            mtu: None,
            bridge,
            isolated: true,
        }
    }
}

/// Which offloads the kernel accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    pub csum: bool,
    pub tso: bool,
    pub uso: bool,
}

/// An open TAP queue.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    index: u32,
    flags: i16,
    offloads: Offloads,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ioctl_err(what: &str) -> Error {
    Error::io(what, io::Error::last_os_error())
}

fn open_queue(name: &str, flags: i16) -> Result<(OwnedFd, String)> {
    let path = CString::new(TUN_PATH).expect("no NUL in a constant");
    // SAFETY: valid C string.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) => Error::NotFound(format!(
                "{TUN_PATH} ({e}); load the tun module (modprobe tun) or create the device node"
            )),
            _ => Error::io(format!("open {TUN_PATH}"), e),
        });
    }
    // SAFETY: we own the descriptor just opened.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: valid fd and a properly sized ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => Error::Exists(format!(
                "TAP device {name:?} with other flags, or a non-TAP device of that name"
            )),
            Some(libc::EINVAL) => Error::InvalidArgument(format!(
                "TUNSETIFF {name:?} refused ({e}): a device of that name exists and is not a \
                 TAP, or its flags (multi-queue, vnet_hdr) differ; delete it"
            )),
            _ => Error::io(format!("ioctl(TUNSETIFF, {name:?})"), e),
        });
    }
    let end = req
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(req.name.len());
    let actual = String::from_utf8_lossy(&req.name[..end]).into_owned();
    let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: valid fd and pointer to an int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        return Err(ioctl_err("ioctl(TUNSETVNETHDRSZ, 10)"));
    }
    Ok((fd, actual))
}

fn set_offloads(fd: RawFd, on: bool) -> Result<Offloads> {
    if !on {
        // SAFETY: valid fd; TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            return Err(ioctl_err("ioctl(TUNSETOFFLOAD, 0)"));
        }
        return Ok(Offloads::default());
    }
    let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    let with_uso = base | libc::TUN_F_USO4 | libc::TUN_F_USO6;
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, with_uso as libc::c_ulong) } == 0 {
        return Ok(Offloads {
            csum: true,
            tso: true,
            uso: true,
        });
    }
    // Kernels before 6.2 know no USO.
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, base as libc::c_ulong) } == 0 {
        return Ok(Offloads {
            csum: true,
            tso: true,
            uso: false,
        });
    }
    Err(ioctl_err("ioctl(TUNSETOFFLOAD, CSUM|TSO4|TSO6)"))
}

impl Tap {
    /// Creates (or attaches to) the TAP device, sets offloads and the header size, then
    /// MTU, bridge port (isolated) and up through `nl`, which must belong to the calling
    /// thread's network namespace (the TAP is created in the thread's netns).
    pub fn create(nl: &mut Netlink, cfg: &TapConfig) -> Result<Tap> {
        let numbered = cfg.name.contains("%d");
        if numbered {
            if cfg.name.is_empty() || cfg.name.len() >= libc::IFNAMSIZ || cfg.name.contains('/') {
                return Err(Error::InvalidArgument(format!(
                    "invalid TAP name pattern {:?}",
                    cfg.name
                )));
            }
        } else {
            validate_ifname(&cfg.name)?;
        }
        if !nl.in_current_netns() {
            return Err(Error::InvalidArgument(format!(
                "Tap::create({:?}): the netlink socket belongs to another network namespace than the calling thread",
                cfg.name
            )));
        }
        let mut flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        if cfg.multi_queue {
            flags |= libc::IFF_MULTI_QUEUE as i16;
        }
        let (fd, name) = open_queue(&cfg.name, flags)?;
        let offloads = set_offloads(fd.as_raw_fd(), cfg.offloads)?;
        let link = nl.link_by_name(&name)?.ok_or_else(|| {
            Error::NotFound(format!("TAP device {name:?} right after creating it"))
        })?;
        if let Some(mtu) = cfg.mtu {
            nl.set_mtu(link.index, mtu)?;
        }
        if let Some(br) = cfg.bridge {
            if link.master != Some(br) {
                nl.set_master(link.index, Some(br))?;
            }
            nl.set_port_isolated(link.index, cfg.isolated)?;
        }
        if !link.up {
            nl.set_up(link.index)?;
        }
        Ok(Tap {
            fd,
            name,
            index: link.index,
            flags,
            offloads,
        })
    }

    /// Opens one more queue of a multi-queue device (same offloads); each queue has its
    /// own descriptor, and the kernel spreads flows over them.
    pub fn open_queue(&self) -> Result<Tap> {
        if self.flags & libc::IFF_MULTI_QUEUE as i16 == 0 {
            return Err(Error::InvalidArgument(format!(
                "TAP {:?} was created without multi_queue",
                self.name
            )));
        }
        let (fd, name) = open_queue(&self.name, self.flags)?;
        let offloads = set_offloads(fd.as_raw_fd(), self.offloads.tso)?;
        Ok(Tap {
            fd,
            name,
            index: self.index,
            flags: self.flags,
            offloads,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Reads one `[virtio_net_hdr][frame]`; `WouldBlock` when nothing is queued. Use a
    /// buffer of at least `VNET_HDR_LEN + 65535` bytes when offloads are on.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: valid buffer pointer and length.
            let rc = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
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

    /// Reads one frame and parses its header: returns the header and the frame's length;
    /// the frame is `buf[VNET_HDR_LEN..VNET_HDR_LEN + len]`.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<(VirtioNetHdr, usize)> {
        let n = self.read(buf)?;
        let hdr = VirtioNetHdr::parse(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok((hdr, n - VNET_HDR_LEN))
    }

    /// Reads frames until `WouldBlock` or `max` frames, each into its own buffer of `bufs`
    /// (grown to 64 KiB + header when smaller); `lens[i]` gets the byte count of `bufs[i]`.
    /// Returns the number read (0 when nothing was queued).
    pub fn read_batch(&self, bufs: &mut [Vec<u8>], lens: &mut Vec<usize>) -> io::Result<usize> {
        lens.clear();
        for b in bufs.iter_mut() {
            if b.len() < VNET_HDR_LEN + 65535 {
                b.resize(VNET_HDR_LEN + 65535, 0);
            }
            match self.read(b) {
                Ok(n) => lens.push(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if lens.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(lens.len())
    }

    /// Writes raw bytes, which must start with a virtio-net header.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: valid buffer pointer and length.
            let rc = unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    buf.as_ptr() as *const libc::c_void,
                    buf.len(),
                )
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

    /// Writes one frame behind the given header (one `writev`, no copy). A header with
    /// GSO fields lets the kernel take a coalesced TCP/UDP super-frame.
    pub fn write_with_hdr(&self, hdr: &VirtioNetHdr, frame: &[u8]) -> io::Result<()> {
        let h = hdr.to_bytes();
        let iov = [
            libc::iovec {
                iov_base: h.as_ptr() as *mut libc::c_void,
                iov_len: h.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        loop {
            // SAFETY: two valid iovecs.
            let rc = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if rc >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one plain Ethernet frame (zeroed virtio-net header: complete checksums, no GSO).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        self.write_with_hdr(&VirtioNetHdr::default(), frame)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
