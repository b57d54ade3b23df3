//! The mesh TCP connection handshake, as a sans-IO state machine.
//!
//! Both ends run the same steps concurrently:
//!
//! 1. send the 7-byte protocol header `"weave" min max` and read the peer's;
//!    the negotiated version is the highest both speak. Weft advertises
//!    `1..=2` like Weave but only completes version 2 handshakes;
//! 2. (version 2) send the encryption byte: `0`, or `1` followed by a fresh
//!    32-byte X25519 public key; both ends must agree on using a password;
//! 3. send the first length-prefixed message: the gob-encoded
//!    `map[string]string` of features, sealed when encryption is on, and
//!    read the peer's.
//!
//! Detecting a connection to ourselves or a name collision is left to the
//! mesh core: it gets the remote [`Features`] and the connection UID.

use std::collections::BTreeMap;

use crate::crypto::{CryptoError, KeyPair, TcpCrypto, KEY_SIZE};
use crate::framing::{FrameError, LENGTH_PREFIX_SIZE, MAX_TCP_MSG_SIZE};
use crate::gobio;
use crate::peer_name::{PeerName, ShortId, PEER_NAME_FLAVOUR};

/// The protocol name that starts every connection.
pub const PROTOCOL_NAME: &[u8; 5] = b"weave";
/// Lowest protocol version Weft advertises (like Weave's default).
pub const PROTOCOL_MIN_VERSION: u8 = 1;
/// Highest protocol version Weft speaks; the only one it completes.
pub const PROTOCOL_MAX_VERSION: u8 = 2;
/// Length of the protocol header.
pub const HEADER_SIZE: usize = 7;

/// Handshake feature keys.
pub mod feature {
    /// Peer-name flavour, `"mac"` (mandatory).
    pub const PEER_NAME_FLAVOUR: &str = "PeerNameFlavour";
    /// Peer name in MAC text form (mandatory).
    pub const NAME: &str = "Name";
    /// Nickname, usually the host name (mandatory).
    pub const NICK_NAME: &str = "NickName";
    /// 12-bit short ID, decimal.
    pub const SHORT_ID: &str = "ShortID";
    /// Per-process UID, decimal (mandatory).
    pub const UID: &str = "UID";
    /// Per-connection random ID, decimal (mandatory).
    pub const CONN_ID: &str = "ConnID";
    /// `"true"` when the remote address is in our trusted subnets.
    pub const TRUSTED: &str = "Trusted";
    /// Space-separated overlay names, e.g. `"fastdp sleeve"`.
    pub const OVERLAYS: &str = "Overlays";
    /// The mandatory features, in the order they are checked.
    pub const MANDATORY: [&str; 5] = [PEER_NAME_FLAVOUR, NAME, NICK_NAME, UID, CONN_ID];
}

/// Errors validating a features map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// A mandatory feature is absent.
    #[error("the peer did not send the mandatory handshake feature {0:?}")]
    Missing(&'static str),
    /// The peer uses another peer-name flavour.
    #[error("peer name flavour mismatch (ours: {ours:?}, theirs: {theirs:?}): all peers must use MAC peer names")]
    FlavourMismatch {
        /// Ours (`"mac"`).
        ours: &'static str,
        /// The peer's.
        theirs: String,
    },
    /// A feature value does not parse.
    #[error("handshake feature {key:?} has an invalid value {value:?}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value received.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// The handshake features of one end, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// `Name`.
    pub name: PeerName,
    /// `NickName`.
    pub nick_name: String,
    /// `UID`: random per process start, never 0 for a real peer.
    pub uid: u64,
    /// `ConnID`: random per connection.
    pub conn_id: u64,
    /// `ShortID`, if sent.
    pub short_id: Option<ShortId>,
    /// `Trusted`: whether the sender trusts the receiver's address
    /// (absent means not trusted).
    pub trusted: bool,
    /// `Overlays`, split on spaces, if sent.
    pub overlays: Option<Vec<String>>,
    /// Every other key, kept verbatim (Weft's own negotiated additions).
    pub extra: BTreeMap<String, String>,
}

