//! A small synchronous HTTP/1.1 client over a unix socket, enough to talk to the weft router:
//! one request per connection (`Connection: close`), `Content-Length` or chunked or
//! read-to-EOF bodies, overall deadlines, bounded sizes.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

/// Largest header block we accept.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest body we accept.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Errors talking HTTP to the router.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Could not connect (no socket file, nobody listening, permission).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The deadline passed.
    #[error("timed out after {after:?} while {during} on {path}")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// What we were doing.
        during: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// Reading or writing failed.
    #[error("I/O error on {path} while {during}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// What we were doing.
        during: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The peer did not speak HTTP/1.x as expected.
    #[error("malformed HTTP response from {path}: {detail}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

impl HttpError {
    /// True for failures that mean "the router is not there (yet)": connect errors and timeouts,
    /// and a connection dropped before any answer.
    pub fn is_unreachable(&self) -> bool {
        match self {
            HttpError::Connect { .. } | HttpError::Timeout { .. } => true,
            HttpError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            HttpError::Protocol { .. } => false,
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Header (name lower-cased, value trimmed) pairs, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text, trimmed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// Connects to a unix socket within `timeout` (a full listen backlog makes a blocking connect
/// hang, so we connect non-blocking and retry on EAGAIN).
fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, HttpError> {
    let cerr = |source: io::Error| HttpError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let addr = UnixAddr::new(path).map_err(|e| cerr(io::Error::from(e)))?;
    let deadline = Instant::now() + timeout;
    loop {
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| cerr(io::Error::from(e)))?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return finish_connect(fd).map_err(cerr),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINPROGRESS) => {
                if Instant::now() >= deadline {
                    return Err(HttpError::Timeout {
                        path: path.to_path_buf(),
                        during: "connecting",
                        after: timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(cerr(io::Error::from(e))),
        }
    }
}

fn finish_connect(fd: OwnedFd) -> io::Result<UnixStream> {
    // SAFETY: `into_raw_fd` hands over ownership of a valid, open unix stream socket.
    let stream = unsafe { UnixStream::from_raw_fd(fd.into_raw_fd()) };
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Sends one request and reads the whole response, all within `timeout`.
pub fn request(
    path: &Path,
    method: &str,
    uri: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let stream = connect(path, timeout)?;
    let mut req = format!(
        "{method} {uri} HTTP/1.1\r\nHost: weft\r\nUser-Agent: weft-net\r\nAccept: */*\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    let mut conn = Conn {
        stream,
        path,
        deadline,
        timeout,
        buf: Vec::new(),
        pos: 0,
        eof: false,
    };
    conn.write_all(req.as_bytes())?;
    conn.write_all(body)?;
    read_response(&mut conn, method == "HEAD")
}

struct Conn<'a> {
    stream: UnixStream,
    path: &'a Path,
    deadline: Instant,
    timeout: Duration,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl Conn<'_> {
    fn remaining(&self, during: &'static str) -> Result<Duration, HttpError> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(self.timeout_err(during));
        }
        Ok(self.deadline - now)
    }

    fn timeout_err(&self, during: &'static str) -> HttpError {
        HttpError::Timeout {
            path: self.path.to_path_buf(),
            during,
            after: self.timeout,
        }
    }

    fn io_err(&self, during: &'static str, e: io::Error) -> HttpError {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            self.timeout_err(during)
        } else {
            HttpError::Io {
                path: self.path.to_path_buf(),
                during,
                source: e,
            }
        }
    }

    fn proto(&self, detail: impl Into<String>) -> HttpError {
        HttpError::Protocol {
            path: self.path.to_path_buf(),
            detail: detail.into(),
        }
    }

    fn write_all(&mut self, mut data: &[u8]) -> Result<(), HttpError> {
        while !data.is_empty() {
            let rem = self.remaining("sending the request")?;
            self.stream
                .set_write_timeout(Some(rem))
                .map_err(|e| self.io_err("sending the request", e))?;
            match self.stream.write(data) {
                Ok(0) => {
                    return Err(self.io_err(
                        "sending the request",
                        io::Error::from(io::ErrorKind::WriteZero),
                    ))
                }
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err("sending the request", e)),
            }
        }
        Ok(())
    }

    /// Reads more bytes into the buffer; returns false at EOF.
    fn fill(&mut self, during: &'static str) -> Result<bool, HttpError> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let rem = self.remaining(during)?;
        self.stream
            .set_read_timeout(Some(rem))
            .map_err(|e| self.io_err(during, e))?;
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(during, e)),
            }
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads one CRLF- (or LF-) terminated line of at most `max` bytes, without the terminator.
    fn line(&mut self, max: usize, during: &'static str) -> Result<String, HttpError> {
        loop {
            if let Some(i) = self.avail().iter().position(|&b| b == b'\n') {
                let raw = &self.avail()[..i];
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                let s = String::from_utf8_lossy(raw).into_owned();
                self.pos += i + 1;
                return Ok(s);
            }
            if self.avail().len() > max {
                return Err(self.proto(format!("line longer than {max} bytes while {during}")));
            }
            if !self.fill(during)? {
                return Err(self.io_err(
                    during,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
                ));
            }
        }
    }

    fn exact(
        &mut self,
        n: usize,
        out: &mut Vec<u8>,
        during: &'static str,
    ) -> Result<(), HttpError> {
        let mut need = n;
        while need > 0 {
            if self.avail().is_empty() && !self.fill(during)? {
                return Err(self.io_err(
                    during,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-body"),
                ));
            }
            let take = need.min(self.avail().len());
            out.extend_from_slice(&self.avail()[..take]);
            self.pos += take;
            need -= take;
        }
        Ok(())
    }
}

/// Status code, reason phrase, headers.
type Head = (u16, String, Vec<(String, String)>);

