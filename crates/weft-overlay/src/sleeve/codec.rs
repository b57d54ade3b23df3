//! The sleeve datagram format, wire-compatible with Weave Net 2.8.
//!
//! ```text
//! plaintext: [sender PeerName:6] repeat{ [src PeerName:6][dst PeerName:6][len:u16 BE][frame:len] }
//! encrypted: [sender PeerName:6][seqNoAndDF:u64 BE][secretbox(repeat{...})]
//! ```
//!
//! The secretbox is Go's layout (Poly1305 tag first) under the connection's
//! session key with the UDP nonce (`weft_wire::crypto::udp_nonce`); the most
//! significant bit of `seqNoAndDF` selects the DF channel, each channel with
//! its own sequence space and replay window.
//!
//! *Special frames* have an all-zero Ethernet header and are told apart by
//! length: 22 bytes = heartbeat (connection UID at offset 14), 60001 =
//! fragmentation test (all zeros), anything else = PMTU probe of
//! `candidate + 14` bytes.
//!
//! Encoding is split in two: [`DatagramBuilder`] accumulates frames (up to
//! [`MAX_FRAMES_PER_DATAGRAM`] within a byte limit) behind room for the
//! datagram header, and [`SleeveEncryptor::finish`] fills that header and,
//! when the connection is encrypted, seals the frames in place: one buffer
//! per datagram, no copies. Decoding is [`parse_sender`] (to find the
//! forwarder), [`SleeveDecryptor::open`] (authenticate, replay-check, into a
//! reused buffer) and [`FrameIter`].

use weft_wire::crypto::{split_seq_no_and_df, CryptoError, SleeveOpener, SleeveSealer, TAG_SIZE};
use weft_wire::{PeerName, SessionKey};

use super::replay::{ReplayError, ReplayWindow};
use crate::ether::ETHERNET_HEADER_LEN;

/// Size of a peer name on the wire.
pub const NAME_SIZE: usize = 6;
/// Per-frame header: `[src:6][dst:6][len:2]` (`FrameOverhead`).
pub const FRAME_OVERHEAD: usize = 2 * NAME_SIZE + 2;
/// Per-datagram overhead without encryption: the sender name.
pub const PLAIN_PACKET_OVERHEAD: usize = NAME_SIZE;
/// Per-datagram overhead with NaCl: sender name, `seqNoAndDF`, Poly1305 tag.
pub const NACL_PACKET_OVERHEAD: usize = NAME_SIZE + 8 + TAG_SIZE;
/// IPv4 + UDP header bytes (`UDPOverhead`).
pub const UDP_OVERHEAD: usize = 28;
/// Largest IPv4 datagram (`MaxUDPPacketSize`).
pub const MAX_UDP_PACKET_SIZE: usize = 65535;
/// Largest UDP payload over IPv4.
pub const MAX_UDP_PAYLOAD: usize = MAX_UDP_PACKET_SIZE - UDP_OVERHEAD;
/// Largest frame a sleeve frame header can describe.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;
/// Frames packed into one datagram at most (Weave's aggregator limit).
pub const MAX_FRAMES_PER_DATAGRAM: usize = 100;
/// Length of a heartbeat special frame: zero Ethernet header + u64 UID.
pub const HEARTBEAT_FRAME_LEN: usize = ETHERNET_HEADER_LEN + 8;
/// Length of the fragmentation-test special frame (`FragTestSize`).
pub const FRAG_TEST_SIZE: usize = 60001;
/// Length of the special frame sent DF to provoke `EMSGSIZE`
/// (`PMTUDiscoverySize`).
pub const PMTU_DISCOVERY_SIZE: usize = 60000;