fn parse_u64(key: &'static str, value: &str) -> Result<u64, FeatureError> {
    // Go's strconv.ParseUint(s, 10, 64): ASCII digits only, no sign.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FeatureError::Invalid {
            key,
            value: value.to_string(),
            reason: "expected an unsigned decimal number".into(),
        });
    }
    value.parse().map_err(|_| FeatureError::Invalid {
        key,
        value: value.to_string(),
        reason: "number does not fit in 64 bits".into(),
    })
}

impl Features {
    /// Local features with the mandatory fields set; the rest empty.
    pub fn new(name: PeerName, nick_name: impl Into<String>, uid: u64, conn_id: u64) -> Self {
        Features {
            name,
            nick_name: nick_name.into(),
            uid,
            conn_id,
            short_id: None,
            trusted: false,
            overlays: None,
            extra: BTreeMap::new(),
        }
    }

    /// Parses and validates a received features map.
    pub fn from_map(mut map: BTreeMap<String, String>) -> Result<Self, FeatureError> {
        for key in feature::MANDATORY {
            if !map.contains_key(key) {
                return Err(FeatureError::Missing(key));
            }
        }
        let mut take = |k: &str| map.remove(k);
        let flavour = take(feature::PEER_NAME_FLAVOUR).unwrap_or_default();
        if flavour != PEER_NAME_FLAVOUR {
            return Err(FeatureError::FlavourMismatch {
                ours: PEER_NAME_FLAVOUR,
                theirs: flavour,
            });
        }
        let name_text = take(feature::NAME).unwrap_or_default();
        let name = name_text
            .parse()
            .map_err(|e: crate::PeerNameError| FeatureError::Invalid {
                key: feature::NAME,
                value: name_text.clone(),
                reason: e.to_string(),
            })?;
        let nick_name = take(feature::NICK_NAME).unwrap_or_default();
        let uid = parse_u64(feature::UID, &take(feature::UID).unwrap_or_default())?;
        let conn_id = parse_u64(
            feature::CONN_ID,
            &take(feature::CONN_ID).unwrap_or_default(),
        )?;
        let short_id = match take(feature::SHORT_ID) {
            None => None,
            Some(v) => {
                Some(
                    v.parse()
                        .map_err(|e: crate::PeerNameError| FeatureError::Invalid {
                            key: feature::SHORT_ID,
                            value: v.clone(),
                            reason: e.to_string(),
                        })?,
                )
            }
        };
        // Go: strconv.ParseBool semantics for "true"; anything else is false.
        let trusted = matches!(
            take(feature::TRUSTED).as_deref(),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        );
        let overlays =
            take(feature::OVERLAYS).map(|v| v.split_whitespace().map(str::to_string).collect());
        Ok(Features {
            name,
            nick_name,
            uid,
            conn_id,
            short_id,
            trusted,
            overlays,
            extra: map,
        })
    }

    /// The features as the wire map (what `makeFeatures` sends).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = self.extra.clone();
        m.insert(feature::PEER_NAME_FLAVOUR.into(), PEER_NAME_FLAVOUR.into());
        m.insert(feature::NAME.into(), self.name.to_string());
        m.insert(feature::NICK_NAME.into(), self.nick_name.clone());
        m.insert(feature::UID.into(), self.uid.to_string());
        m.insert(feature::CONN_ID.into(), self.conn_id.to_string());
        if let Some(s) = self.short_id {
            m.insert(feature::SHORT_ID.into(), s.to_string());
        }
        m.insert(feature::TRUSTED.into(), self.trusted.to_string());
        if let Some(o) = &self.overlays {
            m.insert(feature::OVERLAYS.into(), o.join(" "));
        }
        m
    }

    /// Gob-encodes the features map (one fresh encoder, Weave's format).
    pub fn encode_gob(&self) -> Result<Vec<u8>, HandshakeError> {
        encode_features_map(&self.to_map())
    }

    /// Decodes and validates a gob-encoded features map.
    pub fn decode_gob(bytes: &[u8]) -> Result<Self, HandshakeError> {
        Ok(Features::from_map(decode_features_map(bytes)?)?)
    }
}

