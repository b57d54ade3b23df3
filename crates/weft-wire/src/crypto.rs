//! NaCl session crypto, bit-compatible with `golang.org/x/crypto/nacl` as the
//! Weave mesh uses it.
//!
//! - Key agreement: a fresh X25519 key pair per connection; the shared key is
//!   `box.Precompute` = `HSalsa20(X25519(our_secret, their_public), 0^16)`.
//! - Session key: `SHA-256(shared_key || password)`.
//! - Messages: `secretbox` (XSalsa20-Poly1305) laid out like Go's
//!   `secretbox.Seal`: the 16-byte Poly1305 tag first, then the ciphertext.
//! - TCP nonces: byte 0 bit 7 = the sender dialled the connection, bit 6 = 1
//!   (TCP), bytes 16..24 = big-endian message sequence number from 0. Each
//!   direction has its own counter.
//! - UDP (sleeve) nonces: byte 0 bit 7 = sender polarity, bit 6 = 0, bytes
//!   16..24 = `seqNoAndDF`, whose most significant bit selects the DF channel.
//!   The DF and non-DF channels have separate sequence spaces.

use std::fmt;

use salsa20::cipher::consts::U10;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

use crate::peer_name::{PeerName, PeerNameError};
use crate::secretbox::SecretBox;

/// Size of X25519 keys, the shared key and the session key.
pub const KEY_SIZE: usize = 32;
/// Size of the XSalsa20 nonce.
pub const NONCE_SIZE: usize = 24;
/// Size of the Poly1305 tag that prefixes every sealed message.
pub const TAG_SIZE: usize = 16;
/// The DF-channel flag in a sleeve `seqNoAndDF` (its most significant bit).
pub const DF_FLAG: u64 = 1 << 63;
/// Size of the sleeve packet header `[senderPeerName:6][seqNoAndDF:8]`.
pub const SLEEVE_HEADER_SIZE: usize = 14;

const NONCE_OUTBOUND_BIT: u8 = 1 << 7;
const NONCE_TCP_BIT: u8 = 1 << 6;

/// Errors of the crypto layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A sealed message did not authenticate.
    #[error("message authentication failed: the message was tampered with, reordered, or sealed with a different key (encryption mismatch / wrong password)")]
    Open,
    /// A sealed message is shorter than the Poly1305 tag.
    #[error("sealed message is {0} bytes, shorter than the {TAG_SIZE}-byte authentication tag")]
    TooShort(usize),
    /// The peer's public key is a low-order point: the shared secret would
    /// not depend on our key.
    #[error("peer sent an invalid X25519 public key (low-order point); refusing the connection")]
    WeakPublicKey,
    /// A sequence counter ran out (2^64 TCP messages or 2^63 sleeve packets).
    #[error("nonce sequence exhausted: the connection must be re-established")]
    SequenceExhausted,
    /// A sleeve packet is shorter than its header.
    #[error("sleeve packet is {0} bytes, shorter than the {SLEEVE_HEADER_SIZE}-byte header")]
    ShortSleevePacket(usize),
    /// The sleeve header carries an invalid peer name.
    #[error("sleeve packet header: {0}")]
    SleevePeerName(#[from] PeerNameError),
}

/// An ephemeral X25519 key pair (one per connection, like Weave).
pub struct KeyPair {
    secret: StaticSecret,
    public: [u8; KEY_SIZE],
}

impl KeyPair {
    /// Generates a fresh key pair from the thread-local CSPRNG.
    pub fn generate() -> Self {
        let mut bytes: [u8; KEY_SIZE] = rand::random();
        let kp = Self::from_secret_bytes(bytes);
        bytes.zeroize();
        kp
    }

    /// Builds a key pair from a 32-byte private key (Go's `box.GenerateKey`
    /// draws these 32 bytes at random; clamping happens inside X25519).
    pub fn from_secret_bytes(secret: [u8; KEY_SIZE]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        KeyPair { secret, public }
    }

    /// Our public key, sent to the peer.
    pub fn public_key(&self) -> [u8; KEY_SIZE] {
        self.public
    }

    /// NaCl `box.Precompute(theirPublic, ourSecret)`, refusing low-order
    /// public keys.
    pub fn precompute(&self, their_public: &[u8; KEY_SIZE]) -> Result<SharedKey, CryptoError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(CryptoError::WeakPublicKey);
        }
        Ok(SharedKey(hsalsa20_zero_nonce(shared.as_bytes())))
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &Hex(&self.public))
            .finish_non_exhaustive()
    }
}

