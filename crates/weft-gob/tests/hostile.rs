//! Malformed and hostile streams: each gives a clear error (never a panic, never a
//! large allocation), and the decoder accepts only what gob allows.

use weft_gob::{decode_all, Decoder, Error, Limits, Type, Value};

/// Frames a message: its byte count (gob unsigned int), then the body.
fn msg(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = body.len() as u64;
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let b = n.to_be_bytes();
        let skip = (n.leading_zeros() / 8) as usize;
        out.push((8 - skip as u8).wrapping_neg());
        out.extend_from_slice(&b[skip..]);
    }
    out.extend_from_slice(body);
    out
}

fn stream(msgs: &[&[u8]]) -> Vec<u8> {
    msgs.iter().flat_map(|m| msg(m)).collect()
}

/// Definition of type 65 as `[]uint`.
const DEF_SLICE_UINT: &[u8] = &[
    0xff, 0x81, 0x02, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01, 0x06, 0x00, 0x00,
];
/// Definition of type 65 as `map[string]uint`.
const DEF_MAP: &[u8] = &[
    0xff, 0x81, 0x04, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01, 0x0c, 0x01, 0x06, 0x00, 0x00,
];
/// Definition of type 65 as `type T []T`.
const DEF_RECURSIVE_SLICE: &[u8] = &[
    0xff, 0x81, 0x02, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01, 0xff, 0x82, 0x00, 0x00,
];
/// Definition of type 65 as `struct S { A uint }`.
const DEF_STRUCT_A: &[u8] = &[
    0xff, 0x81, 0x03, 0x01, 0x01, 0x01, b'S', 0x01, 0xff, 0x82, 0x00, 0x01, 0x01, 0x01, 0x01, b'A',
    0x01, 0x06, 0x00, 0x00, 0x00,
];

