//! Message framing on an established mesh TCP connection (protocol version 2)
//! and the protocol messages carried in the frames.
//!
//! Each frame is a 4-byte big-endian length followed by that many bytes of
//! body; with encryption the body is a sealed `secretbox` (tag first). Frames
//! larger than [`MAX_TCP_MSG_SIZE`] (10 MiB) are refused before anything is
//! allocated for them. The (opened) body is `[tag:1][payload]`, see
//! [`ProtocolMsg`].

use crate::crypto::{CryptoError, TcpOpener, TcpSealer, TAG_SIZE};
use crate::gossip::{GossipError, GossipMsg, GossipUnicastMsg};

/// Largest frame body accepted or sent (`maxTCPMsgSize` = 10 MiB).
pub const MAX_TCP_MSG_SIZE: usize = 10 * 1024 * 1024;
/// Size of the big-endian length prefix.
pub const LENGTH_PREFIX_SIZE: usize = 4;

/// Errors while reading or writing frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than the limit.
    #[error("incoming message of {len} bytes exceeds the maximum size of {max} bytes; the peer is misbehaving or is not speaking the Weave mesh protocol, dropping the connection")]
    IncomingTooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// We were asked to send a frame larger than the limit.
    #[error("outgoing message of {len} bytes (on the wire) exceeds the maximum size of {max} bytes; split the data into smaller messages")]
    OutgoingTooLarge {
        /// Frame body length on the wire.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An encrypted frame failed to open.
    #[error("cannot decrypt a message from the peer: {0}")]
    Crypto(#[from] CryptoError),
    /// An earlier error left the stream in an unusable state.
    #[error("the message stream already failed; the connection must be closed")]
    Poisoned,
}

/// Incremental, sans-IO reader of length-prefixed (and optionally sealed)
/// frames: feed it bytes as they arrive and pop complete message bodies.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    opener: Option<TcpOpener>,
    max: usize,
    poisoned: bool,
}