/// Errors decoding or encoding sleeve datagrams. None of them is fatal for
/// the connection: the datagram is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The datagram is shorter than the sender name.
    #[error("sleeve datagram of {0} bytes is shorter than the 6-byte sender name; dropped")]
    TooShort(usize),
    /// An encrypted body is shorter than `seqNoAndDF` plus the tag.
    #[error("encrypted sleeve datagram body of {0} bytes is shorter than the 24-byte sequence number and tag; dropped")]
    ShortEncrypted(usize),
    /// A frame header or frame runs past the end of the datagram.
    #[error("sleeve frame at byte {offset} is truncated: {needed} bytes needed, {available} available; dropped")]
    Truncated {
        /// Where the frame starts in the decoded body.
        offset: usize,
        /// Bytes the frame header promised.
        needed: usize,
        /// Bytes left in the body.
        available: usize,
    },
    /// A frame is too long for the 16-bit length field.
    #[error("frame of {0} bytes does not fit the 16-bit sleeve frame length")]
    FrameTooLong(usize),
    /// The datagram already holds the maximum number of frames.
    #[error("datagram already holds {MAX_FRAMES_PER_DATAGRAM} frames")]
    TooManyFrames,
    /// The body did not authenticate (wrong key, tampering, stray packet).
    #[error("cannot decrypt sleeve datagram: {0}")]
    Crypto(#[from] CryptoError),
    /// A builder made for another kind of connection (plaintext or sealed).
    #[error("datagram builder has {builder} bytes of header room, the connection needs {encryptor}; build datagrams with the connection's own SleeveEncryptor::builder")]
    BuilderMismatch {
        /// The builder's header room.
        builder: usize,
        /// The encryptor's per-datagram overhead.
        encryptor: usize,
    },
    /// A replayed or too old encrypted datagram.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// One frame of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleeveFrame<'a> {
    /// The peer that captured the frame.
    pub src: PeerName,
    /// The peer the frame is for (relays forward it unchanged).
    pub dst: PeerName,
    /// The Ethernet frame (or special frame).
    pub frame: &'a [u8],
}

/// Appends one `[src][dst][len][frame]` record to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    src: PeerName,
    dst: PeerName,
    frame: &[u8],
) -> Result<(), CodecError> {
    let len = u16::try_from(frame.len()).map_err(|_| CodecError::FrameTooLong(frame.len()))?;
    out.reserve(FRAME_OVERHEAD + frame.len());
    out.extend_from_slice(&src.to_name_bytes());
    out.extend_from_slice(&dst.to_name_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    Ok(())
}

/// Iterates the frame records of a (decrypted) datagram body. Yields an
/// error and stops at the first truncated record; a clean end returns `None`.
#[derive(Debug, Clone)]
pub struct FrameIter<'a> {
    body: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> FrameIter<'a> {
    /// Iterates `body` (the bytes after the sender name, decrypted).
    pub fn new(body: &'a [u8]) -> Self {
        FrameIter {
            body,
            pos: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<SleeveFrame<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos == self.body.len() {
            return None;
        }
        let rest = &self.body[self.pos..];
        let truncated = |needed| CodecError::Truncated {
            offset: self.pos,
            needed,
            available: rest.len(),
        };
        if rest.len() < FRAME_OVERHEAD {
            self.failed = true;
            return Some(Err(truncated(FRAME_OVERHEAD)));
        }
        let len = usize::from(u16::from_be_bytes([rest[12], rest[13]]));
        if rest.len() < FRAME_OVERHEAD + len {
            self.failed = true;
            return Some(Err(truncated(FRAME_OVERHEAD + len)));
        }
        let name = |b: &[u8]| {
            let mut m = [0u8; NAME_SIZE];
            m.copy_from_slice(b);
            PeerName::from_mac(m)
        };
        let f = SleeveFrame {
            src: name(&rest[..NAME_SIZE]),
            dst: name(&rest[NAME_SIZE..2 * NAME_SIZE]),
            frame: &rest[FRAME_OVERHEAD..FRAME_OVERHEAD + len],
        };
        self.pos += FRAME_OVERHEAD + len;
        Some(Ok(f))
    }
}

/// Decodes all frames of a body, failing if any record is truncated (the
/// whole datagram is then dropped).
pub fn decode_frames(body: &[u8]) -> Result<Vec<SleeveFrame<'_>>, CodecError> {
    FrameIter::new(body).collect()
}

/// Splits a datagram into the sender's name and the rest.
pub fn parse_sender(datagram: &[u8]) -> Result<(PeerName, &[u8]), CodecError> {
    if datagram.len() < NAME_SIZE {
        return Err(CodecError::TooShort(datagram.len()));
    }
    let mut m = [0u8; NAME_SIZE];
    m.copy_from_slice(&datagram[..NAME_SIZE]);
    Ok((PeerName::from_mac(m), &datagram[NAME_SIZE..]))
}