/// Gob-encodes a features `map[string]string` with a fresh encoder (keys
/// in sorted order; Go's order is random, decoders do not care).
pub fn encode_features_map(map: &BTreeMap<String, String>) -> Result<Vec<u8>, HandshakeError> {
    gobio::encode_string_map(map).map_err(|e| HandshakeError::FeaturesGob(e.to_string()))
}

/// Decodes a gob `map[string]string` (one value, nothing after it).
pub fn decode_features_map(bytes: &[u8]) -> Result<BTreeMap<String, String>, HandshakeError> {
    gobio::decode_string_map(bytes).map_err(|e| HandshakeError::FeaturesGob(e.to_string()))
}

/// Errors that end a handshake. The connection must then be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's first bytes are not a Weave protocol header.
    #[error("the remote did not send a Weave protocol header (got {got:02x?}): it is not a Weave Net / Weft peer, or something else answered on the port")]
    GarbageHeader {
        /// The bytes received.
        got: Vec<u8>,
    },
    /// The version ranges do not overlap.
    #[error("remote mesh protocol version range {their_min}..={their_max} is incompatible with ours {our_min}..={our_max}")]
    IncompatibleVersions {
        /// Peer's minimum.
        their_min: u8,
        /// Peer's maximum.
        their_max: u8,
        /// Our minimum.
        our_min: u8,
        /// Our maximum.
        our_max: u8,
    },
    /// The peer can only speak the legacy version 1 protocol.
    #[error(
        "peer speaks only mesh protocol version 1; Weft requires version 2 (Weave Net >= 1.2)"
    )]
    PeerSpeaksOnlyV1,
    /// We have a password, the peer has none.
    #[error("password mismatch: we have a password but the peer asked for an unencrypted connection; set WEAVE_PASSWORD identically on all peers")]
    ExpectedCrypto,
    /// The peer has a password, we have none.
    #[error("password mismatch: the peer asked for an encrypted connection but we have no password; set WEAVE_PASSWORD identically on all peers")]
    ExpectedNoCrypto,
    /// The encryption byte is neither 0 nor 1.
    #[error("bad encryption flag {0} in the handshake (expected 0 or 1)")]
    BadEncryptionFlag(u8),
    /// The peer's public key is unusable.
    #[error("key agreement failed: {0}")]
    KeyAgreement(CryptoError),
    /// The features message failed to open.
    #[error("cannot decrypt the peer's features message: encryption mismatch / wrong password; set WEAVE_PASSWORD identically on all peers")]
    WrongPassword,
    /// The features message frame is unacceptable.
    #[error("handshake features message: {0}")]
    Frame(#[from] FrameError),
    /// The features message is not a gob `map[string]string`.
    #[error("handshake features message is not a valid gob map[string]string: {0}")]
    FeaturesGob(String),
    /// The features do not validate.
    #[error("invalid handshake features: {0}")]
    Features(#[from] FeatureError),
    /// `feed` was called after the handshake completed.
    #[error("the handshake is already complete; pass further bytes to the frame reader")]
    AlreadyDone,
    /// `feed` was called after an error.
    #[error("the handshake already failed; the connection must be closed")]
    Failed,
    /// The peer closed the connection after the key exchange, before its
    /// features message: it could not open ours (see
    /// [`Handshake::peer_closed`]).
    #[error("the peer closed the connection after the key exchange without sending its features: most likely a wrong password (it could not decrypt ours); set WEAVE_PASSWORD identically on all peers")]
    ClosedAfterKeyExchange,
    /// The peer closed the connection during the handshake.
    #[error("the peer closed the connection during the handshake")]
    Closed,
}

/// Parameters of our end of a handshake.
#[derive(Clone)]
pub struct HandshakeParams {
    /// Whether we dialled the connection (selects the nonce polarity).
    pub outbound: bool,
    /// The mesh password (`WEAVE_PASSWORD`); `None` or empty = no encryption.
    pub password: Option<Vec<u8>>,
    /// The features we send.
    pub features: Features,
}

impl std::fmt::Debug for HandshakeParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeParams")
            .field("outbound", &self.outbound)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("features", &self.features)
            .finish()
    }
}

