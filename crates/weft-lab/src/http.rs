//! A minimal blocking HTTP/1.1 client over a unix stream socket (to talk to `weft router`).
//!
//! One request per connection (`Connection: close`). Response bodies may be delimited by
//! `Content-Length`, `Transfer-Encoding: chunked`, or the end of the stream. Sizes are bounded so
//! that a misbehaving server cannot make us allocate without limit.
use crate::{Error, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest accepted status line + headers.
const MAX_HEAD: usize = 64 * 1024;
/// Largest accepted response body.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Largest accepted chunk-size line.
const MAX_CHUNK_LINE: usize = 1024;

/// A client for one unix socket.
#[derive(Debug, Clone)]
pub struct UnixHttp {
    socket: PathBuf,
    timeout: Duration,
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    /// Header names as sent (compare case-insensitively; see [`HttpResponse::header`]).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> std::result::Result<T, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("response body is not the expected JSON: {e}"))
    }
}

impl UnixHttp {
    /// A client for `socket`, with a 10 s timeout per read/write.
    pub fn new(socket: impl Into<PathBuf>) -> UnixHttp {
        UnixHttp {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Sets the per-operation (connect is immediate on unix sockets; read, write) timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> UnixHttp {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        self.request("GET", path, None)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<HttpResponse> {
        self.request("DELETE", path, None)
    }

    /// `POST path` with a body of the given content type.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Result<HttpResponse> {
        self.request("POST", path, Some((content_type, body)))
    }

    /// `PUT path` with a body of the given content type.
    pub fn put(&self, path: &str, content_type: &str, body: &[u8]) -> Result<HttpResponse> {
        self.request("PUT", path, Some((content_type, body)))
    }

    /// `POST path` with a JSON body.
    pub fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        value: &T,
    ) -> Result<HttpResponse> {
        let body = serde_json::to_vec(value)
            .map_err(|e| self.err("POST", path, format!("cannot encode JSON body: {e}")))?;
        self.post(path, "application/json", &body)
    }

    /// `GET path`, requiring a 2xx answer; returns the body as text.
    pub fn get_text(&self, path: &str) -> Result<String> {
        let resp = self.get(path)?;
        self.expect_success("GET", path, resp).map(|r| r.text())
    }

    /// `GET path`, requiring a 2xx answer with a JSON body.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.get(path)?;
        let resp = self.expect_success("GET", path, resp)?;
        resp.json().map_err(|e| self.err("GET", path, e))
    }

    /// Turns a non-2xx response into an error that shows the status and the body.
    pub fn expect_success(
        &self,
        method: &str,
        path: &str,
        resp: HttpResponse,
    ) -> Result<HttpResponse> {
        if resp.is_success() {
            return Ok(resp);
        }
        let body = resp.text();
        let body = body.trim();
        let shown: String = body.chars().take(2000).collect();
        Err(self.err(
            method,
            path,
            format!("server answered {} {}: {}", resp.status, resp.reason, shown),
        ))
    }

    fn err(&self, method: &str, path: &str, detail: impl Into<String>) -> Error {
        Error::Http {
            socket: self.socket.clone(),
            request: format!("{method} {path}"),
            detail: detail.into(),
        }
    }