impl FrameReader {
    /// A reader for plaintext frames (`None`) or frames sealed by the peer.
    pub fn new(opener: Option<TcpOpener>) -> Self {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            opener,
            max: MAX_TCP_MSG_SIZE,
            poisoned: false,
        }
    }

    /// Lowers (or raises) the frame size limit; the default is 10 MiB.
    pub fn with_max_size(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Appends bytes received from the connection.
    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Number of bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether the reader is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.opener.is_some()
    }

    /// Pops the next complete message body (opened when encrypted), or
    /// `None` if more bytes are needed. After an error every call fails.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        let avail = &self.buf[self.start..];
        if avail.len() < LENGTH_PREFIX_SIZE {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.max {
            self.poisoned = true;
            return Err(FrameError::IncomingTooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        if avail.len() < LENGTH_PREFIX_SIZE + len {
            return Ok(None);
        }
        let body = &avail[LENGTH_PREFIX_SIZE..LENGTH_PREFIX_SIZE + len];
        let msg = match &mut self.opener {
            None => body.to_vec(),
            Some(opener) => match opener.open(body) {
                Ok(m) => m,
                Err(e) => {
                    self.poisoned = true;
                    return Err(e.into());
                }
            },
        };
        self.start += LENGTH_PREFIX_SIZE + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(msg))
    }

    /// Gives back the bytes not yet consumed (e.g. to hand the stream to
    /// another reader).
    pub fn into_remaining(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

/// Sans-IO writer of length-prefixed (and optionally sealed) frames.
#[derive(Debug)]
pub struct FrameWriter {
    sealer: Option<TcpSealer>,
    max: usize,
}

impl FrameWriter {
    /// A writer for plaintext frames (`None`) or sealed ones.
    pub fn new(sealer: Option<TcpSealer>) -> Self {
        FrameWriter {
            sealer,
            max: MAX_TCP_MSG_SIZE,
        }
    }

    /// Changes the frame size limit; the default is 10 MiB.
    pub fn with_max_size(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Whether the writer is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.sealer.is_some()
    }

    /// Largest message body this writer accepts (the limit less the tag).
    pub fn max_body(&self) -> usize {
        if self.sealer.is_some() {
            self.max.saturating_sub(TAG_SIZE)
        } else {
            self.max
        }
    }

    /// Frames (and seals) one message, appending the wire bytes to `out`.
    /// An oversized message is refused without consuming a sequence number.
    pub fn encode_into(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let wire_len = body.len() + if self.sealer.is_some() { TAG_SIZE } else { 0 };
        if wire_len > self.max || u32::try_from(wire_len).is_err() {
            return Err(FrameError::OutgoingTooLarge {
                len: wire_len,
                max: self.max,
            });
        }
        out.reserve(LENGTH_PREFIX_SIZE + wire_len);
        out.extend_from_slice(&(wire_len as u32).to_be_bytes());
        match &mut self.sealer {
            None => out.extend_from_slice(body),
            Some(sealer) => out.extend_from_slice(&sealer.seal(body)?),
        }
        Ok(())
    }

    /// Frames (and seals) one message.
    pub fn encode(&mut self, body: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode_into(body, &mut out)?;
        Ok(out)
    }
}

/// Protocol message tags (`ProtocolTag` in the mesh).
pub mod tag {
    /// Keep-alive, empty payload, every 30 s.
    pub const HEARTBEAT: u8 = 0;
    /// Legacy overlay control message 1.
    pub const RESERVED1: u8 = 1;
    /// Legacy overlay control message 2.
    pub const RESERVED2: u8 = 2;
    /// Legacy overlay control message 3.
    pub const RESERVED3: u8 = 3;
    /// Gossip to random neighbours.
    pub const GOSSIP: u8 = 4;
    /// Gossip to one peer, relayed hop by hop.
    pub const GOSSIP_UNICAST: u8 = 5;
    /// Gossip broadcast along the broadcast tree.
    pub const GOSSIP_BROADCAST: u8 = 6;
    /// Overlay control message.
    pub const OVERLAY_CONTROL: u8 = 7;
}

/// Errors decoding or encoding a protocol message body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// The body has no tag byte.
    #[error("empty protocol message: every message starts with a tag byte")]
    Empty,
    /// A gossip payload is malformed.
    #[error("bad gossip message (tag {tag}): {source}")]
    Gossip {
        /// The message tag.
        tag: u8,
        /// What was wrong.
        source: GossipError,
    },
    /// A reserved/unknown variant was given a tag that belongs to another variant.
    #[error("tag {0} cannot be used for this message kind")]
    TagMismatch(u8),
    /// An overlay-switch control payload is shorter than its 2-byte header.
    #[error("overlay control message of {0} bytes is shorter than its 2-byte [overlay index, sub-tag] header")]
    ShortOverlayControl(usize),
}

/// A decoded protocol message (the body of a frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolMsg {
    /// Tag 0. Any payload is ignored, as Weave does.
    Heartbeat,
    /// Tags 1..=3: legacy overlay control messages, passed to the overlay.
    Reserved {
        /// 1, 2 or 3.
        tag: u8,
        /// Opaque payload.
        payload: Vec<u8>,
    },
    /// Tag 4.
    Gossip(GossipMsg),
    /// Tag 5.
    GossipUnicast(GossipUnicastMsg),
    /// Tag 6; `src` is the original broadcaster.
    GossipBroadcast(GossipMsg),
    /// Tag 7: opaque overlay control payload (see [`OverlaySwitchMsg`]).
    OverlayControl(Vec<u8>),
    /// Any other tag: Weave logs and ignores these.
    Unknown {
        /// The tag (8..=255).
        tag: u8,
        /// Opaque payload.
        payload: Vec<u8>,
    },
}

impl ProtocolMsg {
    /// The tag byte of this message.
    pub fn tag(&self) -> u8 {
        match self {
            ProtocolMsg::Heartbeat => tag::HEARTBEAT,
            ProtocolMsg::Reserved { tag, .. } | ProtocolMsg::Unknown { tag, .. } => *tag,
            ProtocolMsg::Gossip(_) => tag::GOSSIP,
            ProtocolMsg::GossipUnicast(_) => tag::GOSSIP_UNICAST,
            ProtocolMsg::GossipBroadcast(_) => tag::GOSSIP_BROADCAST,
            ProtocolMsg::OverlayControl(_) => tag::OVERLAY_CONTROL,
        }
    }