/// What feeding bytes produced.
#[derive(Debug)]
pub enum Progress {
    /// The handshake needs more input; `send` (possibly empty) must be
    /// written to the connection first.
    Continue {
        /// Bytes to send.
        send: Vec<u8>,
    },
    /// The handshake is complete.
    Done(Box<HandshakeDone>),
}

/// The result of a completed handshake.
#[derive(Debug)]
pub struct HandshakeDone {
    /// Last bytes to send before switching to framed messages.
    pub send: Vec<u8>,
    /// The negotiated protocol version (always 2).
    pub version: u8,
    /// The peer's features.
    pub remote: Features,
    /// Encryption state (sequence numbers after the features message), or
    /// `None` without a password.
    pub session: Option<TcpCrypto>,
    /// `local ConnID XOR remote ConnID`, the same on both ends.
    pub conn_uid: u64,
    /// Bytes received after the features message: feed them to the
    /// [`FrameReader`](crate::framing::FrameReader) first.
    pub leftover: Vec<u8>,
}

impl HandshakeDone {
    /// Whether the peer has our own name: Weave refuses such a connection
    /// (`errConnectToSelf`) and never retries the target.
    pub fn is_connection_to_self(&self, local: &Features) -> bool {
        self.remote.name == local.name
    }

    /// Whether either side distrusts the other (`local.trusted` is whether
    /// we trust the remote address). Only then does Weave hand the session
    /// key to the data-plane overlay; the control connection is encrypted
    /// whenever a password is set, trusted or not.
    pub fn is_untrusted(&self, local: &Features) -> bool {
        !local.trusted || !self.remote.trusted
    }
}

#[derive(Debug)]
enum State {
    Header,
    EncryptionFlag,
    PublicKey,
    Features,
    Done,
    Failed,
}

/// The sans-IO handshake of one end of a mesh TCP connection.
#[derive(Debug)]
pub struct Handshake {
    params: HandshakeParams,
    keypair: Option<KeyPair>,
    state: State,
    buf: Vec<u8>,
    session: Option<TcpCrypto>,
    /// What the failing [`Handshake::feed`] call had produced before it failed.
    unsent: Vec<u8>,
}

/// The 7-byte header Weft sends.
pub fn protocol_header() -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[..5].copy_from_slice(PROTOCOL_NAME);
    h[5] = PROTOCOL_MIN_VERSION;
    h[6] = PROTOCOL_MAX_VERSION;
    h
}

/// Negotiates the protocol version from the peer's header (Weave's rule:
/// the highest version in both ranges).
pub fn negotiate_version(header: &[u8; HEADER_SIZE]) -> Result<u8, HandshakeError> {
    if &header[..5] != PROTOCOL_NAME {
        return Err(HandshakeError::GarbageHeader {
            got: header.to_vec(),
        });
    }
    let (their_min, their_max) = (header[5], header[6]);
    let lo = their_min.max(PROTOCOL_MIN_VERSION);
    let hi = their_max.min(PROTOCOL_MAX_VERSION);
    if lo > hi {
        return Err(HandshakeError::IncompatibleVersions {
            their_min,
            their_max,
            our_min: PROTOCOL_MIN_VERSION,
            our_max: PROTOCOL_MAX_VERSION,
        });
    }
    if hi < 2 {
        return Err(HandshakeError::PeerSpeaksOnlyV1);
    }
    Ok(hi)
}