const HUGE: [u8; 9] = [0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

fn err(bytes: &[u8]) -> Error {
    match decode_all(bytes) {
        Err(e) => e,
        Ok(v) => panic!("expected an error, decoded {v:?}"),
    }
}

#[test]
fn the_gob_documentation_example_point() {
    // type Point struct{ X, Y int }; Point{22, 33}, as laid out in the encoding/gob
    // package documentation.
    let want: &[u8] = &[
        0x1f, 0xff, 0x81, 0x03, 0x01, 0x01, 0x05, b'P', b'o', b'i', b'n', b't', 0x01, 0xff, 0x82,
        0x00, 0x01, 0x02, 0x01, 0x01, b'X', 0x01, 0x04, 0x00, 0x01, 0x01, b'Y', 0x01, 0x04, 0x00,
        0x00, 0x00, 0x07, 0xff, 0x82, 0x01, 0x2c, 0x01, 0x42, 0x00,
    ];
    let ty = Type::structure(
        "Point",
        vec![
            weft_gob::Field::new("X", Type::Int),
            weft_gob::Field::new("Y", Type::Int),
        ],
    );
    let v = Value::from(
        weft_gob::StructValue::new("Point")
            .with("X", 22i64)
            .with("Y", 33i64),
    );
    let mut enc = weft_gob::Encoder::new();
    enc.encode_value(&ty, &v).unwrap();
    assert_eq!(enc.bytes(), want);
    assert_eq!(decode_all(want).unwrap(), vec![v]);
}

#[test]
fn counts_beyond_the_input_are_refused_before_allocating() {
    let mut value = vec![0xff, 0x82, 0x00];
    value.extend_from_slice(&HUGE);
    assert!(matches!(
        err(&stream(&[DEF_SLICE_UINT, &value])),
        Error::CountTooLarge { what: "slice", .. }
    ));
    assert!(matches!(
        err(&stream(&[DEF_MAP, &value])),
        Error::CountTooLarge { what: "map", .. }
    ));
    // A map of 3 entries needs at least 6 bytes.
    assert!(matches!(
        err(&stream(&[
            DEF_MAP,
            &[0xff, 0x82, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00]
        ])),
        Error::CountTooLarge {
            count: 3,
            remaining: 4,
            ..
        }
    ));
    let mut s = vec![0x0c, 0x00];
    s.extend_from_slice(&HUGE);
    assert!(matches!(
        err(&msg(&s)),
        Error::CountTooLarge { what: "string", .. }
    ));
    let mut b = vec![0x0a, 0x00];
    b.extend_from_slice(&HUGE);
    assert!(matches!(
        err(&msg(&b)),
        Error::CountTooLarge { what: "[]byte", .. }
    ));
    // A struct definition claiming 2^64-1 fields.
    let mut def = vec![0xff, 0x81, 0x03, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01];
    def.extend_from_slice(&HUGE);
    assert!(matches!(
        err(&msg(&def)),
        Error::CountTooLarge {
            what: "struct field list",
            ..
        }
    ));
}

#[test]
fn message_sizes_are_checked() {
    // 16 MiB declared: over the default 10 MiB limit, refused before reading it.
    assert!(matches!(
        err(&[0xfc, 0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x07]),
        Error::MessageTooLarge {
            size: 0x0100_0000,
            limit: 0x00a0_0000
        }
    ));
    let limits = Limits {
        max_message_size: 3,
        ..Limits::default()
    };
    let ok = msg(&[0x06, 0x00, 0x07]);
    assert!(Decoder::with_limits(&ok, limits).next_value().is_ok());
    let big = msg(&[0x06, 0x00, 0xff, 0x80]);
    assert!(matches!(
        Decoder::with_limits(&big, limits).next_value(),
        Err(Error::MessageTooLarge { size: 4, limit: 3 })
    ));
    // Declared longer than what follows.
    assert!(matches!(
        err(&[0x05, 0x06, 0x00]),
        Error::Truncated {
            what: "message",
            ..
        }
    ));
    assert_eq!(err(&[0x00]), Error::EmptyMessage);
    assert_eq!(err(&[0x80]), Error::BadUint(0x80));
}

#[test]
fn type_ids_are_checked() {
    // A value of a type never defined.
    assert_eq!(err(&msg(&[0xff, 0x82, 0x00, 0x00])), Error::UnknownType(65));
    // A definition for a built-in / reserved id.
    assert_eq!(
        err(&msg(&[
            0x0b, 0x02, 0x01, 0x02, 0x0c, 0x00, 0x01, 0x06, 0x00, 0x00
        ])),
        Error::BadTypeId(6)
    );
    let mut def64 = DEF_SLICE_UINT.to_vec();
    def64[1] = 0x7f; // -64
    assert_eq!(err(&msg(&def64)), Error::BadTypeId(64));
    // Type id 0, and ids beyond Go's int32.
    assert_eq!(err(&msg(&[0x00, 0x00, 0x00])), Error::BadTypeId(0));
    assert!(matches!(
        err(&msg(&[0xfb, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00])),
        Error::BadTypeId(0x8000_0000)
    ));
    // Ids 9..=64 are not types.
    assert_eq!(err(&msg(&[0x12, 0x00, 0x00])), Error::UnknownType(9));
    // The same id defined twice.
    assert_eq!(
        err(&stream(&[DEF_SLICE_UINT, DEF_SLICE_UINT])),
        Error::DuplicateType(65)
    );
    // A struct whose field type is never defined: refused when the value arrives.
    let def = [
        0xff, 0x81, 0x03, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01, 0x01, 0x01, 0x01, b'A', 0x01, 0xff,
        0x84, 0x00, 0x00, 0x00,
    ];
    assert_eq!(
        err(&stream(&[&def, &[0xff, 0x82, 0x00]])),
        Error::UnknownType(66)
    );
}

#[test]
fn malformed_definitions_are_refused() {
    // wireType with no kind set.
    assert!(matches!(
        err(&msg(&[0xff, 0x81, 0x00])),
        Error::BadTypeDefinition(_)
    ));
    // Two kinds set (SliceT then StructT).
    let two = [
        0xff, 0x81, 0x02, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01, 0x06, 0x00, 0x01, 0x01, 0x02, 0xff,
        0x82, 0x00, 0x00, 0x00,
    ];
    assert!(matches!(err(&msg(&two)), Error::BadTypeDefinition(_)));
    // wireType field 7 does not exist.
    assert!(matches!(
        err(&msg(&[0xff, 0x81, 0x08, 0x00])),
        Error::FieldOutOfRange { field: 7, .. }
    ));
    // Slice without element type.
    assert!(matches!(
        err(&msg(&[
            0xff, 0x81, 0x02, 0x01, 0x02, 0xff, 0x82, 0x00, 0x00, 0x00
        ])),
        Error::BadTypeDefinition(_)
    ));
    // Negative array length.
    let arr = [
        0xff, 0x81, 0x01, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01, 0x06, 0x01, 0x03, 0x00, 0x00,
    ];
    assert!(matches!(err(&msg(&arr)), Error::BadTypeDefinition(_)));
    // Bytes after the definition.
    let mut extra = DEF_SLICE_UINT.to_vec();
    extra.push(0x00);
    assert!(matches!(
        err(&msg(&extra)),
        Error::TrailingBytes {
            what: "a type definition",
            ..
        }
    ));
    // Definitions with no value after them.
    assert_eq!(err(&msg(DEF_SLICE_UINT)), Error::TypesWithoutValue);
}

#[test]
fn value_framing_is_checked() {
    assert_eq!(err(&msg(&[0x06, 0x01, 0x07])), Error::BadSingletonDelta(1));
    assert!(matches!(
        err(&msg(&[0x06, 0x00, 0x07, 0x99])),
        Error::TrailingBytes {
            count: 1,
            what: "a value"
        }
    ));
    // Struct S has one field; delta 2 points past it.
    assert!(matches!(
        err(&stream(&[DEF_STRUCT_A, &[0xff, 0x82, 0x02, 0x05, 0x00]])),
        Error::FieldOutOfRange {
            field: 1,
            count: 1,
            ..
        }
    ));
    // A struct with its terminator missing.
    assert!(matches!(
        err(&stream(&[DEF_STRUCT_A, &[0xff, 0x82, 0x01, 0x05]])),
        Error::Truncated { .. }
    ));
    // Array of the wrong length: [2]uint sent with 3 elements.
    let arr = [
        0xff, 0x81, 0x01, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01, 0x06, 0x01, 0x04, 0x00, 0x00,
    ];
    assert_eq!(
        err(&stream(&[
            &arr,
            &[0xff, 0x82, 0x00, 0x03, 0x01, 0x02, 0x03]
        ])),
        Error::ArrayLength {
            expected: 2,
            found: 3
        }
    );
    let ok = decode_all(&stream(&[&arr, &[0xff, 0x82, 0x00, 0x02, 0x01, 0x02]])).unwrap();
    assert_eq!(ok, vec![Value::Array(vec![Value::Uint(1), Value::Uint(2)])]);
    // Interface values are not implemented.
    assert_eq!(
        err(&msg(&[0x10, 0x00, 0x00])),
        Error::Unsupported("interface")
    );
    // Any non-zero bool is true, as in Go.
    assert_eq!(
        decode_all(&msg(&[0x02, 0x00, 0x05])).unwrap(),
        vec![Value::Bool(true)]
    );
}

#[test]
fn recursion_is_bounded() {
    // type T []T: legal in Go, and finite values of it decode.
    let v = decode_all(&stream(&[
        DEF_RECURSIVE_SLICE,
        &[0xff, 0x82, 0x00, 0x02, 0x00, 0x01, 0x00],
    ]))
    .unwrap();
    assert_eq!(
        v,
        vec![Value::Slice(vec![
            Value::Slice(vec![]),
            Value::Slice(vec![Value::Slice(vec![])])
        ])]
    );
    // Nested 200 deep: refused by the depth limit, without exhausting the stack.
    let mut deep = vec![0xff, 0x82, 0x00];
    deep.extend(std::iter::repeat_n(0x01, 200));
    deep.push(0x00);
    assert_eq!(
        err(&stream(&[DEF_RECURSIVE_SLICE, &deep])),
        Error::TooDeep(64)
    );
    // A recursive type cannot be rebuilt as a Type.
    let bytes = stream(&[DEF_RECURSIVE_SLICE, &[0xff, 0x82, 0x00, 0x00]]);
    assert_eq!(
        Decoder::new(&bytes).next_typed().unwrap_err(),
        Error::Unsupported("recursive type")
    );

    // type Node struct { Name string; Kids []Node } (ids 65 and 66).
    let node = [
        0xff, 0x81, 0x03, 0x01, 0x01, 0x04, b'N', b'o', b'd', b'e', 0x01, 0xff, 0x82, 0x00, 0x01,
        0x02, 0x01, 0x04, b'N', b'a', b'm', b'e', 0x01, 0x0c, 0x00, 0x01, 0x04, b'K', b'i', b'd',
        b's', 0x01, 0xff, 0x84, 0x00, 0x00, 0x00,
    ];
    let kids = [
        0xff, 0x83, 0x02, 0x01, 0x02, 0xff, 0x84, 0x00, 0x01, 0xff, 0x82, 0x00, 0x00,
    ];
    // Node{Name: "a", Kids: []Node{{Name: "b"}}}
    let value = [
        0xff, 0x82, 0x01, 0x01, b'a', 0x01, 0x01, 0x01, 0x01, b'b', 0x00, 0x00,
    ];
    let v = decode_all(&stream(&[&node, &kids, &value])).unwrap();
    let root = v[0].as_struct().unwrap();
    assert_eq!(root.get_str("Name").unwrap(), "a");
    let kid = root.get("Kids").unwrap().as_slice().unwrap()[0]
        .as_struct()
        .unwrap();
    assert_eq!(kid.get_str("Name").unwrap(), "b");
}

#[test]
fn item_count_is_bounded() {
    let mut value = vec![0xff, 0x82, 0x00, 100];
    value.extend(std::iter::repeat_n(0x00, 100));
    let bytes = stream(&[DEF_SLICE_UINT, &value]);
    assert_eq!(
        decode_all(&bytes).unwrap()[0].as_slice().unwrap().len(),
        100
    );
    let limits = Limits {
        max_values: 99,
        ..Limits::default()
    };
    assert_eq!(
        Decoder::with_limits(&bytes, limits).next_value(),
        Err(Error::TooManyValues(99))
    );
}

#[test]
fn decoder_stops_after_an_error() {
    let mut bytes = msg(&[0x06, 0x01, 0x07]);
    bytes.extend(msg(&[0x06, 0x00, 0x07]));
    let mut dec = Decoder::new(&bytes);
    assert_eq!(dec.next_value(), Err(Error::BadSingletonDelta(1)));
    assert_eq!(dec.next_value(), Err(Error::Poisoned));
}

#[test]
fn from_bytes_wants_exactly_one_value() {
    let mut two = msg(&[0x06, 0x00, 0x07]);
    two.extend(msg(&[0x06, 0x00, 0x08]));
    assert_eq!(weft_gob::from_bytes::<u64>(&two), Err(Error::ExtraValues));
    assert_eq!(weft_gob::from_bytes::<u64>(&[]), Err(Error::EndOfStream));
    assert_eq!(
        weft_gob::from_bytes::<i64>(&msg(&[0x06, 0x00, 0x07]))
            .unwrap_err()
            .root(),
        &Error::Mismatch {
            expected: "int".into(),
            found: "uint".into()
        }
    );
    assert!(matches!(
        weft_gob::from_bytes::<u8>(&msg(&[0x06, 0x00, 0xfe, 0x01, 0x00])),
        Err(Error::OutOfRange { target: "u8", .. })
    ));
}
