// The body of the `decode` fuzz target, shared with the stable corpus replay
// (tests/fuzz_corpus.rs) through `include!`.

/// Feeds arbitrary bytes to the decoder. It must never panic; every value it
/// accepts must re-encode with its rebuilt type, and that encoding must be stable
/// (decode + encode again gives the same bytes and the same type).
pub fn decode(data: &[u8]) {
    // Default limits, dynamic values only.
    if let Ok(values) = weft_gob::decode_all(data) {
        for v in values {
            let _ = format!("{v:?}");
            let _ = v
                .clone()
                .decode::<std::collections::HashMap<String, String>>();
            let _ = v.clone().decode::<Vec<u64>>();
            if let Ok(s) = v.into_struct() {
                let _ = s.get_u64("UID");
                let _ = s.get_str("NickName");
            }
        }
    }

    // Tight limits, with types rebuilt and re-encoded.
    let limits = weft_gob::Limits {
        max_message_size: 1 << 16,
        max_depth: 16,
        max_values: 10_000,
    };
    let mut dec = weft_gob::Decoder::with_limits(data, limits);
    while let Ok(Some((ty, v))) = dec.next_typed() {
        let mut enc = weft_gob::Encoder::new();
        enc.encode_value(&ty, &v)
            .expect("a decoded value re-encodes with its own type");
        let once = enc.into_bytes();
        let mut again = weft_gob::Decoder::new(&once);
        let (ty2, v2) = again
            .next_typed()
            .expect("a re-encoded value decodes")
            .expect("the re-encoded stream holds a value");
        assert!(again.is_at_end(), "one value re-encodes as one value");
        assert_eq!(ty2, ty, "the type survives re-encoding");
        let mut enc2 = weft_gob::Encoder::new();
        enc2.encode_value(&ty2, &v2)
            .expect("a decoded value re-encodes with its own type");
        assert_eq!(enc2.into_bytes(), once, "re-encoding is stable");
    }
}