impl Handshake {
    /// Starts a handshake; returns the state machine and the bytes to send
    /// right away (the protocol header). A fresh key pair is generated when
    /// a password is set.
    pub fn new(params: HandshakeParams) -> (Handshake, Vec<u8>) {
        let encrypted = params.password.as_ref().is_some_and(|p| !p.is_empty());
        let keypair = encrypted.then(KeyPair::generate);
        Self::build(params, keypair)
    }

    /// Like [`Handshake::new`] with a given key pair (deterministic tests);
    /// the key pair is ignored without a password.
    pub fn with_keypair(params: HandshakeParams, keypair: KeyPair) -> (Handshake, Vec<u8>) {
        let encrypted = params.password.as_ref().is_some_and(|p| !p.is_empty());
        Self::build(params, encrypted.then_some(keypair))
    }

    fn build(params: HandshakeParams, keypair: Option<KeyPair>) -> (Handshake, Vec<u8>) {
        let hs = Handshake {
            params,
            keypair,
            state: State::Header,
            buf: Vec::new(),
            session: None,
            unsent: Vec::new(),
        };
        (hs, protocol_header().to_vec())
    }

    /// Our features.
    pub fn local_features(&self) -> &Features {
        &self.params.features
    }

    /// Whether this end uses encryption (has a password).
    pub fn is_encrypted(&self) -> bool {
        self.keypair.is_some()
    }

