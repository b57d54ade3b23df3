//! Two in-memory `Handshake`s talking to each other, plus hostile and
//! mismatched peers.

use std::collections::BTreeMap;

use weft_wire::crypto::KeyPair;
use weft_wire::framing::{FrameReader, FrameWriter, ProtocolMsg};
use weft_wire::gossip::GossipMsg;
use weft_wire::handshake::{feature, protocol_header, HEADER_SIZE};
use weft_wire::{
    FeatureError, Features, Handshake, HandshakeDone, HandshakeError, HandshakeParams, PeerName,
    Progress, ShortId,
};

fn features(last: u8, conn_id: u64) -> Features {
    let mut f = Features::new(
        PeerName::from_mac([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, last]),
        format!("node-{last}"),
        9876543210 + u64::from(last),
        conn_id,
    );
    f.short_id = Some(ShortId::new(1234).unwrap());
    f.overlays = Some(vec!["fastdp".into(), "sleeve".into()]);
    f.extra.insert("WeftFuture".into(), "x=1".into());
    f
}

fn params(outbound: bool, password: Option<&str>, last: u8, conn_id: u64) -> HandshakeParams {
    HandshakeParams {
        outbound,
        password: password.map(|p| p.as_bytes().to_vec()),
        features: features(last, conn_id),
    }
}

/// One end: its state machine and what it has produced so far.
struct End {
    hs: Handshake,
    outbox: Vec<u8>,
    result: Option<Result<HandshakeDone, HandshakeError>>,
}

impl End {
    fn new(p: HandshakeParams) -> End {
        let (hs, hello) = Handshake::new(p);
        End {
            hs,
            outbox: hello,
            result: None,
        }
    }

    fn deliver(&mut self, bytes: &[u8]) {
        if self.result.is_some() || bytes.is_empty() {
            return;
        }
        match self.hs.feed(bytes) {
            Ok(Progress::Continue { send }) => self.outbox.extend(send),
            Ok(Progress::Done(mut done)) => {
                self.outbox.extend(std::mem::take(&mut done.send));
                self.result = Some(Ok(*done));
            }
            Err(e) => self.result = Some(Err(e)),
        }
    }
}

/// Runs both ends, delivering bytes in chunks of `chunk` (usize::MAX = all
/// at once), until neither has anything left to say.
fn run(a: HandshakeParams, b: HandshakeParams, chunk: usize) -> (End, End) {
    let mut a = End::new(a);
    let mut b = End::new(b);
    for _ in 0..100_000 {
        let to_b = std::mem::take(&mut a.outbox);
        let to_a = std::mem::take(&mut b.outbox);
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        for piece in to_b.chunks(chunk.max(1)) {
            b.deliver(piece);
        }
        for piece in to_a.chunks(chunk.max(1)) {
            a.deliver(piece);
        }
    }
    (a, b)
}

fn done(e: End) -> HandshakeDone {
    match e.result {
        Some(Ok(d)) => d,
        other => panic!("handshake did not complete: {:?}", other.map(|r| r.err())),
    }
}

fn failed(e: &End) -> HandshakeError {
    match &e.result {
        Some(Err(err)) => err.clone(),
        other => panic!(
            "expected a failure, got {:?}",
            other.as_ref().map(|r| r.is_ok())
        ),
    }
}