fn hsalsa20_zero_nonce(key: &[u8; KEY_SIZE]) -> [u8; KEY_SIZE] {
    let out = salsa20::hsalsa::<U10>(key.into(), &[0u8; 16].into());
    out.into()
}

/// NaCl `box.Precompute` without the low-order check (for interop tests
/// against Go outputs): `HSalsa20(X25519(our_secret, their_public), 0^16)`.
pub fn box_precompute(their_public: &[u8; KEY_SIZE], our_secret: &[u8; KEY_SIZE]) -> SharedKey {
    let mut raw = x25519_dalek::x25519(*our_secret, *their_public);
    let shared = SharedKey(hsalsa20_zero_nonce(&raw));
    raw.zeroize();
    shared
}

/// The output of `box.Precompute`.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedKey([u8; KEY_SIZE]);

impl SharedKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_SIZE] {
        &self.0
    }

    /// Derives the session key `SHA-256(shared || password)`.
    pub fn session_key(&self, password: &[u8]) -> SessionKey {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(password);
        SessionKey(h.finalize().into())
    }
}

impl Drop for SharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKey(..)")
    }
}

/// The per-connection session key shared by the control connection and the
/// sleeve data plane.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; KEY_SIZE]);

impl SessionKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_SIZE]) -> Self {
        SessionKey(bytes)
    }

    /// The raw 32 bytes (e.g. for `OverlayConnectionParams.SessionKey`).
    pub fn as_bytes(&self) -> &[u8; KEY_SIZE] {
        &self.0
    }

    fn cipher(&self) -> SecretBox {
        SecretBox::new(&self.0)
    }

    /// `secretbox.Seal` with an explicit nonce: tag, then ciphertext.
    pub fn seal(&self, nonce: &[u8; NONCE_SIZE], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.cipher(), nonce, plaintext)
    }

    /// `secretbox.Open` with an explicit nonce.
    pub fn open(&self, nonce: &[u8; NONCE_SIZE], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_with(&self.cipher(), nonce, sealed)
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

fn seal_with(cipher: &SecretBox, nonce: &[u8; NONCE_SIZE], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG_SIZE + plaintext.len());
    out.extend_from_slice(&[0u8; TAG_SIZE]);
    out.extend_from_slice(plaintext);
    let tag = cipher.seal_in_place(nonce, &mut out[TAG_SIZE..]);
    out[..TAG_SIZE].copy_from_slice(&tag);
    out
}

fn open_with(
    cipher: &SecretBox,
    nonce: &[u8; NONCE_SIZE],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let Some((tag, ct)) = sealed.split_first_chunk::<TAG_SIZE>() else {
        return Err(CryptoError::TooShort(sealed.len()));
    };
    let mut out = ct.to_vec();
    cipher
        .open_in_place(nonce, tag, &mut out)
        .map_err(|_| CryptoError::Open)?;
    Ok(out)
}

