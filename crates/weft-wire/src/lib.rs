//! Weave mesh wire formats, sans-IO: peer names, NaCl session crypto, the
//! TCP connection handshake, message framing and gossip payloads.
//!
//! Nothing here touches sockets, clocks or threads: every type takes bytes
//! and returns bytes or events, so the mesh core can drive it from any I/O
//! layer and tests can run two ends in memory.
//!
//! A connection goes: [`handshake::Handshake`] (header, version, keys,
//! features) → [`framing::FrameReader`]/[`framing::FrameWriter`] built from
//! the session it returns → [`framing::ProtocolMsg`] per frame body, whose
//! gossip variants carry [`gossip::GossipMsg`]/[`gossip::GossipUnicastMsg`].
//!
//! ```
//! use weft_wire::*;
//!
//! let end = |outbound, last, conn_id| HandshakeParams {
//!     outbound,
//!     password: Some(b"s3cret".to_vec()),
//!     features: Features::new(PeerName::from_mac([2, 0, 0, 0, 0, last]), "node", 7, conn_id),
//! };
//! let (mut a, to_b) = Handshake::new(end(true, 1, 10));
//! let (mut b, to_a) = Handshake::new(end(false, 2, 20));
//! // Feeds one end what the other sent; returns what it sends back.
//! fn step(hs: &mut Handshake, input: &[u8], done: &mut Option<Box<HandshakeDone>>)
//!     -> Result<Vec<u8>, HandshakeError> {
//!     if done.is_some() || input.is_empty() {
//!         return Ok(Vec::new());
//!     }
//!     Ok(match hs.feed(input)? {
//!         Progress::Continue { send } => send,
//!         Progress::Done(mut d) => {
//!             let send = std::mem::take(&mut d.send);
//!             *done = Some(d);
//!             send
//!         }
//!     })
//! }
//! // Shuttle bytes until both ends are done (a socket would do this).
//! let (mut to_a, mut to_b, mut done_a, mut done_b) = (to_a, to_b, None, None);
//! while done_a.is_none() || done_b.is_none() {
//!     let next_b = step(&mut a, &to_a, &mut done_a)?;
//!     let next_a = step(&mut b, &to_b, &mut done_b)?;
//!     (to_a, to_b) = (next_a, next_b);
//! }
//! let (da, db) = (done_a.unwrap(), done_b.unwrap());
//! assert_eq!(da.conn_uid, 10 ^ 20);
//! let (sa, sb) = (da.session.unwrap(), db.session.unwrap());
//! let mut writer = FrameWriter::new(Some(sa.sealer));
//! let mut reader = FrameReader::new(Some(sb.opener));
//! reader.feed(&db.leftover);
//! let msg = ProtocolMsg::Gossip(GossipMsg {
//!     channel: "topology".into(),
//!     src: da.remote.name,
//!     msg: vec![1, 2, 3],
//! });
//! reader.feed(&writer.encode(&msg.encode()?)?);
//! let body = reader.next_message()?.expect("a whole frame");
//! assert_eq!(ProtocolMsg::decode(&body)?, msg);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod crypto;
pub mod framing;
#[doc(hidden)]
pub mod fuzz_support;
mod gobio;
pub mod gossip;
pub mod handshake;
pub mod peer_name;
mod poly1305;
mod secretbox;

pub use crypto::{CryptoError, SessionKey, TcpCrypto};
pub use framing::{FrameError, FrameReader, FrameWriter, MsgError, ProtocolMsg, MAX_TCP_MSG_SIZE};
pub use gossip::{GossipError, GossipMsg, GossipUnicastMsg};
pub use handshake::{
    FeatureError, Features, Handshake, HandshakeDone, HandshakeError, HandshakeParams, Progress,
};
pub use peer_name::{
    mac_from_uuid, peer_name_from_uuid, PeerName, PeerNameError, ShortId, UNKNOWN_PEER_NAME,
};