/// Accumulates frame records for one channel's next datagram, behind
/// `packet_overhead` bytes of room for the datagram header.
#[derive(Debug, Clone)]
pub struct DatagramBuilder {
    packet_overhead: usize,
    /// Header room (`packet_overhead` bytes), then the frame records.
    buf: Vec<u8>,
    frames: usize,
}

impl DatagramBuilder {
    /// A builder for datagrams with the given per-datagram overhead
    /// ([`PLAIN_PACKET_OVERHEAD`] or [`NACL_PACKET_OVERHEAD`]).
    pub fn new(packet_overhead: usize) -> Self {
        DatagramBuilder {
            packet_overhead,
            buf: header_room(packet_overhead, 0),
            frames: 0,
        }
    }

    /// Size of the datagram if it were finished now.
    pub fn wire_len(&self) -> usize {
        self.buf.len()
    }

    /// Number of frames accumulated.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Whether no frame is accumulated.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Whether a frame of `frame_len` bytes can be added without the datagram
    /// exceeding `limit` bytes (UDP payload) or the frame count limit.
    pub fn fits(&self, frame_len: usize, limit: usize) -> bool {
        self.frames < MAX_FRAMES_PER_DATAGRAM
            && frame_len <= MAX_FRAME_LEN
            && self.wire_len() + FRAME_OVERHEAD + frame_len <= limit
    }

    /// Adds a frame record (the caller checks [`fits`](Self::fits) first).
    pub fn push(&mut self, src: PeerName, dst: PeerName, frame: &[u8]) -> Result<(), CodecError> {
        if self.frames >= MAX_FRAMES_PER_DATAGRAM {
            return Err(CodecError::TooManyFrames);
        }
        encode_frame(&mut self.buf, src, dst, frame)?;
        self.frames += 1;
        Ok(())
    }

    /// Drops the accumulated frames.
    pub fn clear(&mut self) {
        self.buf.truncate(self.packet_overhead);
        self.frames = 0;
    }

    /// Takes the datagram buffer (header room, then the records) and starts
    /// over with an empty one that can hold `next_capacity` bytes.
    fn take(&mut self, next_capacity: usize) -> Vec<u8> {
        self.frames = 0;
        let next = header_room(self.packet_overhead, next_capacity);
        std::mem::replace(&mut self.buf, next)
    }
}

/// An empty datagram: `overhead` zero bytes of header room, with capacity for
/// `capacity` bytes in all.
fn header_room(overhead: usize, capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(capacity.max(overhead));
    buf.resize(overhead, 0);
    buf
}

/// Turns frame records into datagrams for one connection: plaintext or
/// NaCl-sealed with separate DF / non-DF sequence spaces.
#[derive(Debug)]
pub struct SleeveEncryptor {
    sender: PeerName,
    sealer: Option<SleeveSealer>,
}

impl SleeveEncryptor {
    /// A plaintext encryptor (trusted connection) for datagrams from `sender`.
    pub fn plaintext(sender: PeerName) -> Self {
        SleeveEncryptor {
            sender,
            sealer: None,
        }
    }

    /// A NaCl encryptor under the connection's session key;
    /// `we_are_outbound` selects the nonce polarity.
    pub fn nacl(sender: PeerName, key: &SessionKey, we_are_outbound: bool) -> Self {
        SleeveEncryptor {
            sender,
            sealer: Some(SleeveSealer::new(key, we_are_outbound)),
        }
    }