/// The TCP nonce of message `seq` sent by the outbound (`true`) or inbound side.
pub fn tcp_nonce(sender_outbound: bool, seq: u64) -> [u8; NONCE_SIZE] {
    let mut n = [0u8; NONCE_SIZE];
    n[0] = NONCE_TCP_BIT;
    if sender_outbound {
        n[0] |= NONCE_OUTBOUND_BIT;
    }
    n[16..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// The sleeve (UDP) nonce for a packet with the given `seqNoAndDF`.
pub fn udp_nonce(sender_outbound: bool, seq_no_and_df: u64) -> [u8; NONCE_SIZE] {
    let mut n = [0u8; NONCE_SIZE];
    if sender_outbound {
        n[0] = NONCE_OUTBOUND_BIT;
    }
    n[16..].copy_from_slice(&seq_no_and_df.to_be_bytes());
    n
}

/// Combines a sleeve channel sequence number (below 2^63) and the DF flag.
pub fn seq_no_and_df(df: bool, seq: u64) -> Result<u64, CryptoError> {
    if seq & DF_FLAG != 0 {
        return Err(CryptoError::SequenceExhausted);
    }
    Ok(if df { seq | DF_FLAG } else { seq })
}

/// Splits a `seqNoAndDF` into (DF flag, sequence number).
pub fn split_seq_no_and_df(v: u64) -> (bool, u64) {
    (v & DF_FLAG != 0, v & !DF_FLAG)
}

/// Seals successive TCP messages of one direction.
pub struct TcpSealer {
    cipher: SecretBox,
    outbound: bool,
    seq: Option<u64>,
}

impl TcpSealer {
    /// A sealer for the side that dialled (`we_are_outbound`) or accepted.
    pub fn new(key: &SessionKey, we_are_outbound: bool) -> Self {
        TcpSealer {
            cipher: key.cipher(),
            outbound: we_are_outbound,
            seq: Some(0),
        }
    }

    /// Sequence number the next sealed message will use.
    pub fn next_seq(&self) -> Option<u64> {
        self.seq
    }

    /// Seals the next message and advances the sequence number.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let seq = self.seq.ok_or(CryptoError::SequenceExhausted)?;
        let out = seal_with(&self.cipher, &tcp_nonce(self.outbound, seq), plaintext);
        self.seq = seq.checked_add(1);
        Ok(out)
    }
}

impl fmt::Debug for TcpSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpSealer")
            .field("outbound", &self.outbound)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Opens successive TCP messages of one direction; fails on tampering,
/// reordering, replay or a wrong key. A failed open does not advance the
/// sequence number (the connection must be dropped anyway).
pub struct TcpOpener {
    cipher: SecretBox,
    sender_outbound: bool,
    seq: Option<u64>,
}

impl TcpOpener {
    /// An opener for messages from the peer; `we_are_outbound` is our own
    /// role (the peer uses the opposite nonce polarity).
    pub fn new(key: &SessionKey, we_are_outbound: bool) -> Self {
        TcpOpener {
            cipher: key.cipher(),
            sender_outbound: !we_are_outbound,
            seq: Some(0),
        }
    }

    /// Sequence number expected for the next message.
    pub fn next_seq(&self) -> Option<u64> {
        self.seq
    }

    /// Opens the next message and advances the sequence number.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let seq = self.seq.ok_or(CryptoError::SequenceExhausted)?;
        let out = open_with(&self.cipher, &tcp_nonce(self.sender_outbound, seq), sealed)?;
        self.seq = seq.checked_add(1);
        Ok(out)
    }
}

impl fmt::Debug for TcpOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpOpener")
            .field("sender_outbound", &self.sender_outbound)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Both directions of an encrypted control connection, plus the session key
/// (which the sleeve overlay reuses).
#[derive(Debug)]
pub struct TcpCrypto {
    /// The session key both directions are derived from.
    pub session_key: SessionKey,
    /// Seals what we send.
    pub sealer: TcpSealer,
    /// Opens what the peer sends.
    pub opener: TcpOpener,
}

impl TcpCrypto {
    /// Fresh state (both sequence numbers at 0) for our role.
    pub fn new(session_key: SessionKey, we_are_outbound: bool) -> Self {
        TcpCrypto {
            sealer: TcpSealer::new(&session_key, we_are_outbound),
            opener: TcpOpener::new(&session_key, we_are_outbound),
            session_key,
        }
    }
}

/// Seals sleeve (UDP) packets with separate DF and non-DF sequence spaces.
pub struct SleeveSealer {
    cipher: SecretBox,
    outbound: bool,
    seq_df: u64,
    seq_non_df: u64,
}

impl SleeveSealer {
    /// A sealer for our role on the connection.
    pub fn new(key: &SessionKey, we_are_outbound: bool) -> Self {
        SleeveSealer {
            cipher: key.cipher(),
            outbound: we_are_outbound,
            seq_df: 0,
            seq_non_df: 0,
        }
    }

    /// Starts the sequence spaces at the given numbers (both below 2^63).
    pub fn with_sequences(mut self, non_df: u64, df: u64) -> Self {
        self.seq_non_df = non_df;
        self.seq_df = df;
        self
    }

    /// Seals `plaintext` on the DF or non-DF channel and returns
    /// `(seqNoAndDF, sealed)`; the channel's sequence number advances.
    pub fn seal(&mut self, df: bool, plaintext: &[u8]) -> Result<(u64, Vec<u8>), CryptoError> {
        let sdf = self.next_seq_no_and_df(df)?;
        let sealed = seal_with(&self.cipher, &udp_nonce(self.outbound, sdf), plaintext);
        Ok((sdf, sealed))
    }

