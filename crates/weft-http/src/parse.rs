//! Parsing an HTTP/1.x response from any buffered byte source.
//!
//! Everything is bounded: each line, the whole header block (interim responses and trailers
//! included), and the body. Allocation grows only with bytes actually received, never with a
//! length the peer merely announces.

use std::io::{self, BufRead, Read};

/// Largest accepted header block (status line and headers, interim responses included; trailers
/// have a budget of the same size).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default largest accepted body (see [`crate::UnixHttp::with_max_body`]).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest accepted chunk-size line (size plus extensions).
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code (100..=599).
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Headers in order, names as sent (compare case-insensitively, or use
    /// [`Response::header`]), values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
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

    /// The body as text (invalid UTF-8 replaced), untrimmed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why parsing stopped. The caller adds the socket and request.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// Reading failed; `UnexpectedEof` when the peer closed too early, `TimedOut` at the
    /// deadline.
    Io {
        during: &'static str,
        source: io::Error,
    },
    /// The bytes are not an acceptable HTTP/1.x response.
    Protocol(String),
}

type PResult<T> = Result<T, ParseError>;

fn proto<T>(detail: impl Into<String>) -> PResult<T> {
    Err(ParseError::Protocol(detail.into()))
}

fn eof(during: &'static str, msg: impl Into<String>) -> ParseError {
    ParseError::Io {
        during,
        source: io::Error::new(io::ErrorKind::UnexpectedEof, msg.into()),
    }
}

/// Reads one line ending in LF (CRLF or bare LF) of at most `limit` bytes including the line
/// ending; returns it without the ending.
fn read_line(r: &mut impl BufRead, limit: usize, during: &'static str) -> PResult<Vec<u8>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(limit as u64)
        .read_until(b'\n', &mut buf)
        .map_err(|source| ParseError::Io { during, source })?;
    if buf.last() != Some(&b'\n') {
        if buf.len() >= limit {
            return proto(format!("line longer than {limit} bytes while {during}"));
        }
        return Err(eof(
            during,
            if n == 0 {
                "connection closed"
            } else {
                "connection closed in the middle of a line"
            },
        ));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(buf)
}

fn show(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(200)]);
    if line.len() > 200 {
        format!("{s:?}…")
    } else {
        format!("{s:?}")
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_status_line(line: &[u8]) -> PResult<(u16, String)> {
    let bad = || {
        ParseError::Protocol(format!(
            "bad status line {} (expected like \"HTTP/1.1 200 OK\")",
            show(line)
        ))
    };
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
        .ok_or_else(bad)?;
    let (code, reason) = match rest.get(3) {
        None => (rest, &b""[..]),
        Some(b' ') => (&rest[..3], &rest[4..]),
        Some(_) => return Err(bad()),
    };
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&status) {
        return Err(bad());
    }
    Ok((status, String::from_utf8_lossy(reason).into_owned()))
}

fn parse_header(line: &[u8]) -> PResult<(String, String)> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return proto(format!(
            "obsolete folded header line {} is not supported",
            show(line)
        ));
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return proto(format!("bad header line {} (no colon)", show(line)));
    };
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return proto(format!("bad header name in {}", show(line)));
    }
    let value = line[colon + 1..].trim_ascii();
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// Reads one line of a header block whose byte budget is `MAX_HEADER_BYTES`, `used` so far.
fn read_block_line(
    r: &mut impl BufRead,
    used: &mut usize,
    what: &str,
    during: &'static str,
) -> PResult<Vec<u8>> {
    let too_big = || ParseError::Protocol(format!("{what} larger than {MAX_HEADER_BYTES} bytes"));
    let budget = MAX_HEADER_BYTES.saturating_sub(*used);
    if budget == 0 {
        return Err(too_big());
    }
    match read_line(r, budget, during) {
        Ok(line) => {
            *used += line.len() + 2;
            Ok(line)
        }
        // The only protocol error of `read_line`: no line end within the budget.
        Err(ParseError::Protocol(_)) => Err(too_big()),
        Err(e) => Err(e),
    }
}

/// Status code, reason phrase and headers of one response.
type Head = (u16, String, Vec<(String, String)>);

/// Status line and headers of one (final or interim) response. `used` counts header bytes
/// across interim responses so that a stream of `100 Continue`s cannot go on forever.
fn read_head(r: &mut impl BufRead, used: &mut usize) -> PResult<Head> {
    const WHAT: &str = "response headers";
    let line = read_block_line(r, used, WHAT, "reading the status line")?;
    let (status, reason) = parse_status_line(&line)?;
    let mut headers = Vec::new();
    loop {
        let line = read_block_line(r, used, WHAT, "reading the headers")?;
        if line.is_empty() {
            return Ok((status, reason, headers));
        }
        headers.push(parse_header(&line)?);
    }
}

/// How the body is delimited.
enum Framing {
    None,
    Chunked,
    Length(u64),
    UntilEof,
}

