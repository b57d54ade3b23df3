use std::path::PathBuf;

/// Errors from building, running or tearing down a lab.
///
/// Messages carry their cause inline (there is no `source()` chain to print separately).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something the lab cannot build.
    #[error("invalid lab configuration: {0}")]
    Config(String),
    /// A kernel operation (netns, netlink) failed.
    #[error("{what}: {cause}")]
    Dataplane {
        what: String,
        cause: weft_dataplane::Error,
    },
    /// A file, process or socket operation failed.
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    /// A router did not answer `GET /status` with 200 in time.
    #[error("router {host} did not become ready within {secs}s ({why}); last lines of {}:\n{tail}", .log.display())]
    RouterNotReady {
        host: String,
        secs: u64,
        why: String,
        log: PathBuf,
        tail: String,
    },
    /// A router process exited while we waited for it.
    #[error("router {host} exited during startup ({status}); last lines of {}:\n{tail}", .log.display())]
    RouterExited {
        host: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    /// The CNI plugin reported a failure (its JSON error message is in `msg`).
    #[error("CNI {command} of pod {pod} failed ({status}): {msg}")]
    Cni {
        command: &'static str,
        pod: String,
        status: String,
        /// The CNI error code, when the plugin printed an error object.
        code: Option<u64>,
        msg: String,
    },
    /// An HTTP exchange with a router over its unix socket failed.
    #[error(transparent)]
    Http(#[from] weft_http::HttpError),
    /// SIGINT/SIGTERM arrived while the lab was being built.
    #[error("interrupted by signal while {0}; the lab was torn down")]
    Interrupted(String),
    /// `--check`: some pod pairs could not reach each other.
    #[error("{failed} of {total} pod pairs unreachable (see the matrix above)")]
    CheckFailed { failed: usize, total: usize },
    /// `--check --expect-overlay`: some connection was not up or not carried by that overlay.
    #[error("not every connection is established over {expected}: {summary} (see the connections above)")]
    OverlayCheckFailed { expected: String, summary: String },
    /// Teardown left something behind or a CNI DEL failed.
    #[error("teardown had {} problem(s): {}", .0.len(), .0.join("; "))]
    Teardown(Vec<String>),
    /// Asked for a host or pod the lab does not have.
    #[error("{0}")]
    NoSuch(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, weft_dataplane::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|cause| Error::Dataplane {
            what: what(),
            cause,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|cause| Error::Io {
            what: what(),
            cause,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, nix::errno::Errno> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Io {
            what: what(),
            cause: std::io::Error::from(e),
        })
    }
}
