//! Network namespaces: open, create/remove named ones (like `ip netns`), run code inside.
//!
//! Nothing here forks or switches the netns of a thread it does not own, except
//! [`NetNs::enter`], which is meant for single-threaded code.

use crate::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where named network namespaces live (iproute2's NETNS_RUN_DIR).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// ioctl(NS_GET_NSTYPE) = _IO(0xb7, 0x3).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    fd: OwnedFd,
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.contains('/')
        || name.contains('\0')
    {
        return Err(Error::InvalidArgument(format!(
            "invalid netns name {name:?}: must be 1-255 bytes without '/' or NUL and not '.' or '..'"
        )));
    }
    Ok(())
}

fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Makes NETNS_RUN_DIR a shared mount point, as iproute2 does, so that netns
/// bind mounts propagate to other mount namespaces (and can be unmounted from them).
fn ensure_run_dir() -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NETNS_RUN_DIR)
        .map_err(|e| Error::io(format!("create {NETNS_RUN_DIR}"), e))?;
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(
        None::<&str>,
        NETNS_RUN_DIR,
        Some("none"),
        flags,
        None::<&str>,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then make it shared.
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::errno(format!("bind-mount {NETNS_RUN_DIR} onto itself"), e))?;
            mount(
                None::<&str>,
                NETNS_RUN_DIR,
                Some("none"),
                flags,
                None::<&str>,
            )
            .map_err(|e| Error::errno(format!("make {NETNS_RUN_DIR} a shared mount"), e))
        }
        Err(e) => Err(Error::errno(
            format!("make {NETNS_RUN_DIR} a shared mount"),
            e,
        )),
    }
}

/// Runs `f` on a fresh scoped thread and maps a panic to [`Error::Thread`].
fn on_fresh_thread<R: Send, F: FnOnce() -> Result<R> + Send>(what: &str, f: F) -> Result<R> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("weft-netns".into())
            .spawn_scoped(s, f)
            .map_err(|e| Error::Thread(format!("cannot spawn a thread to {what}: {e}")))?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                Err(Error::Thread(format!(
                    "the thread to {what} panicked: {msg}"
                )))
            }
        }
    })
}

impl NetNs {
    /// Opens a netns handle: a bind-mounted `/run/netns/x` or `/proc/<pid>/ns/net`.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => {
                    Error::NotFound(format!("network namespace {}", path.display()))
                }
                _ => Error::io(format!("open network namespace {}", path.display()), e),
            })?;
        // SAFETY: valid fd; NS_GET_NSTYPE takes no argument.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind < 0 {
            let e = io::Error::last_os_error();
            return Err(Error::InvalidArgument(format!(
                "{} is not a namespace file ({e}); pass /run/netns/NAME or /proc/PID/ns/net",
                path.display()
            )));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(Error::InvalidArgument(format!(
                "{} is a namespace but not a network namespace",
                path.display()
            )));
        }
        Ok(NetNs {
            path: path.to_path_buf(),
            fd: OwnedFd::from(file),
        })
    }

    /// The network namespace of the calling thread (`/proc/thread-self/ns/net`).
    /// The handle stays valid on any thread; only its `path()` is thread-relative.
    pub fn current() -> Result<NetNs> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    /// Creates a new, empty network namespace bound at `/run/netns/NAME`, like
    /// `ip netns add NAME`. `Error::Exists` if that name is taken.
    pub fn create_named(name: &str) -> Result<NetNs> {
        validate_name(name)?;
        ensure_run_dir()?;
        let path = named_path(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => drop(f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(format!(
                    "network namespace {}",
                    path.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("create {}", path.display()), e)),
        }
        let target = path.clone();
        let bound = on_fresh_thread("create a network namespace", move || {
            // This thread is private to us: unshare its netns, pin it with a bind
            // mount, and let the thread die.
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::errno("unshare(CLONE_NEWNET)", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::errno(format!("bind-mount new netns on {}", target.display()), e))
        });
        if let Err(e) = bound {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        NetNs::open(&path).inspect_err(|_| {
            let _ = NetNs::remove_named(name);
        })
    }

    /// Removes `/run/netns/NAME` (lazy unmount + unlink), like `ip netns delete`.
    /// The namespace itself lives on while something still uses it. Ok if absent.
    pub fn remove_named(name: &str) -> Result<()> {
        validate_name(name)?;
        let path = named_path(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (e.g. a half-created entry).
            Ok(()) | Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(Error::errno(format!("unmount {}", path.display()), e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace file descriptor (for `setns`, `IFLA_NET_NS_FD`, ...).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True when both handles refer to the same namespace (same device and inode).
    pub fn is_same(&self, other: &NetNs) -> Result<bool> {
        let a = nix::sys::stat::fstat(self.fd.as_fd())
            .map_err(|e| Error::errno(format!("fstat {}", self.path.display()), e))?;
        let b = nix::sys::stat::fstat(other.fd.as_fd())
            .map_err(|e| Error::errno(format!("fstat {}", other.path.display()), e))?;
        Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }

    /// Runs `f` on a fresh std::thread that has joined this netns; never touches
    /// the caller's thread. A panic in `f` becomes [`Error::Thread`].
    pub fn run<R: Send, F: FnOnce() -> Result<R> + Send>(&self, f: F) -> Result<R> {
        let fd = self.fd.as_fd();
        let path = &self.path;
        on_fresh_thread(&format!("run in netns {}", path.display()), move || {
            setns(fd, CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::errno(format!("setns({})", path.display()), e))?;
            f()
        })
    }

    /// setns(2) the *calling* thread. Only for single-threaded code (e.g. a child
    /// before exec); multi-threaded code should use [`NetNs::run`].
    pub fn enter(&self) -> Result<()> {
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::errno(format!("setns({})", self.path.display()), e))
    }

    /// Inode number of the namespace (as shown by `ip netns identify`/`lsns`).
    pub fn inode(&self) -> Result<u64> {
        nix::sys::stat::fstat(self.fd.as_fd())
            .map(|st| st.st_ino)
            .map_err(|e| Error::errno(format!("fstat {}", self.path.display()), e))
    }
}

/// RAII guard: a named netns removed on Drop (for tests and the lab).
#[derive(Debug)]
pub struct NamedNetNs {
    ns: NetNs,
    name: String,
}

impl NamedNetNs {
    /// Creates `/run/netns/NAME` (see [`NetNs::create_named`]).
    pub fn create(name: &str) -> Result<NamedNetNs> {
        let ns = NetNs::create_named(name)?;
        Ok(NamedNetNs {
            ns,
            name: name.to_string(),
        })
    }

    /// The namespace handle.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// The name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NamedNetNs {
    fn drop(&mut self) {
        let _ = NetNs::remove_named(&self.name);
    }
}