fn check_pair(a: HandshakeDone, b: HandshakeDone, encrypted: bool) {
    assert_eq!(a.version, 2);
    assert_eq!(b.version, 2);
    assert_eq!(a.remote, features(2, 0xbbbb));
    assert_eq!(b.remote, features(1, 0xaaaa));
    assert_eq!(a.conn_uid, 0xaaaa ^ 0xbbbb);
    assert_eq!(a.conn_uid, b.conn_uid);
    assert_eq!(a.session.is_some(), encrypted);
    assert_eq!(b.session.is_some(), encrypted);
    assert!(a.leftover.is_empty() && b.leftover.is_empty());
    assert!(!a.is_connection_to_self(&features(1, 0xaaaa)));
    assert!(a.is_connection_to_self(&features(2, 0)));
    assert!(a.is_untrusted(&features(1, 0xaaaa)));
    let mut trusting = features(1, 0xaaaa);
    trusting.trusted = true;
    assert!(a.is_untrusted(&trusting), "the remote does not trust us");
    if let (Some(sa), Some(sb)) = (&a.session, &b.session) {
        assert_eq!(sa.session_key, sb.session_key);
        assert_eq!(sa.sealer.next_seq(), Some(1));
        assert_eq!(sb.opener.next_seq(), Some(1));
    }

    // The session carries on into framed messages in both directions.
    let (a_seal, a_open) = split(a);
    let (b_seal, b_open) = split(b);
    let mut aw = FrameWriter::new(a_seal);
    let mut bw = FrameWriter::new(b_seal);
    let mut ar = FrameReader::new(a_open);
    let mut br = FrameReader::new(b_open);
    let gossip = ProtocolMsg::Gossip(GossipMsg {
        channel: "topology".into(),
        src: features(1, 0).name,
        msg: vec![1, 2, 3],
    });
    br.feed(&aw.encode(&gossip.encode().unwrap()).unwrap());
    br.feed(
        &aw.encode(&ProtocolMsg::Heartbeat.encode().unwrap())
            .unwrap(),
    );
    ar.feed(
        &bw.encode(&ProtocolMsg::Heartbeat.encode().unwrap())
            .unwrap(),
    );
    let m = br.next_message().unwrap().unwrap();
    assert_eq!(ProtocolMsg::decode(&m).unwrap(), gossip);
    let m = br.next_message().unwrap().unwrap();
    assert_eq!(ProtocolMsg::decode(&m).unwrap(), ProtocolMsg::Heartbeat);
    let m = ar.next_message().unwrap().unwrap();
    assert_eq!(ProtocolMsg::decode(&m).unwrap(), ProtocolMsg::Heartbeat);
}

type Split = (
    Option<weft_wire::crypto::TcpSealer>,
    Option<weft_wire::crypto::TcpOpener>,
);

fn split(d: HandshakeDone) -> Split {
    match d.session {
        Some(s) => (Some(s.sealer), Some(s.opener)),
        None => (None, None),
    }
}

#[test]
fn plaintext_handshake() {
    for chunk in [usize::MAX, 1, 3, 7, 8, 33] {
        let (a, b) = run(
            params(true, None, 1, 0xaaaa),
            params(false, None, 2, 0xbbbb),
            chunk,
        );
        check_pair(done(a), done(b), false);
    }
}

#[test]
fn encrypted_handshake() {
    for chunk in [usize::MAX, 1, 5, 32, 33] {
        let (a, b) = run(
            params(true, Some("s3cret"), 1, 0xaaaa),
            params(false, Some("s3cret"), 2, 0xbbbb),
            chunk,
        );
        check_pair(done(a), done(b), true);
    }
}

#[test]
fn empty_password_means_no_encryption() {
    let (a, b) = run(
        params(true, Some(""), 1, 0xaaaa),
        params(false, None, 2, 0xbbbb),
        usize::MAX,
    );
    check_pair(done(a), done(b), false);
}

#[test]
fn wrong_password_fails_to_open_features() {
    let (a, b) = run(
        params(true, Some("one"), 1, 0xaaaa),
        params(false, Some("two"), 2, 0xbbbb),
        usize::MAX,
    );
    for e in [failed(&a), failed(&b)] {
        assert_eq!(e, HandshakeError::WrongPassword);
        let text = e.to_string();
        assert!(
            text.contains("encryption mismatch / wrong password"),
            "{text}"
        );
        assert!(text.contains("WEAVE_PASSWORD"), "{text}");
    }
}

#[test]
fn one_side_password_only() {
    let (a, b) = run(
        params(true, Some("pw"), 1, 0xaaaa),
        params(false, None, 2, 0xbbbb),
        usize::MAX,
    );
    let ea = failed(&a);
    let eb = failed(&b);
    assert_eq!(ea, HandshakeError::ExpectedCrypto);
    assert_eq!(eb, HandshakeError::ExpectedNoCrypto);
    for e in [ea, eb] {
        let t = e.to_string();
        assert!(
            t.contains("set WEAVE_PASSWORD identically on all peers"),
            "{t}"
        );
    }
}