    /// Sends one request and reads the whole response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<HttpResponse> {
        validate_token(method).map_err(|d| self.err(method, path, d))?;
        validate_path(path).map_err(|d| self.err(method, path, d))?;
        if let Some((ct, _)) = body {
            if ct.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(self.err(method, path, "content type contains a line break"));
            }
        }
        let io = |what: &str, e: std::io::Error| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => "; is the router running? (socket missing)",
                std::io::ErrorKind::ConnectionRefused => {
                    "; is the router running? (nobody listening)"
                }
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    "; the server did not answer in time"
                }
                _ => "",
            };
            self.err(method, path, format!("{what}: {e}{hint}"))
        };
        let stream = UnixStream::connect(&self.socket).map_err(|e| io("connect", e))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|_| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| io("set socket timeout", e))?;

        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: weft-lab\r\nAccept: */*\r\nConnection: close\r\n");
        match body {
            Some((ct, b)) => req.push_str(&format!(
                "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )),
            None if method == "POST" || method == "PUT" => {
                req.push_str("Content-Length: 0\r\n\r\n")
            }
            None => req.push_str("\r\n"),
        }
        let mut w = &stream;
        w.write_all(req.as_bytes())
            .map_err(|e| io("send request", e))?;
        if let Some((_, b)) = body {
            w.write_all(b).map_err(|e| io("send request body", e))?;
        }
        w.flush().map_err(|e| io("send request", e))?;

        let mut r = BufReader::new(&stream);
        read_response(&mut r, method == "HEAD").map_err(|d| self.err(method, path, d))
    }
}

fn validate_token(method: &str) -> std::result::Result<(), String> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "invalid method {method:?}: use upper-case letters only"
        ));
    }
    Ok(())
}

fn validate_path(path: &str) -> std::result::Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "invalid request path {path:?}: it must start with '/'"
        ));
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "invalid request path {path:?}: spaces and control characters must be percent-encoded"
        ));
    }
    Ok(())
}

/// Reads one line terminated by `\n` (at most `limit` bytes), without the line ending.
fn read_line(
    r: &mut impl BufRead,
    limit: usize,
    what: &str,
) -> std::result::Result<String, String> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("reading {what}: {e}"))?;
    if n == 0 {
        return Err(format!("connection closed before the {what}"));
    }
    if buf.last() != Some(&b'\n') {
        if buf.len() > limit {
            return Err(format!("{what} longer than {limit} bytes"));
        }
        return Err(format!("connection closed in the middle of the {what}"));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// Parses a response from `r`. `head_only` suppresses the body (HEAD requests).
pub(crate) fn read_response(
    r: &mut impl BufRead,
    head_only: bool,
) -> std::result::Result<HttpResponse, String> {
    let mut used = 0usize;
    let (status, reason, headers) = loop {
        let line = read_line(r, MAX_HEAD - used, "status line")?;
        used += line.len() + 2;
        let (status, reason) = parse_status_line(&line)?;
        let mut headers = Vec::new();
        loop {
            if used >= MAX_HEAD {
                return Err(format!("response headers longer than {MAX_HEAD} bytes"));
            }
            let line = read_line(r, MAX_HEAD - used, "response headers")?;
            used += line.len() + 2;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| format!("malformed header line {line:?}"))?;
            let k = k.trim();
            if k.is_empty() || k.bytes().any(|b| b <= b' ') {
                return Err(format!("malformed header name in {line:?}"));
            }
            headers.push((k.to_string(), v.trim().to_string()));
        }
        // Interim 1xx responses (other than 101) are followed by the real one.
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        break (status, reason, headers);
    };
    let resp = HttpResponse {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    let mut resp = resp;
    let chunked = resp
        .header("transfer-encoding")
        .map(|te| {
            te.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
        })
        .unwrap_or(false);
    if chunked {
        resp.body = read_chunked(r)?;
    } else if let Some(cl) = resp.header("content-length") {
        let len: u64 = cl
            .trim()
            .parse()
            .map_err(|_| format!("malformed Content-Length {cl:?}"))?;
        if len > MAX_BODY as u64 {
            return Err(format!(
                "response body of {len} bytes exceeds the {MAX_BODY}-byte limit"
            ));
        }
        let mut body = Vec::with_capacity((len as usize).min(64 * 1024));
        r.by_ref()
            .take(len)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading response body: {e}"))?;
        if body.len() as u64 != len {
            return Err(format!(
                "connection closed after {} of {len} body bytes",
                body.len()
            ));
        }
        resp.body = body;
    } else {
        let mut body = Vec::new();
        r.by_ref()
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading response body: {e}"))?;
        if body.len() > MAX_BODY {
            return Err(format!("response body exceeds the {MAX_BODY}-byte limit"));
        }
        resp.body = body;
    }
    Ok(resp)
}

fn parse_status_line(line: &str) -> std::result::Result<(u16, String), String> {
    let bad = || format!("malformed status line {line:?}; is this an HTTP server?");
    let rest = line.strip_prefix("HTTP/1.").ok_or_else(bad)?;
    let mut parts = rest.splitn(3, ' ');
    let minor = parts.next().ok_or_else(bad)?;
    if minor != "0" && minor != "1" {
        return Err(bad());
    }
    let code = parts.next().ok_or_else(bad)?;
    if code.len() != 3 {
        return Err(bad());
    }
    let status: u16 = code.parse().map_err(|_| bad())?;
    if !(100..600).contains(&status) {
        return Err(bad());
    }
    Ok((status, parts.next().unwrap_or("").to_string()))
}

fn read_chunked(r: &mut impl BufRead) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, MAX_CHUNK_LINE, "chunk size line")?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        if size_str.is_empty() || size_str.len() > 16 {
            return Err(format!("malformed chunk size line {line:?}"));
        }
        let size = u64::from_str_radix(size_str, 16)
            .map_err(|_| format!("malformed chunk size line {line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            let mut used = 0;
            loop {
                let t = read_line(r, MAX_HEAD.saturating_sub(used).max(1), "chunked trailers")?;
                used += t.len() + 2;
                if t.is_empty() {
                    return Ok(body);
                }
                if used >= MAX_HEAD {
                    return Err(format!("chunked trailers longer than {MAX_HEAD} bytes"));
                }
            }
        }
        if body.len() as u64 + size > MAX_BODY as u64 {
            return Err(format!("response body exceeds the {MAX_BODY}-byte limit"));
        }
        let before = body.len();
        r.by_ref()
            .take(size)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading chunk: {e}"))?;
        if (body.len() - before) as u64 != size {
            return Err("connection closed in the middle of a chunk".to_string());
        }
        let end = read_line(r, 2, "chunk terminator")?;
        if !end.is_empty() {
            return Err("chunk not followed by CRLF".to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::net::UnixListener;

    fn parse(raw: &[u8]) -> std::result::Result<HttpResponse, String> {
        read_response(&mut Cursor::new(raw.to_vec()), false)
    }

    #[test]
    fn content_length_body() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.body, b"hello");
        assert_eq!(r.header("x-a"), Some("b"));
    }

    #[test]
    fn chunked_body_with_trailers_and_extensions() {
        let r = parse(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\nWeft\r\nb\r\n lab client\r\n0\r\nT: x\r\n\r\n").unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.text(), "Weft lab client");
    }

    #[test]
    fn body_until_eof_and_interim_response() {
        let r = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\nno such thing")
            .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.text(), "no such thing");
        assert!(!r.is_success());
    }

    #[test]
    fn rejects_malformed_and_truncated() {
        assert!(parse(b"SSH-2.0-OpenSSH\r\n")
            .unwrap_err()
            .contains("malformed status line"));
        assert!(parse(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap_err()
            .contains("3 of 10"));
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n").is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999\r\n\r\n")
                .unwrap_err()
                .contains("limit")
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n"
        )
        .unwrap_err()
        .contains("limit"));
        assert!(parse(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n").is_err());
        assert!(parse(b"").unwrap_err().contains("closed"));
        // An endless header block is cut off at the limit instead of growing without bound.
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        while endless.len() < MAX_HEAD * 2 {
            endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(parse(&endless).unwrap_err().contains("longer than"));
    }

    #[test]
    fn rejects_bad_request_lines() {
        let c = UnixHttp::new("/nonexistent/weft.sock");
        assert!(c
            .get("status")
            .unwrap_err()
            .to_string()
            .contains("must start with '/'"));
        assert!(c
            .get("/a b")
            .unwrap_err()
            .to_string()
            .contains("percent-encoded"));
        assert!(c.get("/a\r\nX: y").is_err());
        assert!(c.request("get", "/", None).is_err());
        let e = c.get("/status").unwrap_err().to_string();
        assert!(e.contains("socket missing"), "{e}");
    }

    /// A real exchange over a unix socket with a tiny server thread: checks what we send.
    #[test]
    fn round_trip_over_unix_socket() {
        let dir = std::env::temp_dir().join(format!("weft-lab-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                let mut r = BufReader::new(&s);
                let mut head = String::new();
                loop {
                    let mut l = String::new();
                    r.read_line(&mut l).unwrap();
                    if l == "\r\n" {
                        break;
                    }
                    head.push_str(&l);
                }
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map(|v| v.trim().parse::<usize>().unwrap())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                seen.push((head, body.clone()));
                let mut w = &s;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"echo\":{}}}",
                    9 + body.len(),
                    String::from_utf8(body).unwrap_or_default()
                );
                let reply = if len == 0 {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\n\r\nstarting"
                        .to_string()
                } else {
                    reply
                };
                w.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        let c = UnixHttp::new(&sock);
        let v: serde_json::Value = c
            .post_json("/ip/x?y=1", &serde_json::json!({"n": 1}))
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v, serde_json::json!({"echo": {"n": 1}}));
        let e = c.get_text("/status").unwrap_err().to_string();
        assert!(e.contains("503") && e.contains("starting"), "{e}");
        let seen = server.join().unwrap();
        assert!(seen[0].0.starts_with("POST /ip/x?y=1 HTTP/1.1\r\n"));
        assert!(seen[0].0.contains("Content-Type: application/json\r\n"));
        assert_eq!(seen[0].1, br#"{"n":1}"#);
        assert!(seen[1].0.starts_with("GET /status HTTP/1.1\r\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
