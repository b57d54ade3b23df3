//! The transport (connect, send, receive under one deadline) and the [`UnixHttp`] client.

use std::io::{self, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::error::{HttpError, Result};
use crate::parse::{self, ParseError, Response, MAX_BODY_BYTES};

/// Timeout of a new [`UnixHttp`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `User-Agent` of a new [`UnixHttp`].
pub const DEFAULT_USER_AGENT: &str = "weft";
/// How much of an error body [`UnixHttp::expect_success`] keeps, in characters.
const MAX_ERROR_BODY_CHARS: usize = 2000;

/// A blocking HTTP/1.1 client for one unix socket. One request per connection
/// (`Connection: close`); each exchange (connect, send, receive) must complete within the
/// client's timeout. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UnixHttp {
    socket: PathBuf,
    timeout: Duration,
    user_agent: String,
    max_body: usize,
}

impl UnixHttp {
    /// A client for `socket` with a 10 s timeout and a 16 MiB body limit.
    pub fn new(socket: impl Into<PathBuf>) -> UnixHttp {
        UnixHttp {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
            user_agent: DEFAULT_USER_AGENT.to_string(),
            max_body: MAX_BODY_BYTES,
        }
    }

    /// Sets the overall deadline of each exchange: connecting, sending and receiving the whole
    /// response.
    pub fn with_timeout(mut self, timeout: Duration) -> UnixHttp {
        self.timeout = timeout;
        self
    }

    /// Sets the `User-Agent` header (checked when a request is sent).
    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> UnixHttp {
        self.user_agent = user_agent.into();
        self
    }