fn feed_all(hs: &mut Handshake, bytes: &[u8]) -> Result<Progress, HandshakeError> {
    hs.feed(bytes)
}

#[test]
fn params_debug_redacts_password() {
    let p = params(true, Some("hunter2"), 1, 1);
    let text = format!("{p:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("104, 117"),
        "{text}"
    );
    let (hs, _) = Handshake::new(p);
    let text = format!("{hs:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("104, 117"),
        "{text}"
    );
}

#[test]
fn v1_only_peer_is_refused() {
    let (mut hs, hello) = Handshake::new(params(true, None, 1, 1));
    assert_eq!(hello, b"weave\x01\x02");
    assert_eq!(hello, protocol_header());
    let e = feed_all(&mut hs, b"weave\x01\x01").unwrap_err();
    assert_eq!(e, HandshakeError::PeerSpeaksOnlyV1);
    assert_eq!(
        e.to_string(),
        "peer speaks only mesh protocol version 1; Weft requires version 2 (Weave Net >= 1.2)"
    );
    assert_eq!(hs.feed(b"more").unwrap_err(), HandshakeError::Failed);
}

#[test]
fn version_negotiation() {
    for (min, max, ok) in [
        (1u8, 2u8, true),
        (2, 2, true),
        (2, 9, true),
        (1, 200, true),
        (0, 2, true),
        (3, 4, false),
        (0, 0, false),
        (2, 1, false),
    ] {
        let (mut hs, _) = Handshake::new(params(true, None, 1, 1));
        let r = hs.feed(&[b'w', b'e', b'a', b'v', b'e', min, max]);
        match (ok, r) {
            (true, Ok(Progress::Continue { send })) => assert_eq!(send, vec![0], "{min}..{max}"),
            (false, Err(HandshakeError::IncompatibleVersions { .. })) => {}
            (_, other) => panic!("{min}..{max}: unexpected {other:?}"),
        }
    }
}

#[test]
fn garbage_header_is_refused_early() {
    let (mut hs, _) = Handshake::new(params(true, None, 1, 1));
    let e = hs.feed(b"GET / HTTP/1.1\r\n").unwrap_err();
    assert!(matches!(e, HandshakeError::GarbageHeader { .. }));
    assert!(e.to_string().contains("not a Weave Net / Weft peer"));

    // Detected on the first wrong byte when fed byte by byte.
    let (mut hs, _) = Handshake::new(params(true, None, 1, 1));
    assert!(matches!(hs.feed(b"w"), Ok(Progress::Continue { .. })));
    assert!(matches!(hs.feed(b"e"), Ok(Progress::Continue { .. })));
    assert!(matches!(
        hs.feed(b"x"),
        Err(HandshakeError::GarbageHeader { .. })
    ));
}

#[test]
fn bad_encryption_flag() {
    let (mut hs, _) = Handshake::new(params(true, None, 1, 1));
    hs.feed(&protocol_header()).unwrap();
    assert_eq!(
        hs.feed(&[2]).unwrap_err(),
        HandshakeError::BadEncryptionFlag(2)
    );
}

#[test]
fn low_order_public_key_is_refused() {
    let (mut hs, _) = Handshake::new(params(true, Some("pw"), 1, 1));
    hs.feed(&protocol_header()).unwrap();
    let mut msg = vec![1u8];
    msg.extend_from_slice(&[0u8; 32]);
    assert!(matches!(
        hs.feed(&msg),
        Err(HandshakeError::KeyAgreement(_))
    ));
}

/// Builds what a plaintext peer sends after its header: flag 0 and the
/// features message made of `gob`.
fn plaintext_intro(gob: &[u8]) -> Vec<u8> {
    let mut v = protocol_header().to_vec();
    v.push(0);
    v.extend_from_slice(&(gob.len() as u32).to_be_bytes());
    v.extend_from_slice(gob);
    v
}