    /// Decodes a frame body `[tag][payload]`.
    pub fn decode(body: &[u8]) -> Result<Self, MsgError> {
        let (&t, payload) = body.split_first().ok_or(MsgError::Empty)?;
        let gossip_err = |source| MsgError::Gossip { tag: t, source };
        Ok(match t {
            tag::HEARTBEAT => ProtocolMsg::Heartbeat,
            tag::RESERVED1..=tag::RESERVED3 => ProtocolMsg::Reserved {
                tag: t,
                payload: payload.to_vec(),
            },
            tag::GOSSIP => ProtocolMsg::Gossip(GossipMsg::decode(payload).map_err(gossip_err)?),
            tag::GOSSIP_UNICAST => {
                ProtocolMsg::GossipUnicast(GossipUnicastMsg::decode(payload).map_err(gossip_err)?)
            }
            tag::GOSSIP_BROADCAST => {
                ProtocolMsg::GossipBroadcast(GossipMsg::decode(payload).map_err(gossip_err)?)
            }
            tag::OVERLAY_CONTROL => ProtocolMsg::OverlayControl(payload.to_vec()),
            _ => ProtocolMsg::Unknown {
                tag: t,
                payload: payload.to_vec(),
            },
        })
    }

    /// Encodes the frame body `[tag][payload]`; gossip payloads are gob
    /// encoded with a fresh encoder each time, like Weave.
    pub fn encode(&self) -> Result<Vec<u8>, MsgError> {
        let t = self.tag();
        let gossip_err = |source| MsgError::Gossip { tag: t, source };
        let mut out = vec![t];
        match self {
            ProtocolMsg::Heartbeat => {}
            ProtocolMsg::Reserved { tag, payload } => {
                if !(tag::RESERVED1..=tag::RESERVED3).contains(tag) {
                    return Err(MsgError::TagMismatch(*tag));
                }
                out.extend_from_slice(payload);
            }
            ProtocolMsg::Unknown { tag, payload } => {
                if *tag <= tag::OVERLAY_CONTROL {
                    return Err(MsgError::TagMismatch(*tag));
                }
                out.extend_from_slice(payload);
            }
            ProtocolMsg::Gossip(m) | ProtocolMsg::GossipBroadcast(m) => {
                out.extend_from_slice(&m.encode().map_err(gossip_err)?)
            }
            ProtocolMsg::GossipUnicast(m) => {
                out.extend_from_slice(&m.encode().map_err(gossip_err)?)
            }
            ProtocolMsg::OverlayControl(p) => out.extend_from_slice(p),
        }
        Ok(out)
    }
}

/// The payload of an overlay control message sent through Weave's
/// `OverlaySwitch`: `[overlayIndex:1][subTag:1][msg...]`, where the index is
/// the position in the list of overlays both peers have in common.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySwitchMsg {
    /// Index into the common-overlay list.
    pub overlay_index: u8,
    /// The overlay's own tag.
    pub sub_tag: u8,
    /// The overlay's message.
    pub msg: Vec<u8>,
}

