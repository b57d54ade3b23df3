//! Checks the crypto layer against outputs of Go's golang.org/x/crypto/nacl
//! (tests/vectors/mesh-crypto.json, copied from the shared vectors).

use weft_wire::crypto::{
    box_precompute, tcp_nonce, udp_nonce, KeyPair, SessionKey, SleeveOpener, SleeveSealer,
    TcpCrypto, DF_FLAG,
};

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn hex32(s: &str) -> [u8; 32] {
    hex(s).try_into().expect("32 bytes")
}

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/mesh-crypto.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read vectors")).expect("json")
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("missing {k}"))
}

#[test]
fn keys_and_precompute() {
    let v = vectors();
    let out = KeyPair::from_secret_bytes(hex32(s(&v, "outbound_private")));
    let inb = KeyPair::from_secret_bytes(hex32(s(&v, "inbound_private")));
    assert_eq!(out.public_key(), hex32(s(&v, "outbound_public")));
    assert_eq!(inb.public_key(), hex32(s(&v, "inbound_public")));
    let want = hex32(s(&v, "shared_key_box_precompute"));
    assert_eq!(out.precompute(&inb.public_key()).unwrap().as_bytes(), &want);
    assert_eq!(inb.precompute(&out.public_key()).unwrap().as_bytes(), &want);
    assert_eq!(
        box_precompute(&inb.public_key(), &hex32(s(&v, "outbound_private"))).as_bytes(),
        &want
    );
    let session = out
        .precompute(&inb.public_key())
        .unwrap()
        .session_key(s(&v, "password").as_bytes());
    assert_eq!(session.as_bytes(), &hex32(s(&v, "session_key")));
}

#[test]
fn every_message_vector_seals_and_opens() {
    let v = vectors();
    let key = SessionKey::from_bytes(hex32(s(&v, "session_key")));
    let msgs = v["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 6);
    for m in msgs {
        let note = s(m, "note");
        let nonce: [u8; 24] = hex(s(m, "nonce")).try_into().unwrap();
        let pt = hex(s(m, "plaintext"));
        let sealed = hex(s(m, "sealed"));
        assert_eq!(key.seal(&nonce, &pt), sealed, "{note}");
        assert_eq!(key.open(&nonce, &sealed).unwrap(), pt, "{note}");
        let seq = u64::from_be_bytes(nonce[16..].try_into().unwrap());
        let outbound = nonce[0] & 0x80 != 0;
        if note.starts_with("tcp") {
            assert_eq!(tcp_nonce(outbound, seq), nonce, "{note}");
        } else {
            assert_eq!(udp_nonce(outbound, seq), nonce, "{note}");
        }
    }
}

#[test]
fn tcp_state_machines_reproduce_vectors() {
    let v = vectors();
    let key = SessionKey::from_bytes(hex32(s(&v, "session_key")));
    let msgs = v["messages"].as_array().unwrap();
    let sealed = |i: usize| hex(s(&msgs[i], "sealed"));
    let pt = |i: usize| hex(s(&msgs[i], "plaintext"));

    // Outbound side sends seq 0, 1, 2 (messages 0, 1, 3 of the file).
    let mut outbound = TcpCrypto::new(key.clone(), true);
    assert_eq!(outbound.sealer.seal(&pt(0)).unwrap(), sealed(0));
    assert_eq!(outbound.sealer.seal(&pt(1)).unwrap(), sealed(1));
    assert_eq!(outbound.sealer.seal(&pt(3)).unwrap(), sealed(3));
    // The inbound side's first message.
    let mut inbound = TcpCrypto::new(key.clone(), false);
    assert_eq!(inbound.sealer.seal(&pt(2)).unwrap(), sealed(2));

    // And each side opens the other's stream in order.
    assert_eq!(inbound.opener.open(&sealed(0)).unwrap(), pt(0));
    assert_eq!(inbound.opener.open(&sealed(1)).unwrap(), pt(1));
    assert_eq!(inbound.opener.open(&sealed(3)).unwrap(), pt(3));
    assert_eq!(outbound.opener.open(&sealed(2)).unwrap(), pt(2));

    // Reordering fails.
    let mut fresh = TcpCrypto::new(key, false);
    assert!(fresh.opener.open(&sealed(1)).is_err());
}

#[test]
fn sleeve_state_machines_reproduce_vectors() {
    let v = vectors();
    let key = SessionKey::from_bytes(hex32(s(&v, "session_key")));
    let msgs = v["messages"].as_array().unwrap();
    let non_df = &msgs[4];
    let df = &msgs[5];

    let mut out = SleeveSealer::new(&key, true).with_sequences(5, 0);
    let (sdf, sealed) = out.seal(false, &hex(s(non_df, "plaintext"))).unwrap();
    assert_eq!(sdf, 5);
    assert_eq!(sealed, hex(s(non_df, "sealed")));

    let mut inb = SleeveSealer::new(&key, false).with_sequences(0, 5);
    let (sdf, sealed) = inb.seal(true, &hex(s(df, "plaintext"))).unwrap();
    assert_eq!(sdf, DF_FLAG | 5);
    assert_eq!(sealed, hex(s(df, "sealed")));

    // The inbound side opens the outbound sender's packet and vice versa.
    let at_inbound = SleeveOpener::new(&key, false);
    assert_eq!(
        at_inbound.open(5, &hex(s(non_df, "sealed"))).unwrap(),
        hex(s(non_df, "plaintext"))
    );
    let at_outbound = SleeveOpener::new(&key, true);
    assert_eq!(
        at_outbound
            .open(DF_FLAG | 5, &hex(s(df, "sealed")))
            .unwrap(),
        hex(s(df, "plaintext"))
    );
    // Wrong channel fails.
    assert!(at_outbound.open(5, &hex(s(df, "sealed"))).is_err());

    // Sealing and opening in place give the same bytes: the tag, then the
    // ciphertext where the plaintext was.
    let mut out = SleeveSealer::new(&key, true).with_sequences(5, 0);
    let mut buf = hex(s(non_df, "plaintext"));
    let (sdf, tag) = out.seal_in_place(false, &mut buf).unwrap();
    assert_eq!(sdf, 5);
    let want = hex(s(non_df, "sealed"));
    assert_eq!(&tag[..], &want[..16]);
    assert_eq!(buf, want[16..]);
    at_inbound.open_in_place(5, &tag, &mut buf).unwrap();
    assert_eq!(buf, hex(s(non_df, "plaintext")));
    // A flipped ciphertext bit, or the wrong channel, fails to open.
    let (_, tag) = out.seal_in_place(false, &mut buf).unwrap();
    let mut bad = buf.clone();
    bad[0] ^= 1;
    assert!(at_inbound.open_in_place(6, &tag, &mut bad).is_err());
    assert!(at_inbound
        .open_in_place(DF_FLAG | 6, &tag, &mut buf)
        .is_err());
}