fn read_head(conn: &mut Conn<'_>) -> Result<Head, HttpError> {
    let status_line = conn.line(MAX_HEADER_BYTES, "reading the status line")?;
    let mut parts = status_line.splitn(3, ' ');
    let proto = parts.next().unwrap_or("");
    if !proto.starts_with("HTTP/1.") {
        return Err(conn.proto(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| conn.proto(format!("bad status code in {status_line:?}")))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    let mut total = status_line.len();
    loop {
        let l = conn.line(MAX_HEADER_BYTES, "reading headers")?;
        if l.is_empty() {
            break;
        }
        total += l.len();
        if total > MAX_HEADER_BYTES {
            return Err(conn.proto(format!("headers larger than {MAX_HEADER_BYTES} bytes")));
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| conn.proto(format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok((status, reason, headers))
}

fn read_response(conn: &mut Conn<'_>, head_only: bool) -> Result<Response, HttpError> {
    let (status, reason, headers) = loop {
        let (s, r, h) = read_head(conn)?;
        // Skip interim responses (100 Continue and friends).
        if (100..200).contains(&s) && s != 101 {
            continue;
        }
        break (s, r, h);
    };
    let hdr = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut body = Vec::new();
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        // Nothing to read.
    } else if hdr("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let size_line = conn.line(1024, "reading a chunk size")?;
            let hex = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16)
                .map_err(|_| conn.proto(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    let t = conn.line(MAX_HEADER_BYTES, "reading trailers")?;
                    if t.is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len().saturating_add(size) > MAX_BODY_BYTES {
                return Err(conn.proto(format!("body larger than {MAX_BODY_BYTES} bytes")));
            }
            conn.exact(size, &mut body, "reading a chunk")?;
            let crlf = conn.line(2, "reading a chunk terminator")?;
            if !crlf.is_empty() {
                return Err(conn.proto("chunk not followed by CRLF"));
            }
        }
    } else if let Some(cl) = hdr("content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| conn.proto(format!("bad Content-Length {cl:?}")))?;
        if n > MAX_BODY_BYTES {
            return Err(conn.proto(format!(
                "Content-Length {n} larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        conn.exact(n, &mut body, "reading the body")?;
    } else {
        loop {
            body.extend_from_slice(conn.avail());
            conn.pos = conn.buf.len();
            if body.len() > MAX_BODY_BYTES {
                return Err(conn.proto(format!("body larger than {MAX_BODY_BYTES} bytes")));
            }
            if !conn.fill("reading the body")? {
                break;
            }
        }
    }
    Ok(Response {
        status,
        reason,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Serves one connection with a canned reply; returns the socket path and the request seen.
    fn serve(
        reply: &'static [u8],
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 4096];
            // Read until the end of the headers plus the declared body.
            loop {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
                if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..i]).to_lowercase();
                    let cl: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    if req.len() >= i + 4 + cl {
                        break;
                    }
                }
            }
            for part in reply.chunks(7) {
                s.write_all(part).unwrap();
            }
            req
        });
        (dir, path, h)
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn content_length_body_and_request_shape() {
        let (_d, p, h) =
            serve(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A:  b \r\n\r\n10.32.0.5/12");
        let r = request(&p, "POST", "/ip/abc", b"", T).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "10.32.0.5/12");
        assert_eq!(r.header("x-a"), Some("b"));
        let req = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(req.starts_with("POST /ip/abc HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Length: 0\r\n"));
        assert!(req.contains("Host: "));
    }

    #[test]
    fn chunked_body() {
        let (_d, p, _h) = serve(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-T: 1\r\n\r\n",
        );
        let r = request(&p, "GET", "/ip", b"", T).unwrap();
        assert_eq!(r.body, b"hello, world");
    }

    #[test]
    fn body_to_eof_and_interim() {
        let (_d, p, _h) = serve(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 503 Service Unavailable\r\n\r\nnot ready",
        );
        let r = request(&p, "GET", "/status", b"{}", T).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.reason, "Service Unavailable");
        assert_eq!(r.text(), "not ready");
    }

    #[test]
    fn no_body_statuses() {
        let (_d, p, _h) = serve(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(request(&p, "DELETE", "/ip/x", b"", T)
            .unwrap()
            .body
            .is_empty());
    }

    #[test]
    fn malformed_replies() {
        for reply in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY\r\n",
        ] {
            let (_d, p, _h) = serve(reply);
            let e = request(&p, "GET", "/", b"", T).unwrap_err();
            assert!(matches!(e, HttpError::Protocol { .. }), "{e}");
            assert!(!e.is_unreachable());
        }
    }

    #[test]
    fn truncated_body_is_io_error() {
        let (_d, p, _h) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort");
        let e = request(&p, "GET", "/", b"", T).unwrap_err();
        assert!(matches!(e, HttpError::Io { .. }), "{e}");
    }

    #[test]
    fn missing_socket_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = request(&dir.path().join("nope.sock"), "GET", "/status", b"", T).unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }));
        assert!(e.is_unreachable());
        // A socket file nobody listens on: ECONNREFUSED.
        let p = dir.path().join("dead.sock");
        drop(UnixListener::bind(&p).unwrap());
        let e = request(&p, "GET", "/status", b"", T).unwrap_err();
        assert!(e.is_unreachable(), "{e}");
    }

    #[test]
    fn silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("slow.sock");
        let l = UnixListener::bind(&p).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            // Hold the connection open without answering until the client gives up.
            let mut s = s;
            let mut b = [0u8; 1024];
            while let Ok(n) = s.read(&mut b) {
                if n == 0 {
                    break;
                }
            }
        });
        let e = request(&p, "GET", "/status", b"", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        assert!(e.is_unreachable());
        h.join().unwrap();
    }
}
