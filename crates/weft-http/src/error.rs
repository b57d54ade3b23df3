//! The one error type of this crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in one exchange. Every variant names the socket and the request
/// (`"GET /status"`), so the message alone tells the user where to look.
///
/// Messages carry their cause inline (the `cause` fields are not a `source()` chain, so that
/// printing the chain does not repeat them).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request itself cannot be sent (bad method, path or header value, socket path too long,
    /// body not encodable). Nothing was sent; retrying will not help.
    #[error("invalid request {request} for {}: {detail}", .socket.display())]
    InvalidRequest {
        /// Socket path.
        socket: PathBuf,
        /// `METHOD target`.
        request: String,
        /// What is wrong.
        detail: String,
    },
    /// Could not connect: no socket file, nobody listening, or no permission.
    #[error("{request}: cannot connect to {}: {cause}{}", .socket.display(), connect_hint(.cause))]
    Connect {
        /// Socket path.
        socket: PathBuf,
        /// `METHOD target`.
        request: String,
        /// The OS error.
        cause: io::Error,
    },
    /// The overall deadline passed before the exchange completed.
    #[error("{request} on {}: no complete answer within {after:?} (timed out while {during}); the server is busy or hung", .socket.display())]
    Timeout {
        /// Socket path.
        socket: PathBuf,
        /// `METHOD target`.
        request: String,
        /// What we were doing.
        during: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// Reading or writing failed (including the connection closing early).
    #[error("{request} on {}: I/O error while {during}: {cause}", .socket.display())]
    Io {
        /// Socket path.
        socket: PathBuf,
        /// `METHOD target`.
        request: String,
        /// What we were doing.
        during: &'static str,
        /// The OS error (`UnexpectedEof` when the peer closed too early).
        cause: io::Error,
    },
    /// The peer did not answer with well-formed HTTP/1.x, or exceeded a size limit.
    #[error("{request} on {}: malformed HTTP response: {detail}; is this the weft router's socket?", .socket.display())]
    Protocol {
        /// Socket path.
        socket: PathBuf,
        /// `METHOD target`.
        request: String,
        /// What was wrong.
        detail: String,
    },
    /// The server answered with a non-2xx status where success was required
    /// (see [`crate::UnixHttp::expect_success`]).
    #[error("{request} on {}: server answered {status} {reason}: {body}", .socket.display())]
    Status {
        /// Socket path.
        socket: PathBuf,
        /// `METHOD target`.
        request: String,
        /// Status code.
        status: u16,
        /// Reason phrase.
        reason: String,
        /// The start of the body, as text.
        body: String,
    },
    /// The answer's body is not the JSON the caller expected.
    #[error("{request} on {}: the answer is not the expected JSON: {cause}", .socket.display())]
    Json {
        /// Socket path.
        socket: PathBuf,
        /// `METHOD target`.
        request: String,
        /// The decoding error.
        cause: serde_json::Error,
    },
}

fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => " (the socket does not exist: is the weft router running?)",
        io::ErrorKind::ConnectionRefused => {
            " (nobody is listening on the socket: is the weft router running?)"
        }
        io::ErrorKind::PermissionDenied => " (run as root or fix the socket's permissions)",
        _ => "",
    }
}

impl HttpError {
    /// True for failures that mean "the server is not there (yet)" and are worth retrying later:
    /// connect errors, timeouts, and a connection dropped or reset before the answer was complete.
    /// False for invalid requests, malformed answers, error statuses and bad JSON.
    pub fn is_unreachable(&self) -> bool {
        match self {
            HttpError::Connect { .. } | HttpError::Timeout { .. } => true,
            HttpError::Io { cause, .. } => matches!(
                cause.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            HttpError::InvalidRequest { .. }
            | HttpError::Protocol { .. }
            | HttpError::Status { .. }
            | HttpError::Json { .. } => false,
        }
    }

    /// True when the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, HttpError::Timeout { .. })
    }

    /// The status code of a [`HttpError::Status`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The socket path the failed exchange was for.
    pub fn socket(&self) -> &std::path::Path {
        match self {
            HttpError::InvalidRequest { socket, .. }
            | HttpError::Connect { socket, .. }
            | HttpError::Timeout { socket, .. }
            | HttpError::Io { socket, .. }
            | HttpError::Protocol { socket, .. }
            | HttpError::Status { socket, .. }
            | HttpError::Json { socket, .. } => socket,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = HttpError> = std::result::Result<T, E>;