    /// Sets the largest response body accepted (default [`MAX_BODY_BYTES`]).
    pub fn with_max_body(mut self, max_body: usize) -> UnixHttp {
        self.max_body = max_body;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The overall timeout of one exchange.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET target`.
    pub fn get(&self, target: &str) -> Result<Response> {
        self.request("GET", target, None)
    }

    /// `DELETE target`.
    pub fn delete(&self, target: &str) -> Result<Response> {
        self.request("DELETE", target, None)
    }

    /// `POST target` with a body of the given content type.
    pub fn post(&self, target: &str, content_type: &str, body: &[u8]) -> Result<Response> {
        self.request("POST", target, Some((content_type, body)))
    }

    /// `PUT target` with a body of the given content type.
    pub fn put(&self, target: &str, content_type: &str, body: &[u8]) -> Result<Response> {
        self.request("PUT", target, Some((content_type, body)))
    }

    /// `POST target` with `value` as a JSON body.
    pub fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        target: &str,
        value: &T,
    ) -> Result<Response> {
        let body = serde_json::to_vec(value).map_err(|e| {
            self.invalid("POST", target, format!("cannot encode the JSON body: {e}"))
        })?;
        self.post(target, "application/json", &body)
    }

    /// `GET target`, requiring a 2xx answer; returns the body as text (invalid UTF-8 replaced).
    pub fn get_text(&self, target: &str) -> Result<String> {
        let resp = self.get(target)?;
        self.expect_success("GET", target, resp).map(|r| r.text())
    }

    /// `GET target`, requiring a 2xx answer whose body is JSON of type `T`.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, target: &str) -> Result<T> {
        let resp = self.get(target)?;
        let resp = self.expect_success("GET", target, resp)?;
        resp.json().map_err(|cause| HttpError::Json {
            socket: self.socket.clone(),
            request: format!("GET {target}"),
            cause,
        })
    }

    /// Passes a 2xx response through; turns any other into [`HttpError::Status`] with the
    /// status and (the start of) the body.
    pub fn expect_success(&self, method: &str, target: &str, resp: Response) -> Result<Response> {
        if resp.is_success() {
            return Ok(resp);
        }
        let text = resp.text();
        let mut body: String = text.trim().chars().take(MAX_ERROR_BODY_CHARS).collect();
        if body.len() < text.trim().len() {
            body.push('…');
        }
        Err(HttpError::Status {
            socket: self.socket.clone(),
            request: format!("{method} {target}"),
            status: resp.status,
            reason: resp.reason,
            body,
        })
    }

    /// Sends one request and reads the whole response (of any status). `body` is the content
    /// type and the bytes; `Content-Length` is sent with a body and for POST, PUT and PATCH.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response> {
        let head = self
            .request_head(method, target, body)
            .map_err(|d| self.invalid(method, target, d))?;
        let ex = Exchange {
            socket: &self.socket,
            request: format!("{method} {target}"),
            timeout: self.timeout,
            deadline: deadline_after(self.timeout),
        };
        let stream = ex.connect()?;
        let sent = ex
            .send(&stream, head.as_bytes())
            .and_then(|()| ex.send(&stream, body.map_or(&[][..], |(_, b)| b)));
        match sent {
            Ok(()) => ex.receive(&stream, method == "HEAD", self.max_body),
            // The server may have answered (say, 413 or 503) and closed without reading the
            // whole request: prefer its answer to our write error.
            Err(e) if closed_by_peer(&e) => ex
                .receive(&stream, method == "HEAD", self.max_body)
                .map_err(|_| e),
            Err(e) => Err(e),
        }
    }

    fn request_head(
        &self,
        method: &str,
        target: &str,
        body: Option<(&str, &[u8])>,
    ) -> std::result::Result<String, String> {
        if method.is_empty() || method.len() > 32 || !method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(format!(
                "invalid method {method:?}: use upper-case letters only"
            ));
        }
        if !target.starts_with('/') {
            return Err(format!(
                "invalid request path {target:?}: it must start with '/'"
            ));
        }
        if !target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "invalid request path {target:?}: spaces, control and non-ASCII characters must be percent-encoded"
            ));
        }
        check_header_value("User-Agent", &self.user_agent)?;
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {}\r\nAccept: */*\r\nConnection: close\r\n",
            self.user_agent
        );
        match body {
            Some((content_type, bytes)) => {
                check_header_value("Content-Type", content_type)?;
                head.push_str(&format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                    bytes.len()
                ));
            }
            None if matches!(method, "POST" | "PUT" | "PATCH") => {
                head.push_str("Content-Length: 0\r\n");
            }
            None => {}
        }
        head.push_str("\r\n");
        Ok(head)
    }

    fn invalid(&self, method: &str, target: &str, detail: impl Into<String>) -> HttpError {
        HttpError::InvalidRequest {
            socket: self.socket.clone(),
            request: format!("{method} {target}"),
            detail: detail.into(),
        }
    }
}

fn check_header_value(name: &str, value: &str) -> std::result::Result<(), String> {
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "invalid {name} {value:?}: control characters are not allowed"
        ));
    }
    Ok(())
}

fn closed_by_peer(e: &HttpError) -> bool {
    matches!(e, HttpError::Io { cause, .. } if matches!(
        cause.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    ))
}

/// `now + timeout`, saturating for absurdly long timeouts.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(u32::MAX.into())))
        .unwrap_or(now)
}

/// One exchange in progress: what the errors need to say, and the deadline.
struct Exchange<'a> {
    socket: &'a Path,
    request: String,
    timeout: Duration,
    deadline: Instant,
}

impl Exchange<'_> {
    fn timeout_err(&self, during: &'static str) -> HttpError {
        HttpError::Timeout {
            socket: self.socket.to_path_buf(),
            request: self.request.clone(),
            during,
            after: self.timeout,
        }
    }

    fn io_err(&self, during: &'static str, cause: io::Error) -> HttpError {
        if matches!(
            cause.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return self.timeout_err(during);
        }
        HttpError::Io {
            socket: self.socket.to_path_buf(),
            request: self.request.clone(),
            during,
            cause,
        }
    }

    /// Time left before the deadline, or a timeout error.
    fn remaining(&self, during: &'static str) -> Result<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| self.timeout_err(during))
    }

    /// Connects without blocking: a unix socket whose listen backlog is full makes a blocking
    /// connect hang, so we connect non-blocking and retry on EAGAIN until the deadline.
    fn connect(&self) -> Result<UnixStream> {
        let cerr = |cause: io::Error| HttpError::Connect {
            socket: self.socket.to_path_buf(),
            request: self.request.clone(),
            cause,
        };
        let addr = UnixAddr::new(self.socket).map_err(|e| HttpError::InvalidRequest {
            socket: self.socket.to_path_buf(),
            request: self.request.clone(),
            detail: match e {
                Errno::ENAMETOOLONG => format!(
                    "the socket path is {} bytes long; unix socket paths are limited to 107 bytes: use a shorter path",
                    self.socket.as_os_str().len()
                ),
                e => format!("unusable socket path: {e}"),
            },
        })?;
        loop {
            let fd: OwnedFd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .map_err(|e| cerr(e.into()))?;
            match socket::connect(fd.as_raw_fd(), &addr) {
                Ok(()) => {
                    // SAFETY: `into_raw_fd` hands over sole ownership of an open stream socket.
                    let stream = unsafe { UnixStream::from_raw_fd(fd.into_raw_fd()) };
                    stream.set_nonblocking(false).map_err(cerr)?;
                    return Ok(stream);
                }
                Err(Errno::EAGAIN | Errno::EINPROGRESS | Errno::EINTR) => {
                    self.remaining("connecting (the server's listen backlog is full)")?;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(cerr(e.into())),
            }
        }
    }

    /// Writes all of `data` before the deadline (MSG_NOSIGNAL: a closed peer is an error, not a
    /// SIGPIPE).
    fn send(&self, stream: &UnixStream, mut data: &[u8]) -> Result<()> {
        const DURING: &str = "sending the request";
        while !data.is_empty() {
            let rem = self.remaining(DURING)?;
            stream
                .set_write_timeout(Some(rem))
                .map_err(|e| self.io_err(DURING, e))?;
            match socket::send(stream.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL) {
                Ok(0) => return Err(self.io_err(DURING, io::ErrorKind::WriteZero.into())),
                Ok(n) => data = &data[n..],
                Err(Errno::EINTR) => {}
                Err(e) => return Err(self.io_err(DURING, e.into())),
            }
        }
        Ok(())
    }

    /// Reads and parses the whole response before the deadline.
    fn receive(&self, stream: &UnixStream, head_only: bool, max_body: usize) -> Result<Response> {
        let reader = DeadlineReader {
            stream,
            deadline: self.deadline,
        };
        let mut reader = BufReader::with_capacity(16 * 1024, reader);
        parse::read_response(&mut reader, head_only, max_body).map_err(|e| match e {
            ParseError::Io { during, source } => self.io_err(during, source),
            ParseError::Protocol(detail) => HttpError::Protocol {
                socket: self.socket.to_path_buf(),
                request: self.request.clone(),
                detail,
            },
        })
    }
}

/// Reads from the stream, each read bounded by the time left before the deadline; past it,
/// reads fail with `TimedOut`.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "deadline passed");
        let rem = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(timed_out)?;
        self.stream.set_read_timeout(Some(rem))?;
        let mut stream = self.stream;
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(timed_out()),
            r => r,
        }
    }
}