    /// Whether datagrams are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.sealer.is_some()
    }

    /// Per-datagram overhead (`PacketOverhead`: 6 plaintext, 30 NaCl).
    pub fn packet_overhead(&self) -> usize {
        if self.sealer.is_some() {
            NACL_PACKET_OVERHEAD
        } else {
            PLAIN_PACKET_OVERHEAD
        }
    }

    /// A builder matching this encryptor's overhead.
    pub fn builder(&self) -> DatagramBuilder {
        DatagramBuilder::new(self.packet_overhead())
    }

    /// Finishes the datagram accumulated in `builder` (made by this
    /// encryptor's [`builder`](Self::builder)) on the DF or non-DF channel:
    /// writes the header into its header room and, on an encrypted
    /// connection, seals the records in place. The builder starts over with
    /// room for `next_capacity` bytes. Plaintext datagrams are the same on
    /// both channels.
    pub fn finish(
        &mut self,
        df: bool,
        builder: &mut DatagramBuilder,
        next_capacity: usize,
    ) -> Result<Vec<u8>, CodecError> {
        if builder.packet_overhead != self.packet_overhead() {
            return Err(CodecError::BuilderMismatch {
                builder: builder.packet_overhead,
                encryptor: self.packet_overhead(),
            });
        }
        let mut datagram = builder.take(next_capacity);
        self.write_header(df, &mut datagram)?;
        Ok(datagram)
    }

    /// Fills the header room of `datagram` (`packet_overhead` bytes, then
    /// the records) and seals the records in place when encrypted.
    fn write_header(&mut self, df: bool, datagram: &mut [u8]) -> Result<(), CodecError> {
        datagram[..NAME_SIZE].copy_from_slice(&self.sender.to_name_bytes());
        if let Some(sealer) = &mut self.sealer {
            let (header, records) = datagram.split_at_mut(NACL_PACKET_OVERHEAD);
            let (sdf, tag) = sealer.seal_in_place(df, records)?;
            header[NAME_SIZE..NAME_SIZE + 8].copy_from_slice(&sdf.to_be_bytes());
            header[NAME_SIZE + 8..].copy_from_slice(&tag);
        }
        Ok(())
    }

    /// Builds a datagram holding a single frame.
    pub fn single(
        &mut self,
        df: bool,
        src: PeerName,
        dst: PeerName,
        frame: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let overhead = self.packet_overhead();
        let mut datagram = header_room(overhead, overhead + FRAME_OVERHEAD + frame.len());
        encode_frame(&mut datagram, src, dst, frame)?;
        self.write_header(df, &mut datagram)?;
        Ok(datagram)
    }
}

/// Opens datagrams from one peer: authenticates and replay-checks encrypted
/// ones (one window per channel), passes plaintext ones through.
#[derive(Debug)]
pub struct SleeveDecryptor {
    opener: Option<SleeveOpener>,
    window_df: ReplayWindow,
    window_non_df: ReplayWindow,
}

impl SleeveDecryptor {
    /// For a trusted (plaintext) connection.
    pub fn plaintext() -> Self {
        SleeveDecryptor {
            opener: None,
            window_df: ReplayWindow::new(),
            window_non_df: ReplayWindow::new(),
        }
    }

    /// For an encrypted connection; `we_are_outbound` is our role.
    pub fn nacl(key: &SessionKey, we_are_outbound: bool) -> Self {
        SleeveDecryptor {
            opener: Some(SleeveOpener::new(key, we_are_outbound)),
            ..Self::plaintext()
        }
    }

    /// Whether datagrams are expected to be sealed.
    pub fn is_encrypted(&self) -> bool {
        self.opener.is_some()
    }

    /// Opens the body of a datagram (the bytes after the sender name) and
    /// returns the frame records, plus whether it came on the DF channel
    /// (always `false` for plaintext, which does not say). Plaintext records
    /// are `body` itself; decrypted ones are written to `scratch` (cleared
    /// first), a buffer the caller keeps from one datagram to the next.
    pub fn open<'a>(
        &mut self,
        body: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<(bool, &'a [u8]), CodecError> {
        let Some(opener) = &self.opener else {
            return Ok((false, body));
        };
        let short = || CodecError::ShortEncrypted(body.len());
        let (seq_bytes, sealed) = body.split_first_chunk::<8>().ok_or_else(short)?;
        let (tag, ciphertext) = sealed.split_first_chunk::<TAG_SIZE>().ok_or_else(short)?;
        let sdf = u64::from_be_bytes(*seq_bytes);
        let (df, seq) = split_seq_no_and_df(sdf);
        let window = if df {
            &mut self.window_df
        } else {
            &mut self.window_non_df
        };
        window.check(seq)?;
        scratch.clear();
        scratch.extend_from_slice(ciphertext);
        opener.open_in_place(sdf, tag, scratch)?;
        window.accept(seq)?;
        Ok((df, &scratch[..]))
    }
}