#[test]
fn truncated_input_fed_byte_by_byte_never_completes() {
    let remote = features(2, 77);
    let intro = plaintext_intro(&remote.encode_gob().unwrap());
    // Every strict prefix, byte by byte: always Continue, never Done.
    let (mut hs, _) = Handshake::new(params(true, None, 1, 5));
    for (i, b) in intro.iter().enumerate() {
        match hs.feed(std::slice::from_ref(b)) {
            Ok(Progress::Continue { .. }) => assert!(i + 1 < intro.len()),
            Ok(Progress::Done(d)) => {
                assert_eq!(i + 1, intro.len(), "done early");
                assert_eq!(d.remote, remote);
                assert_eq!(d.conn_uid, 5 ^ 77);
            }
            Err(e) => panic!("byte {i}: {e}"),
        }
    }
    assert_eq!(hs.feed(b"x").unwrap_err(), HandshakeError::AlreadyDone);
}

#[test]
fn leftover_bytes_after_features_are_returned() {
    let remote = features(2, 77);
    let mut intro = plaintext_intro(&remote.encode_gob().unwrap());
    let mut w = FrameWriter::new(None);
    let hb = w.encode(&[0]).unwrap();
    intro.extend_from_slice(&hb);
    intro.extend_from_slice(&[0, 0]);
    let (mut hs, _) = Handshake::new(params(true, None, 1, 5));
    let Progress::Done(d) = hs.feed(&intro).unwrap() else {
        panic!("not done")
    };
    let mut want = hb.clone();
    want.extend_from_slice(&[0, 0]);
    assert_eq!(d.leftover, want);
    let mut r = FrameReader::new(None);
    r.feed(&d.leftover);
    assert_eq!(r.next_message().unwrap().unwrap(), vec![0]);
    assert_eq!(r.next_message().unwrap(), None);
}

#[test]
fn decodes_go_features_vector_in_a_handshake() {
    let gob = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/features_full.gob"
    ))
    .unwrap();
    let (mut hs, _) = Handshake::new(params(false, None, 1, 40));
    let Progress::Done(d) = hs.feed(&plaintext_intro(&gob)).unwrap() else {
        panic!("not done")
    };
    let r = &d.remote;
    assert_eq!(r.name.to_string(), "0a:1b:2c:3d:4e:5f");
    assert_eq!(r.nick_name, "node-1");
    assert_eq!(r.uid, 9876543210);
    assert_eq!(r.conn_id, 42);
    assert_eq!(r.short_id, Some(ShortId::new(1234).unwrap()));
    assert!(!r.trusted);
    assert_eq!(
        r.overlays.as_deref(),
        Some(&["fastdp".to_string(), "sleeve".to_string()][..])
    );
    assert!(r.extra.is_empty());
    assert_eq!(d.conn_uid, 40 ^ 42);
}

fn full_map() -> BTreeMap<String, String> {
    features(3, 9).to_map()
}

#[test]
fn feature_validation() {
    for key in feature::MANDATORY {
        let mut m = full_map();
        m.remove(key);
        assert_eq!(
            Features::from_map(m),
            Err(FeatureError::Missing(key)),
            "{key}"
        );
    }
    let mut m = full_map();
    m.insert(feature::PEER_NAME_FLAVOUR.into(), "hash".into());
    assert!(matches!(
        Features::from_map(m),
        Err(FeatureError::FlavourMismatch { .. })
    ));
    for (key, bad) in [
        (feature::NAME, "not-a-mac"),
        (feature::UID, "-1"),
        (feature::UID, "18446744073709551616"),
        (feature::CONN_ID, ""),
        (feature::CONN_ID, "+5"),
        (feature::SHORT_ID, "4096"),
    ] {
        let mut m = full_map();
        m.insert(key.into(), bad.into());
        let e = Features::from_map(m).unwrap_err();
        assert!(
            matches!(e, FeatureError::Invalid { .. }),
            "{key}={bad}: {e}"
        );
    }
    // Unknown keys are kept; Trusted parses like Go's ParseBool "true".
    let mut m = full_map();
    m.insert("Extra".into(), "v".into());
    m.insert(feature::TRUSTED.into(), "true".into());
    let f = Features::from_map(m).unwrap();
    assert!(f.trusted);
    assert_eq!(f.extra.get("Extra").map(String::as_str), Some("v"));
    assert_eq!(f.extra.get("WeftFuture").map(String::as_str), Some("x=1"));
    assert_eq!(Features::from_map(f.to_map()).unwrap(), f);
}