impl OverlaySwitchMsg {
    /// Parses an overlay control payload.
    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        match payload {
            [overlay_index, sub_tag, msg @ ..] => Ok(OverlaySwitchMsg {
                overlay_index: *overlay_index,
                sub_tag: *sub_tag,
                msg: msg.to_vec(),
            }),
            _ => Err(MsgError::ShortOverlayControl(payload.len())),
        }
    }

    /// Builds the overlay control payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.msg.len());
        out.push(self.overlay_index);
        out.push(self.sub_tag);
        out.extend_from_slice(&self.msg);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{SessionKey, TcpCrypto};

    #[test]
    fn plaintext_round_trip() {
        let mut w = FrameWriter::new(None);
        let mut wire = w.encode(b"hello").unwrap();
        w.encode_into(b"", &mut wire).unwrap();
        assert_eq!(&wire[..9], b"\0\0\0\x05hello");
        let mut r = FrameReader::new(None);
        r.feed(&wire[..3]);
        assert_eq!(r.next_message().unwrap(), None);
        r.feed(&wire[3..]);
        assert_eq!(r.next_message().unwrap().unwrap(), b"hello");
        assert_eq!(r.next_message().unwrap().unwrap(), b"");
        assert_eq!(r.next_message().unwrap(), None);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn oversized_incoming_is_refused_from_the_header_alone() {
        let mut r = FrameReader::new(None);
        let len = (MAX_TCP_MSG_SIZE as u32 + 1).to_be_bytes();
        r.feed(&len);
        let err = r.next_message().unwrap_err();
        assert_eq!(
            err,
            FrameError::IncomingTooLarge {
                len: MAX_TCP_MSG_SIZE as u64 + 1,
                max: MAX_TCP_MSG_SIZE
            }
        );
        assert!(err.to_string().contains("exceeds the maximum size"));
        assert_eq!(r.next_message(), Err(FrameError::Poisoned));
        // Exactly the limit is accepted (as a header).
        let mut r = FrameReader::new(None);
        r.feed(&(MAX_TCP_MSG_SIZE as u32).to_be_bytes());
        assert_eq!(r.next_message().unwrap(), None);
        let mut r = FrameReader::new(None);
        r.feed(&u32::MAX.to_be_bytes());
        assert!(r.next_message().is_err());
    }

    #[test]
    fn oversized_outgoing_is_refused() {
        let mut w = FrameWriter::new(None).with_max_size(8);
        assert!(w.encode(&[0; 8]).is_ok());
        assert_eq!(
            w.encode(&[0; 9]),
            Err(FrameError::OutgoingTooLarge { len: 9, max: 8 })
        );
        let key = SessionKey::from_bytes([1; 32]);
        let c = TcpCrypto::new(key, true);
        let mut w = FrameWriter::new(Some(c.sealer)).with_max_size(20);
        assert_eq!(w.max_body(), 4);
        assert!(w.encode(&[0; 5]).is_err());
        assert!(w.encode(&[0; 4]).is_ok());
    }

    #[test]
    fn sealed_round_trip_and_tamper() {
        let key = SessionKey::from_bytes([3; 32]);
        let a = TcpCrypto::new(key.clone(), true);
        let b = TcpCrypto::new(key, false);
        let mut w = FrameWriter::new(Some(a.sealer));
        let mut r = FrameReader::new(Some(b.opener));
        let f1 = w.encode(b"one").unwrap();
        let f2 = w.encode(b"two").unwrap();
        assert_eq!(f1.len(), 4 + 16 + 3);
        assert_eq!(&f1[..4], &[0, 0, 0, 19]);
        r.feed(&f1);
        r.feed(&f2);
        assert_eq!(r.next_message().unwrap().unwrap(), b"one");
        assert_eq!(r.next_message().unwrap().unwrap(), b"two");
        let mut f3 = w.encode(b"three").unwrap();
        let last = f3.len() - 1;
        f3[last] ^= 0x80;
        r.feed(&f3);
        assert!(matches!(
            r.next_message(),
            Err(FrameError::Crypto(CryptoError::Open))
        ));
        assert_eq!(r.next_message(), Err(FrameError::Poisoned));
    }

    #[test]
    fn sealed_frame_shorter_than_tag_fails() {
        let key = SessionKey::from_bytes([3; 32]);
        let b = TcpCrypto::new(key, false);
        let mut r = FrameReader::new(Some(b.opener));
        r.feed(&[0, 0, 0, 2, 9, 9]);
        assert_eq!(
            r.next_message(),
            Err(FrameError::Crypto(CryptoError::TooShort(2)))
        );
    }

    #[test]
    fn simple_messages() {
        for (msg, body) in [
            (ProtocolMsg::Heartbeat, vec![0u8]),
            (
                ProtocolMsg::Reserved {
                    tag: 2,
                    payload: vec![1, 2],
                },
                vec![2, 1, 2],
            ),
            (ProtocolMsg::OverlayControl(vec![0, 1, 9]), vec![7, 0, 1, 9]),
            (
                ProtocolMsg::Unknown {
                    tag: 200,
                    payload: vec![5],
                },
                vec![200, 5],
            ),
        ] {
            assert_eq!(msg.encode().unwrap(), body);
            assert_eq!(ProtocolMsg::decode(&body).unwrap(), msg);
        }
        assert_eq!(
            ProtocolMsg::decode(&[0, 1, 2]).unwrap(),
            ProtocolMsg::Heartbeat
        );
        assert_eq!(ProtocolMsg::decode(&[]), Err(MsgError::Empty));
        assert!(ProtocolMsg::Reserved {
            tag: 4,
            payload: vec![]
        }
        .encode()
        .is_err());
        assert!(ProtocolMsg::Unknown {
            tag: 5,
            payload: vec![]
        }
        .encode()
        .is_err());
    }

    #[test]
    fn overlay_switch_payload() {
        let m = OverlaySwitchMsg {
            overlay_index: 1,
            sub_tag: 3,
            msg: b"hb".to_vec(),
        };
        assert_eq!(m.encode(), vec![1, 3, b'h', b'b']);
        assert_eq!(OverlaySwitchMsg::decode(&m.encode()).unwrap(), m);
        assert_eq!(
            OverlaySwitchMsg::decode(&[1]),
            Err(MsgError::ShortOverlayControl(1))
        );
    }
}
