//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the stable
//! corpus-replay test. Each one runs arbitrary bytes through decoders and
//! checks that whatever decodes re-encodes to an equal value. They panic
//! only when such an invariant is broken (which the fuzzer then reports).

use crate::crypto::{KeyPair, SessionKey, TcpCrypto};
use crate::framing::{FrameReader, ProtocolMsg};
use crate::gossip::{GossipMsg, GossipUnicastMsg};
use crate::handshake::{Features, Handshake, HandshakeParams, Progress};
use crate::peer_name::PeerName;

/// Fixed key material so fuzzing is deterministic.
const FUZZ_SECRET: [u8; 32] = [0x42; 32];
const FUZZ_SESSION: [u8; 32] = [0x24; 32];

fn local_features() -> Features {
    Features::new(PeerName::from_mac([2, 0, 0, 0, 0, 1]), "fuzz", 1, 2)
}

/// Secret key of the fuzzed end (its public key is what a corpus file must
/// use to build a valid encrypted handshake).
pub const FUZZ_HANDSHAKE_SECRET: [u8; 32] = FUZZ_SECRET;
/// Password of the fuzzed end when `data[0]` bit 0 is set.
pub const FUZZ_PASSWORD: &[u8] = b"fuzz";

/// `data[0]`: bit 0 = use a password, bit 1 = outbound, bits 2.. = chunk
/// size - 1 for feeding the rest. Returns whether the handshake completed.
pub fn handshake(data: &[u8]) -> bool {
    let Some((&cfg, rest)) = data.split_first() else {
        return false;
    };
    let params = HandshakeParams {
        outbound: cfg & 2 != 0,
        password: (cfg & 1 != 0).then(|| FUZZ_PASSWORD.to_vec()),
        features: local_features(),
    };
    let (mut hs, _hello) = Handshake::with_keypair(params, KeyPair::from_secret_bytes(FUZZ_SECRET));
    let chunk = usize::from(cfg >> 2) + 1;
    for piece in rest.chunks(chunk) {
        match hs.feed(piece) {
            Ok(Progress::Continue { .. }) => {}
            Ok(Progress::Done(done)) => {
                assert_eq!(done.conn_uid, 2 ^ done.remote.conn_id);
                let again = Features::from_map(done.remote.to_map()).expect("re-parse features");
                assert_eq!(again, done.remote);
                let mut reader = FrameReader::new(done.session.map(|s| s.opener));
                reader.feed(&done.leftover);
                drain(&mut reader);
                return true;
            }
            Err(_) => {
                assert!(
                    hs.feed(b"x").is_err(),
                    "a failed handshake must stay failed"
                );
                return false;
            }
        }
    }
    false
}

fn drain(reader: &mut FrameReader) {
    while let Ok(Some(body)) = reader.next_message() {
        check_protocol_msg(&body);
    }
}

fn check_protocol_msg(body: &[u8]) {
    if let Ok(msg) = ProtocolMsg::decode(body) {
        let encoded = msg.encode().expect("a decoded message re-encodes");
        assert_eq!(ProtocolMsg::decode(&encoded).expect("re-decode"), msg);
    }
}

/// `data[0]` bit 0 = the frames are sealed; the rest is the byte stream.
pub fn frame(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let opener =
        (cfg & 1 != 0).then(|| TcpCrypto::new(SessionKey::from_bytes(FUZZ_SESSION), false).opener);
    let mut reader = FrameReader::new(opener);
    let chunk = usize::from(cfg >> 1) + 1;
    for piece in rest.chunks(chunk) {
        reader.feed(piece);
        loop {
            match reader.next_message() {
                Ok(Some(body)) => check_protocol_msg(&body),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// The whole input as a gossip payload, a unicast payload, a protocol
/// message body and a gob features map.
pub fn gossip_msg(data: &[u8]) {
    if let Ok(m) = GossipMsg::decode(data) {
        let enc = m.encode().expect("re-encode gossip");
        assert_eq!(GossipMsg::decode(&enc).expect("re-decode gossip"), m);
    }
    if let Ok(m) = GossipUnicastMsg::decode(data) {
        let enc = m.encode().expect("re-encode unicast");
        assert_eq!(
            GossipUnicastMsg::decode(&enc).expect("re-decode unicast"),
            m
        );
    }
    check_protocol_msg(data);
    if let Ok(f) = Features::decode_gob(data) {
        let enc = f.encode_gob().expect("re-encode features");
        assert_eq!(Features::decode_gob(&enc).expect("re-decode features"), f);
    }
}
