//! Weft's own IPAM: the router's HTTP API (Weave's routes) over its unix socket.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;

use weft_http::{HttpError, Response, UnixHttp};

use crate::error::{CniError, ERR_INVALID_CONFIG, ERR_NOT_AVAILABLE, ERR_ROUTER, ERR_TRY_AGAIN};

/// How long an allocation may take (the router may wait for space from a peer).
pub const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long any other request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// One entry of `GET /ip`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Owned {
    /// The owner ID (a container ID, or a special ID like `weave:expose`).
    #[serde(rename = "containerid")]
    pub container_id: String,
    /// Its addresses (`10.32.0.5/12`).
    #[serde(default)]
    pub addrs: Vec<String>,
    /// True for real containers (false for `weave:expose` and such).
    #[serde(default)]
    pub is_container: bool,
}

#[derive(Deserialize)]
struct OwnedList {
    #[serde(default)]
    owned: Vec<Owned>,
}

/// A client for the router's IPAM API.
#[derive(Debug, Clone)]
pub struct Router {
    socket: PathBuf,
    allocate_timeout: Duration,
    timeout: Duration,
}

const WHAT_TO_DO: &str =
    "check `weft status` on this node and that the weft DaemonSet pod is running and ready";

impl Router {
    /// A client for the router at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Router {
        Router {
            socket: socket.into(),
            allocate_timeout: ALLOCATE_TIMEOUT,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Overrides the timeouts.
    pub fn with_timeouts(mut self, allocate: Duration, other: Duration) -> Router {
        self.allocate_timeout = allocate;
        self.timeout = other;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn unreachable(&self, e: &HttpError) -> CniError {
        CniError::try_again(format!(
            "the weft router is not reachable at {}: {e}",
            self.socket.display()
        ))
        .with_details(format!("try again later; {WHAT_TO_DO}"))
    }

    fn call(&self, method: &str, uri: &str, timeout: Duration) -> Result<Response, CniError> {
        let client = UnixHttp::new(&self.socket)
            .with_timeout(timeout)
            .with_user_agent("weft-net");
        match client.request(method, uri, None) {
            Ok(r) => Ok(r),
            Err(e) if e.is_unreachable() => Err(self.unreachable(&e)),
            Err(e @ HttpError::InvalidRequest { .. }) => Err(CniError::new(
                ERR_INVALID_CONFIG,
                format!("cannot ask the weft router: {e}"),
            )
            .with_details(
                "check the `socket` setting of the network configuration (or WEFT_SOCKET) and the container ID",
            )),
            Err(e) => Err(CniError::new(
                ERR_ROUTER,
                format!(
                    "unexpected answer from the weft router at {}: {e}",
                    self.socket.display()
                ),
            )
            .with_details(format!(
                "{WHAT_TO_DO}; versions of plugin and router may differ"
            ))),
        }
    }

    fn not_ok(&self, what: &str, r: &Response) -> CniError {
        let body = body_text(r);
        if r.status == 503 {
            CniError::try_again(format!(
                "the weft router at {} is not ready ({what}: 503 {body})",
                self.socket.display()
            ))
            .with_details(format!(
                "IPAM is not ready yet; try again later; {WHAT_TO_DO}"
            ))
        } else {
            CniError::new(
                ERR_ROUTER,
                format!("weft router refused {what}: {} {body}", r.status),
            )
            .with_details(WHAT_TO_DO)
        }
    }

    /// `POST /ip/{id}` or `POST /ip/{id}/{subnet}`: allocates (or returns the existing)
    /// address for `id`.
    pub fn allocate(&self, id: &str, subnet: Option<Ipv4Net>) -> Result<Ipv4Net, CniError> {
        let uri = match subnet {
            Some(s) => format!("/ip/{id}/{s}"),
            None => format!("/ip/{id}"),
        };
        let r = self.call("POST", &uri, self.allocate_timeout)?;
        if r.status != 200 && r.status != 201 {
            return Err(self
                .not_ok(&format!("allocating an address for {id}"), &r)
                .context("unable to allocate IP address"));
        }
        let text = body_text(&r);
        let first = text.split_whitespace().next().unwrap_or("");
        first.parse::<Ipv4Net>().map_err(|_| {
            CniError::new(
                ERR_ROUTER,
                format!("unable to allocate IP address: the weft router answered {text:?}, not an address like 10.32.0.5/12"),
            )
        })
    }

    /// `DELETE /ip/{id}`: releases every address of `id`. A 404 or a "no addresses" answer
    /// means there was nothing to release and counts as success.
    pub fn release(&self, id: &str) -> Result<(), CniError> {
        let r = self.call("DELETE", &format!("/ip/{id}"), self.timeout)?;
        if (200..300).contains(&r.status) || r.status == 404 {
            return Ok(());
        }
        if r.text().to_ascii_lowercase().contains("no addresses") {
            return Ok(());
        }
        Err(self.not_ok(&format!("releasing the addresses of {id}"), &r))
    }

    /// `GET /ip`: every owner and its addresses.
    pub fn owned(&self) -> Result<Vec<Owned>, CniError> {
        let r = self.call("GET", "/ip", self.timeout)?;
        if r.status != 200 {
            return Err(self.not_ok("listing owned addresses", &r));
        }
        let l: OwnedList = serde_json::from_slice(&r.body).map_err(|e| {
            CniError::new(
                ERR_ROUTER,
                format!("the weft router's GET /ip answer is not the expected JSON: {e}"),
            )
        })?;
        Ok(l.owned)
    }

    /// `GET /status`: Ok when the router answers 200; code 50 otherwise.
    pub fn status(&self) -> Result<(), CniError> {
        let r = match self.call("GET", "/status", self.timeout) {
            Ok(r) => r,
            Err(e) => {
                return Err(CniError::new(ERR_NOT_AVAILABLE, e.msg).with_details(e.details));
            }
        };
        if r.status == 200 {
            return Ok(());
        }
        let e = self.not_ok("status", &r);
        let msg = if e.code == ERR_TRY_AGAIN {
            e.msg
        } else {
            format!(
                "weft router at {} is not ready: {} {}",
                self.socket.display(),
                r.status,
                body_text(&r)
            )
        };
        Err(CniError::new(ERR_NOT_AVAILABLE, msg).with_details(WHAT_TO_DO))
    }
}

/// The body as trimmed text, for messages.
fn body_text(r: &Response) -> String {
    r.text().trim().to_string()
}

/// Parses one `addrs` entry (`10.32.0.5/12`, or a bare address).
pub fn parse_owned_addr(s: &str) -> Option<Ipv4Addr> {
    s.parse::<Ipv4Net>()
        .map(|n| n.addr())
        .or_else(|_| s.parse::<Ipv4Addr>())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// Serves canned replies, one per connection, in order; returns the request lines.
    fn serve(
        replies: Vec<&'static str>,
    ) -> (
        tempfile::TempDir,
        Router,
        std::thread::JoinHandle<Vec<String>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for reply in replies {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&b[..n]);
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                seen.push(line);
                s.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (dir, Router::new(path), h)
    }

    fn reply(status: &str, body: &str) -> &'static str {
        Box::leak(
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    }

    #[test]
    fn allocate_release_paths() {
        let (_d, r, h) = serve(vec![
            reply("200 OK", "10.32.0.5/12\n"),
            reply("200 OK", "10.40.0.2/16"),
            reply("200 OK", ""),
            reply("404 Not Found", "Delete: no addresses for c1"),
            reply("500 Internal Server Error", "Delete: no addresses for c1"),
        ]);
        assert_eq!(r.allocate("c1", None).unwrap().to_string(), "10.32.0.5/12");
        assert_eq!(
            r.allocate("c1", Some("10.40.0.0/16".parse().unwrap()))
                .unwrap()
                .to_string(),
            "10.40.0.2/16"
        );
        r.release("c1").unwrap();
        r.release("c1").unwrap();
        r.release("c1").unwrap();
        let seen = h.join().unwrap();
        assert_eq!(
            seen,
            vec![
                "POST /ip/c1 HTTP/1.1",
                "POST /ip/c1/10.40.0.0/16 HTTP/1.1",
                "DELETE /ip/c1 HTTP/1.1",
                "DELETE /ip/c1 HTTP/1.1",
                "DELETE /ip/c1 HTTP/1.1"
            ]
        );
    }

    #[test]
    fn error_mapping() {
        let (_d, r, _h) = serve(vec![
            reply("503 Service Unavailable", "IPAM not ready"),
            reply("400 Bad Request", "range full"),
            reply("200 OK", "garbage"),
            reply("500 Oops", "disk on fire"),
        ]);
        assert_eq!(r.allocate("c1", None).unwrap_err().code, 11);
        let e = r.allocate("c1", None).unwrap_err();
        assert_eq!(e.code, 103);
        assert!(e.msg.contains("range full"));
        assert_eq!(r.allocate("c1", None).unwrap_err().code, 103);
        assert_eq!(r.release("c1").unwrap_err().code, 103);
    }

    #[test]
    fn unreachable_is_code_11_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let r = Router::new(dir.path().join("absent.sock"));
        for e in [
            r.allocate("c", None).unwrap_err(),
            r.release("c").unwrap_err(),
            r.owned().unwrap_err(),
        ] {
            assert_eq!(e.code, 11);
            assert!(e.msg.contains("absent.sock"), "{e}");
            assert!(e.details.contains("weft status"), "{e}");
        }
        let e = r.status().unwrap_err();
        assert_eq!(e.code, 50);
        assert!(e.msg.contains("not reachable"));
    }

    #[test]
    fn unusable_request_is_a_config_error_not_try_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = Router::new(dir.path().join("s".repeat(200)));
        let e = r.allocate("c1", None).unwrap_err();
        assert_eq!(e.code, ERR_INVALID_CONFIG, "{e}");
        assert!(e.msg.contains("107 bytes"), "{e}");
        let r = Router::new(dir.path().join("r.sock"));
        assert_eq!(r.release("bad id").unwrap_err().code, ERR_INVALID_CONFIG);
    }

    #[test]
    fn owned_and_status() {
        let (_d, r, _h) = serve(vec![
            reply(
                "200 OK",
                r#"{"owned":[{"containerid":"weave:expose","addrs":["10.32.0.1/12"],"is_container":false},{"containerid":"c1","addrs":["10.32.0.5/12"],"is_container":true}]}"#,
            ),
            reply("200 OK", "{not json"),
            reply("200 OK", "ready"),
            reply("503 Service Unavailable", "IPAM not ready"),
            reply("500 Internal Server Error", "x"),
        ]);
        let o = r.owned().unwrap();
        assert_eq!(o.len(), 2);
        assert!(!o[0].is_container);
        assert_eq!(
            parse_owned_addr(&o[1].addrs[0]),
            Some(Ipv4Addr::new(10, 32, 0, 5))
        );
        assert_eq!(r.owned().unwrap_err().code, 103);
        r.status().unwrap();
        assert_eq!(r.status().unwrap_err().code, 50);
        assert_eq!(r.status().unwrap_err().code, 50);
    }
}