/// What a special frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// A heartbeat carrying the connection UID.
    Heartbeat {
        /// The connection UID (must match ours).
        conn_uid: u64,
    },
    /// The 60001-byte fragmentation test; `intact` if it is all zeros.
    FragTest {
        /// All bytes zero (a corrupted test is ignored).
        intact: bool,
    },
    /// A PMTU probe for an overlay MTU of `candidate` (= length − 14).
    PmtuProbe {
        /// The MTU being verified.
        candidate: usize,
    },
}

/// Whether `frame` is a special frame (an all-zero 14-byte Ethernet header)
/// and which.
pub fn classify_special(frame: &[u8]) -> Option<Special> {
    if frame.len() < ETHERNET_HEADER_LEN || frame[..ETHERNET_HEADER_LEN].iter().any(|&b| b != 0) {
        return None;
    }
    Some(match frame.len() {
        HEARTBEAT_FRAME_LEN => {
            let mut u = [0u8; 8];
            u.copy_from_slice(&frame[ETHERNET_HEADER_LEN..]);
            Special::Heartbeat {
                conn_uid: u64::from_be_bytes(u),
            }
        }
        FRAG_TEST_SIZE => Special::FragTest {
            intact: frame.iter().all(|&b| b == 0),
        },
        n => Special::PmtuProbe {
            candidate: n - ETHERNET_HEADER_LEN,
        },
    })
}

/// The heartbeat special frame for a connection.
pub fn heartbeat_frame(conn_uid: u64) -> [u8; HEARTBEAT_FRAME_LEN] {
    let mut f = [0u8; HEARTBEAT_FRAME_LEN];
    f[ETHERNET_HEADER_LEN..].copy_from_slice(&conn_uid.to_be_bytes());
    f
}

/// The fragmentation-test special frame.
pub fn frag_test_frame() -> Vec<u8> {
    vec![0u8; FRAG_TEST_SIZE]
}

