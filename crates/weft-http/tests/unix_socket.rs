//! Real exchanges over unix sockets with small server threads written for each case.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use weft_http::{HttpError, UnixHttp};

/// One request as the server saw it.
#[derive(Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// Reads a request head and the body its Content-Length announces.
fn read_request(s: &mut UnixStream) -> Seen {
    let mut req = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(req[..i + 4].to_vec()).unwrap();
            let cl: usize = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(str::to_string))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while req.len() < i + 4 + cl {
                let n = s.read(&mut b).unwrap();
                assert!(n > 0, "client closed mid-body");
                req.extend_from_slice(&b[..n]);
            }
            return Seen {
                head,
                body: req[i + 4..].to_vec(),
            };
        }
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "client closed mid-head");
        req.extend_from_slice(&b[..n]);
    }
}

/// A socket in a fresh temporary directory and a server thread that handles `conns`
/// connections, one after the other, with `handler`.
fn serve<F>(conns: usize, handler: F) -> (tempfile::TempDir, PathBuf, JoinHandle<Vec<Seen>>)
where
    F: Fn(usize, &mut UnixStream, &Seen) + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let l = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for i in 0..conns {
            let (mut s, _) = l.accept().unwrap();
            let req = read_request(&mut s);
            handler(i, &mut s, &req);
            seen.push(req);
        }
        seen
    });
    (dir, path, h)
}

/// Serves canned replies, one per connection, written in 7-byte pieces, then closes.
/// A client that has seen enough (a malformed status line, say) may hang up before the
/// whole reply is written; the server then stops writing and serves the next connection.
fn canned(replies: Vec<&'static [u8]>) -> (tempfile::TempDir, PathBuf, JoinHandle<Vec<Seen>>) {
    serve(replies.len(), move |i, s, _| {
        for part in replies[i].chunks(7) {
            if s.write_all(part).is_err() {
                break;
            }
        }
    })
}

#[test]
fn request_shape_and_fragmented_replies() {
    let (_d, p, h) = canned(vec![
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"echo\":true}\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil the end",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ]);
    let c = UnixHttp::new(&p).with_user_agent("weft-test/1");
    let r = c
        .post_json("/ip/x?y=1", &serde_json::json!({"n": 1}))
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json::<serde_json::Value>().unwrap(),
        serde_json::json!({"echo": true})
    );
    assert_eq!(c.get_text("/chunked").unwrap(), "hello, world");
    assert_eq!(c.get("/eof").unwrap().text(), "until the end");
    assert!(c.post("/ip/c1", "text/plain", b"").unwrap().body.is_empty());

    let seen = h.join().unwrap();
    let post = &seen[0];
    assert!(
        post.head.starts_with("POST /ip/x?y=1 HTTP/1.1\r\n"),
        "{post:?}"
    );
    for line in [
        "Host: localhost\r\n",
        "User-Agent: weft-test/1\r\n",
        "Connection: close\r\n",
        "Content-Type: application/json\r\n",
        "Content-Length: 7\r\n",
    ] {
        assert!(post.head.contains(line), "{line:?} missing from {post:?}");
    }
    assert_eq!(post.body, br#"{"n":1}"#);
    assert!(seen[1].head.starts_with("GET /chunked HTTP/1.1\r\n"));
    assert!(!seen[1].head.contains("Content-Length"), "{:?}", seen[1]);
    assert!(seen[3]
        .head
        .contains("Content-Type: text/plain\r\nContent-Length: 0\r\n"));
}

#[test]
fn post_and_put_without_body_send_a_zero_length() {
    let reply: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (_d, p, h) = canned(vec![reply, reply, reply]);
    let c = UnixHttp::new(&p);
    for m in ["POST", "PUT", "DELETE"] {
        assert_eq!(c.request(m, "/ip/c1", None).unwrap().status, 200);
    }
    let seen = h.join().unwrap();
    assert!(seen[0].head.contains("Content-Length: 0\r\n"));
    assert!(seen[1].head.contains("Content-Length: 0\r\n"));
    assert!(seen[2].head.starts_with("DELETE /ip/c1 HTTP/1.1\r\n"));
    assert!(!seen[2].head.contains("Content-Length"));
}