#[test]
fn features_map_has_weave_keys() {
    let m = features(1, 42).to_map();
    assert_eq!(m["PeerNameFlavour"], "mac");
    assert_eq!(m["Name"], "0a:1b:2c:3d:4e:01");
    assert_eq!(m["NickName"], "node-1");
    assert_eq!(m["UID"], "9876543211");
    assert_eq!(m["ConnID"], "42");
    assert_eq!(m["ShortID"], "1234");
    assert_eq!(m["Trusted"], "false");
    assert_eq!(m["Overlays"], "fastdp sleeve");
}

#[test]
fn oversized_features_frame_is_refused_before_buffering() {
    let (mut hs, _) = Handshake::new(params(true, None, 1, 1));
    let mut v = protocol_header().to_vec();
    v.push(0);
    v.extend_from_slice(&u32::MAX.to_be_bytes());
    let e = hs.feed(&v).unwrap_err();
    assert!(matches!(e, HandshakeError::Frame(_)), "{e}");
}

#[test]
fn non_gob_features_are_refused() {
    let (mut hs, _) = Handshake::new(params(true, None, 1, 1));
    let e = hs.feed(&plaintext_intro(b"\x03\xff\xff\xff")).unwrap_err();
    assert!(matches!(e, HandshakeError::FeaturesGob(_)), "{e}");
}

#[test]
fn deterministic_keypair_handshake() {
    let (mut a, ha) = Handshake::with_keypair(
        params(true, Some("pw"), 1, 0xaaaa),
        KeyPair::from_secret_bytes([1; 32]),
    );
    let (mut b, hb) = Handshake::with_keypair(
        params(false, Some("pw"), 2, 0xbbbb),
        KeyPair::from_secret_bytes([2; 32]),
    );
    assert_eq!(ha.len(), HEADER_SIZE);
    let Progress::Continue { send: a1 } = a.feed(&hb).unwrap() else {
        panic!()
    };
    let Progress::Continue { send: b1 } = b.feed(&ha).unwrap() else {
        panic!()
    };
    assert_eq!(a1[0], 1);
    assert_eq!(&a1[1..], &KeyPair::from_secret_bytes([1; 32]).public_key());
    let Progress::Continue { send: a2 } = a.feed(&b1).unwrap() else {
        panic!()
    };
    let Progress::Continue { send: b2 } = b.feed(&a1).unwrap() else {
        panic!()
    };
    let Progress::Done(da) = a.feed(&b2).unwrap() else {
        panic!()
    };
    let Progress::Done(db) = b.feed(&a2).unwrap() else {
        panic!()
    };
    assert!(da.send.is_empty() && db.send.is_empty());
    check_pair(*da, *db, true);
}

/// Regression (found against Go's weaveworks/mesh): when one `feed` both made us answer and
/// found the failure, the answer was dropped, so a Weave peer saw an EOF instead of its own
/// "Unable to decrypt TCP msg". The answer is now kept for `take_unsent`, and it lets the peer
/// diagnose the mismatch itself.
#[test]
fn wrong_password_answer_is_kept_for_the_peer() {
    let (mut a, a_header) = Handshake::new(params(true, Some("one"), 1, 0xaaaa));
    let (mut b_hs, b_header) = Handshake::new(params(false, Some("two"), 2, 0xbbbb));
    // A reads B's header alone and answers with its flag and key.
    let a_flag_key = match a.feed(&b_header).unwrap() {
        Progress::Continue { send } => send,
        Progress::Done(_) => panic!(),
    };
    let b_flag_key = match b_hs.feed(&a_header).unwrap() {
        Progress::Continue { send } => send,
        Progress::Done(_) => panic!(),
    };
    let b_features = match b_hs.feed(&a_flag_key).unwrap() {
        Progress::Continue { send } => send,
        Progress::Done(_) => panic!(),
    };
    assert!(!b_features.is_empty());
    // A gets B's key and features in one read: it answers with its features, then fails.
    let mut burst = b_flag_key.clone();
    burst.extend_from_slice(&b_features);
    assert_eq!(a.feed(&burst).unwrap_err(), HandshakeError::WrongPassword);
    let unsent = a.take_unsent();
    assert!(!unsent.is_empty(), "A's features must not be lost");
    assert!(a.take_unsent().is_empty(), "taking empties");
    // Given them, B finds the mismatch itself instead of waiting for bytes that never come.
    assert_eq!(
        b_hs.feed(&unsent).unwrap_err(),
        HandshakeError::WrongPassword
    );
    assert!(b_hs.take_unsent().is_empty(), "B had nothing more to say");
}