/// A special frame of `len` zero bytes (PMTU probes use `candidate + 14`).
pub fn zero_frame(len: usize) -> Vec<u8> {
    vec![0u8; len]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use weft_wire::crypto::DF_FLAG;

    fn pn(s: &str) -> PeerName {
        s.parse().unwrap()
    }

    #[test]
    fn plaintext_vector_by_hand() {
        let a = pn("02:00:00:00:00:0a");
        let b = pn("02:00:00:00:00:0b");
        let mut enc = SleeveEncryptor::plaintext(a);
        let mut bld = enc.builder();
        bld.push(a, b, &[0xde, 0xad]).unwrap();
        bld.push(b, a, &[]).unwrap();
        assert_eq!(bld.wire_len(), 6 + 16 + 14);
        let d = enc.finish(false, &mut bld, 0).unwrap();
        let expected: Vec<u8> = [
            &[2, 0, 0, 0, 0, 0x0a][..],                  // sender
            &[2, 0, 0, 0, 0, 0x0a, 2, 0, 0, 0, 0, 0x0b], // src, dst
            &[0, 2, 0xde, 0xad],                         // len, frame
            &[2, 0, 0, 0, 0, 0x0b, 2, 0, 0, 0, 0, 0x0a],
            &[0, 0],
        ]
        .concat();
        assert_eq!(d, expected);
        assert!(bld.is_empty());

        let (sender, body) = parse_sender(&d).unwrap();
        assert_eq!(sender, a);
        let mut dec = SleeveDecryptor::plaintext();
        let mut scratch = Vec::new();
        let (df, plain) = dec.open(body, &mut scratch).unwrap();
        assert!(!df);
        let frames = decode_frames(plain).unwrap();
        assert_eq!(
            frames,
            vec![
                SleeveFrame {
                    src: a,
                    dst: b,
                    frame: &[0xde, 0xad]
                },
                SleeveFrame {
                    src: b,
                    dst: a,
                    frame: &[]
                },
            ]
        );
    }

    #[test]
    fn encrypted_layout_and_channels() {
        let a = pn("02:00:00:00:00:0a");
        let b = pn("02:00:00:00:00:0b");
        let key = SessionKey::from_bytes([9; 32]);
        let mut enc = SleeveEncryptor::nacl(a, &key, true);
        let mut dec = SleeveDecryptor::nacl(&key, false);
        assert_eq!(enc.packet_overhead(), 30);
        let frame = [7u8; 60];
        let d0 = enc.single(false, a, b, &frame).unwrap();
        let d1 = enc.single(true, a, b, &frame).unwrap();
        let d2 = enc.single(false, a, b, &frame).unwrap();
        // [sender][seqNoAndDF][tag][ciphertext of one record]
        assert_eq!(d0.len(), 30 + 14 + 60);
        assert_eq!(&d0[..6], &a.to_name_bytes());
        assert_eq!(&d0[6..14], &0u64.to_be_bytes());
        assert_eq!(&d1[6..14], &DF_FLAG.to_be_bytes());
        assert_eq!(&d2[6..14], &1u64.to_be_bytes());
        // The sealed part is exactly weft-wire's secretbox under the UDP nonce.
        let opener = SleeveOpener::new(&key, false);
        let mut rec = Vec::new();
        encode_frame(&mut rec, a, b, &frame).unwrap();
        assert_eq!(opener.open(0, &d0[14..]).unwrap(), rec);

        let mut scratch = Vec::new();
        for (d, want_df) in [(&d1, true), (&d0, false), (&d2, false)] {
            let (_, body) = parse_sender(d).unwrap();
            let (df, plain) = dec.open(body, &mut scratch).unwrap();
            assert_eq!(df, want_df);
            assert_eq!(decode_frames(plain).unwrap()[0].frame, &frame);
        }
        // Replays are refused per channel.
        let (_, body) = parse_sender(&d0).unwrap();
        assert_eq!(
            dec.open(body, &mut scratch),
            Err(CodecError::Replay(ReplayError::Duplicate(0)))
        );
        // Tampering is refused and does not burn the sequence number.
        let d3 = enc.single(false, a, b, &frame).unwrap();
        let mut bad = d3.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            dec.open(&bad[6..], &mut scratch),
            Err(CodecError::Crypto(CryptoError::Open))
        ));
        assert!(dec.open(&d3[6..], &mut scratch).is_ok());
        // Our own datagrams (wrong polarity) do not open.
        let mut dec_wrong = SleeveDecryptor::nacl(&key, true);
        assert!(dec_wrong.open(&d3[6..], &mut scratch).is_err());
        assert_eq!(
            dec.open(&[0u8; 23], &mut scratch),
            Err(CodecError::ShortEncrypted(23))
        );
        // A builder for a plaintext connection is refused by a sealing encryptor.
        let mut plain_builder = DatagramBuilder::new(PLAIN_PACKET_OVERHEAD);
        plain_builder.push(a, b, &frame).unwrap();
        assert_eq!(
            enc.finish(false, &mut plain_builder, 0),
            Err(CodecError::BuilderMismatch {
                builder: 6,
                encryptor: 30
            })
        );
        assert_eq!(plain_builder.frames(), 1);
    }

    #[test]
    fn builder_limits() {
        let a = pn("02:00:00:00:00:0a");
        let mut b = DatagramBuilder::new(PLAIN_PACKET_OVERHEAD);
        assert!(b.fits(1486, 1506));
        assert!(!b.fits(1487, 1506));
        for _ in 0..MAX_FRAMES_PER_DATAGRAM {
            assert!(b.fits(1, 65507));
            b.push(a, a, &[1]).unwrap();
        }
        assert!(!b.fits(1, 65507));
        assert_eq!(b.push(a, a, &[1]), Err(CodecError::TooManyFrames));
        let mut b = DatagramBuilder::new(PLAIN_PACKET_OVERHEAD);
        assert!(!b.fits(70000, usize::MAX));
        assert_eq!(
            b.push(a, a, &vec![0; 70000]),
            Err(CodecError::FrameTooLong(70000))
        );
    }

    #[test]
    fn decoder_rejects_truncation() {
        assert_eq!(parse_sender(&[1, 2, 3]), Err(CodecError::TooShort(3)));
        let mut body = Vec::new();
        encode_frame(&mut body, pn("::1"), pn("::2"), &[1, 2, 3]).unwrap();
        assert_eq!(decode_frames(&body).unwrap().len(), 1);
        assert_eq!(
            decode_frames(&body[..body.len() - 1]),
            Err(CodecError::Truncated {
                offset: 0,
                needed: 17,
                available: 16
            })
        );
        body.extend_from_slice(&[0; 5]);
        assert_eq!(
            decode_frames(&body),
            Err(CodecError::Truncated {
                offset: 17,
                needed: 14,
                available: 5
            })
        );
        assert_eq!(decode_frames(&[]).unwrap(), vec![]);
    }

    #[test]
    fn special_frames() {
        let hb = heartbeat_frame(0x0102030405060708);
        assert_eq!(hb.len(), 22);
        assert_eq!(
            classify_special(&hb),
            Some(Special::Heartbeat {
                conn_uid: 0x0102030405060708
            })
        );
        assert_eq!(
            classify_special(&frag_test_frame()),
            Some(Special::FragTest { intact: true })
        );
        let mut f = frag_test_frame();
        f[100] = 1;
        assert_eq!(
            classify_special(&f),
            Some(Special::FragTest { intact: false })
        );
        assert_eq!(
            classify_special(&zero_frame(1400 + 14)),
            Some(Special::PmtuProbe { candidate: 1400 })
        );
        assert_eq!(
            classify_special(&zero_frame(14)),
            Some(Special::PmtuProbe { candidate: 0 })
        );
        assert_eq!(classify_special(&zero_frame(13)), None);
        let mut eth = zero_frame(60);
        eth[0] = 0xff;
        assert_eq!(classify_special(&eth), None);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok((_, body)) = parse_sender(&data) {
                let _ = decode_frames(body);
                let mut plain = SleeveDecryptor::plaintext();
                let _ = plain.open(body, &mut Vec::new());
                let mut nacl = SleeveDecryptor::nacl(&SessionKey::from_bytes([1; 32]), false);
                let _ = nacl.open(body, &mut Vec::new());
            }
            for f in FrameIter::new(&data).flatten() {
                let _ = classify_special(f.frame);
            }
            let _ = classify_special(&data);
        }

        #[test]
        fn round_trip(frames in proptest::collection::vec(
            (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..400)), 0..20),
            encrypted: bool, df: bool)
        {
            let sender = pn("02:00:00:00:00:01");
            let key = SessionKey::from_bytes([3; 32]);
            let (mut enc, mut dec) = if encrypted {
                (SleeveEncryptor::nacl(sender, &key, false), SleeveDecryptor::nacl(&key, true))
            } else {
                (SleeveEncryptor::plaintext(sender), SleeveDecryptor::plaintext())
            };
            let mut b = enc.builder();
            let frames: Vec<_> = frames.into_iter().map(|(s, d, f)| {
                (PeerName::new(s & PeerName::MAX).unwrap(), PeerName::new(d & PeerName::MAX).unwrap(), f)
            }).collect();
            for (s, d, f) in &frames {
                b.push(*s, *d, f).unwrap();
            }
            let len = b.wire_len();
            let dgram = enc.finish(df, &mut b, 1500).unwrap();
            prop_assert_eq!(dgram.len(), len);
            prop_assert!(b.is_empty());
            prop_assert_eq!(b.wire_len(), enc.packet_overhead());
            let (got_sender, body) = parse_sender(&dgram).unwrap();
            prop_assert_eq!(got_sender, sender);
            let mut scratch = Vec::new();
            let (got_df, plain) = dec.open(body, &mut scratch).unwrap();
            prop_assert_eq!(got_df, df && encrypted);
            let got = decode_frames(plain).unwrap();
            prop_assert_eq!(got.len(), frames.len());
            for (g, (s, d, f)) in got.iter().zip(&frames) {
                prop_assert_eq!(g.src, *s);
                prop_assert_eq!(g.dst, *d);
                prop_assert_eq!(g.frame, &f[..]);
            }
        }
    }
}
