//! weft-http: a blocking HTTP/1.1 client over unix sockets, for the weft router's API.
//!
//! Shared by the CNI plugin (`weft-net`, which must stay free of an async runtime), the `weft`
//! CLI and the lab. One request per connection (`Connection: close`).
//!
//! - Connecting is non-blocking with retries, so a full listen backlog cannot hang us.
//! - Each exchange (connect, send, receive) has one overall deadline ([`UnixHttp::with_timeout`]).
//! - Response bodies may be delimited by `Content-Length`, `Transfer-Encoding: chunked` or the end
//!   of the stream; interim `1xx` responses are skipped; HEAD, 204 and 304 have no body.
//! - Parsing is strict and bounded ([`MAX_HEADER_BYTES`], [`MAX_CHUNK_LINE_BYTES`], a body limit
//!   of [`MAX_BODY_BYTES`] by default): a hostile or confused peer yields an error, never a panic
//!   or an allocation larger than what it actually sent.
//! - [`HttpError::is_unreachable`] tells "the server is not there (yet), try again later" apart
//!   from every other failure.
//!
//! ```no_run
//! let router = weft_http::UnixHttp::new("/run/weave/weave.sock");
//! let status = router.get_text("/status")?;
//! # Ok::<(), weft_http::HttpError>(())
//! ```

mod client;
mod error;
mod parse;

pub use client::{UnixHttp, DEFAULT_TIMEOUT, DEFAULT_USER_AGENT};
pub use error::{HttpError, Result};
pub use parse::{Response, MAX_BODY_BYTES, MAX_CHUNK_LINE_BYTES, MAX_HEADER_BYTES};