/// Same for the encryption flag: we have a password, the peer's header and "no encryption"
/// flag arrive together; our flag and key must still reach it.
#[test]
fn flag_mismatch_answer_is_kept_for_the_peer() {
    let (mut a, a_header) = Handshake::new(params(true, Some("pw"), 1, 0xaaaa));
    let (mut b, b_header) = Handshake::new(params(false, None, 2, 0xbbbb));
    let b_flag = match b.feed(&a_header).unwrap() {
        Progress::Continue { send } => send,
        Progress::Done(_) => panic!(),
    };
    let mut burst = b_header;
    burst.extend_from_slice(&b_flag);
    assert_eq!(a.feed(&burst).unwrap_err(), HandshakeError::ExpectedCrypto);
    let unsent = a.take_unsent();
    assert_eq!(unsent.len(), 1 + 32, "flag and public key");
    assert_eq!(unsent[0], 1);
    assert_eq!(
        b.feed(&unsent).unwrap_err(),
        HandshakeError::ExpectedNoCrypto
    );
}

#[test]
fn nothing_unsent_after_success_or_before_any_answer() {
    let (mut a, b) = run(
        params(true, Some("pw"), 1, 0xaaaa),
        params(false, Some("pw"), 2, 0xbbbb),
        usize::MAX,
    );
    assert!(a.hs.take_unsent().is_empty());
    check_pair(done(a), done(b), true);
    // A garbage header fails before we answer anything.
    let (mut hs, _) = Handshake::new(params(true, None, 1, 1));
    assert!(hs.feed(b"GET / HTTP/1.1\r\n").is_err());
    assert!(hs.take_unsent().is_empty());
}

/// Found against Go's weaveworks/mesh: with different passwords, the end that fails to open
/// the other's features closes at once, so the other end often sees only an EOF or a reset.
/// After the key exchange, such a close is reported as the likely wrong password.
#[test]
fn close_after_key_exchange_suggests_the_password() {
    let (mut a, _) = Handshake::new(params(true, Some("one"), 1, 0xaaaa));
    let (mut b, b_header) = Handshake::new(params(false, Some("two"), 2, 0xbbbb));
    assert_eq!(a.peer_closed(), HandshakeError::Closed, "before anything");
    let (_, a_header) = Handshake::new(params(true, Some("one"), 1, 0xaaaa));
    let b_flag_key = match b.feed(&a_header).unwrap() {
        Progress::Continue { send } => send,
        Progress::Done(_) => panic!(),
    };
    let mut burst = b_header;
    burst.extend_from_slice(&b_flag_key);
    match a.feed(&burst).unwrap() {
        Progress::Continue { send } => assert!(send.len() > 1 + 32, "flag, key and features"),
        Progress::Done(_) => panic!(),
    }
    let e = a.peer_closed();
    assert_eq!(e, HandshakeError::ClosedAfterKeyExchange);
    let text = e.to_string();
    assert!(text.contains("wrong password"), "{text}");
    assert!(text.contains("WEAVE_PASSWORD"), "{text}");
    // Without encryption a close says nothing about passwords.
    let (mut p, _) = Handshake::new(params(true, None, 1, 1));
    let (_, q_header) = Handshake::new(params(false, None, 2, 2));
    let mut burst = q_header;
    burst.push(0);
    assert!(matches!(p.feed(&burst).unwrap(), Progress::Continue { .. }));
    assert_eq!(p.peer_closed(), HandshakeError::Closed);
}