#[test]
fn success_required_and_json_helpers() {
    let (_d, p, _h) = canned(vec![
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nstarting\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{\"owned\":[1,2,3]}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{not json",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone",
    ]);
    let c = UnixHttp::new(&p);
    let e = c.get_text("/status").unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert!(!e.is_unreachable());
    let msg = e.to_string();
    assert!(msg.contains("GET /status") && msg.contains("503") && msg.contains("starting"));
    assert!(msg.contains("s.sock"), "{msg}");

    #[derive(Debug, serde::Deserialize)]
    struct Owned {
        owned: Vec<u32>,
    }
    assert_eq!(c.get_json::<Owned>("/ip").unwrap().owned, [1, 2, 3]);
    let e = c.get_json::<Owned>("/ip").unwrap_err();
    assert!(matches!(e, HttpError::Json { .. }), "{e}");
    assert!(!e.is_unreachable());
    // A non-2xx answer is still a response for `request` and friends.
    assert_eq!(c.delete("/ip/x").unwrap().status, 404);
}

#[test]
fn head_reads_no_body() {
    // The server announces a body it never sends and keeps the connection open: reading a
    // body would wait for the deadline.
    let (_d, p, _h) = serve(1, |_, s, _| {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap();
        let mut b = [0u8; 64];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    let r = UnixHttp::new(&p).request("HEAD", "/status", None).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
}

#[test]
fn malformed_replies_are_protocol_errors() {
    let replies: Vec<&'static [u8]> = vec![
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY\r\n",
    ];
    let n = replies.len();
    let (_d, p, _h) = canned(replies);
    let c = UnixHttp::new(&p);
    for _ in 0..n {
        let e = c.get("/").unwrap_err();
        assert!(matches!(e, HttpError::Protocol { .. }), "{e}");
        assert!(!e.is_unreachable());
        assert!(e.to_string().contains("GET / on "), "{e}");
    }
}

#[test]
fn body_limit_is_configurable() {
    let reply: &'static [u8] = b"HTTP/1.1 200 OK\r\n\r\n0123456789";
    let (_d, p, _h) = canned(vec![reply, reply]);
    let e = UnixHttp::new(&p).with_max_body(9).get("/").unwrap_err();
    assert!(matches!(e, HttpError::Protocol { .. }), "{e}");
    let r = UnixHttp::new(&p).with_max_body(10).get("/").unwrap();
    assert_eq!(r.body, b"0123456789");
}

#[test]
fn truncated_answer_counts_as_unreachable() {
    let (_d, p, _h) = canned(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",
        b"",
    ]);
    let c = UnixHttp::new(&p);
    for _ in 0..2 {
        let e = c.get("/").unwrap_err();
        assert!(matches!(e, HttpError::Io { .. }), "{e}");
        assert!(e.is_unreachable(), "{e}");
    }
}

#[test]
fn missing_socket_and_refused_are_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let e = UnixHttp::new(dir.path().join("nope.sock"))
        .get("/status")
        .unwrap_err();
    assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    assert!(e.is_unreachable());
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(e.to_string().contains("nope.sock"), "{e}");
    assert!(e.to_string().contains("No such file"), "{e}");
    // The cause is in the message, not repeated as a `source()`.
    assert!(std::error::Error::source(&e).is_none());
    // A socket file nobody listens on: ECONNREFUSED.
    let p = dir.path().join("dead.sock");
    drop(UnixListener::bind(&p).unwrap());
    let e = UnixHttp::new(&p).get("/status").unwrap_err();
    assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    assert!(e.is_unreachable());
    assert!(e.to_string().contains("nobody is listening"), "{e}");
}

#[test]
fn silent_server_times_out() {
    let (_d, p, h) = serve(1, |_, s, _| {
        // Hold the connection open without answering until the client gives up.
        let mut b = [0u8; 64];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    let e = UnixHttp::new(&p)
        .with_timeout(Duration::from_millis(200))
        .get("/status")
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(e.is_unreachable());
    assert!(e.to_string().contains("reading the status line"), "{e}");
    h.join().unwrap();
}

#[test]
fn trickling_server_hits_the_overall_deadline() {
    // Each byte arrives well within the timeout, but the answer never completes: only an
    // overall deadline (not a per-read timeout) ends this.
    let (_d, p, h) = serve(1, |_, s, _| {
        s.write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ").unwrap();
        while s.write_all(b"a").is_ok() {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let e = UnixHttp::new(&p)
        .with_timeout(Duration::from_millis(300))
        .get("/")
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    h.join().unwrap();
}

#[test]
fn full_backlog_times_out_while_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("busy.sock");
    let listener: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::bind(listener.as_raw_fd(), &UnixAddr::new(&p).unwrap()).unwrap();
    socket::listen(&listener, Backlog::new(0).unwrap()).unwrap();
    // Fill the backlog (never accepted) until the kernel refuses with EAGAIN.
    let mut held = Vec::new();
    loop {
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        match socket::connect(fd.as_raw_fd(), &UnixAddr::new(&p).unwrap()) {
            Ok(()) => held.push(fd),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("unexpected connect error {e}"),
        }
        assert!(held.len() < 10_000, "backlog never filled");
    }
    let e = UnixHttp::new(&p)
        .with_timeout(Duration::from_millis(200))
        .get("/status")
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(e.to_string().contains("backlog"), "{e}");
}

#[test]
fn early_answer_wins_over_write_error() {
    // The server refuses after the head, without reading a large body, and closes.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.sock");
    let l = UnixListener::bind(&p).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).unwrap();
            req.extend_from_slice(&b[..n]);
        }
        s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n")
            .unwrap();
    });
    let big = vec![b'x'; 8 * 1024 * 1024];
    let r = UnixHttp::new(&p)
        .post("/ip", "application/octet-stream", &big)
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "too big\n");
    h.join().unwrap();
}

#[test]
fn invalid_requests_are_refused_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.sock");
    // A listener that would accept, to show nothing reaches it.
    let l = UnixListener::bind(&p).unwrap();
    l.set_nonblocking(true).unwrap();
    let c = UnixHttp::new(&p);
    let cases: Vec<(HttpError, &str)> = vec![
        (c.get("status").unwrap_err(), "must start with '/'"),
        (c.get("/a b").unwrap_err(), "percent-encoded"),
        (c.get("/a\r\nX: y").unwrap_err(), "percent-encoded"),
        (c.get("/é").unwrap_err(), "percent-encoded"),
        (c.request("get", "/", None).unwrap_err(), "upper-case"),
        (c.request("", "/", None).unwrap_err(), "upper-case"),
        (
            c.post("/", "text/plain\r\nX-Evil: 1", b"").unwrap_err(),
            "Content-Type",
        ),
        (
            c.clone().with_user_agent("a\nb").get("/").unwrap_err(),
            "User-Agent",
        ),
        (
            UnixHttp::new(dir.path().join("x".repeat(200)))
                .get("/")
                .unwrap_err(),
            "limited to 107 bytes",
        ),
    ];
    for (e, want) in cases {
        assert!(matches!(e, HttpError::InvalidRequest { .. }), "{e}");
        assert!(!e.is_unreachable(), "{e}");
        assert!(e.to_string().contains(want), "{want:?} not in {e}");
    }
    assert!(l.accept().is_err(), "an invalid request reached the server");
}