fn framing(status: u16, head_only: bool, headers: &[(String, String)]) -> PResult<Framing> {
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Framing::None);
    }
    let mut codings = Vec::new();
    for (_, v) in headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        codings.extend(
            v.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty()),
        );
    }
    if !codings.is_empty() {
        // Content-Length is ignored when Transfer-Encoding is present (RFC 9112 6.3).
        if codings == ["chunked"] {
            return Ok(Framing::Chunked);
        }
        return proto(format!(
            "unsupported Transfer-Encoding {:?}: only \"chunked\" is supported",
            codings.join(", ")
        ));
    }
    let mut length: Option<u64> = None;
    for (_, v) in headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        for part in v.split(',') {
            let part = part.trim();
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return proto(format!("bad Content-Length {v:?}"));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| ParseError::Protocol(format!("bad Content-Length {v:?}")))?;
            if length.is_some_and(|l| l != n) {
                return proto(format!("conflicting Content-Length values ({v:?})"));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::UntilEof, Framing::Length))
}

fn read_chunked(r: &mut impl BufRead, max_body: usize) -> PResult<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, MAX_CHUNK_LINE_BYTES, "reading a chunk size")?;
        let size_end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
        let hex = line[..size_end].trim_ascii();
        if hex.is_empty() || hex.len() > 16 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return proto(format!("bad chunk size line {}", show(&line)));
        }
        let size = hex.iter().fold(0u64, |acc, &d| {
            // At most 16 hex digits: cannot overflow a u64.
            (acc << 4) | u64::from((d as char).to_digit(16).unwrap_or(0))
        });
        if size == 0 {
            let mut used = 0usize;
            loop {
                let t = read_block_line(r, &mut used, "trailers", "reading the trailers")?;
                if t.is_empty() {
                    return Ok(body);
                }
            }
        }
        if (body.len() as u64).saturating_add(size) > max_body as u64 {
            return proto(format!("body larger than {max_body} bytes"));
        }
        let before = body.len();
        r.by_ref()
            .take(size)
            .read_to_end(&mut body)
            .map_err(|source| ParseError::Io {
                during: "reading a chunk",
                source,
            })?;
        if ((body.len() - before) as u64) < size {
            return Err(eof(
                "reading a chunk",
                "connection closed in the middle of a chunk",
            ));
        }
        match read_line(r, 2, "reading a chunk terminator") {
            Ok(end) if end.is_empty() => {}
            Ok(_) | Err(ParseError::Protocol(_)) => {
                return proto("chunk data not followed by CRLF");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads one complete response: skips interim 1xx responses, then reads the body delimited by
/// `Transfer-Encoding: chunked`, `Content-Length`, or the end of the stream. `head_only` is for
/// answers to HEAD (no body whatever the headers say).
pub(crate) fn read_response(
    r: &mut impl BufRead,
    head_only: bool,
    max_body: usize,
) -> PResult<Response> {
    let mut used = 0usize;
    let (status, reason, headers) = loop {
        let (s, reason, h) = read_head(r, &mut used)?;
        // Interim responses (100 Continue, 103 Early Hints) precede the real one.
        if (100..200).contains(&s) && s != 101 {
            continue;
        }
        break (s, reason, h);
    };
    let body = match framing(status, head_only, &headers)? {
        Framing::None => Vec::new(),
        Framing::Chunked => read_chunked(r, max_body)?,
        Framing::Length(n) => {
            if n > max_body as u64 {
                return proto(format!(
                    "Content-Length {n} larger than the {max_body}-byte limit"
                ));
            }
            let mut body = Vec::with_capacity((n as usize).min(64 * 1024));
            r.by_ref()
                .take(n)
                .read_to_end(&mut body)
                .map_err(|source| ParseError::Io {
                    during: "reading the body",
                    source,
                })?;
            if (body.len() as u64) < n {
                return Err(eof(
                    "reading the body",
                    format!("connection closed after {} of {n} body bytes", body.len()),
                ));
            }
            body
        }
        Framing::UntilEof => {
            let mut body = Vec::new();
            r.by_ref()
                .take(max_body as u64 + 1)
                .read_to_end(&mut body)
                .map_err(|source| ParseError::Io {
                    during: "reading the body",
                    source,
                })?;
            if body.len() > max_body {
                return proto(format!("body larger than {max_body} bytes"));
            }
            body
        }
    };
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
    use std::io::Cursor;

    fn parse_with(raw: &[u8], head_only: bool, max_body: usize) -> PResult<Response> {
        read_response(&mut Cursor::new(raw), head_only, max_body)
    }

    fn parse(raw: &[u8]) -> PResult<Response> {
        parse_with(raw, false, MAX_BODY_BYTES)
    }

    fn protocol_detail(raw: &[u8]) -> String {
        match parse(raw) {
            Err(ParseError::Protocol(d)) => d,
            other => panic!("expected a protocol error for {raw:?}, got {other:?}"),
        }
    }

    fn eof_message(raw: &[u8]) -> String {
        match parse(raw) {
            Err(ParseError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof, "{source}");
                source.to_string()
            }
            other => panic!("expected an EOF error for {raw:?}, got {other:?}"),
        }
    }

    #[test]
    fn content_length_body_ignores_trailing_bytes() {
        let r =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhelloEXTRA").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.body, b"hello");
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.header("X-A"), Some("b"));
        assert_eq!(r.headers[1].0, "X-A", "names are kept as sent");
        assert!(r.is_success());
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let r = parse(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nContent-Length: 3\r\n\r\n4;ext=1\r\nWeft\r\nB \r\n lab client\r\n0\r\nT: x\r\n\r\n").unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.text(), "Weft lab client");
    }

    #[test]
    fn body_until_eof_after_interim_responses() {
        let r = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.0 404 Not Found\n\nno such thing\n",
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.reason, "Not Found");
        assert_eq!(r.text(), "no such thing\n");
        assert!(!r.is_success());
    }

    #[test]
    fn statuses_and_methods_without_body() {
        for raw in [
            &b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\njunk"[..],
            b"HTTP/1.1 304 Not Modified\r\n\r\njunk",
        ] {
            assert!(parse(raw).unwrap().body.is_empty());
        }
        let r = parse_with(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n",
            true,
            MAX_BODY_BYTES,
        )
        .unwrap();
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length"), Some("4"));
        // No reason phrase at all is fine.
        assert_eq!(parse(b"HTTP/1.1 200\r\n\r\n").unwrap().reason, "");
    }

    #[test]
    fn json_body() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\":1}\n").unwrap();
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));
        assert!(r.json::<Vec<u8>>().is_err());
    }

    #[test]
    fn rejects_malformed_heads() {
        for (raw, want) in [
            (&b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..], "bad status line"),
            (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 abc OK\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 099 Low\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 600 High\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 +20 OK\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n", "no colon"),
            (b"HTTP/1.1 200 OK\r\n: empty\r\n\r\n", "bad header name"),
            (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "bad header name"),
            (b"HTTP/1.1 200 OK\r\nA: b\r\n  folded\r\n\r\n", "folded"),
        ] {
            let d = protocol_detail(raw);
            assert!(d.contains(want), "{raw:?}: {d}");
        }
    }

    #[test]
    fn rejects_bad_framing() {
        for (raw, want) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n"[..],
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
                "limit",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nabc",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "unsupported Transfer-Encoding",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
                "larger than",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY\r\n",
                "not followed by CRLF",
            ),
        ] {
            let d = protocol_detail(raw);
            assert!(d.contains(want), "{:?}: {d}", String::from_utf8_lossy(raw));
        }
        // Repeated equal Content-Length values are accepted.
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc")
            .unwrap();
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn truncation_is_an_eof_error() {
        assert!(eof_message(b"").contains("closed"));
        assert!(eof_message(b"HTTP/1.1 200 OK").contains("middle of a line"));
        assert!(eof_message(b"HTTP/1.1 200 OK\r\nA: b\r\n").contains("closed"));
        assert!(
            eof_message(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").contains("3 of 10")
        );
        assert!(
            eof_message(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .contains("middle of a chunk")
        );
        eof_message(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n");
        eof_message(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX");
        eof_message(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\r\n");
    }

    #[test]
    fn size_limits() {
        // An endless header block is cut off at the limit instead of growing without bound.
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        while endless.len() < MAX_HEADER_BYTES * 2 {
            endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(protocol_detail(&endless).contains("larger than"));
        // So is one endless line.
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(MAX_HEADER_BYTES * 2, b'a');
        assert!(protocol_detail(&long).contains("response headers larger than"));
        // And an endless series of interim responses.
        let endless_100 = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_HEADER_BYTES);
        assert!(protocol_detail(&endless_100).contains("larger than"));
        // And endless trailers.
        let mut trailers = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        trailers.extend(b"T: x\r\n".repeat(MAX_HEADER_BYTES));
        assert!(protocol_detail(&trailers).contains("trailers larger than"));
        // Bodies obey the configured limit, however they are delimited.
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"[..],
            b"HTTP/1.1 200 OK\r\n\r\nhello world",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
        ] {
            assert!(matches!(
                parse_with(raw, false, 10),
                Err(ParseError::Protocol(d)) if d.contains("10")
            ));
            assert_eq!(parse_with(raw, false, 11).unwrap().body, b"hello world");
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes, and arbitrary tails after a plausible head, never panic and never
        /// yield more body than was sent or allowed.
        #[test]
        fn hostile_bytes_never_panic(
            head in proptest::sample::select(vec![
                &b""[..],
                b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n",
                b"HTTP/1.0 500 x\r\n\r\n",
            ]),
            tail in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..512),
            max_body in 0usize..64,
        ) {
            let mut raw = head.to_vec();
            raw.extend_from_slice(&tail);
            if let Ok(r) = parse_with(&raw, false, max_body) {
                proptest::prop_assert!(r.body.len() <= max_body);
                proptest::prop_assert!(r.body.len() <= raw.len());
                proptest::prop_assert!((100..=599).contains(&r.status));
            }
        }
    }
}