    /// After [`Handshake::feed`] returned an error: the bytes that call had
    /// already produced for the peer (our encryption flag and public key,
    /// our features message), empty otherwise; taking them empties them.
    ///
    /// Weave sends its part of each step before it checks the peer's, so a
    /// Weave peer always learns why the other end gave up. Write these bytes
    /// before closing the connection and the peer can do the same with us:
    /// it then reports the real cause ("Unable to decrypt TCP msg", "Peer
    /// requested encrypted connection, but password not specified") rather
    /// than an EOF, when our failure was found in the same input that made
    /// us answer.
    pub fn take_unsent(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.unsent)
    }

    /// The error to report when the peer closes the connection (EOF or a
    /// reset) before the handshake is complete.
    ///
    /// When both ends have a password, each sends its sealed features as
    /// soon as it has the other's public key, and an end that cannot open
    /// the other's closes at once: whichever end finds the mismatch first,
    /// the other sees only the close. After the key exchange that close
    /// therefore means "wrong password" as far as the peer is concerned
    /// ([`HandshakeError::ClosedAfterKeyExchange`]); anywhere else it is
    /// [`HandshakeError::Closed`].
    pub fn peer_closed(&self) -> HandshakeError {
        match (&self.state, &self.session) {
            (State::Features, Some(_)) => HandshakeError::ClosedAfterKeyExchange,
            _ => HandshakeError::Closed,
        }
    }

    /// Feeds bytes received from the peer. On an error, see
    /// [`Handshake::take_unsent`].
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, HandshakeError> {
        match self.state {
            State::Done => return Err(HandshakeError::AlreadyDone),
            State::Failed => return Err(HandshakeError::Failed),
            _ => {}
        }
        self.buf.extend_from_slice(data);
        let mut send = Vec::new();
        match self.advance(&mut send) {
            Ok(Some(mut done)) => {
                self.state = State::Done;
                done.send = send;
                Ok(Progress::Done(done))
            }
            Ok(None) => Ok(Progress::Continue { send }),
            Err(e) => {
                self.state = State::Failed;
                self.buf = Vec::new();
                self.unsent = send;
                Err(e)
            }
        }
    }

    fn advance(
        &mut self,
        send: &mut Vec<u8>,
    ) -> Result<Option<Box<HandshakeDone>>, HandshakeError> {
        loop {
            match self.state {
                State::Header => {
                    let n = self.buf.len().min(PROTOCOL_NAME.len());
                    if self.buf[..n] != PROTOCOL_NAME[..n] {
                        return Err(HandshakeError::GarbageHeader {
                            got: self.buf[..self.buf.len().min(HEADER_SIZE)].to_vec(),
                        });
                    }
                    if self.buf.len() < HEADER_SIZE {
                        return Ok(None);
                    }
                    let mut header = [0u8; HEADER_SIZE];
                    header.copy_from_slice(&self.buf[..HEADER_SIZE]);
                    negotiate_version(&header)?;
                    self.buf.drain(..HEADER_SIZE);
                    match &self.keypair {
                        None => send.push(0),
                        Some(kp) => {
                            send.push(1);
                            send.extend_from_slice(&kp.public_key());
                        }
                    }
                    self.state = State::EncryptionFlag;
                }
                State::EncryptionFlag => {
                    let Some(&flag) = self.buf.first() else {
                        return Ok(None);
                    };
                    match (flag, self.keypair.is_some()) {
                        (0, false) => {
                            self.buf.drain(..1);
                            self.send_features(send)?;
                            self.state = State::Features;
                        }
                        (0, true) => return Err(HandshakeError::ExpectedCrypto),
                        (1, false) => return Err(HandshakeError::ExpectedNoCrypto),
                        (1, true) => {
                            self.buf.drain(..1);
                            self.state = State::PublicKey;
                        }
                        (other, _) => return Err(HandshakeError::BadEncryptionFlag(other)),
                    }
                }
                State::PublicKey => {
                    if self.buf.len() < KEY_SIZE {
                        return Ok(None);
                    }
                    let mut their = [0u8; KEY_SIZE];
                    their.copy_from_slice(&self.buf[..KEY_SIZE]);
                    self.buf.drain(..KEY_SIZE);
                    let (Some(kp), Some(pw)) = (&self.keypair, &self.params.password) else {
                        return Err(HandshakeError::ExpectedNoCrypto);
                    };
                    let shared = kp
                        .precompute(&their)
                        .map_err(HandshakeError::KeyAgreement)?;
                    let session = shared.session_key(pw);
                    self.session = Some(TcpCrypto::new(session, self.params.outbound));
                    self.send_features(send)?;
                    self.state = State::Features;
                }
                State::Features => {
                    if self.buf.len() < LENGTH_PREFIX_SIZE {
                        return Ok(None);
                    }
                    let len =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                            as usize;
                    if len > MAX_TCP_MSG_SIZE {
                        return Err(FrameError::IncomingTooLarge {
                            len: len as u64,
                            max: MAX_TCP_MSG_SIZE,
                        }
                        .into());
                    }
                    if self.buf.len() < LENGTH_PREFIX_SIZE + len {
                        return Ok(None);
                    }
                    let body = &self.buf[LENGTH_PREFIX_SIZE..LENGTH_PREFIX_SIZE + len];
                    let plain = match &mut self.session {
                        None => body.to_vec(),
                        Some(s) => s
                            .opener
                            .open(body)
                            .map_err(|_| HandshakeError::WrongPassword)?,
                    };
                    let remote = Features::decode_gob(&plain)?;
                    let leftover = self.buf.split_off(LENGTH_PREFIX_SIZE + len);
                    self.buf = Vec::new();
                    let conn_uid = self.params.features.conn_id ^ remote.conn_id;
                    return Ok(Some(Box::new(HandshakeDone {
                        send: Vec::new(),
                        version: PROTOCOL_MAX_VERSION,
                        remote,
                        session: self.session.take(),
                        conn_uid,
                        leftover,
                    })));
                }
                State::Done | State::Failed => return Ok(None),
            }
        }
    }

    fn send_features(&mut self, send: &mut Vec<u8>) -> Result<(), HandshakeError> {
        let body = self.params.features.encode_gob()?;
        let body = match &mut self.session {
            None => body,
            Some(s) => s.sealer.seal(&body).map_err(HandshakeError::KeyAgreement)?,
        };
        if body.len() > MAX_TCP_MSG_SIZE {
            return Err(FrameError::OutgoingTooLarge {
                len: body.len(),
                max: MAX_TCP_MSG_SIZE,
            }
            .into());
        }
        send.extend_from_slice(&(body.len() as u32).to_be_bytes());
        send.extend_from_slice(&body);
        Ok(())
    }
}
