use std::io;

/// Errors from kernel access. Messages say what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object (link, address, route, netns) already exists.
    #[error("{0} already exists (EEXIST); delete it first, or adopt the existing one")]
    Exists(String),
    /// The object does not exist.
    #[error("{0} not found (ENODEV/ENOENT); check the name/index and the network namespace")]
    NotFound(String),
    /// A link with the requested name exists but is of a different kind.
    #[error("link {name:?} exists but is of kind {kind}, not {expected}; delete it (ip link del {name}) or choose another name")]
    WrongKind {
        name: String,
        kind: String,
        expected: String,
    },
    /// The kernel answered a netlink request with an error.
    #[error("netlink {op} failed: {source} (errno {errno}){}{hint}", kmsg(.kernel_msg))]
    Netlink {
        op: String,
        errno: i32,
        source: io::Error,
        /// The kernel's extended-ack message, if it sent one (may be empty).
        kernel_msg: String,
        hint: &'static str,
    },
    /// A system call failed.
    #[error("{op} failed: {source} (errno {}){}", .source.raw_os_error().unwrap_or(0), perm_hint(.source))]
    Io { op: String, source: io::Error },
    /// The kernel sent something we could not understand.
    #[error(
        "unexpected netlink reply during {op}: {detail}; this is a bug or an unsupported kernel"
    )]
    Protocol { op: String, detail: String },
    /// The caller passed something invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A helper thread (for running in another netns) panicked or could not be spawned.
    #[error("netns worker thread failed: {0}")]
    Thread(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn kmsg(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(" [kernel: {m}]")
    }
}

fn perm_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; this needs root (CAP_NET_ADMIN / CAP_SYS_ADMIN)"
        }
        _ => "",
    }
}

impl Error {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn errno(op: impl Into<String>, errno: nix::errno::Errno) -> Error {
        Error::io(op, io::Error::from_raw_os_error(errno as i32))
    }

    pub(crate) fn netlink(op: impl Into<String>, errno: i32) -> Error {
        let hint = match errno {
            libc::EPERM | libc::EACCES => "; this needs root (CAP_NET_ADMIN)",
            libc::EOPNOTSUPP => "; the kernel lacks this feature (module not loaded?)",
            libc::EINVAL => "; the kernel rejected an argument (MTU out of range? operation not valid for this device?)",
            libc::EBUSY => "; the device is busy (is it up or enslaved?)",
            libc::ENETUNREACH => "; the gateway is not reachable through any connected route",
            _ => "",
        };
        Error::Netlink {
            op: op.into(),
            errno,
            source: io::Error::from_raw_os_error(errno),
            kernel_msg: String::new(),
            hint,
        }
    }

    /// The errno behind this error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Exists(_) => Some(libc::EEXIST),
            _ => None,
        }
    }

    /// True for [`Error::Exists`].
    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Exists(_))
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
}