    /// Seals `buf` in place on the DF or non-DF channel and returns
    /// `(seqNoAndDF, tag)`; the sealed packet body is the tag followed by
    /// `buf`. The channel's sequence number advances.
    pub fn seal_in_place(
        &mut self,
        df: bool,
        buf: &mut [u8],
    ) -> Result<(u64, [u8; TAG_SIZE]), CryptoError> {
        let sdf = self.next_seq_no_and_df(df)?;
        let tag = self
            .cipher
            .seal_in_place(&udp_nonce(self.outbound, sdf), buf);
        Ok((sdf, tag))
    }

    fn next_seq_no_and_df(&mut self, df: bool) -> Result<u64, CryptoError> {
        let counter = if df {
            &mut self.seq_df
        } else {
            &mut self.seq_non_df
        };
        let sdf = seq_no_and_df(df, *counter)?;
        *counter += 1;
        Ok(sdf)
    }
}

impl fmt::Debug for SleeveSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SleeveSealer")
            .field("outbound", &self.outbound)
            .field("seq_non_df", &self.seq_non_df)
            .field("seq_df", &self.seq_df)
            .finish_non_exhaustive()
    }
}

/// Opens sleeve packets from the peer. Stateless: replay protection (the
/// per-channel sliding window) belongs to the data plane.
pub struct SleeveOpener {
    cipher: SecretBox,
    sender_outbound: bool,
}

impl SleeveOpener {
    /// An opener for packets from the peer; `we_are_outbound` is our role.
    pub fn new(key: &SessionKey, we_are_outbound: bool) -> Self {
        SleeveOpener {
            cipher: key.cipher(),
            sender_outbound: !we_are_outbound,
        }
    }

    /// Opens a packet body sealed under `seq_no_and_df`.
    pub fn open(&self, seq_no_and_df: u64, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_with(
            &self.cipher,
            &udp_nonce(self.sender_outbound, seq_no_and_df),
            sealed,
        )
    }

    /// Opens, in place, a packet body sealed under `seq_no_and_df` whose
    /// tag is `tag` and ciphertext `buf`; on success `buf` holds the
    /// plaintext, on failure (the tag is checked first) it is left as it was.
    pub fn open_in_place(
        &self,
        seq_no_and_df: u64,
        tag: &[u8; TAG_SIZE],
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.cipher
            .open_in_place(&udp_nonce(self.sender_outbound, seq_no_and_df), tag, buf)
            .map_err(|_| CryptoError::Open)
    }
}

impl fmt::Debug for SleeveOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SleeveOpener")
            .field("sender_outbound", &self.sender_outbound)
            .finish_non_exhaustive()
    }
}

/// Builds the sleeve packet header `[senderPeerName:6][seqNoAndDF:8 BE]`.
pub fn sleeve_header(sender: PeerName, seq_no_and_df: u64) -> [u8; SLEEVE_HEADER_SIZE] {
    let mut h = [0u8; SLEEVE_HEADER_SIZE];
    h[..6].copy_from_slice(&sender.to_name_bytes());
    h[6..].copy_from_slice(&seq_no_and_df.to_be_bytes());
    h
}

/// Splits a sleeve packet into (sender, seqNoAndDF, sealed body).
pub fn parse_sleeve_header(packet: &[u8]) -> Result<(PeerName, u64, &[u8]), CryptoError> {
    if packet.len() < SLEEVE_HEADER_SIZE {
        return Err(CryptoError::ShortSleevePacket(packet.len()));
    }
    let sender = PeerName::from_name_bytes(&packet[..6])?;
    let mut s = [0u8; 8];
    s.copy_from_slice(&packet[6..SLEEVE_HEADER_SIZE]);
    Ok((sender, u64::from_be_bytes(s), &packet[SLEEVE_HEADER_SIZE..]))
}

struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::from_bytes([7u8; 32])
    }

    #[test]
    fn tcp_round_trip_both_directions() {
        let mut a = TcpCrypto::new(key(), true);
        let mut b = TcpCrypto::new(key(), false);
        for i in 0..5u8 {
            let m = vec![i; i as usize];
            assert_eq!(b.opener.open(&a.sealer.seal(&m).unwrap()).unwrap(), m);
            assert_eq!(a.opener.open(&b.sealer.seal(&m).unwrap()).unwrap(), m);
        }
        assert_eq!(a.sealer.next_seq(), Some(5));
        assert_eq!(b.opener.next_seq(), Some(5));
    }

    #[test]
    fn tcp_reorder_replay_tamper_fail() {
        let mut a = TcpCrypto::new(key(), true);
        let mut b = TcpCrypto::new(key(), false);
        let m0 = a.sealer.seal(b"zero").unwrap();
        let m1 = a.sealer.seal(b"one").unwrap();
        assert_eq!(b.opener.open(&m1), Err(CryptoError::Open), "reordered");
        assert_eq!(b.opener.open(&m0).unwrap(), b"zero");
        assert_eq!(b.opener.open(&m0), Err(CryptoError::Open), "replayed");
        let mut bad = m1.clone();
        bad[TAG_SIZE] ^= 1;
        assert_eq!(b.opener.open(&bad), Err(CryptoError::Open), "tampered");
        assert_eq!(b.opener.open(&m1).unwrap(), b"one");
        assert_eq!(b.opener.open(&[0u8; 3]), Err(CryptoError::TooShort(3)));
        // A message we sealed ourselves is not accepted back (polarity).
        let own = b.sealer.seal(b"x").unwrap();
        let mut b2 = TcpCrypto::new(key(), false);
        assert_eq!(b2.opener.open(&own), Err(CryptoError::Open));
    }

    #[test]
    fn tcp_sequence_exhaustion_is_an_error() {
        let mut s = TcpSealer::new(&key(), true);
        s.seq = Some(u64::MAX);
        assert!(s.seal(b"last").is_ok());
        assert_eq!(s.seal(b"more"), Err(CryptoError::SequenceExhausted));
    }

    #[test]
    fn keypair_agreement_is_symmetric() {
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        assert_ne!(a.public_key(), b.public_key());
        let ka = a.precompute(&b.public_key()).unwrap();
        let kb = b.precompute(&a.public_key()).unwrap();
        assert_eq!(ka, kb);
        assert_eq!(ka.session_key(b"pw"), kb.session_key(b"pw"));
        assert_ne!(ka.session_key(b"pw"), kb.session_key(b"other"));
    }

    #[test]
    fn low_order_public_key_is_refused() {
        let a = KeyPair::generate();
        assert_eq!(a.precompute(&[0u8; 32]), Err(CryptoError::WeakPublicKey));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(a.precompute(&one), Err(CryptoError::WeakPublicKey));
    }

    #[test]
    fn sleeve_channels_and_header() {
        let mut s = SleeveSealer::new(&key(), true);
        let o = SleeveOpener::new(&key(), false);
        let (a, pa) = s.seal(false, b"a").unwrap();
        let (b, pb) = s.seal(true, b"b").unwrap();
        let (c, _) = s.seal(false, b"c").unwrap();
        assert_eq!((a, b, c), (0, DF_FLAG, 1));
        assert_eq!(o.open(a, &pa).unwrap(), b"a");
        assert_eq!(o.open(b, &pb).unwrap(), b"b");
        assert_eq!(o.open(b, &pa), Err(CryptoError::Open));
        assert_eq!(split_seq_no_and_df(b), (true, 0));
        let name: PeerName = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        let mut pkt = sleeve_header(name, b).to_vec();
        pkt.extend_from_slice(&pb);
        let (n, sdf, body) = parse_sleeve_header(&pkt).unwrap();
        assert_eq!((n, sdf, body), (name, b, &pb[..]));
        assert_eq!(
            parse_sleeve_header(&pkt[..5]),
            Err(CryptoError::ShortSleevePacket(5))
        );
        assert_eq!(
            seq_no_and_df(true, DF_FLAG),
            Err(CryptoError::SequenceExhausted)
        );
        let mut s = SleeveSealer::new(&key(), true).with_sequences(DF_FLAG - 1, 0);
        assert!(s.seal(false, b"").is_ok());
        assert_eq!(s.seal(false, b""), Err(CryptoError::SequenceExhausted));
    }

    #[test]
    fn debug_does_not_leak_keys() {
        let k = SessionKey::from_bytes([0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
        let c = TcpCrypto::new(k, true);
        assert!(!format!("{c:?}").contains("abab"));
    }
}
